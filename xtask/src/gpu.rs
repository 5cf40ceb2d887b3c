//! `cargo xtask gpu-check`: what Strato does with a real NVIDIA GPU, on a
//! machine that has one. It prints what it finds at each step and goes on
//! where it can, so one run says as much as possible:
//!
//! 1. the driver: `nvidia-smi -L`;
//! 2. the NVIDIA container toolkit: installed with apt where the machine's
//!    package sources have it, and configured into Docker;
//! 3. a control plane and a one-node cluster of a size with this machine's
//!    GPUs (a sizes file of its own): the node is idle, or unusable with
//!    the reason (no container runtime, unhealthy GPUs);
//! 4. a job that runs `nvidia-smi -L` inside its container and prints the
//!    GPU variables Strato set;
//! 5. the agent's `/metrics`, scraped as Prometheus does: the DCGM series.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::command::{as_root, have, run};
use crate::control::{Control, first_metrics_url, free_port, node_states, scrape, strato_output};
use crate::images::MPI_IMAGE;

pub(crate) fn gpu_check() -> anyhow::Result<()> {
    println!("==> gpu-check on {}", hostname());
    let Some(gpus) = driver_gpus() else {
        bail!(
            "no NVIDIA driver here (`nvidia-smi -L` failed): run gpu-check on a machine with an NVIDIA GPU"
        );
    };
    println!("driver sees {} GPU(s):", gpus.len());
    for g in &gpus {
        println!("  {g}");
    }
    toolkit();
    crate::setup::setup().context("setup (Docker and the job images)")?;
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--workspace", "--bins"]);
    run("cargo build --bins", build)?;

    let dir = std::env::temp_dir().join(format!("strato-gpu-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = check_with_control_plane(&dir, gpus.len());
    std::fs::remove_dir_all(&dir).ok();
    result
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this machine".to_owned())
}

/// `nvidia-smi -L`'s lines, or `None` without a driver.
fn driver_gpus() -> Option<Vec<String>> {
    let out = Command::new("nvidia-smi").arg("-L").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("GPU "))
            .map(str::to_owned)
            .collect()
    })
}

/// The NVIDIA container toolkit: installed if missing and the package
/// sources have it, then configured into Docker (which is restarted).
fn toolkit() {
    if !have("nvidia-ctk") {
        println!("==> nvidia-container-toolkit missing: trying apt-get");
        let mut install = as_root(&["apt-get", "install", "-y", "nvidia-container-toolkit"]);
        install.env("DEBIAN_FRONTEND", "noninteractive");
        if let Err(e) = run("apt-get install nvidia-container-toolkit", install) {
            println!(
                "    not installed ({e:#}); a GPU node will be unusable, saying so (step 3 shows it)"
            );
            return;
        }
    }
    let configure = as_root(&["nvidia-ctk", "runtime", "configure", "--runtime=docker"]);
    if run("nvidia-ctk runtime configure --runtime=docker", configure).is_ok() {
        // setup starts dockerd again with the new configuration.
        let _ = as_root(&["pkill", "-x", "dockerd"]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && Command::new("pgrep")
                .args(["-x", "dockerd"])
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn check_with_control_plane(dir: &Path, gpus: usize) -> anyhow::Result<()> {
    let model = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "NVIDIA GPU".to_owned());
    let sizes = dir.join("sizes.toml");
    std::fs::write(
        &sizes,
        format!(
            "[[size]]\nname = \"gpu-check\"\nvcpus = 1\nmemory_gib = 1\ngpus = {gpus}\n\
             gpu_model = \"{}\"\nfamily = \"gpuCheckFamily\"\n",
            model.replace('"', "")
        ),
    )?;
    let (grpc, http) = (free_port()?, free_port()?);
    let data = dir.join("data");
    let sizes_arg = sizes.display().to_string();
    let control = Control::start_with(
        &data,
        &format!("127.0.0.1:{grpc}"),
        &format!("127.0.0.1:{http}"),
        &["--vm-sizes-file", &sizes_arg, "--heartbeat-interval", "1"],
    )?;
    strato_output(
        &control,
        &[
            "compute",
            "create",
            "-n",
            "gpu",
            "-s",
            "gpu-check",
            "--min-nodes",
            "1",
            "--max-nodes",
            "1",
        ],
    )?;
    println!("==> a node of size gpu-check ({gpus} x {model})");
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        let states = node_states(&control, "gpu")?;
        if let Some((_, s)) = states.iter().find(|(_, s)| s == "idle" || s == "unusable") {
            break s.clone();
        }
        if Instant::now() > deadline {
            bail!("no node came up within 2 minutes: {states:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "{}",
        strato_output(&control, &["compute", "list-nodes", "-n", "gpu"])?
    );
    if state == "unusable" {
        bail!("the GPU node is unusable; its reason is above");
    }

    println!("==> a job calling nvidia-smi in its container");
    let submitted = strato_output(
        &control,
        &[
            "job",
            "submit",
            "--compute",
            "gpu",
            "--image",
            MPI_IMAGE,
            "-o",
            "json",
            "--",
            "sh",
            "-c",
            "nvidia-smi -L; echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES \
             CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES",
        ],
    )?;
    let id = submitted
        .split("\"id\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("the job's id")?
        .to_owned();
    let waited = control.cli().args(["job", "wait", &id]).status()?;
    println!("{}", strato_output(&control, &["job", "logs", &id])?);
    if !waited.success() {
        println!("{}", strato_output(&control, &["job", "show", &id])?);
    }

    println!("==> the agent's DCGM metrics");
    let url = first_metrics_url(&control, "gpu")?;
    let out = scrape(&data, &url)
        .output()
        .context("curl (apt-get install curl)")?;
    let metrics = String::from_utf8_lossy(&out.stdout);
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("DCGM_") || l.starts_with("strato_gpu_"))
    {
        println!("  {line}");
    }
    if !waited.success() {
        bail!("the GPU job did not complete");
    }
    println!("gpu-check: done");
    Ok(())
}
