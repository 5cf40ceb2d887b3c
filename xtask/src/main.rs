//! `cargo xtask`: the project's automation, as a plain Rust binary.
//!
//! - `setup`: install what builds and tests need on this machine (idempotent).
//! - `demo`:  run the main flow end to end with the real binaries.
//! - `ci`:    setup, then format check, clippy, build, and every test tier.
//! - `bench`: time dispatch, measure the agent (release build).
//! - `gpu-check`: what a real NVIDIA GPU gets from Strato (on a GPU machine).
//!
//! One module per task (`setup`, `images`, `ci`, `demo`, `bench`); `control`
//! is the control plane the demo and the benchmarks start, `slurm` the
//! one-node Slurm that `bench dispatch` also times, `command` and
//! `workspace` what every task runs commands with.

#![allow(clippy::print_stdout)] // reason: xtask reports progress to the person running it

use anyhow::bail;

mod bench;
mod bench_mounts;
mod ci;
mod command;
mod control;
mod demo;
mod gpu;
mod images;
mod leftovers;
mod postgres;
mod setup;
mod slurm;
mod workspace;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install what the build and the tests need (idempotent)
  demo    start a control plane and walk a cluster through its lifecycle
  ci      setup, then cargo fmt --check, clippy -D warnings, build, and all tests
  gpu-check
          on a machine with an NVIDIA GPU: the driver, the NVIDIA container
          toolkit (installed and configured into Docker where apt has it), a
          one-node cluster of this machine's GPUs, a job running nvidia-smi in
          its container, and the agent's DCGM metrics, printed step by step
  bench dispatch
          on a warm node, time from `strato job submit --stream` to the job's
          first output line, against plain `docker run` of the same image and
          command and against `srun docker run` on a one-node Slurm (Debian's
          slurm-wlm, set up and stopped by the benchmark, state in .data/slurm;
          release build, median of 15 runs each, for a job that exits at once
          and one that runs on, printed as ratios)
  bench scale
          on SQLite and PostgreSQL: the store alone (no gRPC, no agents) with
          1,000 and 10,000 idle nodes (enrolments, submits, placements per
          second, a heartbeat from every node); then the control plane with a
          simulated fleet (strato-control-sim: agents over real gRPC on fake
          engines) of 1,000 and 10,000 nodes: queued-to-provider p50/p99,
          control-plane CPU and memory at 1 Hz heartbeats, then 100,000 jobs
          queued behind a long job on every node (submits per second) and
          placed once those are canceled (placements per second) (release
          build; the 10,000-node runs take several minutes each)
  bench agent
          the agent's resident memory and CPU while idle (1-second telemetry) and
          while scraped 10 times a second, next to node_exporter's in the same run
  bench followers
          log ingestion of a 50,000-line job with and without 1,500 idle
          `logs --follow` streams on another job (median of 3 each, as a ratio;
          fails below 0.5)
  bench mounts
          a 1 GiB blob in Azurite read by a job through ro_mount and through
          download (median of 3 each): time from submit to the first byte and
          to the whole blob, and their ratios";

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup::setup(),
        Some("demo") => demo::demo(),
        Some("ci") => ci::ci(),
        Some("gpu-check") => gpu::gpu_check(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("dispatch") => bench::bench_dispatch(),
            Some("agent") => bench::bench_agent(),
            Some("followers") => bench::bench_followers(),
            Some("mounts") => bench_mounts::bench_mounts(),
            Some("scale") => bench::bench_scale(),
            other => bail!(
                "unknown benchmark {other:?}; available: dispatch, agent, followers, mounts, scale\n\n{USAGE}"
            ),
        },
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}
