//! The control plane's durable state, behind one interface.
//!
//! **Architecture invariant:** every mutation is one transaction, and a
//! caller is answered only after it committed. A quota check and the
//! allocation it guards happen in the same write transaction, so two
//! concurrent requests cannot both take the last cores.

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod records;
mod sql;

use std::future::Future;

use strato_core::SpecError;
use strato_core::identity::Identity;
use strato_core::job::{JobSpec, JobState};
use strato_core::node::{AllocationState, NodeState};
use strato_core::quota::{QuotaError, QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

pub use records::{
    ApiTokenRecord, AttemptRecord, AttemptReport, ClusterIssue, ClusterRecord, DatastoreRecord,
    EnrollReport, GangRank, JobRecord, JoinTokenRecord, Lease, LogRecord, NodeLogs, NodeRecord,
    NodeReport, NodeSession, NodeUsage, QueuedJob, RankToStop, RegistryRecord, ReportOutcome,
    RoleAssignmentRecord, TransitionRecord,
};
pub use sql::{DB_FILE, Dialect, SqlStore};

/// How an enrolling agent proved which node it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment<'a> {
    /// The first time: the hash of the node's join token, and of the public
    /// key its CSR names (empty without TLS). The same token with the same
    /// key is taken again until it expires (the first answer was lost).
    JoinToken { token: &'a str, key: &'a str },
    /// Again: the node its client certificate (or, without TLS, its last
    /// session token) names.
    Node(&'a str),
}

/// The most join tokens that have not expired and have uses left one
/// cluster keeps.
pub const MAX_JOIN_TOKENS: u32 = 100;

/// A machine joining an attached cluster with the cluster's join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join<'a> {
    /// The SHA-256 of the cluster's join token.
    pub token: &'a str,
    /// The SHA-256 of the public key its CSR names (empty without TLS):
    /// the same agent presenting the token again gets its node back.
    pub key: &'a str,
    /// The id a new node gets.
    pub new_node: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster {0:?} not found")]
    ClusterNotFound(String),
    #[error("a cluster named {0:?} already exists")]
    ClusterExists(String),
    #[error("datastore {0:?} not found")]
    DatastoreNotFound(String),
    #[error("a datastore named {0:?} already exists")]
    DatastoreExists(String),
    #[error("registry {0:?} not found")]
    RegistryNotFound(String),
    #[error("a registry named {0:?} already exists")]
    RegistryExists(String),
    #[error("registry {name:?} already serves {server}; one registry per server")]
    RegistryServerTaken { name: String, server: String },
    #[error("job {0:?} not found")]
    JobNotFound(String),
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    #[error("join or session token not recognised")]
    BadToken,
    /// A join token is single use: its node enrolled with it already.
    #[error(
        "join token already used (node {0}); a node that enrolled re-enrols with its client certificate, a new machine needs a new join token"
    )]
    JoinTokenUsed(String),
    #[error("join token expired (node {0}); a new node gets a new one")]
    JoinTokenExpired(String),
    /// An attached cluster's join token admits no more machines.
    #[error("{}", join_refusal(cluster, why))]
    JoinRefused {
        cluster: String,
        why: strato_core::lifecycle::JoinRefusal,
    },
    #[error("an API token named {0:?} exists or existed; choose another name")]
    TokenExists(String),
    #[error("API token {0:?} not found")]
    TokenNotFound(String),
    #[error(
        "cluster {cluster} has no join token {id:?}; `strato compute join-token list -n {cluster}` lists them"
    )]
    JoinTokenNotFound { cluster: String, id: String },
    /// Too many join tokens live at once for one cluster.
    #[error(
        "cluster {cluster} has {limit} join tokens that have not expired; revoke some (`strato compute join-token revoke`) or let them expire"
    )]
    TooManyJoinTokens { cluster: String, limit: u32 },
    #[error("{principal} already has {grant}")]
    AssignmentExists {
        principal: String,
        grant: strato_core::access::Grant,
    },
    #[error("{principal} has no role assignment {grant}")]
    AssignmentNotFound {
        principal: String,
        grant: strato_core::access::Grant,
    },
    /// The state the store found forbids the change (FAILED_PRECONDITION).
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A write of a leader that no longer holds the lease (it was taken
    /// over, or ran out): nothing was stored.
    #[error(
        "fenced: this replica no longer holds the leader lease (epoch {0}); the write was refused"
    )]
    Fenced(i64),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
}

