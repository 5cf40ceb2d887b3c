//! `ComputeService`: the gRPC face of clusters, nodes, sizes and quota.
//! Thin: it converts wire input, asks `strato-core` to decide, lets the store
//! carry the decision out, and maps errors to the right status codes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use strato_core::catalog::CATALOG;
use strato_core::node::{AllocationState, NodeStateCounts, target_node_count};
use strato_core::quota::{self, LOW_PRIORITY};
use strato_core::spec::{self, VmPriority};
use strato_core::{FieldError, SpecError};
use strato_proto::convert;
use strato_proto::v1::{self, compute_service_server::ComputeService};
use tonic::{Request, Response, Status};

use crate::config::{ProviderKind, Settings};
use crate::store::{ClusterRecord, NodeRecord, SpecUpdate, Store, StoreError};

/// Milliseconds since the Unix epoch, read from the system clock.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Maps a store error to the status a caller should see. Only faults of the
/// server itself become INTERNAL, and those are logged.
pub fn status(e: StoreError) -> Status {
    match e {
        StoreError::ClusterNotFound(_) => Status::not_found(e.to_string()),
        StoreError::ClusterExists(_) => Status::already_exists(e.to_string()),
        StoreError::Spec(SpecError::Invalid(f)) => invalid(f),
        StoreError::Spec(e @ SpecError::Immutable { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        StoreError::Quota(q) => Status::resource_exhausted(q.to_string()),
        StoreError::Database(_) | StoreError::Migration(_) | StoreError::Corrupt(_) => {
            tracing::error!(error = %e, "store failure");
            Status::internal(format!("store failure: {e}"))
        }
    }
}

fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn required_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(FieldError::new(field, "is required")));
    }
    Ok(())
}

pub struct ComputeApi<S> {
    store: Arc<S>,
    settings: Arc<Settings>,
}

impl<S: Store> ComputeApi<S> {
    pub fn new(store: Arc<S>, settings: Arc<Settings>) -> Self {
        ComputeApi { store, settings }
    }

    /// A stored cluster with what its nodes say about it.
    fn cluster_view(&self, record: &ClusterRecord, nodes: &[NodeRecord]) -> v1::Cluster {
        let s = &record.spec;
        let counts = NodeStateCounts::from_states(nodes.iter().map(|n| n.state));
        let current = counts.total();
        let target = target_node_count(s.min_nodes, s.max_nodes, current);
        let allocation_state = if current == target {
            AllocationState::Steady
        } else {
            AllocationState::Resizing
        };
        let mut errors = Vec::new();
        if allocation_state == AllocationState::Resizing
            && self.settings.config.provider == ProviderKind::None
        {
            errors.push(v1::ClusterError {
                code: "no_node_provider".into(),
                message: format!(
                    "the cluster wants {target} nodes and has {current}, but this control plane runs with --provider none and creates no nodes"
                ),
                since: Some(convert::timestamp(record.scale_changed_at)),
            });
        }
        let size = s.size().ok();
        v1::Cluster {
            spec: Some(convert::cluster_spec(s)),
            allocation_state: convert::allocation_state(allocation_state) as i32,
            allocation_state_transition_time: Some(convert::timestamp(record.scale_changed_at)),
            current_node_count: current,
            target_node_count: target,
            node_state_counts: Some(v1::NodeStateCounts {
                idle: counts.idle,
                running: counts.running,
                preparing: counts.preparing,
                unusable: counts.unusable,
                leaving: counts.leaving,
                preempted: counts.preempted,
            }),
            errors,
            quota_family: match s.vm_priority {
                VmPriority::Dedicated => size.map(|z| z.family.to_owned()).unwrap_or_default(),
                VmPriority::LowPriority => LOW_PRIORITY.to_owned(),
            },
            vcpus_per_node: size.map_or(0, |z| z.vcpus),
            admin_password_set: !s.ssh.admin_password.is_empty(),
            created_at: Some(convert::timestamp(record.created_at)),
            updated_at: Some(convert::timestamp(record.updated_at)),
        }
    }

    async fn load_view(&self, record: &ClusterRecord) -> Result<v1::Cluster, Status> {
        let nodes = self
            .store
            .list_nodes(&record.spec.name)
            .await
            .map_err(status)?;
        Ok(self.cluster_view(record, &nodes))
    }
}

