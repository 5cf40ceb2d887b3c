//! Datastores: named storage accounts and containers.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::SqlStore;
use crate::store::{DatastoreRecord, StoreError};

fn datastore_from_row(row: &AnyRow) -> Result<DatastoreRecord, StoreError> {
    Ok(DatastoreRecord {
        name: row.try_get("name")?,
        account_url: row.try_get("account_url")?,
        container: row.try_get("container")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn create_datastore(
    db: &SqlStore,
    d: DatastoreRecord,
) -> Result<DatastoreRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let taken: Option<String> = sqlx::query_scalar("SELECT name FROM datastores WHERE name = $1")
        .bind(&d.name)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(StoreError::DatastoreExists(d.name));
    }
    sqlx::query(
        "INSERT INTO datastores (name, account_url, container, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&d.name)
    .bind(&d.account_url)
    .bind(&d.container)
    .bind(d.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(d)
}

pub(super) async fn get_datastore(
    db: &SqlStore,
    name: &str,
) -> Result<DatastoreRecord, StoreError> {
    let row = sqlx::query(
        "SELECT name, account_url, container, created_at FROM datastores WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| StoreError::DatastoreNotFound(name.to_owned()))?;
    datastore_from_row(&row)
}

pub(super) async fn list_datastores(db: &SqlStore) -> Result<Vec<DatastoreRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, account_url, container, created_at FROM datastores ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(datastore_from_row).collect()
}

pub(super) async fn delete_datastore(db: &SqlStore, name: &str) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let n = sqlx::query("DELETE FROM datastores WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(StoreError::DatastoreNotFound(name.to_owned()));
    }
    tx.commit().await?;
    Ok(())
}
