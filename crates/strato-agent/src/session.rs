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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use strato_proto::v1::{
    self, agent_message::Body as Up, agent_service_client::AgentServiceClient,
    control_message::Body as Down,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::gang::{self, ExecRelay, GangConfig};
use crate::identity::{self, AttemptIdentity, Vending};
use crate::storage::{self, Transfer};
use crate::telemetry::{self, AgentHealth, ContainerSample, GpuSource};
use strato_core::naming::container_name;
use strato_runtime::{
    ContainerRuntime, ContainerSpec, LABEL_ATTEMPT, LABEL_CLUSTER, LABEL_CONTROL_PLANE, LABEL_JOB,
    LABEL_NETWORK, LABEL_NODE, OutputStream, RuntimeError,
};

/// Log lines per message at most.
const LOG_BATCH: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub control_plane: String,
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
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The control plane refused the join token: retrying will not help.
    #[error("the control plane refused this agent: {0}")]
    Refused(String),
    #[error("{0}")]
    Transient(String),
    /// The control plane could not be reached for `--give-up-after`.
    #[error("gave up after {waited:?} without reaching the control plane: {last_error}")]
    GaveUp {
        waited: Duration,
        last_error: String,
    },
}

fn transient(e: impl std::fmt::Display) -> SessionError {
    SessionError::Transient(e.to_string())
}

/// Runs sessions until the join token is refused; reconnects with backoff
/// in between. Containers keep running while disconnected.
/// The identity endpoint's state and address, shared with the sessions.
pub struct IdentityContext {
    pub vending: Arc<Vending>,
    /// The agent's health and GPU source, for heartbeats and `/metrics`.
    pub health: Arc<AgentHealth>,
    pub gpus: Arc<dyn GpuSource>,
    /// Where Prometheus scrapes this agent.
    pub metrics_url: String,
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
}

/// An attempt's inputs and outputs.
#[derive(Debug, Clone, Default)]
pub struct DataPlan {
    pub inputs: Vec<Transfer>,
    pub outputs: Vec<Transfer>,
}

fn transfers(list: &[v1::JobData]) -> Vec<Transfer> {
    list.iter()
        .map(|d| Transfer {
            name: d.name.clone(),
            account_url: d.account_url.clone(),
            container: d.container.clone(),
            path: d.path.clone(),
        })
        .collect()
}

/// The directory of an attempt's staged data on this node.
fn attempt_dir(work_dir: &Path, job_id: &str, attempt: u32) -> PathBuf {
    work_dir.join(job_key(job_id, attempt))
}

const INPUTS_IN_CONTAINER: &str = "/mnt/strato/inputs";
const OUTPUTS_IN_CONTAINER: &str = "/mnt/strato/outputs";
const NOTICE_IN_CONTAINER: &str = "/mnt/strato/notice";

