//! What the CLI prints: views of wire messages with stable keys, rendered as
//! a table (for people), JSON or YAML (for programs).

use std::collections::BTreeMap;
use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;
use strato_proto::convert::rfc3339;
use strato_proto::v1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Something the CLI can print: serialisable for JSON/YAML, and with a
/// table form for people.
pub trait Render: Serialize {
    fn table(&self) -> Table;
}

/// Rows of cells; the first row is the header. Further sections (each its
/// own table, aligned on its own) follow after a blank line.
pub struct Table {
    rows: Vec<Vec<String>>,
    sections: Vec<Table>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            sections: Vec::new(),
        }
    }

    /// A two-column KEY/VALUE table for one object.
    pub fn properties(pairs: Vec<(&str, String)>) -> Self {
        let mut t = Table {
            rows: Vec::new(),
            sections: Vec::new(),
        };
        for (k, v) in pairs {
            t.rows.push(vec![k.to_owned(), v]);
        }
        t
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Appends `section`, printed after a blank line with its own columns.
    pub fn section(&mut self, section: Table) {
        self.sections.push(section);
    }

    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        for section in &self.sections {
            writeln!(out)?;
            section.write(out)?;
        }
        Ok(())
    }
}

pub fn print(format: Format, value: &impl Render) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Table => value.table().write(&mut out)?,
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Format::Yaml => write!(out, "{}", serde_norway::to_string(value)?)?,
    }
    Ok(())
}

fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.map(rfc3339).unwrap_or_default()
}

fn priority(p: i32) -> &'static str {
    match v1::VmPriority::try_from(p) {
        Ok(v1::VmPriority::LowPriority) => "lowpriority",
        _ => "dedicated",
    }
}

#[derive(Debug, Serialize)]
pub struct NodeStateCountsView {
    pub idle: u32,
    pub running: u32,
    pub preparing: u32,
    pub unusable: u32,
    pub leaving: u32,
    pub preempted: u32,
}

#[derive(Debug, Serialize)]
pub struct ClusterErrorView {
    pub code: String,
    pub message: String,
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct IdentityView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_assigned_identities: Vec<String>,
    /// Each identity with its ids; the default one first.
    pub identities: Vec<ManagedIdentityView>,
}

#[derive(Debug, Serialize)]
pub struct ManagedIdentityView {
    #[serde(rename = "type")]
    pub kind: String,
    pub resource_id: String,
    pub client_id: String,
    pub principal_id: String,
    pub default: bool,
}

#[derive(Debug, Serialize)]
pub struct SshView {
    pub public_access: bool,
    pub admin_username: String,
    pub admin_password_set: bool,
    pub admin_ssh_public_key: String,
}

#[derive(Debug, Serialize)]
pub struct VnetView {
    pub resource_group: String,
    pub vnet_name: String,
    pub subnet_name: String,
}

