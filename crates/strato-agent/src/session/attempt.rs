//! Starting and following one attempt: its container, the running report,
//! its output in numbered log batches, and the final report once its
//! outputs are uploaded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt as _;
use strato_core::limits;
use strato_core::naming::container_name;
use strato_proto::v1::{self, agent_message::Body as Up};
use strato_runtime::{
    Clock, ContainerRuntime, ContainerSpec, LABEL_ATTEMPT, LABEL_CLUSTER, LABEL_CONTROL_PLANE,
    LABEL_JOB, LABEL_NETWORK, LABEL_NODE, OutputStream, RuntimeError,
};
use tokio::sync::mpsc;

use super::mounts;
use super::staging::{DataPlan, attempt_dir, stage_data, upload_outputs};
use super::{IdentityContext, node_fault, report, up};
use crate::identity::{AddressPending, AttemptIdentity, Vending};

/// Log lines per message at most.
const LOG_BATCH: usize = limits::MAX_LOG_BATCH_LINES;
const NOTICE_IN_CONTAINER: &str = "/mnt/strato/notice";

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
        pids_limit: Some(strato_runtime::PIDS_LIMIT),
        new_privileges: false,
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        gpus: Vec::new(),
        entrypoint: None,
        fuse_mounts_at: None,
        working_dir: None,
        // Its output is followed from the start: the first line need not
        // wait for the engine's log.
        attach_output: true,
        // It may join a network made ready before it (see `prepare_networks`).
        prepared_network: true,
        labels: BTreeMap::from([
            (LABEL_NODE.to_owned(), node_id.to_owned()),
            (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
            (LABEL_JOB.to_owned(), job_id.to_owned()),
            (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
        ]),
    }
}