pub async fn run<R: ContainerRuntime>(
    config: AgentConfig,
    runtime: Arc<R>,
    identity: Arc<IdentityContext>,
) -> Result<(), SessionError> {
    let mut backoff = Duration::from_millis(250);
    let mut last_contact = tokio::time::Instant::now();
    let mut node = None;
    loop {
        match session(&config, &runtime, &identity, &mut node).await {
            Ok(()) => {
                tracing::info!("session ended; reconnecting");
                backoff = Duration::from_millis(250);
                last_contact = tokio::time::Instant::now();
            }
            Err(SessionError::Refused(why)) => return Err(SessionError::Refused(why)),
            Err(e) => {
                let waited = last_contact.elapsed();
                if let Some(limit) = config.give_up_after
                    && waited >= limit
                {
                    give_up(runtime.as_ref(), node.as_deref()).await;
                    return Err(SessionError::GaveUp {
                        waited,
                        last_error: e.to_string(),
                    });
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "no session with the control plane")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Nobody manages this node's containers once its agent gives up: stop and
/// remove them, so no job keeps running unseen.
async fn give_up<R: ContainerRuntime>(runtime: &R, node: Option<&str>) {
    let Some(node) = node else { return };
    let Ok(containers) = runtime.list(LABEL_NODE, node).await else {
        return;
    };
    for c in containers {
        let _ = runtime.stop(&c.id, Duration::from_secs(10)).await;
        match runtime.remove(&c.id).await {
            Ok(()) => tracing::info!(container = %c.name, "giving up: removed the container"),
            Err(e) => {
                tracing::warn!(container = %c.name, error = %e, "giving up: cannot remove the container")
            }
        }
    }
}

fn job_key(job_id: &str, attempt: u32) -> String {
    format!("strato-{job_id}-{attempt}")
}

async fn session<R: ContainerRuntime>(
    config: &AgentConfig,
    runtime: &Arc<R>,
    identity: &IdentityContext,
    node: &mut Option<String>,
) -> Result<(), SessionError> {
    let channel: Channel = Endpoint::from_shared(config.control_plane.clone())
        .map_err(|e| {
            SessionError::Refused(format!("--control-plane {:?}: {e}", config.control_plane))
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| transient(format!("cannot reach {}: {e}", config.control_plane)))?;
    let mut client = AgentServiceClient::new(channel.clone());
    let gpus = identity.gpus.sample();
    let enrolled = client
        .enroll(v1::EnrollRequest {
            join_token: config.join_token.clone(),
            hostname: config.hostname.clone(),
            vcpus: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(1))
                .unwrap_or(1),
            memory_bytes: telemetry::memory().0,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            metrics_url: identity.metrics_url.clone(),
            gpus: u32::try_from(gpus.len()).unwrap_or(0),
            gpu_info: gpus.iter().map(telemetry::GpuSample::info).collect(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition => {
                SessionError::Refused(s.message().to_owned())
            }
            _ => transient(format!("enrol: {}", s.message())),
        })?
        .into_inner();
    let node_id = enrolled.node_id.clone();
    *node = Some(node_id.clone());
    tracing::info!(node = %node_id, cluster = %enrolled.cluster, "enrolled");

    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(4096);
    let containers = runtime
        .list(LABEL_NODE, &node_id)
        .await
        .map_err(transient)?;
    let mut held = Vec::new();
    for c in &containers {
        // A container created but never started (the agent stopped between
        // the two calls) is not held: its job is still preparing, so the
        // control plane sends the assignment again, and create_and_start
        // starts the existing container.
        if !c.running && c.exit_code.is_none() {
            continue;
        }
        if let Some((job, attempt)) = c.attempt() {
            held.push((job.to_owned(), attempt, c.id.clone()));
        }
    }
    let hello = v1::Hello {
        jobs: held
            .iter()
            .map(|(job, attempt, _)| v1::JobReport {
                job_id: job.clone(),
                attempt: *attempt,
                state: v1::JobState::Running as i32,
                exit_code: None,
                reason: String::new(),
                node_fault: false,
            })
            .collect(),
    };
    tx.send(up(Up::Hello(hello))).await.map_err(transient)?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", enrolled.session_token)
        .parse()
        .map_err(|_| transient("session token is not valid metadata"))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut inbound = client
        .session(request)
        .await
        .map_err(|s| transient(format!("session: {}", s.message())))?
        .into_inner();
    tracing::info!(node = %node_id, containers = held.len(), "session open");
    identity
        .vending
        .connected(Some((channel, enrolled.session_token.clone())));
    identity.relay.connected(Some(tx.clone()));

    let mut attempts: HashMap<String, JoinHandle<()>> = HashMap::new();
    for (job, attempt, id) in held {
        let task = tokio::spawn(follow(
            runtime.clone(),
            Staging {
                vending: identity.vending.clone(),
                work_dir: identity.work_dir.clone(),
                storage_ca: identity.storage_ca.clone(),
            },
            id,
            job.clone(),
            attempt,
            tx.clone(),
        ));
        attempts.insert(job_key(&job, attempt), task);
    }
    let interval = Duration::from_secs(u64::from(enrolled.heartbeat_interval_seconds.max(1)));
    identity
        .health
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let heartbeats = {
        let tx = tx.clone();
        let health = identity.health.clone();
        let gpus = identity.gpus.clone();
        tokio::spawn(async move {
            let mut cpu = CpuMeter::default();
            loop {
                tokio::time::sleep(interval).await;
                let (total, available) = telemetry::memory();
                let samples = gpus.sample();
                let gpu_percent = if samples.is_empty() {
                    0.0
                } else {
                    samples
                        .iter()
                        .map(|g| f64::from(g.utilization))
                        .sum::<f64>()
                        / samples.len() as f64
                };
                let beat = v1::Heartbeat {
                    cpu_percent: cpu.busy_percent(),
                    memory_used_bytes: total.saturating_sub(available),
                    memory_total_bytes: total,
                    gpu_percent,
                };
                if tx.send(up(Up::Heartbeat(beat))).await.is_err() {
                    return;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                    .unwrap_or(0);
                health
                    .last_heartbeat
                    .store(now, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let sampler = tokio::spawn(sample_containers(
        runtime.clone(),
        node_id.clone(),
        identity.health.clone(),
        interval,
    ));
    let evictions = tokio::spawn(watch_evictions(
        runtime.clone(),
        node_id.clone(),
        identity.scheduled_events_url.clone(),
        identity.work_dir.clone(),
        tx.clone(),
    ));
    let mut stopping: HashSet<String> = HashSet::new();
    let (stopped_tx, mut stopped_rx) = mpsc::unbounded_channel::<String>();
    let result = loop {
        let message = tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => m,
                Ok(None) => break Ok(()),
                Err(s) => break Err(transient(format!("session: {}", s.message()))),
            },
            Some(key) = stopped_rx.recv() => {
                // A finished stop may be asked again if the job still runs.
                stopping.remove(&key);
                continue;
            }
        };
        match message.body {
            Some(Down::Assign(a)) => {
                let key = job_key(&a.job_id, a.attempt);
                if attempts.get(&key).is_some_and(|t| !t.is_finished()) {
                    continue;
                }
                let Some(spec) = a.spec.clone() else { continue };
                let mut container =
                    container_spec(&node_id, &enrolled.cluster, &a.job_id, a.attempt, &spec);
                if let Some(id) = &config.control_plane_id {
                    container
                        .labels
                        .insert(LABEL_CONTROL_PLANE.to_owned(), id.clone());
                }
                // The attempt's own secret for the identity endpoint.
                let secret = Vending::new_secret();
                container.env.extend(
                    identity
                        .endpoint
                        .environment(&secret, &a.default_identity_client_id),
                );
                if a.gang.len() > 1
                    || gang::distribution(&spec) != strato_core::job::Distribution::None
                {
                    let dir = attempt_dir(&identity.work_dir, &a.job_id, a.attempt).join("gang");
                    let exec_endpoint = format!("{}/strato/exec", identity.endpoint.base);
                    if let Err(e) = gang::wire(
                        &mut container,
                        &identity.gang,
                        &enrolled.cluster,
                        &a,
                        &spec,
                        &dir,
                        &exec_endpoint,
                    ) {
                        tracing::warn!(job = %a.job_id, attempt = a.attempt, error = %e, "cannot wire the gang");
                        let _ = tx
                            .send(node_fault(
                                &a.job_id,
                                a.attempt,
                                format!("cannot write the hostfile: {e}"),
                            ))
                            .await;
                        continue;
                    }
                    identity.vending.set_gang(
                        &a.job_id,
                        a.attempt,
                        gang::hosts(&identity.gang, &a.gang),
                    );
                }
                tracing::info!(node = %node_id, job = %a.job_id, attempt = a.attempt, image = %spec.image, "job assigned");
                let plan = DataPlan {
                    inputs: transfers(&spec.inputs),
                    outputs: transfers(&spec.outputs),
                };
                let task = tokio::spawn(start(
                    runtime.clone(),
                    Staging {
                        vending: identity.vending.clone(),
                        work_dir: identity.work_dir.clone(),
                        storage_ca: identity.storage_ca.clone(),
                    },
                    plan,
                    container,
                    a.job_id,
                    a.attempt,
                    tx.clone(),
                ));
                attempts.insert(key, task);
            }
            Some(Down::Cancel(c)) => {
                let key = container_name(&node_id, &c.job_id, c.attempt);
                if stopping.contains(&key) {
                    continue;
                }
                // Only a running container can be stopped; the control plane
                // sends the cancellation again until the attempt ends.
                let Ok(containers) = runtime.list(LABEL_JOB, &c.job_id).await else {
                    continue;
                };
                let mine = containers
                    .iter()
                    .find(|x| x.name.trim_start_matches('/') == key);
                if mine.is_none() {
                    // No container (the assignment never arrived, or its data
                    // is still being staged): stop the start and say so, so
                    // the node does not stay busy with an attempt that ended.
                    if let Some(task) = attempts.remove(&job_key(&c.job_id, c.attempt)) {
                        task.abort();
                    }
                    identity.vending.revoke(&c.job_id, c.attempt);
                    tracing::info!(node = %node_id, job = %c.job_id, attempt = c.attempt, "stopped before its container started");
                    let _ = tx
                        .send(report(
                            &c.job_id,
                            c.attempt,
                            v1::JobState::Canceled,
                            None,
                            "stopped before its container started".to_owned(),
                        ))
                        .await;
                    continue;
                }
                let running = mine.is_some_and(|x| x.running);
                if running {
                    stopping.insert(key.clone());
                    tracing::info!(node = %node_id, job = %c.job_id, attempt = c.attempt, "stopping a canceled job");
                    let runtime = runtime.clone();
                    let grace = Duration::from_secs(u64::from(c.grace_seconds));
                    let done = stopped_tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = runtime.stop(&key, grace).await {
                            tracing::warn!(container = %key, error = %e, "stop failed");
                        }
                        let _ = done.send(key);
                    });
                }
            }
            Some(Down::Release(r)) => {
                identity.vending.revoke(&r.job_id, r.attempt);
                let _ =
                    std::fs::remove_dir_all(attempt_dir(&identity.work_dir, &r.job_id, r.attempt));
                if let Some(task) = attempts.remove(&job_key(&r.job_id, r.attempt)) {
                    task.abort();
                }
                let key = container_name(&node_id, &r.job_id, r.attempt);
                stopping.remove(&key);
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    match runtime.remove(&key).await {
                        Ok(()) => tracing::info!(container = %key, "released and removed"),
                        Err(e) => tracing::warn!(container = %key, error = %e, "remove failed"),
                    }
                });
            }
            Some(Down::Exec(x)) => {
                let container = container_name(&node_id, &x.job_id, x.attempt);
                tracing::info!(node = %node_id, job = %x.job_id, attempt = x.attempt, "exec from another rank");
                tokio::spawn(gang::run_exec(runtime.clone(), container, x, tx.clone()));
            }
            Some(Down::ExecOutput(o)) => identity.relay.output(&o),
            Some(Down::ExecExit(x)) => identity.relay.exit(&x),
            None => {}
        }
    };
    heartbeats.abort();
    sampler.abort();
    evictions.abort();
    identity
        .health
        .connected
        .store(false, std::sync::atomic::Ordering::Relaxed);
    identity.vending.connected(None);
    identity.relay.connected(None);
    for (_, task) in attempts {
        task.abort();
    }
    result
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

/// The container for one attempt: the job's command and environment, its
/// limits, Strato's labels and variables.
pub fn container_spec(
    node_id: &str,
    cluster: &str,
    job_id: &str,
    attempt: u32,
    spec: &v1::JobSpec,
) -> ContainerSpec {
    let mut env: Vec<(String, String)> = spec
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    env.extend([
        ("STRATO_JOB_ID".to_owned(), job_id.to_owned()),
        ("STRATO_ATTEMPT".to_owned(), attempt.to_string()),
        ("STRATO_CLUSTER".to_owned(), cluster.to_owned()),
        ("STRATO_NODE_ID".to_owned(), node_id.to_owned()),
    ]);
    let resources = spec.resources.unwrap_or_default();
    ContainerSpec {
        name: container_name(node_id, job_id, attempt),
        image: spec.image.clone(),
        command: spec.command.clone(),
        env,
        cpus: (resources.cpu > 0.0).then_some(resources.cpu),
        memory_bytes: (resources.memory_mb > 0).then(|| resources.memory_mb * 1024 * 1024),
        mounts: Vec::new(),
        network: None,
        hostname: None,
        labels: BTreeMap::from([
            (LABEL_NODE.to_owned(), node_id.to_owned()),
            (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
            (LABEL_JOB.to_owned(), job_id.to_owned()),
            (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
        ]),
    }
}

/// The labels of a gang network a container joins: its cluster's, and its
/// control plane's when a local provider started this agent.
fn network_labels(container: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let Some(cluster) = container.get(LABEL_CLUSTER) {
        labels.insert(LABEL_NETWORK.to_owned(), cluster.clone());
    }
    if let Some(id) = container.get(LABEL_CONTROL_PLANE) {
        labels.insert(LABEL_CONTROL_PLANE.to_owned(), id.clone());
    }
    labels
}

/// Starts an assigned attempt, then follows it.
/// What an attempt needs beyond the runtime: the identity state and where
/// to stage data.
#[derive(Clone)]
struct Staging {
    vending: Arc<Vending>,
    work_dir: PathBuf,
    storage_ca: Option<Vec<u8>>,
}

async fn start<R: ContainerRuntime>(
    runtime: Arc<R>,
    staging: Staging,
    plan: DataPlan,
    mut spec: ContainerSpec,
    job_id: String,
    attempt: u32,
    tx: mpsc::Sender<v1::AgentMessage>,
) {
    // A missing image is the job's fault (retrying will not help); any other
    // runtime error is the node's.
    let failed = |e: RuntimeError| match e {
        RuntimeError::ImageNotFound(_) => {
            report(&job_id, attempt, v1::JobState::Failed, None, e.to_string())
        }
        other => node_fault(
            &job_id,
            attempt,
            format!("could not start the container: {other}"),
        ),
    };
    let vending = staging.vending.clone();
    // Accept the attempt's secret before its container starts, so its
    // first request is answered.
    if let Some((_, secret)) = spec.env.iter().find(|(k, _)| k == "MSI_SECRET") {
        vending.admit(
            secret,
            AttemptIdentity {
                job_id: job_id.clone(),
                attempt,
            },
            None,
        );
    }
    if let Err(e) = runtime.ensure_image(&spec.image).await {
        tracing::warn!(job = %job_id, attempt, error = %e, "cannot start");
        vending.revoke(&job_id, attempt);
        let _ = tx.send(failed(e)).await;
        return;
    }
    // Where an eviction notice appears (STRATO_PREEMPT_NOTICE).
    let notice = attempt_dir(&staging.work_dir, &job_id, attempt).join("notice");
    if let Err(e) = std::fs::create_dir_all(&notice) {
        tracing::warn!(job = %job_id, attempt, error = %e, "cannot prepare the notice directory");
    } else {
        spec.mounts.push((
            notice.display().to_string(),
            NOTICE_IN_CONTAINER.to_owned(),
            true,
        ));
        spec.env.push((
            "STRATO_PREEMPT_NOTICE".to_owned(),
            format!("{NOTICE_IN_CONTAINER}/preempt"),
        ));
    }
    if let Some(network) = spec.network.as_deref().filter(|n| *n != "host")
        && let Err(e) = runtime
            .ensure_network(network, &network_labels(&spec.labels))
            .await
    {
        tracing::warn!(job = %job_id, attempt, error = %e, "cannot create the gang's network");
        vending.revoke(&job_id, attempt);
        let _ = tx
            .send(node_fault(
                &job_id,
                attempt,
                format!("cannot create network {network}: {e}"),
            ))
            .await;
        return;
    }
    if let Err(why) = stage_data(&staging, &plan, &mut spec, &job_id, attempt).await {
        tracing::warn!(job = %job_id, attempt, error = %why, "cannot stage the job's data");
        vending.revoke(&job_id, attempt);
        let _ = tx
            .send(report(&job_id, attempt, v1::JobState::Failed, None, why))
            .await;
        return;
    }
    let id = match runtime.create_and_start(&spec).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(job = %job_id, attempt, error = %e, "cannot start");
            vending.revoke(&job_id, attempt);
            let _ = tx.send(failed(e)).await;
            return;
        }
    };
    follow(runtime, staging, id, job_id, attempt, tx).await;
}

/// Reports an attempt running, streams its output up from the start, and
/// reports how it ended.
async fn follow<R: ContainerRuntime>(
    runtime: Arc<R>,
    staging: Staging,
    id: String,
    job_id: String,
    attempt: u32,
    tx: mpsc::Sender<v1::AgentMessage>,
) {
    let vending = staging.vending.clone();
    if tx
        .send(report(
            &job_id,
            attempt,
            v1::JobState::Running,
            None,
            String::new(),
        ))
        .await
        .is_err()
    {
        return;
    }
    // Accept the attempt's secret (read back from its container, so a
    // restarted agent knows it too) and its address for IMDS callers.
    match runtime.details(&id).await {
        Ok(details) => {
            if let Some((_, hosts)) = details.env.iter().find(|(k, _)| k == "AZ_BATCH_HOST_LIST") {
                vending.set_gang(
                    &job_id,
                    attempt,
                    hosts.split(',').map(str::to_owned).collect(),
                );
            }
            if let Some((_, secret)) = details.env.iter().find(|(k, _)| k == "MSI_SECRET") {
                vending.admit(
                    secret,
                    AttemptIdentity {
                        job_id: job_id.clone(),
                        attempt,
                    },
                    details.ip,
                );
            }
        }
        Err(e) => {
            tracing::warn!(job = %job_id, attempt, error = %e, "reading the container's details")
        }
    }
    let mut seq = 0u64;
    let mut output = runtime.logs(&id).ready_chunks(LOG_BATCH);
    while let Some(batch) = output.next().await {
        let now = now_timestamp();
        let mut lines = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(l) => {
                    lines.push(v1::LogLine {
                        attempt,
                        stream: match l.stream {
                            OutputStream::Stdout => v1::LogStream::Stdout,
                            OutputStream::Stderr => v1::LogStream::Stderr,
                        } as i32,
                        line: l.line,
                        at: Some(now),
                        seq,
                        // The control plane knows the rank from the node.
                        rank: 0,
                    });
                    seq += 1;
                }
                Err(e) => tracing::warn!(job = %job_id, attempt, error = %e, "reading output"),
            }
        }
        let message = up(Up::JobLog(v1::JobLog {
            job_id: job_id.clone(),
            attempt,
            lines,
        }));
        if tx.send(message).await.is_err() {
            return;
        }
    }
    let waited = runtime.wait(&id).await;
    vending.forget_address(&job_id, attempt);
    let end = match waited {
        Ok(code) => {
            let code = i32::try_from(code).unwrap_or(i32::MIN);
            let state = if code == 0 {
                v1::JobState::Completed
            } else {
                v1::JobState::Failed
            };
            report(&job_id, attempt, state, Some(code), String::new())
        }
        Err(e) => node_fault(&job_id, attempt, format!("lost the container: {e}")),
    };
    tracing::info!(job = %job_id, attempt, lines = seq, "attempt ended");
    let end = match upload_outputs(&staging, &job_id, attempt).await {
        Ok(()) => end,
        Err(why) => report(&job_id, attempt, v1::JobState::Failed, None, why),
    };
    vending.revoke(&job_id, attempt);
    let _ = tx.send(end).await;
}

/// Downloads the inputs and prepares the output directories, and binds both
/// into the container with `AZURE_ML_INPUT_<name>` / `AZURE_ML_OUTPUT_<name>`.
/// The outputs' plan is written beside them, so a restarted agent uploads
/// them too.
async fn stage_data(
    staging: &Staging,
    plan: &DataPlan,
    spec: &mut ContainerSpec,
    job_id: &str,
    attempt: u32,
) -> Result<(), String> {
    if plan.inputs.is_empty() && plan.outputs.is_empty() {
        return Ok(());
    }
    let dir = attempt_dir(&staging.work_dir, job_id, attempt);
    let token = staging
        .vending
        .storage_token(&AttemptIdentity {
            job_id: job_id.to_owned(),
            attempt,
        })
        .await
        .map_err(|e| {
            format!("no storage token for the job's data (the cluster's default identity): {e}")
        })?;
    for input in &plan.inputs {
        let host = dir.join("inputs").join(&input.name);
        let files = storage::download(input, &token, staging.storage_ca.as_deref(), &host)
            .await
            .map_err(|e| format!("downloading input {}: {e}", input.name))?;
        tracing::info!(job = %job_id, attempt, input = %input.name, files, "input downloaded");
        let inside = format!("{INPUTS_IN_CONTAINER}/{}", input.name);
        spec.mounts
            .push((host.display().to_string(), inside.clone(), true));
        spec.env
            .push((format!("AZURE_ML_INPUT_{}", input.name), inside));
    }
    for output in &plan.outputs {
        let host = dir.join("outputs").join(&output.name);
        std::fs::create_dir_all(&host).map_err(|e| format!("output {}: {e}", output.name))?;
        let inside = format!("{OUTPUTS_IN_CONTAINER}/{}", output.name);
        spec.mounts
            .push((host.display().to_string(), inside.clone(), false));
        spec.env
            .push((format!("AZURE_ML_OUTPUT_{}", output.name), inside));
    }
    let manifest = serde_json::to_vec(&plan.outputs).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("outputs.json"), manifest)
        .map_err(|e| format!("writing the outputs' plan: {e}"))?;
    Ok(())
}

/// Uploads an attempt's outputs after it ended, whatever its exit code.
async fn upload_outputs(staging: &Staging, job_id: &str, attempt: u32) -> Result<(), String> {
    let dir = attempt_dir(&staging.work_dir, job_id, attempt);
    let Ok(manifest) = std::fs::read(dir.join("outputs.json")) else {
        return Ok(());
    };
    let outputs: Vec<Transfer> =
        serde_json::from_slice(&manifest).map_err(|e| format!("the outputs' plan: {e}"))?;
    if outputs.is_empty() {
        return Ok(());
    }
    let token = staging
        .vending
        .storage_token(&AttemptIdentity {
            job_id: job_id.to_owned(),
            attempt,
        })
        .await
        .map_err(|e| format!("no storage token to upload outputs: {e}"))?;
    for output in &outputs {
        let files = storage::upload(
            output,
            &token,
            staging.storage_ca.as_deref(),
            &dir.join("outputs").join(&output.name),
        )
        .await
        .map_err(|e| format!("uploading output {}: {e}", output.name))?;
        tracing::info!(job = %job_id, attempt, output = %output.name, files, "output uploaded");
    }
    Ok(())
}

/// Polls the Scheduled Events endpoint about once a second. On a Preempt
/// event for this node: tells the control plane, writes the notice file of
/// every running job (with the deadline) and sends it SIGTERM, then
/// acknowledges the event.
async fn watch_evictions<R: ContainerRuntime>(
    runtime: Arc<R>,
    node_id: String,
    url: String,
    work_dir: PathBuf,
    tx: mpsc::Sender<v1::AgentMessage>,
) {
    let mut handled: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let doc = match http_json(&url, "GET", None).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "scheduled events not reachable");
                continue;
            }
        };
        for event in doc["Events"].as_array().cloned().unwrap_or_default() {
            let Some(id) = event["EventId"].as_str().map(str::to_owned) else {
                continue;
            };
            let ours = event["Resources"].as_array().is_none_or(|r| {
                r.is_empty() || r.iter().any(|x| x.as_str() == Some(node_id.as_str()))
            });
            if event["EventType"] != "Preempt" || !ours || handled.contains(&id) {
                continue;
            }
            handled.insert(id.clone());
            let not_before_text = event["NotBefore"].as_str().unwrap_or_default().to_owned();
            let not_before =
                strato_core::time::parse_rfc1123(&not_before_text).unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0) + 30)
                        .unwrap_or(0)
                });
            tracing::warn!(event = %id, not_before = %not_before_text, "eviction notice");
            let _ = tx
                .send(up(Up::Preemption(v1::Preemption {
                    event_id: id.clone(),
                    not_before,
                })))
                .await;
            if let Ok(containers) = runtime.list(LABEL_NODE, &node_id).await {
                for c in containers.iter().filter(|c| c.running) {
                    let Some((job, attempt)) = c.attempt() else {
                        continue;
                    };
                    let dir = attempt_dir(&work_dir, job, attempt).join("notice");
                    let text = format!(
                        "Preempt {id}: this node is evicted at {not_before_text} ({not_before}); checkpoint now\n"
                    );
                    let written = std::fs::create_dir_all(&dir).and_then(|()| {
                        std::fs::write(dir.join("preempt.tmp"), &text)?;
                        std::fs::rename(dir.join("preempt.tmp"), dir.join("preempt"))
                    });
                    if let Err(e) = written {
                        tracing::warn!(job = %job, error = %e, "writing the eviction notice");
                    }
                    if let Err(e) = runtime.signal(&c.id, "SIGTERM").await {
                        tracing::warn!(job = %job, error = %e, "signalling the eviction");
                    }
                }
            }
            let ack = serde_json::json!({ "StartRequests": [{ "EventId": id }] });
            if let Err(e) = http_json(&url, "POST", Some(&ack)).await {
                tracing::warn!(error = %e, "acknowledging the eviction");
            }
        }
    }
}

