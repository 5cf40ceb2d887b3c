//! `JobService`: submit, get, list, cancel, logs and wait.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use strato_core::FieldError;
use strato_core::job::{self, DataBinding, Distribution, GangLimits, JobSpec, JobState};
use strato_proto::convert::timestamp;
use strato_proto::v1::{self, job_service_server::JobService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::status;
use crate::plane::Plane;
use crate::store::{JobRecord, Store};

/// Log lines sent per store read.
const LOG_PAGE: u32 = 500;

pub struct JobApi<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> JobApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        JobApi { plane }
    }
}

fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn job_state(s: JobState) -> v1::JobState {
    match s {
        JobState::Queued => v1::JobState::Queued,
        JobState::Preparing => v1::JobState::Preparing,
        JobState::Running => v1::JobState::Running,
        JobState::Completed => v1::JobState::Completed,
        JobState::Failed => v1::JobState::Failed,
        JobState::Canceled => v1::JobState::Canceled,
        JobState::Preempted => v1::JobState::Preempted,
    }
}

pub fn wire_spec(spec: &JobSpec) -> v1::JobSpec {
    v1::JobSpec {
        cluster: spec.cluster.clone(),
        display_name: spec.display_name.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        environment: spec
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        resources: Some(v1::JobResources {
            cpu: spec.cpu,
            memory_mb: spec.memory_mb,
            gpus: 0,
        }),
        node_count: spec.node_count,
        process_count_per_node: spec.process_count_per_node,
        distribution: wire_distribution(spec.distribution) as i32,
        max_retries: spec.max_retries,
        max_preemptions: Some(spec.max_preemptions),
        inputs: spec
            .inputs
            .iter()
            .map(|d| wire_data(d, "download"))
            .collect(),
        outputs: spec
            .outputs
            .iter()
            .map(|d| wire_data(d, "upload"))
            .collect(),
    }
}

pub fn wire_distribution(d: Distribution) -> v1::Distribution {
    match d {
        Distribution::None => v1::Distribution::None,
        Distribution::Mpi => v1::Distribution::Mpi,
        Distribution::Pytorch => v1::Distribution::Pytorch,
    }
}

fn wire_data(d: &DataBinding, mode: &str) -> v1::JobData {
    v1::JobData {
        name: d.name.clone(),
        uri: format!("azureml://datastores/{}/paths/{}", d.datastore, d.path),
        mode: mode.to_owned(),
        account_url: d.account_url.clone(),
        container: d.container.clone(),
        path: d.path.clone(),
    }
}

impl<S: Store> JobApi<S> {
    /// Resolves job data to datastore locations; the field names the entry.
    async fn resolve(
        &self,
        kind: &str,
        mode: &str,
        list: Vec<v1::JobData>,
    ) -> Result<Vec<DataBinding>, Status> {
        let mut out = Vec::with_capacity(list.len());
        for (i, d) in list.into_iter().enumerate() {
            let field = format!("{kind}[{i}]");
            if !(d.mode.is_empty() || d.mode == mode) {
                return Err(invalid(FieldError::new(
                    format!("{field}.mode"),
                    format!("only {mode} is supported for {kind} (mounts are not supported yet)"),
                )));
            }
            let (datastore, path) =
                job::parse_data_uri(&format!("{field}.uri"), &d.uri).map_err(invalid)?;
            let store = self.plane.store.get_datastore(&datastore).await.map_err(|e| match e {
                crate::store::StoreError::DatastoreNotFound(_) => invalid(FieldError::new(
                    format!("{field}.uri"),
                    format!("datastore {datastore:?} not found; create it with `strato datastore create`"),
                )),
                other => status(other),
            })?;
            out.push(DataBinding {
                name: d.name,
                datastore,
                path,
                account_url: store.account_url,
                container: store.container,
            });
        }
        Ok(out)
    }
}

fn code(c: Option<i64>) -> Option<i32> {
    c.map(|c| i32::try_from(c).unwrap_or(i32::MIN))
}

pub fn wire_job(j: &JobRecord) -> v1::Job {
    v1::Job {
        id: j.id.clone(),
        spec: Some(wire_spec(&j.spec)),
        state: job_state(j.state) as i32,
        attempt: j.attempt,
        exit_code: code(j.exit_code),
        transitions: j
            .transitions
            .iter()
            .map(|t| v1::JobTransition {
                state: job_state(t.state) as i32,
                reason: t.reason.clone(),
                at: Some(timestamp(t.at)),
            })
            .collect(),
        created_at: Some(timestamp(j.created_at)),
        node_id: j.node_id.clone().unwrap_or_default(),
        reason: j.reason.clone(),
        attempts: j
            .attempts
            .iter()
            .map(|a| v1::JobAttempt {
                attempt: a.attempt,
                node_id: a.node_id.clone(),
                started_at: Some(timestamp(a.started_at)),
                ended_at: a.ended_at.map(timestamp),
                reason: a.reason.clone(),
                exit_code: code(a.exit_code),
                node_ids: a.node_ids.clone(),
            })
            .collect(),
    }
}

fn required(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(FieldError::new(field, "is required")));
    }
    Ok(())
}

