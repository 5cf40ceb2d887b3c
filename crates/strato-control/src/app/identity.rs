//! Token vending: access tokens for the identities of a job's cluster.
//!
//! **Architecture invariant:** a token is issued only to a node's agent
//! (authenticated by its session token and, under TLS, its client
//! certificate), only for a job attempt that the store places on that node
//! right now, and only for an identity of that job's cluster.

use std::sync::Arc;

use strato_core::identity::{IdentitySelector, SelectError, select};

use super::{Action, AppError, Caller, NotFound, Precondition, authorize};
use crate::plane::Plane;
use crate::store::{Store, StoreError};
use crate::tokens::IssuedToken;

/// What an agent asks for on behalf of a job attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub job_id: String,
    pub attempt: u32,
    /// The token's audience.
    pub resource: String,
    pub identity: IdentitySelector,
}

pub struct Vending<S> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> Vending<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        Vending { plane }
    }

    pub fn plane(&self) -> &Plane<S> {
        &self.plane
    }

    pub async fn get_token(
        &self,
        caller: &Caller,
        r: TokenRequest,
    ) -> Result<IssuedToken, AppError> {
        let Caller::Node(node_id) = caller else {
            return Err(AppError::PermissionDenied(format!(
                "{} is not a node: only agents get tokens for jobs",
                caller.principal()
            )));
        };
        if r.resource.is_empty() {
            return Err(AppError::InvalidArgument(strato_core::FieldError::new(
                "resource",
                "is required (the token's audience)",
            )));
        }
        let job = self
            .plane
            .store
            .get_job(&r.job_id)
            .await
            .map_err(|e| match e {
                StoreError::JobNotFound(_) => AppError::PermissionDenied(format!(
                    "job {} does not run on this node",
                    r.job_id
                )),
                other => other.into(),
            })?;
        // Any node of the attempt's gang (rank 0's is `job.node_id`).
        let on_this_node = job
            .attempts
            .iter()
            .any(|a| a.attempt == job.attempt && a.node_ids.contains(node_id));
        if !on_this_node || job.attempt != r.attempt || !job.state.on_node() {
            tracing::warn!(node = %node_id, job = %r.job_id, attempt = r.attempt, "token refused: attempt not on this node");
            return Err(AppError::PermissionDenied(format!(
                "attempt {} of job {} does not run on node {}",
                r.attempt, r.job_id, node_id
            )));
        }
        authorize(caller, Action::GetToken, Some(&job.spec.cluster))?;
        let cluster = self.plane.store.get_cluster(&job.spec.cluster).await?;
        let identity = select(&cluster.identities, &r.identity).map_err(|e| match e {
            SelectError::NoIdentity => AppError::from(Precondition::NoIdentity {
                cluster: cluster.spec.name.clone(),
            }),
            SelectError::NotFound => AppError::NotFound(NotFound::Identity),
        })?;
        let issued = self
            .plane
            .identity_token(&cluster.spec.name, identity, &r.resource)
            .await
            .inspect_err(|e| {
                tracing::warn!(job = %job.id, client_id = %identity.client_id, error = %e, "token refused");
            })?;
        tracing::info!(
            node = %node_id, job = %job.id, attempt = job.attempt,
            client_id = %identity.client_id, resource = %r.resource, "token issued"
        );
        Ok(issued)
    }
}
