//! `IdentityService`: access tokens for jobs.
//!
//! **Architecture invariant:** a token is issued only to an agent (its
//! session token), only for a job attempt that the store places on that
//! agent's node right now, and only for an identity of that job's cluster.

use std::sync::Arc;

use strato_core::identity::{IdentitySelector, SelectError, select};
use strato_proto::v1::{self, identity_service_server::IdentityService};
use tonic::{Request, Response, Status};

use crate::agents::bearer;
use crate::api::status;
use crate::federation::FederationError;
use crate::plane::{Plane, hash_token};
use crate::store::{Store, StoreError};

pub struct IdentityApi<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> IdentityApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        IdentityApi { plane }
    }
}

#[tonic::async_trait]
impl<S: Store> IdentityService for IdentityApi<S> {
    async fn get_token(
        &self,
        request: Request<v1::GetTokenRequest>,
    ) -> Result<Response<v1::AccessToken>, Status> {
        let token = bearer(&request)?;
        let node = self
            .plane
            .store
            .node_by_session(&hash_token(&token))
            .await
            .map_err(|e| match e {
                StoreError::BadToken => Status::unauthenticated("session token not recognised"),
                other => status(other),
            })?;
        let r = request.into_inner();
        if r.resource.is_empty() {
            return Err(Status::invalid_argument(
                "resource: is required (the token's audience)",
            ));
        }
        let job = self
            .plane
            .store
            .get_job(&r.job_id)
            .await
            .map_err(|e| match e {
                StoreError::JobNotFound(_) => {
                    Status::permission_denied(format!("job {} does not run on this node", r.job_id))
                }
                other => status(other),
            })?;
        // Any node of the attempt's gang (rank 0's is `job.node_id`).
        let on_this_node = job
            .attempts
            .iter()
            .any(|a| a.attempt == job.attempt && a.node_ids.contains(&node.node_id));
        if !on_this_node || job.attempt != r.attempt || !job.state.on_node() {
            tracing::warn!(node = %node.node_id, job = %r.job_id, attempt = r.attempt, "token refused: attempt not on this node");
            return Err(Status::permission_denied(format!(
                "attempt {} of job {} does not run on node {}",
                r.attempt, r.job_id, node.node_id
            )));
        }
        let cluster = self
            .plane
            .store
            .get_cluster(&job.spec.cluster)
            .await
            .map_err(status)?;
        let selector = if !r.client_id.is_empty() {
            IdentitySelector::ClientId(r.client_id)
        } else if !r.principal_id.is_empty() {
            IdentitySelector::PrincipalId(r.principal_id)
        } else if !r.mi_res_id.is_empty() {
            IdentitySelector::ResourceId(r.mi_res_id)
        } else {
            IdentitySelector::Default
        };
        let identity = select(&cluster.identities, &selector).map_err(|e| match e {
            SelectError::NoIdentity => Status::failed_precondition(format!(
                "no managed identity is assigned to cluster {}",
                cluster.spec.name
            )),
            SelectError::NotFound => Status::not_found("Identity not found"),
        })?;
        let now = self.plane.clock.now_ms() / 1000;
        let issued = match &self.plane.federation {
            None => self
                .plane
                .tokens
                .issue(identity, &r.resource, now)
                .map_err(|e| Status::internal(e.to_string()))?,
            Some(federation) => federation
                .token(&self.plane.tokens, &cluster.spec.name, identity, &r.resource, now)
                .await
                .map_err(|e| {
                    tracing::warn!(job = %job.id, client_id = %identity.client_id, error = %e, "federated token refused");
                    match e {
                        FederationError::NotFederated(m) => Status::failed_precondition(m),
                        FederationError::Exchange(m) => Status::unavailable(format!("Entra ID: {m}")),
                        FederationError::Setup(m) => Status::internal(m),
                    }
                })?,
        };
        tracing::info!(
            node = %node.node_id, job = %job.id, attempt = job.attempt,
            client_id = %identity.client_id, resource = %r.resource, "token issued"
        );
        Ok(Response::new(v1::AccessToken {
            access_token: issued.access_token,
            expires_on: issued.expires_on,
            not_before: issued.not_before,
            resource: issued.resource,
            token_type: "Bearer".into(),
            client_id: issued.client_id,
        }))
    }
}
