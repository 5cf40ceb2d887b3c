//! Who may call: authenticating a bearer token into a [`Caller`], and the
//! use cases of API tokens and role assignments.
//!
//! An API token's secret is `strato_` and 43 characters of random base64;
//! only its SHA-256 is stored, so a copy of the database grants nothing.
//! A token carries one role at one scope; role assignments add more to any
//! principal (`token:NAME`, `oidc:SUBJECT`).

use std::sync::Arc;

use base64::Engine as _;
use sha2::Digest as _;
use strato_core::FieldError;
use strato_core::access::{Grant, Role, Scope};

use super::{
    Action, AppError, Caller, Principal, authorize, authorize_anywhere, authorize_at, required,
};
use crate::plane::Plane;
use crate::store::{ApiTokenRecord, RoleAssignmentRecord, Store};

/// The prefix of every API token's secret (secret scanners look for it).
pub const TOKEN_PREFIX: &str = "strato_";

/// The name of the Owner token the control plane makes at first start and
/// writes into `DATA_DIR/admin.conf`.
pub const BOOTSTRAP_TOKEN: &str = "admin";

/// Longest token lifetime that may be asked for: ten years.
pub const MAX_TOKEN_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The SHA-256 of a secret, as stored.
pub fn secret_hash(secret: &str) -> String {
    let digest = sha2::Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random secret.
fn new_secret() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A token's name: 1 to 63 lowercase letters, digits and '-'.
fn check_token_name(name: &str) -> Result<(), AppError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(
            FieldError::new("name", "must be 1 to 63 lowercase letters, digits and '-'").into(),
        );
    }
    Ok(())
}

/// A principal as role assignments name it.
fn check_principal(principal: &str) -> Result<(), AppError> {
    let ok = principal.len() <= 256
        && (principal
            .strip_prefix("token:")
            .is_some_and(|n| !n.is_empty())
            || principal
                .strip_prefix("oidc:")
                .is_some_and(|s| !s.is_empty()))
        && !principal.chars().any(char::is_control);
    if !ok {
        return Err(FieldError::new(
            "principal",
            "must be token:NAME or oidc:SUBJECT (at most 256 characters)",
        )
        .into());
    }
    Ok(())
}

/// A newly made API token and its secret, shown once.
#[derive(Debug)]
pub struct NewToken {
    pub token: ApiTokenRecord,
    pub secret: String,
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
        let now = self.plane.clock.now_ms();
        let token = match self
            .plane
            .store
            .api_token_by_hash(&secret_hash(secret))
            .await?
        {
            Some(t) => t,
            None => {
                return Err(AppError::Unauthenticated(
                    "the bearer token is not a token of this control plane".into(),
                ));
            }
        };
        if token.revoked_at.is_some() {
            return Err(AppError::Unauthenticated(format!(
                "API token {} is revoked",
                token.name
            )));
        }
        if !token.is_valid_at(now) {
            return Err(AppError::Unauthenticated(format!(
                "API token {} has expired",
                token.name
            )));
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
        }))
    }

    /// Makes the bootstrap Owner token anew (a token of that name is
    /// replaced): its secret goes into admin.conf.
    pub async fn bootstrap(&self) -> Result<NewToken, AppError> {
        let secret = new_secret();
        let token = ApiTokenRecord {
            name: BOOTSTRAP_TOKEN.to_owned(),
            secret_hash: secret_hash(&secret),
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
        check_token_name(name)?;
        let grant = Grant {
            role: Role::parse("role", role)?,
            scope: Scope::parse("scope", scope)?,
        };
        if expires_in_seconds > MAX_TOKEN_SECONDS {
            return Err(FieldError::new(
                "expires_in_seconds",
                format!("must be at most {MAX_TOKEN_SECONDS} (ten years); 0: never expires"),
            )
            .into());
        }
        authorize_at(caller, Action::CreateToken, &grant.scope)?;
        let now = self.plane.clock.now_ms();
        let secret = new_secret();
        let expires_in_ms = i64::try_from(expires_in_seconds).unwrap_or(i64::MAX / 2) * 1000;
        let token = ApiTokenRecord {
            name: name.to_owned(),
            secret_hash: secret_hash(&secret),
            grant,
            created_at: now,
            expires_at: (expires_in_seconds > 0).then_some(now + expires_in_ms),
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

    pub async fn revoke_token(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        required("name", name)?;
        let token = self.plane.store.api_token(name).await?;
        authorize_at(caller, Action::RevokeToken, &token.grant.scope)?;
        self.plane
            .store
            .revoke_api_token(name, self.plane.clock.now_ms())
            .await?;
        tracing::info!(token = %name, by = %caller.principal(), "API token revoked");
        Ok(())
    }

    fn assignment(principal: &str, role: &str, scope: &str) -> Result<(String, Grant), AppError> {
        check_principal(principal)?;
        Ok((
            principal.to_owned(),
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
