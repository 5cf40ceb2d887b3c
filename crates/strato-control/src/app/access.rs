//! Who may call: authenticating a bearer token into a [`Caller`], and the
//! use cases of API tokens and role assignments.
//!
//! An API token's secret is `strato_` and 244 random bits in hex;
//! only its SHA-256 is stored, so a copy of the database grants nothing.
//! A token carries one role at one scope; role assignments add more to any
//! principal (`token:NAME`, `oidc:SUBJECT`).

use std::sync::Arc;

use strato_core::access::{self as rules, Grant, Principal as Who, Role, Scope, TokenState};

use super::{
    Action, AppError, Caller, Principal, authorize, authorize_anywhere, authorize_at, required,
};
use crate::plane::{Plane, hash_token, new_token};
use crate::store::{ApiTokenRecord, RoleAssignmentRecord, Store};

/// The prefix of every API token's secret (secret scanners look for it).
pub const TOKEN_PREFIX: &str = "strato_";

/// The name of the Owner token the control plane makes at first start and
/// writes into `DATA_DIR/admin.conf`.
pub const BOOTSTRAP_TOKEN: &str = "admin";

/// A new API token's secret: the prefix and 244 random bits.
fn new_secret() -> String {
    format!("{TOKEN_PREFIX}{}", new_token())
}

/// A newly made API token and its secret, shown once.
pub struct NewToken {
    pub token: ApiTokenRecord,
    pub secret: String,
}

/// Never the secret: a `?` in a log line must not print it.
impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The access use cases.
pub struct Access<S: Store> {
    plane: Arc<Plane<S>>,
}

impl<S: Store> Clone for Access<S> {
    fn clone(&self) -> Self {
        Access {
            plane: self.plane.clone(),
        }
    }
}

impl<S: Store> Access<S> {
    pub fn new(plane: Arc<Plane<S>>) -> Self {
        Access { plane }
    }

