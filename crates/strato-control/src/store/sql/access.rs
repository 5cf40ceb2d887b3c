//! API tokens and role assignments.

use sqlx::Row;
use sqlx::any::AnyRow;
use strato_core::access::{Grant, Role, Scope};

use super::{SqlStore, corrupt};
use crate::store::{ApiTokenRecord, RoleAssignmentRecord, StoreError};

macro_rules! token_columns {
    () => {
        "name, secret_hash, role, scope, created_at, expires_at, created_by, revoked_at"
    };
}

fn grant_from(role: &str, scope: &str) -> Result<Grant, StoreError> {
    Ok(Grant {
        role: Role::parse("role", role).map_err(|e| corrupt("role", e))?,
        scope: Scope::parse("scope", scope).map_err(|e| corrupt("scope", e))?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<ApiTokenRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let scope: String = row.try_get("scope")?;
    Ok(ApiTokenRecord {
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        grant: grant_from(&role, &scope)?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

pub(super) async fn create_api_token(
    db: &SqlStore,
    t: ApiTokenRecord,
    replace: bool,
) -> Result<ApiTokenRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    if replace {
        sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(&t.name)
            .execute(&mut *tx)
            .await?;
    }
    let taken: Option<String> = sqlx::query_scalar("SELECT name FROM api_tokens WHERE name = $1")
        .bind(&t.name)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(StoreError::TokenExists(t.name));
    }
    sqlx::query(concat!(
        "INSERT INTO api_tokens (",
        token_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&t.name)
    .bind(&t.secret_hash)
    .bind(t.grant.role.as_str())
    .bind(t.grant.scope.to_string())
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(&t.created_by)
    .bind(t.revoked_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(t)
}

pub(super) async fn api_token_by_hash(
    db: &SqlStore,
    secret_hash: &str,
) -> Result<Option<ApiTokenRecord>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens WHERE secret_hash = $1"
    ))
    .bind(secret_hash)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(token_from_row).transpose()
}

pub(super) async fn api_token(db: &SqlStore, name: &str) -> Result<ApiTokenRecord, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| StoreError::TokenNotFound(name.to_owned()))?;
    token_from_row(&row)
}

pub(super) async fn list_api_tokens(db: &SqlStore) -> Result<Vec<ApiTokenRecord>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens ORDER BY name"
    ))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(token_from_row).collect()
}

pub(super) async fn revoke_api_token(
    db: &SqlStore,
    name: &str,
    now: i64,
) -> Result<ApiTokenRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let n =
        sqlx::query("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1")
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if n == 0 {
        return Err(StoreError::TokenNotFound(name.to_owned()));
    }
    let row = sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens WHERE name = $1"
    ))
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    token_from_row(&row)
}

fn assignment_from_row(row: &AnyRow) -> Result<RoleAssignmentRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let scope: String = row.try_get("scope")?;
    Ok(RoleAssignmentRecord {
        principal: row.try_get("principal")?,
        grant: grant_from(&role, &scope)?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn create_role_assignment(
    db: &SqlStore,
    a: RoleAssignmentRecord,
) -> Result<RoleAssignmentRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO role_assignments (principal, role, scope, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(&a.principal)
    .bind(a.grant.role.as_str())
    .bind(a.grant.scope.to_string())
    .bind(a.created_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(StoreError::AssignmentExists {
            principal: a.principal,
            grant: a.grant,
        });
    }
    tx.commit().await?;
    Ok(a)
}

pub(super) async fn list_role_assignments(
    db: &SqlStore,
    principal: Option<&str>,
) -> Result<Vec<RoleAssignmentRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT principal, role, scope, created_at FROM role_assignments
         WHERE $1 IS NULL OR principal = $1 ORDER BY principal, scope, role",
    )
    .bind(principal)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(assignment_from_row).collect()
}

pub(super) async fn delete_role_assignment(
    db: &SqlStore,
    principal: &str,
    grant: &Grant,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let n = sqlx::query(
        "DELETE FROM role_assignments WHERE principal = $1 AND role = $2 AND scope = $3",
    )
    .bind(principal)
    .bind(grant.role.as_str())
    .bind(grant.scope.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::AssignmentNotFound {
            principal: principal.to_owned(),
            grant: grant.clone(),
        });
    }
    tx.commit().await?;
    Ok(())
}