/// Gives a job's container the node's GPUs, `uuids` (all of them: a job
/// takes the whole node), through the engine's NVIDIA device driver, with
/// the variables the NVIDIA runtime and CUDA read to match: the devices by
/// UUID, and CUDA's ordinals inside the container. What the job set itself
/// is kept.
pub fn give_gpus(container: &mut ContainerSpec, uuids: &[String]) {
    if uuids.is_empty() {
        return;
    }
    container.gpus = uuids.to_vec();
    let ordinals: Vec<String> = (0..uuids.len()).map(|i| i.to_string()).collect();
    for (key, value) in [
        ("NVIDIA_VISIBLE_DEVICES", uuids.join(",")),
        ("CUDA_VISIBLE_DEVICES", ordinals.join(",")),
        ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility".to_owned()),
    ] {
        if !container.env.iter().any(|(k, _)| k == key) {
            container.env.push((key.to_owned(), value));
        }
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

/// What an attempt needs beyond the runtime: the identity state and where
/// to stage data.
#[derive(Clone)]
pub(super) struct Staging {
    pub vending: Arc<Vending>,
    pub work_dir: PathBuf,
    pub storage_ca: Option<Vec<u8>>,
    /// Where log lines' times are read.
    pub clock: Arc<dyn Clock>,
    pub image_cache: Arc<crate::image_cache::ImageCache>,
    /// How mounted data is mounted.
    pub mounts: Arc<super::mounts::MountSettings>,
    /// The identity endpoint's base URL, for mount helpers.
    pub identity_endpoint: String,
}

impl Staging {
    pub fn of(identity: &IdentityContext) -> Self {
        Staging {
            vending: identity.vending.clone(),
            work_dir: identity.work_dir.clone(),
            storage_ca: identity.storage_ca.clone(),
            clock: identity.clock.clone(),
            image_cache: identity.image_cache.clone(),
            mounts: identity.mounts.clone(),
            identity_endpoint: identity.endpoint.base.clone(),
        }
    }
}

/// How an attempt gets its image: when to pull, and the registry login
/// the assignment carried.
pub(super) struct ImagePull {
    pub always: bool,
    pub login: Option<strato_runtime::RegistryLogin>,
    /// Set instead of `login`: log in with this cluster identity, through
    /// the registry's token exchange (`crate::registry`).
    pub identity: Option<(String, String)>,
}

impl ImagePull {
    pub fn of(a: &v1::JobAssignment) -> Self {
        let always = a
            .spec
            .as_ref()
            .is_some_and(|s| s.pull == v1::PullPolicy::Always as i32);
        let login = a.registry_login.as_ref();
        ImagePull {
            always,
            login: login
                .filter(|l| l.identity.is_empty())
                .map(|l| strato_runtime::RegistryLogin {
                    server: l.server.clone(),
                    username: l.username.clone(),
                    password: l.password.clone(),
                }),
            identity: login
                .filter(|l| !l.identity.is_empty())
                .map(|l| (l.server.clone(), l.identity.clone())),
        }
    }
}

/// How often a pull's progress is reported at most.
const PULL_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Pulls the attempt's image when it must (always, or when the node lacks
/// it), reporting its progress as the job's reason while it prepares.
pub(super) async fn get_image<R: ContainerRuntime>(
    runtime: &R,
    staging: &Staging,
    image: &str,
    mut pull: ImagePull,
    job_id: &str,
    attempt: u32,
    tx: &mpsc::Sender<v1::AgentMessage>,
) -> Result<(), RuntimeError> {
    let now = staging.clock.now_ms();
    // One look at the node: whether to pull, and whether what is pulled
    // is the cache's (only what the agent brought to the node is).
    let was_here = runtime.image_bytes(image).await?.is_some();
    if was_here && !pull.always {
        staging.image_cache.used(image, now);
        return Ok(());
    }
    let vending = &staging.vending;
    if let Some((server, identity)) = pull.identity.take() {
        let refused = |message: String| RuntimeError::Pull {
            image: image.to_owned(),
            failure: strato_runtime::PullFailure::of(&message),
            message,
        };
        let who = AttemptIdentity {
            job_id: job_id.to_owned(),
            attempt,
        };
        let token = vending.registry_token(&who, &identity).await.map_err(|e| {
            refused(format!(
                "unauthorized: no token of identity {identity}: {e}"
            ))
        })?;
        pull.login = Some(
            crate::registry::exchange(&server, &token)
                .await
                .map_err(refused)?,
        );
    }
    tracing::info!(job = %job_id, attempt, %image, login = pull.login.is_some(), "pulling the image");
    let preparing = move |job_id: &str, p: strato_runtime::PullProgress| {
        let reason = format!("preparing: pulling image {}", p.describe());
        report(job_id, attempt, v1::JobState::Preparing, None, reason)
    };
    // Progress may be dropped (the next report says more); never waited for.
    let _ = tx.try_send(preparing(job_id, strato_runtime::PullProgress::default()));
    let (progress_tx, job) = (tx.clone(), job_id.to_owned());
    // A report per 5% at most, and one a second while it stays put: at
    // most about twenty plus one a second per pull.
    let (mut last, mut last_percent) = (std::time::Instant::now(), 0u64);
    let progress = Box::new(move |p: strato_runtime::PullProgress| {
        let percent = (p.done_bytes.min(p.total_bytes) * 100)
            .checked_div(p.total_bytes)
            .unwrap_or(0);
        if percent >= last_percent + 5 || last.elapsed() >= PULL_PROGRESS_EVERY {
            (last, last_percent) = (std::time::Instant::now(), percent);
            let _ = progress_tx.try_send(preparing(&job, p));
        }
    });
    runtime.pull(image, pull.login, progress).await?;
    if was_here {
        staging.image_cache.used(image, now);
    } else {
        staging.image_cache.pulled(image, now);
    }
    let removed = staging.image_cache.trim(runtime, image).await;
    if !removed.is_empty() {
        tracing::info!(job = %job_id, attempt, ?removed, "the image cache made room");
    }
    Ok(())
}

/// Starts an assigned attempt, then follows it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start<R: ContainerRuntime>(
    runtime: Arc<R>,
    staging: Staging,
    plan: DataPlan,
    pull: ImagePull,
    mut spec: ContainerSpec,
    job_id: String,
    attempt: u32,
    tx: mpsc::Sender<v1::AgentMessage>,
) {
    // A refused pull is the node's side (its registry, its network), not
    // the job's exit: it counts as a lost node and is retried within the
    // job's max_retries; so is any other runtime error.
    let failed = |e: RuntimeError| match e {
        e @ RuntimeError::Pull { .. } => node_fault(&job_id, attempt, e.to_string()),
        other => node_fault(
            &job_id,
            attempt,
            format!("could not start the container: {other}"),
        ),
    };
    let vending = staging.vending.clone();
    // Accept the attempt's secret before its container starts, so its
    // first request is answered.
    admit(&vending, &spec.env, &job_id, attempt, None);
    // The image is held from now until its container exists, so a trim of
    // the image cache (another attempt's pull) cannot remove it meanwhile.
    let cache = staging.image_cache.clone();
    let hold = cache.hold(&spec.image);
    if let Err(e) = get_image(
        runtime.as_ref(),
        &staging,
        &spec.image,
        pull,
        &job_id,
        attempt,
        &tx,
    )
    .await
    {
        tracing::warn!(job = %job_id, attempt, error = %e, "cannot start");
        abandon(&vending, &tx, &job_id, attempt, failed(e)).await;
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
        let why = node_fault(
            &job_id,
            attempt,
            format!("cannot create network {network}: {e}"),
        );
        abandon(&vending, &tx, &job_id, attempt, why).await;
        return;
    }
    if let Err(why) = stage_data(&staging, &plan, &mut spec, &job_id, attempt).await {
        tracing::warn!(job = %job_id, attempt, error = %why, "cannot stage the job's data");
        let why = report(
            &job_id,
            attempt,
            v1::JobState::Failed,
            None,
            why.to_string(),
        );
        abandon(&vending, &tx, &job_id, attempt, why).await;
        return;
    }
    let mounted = mounts::mount_data(
        runtime.as_ref(),
        &staging,
        &plan.mounts,
        &mut spec,
        &job_id,
        attempt,
        &tx,
    )
    .await;
    if let Err(why) = mounted {
        tracing::warn!(job = %job_id, attempt, error = %why, "cannot mount the job's data");
        let _ =
            mounts::unmount_data(runtime.as_ref(), &staging.mounts.image, &spec.name, false).await;
        let why = if why.is_node_fault() {
            node_fault(&job_id, attempt, why.to_string())
        } else {
            report(
                &job_id,
                attempt,
                v1::JobState::Failed,
                None,
                why.to_string(),
            )
        };
        abandon(&vending, &tx, &job_id, attempt, why).await;
        return;
    }
    // From its start, a job's IMDS calls wait for its address to be read.
    let pending = vending.expect_address();
    let started = runtime.create_and_start(&spec).await;
    // The container holds its image now.
    drop(hold);
    let id = match started {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(job = %job_id, attempt, error = %e, "cannot start");
            let _ =
                mounts::unmount_data(runtime.as_ref(), &staging.mounts.image, &spec.name, false)
                    .await;
            abandon(&vending, &tx, &job_id, attempt, failed(e)).await;
            return;
        }
    };
    follow(
        runtime, staging, id, spec.name, job_id, attempt, tx, pending,
    )
    .await;
}