    /// The caller a bearer token proves, or UNAUTHENTICATED saying why.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller, AppError> {
        let Some(secret) = bearer else {
            return Err(AppError::Unauthenticated(
                "no bearer token: send `authorization: Bearer TOKEN` (an API token, e.g. from DATA_DIR/admin.conf)".into(),
            ));
        };
        if let Some(oidc) = &self.plane.oidc
            && crate::oidc::looks_like_jwt(secret)
        {
            let (subject, expires_s) = oidc
                .verify(secret)
                .await
                .map_err(|e| AppError::Unauthenticated(e.to_string()))?;
            let principal =
                strato_core::access::Principal::parse("sub", &format!("oidc:{subject}"))
                    .map_err(|e| AppError::Unauthenticated(format!("OIDC token: {e}")))?
                    .to_string();
            let grants = self
                .plane
                .store
                .list_role_assignments(Some(&principal))
                .await?
                .into_iter()
                .map(|a| a.grant)
                .collect();
            return Ok(Caller::User(Principal {
                name: principal,
                grants,
                expires_at: Some(expires_s.saturating_mul(1000)),
            }));
        }
        let now = self.plane.clock.now_ms();
        let token = match self
            .plane
            .store
            .api_token_by_hash(&hash_token(secret))
            .await?
        {
            Some(t) => t,
            None => {
                return Err(AppError::Unauthenticated(
                    "the bearer token is not a token of this control plane".into(),
                ));
            }
        };
        match rules::token_state(token.revoked_at, token.expires_at, now) {
            TokenState::Valid => {}
            TokenState::Revoked => {
                return Err(AppError::Unauthenticated(format!(
                    "API token {} is revoked",
                    token.name
                )));
            }
            TokenState::Expired => {
                return Err(AppError::Unauthenticated(format!(
                    "API token {} has expired",
                    token.name
                )));
            }
        }
        let principal = token.principal();
        let mut grants = vec![token.grant];
        grants.extend(
            self.plane
                .store
                .list_role_assignments(Some(&principal))
                .await?
                .into_iter()
                .map(|a| a.grant),
        );
        Ok(Caller::User(Principal {
            name: principal,
            grants,
            expires_at: token.expires_at,
        }))
    }

    /// Whether `caller`'s credential still holds, for a call that stays
    /// open: UNAUTHENTICATED once it expired or (an API token) was revoked.
    pub async fn still_valid(&self, caller: &Caller) -> Result<(), AppError> {
        let Caller::User(p) = caller else {
            return Ok(());
        };
        let now = self.plane.clock.now_ms();
        if p.expires_at.is_some_and(|at| now >= at) {
            return Err(AppError::Unauthenticated(format!(
                "the credential of {} has expired",
                p.name
            )));
        }
        if let Some(name) = p.name.strip_prefix("token:") {
            let token = self.plane.store.api_token(name).await?;
            if rules::token_state(token.revoked_at, token.expires_at, now) != TokenState::Valid {
                return Err(AppError::Unauthenticated(format!(
                    "API token {name} is no longer valid (revoked or expired)"
                )));
            }
        }
        Ok(())
    }

    /// Makes the bootstrap Owner token anew (a token of that name is
    /// replaced): its secret goes into admin.conf.
    pub async fn bootstrap(&self) -> Result<NewToken, AppError> {
        let secret = new_secret();
        let token = ApiTokenRecord {
            name: BOOTSTRAP_TOKEN.to_owned(),
            secret_hash: hash_token(&secret),
            grant: Grant {
                role: Role::Owner,
                scope: Scope::All,
            },
            created_at: self.plane.clock.now_ms(),
            expires_at: None,
            created_by: "strato-control".to_owned(),
            revoked_at: None,
        };
        let token = self.plane.store.create_api_token(token, true).await?;
        Ok(NewToken { token, secret })
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        name: &str,
        role: &str,
        scope: &str,
        expires_in_seconds: u64,
    ) -> Result<NewToken, AppError> {
        rules::validate_token_name("name", name)?;
        let grant = Grant {
            role: Role::parse("role", role)?,
            scope: Scope::parse("scope", scope)?,
        };
        authorize_at(caller, Action::CreateToken, &grant.scope)?;
        let now = self.plane.clock.now_ms();
        let expires_at = rules::token_expiry("expires_in_seconds", now, expires_in_seconds)?;
        let secret = new_secret();
        let token = ApiTokenRecord {
            name: name.to_owned(),
            secret_hash: hash_token(&secret),
            grant,
            created_at: now,
            expires_at,
            created_by: caller.principal().to_owned(),
            revoked_at: None,
        };
        let token = self.plane.store.create_api_token(token, false).await?;
        tracing::info!(token = %token.name, grant = %token.grant, by = %caller.principal(), "API token created");
        Ok(NewToken { token, secret })
    }

    pub async fn list_tokens(&self, caller: &Caller) -> Result<Vec<ApiTokenRecord>, AppError> {
        authorize(caller, Action::ListTokens, None)?;
        Ok(self.plane.store.list_api_tokens().await?)
    }

    /// Revoking a token needs the right at every scope it holds (its own
    /// grant and its principal's role assignments), so no one revokes a
    /// token that reaches further than they do. A caller without the right
    /// anywhere is refused before learning whether the token exists.
    pub async fn revoke_token(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        required("name", name)?;
        authorize_anywhere(caller, Action::RevokeToken)?;
        let token = self.plane.store.api_token(name).await?;
        authorize_at(caller, Action::RevokeToken, &token.grant.scope)?;
        for assignment in self
            .plane
            .store
            .list_role_assignments(Some(&token.principal()))
            .await?
        {
            authorize_at(caller, Action::RevokeToken, &assignment.grant.scope)?;
        }
        self.plane
            .store
            .revoke_api_token(name, self.plane.clock.now_ms())
            .await?;
        tracing::info!(token = %name, by = %caller.principal(), "API token revoked");
        Ok(())
    }

    fn assignment(principal: &str, role: &str, scope: &str) -> Result<(String, Grant), AppError> {
        let principal = Who::parse("principal", principal)?;
        Ok((
            principal.to_string(),
            Grant {
                role: Role::parse("role", role)?,
                scope: Scope::parse("scope", scope)?,
            },
        ))
    }

    pub async fn create_role_assignment(
        &self,
        caller: &Caller,
        principal: &str,
        role: &str,
        scope: &str,
    ) -> Result<RoleAssignmentRecord, AppError> {
        let (principal, grant) = Self::assignment(principal, role, scope)?;
        authorize_at(caller, Action::CreateRoleAssignment, &grant.scope)?;
        let record = RoleAssignmentRecord {
            principal,
            grant,
            created_at: self.plane.clock.now_ms(),
        };
        let record = self.plane.store.create_role_assignment(record).await?;
        tracing::info!(principal = %record.principal, grant = %record.grant, by = %caller.principal(), "role assigned");
        Ok(record)
    }

    pub async fn list_role_assignments(
        &self,
        caller: &Caller,
        principal: &str,
    ) -> Result<Vec<RoleAssignmentRecord>, AppError> {
        authorize(caller, Action::ListRoleAssignments, None)?;
        let principal = (!principal.is_empty()).then_some(principal);
        Ok(self.plane.store.list_role_assignments(principal).await?)
    }

    pub async fn delete_role_assignment(
        &self,
        caller: &Caller,
        principal: &str,
        role: &str,
        scope: &str,
    ) -> Result<(), AppError> {
        let (principal, grant) = Self::assignment(principal, role, scope)?;
        authorize_at(caller, Action::DeleteRoleAssignment, &grant.scope)?;
        self.plane
            .store
            .delete_role_assignment(&principal, &grant)
            .await?;
        tracing::info!(principal = %principal, grant = %grant, by = %caller.principal(), "role assignment deleted");
        Ok(())
    }

    /// The caller's principal and roles.
    pub fn who_am_i(&self, caller: &Caller) -> Result<(String, Vec<Grant>), AppError> {
        authorize_anywhere(caller, Action::WhoAmI)?;
        Ok((caller.principal().to_owned(), caller.grants().to_vec()))
    }
}
