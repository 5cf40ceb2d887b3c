//! What the store keeps and returns: one record per entity, and what agents
//! report.

use strato_core::identity::Identity;
use strato_core::job::{AttemptEnd, JobSpec, JobState};
use strato_core::node::{AllocationState, NodeState};
use strato_core::spec::ClusterSpec;

/// Why a cluster is not where it should be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterIssue {
    pub code: String,
    pub message: String,
    pub since: i64,
}

/// A cluster as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRecord {
    pub spec: ClusterSpec,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    /// The allocation state the reconcile loop last recorded, since when,
    /// and why the cluster is not at its target.
    pub allocation_state: AllocationState,
    pub allocation_since: i64,
    pub target_nodes: u32,
    pub errors: Vec<ClusterIssue>,
    /// The managed identities, with their ids.
    pub identities: Vec<Identity>,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    pub cluster: String,
    pub state: NodeState,
    pub private_ip: String,
    pub port: u16,
    /// The job on the node, if any.
    pub run_id: Option<String>,
    pub reason: String,
    pub state_since: i64,
    pub created_at: i64,
    pub idle_since: i64,
    pub last_heartbeat: Option<i64>,
    /// The agent has enrolled at least once.
    pub enrolled: bool,
    pub hostname: String,
    pub pid: Option<u32>,
    pub metrics_url: String,
    pub gpus: u32,
    /// The GPUs the agent found at enrolment.
    pub gpu_info: Vec<strato_core::node::GpuInfo>,
    pub usage: NodeUsage,
    /// For a preempted node: when it is evicted (ms).
    pub evict_at: Option<i64>,
    /// The SSH host key its agent reported, when it serves SSH.
    pub ssh_host_key: String,
    /// The control-plane replica that holds its agent's session, while one
    /// does (as that replica wrote it: a replica killed leaves its name
    /// until the agent opens a session elsewhere).
    pub session_replica: Option<String>,
}

/// A node's utilisation from its last heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeUsage {
    pub cpu_percent: f64,
    pub memory_used: u64,
    pub memory_total: u64,
    pub gpu_percent: f64,
}

impl Eq for NodeUsage {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    pub at: i64,
    pub attempt: u32,
    pub state: JobState,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub node_id: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub reason: String,
    pub exit_code: Option<i64>,
    /// The attempt's nodes by rank (rank 0 first; one for single-node jobs).
    pub node_ids: Vec<String>,
}

/// A rank of an attempt that ended while its container may still run:
/// its node must stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankToStop {
    pub job_id: String,
    pub attempt: u32,
    pub node_id: String,
}

/// One node of an attempt's gang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangRank {
    pub rank: u32,
    pub node_id: String,
}

/// A queued job and the nodes it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: String,
    pub node_count: u32,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub reason: String,
    pub attempt: u32,
    pub failures: u32,
    pub preemptions: u32,
    pub node_id: Option<String>,
    pub exit_code: Option<i64>,
    pub cancel_requested: bool,
    /// Why the cancel was asked for, when not by a user (a timeout).
    pub cancel_reason: String,
    /// The principal that submitted it (empty: before principals were
    /// recorded).
    pub submitted_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub transitions: Vec<TransitionRecord>,
    pub attempts: Vec<AttemptRecord>,
}

/// What an agent says of its node when it enrols.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollReport {
    pub hostname: String,
    pub metrics_url: String,
    /// Where the node serves SSH, when its cluster enables it: the address
    /// (the metrics URL's host) and port; empty and 0 otherwise.
    pub ssh_address: String,
    pub ssh_port: u16,
    pub ssh_host_key: String,
    pub gpus: u32,
    pub gpu_info: Vec<strato_core::node::GpuInfo>,
}

/// A registry as stored: its password only sealed (`secrets::SecretBox`,
/// for `registry:NAME`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryRecord {
    pub name: String,
    pub server: String,
    pub username: String,
    pub password_sealed: String,
    /// Set instead of basic credentials: the cluster identity pulls use
    /// (`default` or a resource id).
    pub identity: String,
    /// The clusters whose jobs may pull with it (`*`: all).
    pub clusters: Vec<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for RegistryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRecord")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password_sealed", &"(sealed)")
            .field("identity", &self.identity)
            .field("clusters", &self.clusters)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A datastore as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreRecord {
    pub name: String,
    pub account_url: String,
    pub container: String,
    pub created_at: i64,
}

/// One stored line of a job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Position in arrival order among all lines (the follow cursor).
    pub pos: i64,
    pub attempt: u32,
    /// The rank that wrote it; `seq` counts per rank.
    pub rank: u32,
    pub seq: u64,
    /// 1 stdout, 2 stderr.
    pub stream: u8,
    pub line: String,
    pub at: i64,
}

/// What an agent says about one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptReport {
    /// Still preparing (pulling the image): what it is doing, shown as
    /// the job's reason while it is preparing. No transition is recorded.
    Preparing(String),
    Running,
    Ended(AttemptEnd, String),
}

/// A node as a replica's courier reads it every round: its state, its job
/// (with the job's current attempt) and which replica holds its agent's
/// session (a few columns of every node, not the whole record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSession {
    pub node_id: String,
    pub state: NodeState,
    /// The job on the node, if any.
    pub run_id: Option<String>,
    /// That job's current attempt (`JobRecord::attempt`).
    pub attempt: Option<u32>,
    /// As `NodeRecord::session_replica`.
    pub session_replica: Option<String>,
}

/// An agent's report about an attempt on its node, as
/// `Store::report_attempts` takes many of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub node_id: String,
    pub job_id: String,
    pub attempt: u32,
    pub report: AttemptReport,
}

/// One message of an agent's output, as `Store::append_node_logs` takes
/// many of them: lines of an attempt on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLogs {
    pub node_id: String,
    pub job_id: String,
    pub attempt: u32,
    pub lines: Vec<LogRecord>,
}

/// The outcome of storing an attempt report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Stored, or already known.
    Recorded,
    /// The attempt has ended and its result is stored: the agent may
    /// remove its container.
    Release,
    /// The report is about an attempt this node does not hold (stale):
    /// the agent should stop and remove it.
    Stale,
}

/// An API token as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    pub grant: strato_core::access::Grant,
    pub created_at: i64,
    /// `None`: never expires.
    pub expires_at: Option<i64>,
    /// The principal that made it.
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

impl ApiTokenRecord {
    /// Its principal: `token:NAME`.
    pub fn principal(&self) -> String {
        strato_core::access::Principal::Token(self.name.clone()).to_string()
    }

    /// Whether calls with it are accepted at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        strato_core::access::token_state(self.revoked_at, self.expires_at, now)
            == strato_core::access::TokenState::Valid
    }
}

/// A role given to a principal at a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignmentRecord {
    pub principal: String,
    pub grant: strato_core::access::Grant,
    pub created_at: i64,
}

/// An attached cluster's join token as stored (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// The first 16 hex digits of the token's SHA-256: what names it.
    pub id: String,
    pub cluster: String,
    pub uses_left: u32,
    pub expires_at: i64,
    pub created_at: i64,
    pub created_by: String,
}

/// The leader lease as one replica holds it: the replica and the epoch it
/// took the lease at (each take adds one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
}
