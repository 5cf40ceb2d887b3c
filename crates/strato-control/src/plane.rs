//! What the control plane's services and its reconcile loop share: the
//! store, the settings, the provider, the agents' live sessions, and the
//! events that wake waiters.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use strato_proto::v1;
use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;

use crate::config::Settings;
use crate::provider::NodeProvider;

/// A random salt for SHA-512 crypt: 16 characters of its alphabet.
pub fn new_salt() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .map(|b| char::from(strato_core::crypt::ALPHABET[usize::from(b & 0x3f)]))
        .collect()
}

/// SHA-256 of a token, hex: the store keeps hashes, never tokens.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random token: 244 random bits from two v4 UUIDs.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub type Outbound = mpsc::Sender<Result<v1::ControlMessage, Status>>;

/// Where a relayed exec's output goes: the node that asked and its own id
/// for the exec, and the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRoute {
    pub origin_node: String,
    pub origin_exec_id: String,
    pub target_node: String,
}

/// Execs in flight between nodes, by the relay id the target node knows.
#[derive(Default)]
pub struct ExecRoutes {
    routes: Mutex<HashMap<String, ExecRoute>>,
}

impl ExecRoutes {
    /// Remembers a route; returns the relay id for the target node.
    pub fn open(&self, route: ExecRoute) -> String {
        let id = format!("x{}", uuid::Uuid::new_v4().simple());
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(id.clone(), route);
        }
        id
    }

    /// The route of `relay_id`, if `from` is the node that runs it.
    pub fn get(&self, relay_id: &str, from: &str) -> Option<ExecRoute> {
        let routes = self.routes.lock().ok()?;
        routes
            .get(relay_id)
            .filter(|r| r.target_node == from)
            .cloned()
    }

    pub fn close(&self, relay_id: &str) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(relay_id);
        }
    }
}

/// One agent's open session stream on this replica.
struct Session {
    generation: u64,
    tx: Outbound,
    /// Its `Hello` was handled: what the node holds is known, and the
    /// courier may send it what the database says it should run.
    ready: bool,
    /// The attempts assigned (or found held) in this session: each is sent
    /// once per session.
    assigned: HashSet<(String, u32)>,
}

/// The agents' open session streams on this replica, by node id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    next: AtomicU64,
    /// Set by `close_all` (shutdown): no session opens after it (one that
    /// did would hold the server's graceful shutdown open).
    closed: std::sync::atomic::AtomicBool,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a node's new session, replacing an older one; returns its
    /// generation for `close`, or `None` once this replica is stopping.
    pub fn open(&self, node_id: &str, tx: Outbound) -> Option<u64> {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.lock();
        // Read under the lock `close_all` sets it under.
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        open.insert(
            node_id.to_owned(),
            Session {
                generation,
                tx,
                ready: false,
                assigned: HashSet::new(),
            },
        );
        Some(generation)
    }

    /// The session's `Hello` was handled.
    pub fn ready(&self, node_id: &str, generation: u64) {
        if let Some(s) = self.lock().get_mut(node_id)
            && s.generation == generation
        {
            s.ready = true;
        }
    }

    /// Forgets a session, unless a newer one replaced it; true when it was
    /// forgotten.
    pub fn close(&self, node_id: &str, generation: u64) -> bool {
        let mut open = self.lock();
        if open
            .get(node_id)
            .is_some_and(|s| s.generation == generation)
        {
            open.remove(node_id);
            return true;
        }
        false
    }

    /// Ends every open session stream and refuses those that would open
    /// after (at shutdown: a server draining its requests would otherwise
    /// wait for agents that never hang up).
    pub fn close_all(&self) {
        let mut open = self.lock();
        self.closed.store(true, Ordering::SeqCst);
        open.clear();
    }

    pub fn drop_node(&self, node_id: &str) {
        self.lock().remove(node_id);
    }

    /// How many agents hold a session now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn connected(&self, node_id: &str) -> bool {
        self.lock().contains_key(node_id)
    }

    /// The nodes whose sessions are ready, with each session's generation.
    pub fn ready_nodes(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(id, s)| (id.clone(), s.generation))
            .collect()
    }

    /// Whether the attempt went to (or was held by) the node in its
    /// current session.
    pub fn was_assigned(&self, node_id: &str, job_id: &str, attempt: u32) -> bool {
        self.lock()
            .get(node_id)
            .is_some_and(|s| s.assigned.contains(&(job_id.to_owned(), attempt)))
    }

    /// Notes an attempt the node holds (its `Hello` said so): never sent
    /// to it again in this session.
    pub fn holds(&self, node_id: &str, job_id: &str, attempt: u32) {
        if let Some(s) = self.lock().get_mut(node_id) {
            s.assigned.insert((job_id.to_owned(), attempt));
        }
    }

    /// Queues a message to a node's agent; false when it has no session or
    /// its queue is full (the reconcile loop sends again later).
    pub fn send(&self, node_id: &str, message: v1::control_message::Body) -> bool {
        let tx = self.lock().get(node_id).map(|s| s.tx.clone());
        tx.is_some_and(|tx| {
            tx.try_send(Ok(v1::ControlMessage {
                body: Some(message),
            }))
            .is_ok()
        })
    }

    /// Queues an assignment once per session: false when it went (or was
    /// held) already, or there is no session, or its queue is full (then it
    /// is not noted, and goes again at the next try).
    pub fn assign(&self, node_id: &str, assignment: v1::JobAssignment) -> bool {
        let key = (assignment.job_id.clone(), assignment.attempt);
        let mut open = self.lock();
        let Some(session) = open.get_mut(node_id) else {
            return false;
        };
        if !session.assigned.insert(key.clone()) {
            return false;
        }
        let sent = session
            .tx
            .try_send(Ok(v1::ControlMessage {
                body: Some(v1::control_message::Body::Assign(assignment)),
            }))
            .is_ok();
        if !sent {
            session.assigned.remove(&key);
        }
        sent
    }
}