type LogStreamBox = Pin<Box<dyn Stream<Item = Result<v1::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> JobService for JobApi<S> {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let wire = request
            .into_inner()
            .spec
            .ok_or_else(|| invalid(FieldError::new("spec", "is required")))?;
        required("cluster", &wire.cluster)?;
        let cluster = self
            .plane
            .store
            .get_cluster(&wire.cluster)
            .await
            .map_err(status)?;
        let resources = wire.resources.unwrap_or_default();
        if resources.gpus > 0 {
            return Err(invalid(FieldError::new(
                "resources.gpus",
                "GPU jobs are not supported yet",
            )));
        }
        let node_count = wire.node_count.max(1);
        let process_count_per_node = wire.process_count_per_node.max(1);
        let distribution = match v1::Distribution::try_from(wire.distribution) {
            Ok(v1::Distribution::Unspecified) => {
                Distribution::default_for(node_count, process_count_per_node)
            }
            Ok(v1::Distribution::None) => Distribution::None,
            Ok(v1::Distribution::Mpi) => Distribution::Mpi,
            Ok(v1::Distribution::Pytorch) => Distribution::Pytorch,
            Err(_) => {
                return Err(invalid(FieldError::new(
                    "distribution",
                    format!("{} is not one of none, mpi, pytorch", wire.distribution),
                )));
            }
        };
        let spec = JobSpec {
            node_count,
            process_count_per_node,
            distribution,
            cluster: cluster.spec.name.clone(),
            display_name: wire.display_name,
            image: wire.image,
            command: wire.command,
            environment: wire.environment.into_iter().collect(),
            cpu: resources.cpu,
            memory_mb: resources.memory_mb,
            max_retries: wire.max_retries,
            max_preemptions: wire.max_preemptions.unwrap_or(job::DEFAULT_MAX_PREEMPTIONS),
            inputs: self.resolve("inputs", "download", wire.inputs).await?,
            outputs: self.resolve("outputs", "upload", wire.outputs).await?,
        };
        let size = cluster
            .spec
            .size()
            .map_err(|e| Status::internal(format!("stored cluster has a bad size: {e}")))?;
        let gang = GangLimits {
            max_nodes: cluster.spec.max_nodes,
            inter_node_communication: cluster.spec.inter_node_communication,
        };
        job::validate_job(&spec, size, gang).map_err(invalid)?;
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let job = self
            .plane
            .store
            .submit_job(&id, spec, self.plane.clock.now_ms())
            .await
            .map_err(status)?;
        tracing::info!(job = %job.id, cluster = %job.spec.cluster, image = %job.spec.image, "job submitted");
        self.plane.events.changed();
        Ok(Response::new(wire_job(&job)))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().id;
        required("id", &id)?;
        let job = self.plane.store.get_job(&id).await.map_err(status)?;
        Ok(Response::new(wire_job(&job)))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let cluster = request.into_inner().cluster;
        if !cluster.is_empty() {
            self.plane
                .store
                .get_cluster(&cluster)
                .await
                .map_err(status)?;
        }
        let jobs = self
            .plane
            .store
            .list_jobs((!cluster.is_empty()).then_some(cluster.as_str()))
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.iter().map(wire_job).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().id;
        required("id", &id)?;
        let job = self
            .plane
            .store
            .cancel_job(&id, self.plane.clock.now_ms())
            .await
            .map_err(status)?;
        tracing::info!(job = %job.id, state = job.state.as_str(), "job cancel requested");
        self.plane.events.changed();
        Ok(Response::new(wire_job(&job)))
    }

    type StreamLogsStream = LogStreamBox;

    async fn stream_logs(
        &self,
        request: Request<v1::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let r = request.into_inner();
        required("id", &r.id)?;
        self.plane.store.get_job(&r.id).await.map_err(status)?;
        let (tx, rx) = mpsc::channel(64);
        let plane = self.plane.clone();
        tokio::spawn(async move {
            let mut changes = plane.events.subscribe();
            let mut cursor: Option<i64> = None;
            loop {
                // Read the job's state before its logs: if it was final then,
                // every line it will ever have is already stored.
                let final_before = match plane.store.get_job(&r.id).await {
                    Ok(j) => j.state.is_final(),
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let lines = match plane.store.logs(&r.id, cursor, LOG_PAGE).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let full_page = lines.len() == LOG_PAGE as usize;
                for l in lines {
                    cursor = Some(l.pos);
                    let line = v1::LogLine {
                        attempt: l.attempt,
                        stream: if l.stream == 2 {
                            v1::LogStream::Stderr
                        } else {
                            v1::LogStream::Stdout
                        } as i32,
                        line: l.line,
                        at: Some(timestamp(l.at)),
                        seq: l.seq,
                        rank: l.rank,
                    };
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                if !r.follow || final_before {
                    return;
                }
                // Wait for a change (a timeout as a safety net), or stop
                // when the client has gone.
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(2), changes.changed()) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn wait_job(
        &self,
        request: Request<v1::WaitJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().id;
        required("id", &id)?;
        let mut changes = self.plane.events.subscribe();
        loop {
            let job = self.plane.store.get_job(&id).await.map_err(status)?;
            if job.state.is_final() {
                return Ok(Response::new(wire_job(&job)));
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await;
        }
    }
}
