//! The agent's side of the control plane: enrol, hold one session stream,
//! run what is assigned, and reconnect with backoff when the stream breaks.
//!
//! **Architecture invariant:** the node's containers are the source of truth
//! for what runs here. Every job container carries the labels node, cluster,
//! job and attempt, and its name is `strato-<job>-<attempt>-<node>`, so creating it
//! twice is impossible. On every new session the agent lists its labelled
//! containers, reports them, and streams each one's output again from the
//! start (the control plane stores each line once). A container is removed
//! only when the control plane says it stored the attempt's end (`Release`).
//!
//! One session's concerns, each in its module: `connect` (enrol, open the
//! stream, reconnect with backoff, give up), `dispatch` (what the control
//! plane asks: assign, cancel, release, exec), `attempt` (start and follow
//! one attempt), `staging` (its copied inputs and outputs), `mounts` (its
//! mounted ones, each held by a helper container), `heartbeat`
//! (heartbeats and container samples) and `evictions` (Scheduled Events).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strato_proto::v1::{self, agent_message::Body as Up};
use strato_runtime::{Clock, ContainerRuntime, LABEL_NODE, RuntimeError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use self::mounts::{DEFAULT_MOUNT_CACHE_BYTES, DEFAULT_MOUNT_IMAGE, MountSettings};
use crate::gang::{ExecRelay, GangConfig};
use crate::identity::{self, Vending};
use crate::telemetry::{AgentHealth, GpuSource};

mod attempt;
mod connect;
pub mod credentials;
mod dispatch;
mod evictions;
mod heartbeat;
mod mounts;
mod staging;

pub use attempt::container_spec;
pub use connect::run;
pub use staging::DataPlan;

/// One control-plane replica the agent may dial.
#[derive(Debug, Clone)]
pub struct Replica {
    pub url: String,
    pub endpoint: tonic::transport::Endpoint,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control plane's address (or addresses), for messages.
    pub control_plane: String,
    /// The control-plane replicas to dial, in order, each with its TLS
    /// settings (and no client certificate: the one for a first
    /// enrolment). Never empty.
    pub replicas: Vec<Replica>,
    /// The replica that answered last: dialed first next time.
    pub preferred: Arc<std::sync::atomic::AtomicUsize>,
    /// How the control plane is reached: with TLS, the node enrols with a
    /// CSR and presents its client certificate from then on.
    pub transport: Transport,
    /// Secret; never logged.
    pub join_token: String,
    pub hostname: String,
    /// The control plane whose local provider started this agent
    /// (`--control-plane-id`): its containers and networks carry it as the
    /// `strato.control-plane` label, so that control plane finds them again.
    pub control_plane_id: Option<String>,
    /// Give up after this long without reaching the control plane
    /// (`--give-up-after`): stop and remove this node's containers and exit.
    /// `None`: keep trying forever (a systemd agent's default).
    pub give_up_after: Option<Duration>,
    /// The most processes in a job container (`--job-pids-limit`); `None`:
    /// no limit of Strato's.
    pub job_pids_limit: Option<i64>,
    /// Whether job processes may gain privileges (`--allow-new-privileges`,
    /// for images that need `sudo`).
    pub allow_new_privileges: bool,
    /// Whether jobs start in network sandboxes made ready before them
    /// (off with `--no-network-sandboxes`; see
    /// `ContainerRuntime::prepare_networks`).
    pub network_sandboxes: bool,
    /// Where SSH is served when the cluster enables it (`--ssh-listen`);
    /// `None`: never.
    pub ssh_listen: Option<std::net::SocketAddr>,
    /// Whether an SSH command with no job running runs on the node
    /// (`--ssh-node-shell`).
    pub ssh_node_shell: bool,
}

/// How the agent reaches the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS, trusting this CA (PEM), else the system's roots.
    Tls { ca_pem: Option<String> },
    /// `--insecure-plaintext` (loopback only): no certificates; the agent
    /// re-enrols with its last session token.
    Plaintext,
}

