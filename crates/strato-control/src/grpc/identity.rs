//! `IdentityService` (agents only) over `app::Vending`.

use std::sync::Arc;

use strato_proto::convert::identity_selector;
use strato_proto::v1::{self, identity_service_server::IdentityService};
use tonic::{Request, Response, Status};

use super::{convert, respond};
use crate::agents::authenticate_node;
use crate::app::{Caller, TokenRequest, Vending};
use crate::plane::Plane;
use crate::store::Store;

pub struct IdentityApi<S> {
    app: Vending<S>,
}

impl<S: Store> IdentityApi<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        IdentityApi {
            app: Vending::new(plane),
        }
    }
}

#[tonic::async_trait]
impl<S: Store> IdentityService for IdentityApi<S> {
    async fn get_token(
        &self,
        request: Request<v1::GetTokenRequest>,
    ) -> Result<Response<v1::AccessToken>, Status> {
        let node = authenticate_node(self.app.plane(), &request).await?;
        let r = request.into_inner();
        let req = TokenRequest {
            identity: identity_selector(&r),
            job_id: r.job_id,
            attempt: r.attempt,
            resource: r.resource,
        };
        respond(
            self.app.get_token(&Caller::Node(node.node_id), req).await,
            convert::access_token,
        )
    }
}
