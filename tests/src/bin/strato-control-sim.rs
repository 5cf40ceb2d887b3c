//! `strato-control-sim`: the control plane with the simulated provider
//! (`--provider sim`), a fake for benchmarks and tests, never for a
//! deployment (so it is not in `strato-control`). Its nodes are in-process
//! agents (the real `strato_agent::session`) speaking the real gRPC protocol
//! over loopback to this control plane, each on a fake container engine
//! whose jobs print a line, run `--sim-job-ms` and exit (one in every
//! `--sim-fail-every` with 1). The agents run on a runtime of their own,
//! on threads named `sim-fleet`, so that the control plane's CPU can be told
//! from theirs (`/proc/PID/task/*/comm`).
//!
//! Usage: strato-control-sim --provider sim [--sim-job-ms N]
//! [--sim-fail-every N] [--sim-threads N] [STRATO-CONTROL FLAGS...]

#![allow(clippy::print_stderr)] // reason: a command-line tool; errors go to stderr

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use strato_control::config::Config;
use strato_e2e::sim::{SimFleet, SimJobs, SimProvider};
use tracing_subscriber::EnvFilter;

/// The flags of this tool; every other goes to the control plane.
struct SimFlags {
    job_ms: u64,
    fail_every: u64,
    threads: usize,
}

/// Takes this tool's flags out of `args` (the rest is strato-control's,
/// with `--provider sim` made `none`: the provider is given here).
fn split(args: Vec<String>) -> Result<(SimFlags, Vec<String>), String> {
    let mut flags = SimFlags {
        job_ms: 1_000,
        fail_every: 0,
        threads: 1,
    };
    let mut rest = Vec::new();
    let mut provider_sim = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{what} needs a value"))
        };
        match name.as_str() {
            "--sim-job-ms" => {
                flags.job_ms = value("--sim-job-ms")?
                    .parse()
                    .map_err(|_| "--sim-job-ms: a number of milliseconds".to_owned())?;
            }
            "--sim-fail-every" => {
                flags.fail_every = value("--sim-fail-every")?
                    .parse()
                    .map_err(|_| "--sim-fail-every: a count (0: none fail)".to_owned())?;
            }
            "--sim-threads" => {
                flags.threads = value("--sim-threads")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| "--sim-threads: 1 to 64".to_owned())?;
            }
            "--provider" => {
                let v = value("--provider")?;
                if v != "sim" {
                    return Err(format!(
                        "--provider {v:?}: strato-control-sim serves only `sim` (use strato-control for the others)"
                    ));
                }
                provider_sim = true;
            }
            _ => rest.push(arg),
        }
    }
    if !provider_sim {
        return Err("say --provider sim: this control plane's nodes are simulated".into());
    }
    rest.extend(["--provider".to_owned(), "none".to_owned()]);
    Ok((flags, rest))
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (flags, rest) = match split(std::env::args().skip(1).collect()) {
        Ok(split) => split,
        Err(e) => {
            eprintln!("strato-control-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let settings =
        match Config::parse_from(std::iter::once("strato-control".to_owned()).chain(rest))
            .validate()
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("strato-control-sim: {e}");
                return ExitCode::from(2);
            }
        };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&settings.config.log).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let fleet_runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(flags.threads)
        .thread_name("sim-fleet")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato-control-sim: the fleet's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato-control-sim: the control plane's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let jobs = SimJobs {
        duration: Duration::from_millis(flags.job_ms),
        fail_every: flags.fail_every,
    };
    let served = runtime.block_on(async {
        let config = &settings.config;
        let grpc = tokio::net::TcpListener::bind(config.grpc_listen).await?;
        let http = tokio::net::TcpListener::bind(config.http_listen).await?;
        let fleet = SimFleet::large(
            config.grpc_url(grpc.local_addr()?),
            config.http_url(http.local_addr()?),
            config.data_dir.join("sim"),
            strato_control::tls::Tls::ca_path(&config.data_dir),
            fleet_runtime.handle().clone(),
            jobs,
        );
        let parts = strato_control::Parts {
            grpc,
            http,
            provider: Box::new(SimProvider(fleet)),
            clock: Arc::new(strato_runtime::SystemClock),
            ready: None,
        };
        strato_control::serve(settings, parts, strato_control::shutdown_signal()).await
    });
    // The agents go with their runtime.
    fleet_runtime.shutdown_background();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strato-control-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
