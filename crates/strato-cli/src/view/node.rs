//! `strato compute list-nodes` (and `simulate-eviction -o json`): a row per
//! node, with its state, job and utilisation.

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table, ts};

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub cluster: String,
    pub state: &'static str,
    pub private_ip: String,
    pub port: u32,
    /// How to log in, when the cluster serves SSH: `ssh -p PORT USER@IP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// The node's SSH host key, as its agent reported it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ssh_host_key: String,
    pub job_id: Option<String>,
    pub reason: String,
    pub state_since: String,
    /// The agent's Prometheus endpoint.
    pub metrics_url: String,
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub gpu_percent: f64,
    pub gpus: u32,
    /// Each GPU the agent found at enrolment.
    pub gpu_info: Vec<GpuInfoView>,
}

#[derive(Debug, Serialize)]
pub struct GpuInfoView {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_mib: u64,
    /// Why it cannot be used; absent when healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl From<v1::Node> for NodeView {
    fn from(n: v1::Node) -> Self {
        NodeView {
            node_id: n.node_id,
            cluster: n.cluster,
            state: match v1::NodeState::try_from(n.state) {
                Ok(v1::NodeState::Idle) => "idle",
                Ok(v1::NodeState::Running) => "running",
                Ok(v1::NodeState::Preparing) => "preparing",
                Ok(v1::NodeState::Unusable) => "unusable",
                Ok(v1::NodeState::Leaving) => "leaving",
                Ok(v1::NodeState::Suspended) => "suspended",
                Ok(v1::NodeState::Preempted) => "preempted",
                _ => "unknown",
            },
            private_ip: n.private_ip,
            port: n.port,
            ssh: None,
            ssh_host_key: n.ssh_host_key,
            job_id: (!n.run_id.is_empty()).then_some(n.run_id),
            reason: n.reason,
            state_since: ts(n.state_since.as_ref()),
            metrics_url: n.metrics_url,
            cpu_percent: n.cpu_percent,
            memory_used_bytes: n.memory_used_bytes,
            memory_total_bytes: n.memory_total_bytes,
            gpu_percent: n.gpu_percent,
            gpus: n.gpus,
            gpu_info: n
                .gpu_info
                .into_iter()
                .map(|g| GpuInfoView {
                    index: g.index,
                    uuid: g.uuid,
                    model: g.model,
                    memory_mib: g.memory_mib,
                    problem: (!g.problem.is_empty()).then_some(g.problem),
                })
                .collect(),
        }
    }
}

impl NodeView {
    /// The node's SSH connection string for `user`, when it serves SSH.
    pub fn with_ssh(mut self, user: &str) -> Self {
        if self.port > 0 && !self.private_ip.is_empty() && !user.is_empty() {
            let host = if self.private_ip.contains(':') {
                format!("[{}]", self.private_ip)
            } else {
                self.private_ip.clone()
            };
            self.ssh = Some(format!("ssh -p {} {user}@{host}", self.port));
        }
        self
    }
}

impl Render for Vec<NodeView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "NODE_ID", "STATE", "JOB", "CPU%", "MEMORY", "GPU%", "SINCE", "REASON",
        ]);
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        for n in self {
            t.row(vec![
                n.node_id.clone(),
                n.state.to_owned(),
                n.job_id.clone().unwrap_or_else(|| "-".into()),
                format!("{:.0}", n.cpu_percent),
                if n.memory_total_bytes == 0 {
                    "-".into()
                } else {
                    format!(
                        "{:.1}/{:.1} GiB",
                        gib(n.memory_used_bytes),
                        gib(n.memory_total_bytes)
                    )
                },
                if n.gpus == 0 {
                    "-".into()
                } else {
                    format!("{:.0}", n.gpu_percent)
                },
                n.state_since.clone(),
                n.reason.clone(),
            ]);
        }
        t
    }
}
