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
//! past the cluster's timeout (its whole process group). At most 16 KiB of
//! its output is kept, for the cluster's error when it fails (the last 500
//! characters are shown, to anyone who may read the cluster: scripts should
//! print no secrets). One command runs per node at a time. The host name
//! is what the node's agent reported: scripts should find the machine by
//! the node id in their own inventory, not trust the name.

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

    /// Records a failure of `cluster`'s power commands (also a resumed
    /// machine that did not come back in time), which backs off the next.
    pub fn fail(&self, cluster: &str, now: i64, error: String) {
        lock(&self.failures)
            .entry(cluster.to_owned())
            .or_default()
            .fail(now, error);
    }

    /// Forgets a deleted cluster's failures.
    pub fn forget(&self, clusters: &HashSet<String>) {
        lock(&self.failures).retain(|c, _| clusters.contains(c));
    }

    /// Moves the node to its step and runs the command in the background;
    /// nothing if a command for the node runs already or the node is no
    /// longer in the step's starting state.
    /// `store` is what the leader writes through (fenced by its lease).
    pub async fn start<S: Store>(
        self: &Arc<Self>,
        plane: &Arc<Plane<S>>,
        store: &S,
        dir: &Path,
        run: Run,
    ) {
        if !lock(&self.running).insert(run.node_id.clone()) {
            return;
        }
        let (step, _) = run.action.steps();
        let reason = match run.action {
            Action::Resume => format!("resuming: {} running", run.command),
            Action::Suspend => format!("suspended by {}", run.command),
        };
        let now = plane.clock.now_ms();
        match store.power_step(&run.node_id, step, &reason, now).await {
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
            // An agent still connected (the machine never went down) enrols
            // again, which makes the woken machine idle.
            plane.sessions.drop_node(&run.node_id);
        }
        plane.events.changed();
        tracing::info!(cluster = %run.cluster, node = %run.node_id, action = run.action.as_str(), command = %run.command, "power command started");
        let (power, plane, path) = (self.clone(), plane.clone(), dir.join(&run.command));
        let store = store.clone();
        tokio::spawn(async move {
            let result = execute(&path, &run).await;
            power.finish(&plane, &store, &run, result).await;
        });
    }

    async fn finish<S: Store>(
        &self,
        plane: &Plane<S>,
        store: &S,
        run: &Run,
        result: Result<(), String>,
    ) {
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
                self.fail(&run.cluster, now, error.clone());
                let (_, failed) = run.action.steps();
                if let Err(e) = store.power_step(&run.node_id, failed, &error, now).await {
                    tracing::error!(node = %run.node_id, error = %e, "power step not recorded");
                }
            }
        }
        lock(&self.running).remove(&run.node_id);
        plane.events.changed();
    }
}

/// Runs the command in a process group of its own; `Err` says how it
/// failed, with the end of its output. Done when the command exits (what
/// it left running in the background may keep its output open: that is
/// read for a second more, not waited for); past the timeout the whole
/// group is killed.
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
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    let group = child.id();
    let out = tokio::spawn(bounded(child.stdout.take()));
    let err = tokio::spawn(bounded(child.stderr.take()));
    let status = match tokio::time::timeout(run.timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("could not be waited for: {e}")),
        Err(_) => {
            if let Some(group) = group {
                let _ = tokio::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{group}")])
                    .status()
                    .await;
            }
            return Err(format!(
                "did not finish within {}s and was killed",
                run.timeout.as_secs()
            ));
        }
    };
    if status.success() {
        out.abort();
        err.abort();
        return Ok(());
    }
    let grace = Duration::from_secs(1);
    let out = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok);
    let err = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok);
    let text =
        String::from_utf8_lossy(&[out.unwrap_or_default(), err.unwrap_or_default()].concat())
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

/// What `pipe` gives until it closes, at most [`OUTPUT_LIMIT`] bytes kept.
async fn bounded<R: tokio::io::AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Vec<u8> {
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
