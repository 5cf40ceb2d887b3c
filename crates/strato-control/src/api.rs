//! `ComputeService`: the gRPC face of clusters, nodes, sizes and quota.
//! Thin: it converts wire input, asks `strato-core` to decide, lets the store
//! carry the decision out, and maps errors to the right status codes.

use std::sync::Arc;

use strato_core::catalog::CATALOG;
use strato_core::identity::{self, IdentityKind};
use strato_core::node::NodeStateCounts;
use strato_core::quota::{self, LOW_PRIORITY};
use strato_core::spec::{self, VmPriority};
use strato_core::{FieldError, SpecError};
use strato_proto::convert;
use strato_proto::v1::{self, compute_service_server::ComputeService};
use tonic::{Request, Response, Status};

use crate::plane::Plane;
use crate::store::{ClusterRecord, IdentityUpdate, NodeRecord, SpecUpdate, Store, StoreError};

/// Client and principal ids for a new identity. A user-assigned identity
/// gets ids derived from its resource id, so every cluster that uses it sees
/// the same identity; a system-assigned one gets fresh random ids.
pub fn new_identity_ids(resource_id: &str, kind: IdentityKind) -> (String, String) {
    const CLIENT: uuid::Uuid = uuid::Uuid::from_u128(0x5f2a_9c1e_4b7d_4e21_9a0c_3d8b_6e4f_1a01);
    const PRINCIPAL: uuid::Uuid = uuid::Uuid::from_u128(0x5f2a_9c1e_4b7d_4e21_9a0c_3d8b_6e4f_1a02);
    match kind {
        IdentityKind::SystemAssigned => (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        ),
        IdentityKind::UserAssigned => {
            let id = resource_id.to_ascii_lowercase();
            (
                uuid::Uuid::new_v5(&CLIENT, id.as_bytes()).to_string(),
                uuid::Uuid::new_v5(&PRINCIPAL, id.as_bytes()).to_string(),
            )
        }
    }
}