/// The most recent scale events kept per cluster.
pub const SCALE_EVENTS_PER_CLUSTER: usize = 50;

/// One thing the reconcile loop did to a cluster, or found of it: a node
/// added or removed (and why), a node the provider could not make, the
/// allocation state changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleEvent {
    /// Milliseconds since the epoch.
    pub at: i64,
    pub what: String,
}

/// The recent scale events of each cluster, newest last, in memory (a
/// restart starts them afresh; the log has them all): what the studio's
/// cluster page shows.
#[derive(Debug, Default)]
pub struct ScaleEvents {
    by_cluster: Mutex<HashMap<String, std::collections::VecDeque<ScaleEvent>>>,
}

impl ScaleEvents {
    pub fn record(&self, cluster: &str, at: i64, what: impl Into<String>) {
        let mut all = self.by_cluster.lock().unwrap_or_else(|e| e.into_inner());
        let events = all.entry(cluster.to_owned()).or_default();
        if events.len() == SCALE_EVENTS_PER_CLUSTER {
            events.pop_front();
        }
        events.push_back(ScaleEvent {
            at,
            what: what.into(),
        });
    }

    /// Newest first.
    pub fn of(&self, cluster: &str) -> Vec<ScaleEvent> {
        self.by_cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// A deleted cluster's events go with it.
    pub fn forget(&self, cluster: &str) {
        self.by_cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cluster);
    }
}

/// Wake-ups: the reconcile loop on any event, and waiters (job wait, log
/// follow) whenever a job or its logs changed.
pub struct Events {
    reconcile: Notify,
    changes: watch::Sender<u64>,
    /// New output, per job with followers: a log batch wakes its own job's
    /// followers only, however many follow other jobs.
    output: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            reconcile: Notify::new(),
            changes: watch::channel(0).0,
            output: Mutex::default(),
        }
    }
}