/// A small HTTP/1.0 client for the plain-http metadata endpoints (IMDS).
async fn http_json(
    url: &str,
    method: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "read timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 2") && !head.starts_with("HTTP/1.0 2") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    if body.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

/// Busy CPU between two readings of `/proc/stat`.
#[derive(Debug, Default)]
struct CpuMeter {
    last: Option<(f64, f64)>,
}

impl CpuMeter {
    fn busy_percent(&mut self) -> f64 {
        let (mut total, mut idle) = (0.0, 0.0);
        for (_, mode, seconds) in telemetry::cpu_seconds() {
            total += seconds;
            if mode == "idle" || mode == "iowait" {
                idle += seconds;
            }
        }
        let percent = match self.last {
            Some((t0, i0)) if total > t0 => (1.0 - (idle - i0) / (total - t0)) * 100.0,
            _ => 0.0,
        };
        self.last = Some((total, idle));
        percent.clamp(0.0, 100.0)
    }
}

/// Every telemetry interval (the heartbeat interval the control plane set),
/// the usage of this node's running job containers, for
/// `/metrics`.
async fn sample_containers<R: ContainerRuntime>(
    runtime: Arc<R>,
    node_id: String,
    health: Arc<AgentHealth>,
    interval: Duration,
) {
    loop {
        let mut samples = Vec::new();
        if let Ok(containers) = runtime.list(LABEL_NODE, &node_id).await {
            for c in containers.iter().filter(|c| c.running) {
                let Some((job, attempt)) = c.attempt() else {
                    continue;
                };
                if let Ok(usage) = runtime.stats(&c.id).await {
                    samples.push(ContainerSample {
                        cluster: c.labels.get(LABEL_CLUSTER).cloned().unwrap_or_default(),
                        job: job.to_owned(),
                        attempt,
                        cpu_seconds: usage.cpu_seconds,
                        memory_bytes: usage.memory_bytes,
                        memory_limit_bytes: usage.memory_limit_bytes,
                    });
                }
            }
        }
        if let Ok(mut c) = health.containers.lock() {
            *c = samples;
        }
        tokio::time::sleep(interval).await;
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
