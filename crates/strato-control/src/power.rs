//! Power commands of attached clusters, as Slurm's power saving runs its
//! `ResumeProgram` and `SuspendProgram`: the reconcile loop decides
//! (`strato_core::scale::attached`), this runs the operator's executable
//! from `--power-commands-dir` for one node, in the background, and
//! records what came of it.
//!
//! A command runs as `DIR/NAME NODE_ID HOST_NAME` (the host name its agent
//! reported, empty unless it is a plain DNS name), with an empty
//! environment but PATH, STRATO_CLUSTER, STRATO_NODE and
//! STRATO_POWER_ACTION (`resume` or `suspend`), no standard input, killed
//! past the cluster's timeout. At most 16 KiB of its output is kept, for
//! the cluster's error when it fails. One command runs per node at a time.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strato_core::backoff::Backoff;
use strato_core::lifecycle::PowerStep;
use tokio::io::AsyncReadExt as _;

use crate::plane::Plane;
use crate::store::Store;

/// The output of a command kept for its error.
const OUTPUT_LIMIT: usize = 16 * 1024;

/// What a command is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Resume,
    Suspend,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Resume => "resume",
            Action::Suspend => "suspend",
        }
    }

    /// The node's step before the command runs, and after it failed.
    fn steps(self) -> (PowerStep, PowerStep) {
        match self {
            Action::Resume => (PowerStep::Resume, PowerStep::ResumeFailed),
            Action::Suspend => (PowerStep::Suspend, PowerStep::SuspendFailed),
        }
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct Run {
    pub action: Action,
    pub cluster: String,
    pub node_id: String,
    pub hostname: String,
    pub command: String,
    pub timeout: Duration,
}

/// The commands in flight and each cluster's failures.
#[derive(Debug, Default)]
pub struct Power {
    running: Mutex<HashSet<String>>,
    failures: Mutex<HashMap<String, Backoff>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Power {
    /// The cluster's last failure while its backoff holds: (until, error).
    pub fn backoff(&self, cluster: &str, now: i64) -> Option<(i64, String)> {
        lock(&self.failures)
            .get(cluster)
            .and_then(|b| b.waiting(now))
            .map(|(until, e)| (until, e.to_owned()))
    }

    /// Moves the node to its step and runs the command in the background;
    /// nothing if a command for the node runs already or the node is no
    /// longer in the step's starting state.
    pub async fn start<S: Store>(self: &Arc<Self>, plane: &Arc<Plane<S>>, dir: &Path, run: Run) {
        if !lock(&self.running).insert(run.node_id.clone()) {
            return;
        }
        let (step, _) = run.action.steps();
        let reason = match run.action {
            Action::Resume => format!("resuming: {} running", run.command),
            Action::Suspend => format!("suspended by {}", run.command),
        };
        let now = plane.clock.now_ms();
        match plane
            .store
            .power_step(&run.node_id, step, &reason, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                lock(&self.running).remove(&run.node_id);
                return;
            }
            Err(e) => {
                tracing::error!(node = %run.node_id, error = %e, "power step not recorded");
                lock(&self.running).remove(&run.node_id);
                return;
            }
        }
        if run.action == Action::Resume {
            // Its old session is over; the agent enrols again.
            plane.sessions.drop_node(&run.node_id);
        }
        plane.events.changed();
        tracing::info!(cluster = %run.cluster, node = %run.node_id, action = run.action.as_str(), command = %run.command, "power command started");
        let (power, plane, path) = (self.clone(), plane.clone(), dir.join(&run.command));
        tokio::spawn(async move {
            let result = execute(&path, &run).await;
            power.finish(&plane, &run, result).await;
        });
    }

    async fn finish<S: Store>(&self, plane: &Plane<S>, run: &Run, result: Result<(), String>) {
        let now = plane.clock.now_ms();
        match result {
            Ok(()) => {
                tracing::info!(cluster = %run.cluster, node = %run.node_id, action = run.action.as_str(), "power command succeeded");
                if let Some(b) = lock(&self.failures).get_mut(&run.cluster) {
                    b.succeeded_since(now);
                }
                if run.action == Action::Suspend {
                    // The machine is going down: its session with it.
                    plane.sessions.drop_node(&run.node_id);
                }
            }
            Err(why) => {
                let error = format!(
                    "{} command {} for node {} {why}",
                    run.action.as_str(),
                    run.command,
                    run.node_id
                );
                tracing::warn!(cluster = %run.cluster, node = %run.node_id, %error, "power command failed");
                lock(&self.failures)
                    .entry(run.cluster.clone())
                    .or_default()
                    .fail(now, error.clone());
                let (_, failed) = run.action.steps();
                if let Err(e) = plane
                    .store
                    .power_step(&run.node_id, failed, &error, now)
                    .await
                {
                    tracing::error!(node = %run.node_id, error = %e, "power step not recorded");
                }
            }
        }
        lock(&self.running).remove(&run.node_id);
        plane.events.changed();
    }
}

/// Runs the command; `Err` says how it failed, with the end of its output.
async fn execute(path: &PathBuf, run: &Run) -> Result<(), String> {
    let mut child = tokio::process::Command::new(path)
        .arg(&run.node_id)
        .arg(&run.hostname)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("STRATO_CLUSTER", &run.cluster)
        .env("STRATO_NODE", &run.node_id)
        .env("STRATO_POWER_ACTION", run.action.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let waited = tokio::time::timeout(run.timeout, async {
        let (out, err, status) = tokio::join!(bounded(stdout), bounded(stderr), child.wait());
        (out, err, status)
    })
    .await;
    match waited {
        Err(_) => Err(format!(
            "did not finish within {}s and was killed",
            run.timeout.as_secs()
        )),
        Ok((_, _, Err(e))) => Err(format!("could not be waited for: {e}")),
        Ok((_, _, Ok(status))) if status.success() => Ok(()),
        Ok((out, err, Ok(status))) => {
            let text = String::from_utf8_lossy(&[out, err].concat())
                .trim()
                .to_owned();
            let tail: String = text
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(format!("failed ({status}): {tail}"))
        }
    }
}

/// What `pipe` gives until it closes, at most [`OUTPUT_LIMIT`] bytes kept.
async fn bounded<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut kept = Vec::new();
    if let Some(mut pipe) = pipe {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = OUTPUT_LIMIT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
    kept
}