/// The attempt cannot start: its secret is refused from now on, and the
/// control plane is told why (`end`).
async fn abandon(
    vending: &Vending,
    tx: &mpsc::Sender<v1::AgentMessage>,
    job_id: &str,
    attempt: u32,
    end: v1::AgentMessage,
) {
    vending.revoke(job_id, attempt);
    let _ = tx.send(end).await;
}

/// Accepts the attempt's secret, found in its container's environment (and
/// its address, for IMDS callers, once known).
fn admit(
    vending: &Vending,
    env: &[(String, String)],
    job_id: &str,
    attempt: u32,
    ip: Option<std::net::IpAddr>,
) {
    if let Some((_, secret)) = env.iter().find(|(k, _)| k == "MSI_SECRET") {
        vending.admit(
            secret,
            AttemptIdentity {
                job_id: job_id.to_owned(),
                attempt,
            },
            ip,
        );
    }
}

/// Reports an attempt running, streams its output up from the start, and
/// reports how it ended.
/// `pending`: the container's address is to be read (IMDS callers wait
/// for it), from before its start.
#[allow(clippy::too_many_arguments)] // reason: one attempt's parts, each used
pub(super) async fn follow<R: ContainerRuntime>(
    runtime: Arc<R>,
    staging: Staging,
    id: String,
    name: String,
    job_id: String,
    attempt: u32,
    tx: mpsc::Sender<v1::AgentMessage>,
    pending: AddressPending,
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
    // restarted agent knows it too) and its address for IMDS callers. Read
    // on a task of its own while the output flows: Docker answers an
    // inspect only once it has handled a container that exits at once (tens
    // of milliseconds), and neither the first line nor a slow link to the
    // control plane should delay the other. Awaited before the attempt's
    // end, so nothing is admitted after its revocation.
    let details = {
        let (runtime, vending, id, job_id) =
            (runtime.clone(), vending.clone(), id.clone(), job_id.clone());
        tokio::spawn(async move {
            let _pending = pending;
            match runtime.details(&id).await {
                Ok(details) => {
                    if let Some((_, hosts)) =
                        details.env.iter().find(|(k, _)| k == "AZ_BATCH_HOST_LIST")
                    {
                        vending.set_gang(
                            &job_id,
                            attempt,
                            hosts.split(',').map(str::to_owned).collect(),
                        );
                    }
                    admit(&vending, &details.env, &job_id, attempt, details.ip);
                }
                Err(e) => {
                    tracing::warn!(job = %job_id, attempt, error = %e, "reading the container's details")
                }
            }
        })
    };
    // An early return (the session ended) leaves the task to finish: the
    // reconnected session follows the container again and admits it anew.
    let mut seq = 0u64;
    // The attempt's first line goes at once: how soon a job's output shows
    // is what its user waits for. After it, lines that come within 20 ms of
    // a batch's first go in that batch: output trickling in line by line
    // would otherwise be one small message per line, which costs the
    // control plane a store write each (and which HTTP/2 servers refuse past
    // a budget of small frames).
    let mut logs = Box::pin(runtime.logs(&id).fuse());
    let first = logs.next().await.map(|line| vec![line]);
    let output = tokio_stream::iter(first).chain(tokio_stream::StreamExt::chunks_timeout(
        logs,
        LOG_BATCH,
        std::time::Duration::from_millis(20),
    ));
    tokio::pin!(output);
    while let Some(batch) = output.next().await {
        let now = timestamp(staging.clock.now_ms());
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
                        // The control plane knows the rank from the node,
                        // and sets the position.
                        rank: 0,
                        pos: 0,
                    });
                    seq += 1;
                }
                Err(e) => tracing::warn!(job = %job_id, attempt, error = %e, "reading output"),
            }
        }
        // Far below the message limit, whatever the lines hold.
        let sizes: Vec<usize> = lines.iter().map(|l| l.line.len()).collect();
        let mut lines = lines.into_iter();
        for run in limits::batch_lengths(&sizes, LOG_BATCH, limits::MAX_LOG_BATCH_BYTES) {
            let message = up(Up::JobLog(v1::JobLog {
                job_id: job_id.clone(),
                attempt,
                lines: lines.by_ref().take(run).collect(),
            }));
            if tx.send(message).await.is_err() {
                return;
            }
        }
    }
    let _ = details.await;
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
    // Mounts go once what the job wrote to them is uploaded; the attempt
    // fails if some of it could not be.
    let unmounted =
        mounts::unmount_data(runtime.as_ref(), &staging.mounts.image, &name, true).await;
    let end = match (unmounted, upload_outputs(&staging, &job_id, attempt).await) {
        (Ok(()), Ok(())) => end,
        (Err(why), _) => report(&job_id, attempt, v1::JobState::Failed, None, why),
        (_, Err(why)) => report(
            &job_id,
            attempt,
            v1::JobState::Failed,
            None,
            why.to_string(),
        ),
    };
    vending.revoke(&job_id, attempt);
    let _ = tx.send(end).await;
}