#[tonic::async_trait]
impl<S: Store> ComputeService for ComputeApi<S> {
    async fn create_cluster(
        &self,
        request: Request<v1::CreateClusterRequest>,
    ) -> Result<Response<v1::CreateClusterResponse>, Status> {
        let wire = request
            .into_inner()
            .spec
            .ok_or_else(|| invalid(FieldError::new("spec", "is required")))?;
        let req = convert::cluster_request(&wire).map_err(invalid)?;
        let spec = spec::validate(&req, &self.settings.config.region).map_err(invalid)?;
        let mut warnings = Vec::new();
        if spec.location != self.settings.config.region {
            warnings.push(format!(
                "location {} differs from the control plane's region {}: expect more latency and egress cost",
                spec.location, self.settings.config.region
            ));
        }
        let record = self
            .store
            .create_cluster(spec, &self.settings.quota, now_ms())
            .await
            .map_err(status)?;
        tracing::info!(
            cluster = %record.spec.name,
            vm_size = %record.spec.vm_size,
            min_nodes = record.spec.min_nodes,
            max_nodes = record.spec.max_nodes,
            "cluster created"
        );
        let cluster = self.load_view(&record).await?;
        Ok(Response::new(v1::CreateClusterResponse {
            cluster: Some(cluster),
            warnings,
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let name = request.into_inner().name;
        required_name("name", &name)?;
        let record = self.store.get_cluster(&name).await.map_err(status)?;
        Ok(Response::new(self.load_view(&record).await?))
    }

    async fn list_clusters(
        &self,
        _request: Request<v1::ListClustersRequest>,
    ) -> Result<Response<v1::ListClustersResponse>, Status> {
        let records = self.store.list_clusters().await.map_err(status)?;
        let mut clusters = Vec::with_capacity(records.len());
        for r in &records {
            clusters.push(self.load_view(r).await?);
        }
        Ok(Response::new(v1::ListClustersResponse { clusters }))
    }

    async fn update_cluster(
        &self,
        request: Request<v1::UpdateClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let request = request.into_inner();
        required_name("name", &request.name)?;
        let wire = request.spec.unwrap_or_default();
        let desired = convert::cluster_request(&wire).map_err(invalid)?;
        let mask: Vec<String> = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let update: SpecUpdate =
            Box::new(move |current| spec::apply_update(current, &desired, &mask));
        let record = self
            .store
            .update_cluster(&request.name, update, &self.settings.quota, now_ms())
            .await
            .map_err(status)?;
        tracing::info!(
            cluster = %record.spec.name,
            min_nodes = record.spec.min_nodes,
            max_nodes = record.spec.max_nodes,
            idle_seconds = record.spec.idle_seconds_before_scaledown,
            "cluster updated"
        );
        Ok(Response::new(self.load_view(&record).await?))
    }

    async fn delete_cluster(
        &self,
        request: Request<v1::DeleteClusterRequest>,
    ) -> Result<Response<v1::DeleteClusterResponse>, Status> {
        let name = request.into_inner().name;
        required_name("name", &name)?;
        self.store.delete_cluster(&name).await.map_err(status)?;
        tracing::info!(cluster = %name, "cluster deleted");
        Ok(Response::new(v1::DeleteClusterResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let cluster = request.into_inner().cluster;
        required_name("cluster", &cluster)?;
        let nodes = self.store.list_nodes(&cluster).await.map_err(status)?;
        Ok(Response::new(v1::ListNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| v1::Node {
                    node_id: n.node_id,
                    cluster: n.cluster,
                    state: convert::node_state(n.state) as i32,
                    private_ip: n.private_ip,
                    port: u32::from(n.port),
                    run_id: n.run_id.unwrap_or_default(),
                    reason: n.reason,
                    state_since: Some(convert::timestamp(n.state_since)),
                })
                .collect(),
        }))
    }

    async fn list_sizes(
        &self,
        _request: Request<v1::ListSizesRequest>,
    ) -> Result<Response<v1::ListSizesResponse>, Status> {
        Ok(Response::new(v1::ListSizesResponse {
            sizes: CATALOG
                .iter()
                .map(|s| v1::VmSize {
                    name: s.name.to_owned(),
                    vcpus: s.vcpus,
                    memory_gib: s.memory_gib,
                    gpus: s.gpus,
                    gpu_model: s.gpu_model.to_owned(),
                    family: s.family.to_owned(),
                })
                .collect(),
        }))
    }

    async fn list_usage(
        &self,
        request: Request<v1::ListUsageRequest>,
    ) -> Result<Response<v1::ListUsageResponse>, Status> {
        let location = match request.into_inner().location {
            l if l.is_empty() => self.settings.config.region.clone(),
            l => l,
        };
        let usage = self.store.usage(&location).await.map_err(status)?;
        let limits = self.settings.quota.region(&location);
        Ok(Response::new(v1::ListUsageResponse {
            usages: quota::report(limits, &usage)
                .into_iter()
                .map(|l| v1::QuotaUsage {
                    name: l.name,
                    unit: l.unit.to_owned(),
                    current: l.current,
                    limit: l.limit,
                })
                .collect(),
            location,
        }))
    }
}