/// `compute show -o json`: one object per cluster.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub name: String,
    pub vm_size: String,
    pub vm_priority: &'static str,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub idle_seconds_before_scaledown: u64,
    pub location: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub allocation_state: &'static str,
    pub allocation_state_transition_time: String,
    pub current_node_count: u32,
    pub target_node_count: u32,
    pub node_state_counts: NodeStateCountsView,
    pub errors: Vec<ClusterErrorView>,
    pub quota_family: String,
    pub vcpus_per_node: u32,
    pub inter_node_communication: bool,
    pub identity: IdentityView,
    pub ssh: SshView,
    pub vnet: Option<VnetView>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<v1::Cluster> for ClusterView {
    fn from(c: v1::Cluster) -> Self {
        let s = c.spec.unwrap_or_default();
        let counts = c.node_state_counts.unwrap_or_default();
        let identity = s.identity.unwrap_or_default();
        let ssh = s.ssh.unwrap_or_default();
        ClusterView {
            name: s.name,
            vm_size: s.vm_size,
            vm_priority: priority(s.vm_priority),
            min_nodes: s.min_nodes,
            max_nodes: s.max_nodes.unwrap_or_default(),
            idle_seconds_before_scaledown: s.idle_seconds_before_scaledown.unwrap_or_default(),
            location: s.location,
            description: s.description,
            tags: s.tags.into_iter().collect(),
            allocation_state: match v1::AllocationState::try_from(c.allocation_state) {
                Ok(v1::AllocationState::Resizing) => "resizing",
                _ => "steady",
            },
            allocation_state_transition_time: ts(c.allocation_state_transition_time.as_ref()),
            current_node_count: c.current_node_count,
            target_node_count: c.target_node_count,
            node_state_counts: NodeStateCountsView {
                idle: counts.idle,
                running: counts.running,
                preparing: counts.preparing,
                unusable: counts.unusable,
                leaving: counts.leaving,
                preempted: counts.preempted,
            },
            errors: c
                .errors
                .into_iter()
                .map(|e| ClusterErrorView {
                    code: e.code,
                    message: e.message,
                    since: ts(e.since.as_ref()),
                })
                .collect(),
            quota_family: c.quota_family,
            vcpus_per_node: c.vcpus_per_node,
            inter_node_communication: s.inter_node_communication.unwrap_or(true),
            identity: IdentityView {
                kind: if identity.system_assigned {
                    "system_assigned"
                } else if identity.user_assigned_identities.is_empty() {
                    "none"
                } else {
                    "user_assigned"
                },
                user_assigned_identities: identity.user_assigned_identities,
                identities: c
                    .identities
                    .into_iter()
                    .map(|i| ManagedIdentityView {
                        kind: i.kind,
                        resource_id: i.resource_id,
                        client_id: i.client_id,
                        principal_id: i.principal_id,
                        default: i.is_default,
                    })
                    .collect(),
            },
            ssh: SshView {
                public_access: ssh.remote_login_port_public_access
                    == v1::RemoteLoginPortPublicAccess::Enabled as i32,
                admin_username: ssh.admin_username,
                admin_password_set: c.admin_password_set,
                admin_ssh_public_key: ssh.admin_ssh_public_key,
            },
            vnet: s.vnet.map(|v| VnetView {
                resource_group: v.resource_group,
                vnet_name: v.vnet_name,
                subnet_name: v.subnet_name,
            }),
            created_at: ts(c.created_at.as_ref()),
            updated_at: ts(c.updated_at.as_ref()),
        }
    }
}

impl Render for ClusterView {
    fn table(&self) -> Table {
        let c = &self.node_state_counts;
        let mut pairs = vec![
            ("name", self.name.clone()),
            ("vm_size", self.vm_size.clone()),
            ("vm_priority", self.vm_priority.to_owned()),
            ("location", self.location.clone()),
            ("min_nodes", self.min_nodes.to_string()),
            ("max_nodes", self.max_nodes.to_string()),
            (
                "idle_seconds_before_scaledown",
                self.idle_seconds_before_scaledown.to_string(),
            ),
            ("allocation_state", self.allocation_state.to_owned()),
            (
                "nodes",
                format!(
                    "{} of {} target",
                    self.current_node_count, self.target_node_count
                ),
            ),
            (
                "node_states",
                format!(
                    "idle {} running {} preparing {} unusable {} leaving {} preempted {}",
                    c.idle, c.running, c.preparing, c.unusable, c.leaving, c.preempted
                ),
            ),
            (
                "quota",
                format!(
                    "{} ({} vCPUs per node)",
                    self.quota_family, self.vcpus_per_node
                ),
            ),
            ("identity", self.identity.kind.to_owned()),
        ];
        for i in &self.identity.identities {
            pairs.push((
                if i.default { "  default" } else { "  identity" },
                format!(
                    "{} client_id={} principal_id={}",
                    i.resource_id, i.client_id, i.principal_id
                ),
            ));
        }
        if !self.description.is_empty() {
            pairs.push(("description", self.description.clone()));
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.push(("tags", tags.join(", ")));
        }
        pairs.push(("created_at", self.created_at.clone()));
        for e in &self.errors {
            pairs.push(("error", format!("{}: {}", e.code, e.message)));
        }
        Table::properties(pairs)
    }
}

impl Render for Vec<ClusterView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "NAME", "SIZE", "PRIORITY", "LOCATION", "MIN", "MAX", "NODES", "STATE",
        ]);
        for c in self {
            t.row(vec![
                c.name.clone(),
                c.vm_size.clone(),
                c.vm_priority.to_owned(),
                c.location.clone(),
                c.min_nodes.to_string(),
                c.max_nodes.to_string(),
                format!("{}/{}", c.current_node_count, c.target_node_count),
                c.allocation_state.to_owned(),
            ]);
        }
        t
    }
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub cluster: String,
    pub state: &'static str,
    pub private_ip: String,
    pub port: u32,
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
                Ok(v1::NodeState::Preempted) => "preempted",
                _ => "unknown",
            },
            private_ip: n.private_ip,
            port: n.port,
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

