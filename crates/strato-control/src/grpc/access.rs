//! `AccessService` over `app::Access`.

use std::sync::Arc;

use strato_proto::convert::timestamp;
use strato_proto::v1::{self, access_service_server::AccessService};
use tonic::{Request, Response, Status};

use super::{auth, respond};
use crate::app::Access;
use crate::store::{ApiTokenRecord, RoleAssignmentRecord, Store};

pub struct AccessApi<S: Store> {
    app: Arc<Access<S>>,
}

impl<S: Store> AccessApi<S> {
    pub fn new(app: Arc<Access<S>>) -> Self {
        AccessApi { app }
    }
}

fn token(t: &ApiTokenRecord) -> v1::ApiToken {
    v1::ApiToken {
        name: t.name.clone(),
        role: t.grant.role.as_str().to_owned(),
        scope: t.grant.scope.to_string(),
        created_at: Some(timestamp(t.created_at)),
        expires_at: t.expires_at.map(timestamp),
        created_by: t.created_by.clone(),
        revoked: t.revoked_at.is_some(),
    }
}

fn assignment(a: &RoleAssignmentRecord) -> v1::RoleAssignment {
    v1::RoleAssignment {
        principal: a.principal.clone(),
        role: a.grant.role.as_str().to_owned(),
        scope: a.grant.scope.to_string(),
        created_at: Some(timestamp(a.created_at)),
    }
}

#[tonic::async_trait]
impl<S: Store> AccessService for AccessApi<S> {
    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let made = self
            .app
            .create_token(&caller, &r.name, &r.role, &r.scope, r.expires_in_seconds)
            .await;
        respond(made, |n| v1::CreateTokenResponse {
            token: Some(token(&n.token)),
            secret: n.secret,
        })
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let caller = auth::caller(&request)?;
        respond(self.app.list_tokens(&caller).await, |list| {
            v1::ListTokensResponse {
                tokens: list.iter().map(token).collect(),
            }
        })
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = request.into_inner().name;
        respond(self.app.revoke_token(&caller, &name).await, |()| {
            v1::RevokeTokenResponse {}
        })
    }

    async fn create_role_assignment(
        &self,
        request: Request<v1::CreateRoleAssignmentRequest>,
    ) -> Result<Response<v1::RoleAssignment>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let made = self
            .app
            .create_role_assignment(&caller, &r.principal, &r.role, &r.scope)
            .await;
        respond(made, |a| assignment(&a))
    }

    async fn list_role_assignments(
        &self,
        request: Request<v1::ListRoleAssignmentsRequest>,
    ) -> Result<Response<v1::ListRoleAssignmentsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let principal = request.into_inner().principal;
        respond(
            self.app.list_role_assignments(&caller, &principal).await,
            |list| v1::ListRoleAssignmentsResponse {
                assignments: list.iter().map(assignment).collect(),
            },
        )
    }

    async fn delete_role_assignment(
        &self,
        request: Request<v1::DeleteRoleAssignmentRequest>,
    ) -> Result<Response<v1::DeleteRoleAssignmentResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let done = self
            .app
            .delete_role_assignment(&caller, &r.principal, &r.role, &r.scope)
            .await;
        respond(done, |()| v1::DeleteRoleAssignmentResponse {})
    }

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let caller = auth::caller(&request)?;
        respond(self.app.who_am_i(&caller), |(principal, grants)| {
            v1::WhoAmIResponse {
                roles: grants
                    .iter()
                    .map(|g| v1::RoleAssignment {
                        principal: principal.clone(),
                        role: g.role.as_str().to_owned(),
                        scope: g.scope.to_string(),
                        created_at: None,
                    })
                    .collect(),
                principal,
            }
        })
    }
}