fn join_refusal(cluster: &str, why: &strato_core::lifecycle::JoinRefusal) -> String {
    use strato_core::lifecycle::JoinRefusal;
    let new = format!("make a new one with `strato compute join-token create -n {cluster}`");
    match why {
        JoinRefusal::Expired => format!("the join token of cluster {cluster} expired; {new}"),
        JoinRefusal::Used | JoinRefusal::UsedUp => {
            format!("the join token of cluster {cluster} has no uses left; {new}")
        }
        JoinRefusal::ClusterFull { max_nodes } => format!(
            "cluster {cluster} has max_nodes ({max_nodes}) machines; raise max_nodes or detach one"
        ),
    }
}

/// What the store found that forbids a change. The messages say what to
/// do where that is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Lowering `max_nodes` below a gang that waits or runs would hold the
    /// queue back for ever.
    #[error(
        "max_nodes: job {job} needs {needs} nodes at once; cancel it or keep max_nodes at {needs} or more"
    )]
    MaxNodesBelowGang { job: String, needs: u32 },
    /// A cluster with queued, running or preempted jobs is not deleted.
    #[error(
        "cluster {cluster} has {unfinished} unfinished jobs; cancel them (`strato job cancel`) or wait for them first"
    )]
    ClusterHasUnfinishedJobs { cluster: String, unfinished: u64 },
    /// An unusable or leaving node may not enrol again.
    #[error("node {node} is {} ({reason}); it will be removed", .state.as_str())]
    NodeRetired {
        node: String,
        state: NodeState,
        reason: String,
    },
    /// Only a queued job is assigned.
    #[error("job {job} is {}, not queued", .state.as_str())]
    JobNotQueued { job: String, state: JobState },
    /// Only an ended job is deleted.
    #[error("job {job} is {}: cancel it and delete it once it has ended", .state.as_str())]
    JobNotEnded { job: String, state: JobState },
    /// An ended job whose ranks still stop on their nodes is kept until
    /// they have: deleting it would leave them running unseen.
    #[error(
        "job {job} has ended, but its containers are still stopping on its nodes; delete it once they have"
    )]
    JobStillOnNodes { job: String },
    /// A job takes exactly its node count, all at once.
    #[error("job {job} needs {needs} nodes, not {got}")]
    WrongNodeCount {
        job: String,
        needs: usize,
        got: usize,
    },
    /// Only an idle node without a job takes one.
    #[error("node {node} is {}, not idle", .state.as_str())]
    NodeNotIdle { node: String, state: NodeState },
    /// Output of an attempt the node was not given.
    #[error("node {node} sent output of attempt {attempt} of job {job}, which it does not run")]
    NotAttemptOfNode {
        node: String,
        job: String,
        attempt: u32,
    },
}

/// Computes a cluster's new spec from its current one; runs inside the
/// update's transaction.
pub type SpecUpdate = Box<dyn FnOnce(&ClusterSpec) -> Result<ClusterSpec, SpecError> + Send>;

/// Computes a cluster's new identity spec and identities from its current
/// ones; runs inside the update's transaction.
pub type IdentityUpdate = Box<
    dyn FnOnce(
            &ClusterSpec,
            &[Identity],
        ) -> Result<(strato_core::spec::IdentitySpec, Vec<Identity>), SpecError>
        + Send,
>;

/// Where a page of jobs (newest first) ends: the last job's creation time
/// and its position among jobs created at that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: i64,
    pub position: i64,
}

/// Which page of jobs to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPage {
    /// Jobs after this one; `None`: from the newest.
    pub after: Option<JobCursor>,
    pub limit: u32,
}

impl JobPage {
    /// Every job, for callers that want them all (tests, small stores).
    pub const ALL: JobPage = JobPage {
        after: None,
        limit: u32::MAX,
    };
}