/// Milliseconds since the Unix epoch as a protobuf timestamp.
fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_come_from_the_clock_in_milliseconds() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let before = timestamp(-1);
        assert_eq!((before.seconds, before.nanos), (-1, 999_000_000));
    }

    #[test]
    fn a_gpu_nodes_job_gets_every_gpu_with_matching_variables() {
        let spec = v1::JobSpec {
            image: "pytorch".into(),
            environment: [("NVIDIA_DRIVER_CAPABILITIES".to_owned(), "all".to_owned())].into(),
            ..Default::default()
        };
        let mut c = container_spec("n1", "gpu", "job-1", 1, &spec);
        assert!(c.gpus.is_empty(), "none until given");
        give_gpus(&mut c, &[]);
        assert!(c.gpus.is_empty() && !c.env.iter().any(|(k, _)| k.contains("VISIBLE")));
        give_gpus(&mut c, &["GPU-a".to_owned(), "GPU-b".to_owned()]);
        assert_eq!(c.gpus, ["GPU-a", "GPU-b"]);
        let env = |key: &str| -> Vec<&str> {
            c.env
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(env("NVIDIA_VISIBLE_DEVICES"), ["GPU-a,GPU-b"]);
        assert_eq!(env("CUDA_VISIBLE_DEVICES"), ["0,1"]);
        assert_eq!(env("NVIDIA_DRIVER_CAPABILITIES"), ["all"], "the job's own");
    }
}