#[derive(Debug, Serialize)]
pub struct SizeView {
    pub name: String,
    pub vcpus: u32,
    pub memory_gib: u32,
    pub gpus: u32,
    pub gpu_model: String,
    pub family: String,
}

impl From<v1::VmSize> for SizeView {
    fn from(s: v1::VmSize) -> Self {
        SizeView {
            name: s.name,
            vcpus: s.vcpus,
            memory_gib: s.memory_gib,
            gpus: s.gpus,
            gpu_model: s.gpu_model,
            family: s.family,
        }
    }
}

impl Render for Vec<SizeView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["NAME", "VCPUS", "MEMORY_GIB", "GPUS", "GPU_MODEL", "FAMILY"]);
        for s in self {
            t.row(vec![
                s.name.clone(),
                s.vcpus.to_string(),
                s.memory_gib.to_string(),
                s.gpus.to_string(),
                if s.gpu_model.is_empty() {
                    "-".into()
                } else {
                    s.gpu_model.clone()
                },
                s.family.clone(),
            ]);
        }
        t
    }
}

#[derive(Debug, Serialize)]
pub struct UsageView {
    pub location: String,
    pub name: String,
    pub unit: String,
    pub current: u64,
    pub limit: u64,
}

impl Render for Vec<UsageView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["LOCATION", "QUOTA", "CURRENT", "LIMIT", "UNIT"]);
        for u in self {
            t.row(vec![
                u.location.clone(),
                u.name.clone(),
                u.current.to_string(),
                u.limit.to_string(),
                u.unit.clone(),
            ]);
        }
        t
    }
}

/// A job state as printed: lowercase, as in `queued`.
pub fn job_state(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Preparing) => "preparing",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Completed) => "completed",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Canceled) => "canceled",
        Ok(v1::JobState::Preempted) => "preempted",
        _ => "unknown",
    }
}

