//! `ComputeService` over `app::Compute`.

use std::sync::Arc;

use strato_core::FieldError;
use strato_proto::convert::{cluster_request, quota_usage, vm_size};
use strato_proto::v1::{self, compute_service_server::ComputeService};
use tonic::{Request, Response, Status};

use super::auth;
use super::{convert, respond, status};
use crate::app::{AppError, Compute};
use crate::plane::Plane;
use crate::store::Store;

pub struct ComputeApi<S> {
    app: Compute<S>,
}

impl<S: Store> ComputeApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        ComputeApi {
            app: Compute::new(plane),
        }
    }
}

fn spec_of(spec: Option<&v1::ClusterSpec>) -> Result<strato_core::ClusterRequest, Status> {
    let wire = spec.ok_or_else(|| status(FieldError::new("spec", "is required").into()))?;
    cluster_request(wire).map_err(|e| status(e.into()))
}

fn cluster(
    result: Result<crate::app::ClusterView, AppError>,
) -> Result<Response<v1::Cluster>, Status> {
    respond(result, |c| convert::cluster(&c))
}

#[tonic::async_trait]
impl<S: Store> ComputeService for ComputeApi<S> {
    async fn create_cluster(
        &self,
        request: Request<v1::CreateClusterRequest>,
    ) -> Result<Response<v1::CreateClusterResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = spec_of(request.get_ref().spec.as_ref())?;
        let created = self.app.create_cluster(&caller, req).await;
        respond(created, |c| v1::CreateClusterResponse {
            cluster: Some(convert::cluster(&c.cluster)),
            warnings: c.warnings,
        })
    }

    async fn get_cluster(
        &self,
        request: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        cluster(self.app.get_cluster(&caller, &name).await)
    }

    async fn list_clusters(
        &self,
        request: Request<v1::ListClustersRequest>,
    ) -> Result<Response<v1::ListClustersResponse>, Status> {
        let caller = auth::caller(&request)?;
        respond(self.app.list_clusters(&caller).await, |list| {
            v1::ListClustersResponse {
                clusters: list.iter().map(convert::cluster).collect(),
            }
        })
    }

    async fn update_cluster(
        &self,
        request: Request<v1::UpdateClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let desired = cluster_request(&r.spec.unwrap_or_default()).map_err(|e| status(e.into()))?;
        let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
        cluster(
            self.app
                .update_cluster(&caller, &r.name, desired, mask)
                .await,
        )
    }

    async fn delete_cluster(
        &self,
        request: Request<v1::DeleteClusterRequest>,
    ) -> Result<Response<v1::DeleteClusterResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        respond(self.app.delete_cluster(&caller, &name).await, |()| {
            v1::DeleteClusterResponse {}
        })
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let caller = auth::caller(&request)?;
        let cluster = request.into_inner().cluster;
        respond(self.app.list_nodes(&caller, &cluster).await, |nodes| {
            v1::ListNodesResponse {
                nodes: nodes.into_iter().map(convert::node).collect(),
            }
        })
    }

    async fn assign_identity(
        &self,
        request: Request<v1::AssignIdentityRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        cluster(
            self.app
                .assign_identity(
                    &caller,
                    &r.name,
                    r.system_assigned,
                    r.user_assigned_identities,
                )
                .await,
        )
    }

    async fn remove_identity(
        &self,
        request: Request<v1::RemoveIdentityRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        cluster(
            self.app
                .remove_identity(&caller, &r.name, r.user_assigned_identities)
                .await,
        )
    }

    async fn simulate_eviction(
        &self,
        request: Request<v1::SimulateEvictionRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let node = self
            .app
            .simulate_eviction(&caller, &r.name, &r.node_id, r.notice_seconds)
            .await;
        respond(node, convert::node)
    }

    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let made = self
            .app
            .create_join_token(&caller, &r.name, r.uses, r.expires_in_seconds)
            .await;
        respond(made, |t| v1::CreateJoinTokenResponse {
            id: t.id,
            join_token: t.token,
            uses: t.uses,
            expires_at: Some(strato_proto::convert::timestamp(t.expires_at)),
        })
    }

    async fn list_join_tokens(
        &self,
        request: Request<v1::ListJoinTokensRequest>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let tokens = self.app.list_join_tokens(&caller, &r.name).await;
        respond(tokens, |tokens| v1::ListJoinTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| v1::JoinToken {
                    id: t.id,
                    uses_left: t.uses_left,
                    expires_at: Some(strato_proto::convert::timestamp(t.expires_at)),
                    created_at: Some(strato_proto::convert::timestamp(t.created_at)),
                    created_by: t.created_by,
                })
                .collect(),
        })
    }

    async fn revoke_join_token(
        &self,
        request: Request<v1::RevokeJoinTokenRequest>,
    ) -> Result<Response<v1::RevokeJoinTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let revoked = self.app.revoke_join_token(&caller, &r.name, &r.id).await;
        respond(revoked, |()| v1::RevokeJoinTokenResponse {})
    }

    async fn detach_node(
        &self,
        request: Request<v1::DetachNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let node = self
            .app
            .detach_node(&caller, &r.name, &r.node_id, r.requeue)
            .await;
        respond(node, convert::node)
    }

    async fn list_sizes(
        &self,
        request: Request<v1::ListSizesRequest>,
    ) -> Result<Response<v1::ListSizesResponse>, Status> {
        let caller = auth::caller(&request)?;
        let location = request.into_inner().location;
        respond(self.app.list_sizes(&caller, &location), |sizes| {
            v1::ListSizesResponse {
                sizes: sizes.iter().map(vm_size).collect(),
            }
        })
    }

    async fn list_usage(
        &self,
        request: Request<v1::ListUsageRequest>,
    ) -> Result<Response<v1::ListUsageResponse>, Status> {
        let caller = auth::caller(&request)?;
        let location = request.into_inner().location;
        respond(self.app.list_usage(&caller, location).await, |u| {
            v1::ListUsageResponse {
                usages: u.lines.into_iter().map(quota_usage).collect(),
                location: u.location,
            }
        })
    }
}