/// Maps a store error to the status a caller should see. Only faults of the
/// server itself become INTERNAL, and those are logged.
pub fn status(e: StoreError) -> Status {
    match e {
        StoreError::ClusterNotFound(_)
        | StoreError::JobNotFound(_)
        | StoreError::NodeNotFound(_)
        | StoreError::DatastoreNotFound(_) => Status::not_found(e.to_string()),
        StoreError::DatastoreExists(_) => Status::already_exists(e.to_string()),
        StoreError::BadToken => Status::unauthenticated(e.to_string()),
        StoreError::Conflict(_) => Status::failed_precondition(e.to_string()),
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
    plane: Arc<Plane<S>>,
}

impl<S: Store> ComputeApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        ComputeApi { plane }
    }

    /// A stored cluster with what its nodes say about it.
    fn cluster_view(&self, record: &ClusterRecord, nodes: &[NodeRecord]) -> v1::Cluster {
        let s = &record.spec;
        let counts = NodeStateCounts::from_states(nodes.iter().map(|n| n.state));
        let current = counts.idle + counts.preparing + counts.running;
        let errors = record
            .errors
            .iter()
            .map(|e| v1::ClusterError {
                code: e.code.clone(),
                message: e.message.clone(),
                since: Some(convert::timestamp(e.since)),
            })
            .collect();
        let size = s.size().ok();
        v1::Cluster {
            spec: Some(convert::cluster_spec(s)),
            allocation_state: convert::allocation_state(record.allocation_state) as i32,
            allocation_state_transition_time: Some(convert::timestamp(record.allocation_since)),
            current_node_count: current,
            target_node_count: record.target_nodes,
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
            identities: {
                let default = identity::default_identity(&record.identities);
                let mut list: Vec<v1::ManagedIdentity> = record
                    .identities
                    .iter()
                    .map(|i| v1::ManagedIdentity {
                        kind: match i.kind {
                            IdentityKind::SystemAssigned => "system_assigned",
                            IdentityKind::UserAssigned => "user_assigned",
                        }
                        .to_owned(),
                        resource_id: i.resource_id.clone(),
                        client_id: i.client_id.clone(),
                        principal_id: i.principal_id.clone(),
                        is_default: Some(i) == default,
                    })
                    .collect();
                list.sort_by_key(|i| !i.is_default);
                list
            },
        }
    }

    async fn load_view(&self, record: &ClusterRecord) -> Result<v1::Cluster, Status> {
        let nodes = self
            .plane
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
        let spec = spec::validate(&req, &self.plane.settings.config.region).map_err(invalid)?;
        let mut warnings = Vec::new();
        if spec.location != self.plane.settings.config.region {
            warnings.push(format!(
                "location {} differs from the control plane's region {}: expect more latency and egress cost",
                spec.location, self.plane.settings.config.region
            ));
        }
        let record = self
            .plane
            .store
            .create_cluster(
                spec.clone(),
                identity::reconcile_identities(&spec.name, &spec.identity, &[], new_identity_ids),
                &self.plane.settings.quota,
                self.plane.clock.now_ms(),
            )
            .await
            .map_err(status)?;
        tracing::info!(
            cluster = %record.spec.name,
            vm_size = %record.spec.vm_size,
            min_nodes = record.spec.min_nodes,
            max_nodes = record.spec.max_nodes,
            "cluster created"
        );
        self.plane.events.changed();
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
        let record = self.plane.store.get_cluster(&name).await.map_err(status)?;
        Ok(Response::new(self.load_view(&record).await?))
    }

    async fn list_clusters(
        &self,
        _request: Request<v1::ListClustersRequest>,
    ) -> Result<Response<v1::ListClustersResponse>, Status> {
        let records = self.plane.store.list_clusters().await.map_err(status)?;
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
            .plane
            .store
            .update_cluster(
                &request.name,
                update,
                &self.plane.settings.quota,
                self.plane.clock.now_ms(),
            )
            .await
            .map_err(status)?;
        tracing::info!(
            cluster = %record.spec.name,
            min_nodes = record.spec.min_nodes,
            max_nodes = record.spec.max_nodes,
            idle_seconds = record.spec.idle_seconds_before_scaledown,
            "cluster updated"
        );
        self.plane.events.changed();
        Ok(Response::new(self.load_view(&record).await?))
    }

    async fn delete_cluster(
        &self,
        request: Request<v1::DeleteClusterRequest>,
    ) -> Result<Response<v1::DeleteClusterResponse>, Status> {
        let name = request.into_inner().name;
        required_name("name", &name)?;
        let nodes = self
            .plane
            .store
            .delete_cluster(&name)
            .await
            .map_err(status)?;
        for node in &nodes {
            self.plane.sessions.drop_node(&node.node_id);
            if let Err(e) = self.plane.provider.delete_node(&node.into()).await {
                tracing::warn!(cluster = %name, node = %node.node_id, error = %e, "could not remove a node of a deleted cluster");
            }
        }
        // Its gang network, if the last node's removal did not take it.
        let cluster = nodes.first().map_or(name.as_str(), |n| n.cluster.as_str());
        if let Err(e) = self.plane.provider.delete_cluster(cluster).await {
            tracing::warn!(cluster = %name, error = %e, "could not remove what the deleted cluster held");
        }
        tracing::info!(cluster = %name, nodes = nodes.len(), "cluster deleted");
        Ok(Response::new(v1::DeleteClusterResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let cluster = request.into_inner().cluster;
        required_name("cluster", &cluster)?;
        let nodes = self
            .plane
            .store
            .list_nodes(&cluster)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListNodesResponse {
            nodes: nodes.into_iter().map(node_view).collect(),
        }))
    }

    async fn assign_identity(
        &self,
        request: Request<v1::AssignIdentityRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let r = request.into_inner();
        required_name("name", &r.name)?;
        if !r.system_assigned && r.user_assigned_identities.is_empty() {
            return Err(invalid(FieldError::new(
                "identity",
                "name '[system]' or at least one user-assigned identity id",
            )));
        }
        let update: IdentityUpdate = Box::new(move |spec, existing| {
            let next = identity::assign(
                &spec.identity,
                r.system_assigned,
                &r.user_assigned_identities,
            )?;
            let ids = identity::reconcile_identities(&spec.name, &next, existing, new_identity_ids);
            Ok((next, ids))
        });
        let record = self
            .plane
            .store
            .update_identities(&r.name, update, self.plane.clock.now_ms())
            .await
            .map_err(status)?;
        tracing::info!(cluster = %record.spec.name, identities = record.identities.len(), "identity assigned");
        Ok(Response::new(self.load_view(&record).await?))
    }

    async fn remove_identity(
        &self,
        request: Request<v1::RemoveIdentityRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let r = request.into_inner();
        required_name("name", &r.name)?;
        let update: IdentityUpdate = Box::new(move |spec, existing| {
            let next = identity::remove(&spec.identity, &r.user_assigned_identities)?;
            let ids = identity::reconcile_identities(&spec.name, &next, existing, new_identity_ids);
            Ok((next, ids))
        });
        let record = self
            .plane
            .store
            .update_identities(&r.name, update, self.plane.clock.now_ms())
            .await
            .map_err(status)?;
        tracing::info!(cluster = %record.spec.name, identities = record.identities.len(), "identity removed");
        Ok(Response::new(self.load_view(&record).await?))
    }

    async fn simulate_eviction(
        &self,
        request: Request<v1::SimulateEvictionRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let r = request.into_inner();
        required_name("name", &r.name)?;
        required_name("node_id", &r.node_id)?;
        let cluster = self
            .plane
            .store
            .get_cluster(&r.name)
            .await
            .map_err(status)?;
        if cluster.spec.vm_priority != VmPriority::LowPriority {
            return Err(Status::failed_precondition(format!(
                "cluster {} is dedicated: dedicated nodes are never evicted, only low-priority ones",
                cluster.spec.name
            )));
        }
        if !self.plane.provider.capabilities().simulated_evictions {
            return Err(Status::failed_precondition(
                "simulated evictions are delivered by the local provider's Scheduled Events; this control plane has none",
            ));
        }
        let nodes = self
            .plane
            .store
            .list_nodes(&cluster.spec.name)
            .await
            .map_err(status)?;
        let node = nodes
            .iter()
            .find(|n| n.node_id == r.node_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {:?} is not in cluster {}",
                    r.node_id, cluster.spec.name
                ))
            })?;
        if !strato_core::scale::is_live(node.state) {
            return Err(Status::failed_precondition(format!(
                "node {} is {}: only a live node can be evicted",
                node.node_id,
                node.state.as_str()
            )));
        }
        let notice = i64::from(r.notice_seconds.unwrap_or(30).clamp(1, 3600));
        let not_before = strato_core::time::rfc1123(self.plane.clock.now_ms() / 1000 + notice);
        let event = self
            .plane
            .scheduled_events
            .preempt(&node.node_id, &not_before);
        tracing::warn!(cluster = %cluster.spec.name, node = %node.node_id, %event, %not_before, "simulated eviction scheduled");
        Ok(Response::new(node_view(node.clone())))
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
            l if l.is_empty() => self.plane.settings.config.region.clone(),
            l => l,
        };
        let usage = self.plane.store.usage(&location).await.map_err(status)?;
        let limits = self.plane.settings.quota.region(&location);
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

/// A stored node on the wire.
fn node_view(n: NodeRecord) -> v1::Node {
    v1::Node {
        node_id: n.node_id,
        cluster: n.cluster,
        state: convert::node_state(n.state) as i32,
        private_ip: n.private_ip,
        port: u32::from(n.port),
        run_id: n.run_id.unwrap_or_default(),
        reason: n.reason,
        state_since: Some(convert::timestamp(n.state_since)),
        metrics_url: n.metrics_url,
        cpu_percent: n.usage.cpu_percent,
        memory_used_bytes: n.usage.memory_used,
        memory_total_bytes: n.usage.memory_total,
        gpu_percent: n.usage.gpu_percent,
        gpus: n.gpus,
        gpu_info: n
            .gpu_info
            .into_iter()
            .map(|g| v1::GpuInfo {
                index: g.index,
                uuid: g.uuid,
                model: g.model,
                memory_mib: g.memory_mib,
                problem: g.problem.unwrap_or_default(),
            })
            .collect(),
    }
}