/// A command line as a person would type it: arguments with spaces, quotes
/// or shell characters in single quotes.
pub fn shell_join(args: &[String]) -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%^".contains(c))
    };
    args.iter()
        .map(|a| {
            if plain(a) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `-` for an empty cell.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn exit_cell(code: Option<i32>) -> String {
    code.map_or_else(|| "-".into(), |c| c.to_string())
}

#[derive(Debug, Serialize)]
pub struct JobTransitionView {
    pub state: &'static str,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct JobAttemptView {
    pub attempt: u32,
    pub node_id: String,
    /// Every node of the attempt by rank (rank 0 is `node_id`).
    pub node_ids: Vec<String>,
    pub started_at: String,
    pub ended_at: String,
    pub reason: String,
    pub exit_code: Option<i32>,
}

/// `job show -o json`: one object per job.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub cluster: String,
    pub image: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub state: &'static str,
    pub reason: String,
    pub attempt: u32,
    pub node_id: String,
    pub exit_code: Option<i32>,
    pub max_retries: u32,
    pub node_count: u32,
    pub process_count_per_node: u32,
    pub distribution: &'static str,
    pub created_at: String,
    pub transitions: Vec<JobTransitionView>,
    pub attempts: Vec<JobAttemptView>,
}

impl From<v1::Job> for JobView {
    fn from(j: v1::Job) -> Self {
        let s = j.spec.unwrap_or_default();
        JobView {
            id: j.id,
            name: s.display_name,
            cluster: s.cluster,
            image: s.image,
            command: s.command,
            environment: s.environment.into_iter().collect(),
            state: job_state(j.state),
            reason: j.reason,
            attempt: j.attempt,
            node_id: j.node_id,
            exit_code: j.exit_code,
            max_retries: s.max_retries,
            node_count: s.node_count.max(1),
            process_count_per_node: s.process_count_per_node.max(1),
            distribution: match v1::Distribution::try_from(s.distribution) {
                Ok(v1::Distribution::Mpi) => "mpi",
                Ok(v1::Distribution::Pytorch) => "pytorch",
                _ => "none",
            },
            created_at: ts(j.created_at.as_ref()),
            transitions: j
                .transitions
                .into_iter()
                .map(|t| JobTransitionView {
                    state: job_state(t.state),
                    reason: t.reason,
                    at: ts(t.at.as_ref()),
                })
                .collect(),
            attempts: j
                .attempts
                .into_iter()
                .map(|a| JobAttemptView {
                    attempt: a.attempt,
                    node_id: a.node_id,
                    node_ids: a.node_ids,
                    started_at: ts(a.started_at.as_ref()),
                    ended_at: ts(a.ended_at.as_ref()),
                    reason: a.reason,
                    exit_code: a.exit_code,
                })
                .collect(),
        }
    }
}

impl Render for JobView {
    fn table(&self) -> Table {
        let mut pairs = vec![
            ("id", self.id.clone()),
            ("name", or_dash(&self.name)),
            ("cluster", self.cluster.clone()),
            ("image", self.image.clone()),
            ("command", shell_join(&self.command)),
        ];
        if !self.environment.is_empty() {
            let env: Vec<String> = self
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            pairs.push(("environment", env.join(", ")));
        }
        pairs.extend([
            ("state", self.state.to_owned()),
            ("reason", or_dash(&self.reason)),
            ("attempt", self.attempt.to_string()),
            ("max_retries", self.max_retries.to_string()),
        ]);
        if self.node_count > 1 || self.distribution != "none" {
            pairs.push((
                "nodes",
                format!(
                    "{} x {} process(es), {}",
                    self.node_count, self.process_count_per_node, self.distribution
                ),
            ));
        }
        pairs.extend([
            ("node", or_dash(&self.node_id)),
            ("exit_code", exit_cell(self.exit_code)),
            ("created_at", self.created_at.clone()),
        ]);
        let mut t = Table::properties(pairs);
        if !self.attempts.is_empty() {
            let mut attempts = Table::new(&[
                "ATTEMPT",
                "NODE_ID",
                "STARTED_AT",
                "ENDED_AT",
                "EXIT_CODE",
                "REASON",
            ]);
            for a in &self.attempts {
                attempts.row(vec![
                    a.attempt.to_string(),
                    if a.node_ids.len() > 1 {
                        a.node_ids.join(",")
                    } else {
                        or_dash(&a.node_id)
                    },
                    or_dash(&a.started_at),
                    or_dash(&a.ended_at),
                    exit_cell(a.exit_code),
                    or_dash(&a.reason),
                ]);
            }
            t.section(attempts);
        }
        t
    }
}

impl Render for Vec<JobView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "ID", "NAME", "CLUSTER", "STATE", "ATTEMPT", "NODE", "EXIT", "CREATED",
        ]);
        for j in self {
            t.row(vec![
                j.id.clone(),
                or_dash(&j.name),
                j.cluster.clone(),
                j.state.to_owned(),
                j.attempt.to_string(),
                or_dash(&j.node_id),
                exit_cell(j.exit_code),
                j.created_at.clone(),
            ]);
        }
        t
    }
}

/// `job logs -o json`: one object per log line.
#[derive(Debug, Serialize)]
pub struct LogLineView {
    pub attempt: u32,
    /// The node rank that wrote it (0 for single-node jobs).
    pub rank: u32,
    pub stream: &'static str,
    pub line: String,
    pub seq: u64,
    pub at: String,
}

impl From<v1::LogLine> for LogLineView {
    fn from(l: v1::LogLine) -> Self {
        LogLineView {
            attempt: l.attempt,
            rank: l.rank,
            stream: match v1::LogStream::try_from(l.stream) {
                Ok(v1::LogStream::Stdout) => "stdout",
                Ok(v1::LogStream::Stderr) => "stderr",
                _ => "unknown",
            },
            line: l.line,
            seq: l.seq,
            at: ts(l.at.as_ref()),
        }
    }
}

/// Renders a stream of log lines as they arrive. As a table: each line's
/// text (stdout and stderr alike), with `--- attempt N ---` before the first
/// line of an attempt other than the first one seen (and before the first
/// line if it is not attempt 1), and `[rank N] ` before lines that other
/// nodes than rank 0 of a multi-node job wrote. As JSON: one object per
/// line (JSON Lines).
/// As YAML: one sequence item per line, so the whole output is one list.
#[derive(Debug)]
pub struct LogPrinter {
    format: Format,
    attempt: Option<u32>,
}

impl LogPrinter {
    pub fn new(format: Format) -> Self {
        LogPrinter {
            format,
            attempt: None,
        }
    }