/// Why a session ended. [`SessionError::is_fatal`] ones end [`run`]; the
/// others are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The control plane refused the join token (its message): retrying
    /// will not help.
    #[error("the control plane refused this agent: {0}")]
    Refused(String),
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        source: tonic::transport::Error,
    },
    /// Enrolment failed for another reason than the join token.
    #[error("enrol: {}", .0.message())]
    Enrol(tonic::Status),
    /// The stream could not be opened, or broke.
    #[error("session: {}", .0.message())]
    Stream(tonic::Status),
    #[error("session token is not valid metadata")]
    BadSessionToken,
    /// The stream to the control plane closed under the agent.
    #[error("channel closed")]
    Closed,
    /// Listing this node's containers failed.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The node's key or certificate cannot be read or kept.
    #[error("{0}")]
    Credentials(#[from] credentials::CredentialsError),
    /// The control plane could not be reached for `--give-up-after`.
    #[error("gave up after {waited:?} without reaching the control plane: {last_error}")]
    GaveUp {
        waited: Duration,
        last_error: Box<SessionError>,
    },
}

impl SessionError {
    /// Whether retrying cannot help: the join token was refused or the
    /// address is bad.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SessionError::Refused(_))
    }
}

/// The identity endpoint's state and address, shared with the sessions.
pub struct IdentityContext {
    pub vending: Arc<Vending>,
    /// The agent's health and GPU source, for heartbeats and `/metrics`.
    pub health: Arc<AgentHealth>,
    pub gpus: Arc<dyn GpuSource>,
    /// Where Prometheus scrapes this agent.
    pub metrics_url: String,
    /// The metrics port's TLS: the serving certificate that comes with
    /// the node's certificate (empty until the first enrolment, and
    /// without TLS to the control plane).
    pub metrics_tls: Arc<strato_runtime::https::ServerTls>,
    /// The node's SSH server, started when an enrolment says the cluster
    /// enables SSH.
    pub ssh: Arc<crate::ssh::SshServer>,
    pub endpoint: identity::Endpoint,
    /// Where attempts' inputs and outputs are staged on this node.
    pub work_dir: PathBuf,
    /// Extra CA certificates (PEM) trusted for storage endpoints.
    pub storage_ca: Option<Vec<u8>>,
    /// The Scheduled Events endpoint polled for eviction notices.
    pub scheduled_events_url: String,
    /// Remote commands between the nodes of a gang.
    pub relay: Arc<ExecRelay>,
    /// How gangs are wired on this node.
    pub gang: GangConfig,
    /// Where the agent reads the time (heartbeats, log lines, eviction
    /// deadlines); timers stay on tokio's time.
    pub clock: Arc<dyn Clock>,
    /// The images this agent pulled, within their disk budget.
    pub image_cache: Arc<crate::image_cache::ImageCache>,
    /// How jobs' mounted data is mounted.
    pub mounts: Arc<MountSettings>,
}

fn job_key(job_id: &str, attempt: u32) -> String {
    format!("strato-{job_id}-{attempt}")
}

