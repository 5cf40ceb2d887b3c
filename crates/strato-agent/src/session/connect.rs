//! Reaching the control plane: enrol (the first time with the join token,
//! then with the node's client certificate), report the containers this
//! node holds, open the session stream and keep the certificate renewed;
//! between sessions, reconnect with backoff, and give up (removing this
//! node's containers) after `--give-up-after`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strato_core::backoff::Policy;
use strato_proto::v1::{self, agent_message::Body as Up, agent_service_client::AgentServiceClient};
use strato_runtime::{ContainerRuntime, LABEL_CONTROL_PLANE, LABEL_NODE, LABEL_SANDBOX_NODE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::credentials::Credentials;
use super::{AgentConfig, IdentityContext, SessionError, Transport, session, up};
use crate::telemetry;

/// Waits between sessions: 250 ms after the first failure, doubling up to
/// 5 s.
const RECONNECT: Policy = Policy {
    base_ms: 125,
    max_doublings: 6,
    cap_ms: 5_000,
};

/// The wait before the next session after `failures` failed ones in a row
/// (after a session that ended well, as after one failure).
fn reconnect_wait(failures: u32) -> Duration {
    Duration::from_millis(u64::try_from(RECONNECT.delay_ms(failures.max(1))).unwrap_or(5_000))
}

/// Messages waiting for the stream: with log batches of at most 256 KiB,
/// at most 64 MiB of output waits in the agent.
const OUTBOUND_MESSAGES: usize = 256;

/// What the agent knows of its control plane between sessions.
#[derive(Debug, Default)]
pub(super) struct Contact {
    /// The node it enrolled as, last time.
    pub node: Option<String>,
    /// Enrolments so far: one more means the control plane was reached.
    pub enrolments: u64,
    /// The node's key and certificate (with TLS).
    pub credentials: Option<Arc<Credentials>>,
    /// The last session token: without TLS, what re-enrols (kept in
    /// `session_file`, so a restarted agent enrols again too).
    pub session_token: Option<String>,
    pub session_file: Option<std::path::PathBuf>,
}

/// Runs sessions until the join token is refused; reconnects with backoff
/// in between. Containers keep running while disconnected.
pub async fn run<R: ContainerRuntime>(
    config: AgentConfig,
    runtime: Arc<R>,
    identity: Arc<IdentityContext>,
) -> Result<(), SessionError> {
    let mut failures = 0;
    let mut last_contact = tokio::time::Instant::now();
    let mut contact = Contact::default();
    let credentials_dir = identity.work_dir.join("credentials");
    match config.transport {
        Transport::Tls { .. } => {
            contact.credentials = Some(Arc::new(Credentials::load(
                &credentials_dir,
                identity.metrics_tls.clone(),
            )?));
        }
        Transport::Plaintext => {
            let file = credentials_dir.join("session-token");
            contact.session_token = std::fs::read_to_string(&file)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
            contact.session_file = Some(file);
        }
    }
    loop {
        let enrolments = contact.enrolments;
        let result = session(&config, &runtime, &identity, &mut contact).await;
        if contact.enrolments > enrolments {
            // The session was open until just now.
            last_contact = tokio::time::Instant::now();
        }
        match result {
            Ok(()) => {
                tracing::info!("session ended; reconnecting");
                failures = 0;
            }
            Err(e) if e.is_fatal() => {
                // Refused after it had a node (removed or detached while
                // this agent was away): the control plane has moved its
                // jobs on, so none of its containers may keep running.
                if let Some(node) = &contact.node {
                    give_up(runtime.as_ref(), node, &identity.mounts.image).await;
                }
                return Err(e);
            }
            Err(e) => {
                failures += 1;
                // A replica that answers but cannot serve (its database
                // away): the next try starts at the next one.
                if config.replicas.len() > 1 {
                    config
                        .preferred
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let waited = last_contact.elapsed();
                if let Some(limit) = config.give_up_after
                    && waited >= limit
                {
                    // Never enrolled since this start (restarted while the
                    // control plane was away): the local provider names its
                    // agents by their node ids.
                    let node = contact.node.as_deref().unwrap_or(&config.hostname);
                    give_up(runtime.as_ref(), node, &identity.mounts.image).await;
                    return Err(SessionError::GaveUp {
                        waited,
                        last_error: Box::new(e),
                    });
                }
                tracing::warn!(error = %e, retry_in = ?reconnect_wait(failures), "no session with the control plane");
            }
        }
        tokio::time::sleep(reconnect_wait(failures)).await;
    }
}

/// Nobody manages this node's containers once its agent gives up: stop and
/// remove them, so no job keeps running unseen.
async fn give_up<R: ContainerRuntime>(runtime: &R, node: &str, mount_image: &str) {
    runtime.release_networks().await;
    let Ok(containers) = runtime.list(LABEL_NODE, node).await else {
        return;
    };
    // Their mounts go first (no job left to flush for).
    super::mounts::sweep(runtime, mount_image, node, &Default::default()).await;
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

/// A connection to the control plane, presenting `identity` (the node's
/// certificate and key) when there is one and TLS is spoken: to the replica
/// that answered last, else to the next one that answers.
async fn dial(
    config: &AgentConfig,
    identity: Option<&(String, String)>,
) -> Result<Channel, SessionError> {
    use std::sync::atomic::Ordering;
    let count = config.replicas.len().max(1);
    let first = config.preferred.load(Ordering::Relaxed) % count;
    let mut failed = None;
    for k in (0..count).map(|i| (first + i) % count) {
        let Some(replica) = config.replicas.get(k) else {
            break;
        };
        let endpoint = match (&config.transport, identity) {
            (Transport::Tls { ca_pem }, Some((cert, key))) => {
                strato_proto::client::endpoint_with_identity(
                    &replica.url,
                    ca_pem.as_deref(),
                    cert,
                    key,
                )
                .map_err(|e| SessionError::Refused(e.to_string()))?
            }
            _ => replica.endpoint.clone(),
        };
        match endpoint
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
        {
            Ok(channel) => {
                if k != first {
                    tracing::info!(control_plane = %replica.url, "dialing this control-plane replica from now on");
                }
                config.preferred.store(k, Ordering::Relaxed);
                return Ok(channel);
            }
            Err(source) => {
                if count > 1 {
                    tracing::warn!(control_plane = %replica.url, error = %source, "control-plane replica unreachable; trying the next");
                }
                failed = Some(SessionError::Unreachable {
                    url: replica.url.clone(),
                    source,
                });
            }
        }
    }
    Err(failed.unwrap_or_else(|| SessionError::Refused("no control plane to dial".into())))
}

/// An open session: what enrolment answered, the containers this node
/// holds, and both directions of the stream.
pub(super) struct Opened {
    pub channel: Channel,
    pub enrolled: v1::EnrollResponse,
    /// Started containers of this node: (job, attempt, container id).
    pub held: Vec<(String, u32, String)>,
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub inbound: tonic::Streaming<v1::ControlMessage>,
}

/// Enrols, says which containers this node holds, and opens the stream.
pub(super) async fn open<R: ContainerRuntime>(
    config: &AgentConfig,
    runtime: &Arc<R>,
    identity: &IdentityContext,
    contact: &mut Contact,
) -> Result<Opened, SessionError> {
    // Once enrolled, the node proves who it is with its certificate (or,
    // without TLS, its last session token); the join token is used up.
    let held = contact.credentials.as_ref().and_then(|c| c.identity());
    let again = match config.transport {
        Transport::Tls { .. } => held.is_some(),
        Transport::Plaintext => contact.session_token.is_some(),
    };
    let mut channel = dial(config, held.as_ref()).await?;
    let mut client = AgentServiceClient::new(channel.clone());
    let gpus = identity.gpus.sample();
    // Asked only where there are GPUs to hand over.
    let gpu_container_runtime = !gpus.is_empty() && runtime.gpu_support().await.unwrap_or(false);
    let csr = match &contact.credentials {
        Some(c) => c.csr()?,
        None => String::new(),
    };
    let mut request = tonic::Request::new(v1::EnrollRequest {
        join_token: if again {
            String::new()
        } else {
            config.join_token.clone()
        },
        csr_pem: csr,
        hostname: config.hostname.clone(),
        vcpus: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1),
        memory_bytes: telemetry::memory().0,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        metrics_url: identity.metrics_url.clone(),
        gpus: u32::try_from(gpus.len()).unwrap_or(0),
        gpu_info: gpus.iter().map(telemetry::GpuSample::info).collect(),
        ssh_port: config.ssh_listen.map_or(0, |a| u32::from(a.port())),
        gpu_container_runtime,
        ssh_host_key: config
            .ssh_listen
            .and_then(|_| crate::ssh::host_public_key(&identity.work_dir.join("credentials")))
            .unwrap_or_default(),
    });
    if let (Transport::Plaintext, Some(last)) = (&config.transport, &contact.session_token) {
        let bearer = format!("Bearer {last}")
            .parse()
            .map_err(|_| SessionError::BadSessionToken)?;
        request.metadata_mut().insert("authorization", bearer);
    }
    let enrolled = match client.enroll(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if again && s.code() == tonic::Code::Unauthenticated => {
            // The control plane no longer takes this certificate or session
            // (a restored database, a certificate it refuses): try the join
            // token next, which works only if it was never used. (A new CA
            // fails the handshake instead: unreachable, retried.)
            tracing::warn!(error = %s.message(), "re-enrolment refused; trying the join token");
            if let Some(c) = &contact.credentials {
                // Which node it was, for its containers if the token is
                // refused too.
                if contact.node.is_none() {
                    contact.node = c.node_id();
                }
                c.forget();
            }
            contact.session_token = None;
            return Err(SessionError::Enrol(s));
        }
        Err(s) => {
            return Err(match s.code() {
                tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition => {
                    SessionError::Refused(s.message().to_owned())
                }
                _ => SessionError::Enrol(s),
            });
        }
    };
    let node_id = enrolled.node_id.clone();
    contact.node = Some(node_id.clone());
    contact.enrolments += 1;
    contact.session_token = Some(enrolled.session_token.clone());
    if let Some(file) = &contact.session_file
        && let Err(e) = strato_runtime::write_private(file, enrolled.session_token.as_bytes())
    {
        tracing::warn!(path = %file.display(), error = %e, "cannot keep the session token; a restart will need a new join token");
    }
    if let (Some(c), Some(cert)) = (&contact.credentials, &enrolled.certificate) {
        c.store(cert)?;
        if held.is_none() {
            // Enrolled with the join token on a connection without a
            // certificate: the session needs one that presents it.
            channel = dial(config, c.identity().as_ref()).await?;
            client = AgentServiceClient::new(channel.clone());
        }
    }
    tracing::info!(node = %node_id, cluster = %enrolled.cluster, again, "enrolled");
    if let (Some(listen), Some(access)) = (
        config.ssh_listen,
        enrolled
            .ssh
            .as_ref()
            .and_then(crate::ssh::Access::from_wire),
    ) && let Err(e) = identity
        .ssh
        .start(
            listen,
            access,
            node_id.clone(),
            config.ssh_node_shell,
            &identity.work_dir.join("credentials"),
            runtime.clone(),
        )
        .await
    {
        tracing::error!(%listen, error = %e, "cannot serve SSH");
    }

    // Bounded in messages, each bounded in bytes (`strato_core::limits`):
    // output faster than the control plane stores it waits here.
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(OUTBOUND_MESSAGES);
    // A network made ready for the node's next job, so that its start
    // need not wait for one (the runtime's network sandboxes).
    let mut sandbox_labels = BTreeMap::from([(LABEL_SANDBOX_NODE.to_owned(), node_id.clone())]);
    if let Some(id) = &config.control_plane_id {
        sandbox_labels.insert(LABEL_CONTROL_PLANE.to_owned(), id.clone());
    }
    if let Err(e) = runtime
        .prepare_networks(&node_id, sandbox_labels, config.network_sandboxes)
        .await
    {
        tracing::warn!(error = %e, "cannot make a network ready for the next job; jobs start on networks of their own");
    }
    let containers = runtime.list(LABEL_NODE, &node_id).await?;
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
    tx.send(up(Up::Hello(hello)))
        .await
        .map_err(|_| SessionError::Closed)?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", enrolled.session_token)
        .parse()
        .map_err(|_| SessionError::BadSessionToken)?;
    request.metadata_mut().insert("authorization", bearer);
    let inbound = client
        .session(request)
        .await
        .map_err(SessionError::Stream)?
        .into_inner();
    tracing::info!(node = %node_id, containers = held.len(), "session open");
    Ok(Opened {
        channel,
        enrolled,
        held,
        tx,
        inbound,
    })
}

/// Renews the node's certificate over the session's channel when two
/// thirds of its lifetime have passed, for as long as the session lasts; a
/// failed renewal is tried again a little later (the certificate is still
/// valid, and the next enrolment renews it too).
pub(super) async fn renew_certificate(
    credentials: Arc<Credentials>,
    channel: Channel,
    session_token: String,
) {
    let Ok(bearer) = format!("Bearer {session_token}").parse::<tonic::metadata::MetadataValue<_>>()
    else {
        return;
    };
    let mut client = AgentServiceClient::new(channel);
    let mut failures = 0;
    loop {
        let Some(wait) = credentials.renew_in() else {
            return;
        };
        tokio::time::sleep(if failures == 0 {
            wait
        } else {
            reconnect_wait(failures)
        })
        .await;
        let csr = match credentials.csr() {
            Ok(csr) => csr,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the node certificate");
                return;
            }
        };
        let mut request = tonic::Request::new(v1::RenewCertificateRequest { csr_pem: csr });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        match client.renew_certificate(request).await {
            Ok(cert) => match credentials.store(cert.get_ref()) {
                Ok(()) => {
                    failures = 0;
                    tracing::info!(
                        not_after = cert.get_ref().not_after,
                        "node certificate renewed"
                    );
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot keep the renewed node certificate");
                }
            },
            Err(s) => {
                failures += 1;
                tracing::warn!(error = %s.message(), "node certificate not renewed; trying again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_wait_250_ms_doubling_to_5_s() {
        let waits: Vec<u128> = (0..8).map(|f| reconnect_wait(f).as_millis()).collect();
        assert_eq!(waits, [250, 250, 500, 1000, 2000, 4000, 5000, 5000]);
    }
}