impl Events {
    /// Something happened: reconcile now, and wake waiters.
    pub fn changed(&self) {
        self.reconcile.notify_one();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// New output of `job` only: wake that job's log followers, not the
    /// reconcile loop or anyone else.
    pub fn output(&self, job: &str) {
        let Ok(mut followed) = self.output.lock() else {
            return;
        };
        if let Some(tx) = followed.get(job) {
            if tx.receiver_count() == 0 {
                followed.remove(job);
            } else {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// For a follower of `job`'s output: wakes on its new output.
    pub fn follow_output(&self, job: &str) -> watch::Receiver<u64> {
        match self.output.lock() {
            Ok(mut followed) => {
                // Forget jobs nobody follows any more.
                followed.retain(|_, tx| tx.receiver_count() > 0);
                followed
                    .entry(job.to_owned())
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe()
            }
            // Poisoned: wake on state changes instead; the follower's
            // recheck still serves.
            Err(_) => self.changes.subscribe(),
        }
    }

    pub async fn reconcile_requested(&self) {
        self.reconcile.notified().await;
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The Scheduled Events documents the local provider serves its nodes, by
/// node id.
#[derive(Default)]
pub struct ScheduledEvents {
    docs: Mutex<HashMap<String, (u64, Vec<serde_json::Value>)>>,
}

impl ScheduledEvents {
    /// Adds a Preempt event for a node; returns its id.
    pub fn preempt(&self, node_id: &str, not_before: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string().to_uppercase();
        if let Ok(mut docs) = self.docs.lock() {
            let doc = docs.entry(node_id.to_owned()).or_default();
            doc.0 += 1;
            doc.1.push(serde_json::json!({
                "EventId": id,
                "EventType": "Preempt",
                "ResourceType": "VirtualMachine",
                "Resources": [node_id],
                "EventStatus": "Scheduled",
                "NotBefore": not_before,
                "Description": "Simulated eviction of a low-priority node (strato compute simulate-eviction)",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }));
        }
        id
    }

    /// The document for a node (REFERENCE.md's format).
    pub fn document(&self, node_id: &str) -> serde_json::Value {
        let (incarnation, events) = self
            .docs
            .lock()
            .ok()
            .and_then(|d| d.get(node_id).cloned())
            .unwrap_or_default();
        serde_json::json!({ "DocumentIncarnation": incarnation, "Events": events })
    }

    /// An acknowledgement (`StartRequests`): the events start.
    pub fn start(&self, node_id: &str, event_ids: &[String]) {
        if let Ok(mut docs) = self.docs.lock()
            && let Some(doc) = docs.get_mut(node_id)
        {
            for e in doc.1.iter_mut() {
                if e["EventId"]
                    .as_str()
                    .is_some_and(|id| event_ids.iter().any(|x| x == id))
                {
                    e["EventStatus"] = "Started".into();
                }
            }
            doc.0 += 1;
        }
    }

    pub fn forget(&self, node_id: &str) {
        if let Ok(mut docs) = self.docs.lock() {
            docs.remove(node_id);
        }
    }
}

pub struct Plane<S> {
    /// This control-plane process among the replicas on its database
    /// (`leadership::replica_id`).
    pub replica: String,
    pub scheduled_events: ScheduledEvents,
    pub store: S,
    /// Agents' attempt reports, written in batches (`reports`).
    pub reports: crate::reports::ReportWriter,
    /// Agents' output, written in batches (`reports`).
    pub logs: crate::reports::LogWriter,
    pub tokens: crate::tokens::TokenIssuer,
    /// Set: tokens come from Entra ID through federation instead.
    pub federation: Option<crate::federation::Federation>,
    /// Where the HTTP side port is reached (for the discovery document).
    pub http_base: String,
    pub settings: Settings,
    pub provider: Box<dyn NodeProvider>,
    /// The one source of the time: the system clock in production, a
    /// manual one in tests.
    pub clock: std::sync::Arc<dyn strato_runtime::Clock>,
    pub sessions: Sessions,
    /// Execs relayed between the nodes of a gang.
    pub execs: ExecRoutes,
    pub counters: crate::metrics::Counters,
    pub events: Events,
    /// Job submits per caller (`--submit-rate`, `--submit-burst`).
    pub submits: SubmitLimits,
    /// Open `logs --follow` streams per caller.
    pub followers: std::sync::Arc<Followers>,
    /// The TLS the control plane serves, with the CA that signs node
    /// certificates; `None` under `--insecure-plaintext`.
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
    /// The OIDC issuer whose JWTs are users (`--oidc-issuer`).
    pub oidc: crate::oidc::Oidc,
    /// Seals and opens secrets kept in the store (registry passwords).
    pub secrets: crate::secrets::SecretBox,
    /// Extra CA certificates (PEM) trusted for storage endpoints, where the
    /// control plane itself writes code and reads outputs
    /// (`--storage-ca-file`).
    pub storage_ca: Option<Vec<u8>>,
    /// What the reconcile loop recently did to each cluster.
    pub scale_events: ScaleEvents,
}

impl<S> Plane<S> {
    /// What the database records for a session of this replica
    /// (`nodes.session_replica`): the replica and the session's
    /// generation, so that an older session's end clears only its own.
    pub fn session_key(&self, generation: u64) -> String {
        format!("{}{generation}", self.sessions_prefix())
    }

    /// What every session key of this replica starts with.
    pub fn sessions_prefix(&self) -> String {
        format!("{}#", self.replica)
    }

    /// A token of `identity`, an identity of `cluster`, for `resource`:
    /// issued here, or from Entra ID through federation. For the control
    /// plane's own use on the cluster's behalf; never handed to a caller.
    pub async fn identity_token(
        &self,
        cluster: &str,
        identity: &strato_core::identity::Identity,
        resource: &str,
    ) -> Result<crate::tokens::IssuedToken, crate::app::AppError> {
        let now = self.clock.now_ms() / 1000;
        match &self.federation {
            None => self
                .tokens
                .issue(identity, resource, now)
                .map_err(|e| crate::app::AppError::Internal(crate::app::Internal::Token(e))),
            Some(federation) => Ok(federation
                .token(&self.tokens, cluster, identity, resource, now)
                .await?),
        }
    }
}

/// How many long-lived calls (log streams followed, jobs waited on) each
/// caller keeps open, bounded per caller so that one client cannot hold
/// the control plane's tasks and wake-ups.
#[derive(Debug)]
pub struct Followers {
    per_caller: u32,
    open: Mutex<HashMap<String, u32>>,
}

/// One open follow stream; its caller's count goes down when it drops.
#[derive(Debug)]
pub struct FollowerSlot {
    followers: std::sync::Arc<Followers>,
    caller: String,
}

impl Followers {
    pub fn new(per_caller: u32) -> Self {
        Followers {
            per_caller,
            open: Mutex::default(),
        }
    }

    /// The most streams one caller may follow at once.
    pub fn per_caller(&self) -> u32 {
        self.per_caller
    }

    /// A slot for `caller`, or `None` when it follows its most already.
    pub fn admit(self: &std::sync::Arc<Self>, caller: &str) -> Option<FollowerSlot> {
        // A poisoned count is still right: every change is one step.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(caller.to_owned()).or_insert(0);
        if *n >= self.per_caller {
            return None;
        }
        *n += 1;
        Some(FollowerSlot {
            followers: self.clone(),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        let mut open = self
            .followers
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// A token bucket per caller for job submits.
#[derive(Debug)]
pub struct SubmitLimits {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<String, strato_core::rate::TokenBucket>>,
}

/// Callers whose buckets are kept at most; past it, full buckets (callers
/// idle long enough to have refilled) are forgotten first.
const MAX_SUBMIT_BUCKETS: usize = 10_000;

impl SubmitLimits {
    pub fn new(rate: f64, burst: u32) -> Self {
        SubmitLimits {
            rate,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// Takes one submit for `caller` at `now_ms`, or says how long to wait.
    pub fn take(&self, caller: &str, now_ms: i64) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_SUBMIT_BUCKETS && !buckets.contains_key(caller) {
            buckets.retain(|_, b| !b.full_at(now_ms));
        }
        buckets
            .entry(caller.to_owned())
            .or_insert_with(|| strato_core::rate::TokenBucket::new(self.rate, self.burst, now_ms))
            .take(now_ms)
    }

    /// `--submit-rate` and `--submit-burst`, for messages.
    pub fn limits(&self) -> (f64, u32) {
        (self.rate, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_session_opens_once_all_were_closed() {
        let sessions = Sessions::default();
        let (tx, _rx) = mpsc::channel(1);
        assert!(sessions.open("n0", tx.clone()).is_some());
        sessions.close_all();
        assert_eq!(sessions.count(), 0);
        assert!(
            sessions.open("n1", tx).is_none(),
            "a session opening during shutdown would hold it open"
        );
        assert_eq!(sessions.count(), 0);
    }

    #[test]
    fn output_wakes_only_its_own_jobs_followers() {
        let events = Events::default();
        let a = events.follow_output("job-a");
        let b = events.follow_output("job-b");
        events.output("job-a");
        assert!(a.has_changed().unwrap_or(false), "job-a's follower wakes");
        assert!(!b.has_changed().unwrap_or(true), "job-b's does not");
        drop(a);
        events.output("job-a");
        assert_eq!(
            events.output.lock().map(|m| m.len()).unwrap_or(0),
            1,
            "a job nobody follows is forgotten"
        );
        events.output("job-nobody-follows");
    }
}

#[cfg(test)]
mod submit_tests {
    use super::*;

    #[test]
    fn each_caller_has_a_bucket_of_its_own() {
        let limits = SubmitLimits::new(10.0, 2);
        assert!(limits.take("a", 0).is_ok());
        assert!(limits.take("a", 0).is_ok());
        assert_eq!(limits.take("a", 0), Err(100));
        assert!(
            limits.take("b", 0).is_ok(),
            "another caller is not held back"
        );
        assert!(limits.take("a", 100).is_ok());
    }
}

#[cfg(test)]
mod scale_event_tests {
    use super::*;

    #[test]
    fn scale_events_are_bounded_per_cluster_and_newest_first() {
        let events = ScaleEvents::default();
        for i in 0..(SCALE_EVENTS_PER_CLUSTER + 5) {
            events.record("cpu", i as i64, format!("e{i}"));
        }
        events.record("gpu", 1, "g");
        let cpu = events.of("cpu");
        assert_eq!(cpu.len(), SCALE_EVENTS_PER_CLUSTER);
        assert_eq!(cpu[0].what, format!("e{}", SCALE_EVENTS_PER_CLUSTER + 4));
        assert_eq!(events.of("gpu").len(), 1);
        events.forget("cpu");
        assert!(events.of("cpu").is_empty());
    }
}