/// One session, from enrolment until the stream breaks or ends.
async fn session<R: ContainerRuntime>(
    config: &AgentConfig,
    runtime: &Arc<R>,
    identity: &IdentityContext,
    contact: &mut connect::Contact,
) -> Result<(), SessionError> {
    let connect::Opened {
        channel,
        enrolled,
        held,
        tx,
        mut inbound,
    } = connect::open(config, runtime, identity, contact).await?;
    let node_id = enrolled.node_id.clone();
    let channel_for_renewal = channel.clone();
    identity
        .vending
        .connected(Some((channel, enrolled.session_token.clone())));
    identity.relay.connected(Some(tx.clone()));
    // From here, however the session ends, its tasks end and the agent no
    // longer counts as connected.
    let mut tasks = SessionTasks {
        tasks: Vec::new(),
        identity,
    };

    // Mount helpers whose job container is gone go first (none when the
    // engine cannot say which containers there are).
    match runtime.list(LABEL_NODE, &node_id).await {
        Ok(containers) => {
            let jobs: HashSet<String> = containers.into_iter().map(|c| c.name).collect();
            mounts::sweep(runtime.as_ref(), &identity.mounts.image, &node_id, &jobs).await;
        }
        Err(e) => {
            tracing::warn!(node = %node_id, error = %e, "cannot list the node's containers: mount helpers kept")
        }
    }
    let mut attempts: HashMap<String, JoinHandle<()>> = HashMap::new();
    for (job, attempt, id) in held {
        let pending = identity.vending.expect_address();
        let task = tokio::spawn(attempt::follow(
            runtime.clone(),
            attempt::Staging::of(identity),
            id,
            strato_core::naming::container_name(&node_id, &job, attempt),
            job.clone(),
            attempt,
            tx.clone(),
            pending,
        ));
        attempts.insert(job_key(&job, attempt), task);
    }
    let interval = Duration::from_secs(u64::from(enrolled.heartbeat_interval_seconds.max(1)));
    identity
        .health
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let heartbeats = tokio::spawn(heartbeat::heartbeats(
        tx.clone(),
        identity.health.clone(),
        identity.gpus.clone(),
        identity.clock.clone(),
        interval,
    ));
    let sampler = tokio::spawn(heartbeat::sample_containers(
        runtime.clone(),
        node_id.clone(),
        identity.health.clone(),
        interval,
    ));
    let evictions = tokio::spawn(evictions::watch_evictions(
        runtime.clone(),
        node_id.clone(),
        identity.scheduled_events_url.clone(),
        match (&config.transport, &contact.credentials) {
            (Transport::Tls { ca_pem }, Some(credentials)) => Some(evictions::SideTls {
                ca_pem: ca_pem.clone(),
                credentials: credentials.clone(),
            }),
            _ => None,
        },
        identity.work_dir.clone(),
        identity.clock.clone(),
        tx.clone(),
    ));
    let renewal = contact.credentials.clone().map(|credentials| {
        tokio::spawn(connect::renew_certificate(
            credentials,
            channel_for_renewal,
            enrolled.session_token.clone(),
        ))
    });
    tasks.tasks.extend(
        [Some(heartbeats), Some(sampler), Some(evictions), renewal]
            .into_iter()
            .flatten()
            .map(|task| task.abort_handle()),
    );
    let (stopped_tx, mut stopped_rx) = mpsc::unbounded_channel::<String>();
    let mut dispatch = dispatch::Dispatch {
        config,
        runtime,
        identity,
        node_id: &node_id,
        cluster: &enrolled.cluster,
        tx: &tx,
        attempts,
        stopping: HashSet::new(),
        stopped: stopped_tx,
    };
    let result = loop {
        let message = tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => m,
                Ok(None) => break Ok(()),
                Err(s) => break Err(SessionError::Stream(s)),
            },
            Some(key) = stopped_rx.recv() => {
                // A finished stop may be asked again if the job still runs.
                dispatch.stopping.remove(&key);
                continue;
            }
        };
        dispatch.handle(message.body).await;
    };
    // Its tasks end and it no longer counts as connected, then its
    // attempts' tasks end.
    drop(tasks);
    drop(dispatch);
    result
}

/// The session's own tasks, aborted when it ends or is dropped (a
/// simulated node taken down drops its session); then the agent no longer
/// counts as connected, and vends or relays nothing through it.
struct SessionTasks<'a> {
    tasks: Vec<tokio::task::AbortHandle>,
    identity: &'a IdentityContext,
}

impl Drop for SessionTasks<'_> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.identity
            .health
            .connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.identity.vending.connected(None);
        self.identity.relay.connected(None);
    }
}

fn up(body: Up) -> v1::AgentMessage {
    v1::AgentMessage { body: Some(body) }
}

fn report(
    job_id: &str,
    attempt: u32,
    state: v1::JobState,
    exit_code: Option<i32>,
    reason: String,
) -> v1::AgentMessage {
    up(Up::JobReport(v1::JobReport {
        job_id: job_id.to_owned(),
        attempt,
        state: state as i32,
        exit_code,
        reason,
        node_fault: false,
    }))
}

/// The node's container runtime failed the attempt: not the job's fault.
fn node_fault(job_id: &str, attempt: u32, reason: String) -> v1::AgentMessage {
    up(Up::JobReport(v1::JobReport {
        job_id: job_id.to_owned(),
        attempt,
        state: v1::JobState::Failed as i32,
        exit_code: None,
        reason,
        node_fault: true,
    }))
}