    /// The text to print for `line`, ending in a newline.
    pub fn render(&mut self, line: v1::LogLine) -> anyhow::Result<String> {
        let view = LogLineView::from(line);
        Ok(match self.format {
            Format::Table => {
                let mut out = String::new();
                let changed = match self.attempt {
                    None => view.attempt > 1,
                    Some(previous) => previous != view.attempt,
                };
                if changed {
                    out.push_str(&format!("--- attempt {} ---\n", view.attempt));
                }
                self.attempt = Some(view.attempt);
                if view.rank > 0 {
                    out.push_str(&format!("[rank {}] ", view.rank));
                }
                let text = view.line.strip_suffix('\n').unwrap_or(&view.line);
                out.push_str(text.strip_suffix('\r').unwrap_or(text));
                out.push('\n');
                out
            }
            Format::Json => format!("{}\n", serde_json::to_string(&view)?),
            Format::Yaml => serde_norway::to_string(&[view])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_json_has_the_documented_keys() {
        let view = ClusterView::from(v1::Cluster {
            spec: Some(v1::ClusterSpec {
                name: "cpu".into(),
                max_nodes: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        });
        let json = serde_json::to_value(&view).expect("serialises");
        for key in [
            "name",
            "vm_size",
            "vm_priority",
            "min_nodes",
            "max_nodes",
            "idle_seconds_before_scaledown",
            "location",
            "allocation_state",
            "current_node_count",
            "target_node_count",
            "node_state_counts",
            "errors",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        for key in [
            "idle",
            "running",
            "preparing",
            "unusable",
            "leaving",
            "preempted",
        ] {
            assert!(
                json["node_state_counts"].get(key).is_some(),
                "{key} missing"
            );
        }
    }

    #[test]
    fn table_columns_line_up() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long-cell".into(), "x".into()]);
        let mut out = Vec::new();
        t.write(&mut out).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "A          BB\nlong-cell  x\n"
        );
    }
    fn sample_job() -> v1::Job {
        let t = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        v1::Job {
            id: "j-1".into(),
            spec: Some(v1::JobSpec {
                cluster: "cpu".into(),
                display_name: "train".into(),
                image: "python:3.12".into(),
                command: vec!["python".into(), "-c".into(), "print('hi there')".into()],
                environment: [("A".to_owned(), "1".to_owned())].into(),
                max_retries: 1,
                ..Default::default()
            }),
            state: v1::JobState::Failed as i32,
            attempt: 2,
            exit_code: Some(3),
            transitions: vec![v1::JobTransition {
                state: v1::JobState::Queued as i32,
                reason: "submitted".into(),
                at: t(0),
            }],
            created_at: t(0),
            node_id: "node-a".into(),
            reason: "exited with 3".into(),
            attempts: vec![
                v1::JobAttempt {
                    attempt: 1,
                    node_id: "node-b".into(),
                    started_at: t(1),
                    ended_at: t(2),
                    reason: "node lost".into(),
                    exit_code: None,
                    node_ids: vec!["node-b".into()],
                },
                v1::JobAttempt {
                    attempt: 2,
                    node_id: "node-a".into(),
                    started_at: t(3),
                    ended_at: t(4),
                    reason: "exited with 3".into(),
                    exit_code: Some(3),
                    node_ids: vec!["node-a".into()],
                },
            ],
        }
    }

    #[test]
    fn job_json_has_the_documented_keys() {
        let json = serde_json::to_value(JobView::from(sample_job())).expect("serialises");
        let keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "id",
            "name",
            "cluster",
            "image",
            "command",
            "environment",
            "state",
            "reason",
            "attempt",
            "node_id",
            "exit_code",
            "max_retries",
            "node_count",
            "process_count_per_node",
            "distribution",
            "created_at",
            "transitions",
            "attempts",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["state"], "failed");
        assert_eq!(json["name"], "train");
        assert_eq!(json["exit_code"], 3);
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["environment"]["A"], "1");
        assert_eq!(json["command"][2], "print('hi there')");
        let transition = &json["transitions"][0];
        for key in ["state", "reason", "at"] {
            assert!(transition.get(key).is_some(), "transitions.{key} missing");
        }
        assert_eq!(transition["state"], "queued");
        let attempt = &json["attempts"][0];
        for key in [
            "attempt",
            "node_id",
            "node_ids",
            "started_at",
            "ended_at",
            "reason",
            "exit_code",
        ] {
            assert!(attempt.get(key).is_some(), "attempts.{key} missing");
        }
        assert!(attempt["exit_code"].is_null());
        assert_eq!(json["attempts"][1]["exit_code"], 3);

        let empty = serde_json::to_value(JobView::from(v1::Job::default())).expect("serialises");
        assert!(empty["exit_code"].is_null());
    }

    #[test]
    fn job_states_print_lowercase() {
        use v1::JobState::*;
        let names: Vec<&str> = [
            Queued, Preparing, Running, Completed, Failed, Canceled, Preempted,
        ]
        .into_iter()
        .map(|s| job_state(s as i32))
        .collect();
        assert_eq!(
            names,
            [
                "queued",
                "preparing",
                "running",
                "completed",
                "failed",
                "canceled",
                "preempted"
            ]
        );
    }

    fn table_text(value: &impl Render) -> String {
        let mut out = Vec::new();
        value.table().write(&mut out).expect("writes");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn job_show_table_lists_the_attempts() {
        let text = table_text(&JobView::from(sample_job()));
        for line in [
            "id           j-1",
            "command      python -c 'print('\\''hi there'\\'')'",
            "state        failed",
            "reason       exited with 3",
            "attempt      2",
            "node         node-a",
            "exit_code    3",
            "created_at   1970-01-01T00:00:00Z",
            "",
            "ATTEMPT  NODE_ID  STARTED_AT            ENDED_AT              EXIT_CODE  REASON",
            "1        node-b   1970-01-01T00:00:01Z  1970-01-01T00:00:02Z  -          node lost",
            "2        node-a   1970-01-01T00:00:03Z  1970-01-01T00:00:04Z  3          exited with 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn job_list_table_columns() {
        let text = table_text(&vec![JobView::from(sample_job())]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("ID   NAME   CLUSTER  STATE   ATTEMPT  NODE    EXIT  CREATED")
        );
        assert_eq!(
            lines.next(),
            Some("j-1  train  cpu      failed  2        node-a  3     1970-01-01T00:00:00Z")
        );
    }

    fn log(attempt: u32, stream: v1::LogStream, seq: u64, line: &str) -> v1::LogLine {
        v1::LogLine {
            attempt,
            stream: stream as i32,
            line: line.into(),
            at: Some(prost_types::Timestamp {
                seconds: 60,
                nanos: 0,
            }),
            seq,
            rank: 0,
        }
    }

    #[test]
    fn log_lines_as_text_mark_attempt_changes() {
        use v1::LogStream::{Stderr, Stdout};
        let mut p = LogPrinter::new(Format::Table);
        let mut out = String::new();
        for l in [
            log(1, Stdout, 0, "epoch 1"),
            log(1, Stderr, 1, "warning: slow\n"),
            log(2, Stdout, 0, "epoch 1 again"),
            log(2, Stdout, 1, ""),
        ] {
            out.push_str(&p.render(l).expect("renders"));
        }
        assert_eq!(
            out,
            "epoch 1\nwarning: slow\n--- attempt 2 ---\nepoch 1 again\n\n"
        );
        // Other ranks of a gang are marked.
        let mut p = LogPrinter::new(Format::Table);
        let mut worker = log(1, Stdout, 0, "up");
        worker.rank = 1;
        assert_eq!(p.render(worker).expect("renders"), "[rank 1] up\n");
        // Starting at a later attempt says which one it is.
        let mut p = LogPrinter::new(Format::Table);
        assert_eq!(
            p.render(log(3, Stdout, 0, "x")).expect("renders"),
            "--- attempt 3 ---\nx\n"
        );
    }

    #[test]
    fn log_lines_as_json_are_one_object_per_line() {
        let mut p = LogPrinter::new(Format::Json);
        let a = p
            .render(log(1, v1::LogStream::Stdout, 0, "a"))
            .expect("renders");
        let b = p
            .render(log(2, v1::LogStream::Stderr, 7, "b"))
            .expect("renders");
        assert_eq!(
            a,
            "{\"attempt\":1,\"rank\":0,\"stream\":\"stdout\",\"line\":\"a\",\"seq\":0,\"at\":\"1970-01-01T00:01:00Z\"}\n"
        );
        assert!(!b.contains("---"));
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["seq"], 7);
    }

    #[test]
    fn log_lines_as_yaml_make_one_list() {
        let mut p = LogPrinter::new(Format::Yaml);
        let mut out = String::new();
        for seq in 0..2 {
            out.push_str(
                &p.render(log(1, v1::LogStream::Stdout, seq, "l"))
                    .expect("renders"),
            );
        }
        let v: Vec<serde_json::Value> = serde_norway::from_str(&out).expect("yaml");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["seq"], 1);
    }
}
