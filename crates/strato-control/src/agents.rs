//! `AgentService`: enrolment with a join token and a CSR, certificate
//! renewal, and each agent's session stream.
//!
//! **Architecture invariant:** a node's agent proves who it is with a
//! single-use join token once (handed out by the control plane only: for
//! the local provider, in the agent's environment; it expires with
//! `--node-start-timeout`), and from then on with the client certificate
//! `Enroll` signed for it, naming its node, which the TLS handshake checks
//! against the control plane's CA. `Session`, `RenewCertificate`,
//! `IdentityService` and every re-enrolment require that certificate, and
//! the first three the session token `Enroll` returned besides, both naming
//! the same node. Join and session tokens are stored as SHA-256 hashes
//! only. Without TLS (`--insecure-plaintext`, loopback only) there are no
//! certificates: the last session token re-enrols.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use strato_core::job::AttemptEnd;
use strato_core::lifecycle::hello::{Held, HelloAction, PlacedJob, after_hello};
use strato_core::node::GpuInfo;
use strato_core::spec::ComputeType;
use strato_proto::v1::{self, agent_message::Body, agent_service_server::AgentService};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::store_status as status;
use crate::plane::{ExecRoute, Plane, hash_token, new_token};
use crate::store::{
    AttemptReport, ClusterRecord, EnrollReport, Enrolment, JobRecord, Join, LogRecord, NodeLogs,
    NodeRecord, NodeReport, NodeUsage, ReportOutcome, Store, StoreError,
};

pub struct AgentApi<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> AgentApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        AgentApi { plane }
    }
}

pub(crate) fn bearer<T>(request: &Request<T>) -> Result<String, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "authorization metadata is required: Bearer <session token from Enroll>",
        )
    })?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::to_owned)
        .ok_or_else(|| {
            Status::unauthenticated("authorization metadata must be `Bearer <session token>`")
        })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ControlMessage, Status>> + Send>>;

/// The node a request's client certificate names (verified against the
/// control plane's CA by the TLS handshake); `None` without one.
fn certified_node<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    crate::tls::node_of(certs.first()?)
}

/// The node an agent's call comes from: the one its session token names,
/// which under TLS must also be the one its client certificate names.
pub(crate) async fn authenticate_node<S: Store, T>(
    plane: &Plane<S>,
    request: &Request<T>,
) -> Result<NodeRecord, Status> {
    let token = bearer(request)?;
    let node = plane
        .store
        .node_by_session(&hash_token(&token))
        .await
        .map_err(|e| match e {
            StoreError::BadToken => {
                Status::unauthenticated("session token not recognised; enrol again")
            }
            other => status(other),
        })?;
    if plane.tls.is_some() {
        match certified_node(request) {
            None => {
                return Err(Status::unauthenticated(
                    "a node's client certificate is required (mutual TLS); the agent gets one when it enrols",
                ));
            }
            Some(certified) if certified != node.node_id => {
                tracing::warn!(certificate = %certified, session = %node.node_id, "refused: certificate and session token name different nodes");
                return Err(Status::permission_denied(format!(
                    "the client certificate names node {certified}, the session token node {}",
                    node.node_id
                )));
            }
            Some(_) => {}
        }
    }
    Ok(node)
}

