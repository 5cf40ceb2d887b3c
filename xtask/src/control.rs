//! A control plane started by the demo and the benchmarks, and the `strato`
//! CLI run against it.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::workspace::{profile_dir, target_dir};

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A control plane started by the demo or a benchmark.
pub(crate) struct Control {
    child: Option<Child>,
    pub(crate) grpc: String,
    http: String,
    data_dir: std::path::PathBuf,
}

impl Control {
    pub(crate) fn start(data_dir: &Path, grpc: &str, http: &str) -> anyhow::Result<Self> {
        Self::start_with(data_dir, grpc, http, &[])
    }

    pub(crate) fn start_with(
        data_dir: &Path,
        grpc: &str,
        http: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, grpc, http, extra, &[])
    }

    /// As `start_with`, with `env` set for the control plane and so for the
    /// agents its local provider starts.
    pub(crate) fn start_with_env(
        data_dir: &Path,
        grpc: &str,
        http: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let child = Command::new(target_dir().join(profile_dir()).join("strato-control"))
            .envs(env.iter().copied())
            .args(["--data-dir"])
            .arg(data_dir)
            .args([
                "--grpc-listen",
                grpc,
                "--http-listen",
                http,
                "--log",
                "warn",
            ])
            .args(["--reconcile-interval-ms", "250"])
            .args(extra)
            .spawn()
            .context("starting strato-control")?;
        let mut c = Control {
            child: Some(child),
            grpc: grpc.to_owned(),
            http: http.to_owned(),
            data_dir: data_dir.to_owned(),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("strato-control exited while starting: {status}");
            }
            // admin.conf is written once the store and the CA are ready.
            if TcpStream::connect(&self.grpc).is_ok()
                && TcpStream::connect(&self.http).is_ok()
                && self.data_dir.join("admin.conf").exists()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("strato-control did not listen on {} within 30s", self.grpc)
    }

    pub(crate) fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            ensure!(status.success(), "kill -TERM failed");
            let status = child.wait()?;
            ensure!(
                status.success(),
                "strato-control exited with {status} after SIGTERM"
            );
        }
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Control {
    /// The `strato` CLI, pointed at this control plane with its Owner's
    /// admin.conf (TLS with its CA, the bootstrap token).
    pub(crate) fn cli(&self) -> Command {
        // The endpoint, CA and token come from admin.conf alone.
        let mut cmd = Command::new(target_dir().join(profile_dir()).join("strato"));
        cmd.arg("--config")
            .arg(self.data_dir.join("admin.conf"))
            .env_remove("STRATO_ENDPOINT")
            .env_remove("STRATO_TOKEN")
            .env_remove("STRATO_CA_FILE");
        cmd
    }
}

/// Runs `strato ARGS` against the demo's control plane, printing the command
/// and its output. `expect_ok` false means the step shows a refusal.
pub(crate) fn strato(control: &Control, args: &[&str], expect_ok: bool) -> anyhow::Result<()> {
    println!("\n$ strato {}", args.join(" "));
    let status = control
        .cli()
        .args(args)
        .status()
        .context("running strato")?;
    ensure!(
        status.success() == expect_ok,
        "`strato {}` {}",
        args.join(" "),
        if expect_ok {
            "failed"
        } else {
            "was expected to be refused"
        }
    );
    Ok(())
}

/// Runs `strato ARGS` and returns its stdout (for the demo's own checks).
pub(crate) fn strato_output(control: &Control, args: &[&str]) -> anyhow::Result<String> {
    let out = control
        .cli()
        .args(args)
        .output()
        .context("running strato")?;
    ensure!(
        out.status.success(),
        "`strato {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The metrics URL of `cluster`'s first node (`list-nodes -o json`).
pub(crate) fn first_metrics_url(control: &Control, cluster: &str) -> anyhow::Result<String> {
    let nodes = strato_output(
        control,
        &["compute", "list-nodes", "-n", cluster, "-o", "json"],
    )?;
    Ok(nodes
        .split("\"metrics_url\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .filter(|u| u.starts_with("https://"))
        .context("metrics_url (https://)")?
        .to_owned())
}

/// `curl` scraping an agent's `/metrics` at `url` as Prometheus does: TLS
/// trusting the node serving CA of the control plane at `data_dir`, with
/// its scraper certificate; further arguments (`-o FILE`) may follow.
pub(crate) fn scrape(data_dir: &Path, url: &str) -> Command {
    let tls = data_dir.join("tls");
    let mut curl = Command::new("curl");
    curl.arg("-sf")
        .arg("--cacert")
        .arg(tls.join("node-serving-ca.crt"))
        .arg("--cert")
        .arg(tls.join("scraper.crt"))
        .arg("--key")
        .arg(tls.join("scraper.key"))
        .arg(url);
    curl
}

/// The nodes of a cluster as (node id, state) pairs, from the table output.
pub(crate) fn node_states(
    control: &Control,
    cluster: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let table = strato_output(control, &["compute", "list-nodes", "-n", cluster])?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
        })
        .collect())
}
