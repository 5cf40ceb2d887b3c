//! Registries: servers job images are pulled from, with sealed passwords.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::SqlStore;
use crate::store::{RegistryRecord, StoreError};

fn registry_from_row(row: &AnyRow) -> Result<RegistryRecord, StoreError> {
    Ok(RegistryRecord {
        name: row.try_get("name")?,
        server: row.try_get("server")?,
        username: row.try_get("username")?,
        password_sealed: row.try_get("password_sealed")?,
        identity: row.try_get("identity")?,
        clusters: serde_json::from_str(&row.try_get::<String, _>("clusters")?)
            .map_err(|e| StoreError::Corrupt(format!("registry clusters: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn create_registry(
    db: &SqlStore,
    r: RegistryRecord,
) -> Result<RegistryRecord, StoreError> {
    let r = RegistryRecord {
        server: r.server.to_ascii_lowercase(),
        ..r
    };
    let mut tx = db.begin_write().await?;
    let taken: Option<String> = sqlx::query_scalar("SELECT name FROM registries WHERE name = $1")
        .bind(&r.name)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(StoreError::RegistryExists(r.name));
    }
    let serving: Option<String> =
        sqlx::query_scalar("SELECT name FROM registries WHERE server = $1")
            .bind(&r.server)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(name) = serving {
        return Err(StoreError::RegistryServerTaken {
            name,
            server: r.server,
        });
    }
    sqlx::query(
        "INSERT INTO registries (name, server, username, password_sealed, identity, clusters, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&r.name)
    .bind(&r.server)
    .bind(&r.username)
    .bind(&r.password_sealed)
    .bind(&r.identity)
    .bind(serde_json::to_string(&r.clusters).map_err(|e| StoreError::Corrupt(format!("registry clusters: {e}")))?)
    .bind(r.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r)
}

pub(super) async fn get_registry(db: &SqlStore, name: &str) -> Result<RegistryRecord, StoreError> {
    let row = sqlx::query("SELECT name, server, username, password_sealed, identity, clusters, created_at FROM registries WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| StoreError::RegistryNotFound(name.to_owned()))?;
    registry_from_row(&row)
}

pub(super) async fn registry_for_server(
    db: &SqlStore,
    server: &str,
) -> Result<Option<RegistryRecord>, StoreError> {
    let row = sqlx::query("SELECT name, server, username, password_sealed, identity, clusters, created_at FROM registries WHERE server = $1")
        .bind(server.to_ascii_lowercase())
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(registry_from_row).transpose()
}

pub(super) async fn list_registries(db: &SqlStore) -> Result<Vec<RegistryRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, server, username, password_sealed, identity, clusters, created_at FROM registries ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(registry_from_row).collect()
}

pub(super) async fn delete_registry(db: &SqlStore, name: &str) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let n = sqlx::query("DELETE FROM registries WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(StoreError::RegistryNotFound(name.to_owned()));
    }
    tx.commit().await?;
    Ok(())
}