/// The most queued jobs of a cluster `Store::queued_jobs` reads (oldest
/// first), so that a reconcile pass over a long queue stays short. A pass
/// over a managed cluster reads only its oldest `max_nodes` less the nodes
/// holding a job, or as many as it has ready nodes if more
/// (`scale::queued_to_read`: all it could place; demand beyond is capped by
/// `max_nodes`), an attached cluster's up to this many (its issue says how
/// many nodes the queue needs); the rest are read by later passes as these
/// are placed.
pub const QUEUED_READ: u32 = 5_000;

/// Where clusters, nodes and jobs live. `now` is passed in (milliseconds
/// since the epoch) so that the store reads no clock.
pub trait Store: Send + Sync + Clone + 'static {
    /// Stores a new cluster if its name is free and its `min_nodes` fit the
    /// quota of its location; otherwise stores nothing.
    fn create_cluster(
        &self,
        spec: ClusterSpec,
        identities: Vec<Identity>,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    /// Replaces a cluster's identities (spec and issued ids) with
    /// `update(spec, identities)`, in one transaction.
    fn update_identities(
        &self,
        name: &str,
        update: IdentityUpdate,
        now: i64,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    fn get_cluster(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    fn list_clusters(&self) -> impl Future<Output = Result<Vec<ClusterRecord>, StoreError>> + Send;

    /// Replaces a cluster's spec with `update(current)` if the result fits
    /// the quota; otherwise changes nothing.
    fn update_cluster(
        &self,
        name: &str,
        update: SpecUpdate,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    /// Deletes a cluster, its finished jobs and its node records. Refused
    /// while jobs are queued or running.
    /// Returns the node records it removed, whose machines the provider
    /// must now take down.
    fn delete_cluster(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;

    /// Records the allocation state and issues, if they changed.
    fn set_allocation(
        &self,
        cluster: &str,
        state: AllocationState,
        target_nodes: u32,
        errors: Vec<ClusterIssue>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn list_nodes(
        &self,
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;

    fn all_nodes(&self) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;

    /// The nodes of `node_ids` that exist, each as `get_node` has it (with
    /// its latest heartbeat), in no set order; a statement for every 500
    /// (not one snapshot): what a reconcile pass reads again of the nodes
    /// it just placed jobs on.
    fn nodes_by_id(
        &self,
        node_ids: &[String],
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;

    /// Every node's state, job (and that job's current attempt) and session
    /// holder, as `all_nodes` and `get_job` have them, ordered by node id:
    /// what a courier round reads.
    fn node_sessions(&self) -> impl Future<Output = Result<Vec<NodeSession>, StoreError>> + Send;

    /// How many nodes each cluster has in each state (states with none are
    /// left out): what `/metrics` shows, without reading every node.
    fn node_counts(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, NodeState, u64)>, StoreError>> + Send;

    /// One node, with its latest heartbeat.
    fn get_node(
        &self,
        node_id: &str,
    ) -> impl Future<Output = Result<NodeRecord, StoreError>> + Send;

    /// Adds a node (state `preparing`) if one more fits the quota; its
    /// agent enrols once with the join token before `join_expires_at`.
    fn create_node(
        &self,
        cluster: &str,
        node_id: &str,
        join_token_hash: &str,
        join_expires_at: i64,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<NodeRecord, StoreError>> + Send;

    /// Adds `nodes` (each id with its join token's hash) in one
    /// transaction, as `create_node` does, if they all fit the quota;
    /// otherwise stores none. A scale-up's nodes, one commit for all.
    fn create_nodes(
        &self,
        cluster: &str,
        nodes: &[(String, String)],
        join_expires_at: i64,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;

    fn set_node_pid(
        &self,
        node_id: &str,
        pid: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// An agent enrolled: records the session token and returns the node.
    /// A join token is used up by its first enrolment (refused after that,
    /// or once expired, without touching the node). A node that was
    /// enrolled already keeps its state.
    fn enroll(
        &self,
        by: Enrolment<'_>,
        session_token_hash: &str,
        report: &EnrollReport,
        now: i64,
    ) -> impl Future<Output = Result<NodeRecord, StoreError>> + Send;

    /// Stores an attached cluster's join token (its SHA-256), good for
    /// `uses` machines until `expires_at`; the cluster's expired tokens go,
    /// and at most `MAX_JOIN_TOKENS` unexpired ones with uses left are kept
    /// (`TooManyJoinTokens`).
    fn create_join_token(
        &self,
        cluster: &str,
        token_hash: &str,
        uses: u32,
        expires_at: i64,
        created_by: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// An attached cluster's stored join tokens, newest first.
    fn list_join_tokens(
        &self,
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<JoinTokenRecord>, StoreError>> + Send;

    /// Deletes the cluster's join token named `id`; `JoinTokenNotFound`
    /// when there is none.
    fn revoke_join_token(
        &self,
        cluster: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A machine joins an attached cluster with its join token: a new node
    /// (one use of the token, refused past its expiry, its uses, the
    /// cluster's `max_nodes` or the quota), enrolled in the same
    /// transaction; the same agent again gets its node back. `BadToken`
    /// when no cluster has that token.
    fn join(
        &self,
        join: Join<'_>,
        session_token_hash: &str,
        report: &EnrollReport,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<NodeRecord, StoreError>> + Send;

    /// Starts draining a node: it becomes `leaving` (no new job) and, with
    /// `requeue`, its attempts end as lost (queued again); returns the node
    /// and those attempts (job, attempt). A leaving node is left as it is.
    fn detach_node(
        &self,
        node_id: &str,
        requeue: bool,
        now: i64,
    ) -> impl Future<Output = Result<(NodeRecord, Vec<(String, u32)>), StoreError>> + Send;

    /// Moves an attached cluster's machine through a power step
    /// (`lifecycle::PowerStep`) if it is in the step's starting state (and,
    /// for a suspend, has no job); returns whether it moved.
    fn power_step(
        &self,
        node_id: &str,
        step: strato_core::lifecycle::PowerStep,
        reason: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn node_by_session(
        &self,
        session_token_hash: &str,
    ) -> impl Future<Output = Result<NodeRecord, StoreError>> + Send;

    /// A node's agent is alive at `now`, with its utilisation (`None`: its
    /// session began, which is written at once). Heartbeats are not written
    /// one by one: every read of the node shows the latest this store
    /// received, and `persist_heartbeats` writes them all in one go.
    fn heartbeat(
        &self,
        node_id: &str,
        usage: Option<NodeUsage>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes the heartbeats received since the last call in one
    /// transaction (the reconcile loop calls it every
    /// `reconcile::HEARTBEATS_WRITTEN_EVERY_MS`, and at shutdown); returns
    /// how many nodes' were written. Nodes that are gone are forgotten.
    fn persist_heartbeats(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Records that the session `replica` names (the replica and its
    /// session, `Plane::session_key`) holds the agent of `node_id` (a later
    /// session overwrites it).
    fn session_opened(
        &self,
        node_id: &str,
        replica: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets that session `replica` holds `node_id`, unless another
    /// session replaced it.
    fn session_closed(
        &self,
        node_id: &str,
        replica: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets every session recorded with a key starting with `prefix`
    /// (a replica's, at its shutdown).
    fn sessions_ended(&self, prefix: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes or renews the leader lease for `holder`, for `ttl_ms` by the
    /// database's clock. With `held` (the epoch this holder has), renews
    /// it if it is still this holder's and has not run out; without, takes
    /// it if it ran out (or was never taken), one epoch later. Returns the
    /// epoch held now, `None` when the lease is another's (or was lost).
    fn lead(
        &self,
        holder: &str,
        held: Option<i64>,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Gives the lease up at once (a clean stop), if `lease` still holds
    /// it: another replica takes over without waiting for it to run out.
    fn resign(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// For a fenced store, whether its lease still holds (the check each
    /// of its writes makes, `StoreError::Fenced` if not); for another,
    /// `Ok`. Before an effect outside the database that a deposed leader
    /// must not cause (a machine taken down).
    fn check_lease(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// This store with every write fenced by `lease`: a write transaction
    /// first checks, after it has the write lock, that the lease is still
    /// `lease` and has not run out by the database's clock, and stores
    /// nothing (`StoreError::Fenced`) otherwise. A write that finds
    /// nothing to change may answer `Ok` without a transaction, so without
    /// that check (it stores nothing either way). What the leader's
    /// reconcile loop writes through.
    fn fenced(&self, lease: Lease) -> Self
    where
        Self: Sized;

    /// Marks a node unusable (with the reason) and ends any attempt on it as
    /// lost; returns the jobs that were on it.
    fn node_unusable(
        &self,
        node_id: &str,
        reason: &str,
        now: i64,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A Preempt event reached the node: it becomes `preempted` and goes at
    /// `evict_at`; its jobs run on until then.
    fn node_preempted(
        &self,
        node_id: &str,
        evict_at: i64,
        reason: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets a node; any attempt still on it ends as lost (or preempted,
    /// for a preempted node).
    fn delete_node(
        &self,
        node_id: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What the clusters of a location other than `cluster` hold.
    fn usage_of_others(
        &self,
        location: &str,
        cluster: &str,
    ) -> impl Future<Output = Result<QuotaUsage, StoreError>> + Send;

    /// Sets the reason shown on a cluster's queued jobs (e.g. why no node
    /// can be added for them): on all of them, or with `since` only on those
    /// queued (submitted or queued again) at or after it.
    fn set_queued_reason(
        &self,
        cluster: &str,
        reason: &str,
        since: Option<i64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What the clusters of a location hold against the quota.
    fn usage(&self, location: &str) -> impl Future<Output = Result<QuotaUsage, StoreError>> + Send;

    /// Stores a queued job after checking its cluster exists.
    /// Stores a new queued job, recording who submitted it.
    fn submit_job(
        &self,
        id: &str,
        spec: JobSpec,
        submitted_by: &str,
        now: i64,
    ) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    fn get_job(&self, id: &str) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    /// Jobs, newest first; of one cluster if given.
    fn list_jobs(
        &self,
        cluster: Option<&str>,
        page: JobPage,
    ) -> impl Future<Output = Result<(Vec<JobRecord>, Option<JobCursor>), StoreError>> + Send;

    /// How many jobs each cluster has in each state (states with none are
    /// left out).
    fn job_counts(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, JobState, u64)>, StoreError>> + Send;

    /// Queued jobs of a cluster, oldest first: at most `limit`, and never
    /// more than [`QUEUED_READ`].
    fn queued_jobs(
        &self,
        cluster: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<QueuedJob>, StoreError>> + Send;

    /// Deletes an ended job (completed, failed, canceled) with its
    /// attempts, transitions and logs; one that has not ended is refused
    /// (`Conflict::JobNotEnded`).
    fn delete_job(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes at most `limit` jobs that ended before `cutoff` (ms), oldest
    /// first, as `delete_job` does; returns how many.
    fn delete_jobs_ended_before(
        &self,
        cutoff: i64,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Cancels a queued job at once; a job on a node is marked for
    /// cancellation (the agent stops it). A final job is returned as is.
    fn cancel_job(
        &self,
        id: &str,
        now: i64,
    ) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    /// Marks each running job whose current attempt has run past its
    /// `limits.timeout` (by `now`) for cancellation, with that as its
    /// reason (`job::timeout_reason`); returns the jobs marked. Its nodes
    /// are told to stop it as for any cancel.
    fn cancel_timed_out(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Ranks whose containers must stop: of jobs asked to cancel, and of
    /// attempts that ended (a gang ends as a whole) while they still run.
    fn ranks_to_stop(&self) -> impl Future<Output = Result<Vec<RankToStop>, StoreError>> + Send;

    /// Puts a queued job on idle nodes (one per rank, rank 0 first) as its
    /// next attempt, all of them or none.
    fn assign_job(
        &self,
        job_id: &str,
        node_ids: &[String],
        now: i64,
    ) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    /// Many placements (job, its nodes) in one transaction, in order: each
    /// as `assign_job` would do it, or refused as it would refuse it
    /// (`Conflict`, or a job or node not found), storing nothing of that
    /// one; the others are stored. One commit for a whole reconcile pass's
    /// placements. Fails whole only on a database error.
    fn assign_jobs(
        &self,
        placements: &[(String, Vec<String>)],
        now: i64,
    ) -> impl Future<Output = Result<Vec<Result<JobRecord, StoreError>>, StoreError>> + Send;

    /// The nodes of an attempt, by rank, while the attempt is current.
    fn gang(
        &self,
        job_id: &str,
        attempt: u32,
    ) -> impl Future<Output = Result<Vec<GangRank>, StoreError>> + Send;

    /// Stores what an agent reported about an attempt on its node.
    fn report_attempt(
        &self,
        node_id: &str,
        job_id: &str,
        attempt: u32,
        report: AttemptReport,
        now: i64,
    ) -> impl Future<Output = Result<ReportOutcome, StoreError>> + Send;

    /// Many agents' reports in one transaction, in order, all at `now`:
    /// each stored as `report_attempt` would store it, or answered with
    /// the error it would have given, storing nothing of that one; the
    /// others are stored by one commit (after a report that failed, by one
    /// more try without it). Fails whole when the batch cannot be written
    /// at all (the database, a lost lease).
    fn report_attempts(
        &self,
        reports: &[NodeReport],
        now: i64,
    ) -> impl Future<Output = Result<Vec<Result<ReportOutcome, StoreError>>, StoreError>> + Send;

    /// Stores log lines of an attempt that ran on `node_id` (lines of
    /// attempts of other nodes are refused); lines already stored are
    /// skipped. Counts as a heartbeat of the node.
    fn append_logs(
        &self,
        node_id: &str,
        job_id: &str,
        attempt: u32,
        lines: &[LogRecord],
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Many agents' log messages in one transaction, in order, all at
    /// `now`: each stored as `append_logs` would store it, or answered with
    /// the error it would have given, storing nothing of that one; the
    /// others are stored by one commit. Fails whole when the batch cannot
    /// be written at all (the database, a lost lease).
    fn append_node_logs(
        &self,
        batch: &[NodeLogs],
        now: i64,
    ) -> impl Future<Output = Result<Vec<Result<(), StoreError>>, StoreError>> + Send;

    /// Log lines after position `after` (the `pos` of the last line seen),
    /// in arrival order, at most `limit`.
    fn logs(
        &self,
        job_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LogRecord>, StoreError>> + Send;

    fn create_datastore(
        &self,
        d: DatastoreRecord,
    ) -> impl Future<Output = Result<DatastoreRecord, StoreError>> + Send;

    fn get_datastore(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<DatastoreRecord, StoreError>> + Send;

    fn list_datastores(
        &self,
    ) -> impl Future<Output = Result<Vec<DatastoreRecord>, StoreError>> + Send;

    fn delete_datastore(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores a registry; its name and its server are each taken once.
    fn create_registry(
        &self,
        r: RegistryRecord,
    ) -> impl Future<Output = Result<RegistryRecord, StoreError>> + Send;

    fn get_registry(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<RegistryRecord, StoreError>> + Send;

    /// The registry that serves `server` (compared as stored: lowercase).
    fn registry_for_server(
        &self,
        server: &str,
    ) -> impl Future<Output = Result<Option<RegistryRecord>, StoreError>> + Send;

    fn list_registries(
        &self,
    ) -> impl Future<Output = Result<Vec<RegistryRecord>, StoreError>> + Send;

    fn delete_registry(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores a new API token; with `replace`, one of the same name goes
    /// first (the bootstrap token, made anew with a new admin.conf).
    fn create_api_token(
        &self,
        token: ApiTokenRecord,
        replace: bool,
    ) -> impl Future<Output = Result<ApiTokenRecord, StoreError>> + Send;

    /// The token whose secret has this hash, revoked or expired or not.
    fn api_token_by_hash(
        &self,
        secret_hash: &str,
    ) -> impl Future<Output = Result<Option<ApiTokenRecord>, StoreError>> + Send;

    fn api_token(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ApiTokenRecord, StoreError>> + Send;

    fn list_api_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<ApiTokenRecord>, StoreError>> + Send;

    /// Revokes a token (a revoked one stays revoked, from its first time).
    fn revoke_api_token(
        &self,
        name: &str,
        now: i64,
    ) -> impl Future<Output = Result<ApiTokenRecord, StoreError>> + Send;

    fn create_role_assignment(
        &self,
        assignment: RoleAssignmentRecord,
    ) -> impl Future<Output = Result<RoleAssignmentRecord, StoreError>> + Send;

    /// Role assignments, of one principal if given.
    fn list_role_assignments(
        &self,
        principal: Option<&str>,
    ) -> impl Future<Output = Result<Vec<RoleAssignmentRecord>, StoreError>> + Send;

    fn delete_role_assignment(
        &self,
        principal: &str,
        grant: &strato_core::access::Grant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