/// The id of a machine joining an attached cluster (`naming`).
fn attached_node_id(hostname: &str) -> String {
    strato_core::naming::machine_node_id(hostname, &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Signs a node's certificates: its client certificate and, when it
/// serves its metrics over TLS, the serving certificate for that host.
fn certificate(
    tls: &crate::tls::Tls,
    csr: crate::tls::Csr,
    node_id: &str,
    metrics_url: &str,
) -> Result<v1::NodeCertificate, Status> {
    let host = strato_core::certificate::metrics_endpoint("metrics_url", metrics_url)
        .ok()
        .filter(|m| m.https)
        .map(|m| m.host);
    let issued = tls
        .nodes
        .sign(csr, node_id, host)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    Ok(v1::NodeCertificate {
        certificate_pem: issued.pem,
        not_after: issued.not_after,
        not_before: issued.issued_at,
        serving_certificate_pem: issued.serving_pem.unwrap_or_default(),
        scraper_ca_pem: tls.nodes.scraper_ca_pem.clone(),
    })
}

#[tonic::async_trait]
impl<S: Store> AgentService for AgentApi<S> {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let certified = certified_node(&request);
        let last_session = bearer(&request).ok();
        let r = request.into_inner();
        // Checked before the join token is used up: a bad CSR or metrics
        // URL costs none.
        if !r.metrics_url.is_empty() {
            strato_core::certificate::metrics_endpoint("metrics_url", &r.metrics_url)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let csr = match &self.plane.tls {
            Some(_) => Some(
                crate::tls::Csr::parse(&r.csr_pem)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            None => None,
        };
        let join_hash = hash_token(&r.join_token);
        let key_hash = csr
            .as_ref()
            .map(crate::tls::Csr::key_hash)
            .unwrap_or_default();
        let again = if !r.join_token.is_empty() {
            None
        } else if self.plane.tls.is_some() {
            Some(certified.ok_or_else(|| {
                Status::unauthenticated(
                    "join_token is required; a node that enrolled before enrols again with its client certificate",
                )
            })?)
        } else {
            let last = last_session.ok_or_else(|| {
                Status::unauthenticated(
                    "join_token is required; without TLS a node that enrolled before enrols again with its last session token as authorization",
                )
            })?;
            let node = self
                .plane
                .store
                .node_by_session(&hash_token(&last))
                .await
                .map_err(|e| match e {
                    StoreError::BadToken => Status::unauthenticated("session token not recognised"),
                    other => status(other),
                })?;
            Some(node.node_id)
        };
        let by = match &again {
            None => Enrolment::JoinToken {
                token: &join_hash,
                key: &key_hash,
            },
            Some(node) => Enrolment::Node(node),
        };
        let session_token = new_token();
        // An agent that reports a count but no details (an older one) has
        // that many GPUs of unknown health: taken as healthy.
        let gpu_info: Vec<GpuInfo> = if r.gpu_info.is_empty() {
            (0..r.gpus)
                .map(|index| GpuInfo {
                    index,
                    ..GpuInfo::default()
                })
                .collect()
        } else {
            r.gpu_info
                .iter()
                .map(|g| GpuInfo {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_mib: g.memory_mib,
                    problem: (!g.problem.is_empty()).then(|| g.problem.clone()),
                })
                .collect()
        };
        // Where the node serves SSH, if its cluster enables it: the port it
        // reported, at its metrics URL's host (the address it is reached by).
        let ssh_address = strato_core::certificate::metrics_endpoint("metrics_url", &r.metrics_url)
            .map(|m| m.host.to_owned())
            .unwrap_or_default();
        let report = EnrollReport {
            hostname: strato_core::limits::without_nul(&r.hostname).into_owned(),
            metrics_url: strato_core::limits::without_nul(&r.metrics_url).into_owned(),
            ssh_address,
            ssh_port: u16::try_from(r.ssh_port).unwrap_or(0),
            // Kept only in the shape of a key line: it reaches users' ssh.
            ssh_host_key: strato_core::naming::ssh_key_line(&r.ssh_host_key).unwrap_or_default(),
            gpus: r.gpus,
            gpu_info: gpu_info.clone(),
        };
        let now = self.plane.clock.now_ms();
        let session_hash = hash_token(&session_token);
        let enrolled = match self
            .plane
            .store
            .enroll(by, &session_hash, &report, now)
            .await
        {
            // Not a node's own token: an attached cluster's, which makes a
            // new node of the machine.
            Err(StoreError::BadToken) if again.is_none() => {
                let join = Join {
                    token: &join_hash,
                    key: &key_hash,
                    new_node: &attached_node_id(&r.hostname),
                };
                self.plane
                    .store
                    .join(
                        join,
                        &session_hash,
                        &report,
                        &self.plane.settings.quota,
                        now,
                    )
                    .await
            }
            other => other,
        };
        let node = enrolled
            .map_err(|e| match e {
                StoreError::BadToken => {
                    tracing::warn!(hostname = %r.hostname, "enrolment refused: unknown join token");
                    Status::unauthenticated("join token not recognised")
                }
                e @ (StoreError::JoinTokenUsed(_) | StoreError::JoinTokenExpired(_)) => {
                    // The node's own session, if any, is untouched.
                    tracing::warn!(hostname = %r.hostname, reason = %e, "enrolment refused");
                    Status::unauthenticated(e.to_string())
                }
                StoreError::NodeNotFound(node) if again.is_some() => Status::unauthenticated(format!(
                    "node {node} is no longer in this control plane (detached or removed); a machine joins again with a new join token"
                )),
                e @ StoreError::JoinRefused { .. } => {
                    tracing::warn!(hostname = %r.hostname, reason = %e, "join refused");
                    status(e)
                }
                StoreError::Conflict(m) => Status::failed_precondition(m.to_string()),
                other => status(other),
            })?;
        // GPU readiness: a node of a GPU size without its GPUs is no capacity.
        let cluster = self
            .plane
            .store
            .get_cluster(&node.cluster)
            .await
            .map_err(status)?;
        // A draining machine only finishes its job: it is no capacity to
        // check.
        let attached = cluster.spec.compute_type == ComputeType::Attached;
        let unfit = cluster.spec.size().ok().and_then(|size| {
            strato_core::node::readiness(
                &size,
                node.state,
                attached,
                r.vcpus,
                r.memory_bytes,
                &gpu_info,
                r.gpu_container_runtime,
            )
            .err()
        });
        if let Some(reason) = unfit {
            tracing::warn!(node = %node.node_id, %reason, "node unusable");
            self.plane
                .store
                .node_unusable(&node.node_id, &reason, self.plane.clock.now_ms())
                .await
                .map_err(status)?;
            self.plane.events.changed();
            return Err(Status::failed_precondition(reason));
        }
        let certificate = match (&self.plane.tls, csr) {
            (Some(tls), Some(csr)) => Some(certificate(tls, csr, &node.node_id, &r.metrics_url)?),
            _ => None,
        };
        tracing::info!(
            node = %node.node_id, cluster = %node.cluster, hostname = %r.hostname,
            metrics_url = %r.metrics_url, gpus = r.gpus, again = again.is_some(),
            "agent enrolled"
        );
        self.plane.events.changed();
        Ok(Response::new(v1::EnrollResponse {
            node_id: node.node_id,
            cluster: node.cluster,
            session_token,
            heartbeat_interval_seconds: self.plane.settings.config.heartbeat_interval,
            certificate,
            ssh: cluster.spec.ssh.serves_ssh().then(|| v1::SshAccess {
                admin_username: cluster.spec.ssh.admin_username.clone(),
                admin_ssh_public_key: cluster.spec.ssh.admin_ssh_public_key.clone(),
                admin_password_hash: cluster.spec.ssh.admin_password_hash.clone(),
            }),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<v1::RenewCertificateRequest>,
    ) -> Result<Response<v1::NodeCertificate>, Status> {
        let node = authenticate_node(&self.plane, &request).await?;
        let Some(tls) = &self.plane.tls else {
            return Err(Status::failed_precondition(
                "this control plane serves without TLS (--insecure-plaintext): nodes have no certificates",
            ));
        };
        let attached = self
            .plane
            .store
            .get_cluster(&node.cluster)
            .await
            .map_err(status)?
            .spec
            .compute_type
            == ComputeType::Attached;
        if !strato_core::lifecycle::may_enrol(node.state, attached) {
            return Err(Status::failed_precondition(format!(
                "node {} is {}: it gets no new certificate",
                node.node_id,
                node.state.as_str()
            )));
        }
        let csr = crate::tls::Csr::parse(&request.get_ref().csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = certificate(tls, csr, &node.node_id, &node.metrics_url)?;
        tracing::info!(node = %node.node_id, not_after = issued.not_after, "node certificate renewed");
        Ok(Response::new(issued))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let node = authenticate_node(&self.plane, &request).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let Some(generation) = self.plane.sessions.open(&node.node_id, tx) else {
            return Err(Status::unavailable(
                "this control plane is stopping; the agent tries again (or another replica)",
            ));
        };
        // Recorded before the stream is answered: the leader (this replica
        // or another) places work only on nodes a replica holds.
        let key = self.plane.session_key(generation);
        if let Err(e) = self.plane.store.session_opened(&node.node_id, &key).await {
            self.plane.sessions.close(&node.node_id, generation);
            return Err(Status::unavailable(format!(
                "cannot record the session: {e}"
            )));
        }
        tracing::info!(node = %node.node_id, replica = %self.plane.replica, "agent session opened");
        let plane = self.plane.clone();
        let node_id = node.node_id.clone();
        tokio::spawn(async move {
            loop {
                match inbound.next().await {
                    Some(Ok(message)) => {
                        let hello = matches!(message.body, Some(Body::Hello(_)));
                        match handle(&plane, &node_id, message).await {
                            Ok(()) if hello => plane.sessions.ready(&node_id, generation),
                            Ok(()) => {}
                            Err(StoreError::Conflict(why)) => {
                                tracing::warn!(node = %node_id, %why, "agent message refused");
                                if hello {
                                    plane.sessions.ready(&node_id, generation);
                                }
                            }
                            Err(e) => {
                                // The agent resends what was not stored after it reconnects.
                                tracing::warn!(node = %node_id, error = %e, "agent message not stored; closing the session");
                                break;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::info!(node = %node_id, error = %e, "agent session broke");
                        break;
                    }
                    None => break,
                }
            }
            plane.sessions.close(&node_id, generation);
            // Only this session's record: a newer one (here or elsewhere)
            // keeps its own.
            if let Err(e) = plane.store.session_closed(&node_id, &key).await {
                tracing::warn!(node = %node_id, error = %e, "cannot record the session's end; its node waits for its heartbeat timeout");
            }
            tracing::info!(node = %node_id, "agent session closed");
            plane.events.changed();
        });
        self.plane.events.changed();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Stores what one agent message says, and answers it where needed.
async fn handle<S: Store>(
    plane: &Plane<S>,
    node_id: &str,
    message: v1::AgentMessage,
) -> Result<(), StoreError> {
    let now = plane.clock.now_ms();
    match message.body {
        Some(Body::Hello(hello)) => {
            plane.store.heartbeat(node_id, None, now).await?;
            hello_reconcile(plane, node_id, &hello, now).await?;
        }
        Some(Body::Preemption(p)) => {
            let evict_at = p.not_before.saturating_mul(1000);
            let reason = format!(
                "preempted: scheduled event {} evicts it at {}",
                p.event_id,
                strato_proto::convert::rfc3339(&strato_proto::convert::timestamp(evict_at))
            );
            tracing::warn!(node = %node_id, event = %p.event_id, evict_at, "node preempted");
            plane
                .store
                .node_preempted(node_id, evict_at, &reason, now)
                .await?;
            plane.events.changed();
        }
        Some(Body::Heartbeat(h)) => {
            let usage = NodeUsage {
                cpu_percent: h.cpu_percent,
                memory_used: h.memory_used_bytes,
                memory_total: h.memory_total_bytes,
                gpu_percent: h.gpu_percent,
            };
            plane.store.heartbeat(node_id, Some(usage), now).await?;
        }
        Some(Body::JobReport(report)) => {
            let Some(attempt_report) = attempt_report(&report) else {
                return Ok(());
            };
            let outcome = plane
                .reports
                .report(
                    NodeReport {
                        node_id: node_id.to_owned(),
                        job_id: report.job_id.clone(),
                        attempt: report.attempt,
                        report: attempt_report,
                    },
                    now,
                )
                .await?;
            match outcome {
                ReportOutcome::Recorded => {}
                ReportOutcome::Release | ReportOutcome::Stale => {
                    plane.sessions.send(
                        node_id,
                        v1::control_message::Body::Release(v1::JobRelease {
                            job_id: report.job_id.clone(),
                            attempt: report.attempt,
                        }),
                    );
                }
            }
            tracing::info!(
                node = %node_id, job = %report.job_id, attempt = report.attempt,
                state = ?report.state, exit_code = ?report.exit_code, outcome = ?outcome,
                "attempt report"
            );
            plane.events.changed();
        }
        Some(Body::JobLog(log)) => {
            let lines: Vec<LogRecord> = log
                .lines
                .iter()
                .map(|l| LogRecord {
                    // Both are the store's to set.
                    pos: 0,
                    rank: 0,
                    attempt: log.attempt,
                    seq: l.seq,
                    stream: if l.stream == v1::LogStream::Stderr as i32 {
                        2
                    } else {
                        1
                    },
                    line: l.line.clone(),
                    at: l
                        .at
                        .as_ref()
                        .map_or(now, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000)),
                })
                .collect();
            // Any message shows the agent is alive: a node busy sending
            // output is not mistaken for a silent one.
            plane
                .logs
                .append(
                    NodeLogs {
                        node_id: node_id.to_owned(),
                        job_id: log.job_id.clone(),
                        attempt: log.attempt,
                        lines,
                    },
                    now,
                )
                .await?;
            plane.events.output(&log.job_id);
        }
        Some(Body::ExecStart(x)) => relay_exec_start(plane, node_id, x).await?,
        Some(Body::ExecOutput(o)) => {
            if let Some(route) = plane.execs.get(&o.exec_id, node_id) {
                plane.sessions.send(
                    &route.origin_node,
                    v1::control_message::Body::ExecOutput(v1::ExecOutput {
                        exec_id: route.origin_exec_id,
                        ..o
                    }),
                );
            }
        }
        Some(Body::ExecExit(x)) => {
            if let Some(route) = plane.execs.get(&x.exec_id, node_id) {
                plane.execs.close(&x.exec_id);
                tracing::info!(origin = %route.origin_node, target = %node_id, exit_code = x.exit_code, error = %x.error, "exec ended");
                plane.sessions.send(
                    &route.origin_node,
                    v1::control_message::Body::ExecExit(v1::ExecExit {
                        exec_id: route.origin_exec_id,
                        ..x
                    }),
                );
            }
        }
        None => {}
    }
    Ok(())
}

/// A node asks to run a command in the container of another rank of its
/// gang (the MPI launcher's remote shell): relayed only between nodes of the
/// same current attempt, and only into that attempt's containers.
async fn relay_exec_start<S: Store>(
    plane: &Plane<S>,
    node_id: &str,
    x: v1::ExecStart,
) -> Result<(), StoreError> {
    let gang = plane.store.gang(&x.job_id, x.attempt).await?;
    let refuse = |error: String| {
        tracing::warn!(node = %node_id, job = %x.job_id, attempt = x.attempt, rank = x.rank, %error, "exec refused");
        plane.sessions.send(
            node_id,
            v1::control_message::Body::ExecExit(v1::ExecExit {
                exec_id: x.exec_id.clone(),
                exit_code: 255,
                error,
            }),
        );
    };
    if !gang.iter().any(|r| r.node_id == node_id) {
        refuse(format!(
            "node {node_id} runs no current attempt {} of job {}",
            x.attempt, x.job_id
        ));
        return Ok(());
    }
    let Some(target) = gang.iter().find(|r| r.rank == x.rank) else {
        refuse(format!(
            "job {} has no rank {} (its gang has {} nodes)",
            x.job_id,
            x.rank,
            gang.len()
        ));
        return Ok(());
    };
    let relay_id = plane.execs.open(ExecRoute {
        origin_node: node_id.to_owned(),
        origin_exec_id: x.exec_id.clone(),
        target_node: target.node_id.clone(),
    });
    tracing::info!(origin = %node_id, target = %target.node_id, job = %x.job_id, rank = x.rank, "exec relayed");
    let sent = plane.sessions.send(
        &target.node_id,
        v1::control_message::Body::Exec(v1::ExecStart {
            exec_id: relay_id.clone(),
            ..x.clone()
        }),
    );
    if !sent {
        plane.execs.close(&relay_id);
        refuse(format!(
            "node {} (rank {}) has no session",
            target.node_id, x.rank
        ));
    }
    Ok(())
}

/// What a job report says about the attempt; `None` for states an agent
/// does not report.
fn attempt_report(r: &v1::JobReport) -> Option<AttemptReport> {
    let state = v1::JobState::try_from(r.state).ok()?;
    Some(match state {
        // What a preparing node is doing (pulling its image), bounded as
        // any reason is.
        v1::JobState::Preparing => {
            AttemptReport::Preparing(strato_core::limits::bounded_reason(&r.reason))
        }
        v1::JobState::Running => AttemptReport::Running,
        v1::JobState::Failed if r.node_fault => AttemptReport::Ended(
            AttemptEnd::NodeLost,
            strato_core::limits::bounded_reason(&r.reason),
        ),
        v1::JobState::Completed | v1::JobState::Failed => {
            let end = match r.exit_code {
                Some(code) => AttemptEnd::Exited(i64::from(code)),
                None => AttemptEnd::CannotStart,
            };
            let reason = if r.reason.is_empty() {
                match r.exit_code {
                    Some(0) => "exited with code 0".to_owned(),
                    Some(code) => format!("exited with code {code}"),
                    None => "could not start".to_owned(),
                }
            } else {
                strato_core::limits::bounded_reason(&r.reason)
            };
            AttemptReport::Ended(end, reason)
        }
        v1::JobState::Canceled => AttemptReport::Ended(
            AttemptEnd::Canceled,
            strato_core::limits::bounded_reason(&r.reason),
        ),
        _ => return None,
    })
}

/// After an agent (re)connects: carries out what its `Hello` means for the
/// job the store places on its node (`lifecycle::hello`): the assignment is
/// re-sent, or the attempt ends.
async fn hello_reconcile<S: Store>(
    plane: &Plane<S>,
    node_id: &str,
    hello: &v1::Hello,
    now: i64,
) -> Result<(), StoreError> {
    let node = match plane.store.get_node(node_id).await {
        Ok(n) => n,
        Err(StoreError::NodeNotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    // What the agent holds is never sent to it again in this session.
    for held in &hello.jobs {
        plane.sessions.holds(node_id, &held.job_id, held.attempt);
    }
    let Some(job_id) = node.run_id else {
        return Ok(());
    };
    let job = match plane.store.get_job(&job_id).await {
        Ok(job) => job,
        // Gone (deleted): nothing is placed here; the agent's reports of
        // it are answered Stale, and it releases what it holds.
        Err(StoreError::JobNotFound(_)) => {
            tracing::warn!(node = %node_id, job = %job_id, "the node's job is gone");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let placed = PlacedJob {
        job_id: &job.id,
        attempt: job.attempt,
        state: job.state,
        cancel_requested: job.cancel_requested,
        on_this_node: job
            .attempts
            .iter()
            .any(|a| a.attempt == job.attempt && a.node_ids.iter().any(|n| n == node_id)),
    };
    let held: Vec<Held<'_>> = hello
        .jobs
        .iter()
        .map(|j| Held {
            job_id: &j.job_id,
            attempt: j.attempt,
        })
        .collect();
    match after_hello(node_id, Some(&placed), &held) {
        Some(HelloAction::Resend) => send_assignment(plane, &job, Some(node_id)).await,
        Some(HelloAction::End { end, reason }) => {
            plane
                .store
                .report_attempt(
                    node_id,
                    &job.id,
                    job.attempt,
                    AttemptReport::Ended(end, reason),
                    now,
                )
                .await?;
            plane.events.changed();
        }
        None => {}
    }
    Ok(())
}

/// Queues the assignment of a job's current attempt to the agents of its
/// nodes (or only to `only`), each with its rank, the whole gang and the
/// client id of the cluster's default identity. Outputs and artifacts go
/// with rank 0 only: one node uploads them (every node gets the code).
/// Reads the job's cluster and nodes; a reconcile pass, which has them,
/// sends with `send_assignment_with`.
pub async fn send_assignment<S: Store>(plane: &Plane<S>, job: &JobRecord, only: Option<&str>) {
    let Some(attempt) = job.attempts.iter().find(|a| a.attempt == job.attempt) else {
        return;
    };
    let cluster = plane.store.get_cluster(&job.spec.cluster).await.ok();
    // The gang's nodes only (a cluster may hold a thousand).
    let mut nodes = Vec::with_capacity(attempt.node_ids.len());
    for node_id in &attempt.node_ids {
        match plane.store.get_node(node_id).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                tracing::warn!(job = %job.id, node = %node_id, error = %e, "a gang member's node cannot be read: its host name and address go empty");
            }
        }
    }
    let node = |id: &str| nodes.iter().find(|n| n.node_id == id);
    send_assignment_with(plane, job, only, cluster.as_ref(), node).await;
}

/// `send_assignment` with the job's cluster (`None`: it cannot be read)
/// and its nodes (`node`: by id) as the caller read them: a node `node`
/// does not know goes with an empty host name and address.
pub async fn send_assignment_with<'n, S: Store>(
    plane: &Plane<S>,
    job: &JobRecord,
    only: Option<&str>,
    cluster: Option<&ClusterRecord>,
    node: impl Fn(&str) -> Option<&'n NodeRecord>,
) {
    let Some(attempt) = job.attempts.iter().find(|a| a.attempt == job.attempt) else {
        return;
    };
    let default_identity_client_id = cluster
        .and_then(|c| strato_core::identity::default_identity(&c.identities))
        .map(|i| i.client_id.clone())
        .unwrap_or_default();
    let registry_login = registry_login(plane, &job.spec.image, &job.spec.cluster).await;
    let gang: Vec<v1::GangMember> = attempt
        .node_ids
        .iter()
        .enumerate()
        .map(|(rank, node_id)| {
            let node = node(node_id);
            v1::GangMember {
                rank: u32::try_from(rank).unwrap_or(u32::MAX),
                node_id: node_id.clone(),
                hostname: node.map(|n| n.hostname.clone()).unwrap_or_default(),
                private_ip: node.map(|n| n.private_ip.clone()).unwrap_or_default(),
            }
        })
        .collect();
    if gang.len() > 1 {
        // What the gang's containers meet on, made once before any of its
        // agents starts one (the agent would make it too, but two agents on
        // one engine would race). An attached cluster's machines are not
        // the provider's: they meet on their own networks.
        let attached = cluster.is_some_and(|c| c.spec.compute_type == ComputeType::Attached);
        let cluster = cluster.map_or(job.spec.cluster.as_str(), |c| c.spec.name.as_str());
        if !attached && let Err(e) = plane.provider.prepare_gang(cluster).await {
            tracing::warn!(job = %job.id, cluster, error = %e, "the provider could not prepare the gang's network");
        }
    }
    for member in &gang {
        if only.is_some_and(|n| n != member.node_id) {
            continue;
        }
        let mut spec = strato_proto::convert::job_spec(&job.spec);
        if member.rank > 0 {
            spec.outputs.clear();
            spec.artifacts = None;
        }
        plane.sessions.assign(
            &member.node_id,
            v1::JobAssignment {
                job_id: job.id.clone(),
                attempt: job.attempt,
                spec: Some(spec),
                default_identity_client_id: default_identity_client_id.clone(),
                rank: member.rank,
                gang: gang.clone(),
                registry_login: registry_login.clone(),
            },
        );
    }
}

/// The login for `image`'s registry, when a registry object serves it;
/// `None` for an anonymous pull. A password that does not open (another
/// control plane's key) is left out, and said once per assignment.
async fn registry_login<S: Store>(
    plane: &Plane<S>,
    image: &str,
    cluster: &str,
) -> Option<v1::RegistryLogin> {
    let server = strato_core::image::registry_of(image)?;
    let registry = match plane.store.registry_for_server(server).await {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!(%server, error = %e, "cannot look the registry up: pulling anonymously");
            return None;
        }
    };
    // Only to the clusters it names (checked at submit; it may have been
    // replaced since).
    if !strato_core::registry::serves(&registry.clusters, cluster) {
        return None;
    }
    if !registry.identity.is_empty() {
        // The node logs in with the job's cluster identity itself.
        return Some(v1::RegistryLogin {
            server: registry.server,
            identity: registry.identity,
            ..Default::default()
        });
    }
    match plane
        .secrets
        .open(&registry.password_sealed, &registry_owner(&registry.name))
    {
        Ok(password) => Some(v1::RegistryLogin {
            server: registry.server,
            username: registry.username,
            password,
            identity: String::new(),
        }),
        Err(e) => {
            tracing::warn!(registry = %registry.name, error = %e, "cannot open the registry's password: pulling anonymously");
            None
        }
    }
}

/// What a registry's sealed password is bound to.
pub fn registry_owner(name: &str) -> String {
    format!("registry:{name}")
}
