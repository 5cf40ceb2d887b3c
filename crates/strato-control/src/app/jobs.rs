//! Jobs: submit, get, list, cancel, follow logs, wait.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use strato_core::FieldError;
use strato_core::job::{self, DataBinding, DataMode, DataSide, Distribution, GangLimits, JobSpec};
use strato_core::job_request::{DataRequest, JobRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Action, AppError, Caller, Internal, Precondition, authorize, required, visible_clusters,
};
use crate::plane::Plane;
use crate::store::{ClusterRecord, JobCursor, JobPage, JobRecord, LogRecord, Store, StoreError};

/// Log lines sent per store read.
const LOG_PAGE: u32 = 500;

/// How long a waiter sleeps without an event before it looks again (a
/// safety net: events wake it).
const RECHECK: Duration = Duration::from_secs(2);
/// How often a call that stays open checks that its caller's credential
/// still holds (not revoked, not expired).
pub const CREDENTIAL_RECHECK: Duration = Duration::from_secs(10);

/// A job's log lines in arrival order; ends after the last line, or with
/// the error that stopped it.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogRecord, AppError>> + Send>>;

pub struct Jobs<S> {
    pub(super) plane: Arc<Plane<S>>,
}

impl<S: Store> Jobs<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        Jobs { plane }
    }

    /// Validates the request against its cluster, resolves its data to
    /// datastore locations and queues the job.
    pub async fn submit_job(
        &self,
        caller: &Caller,
        req: JobRequest,
    ) -> Result<JobRecord, AppError> {
        required("cluster", &req.cluster)?;
        authorize(caller, Action::SubmitJob, Some(&req.cluster))?;
        if let Err(retry_after_ms) = self
            .plane
            .submits
            .take(caller.principal(), self.plane.clock.now_ms())
        {
            let (rate, burst) = self.plane.submits.limits();
            return Err(AppError::RateLimited {
                caller: caller.principal().to_owned(),
                rate,
                burst,
                retry_after_ms,
            });
        }
        let cluster = self.plane.store.get_cluster(&req.cluster).await?;
        if req.gpus > 0 {
            return Err(FieldError::new(
                "resources.gpus",
                "must be 0: a job gets every GPU of its node (choose a cluster of a GPU size)",
            )
            .into());
        }
        // The id first: outputs without a path and artifacts are placed
        // under it.
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (code, artifacts) = self
            .resolve_code(&cluster, &id, &req.code, &req.code_digest)
            .await?;
        let node_count = req.node_count.max(1);
        let process_count_per_node = req.process_count_per_node.max(1);
        let spec = JobSpec {
            node_count,
            process_count_per_node,
            distribution: req
                .distribution
                .unwrap_or_else(|| Distribution::default_for(node_count, process_count_per_node)),
            cluster: cluster.spec.name.clone(),
            display_name: req.display_name,
            image: req.image,
            command: req.command,
            environment: req.environment,
            cpu: req.cpu,
            memory_mb: req.memory_mb,
            max_retries: req.max_retries,
            max_preemptions: req.max_preemptions.unwrap_or(job::DEFAULT_MAX_PREEMPTIONS),
            inputs: {
                // Bounded before each one costs a datastore lookup.
                strato_core::limits::check_data("inputs", &req.inputs)?;
                strato_core::limits::check_data("outputs", &req.outputs)?;
                self.resolve(&cluster, &id, DataSide::Input, req.inputs)
                    .await?
            },
            outputs: self
                .resolve(&cluster, &id, DataSide::Output, req.outputs)
                .await?,
            user: req.user,
            pull: req.pull,
            experiment_name: req.experiment_name,
            description: req.description,
            tags: req.tags,
            timeout_seconds: req.timeout_seconds,
            code,
            artifacts,
        };
        let size = cluster
            .spec
            .size()
            .map_err(|e| AppError::Internal(Internal::StoredSize(e)))?;
        let gang = GangLimits {
            max_nodes: cluster.spec.max_nodes,
            inter_node_communication: cluster.spec.inter_node_communication,
        };
        job::validate_job(&spec, &size, gang)?;
        // A registry's credentials go only to the clusters it names, and
        // one that pulls with the cluster's identity needs that identity.
        if let Some(server) = strato_core::image::registry_of(&spec.image)
            && let Some(registry) = self.plane.store.registry_for_server(server).await?
        {
            if !strato_core::registry::serves(&registry.clusters, &cluster.spec.name) {
                return Err(FieldError::new(
                    "image",
                    format!(
                        "registry {} ({}) serves only clusters {}, not {}",
                        registry.name,
                        registry.server,
                        registry.clusters.join(", "),
                        cluster.spec.name
                    ),
                )
                .into());
            }
            if !registry.identity.is_empty()
                && !strato_core::registry::cluster_has(&cluster.identities, &registry.identity)
            {
                return Err(FieldError::new(
                    "image",
                    format!(
                        "registry {} pulls with the cluster's identity {:?}, which cluster {} does not have; assign it with `strato compute update --assign-identity`",
                        registry.name, registry.identity, cluster.spec.name
                    ),
                )
                .into());
            }
        }
        let job = self
            .plane
            .store
            .submit_job(&id, spec, caller.principal(), self.plane.clock.now_ms())
            .await?;
        tracing::info!(job = %job.id, cluster = %job.spec.cluster, image = %job.spec.image, "job submitted");
        self.plane.events.changed();
        Ok(job)
    }

    /// Resolves job data to datastore locations; the field names the entry.
    /// The node reads and writes data with the cluster's default identity,
    /// so a cluster without one is refused here rather than failing later.
    async fn resolve(
        &self,
        cluster: &ClusterRecord,
        job_id: &str,
        side: DataSide,
        list: Vec<DataRequest>,
    ) -> Result<Vec<DataBinding>, AppError> {
        let mut out = Vec::with_capacity(list.len());
        for (i, d) in list.into_iter().enumerate() {
            let field = format!("{}[{i}]", side.field());
            let mode = DataMode::parse(side, &format!("{field}.mode"), &d.mode)?;
            if mode.is_mount()
                && strato_core::identity::default_identity(&cluster.identities).is_none()
            {
                return Err(FieldError::new(
                    format!("{field}.mode"),
                    format!(
                        "{} mounts the datastore with the cluster's default managed identity, and cluster {} has none: assign one with `strato compute identity assign -n {} '[system]'`",
                        mode.as_str(side),
                        cluster.spec.name,
                        cluster.spec.name
                    ),
                )
                .into());
            }
            // An output without a path goes to the default datastore, as
            // in Azure ML.
            // An output's ${{name}} is the job's name (its id), as Azure ML
            // fills it in.
            let uri = match side {
                DataSide::Output => d.uri.replace("${{name}}", job_id),
                DataSide::Input => d.uri.clone(),
            };
            let (path, store) = if d.uri.is_empty() && side == DataSide::Output {
                let store = self
                    .default_datastore(format!("{field} (no path given)"))
                    .await?;
                (job::default_output_path(job_id, &d.name), store)
            } else {
                let (datastore, path) = job::parse_data_uri(&format!("{field}.uri"), &uri)?;
                let store = self.plane.store.get_datastore(&datastore).await.map_err(|e| match e {
                    StoreError::DatastoreNotFound(_) => AppError::InvalidArgument(FieldError::new(
                        format!("{field}.uri"),
                        format!("datastore {datastore:?} not found; create it with `strato datastore create`"),
                    )),
                    other => other.into(),
                })?;
                (path, store)
            };
            out.push(DataBinding {
                name: d.name,
                datastore: store.name,
                path,
                account_url: store.account_url,
                container: store.container,
                mode,
                digest: String::new(),
            });
        }
        Ok(out)
    }

    /// The default datastore, or why `what` cannot go there.
    pub(super) async fn default_datastore(
        &self,
        what: String,
    ) -> Result<crate::store::DatastoreRecord, AppError> {
        match self.plane.store.get_datastore(job::DEFAULT_DATASTORE).await {
            Ok(store) => Ok(store),
            Err(StoreError::DatastoreNotFound(_)) => Err(AppError::FailedPrecondition(
                Precondition::NoDefaultDatastore { what },
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// A job's code folder, downloaded with the cluster's default identity,
    /// and where its artifacts go: both `None` without code.
    async fn resolve_code(
        &self,
        cluster: &ClusterRecord,
        job_id: &str,
        uri: &str,
        digest: &str,
    ) -> Result<(Option<DataBinding>, Option<DataBinding>), AppError> {
        if uri.is_empty() {
            return Ok((None, None));
        }
        job::check_code_digest(digest)?;
        if uri.len() > strato_core::limits::MAX_DATA_URI_BYTES {
            return Err(FieldError::new(
                "code.uri",
                format!("at most {} bytes", strato_core::limits::MAX_DATA_URI_BYTES),
            )
            .into());
        }
        if strato_core::identity::default_identity(&cluster.identities).is_none() {
            return Err(FieldError::new(
                "code",
                format!(
                    "is read with the cluster's default managed identity, and cluster {} has none: assign one with `strato compute identity assign -n {} '[system]'`",
                    cluster.spec.name, cluster.spec.name
                ),
            )
            .into());
        }
        let mut code = self
            .resolve(
                cluster,
                job_id,
                DataSide::Input,
                vec![DataRequest {
                    name: "code".into(),
                    uri: uri.to_owned(),
                    mode: String::new(),
                }],
            )
            .await
            .map_err(|e| match e {
                AppError::InvalidArgument(f) => AppError::InvalidArgument(FieldError::new(
                    f.field.replacen("inputs[0]", "code", 1),
                    f.rule,
                )),
                other => other,
            })?;
        let store = self
            .default_datastore("the job's artifacts (./outputs of its code folder)".into())
            .await?;
        let artifacts = DataBinding {
            name: "artifacts".into(),
            datastore: store.name,
            path: job::artifacts_path(job_id),
            account_url: store.account_url,
            container: store.container,
            mode: DataMode::default(),
            digest: String::new(),
        };
        let code = code.pop().map(|c| DataBinding {
            digest: digest.to_owned(),
            ..c
        });
        Ok((code, Some(artifacts)))
    }

    pub async fn get_job(&self, caller: &Caller, id: &str) -> Result<JobRecord, AppError> {
        required("id", id)?;
        let job = self.plane.store.get_job(id).await?;
        authorize(caller, Action::GetJob, Some(&job.spec.cluster))?;
        Ok(job)
    }

    /// A page of every job, or of the jobs of `cluster` (which must exist),
    /// newest first, and where the next page starts.
    pub async fn list_jobs(
        &self,
        caller: &Caller,
        cluster: Option<&str>,
        page: JobPage,
    ) -> Result<(Vec<JobRecord>, Option<JobCursor>), AppError> {
        // A caller granted jobs/read on one cluster only lists that one's.
        let cluster = match (cluster, visible_clusters(caller, Action::ListJobs)?) {
            (Some(c), _) => {
                authorize(caller, Action::ListJobs, Some(c))?;
                Some(c.to_owned())
            }
            (None, None) => None,
            (None, Some(only)) if only.len() == 1 => only.into_iter().next(),
            (None, Some(some)) => {
                return Err(AppError::PermissionDenied(format!(
                    "{} may list the jobs of clusters {} only: name one (--cluster)",
                    caller.principal(),
                    some.join(", ")
                )));
            }
        };
        let cluster = cluster.as_deref();
        if let Some(cluster) = cluster {
            self.plane.store.get_cluster(cluster).await?;
        }
        Ok(self.plane.store.list_jobs(cluster, page).await?)
    }

    pub async fn cancel_job(&self, caller: &Caller, id: &str) -> Result<JobRecord, AppError> {
        required("id", id)?;
        let job = self.plane.store.get_job(id).await?;
        authorize(caller, Action::CancelJob, Some(&job.spec.cluster))?;
        let job = self
            .plane
            .store
            .cancel_job(id, self.plane.clock.now_ms())
            .await?;
        tracing::info!(job = %job.id, state = job.state.as_str(), "job cancel requested");
        self.plane.events.changed();
        Ok(job)
    }

    /// Deletes an ended job with its attempts and logs (its cluster's
    /// `jobs/delete`); one that has not ended is refused.
    pub async fn delete_job(&self, caller: &Caller, id: &str) -> Result<(), AppError> {
        required("id", id)?;
        let job = self.plane.store.get_job(id).await?;
        authorize(caller, Action::DeleteJob, Some(&job.spec.cluster))?;
        self.plane.store.delete_job(id).await?;
        tracing::info!(job = %id, by = %caller.principal(), "job deleted");
        Ok(())
    }

    /// The job's log lines so far (with `after`, only those past that
    /// position); with `follow`, also those to come, until the job has ended
    /// and every line is sent. Stops when the stream is dropped.
    pub async fn stream_logs(
        &self,
        caller: &Caller,
        id: String,
        follow: bool,
        after: Option<u64>,
    ) -> Result<LogStream, AppError> {
        required("id", &id)?;
        let after = after
            .map(i64::try_from)
            .transpose()
            .map_err(|_| FieldError::new("after", "must be at most 9223372036854775807"))?;
        let job = self.plane.store.get_job(&id).await?;
        authorize(caller, Action::StreamLogs, Some(&job.spec.cluster))?;
        // Only followers stay open; the slot is held until the stream ends.
        let slot = match follow {
            false => None,
            true => Some(self.follower_slot(caller)?),
        };
        let (tx, rx) = mpsc::channel(64);
        let plane = self.plane.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let access = super::Access::new(plane.clone());
            let mut checked = tokio::time::Instant::now();
            // State changes (a job ending) and this job's own output; other
            // jobs' output does not wake it.
            let mut changes = plane.events.subscribe();
            let mut output = plane.events.follow_output(&id);
            let mut cursor: Option<i64> = after;
            loop {
                // Read the job's state before its logs: if it was final then,
                // every line it will ever have is already stored.
                let final_before = match plane.store.get_job(&id).await {
                    Ok(j) => j.state.is_final(),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let lines = match plane.store.logs(&id, cursor, LOG_PAGE).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let full_page = lines.len() == LOG_PAGE as usize;
                for l in lines {
                    cursor = Some(l.pos);
                    if tx.send(Ok(l)).await.is_err() {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                if !follow || final_before {
                    return;
                }
                // A revoked or expired credential ends the stream.
                if checked.elapsed() >= CREDENTIAL_RECHECK {
                    checked = tokio::time::Instant::now();
                    if let Err(e) = access.still_valid(&caller).await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                // Wait for a change (a timeout as a safety net), or stop
                // when the reader has gone.
                tokio::select! {
                    _ = tokio::time::timeout(RECHECK, async {
                        tokio::select! {
                            _ = changes.changed() => {}
                            _ = output.changed() => {}
                        }
                    }) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// A slot among the calls `caller` keeps open (log streams followed,
    /// jobs waited on), or RESOURCE_EXHAUSTED when it holds its most.
    pub(super) fn follower_slot(
        &self,
        caller: &Caller,
    ) -> Result<crate::plane::FollowerSlot, AppError> {
        self.plane
            .followers
            .admit(caller.principal())
            .ok_or_else(|| AppError::TooManyFollowers {
                caller: caller.principal().to_owned(),
                limit: self.plane.followers.per_caller(),
            })
    }

    /// The job once it has reached a final state.
    pub async fn wait_job(&self, caller: &Caller, id: &str) -> Result<JobRecord, AppError> {
        required("id", id)?;
        // Subscribed before the first read, so no change is missed.
        let mut changes = self.plane.events.subscribe();
        let mut job = self.plane.store.get_job(id).await?;
        authorize(caller, Action::WaitJob, Some(&job.spec.cluster))?;
        let _slot = self.follower_slot(caller)?;
        let access = super::Access::new(self.plane.clone());
        let mut checked = tokio::time::Instant::now();
        loop {
            if job.state.is_final() {
                return Ok(job);
            }
            let _ = tokio::time::timeout(RECHECK, changes.changed()).await;
            if checked.elapsed() >= CREDENTIAL_RECHECK {
                checked = tokio::time::Instant::now();
                access.still_valid(caller).await?;
            }
            job = self.plane.store.get_job(id).await?;
        }
    }
}
