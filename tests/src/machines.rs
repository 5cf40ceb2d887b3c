//! What the tests of machines that join by themselves (attached clusters,
//! the fleet, SSH) ask a control plane through its CLI and API: the nodes
//! of a cluster, a machine's node by host name, join tokens, and jobs.

use std::time::Duration;

use strato_proto::v1;

use crate::{ControlPlane, wait_for};

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
