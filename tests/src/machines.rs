//! What the tests of machines that join by themselves (attached clusters,
//! the fleet, SSH) ask a control plane through its CLI and API: the nodes
//! of a cluster, a machine's node by host name, join tokens, and jobs.

use std::time::Duration;

use strato_proto::v1;

use crate::{ControlPlane, wait_for};

/// A control plane for machines that join by themselves: no provider,
/// quick to notice (reconcile every 200 ms, heartbeats every second, a
/// machine silent for 3 s is unusable), a second's grace on cancel.
pub const ATTACHED_ARGS: &[&str] = &[
    "--provider",
    "none",
    "--node-heartbeat-timeout",
    "3",
    "--heartbeat-interval",
    "1",
    "--reconcile-interval-ms",
    "200",
    "--cancel-grace",
    "1",
];

/// `strato compute list-nodes -o json` of `cluster`.
pub fn nodes(cp: &ControlPlane, cluster: &str) -> Vec<serde_json::Value> {
    let out = cp.cli_ok(&["compute", "list-nodes", "-n", cluster, "-o", "json"]);
    serde_json::from_slice(&out.stdout).expect("nodes as JSON")
}

/// Machine `host`'s node id and state (node ids are made from host names).
pub fn node_of(nodes: &[serde_json::Value], host: &str) -> Option<(String, String)> {
    nodes.iter().find_map(|n| {
        let id = n["node_id"].as_str()?;
        id.starts_with(&format!("{host}-"))
            .then(|| (id.to_owned(), n["state"].as_str().unwrap_or("").to_owned()))
    })
}

/// Waits until machine `host`'s node of `cluster` is in `state`; its id.
pub async fn wait_state(
    cp: &ControlPlane,
    cluster: &str,
    host: &str,
    state: &str,
    timeout: Duration,
) -> String {
    wait_for(&format!("{host} {state}"), timeout, || {
        let found = node_of(&nodes(cp, cluster), host);
        async move {
            match found {
                Some((id, s)) if s == state => Some(id),
                _ => None,
            }
        }
    })
    .await
}

/// A join token for `cluster` good for `uses` machines and ten minutes.
pub fn join_token(cp: &ControlPlane, cluster: &str, uses: &str) -> String {
    let out = cp.cli_ok(&[
        "compute",
        "join-token",
        "create",
        "-n",
        cluster,
        "--uses",
        uses,
        "--expires-in",
        "10m",
    ]);
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Job `id` as the API shows it now.
pub async fn job(cp: &ControlPlane, id: &str) -> v1::Job {
    cp.jobs()
        .await
        .get_job(v1::GetJobRequest { id: id.into() })
        .await
        .expect("get job")
        .into_inner()
}

/// Whether a job has ended (completed, failed or canceled).
pub fn ended(j: &v1::Job) -> bool {
    [
        v1::JobState::Completed,
        v1::JobState::Failed,
        v1::JobState::Canceled,
    ]
    .iter()
    .any(|s| j.state == *s as i32)
}

/// Submits `spec` and waits until the job has ended (`what` names it in a
/// timeout); its id and how it ended.
pub async fn run_to_end(
    cp: &ControlPlane,
    spec: v1::JobSpec,
    what: &str,
    timeout: Duration,
) -> (String, v1::Job) {
    let id = cp.submit(spec).await;
    let done = wait_job(cp, &id, what, timeout, ended).await;
    (id, done)
}

/// Waits for job `id` to be as `done` says (`what` names it in a timeout).
pub async fn wait_job(
    cp: &ControlPlane,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&v1::Job) -> bool,
) -> v1::Job {
    let done = &done;
    wait_for(what, timeout, || async move {
        let j = job(cp, id).await;
        done(&j).then_some(j)
    })
    .await
}
