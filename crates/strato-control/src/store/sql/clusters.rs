//! Clusters: create, read, update (spec and identities), delete, and the
//! allocation state the reconcile loop records.

use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;
use strato_core::identity::Identity;
use strato_core::node::AllocationState;
use strato_core::quota::{self, QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

use super::nodes::{NODE_COLUMNS, node_from_row};
use super::usage::{allocation, allocations, node_count};
use super::{SqlStore, corrupt, decode_spec, encode_spec, select_one, u32_col};
use crate::store::{
    ClusterIssue, ClusterRecord, Conflict, IdentityUpdate, NodeRecord, SpecUpdate, StoreError,
};

const CLUSTER_COLUMNS: &str = "spec, created_at, updated_at, allocation_state, allocation_since, \
     target_nodes, errors, identities";

fn cluster_from_row(row: &AnyRow) -> Result<ClusterRecord, StoreError> {
    let state: String = row.try_get("allocation_state")?;
    let errors: String = row.try_get("errors")?;
    Ok(ClusterRecord {
        spec: decode_spec(row.try_get("spec")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        allocation_state: match state.as_str() {
            "resizing" => AllocationState::Resizing,
            _ => AllocationState::Steady,
        },
        allocation_since: row.try_get("allocation_since")?,
        target_nodes: u32_col(row, "target_nodes")?,
        errors: serde_json::from_str(&errors).map_err(|e| corrupt("cluster errors", e))?,
        identities: serde_json::from_str(row.try_get("identities")?)
            .map_err(|e| corrupt("cluster identities", e))?,
    })
}

pub(super) async fn load_cluster(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<ClusterRecord, StoreError> {
    let row = select_one(conn, CLUSTER_COLUMNS, "clusters", "name", name)
        .await?
        .ok_or_else(|| StoreError::ClusterNotFound(name.to_owned()))?;
    cluster_from_row(&row)
}

/// Replaces the spec and identities of the stored cluster `name`; returns
/// it as stored.
async fn save_cluster(
    conn: &mut AnyConnection,
    name: &str,
    spec: &ClusterSpec,
    identities: &[Identity],
    now: i64,
) -> Result<ClusterRecord, StoreError> {
    sqlx::query("UPDATE clusters SET spec = $1, identities = $2, updated_at = $3 WHERE name = $4")
        .bind(encode_spec(spec)?)
        .bind(serde_json::to_string(identities).map_err(|e| corrupt("identities", e))?)
        .bind(now)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    load_cluster(conn, name).await
}

pub(super) async fn create_cluster(
    db: &SqlStore,
    spec: ClusterSpec,
    identities: Vec<Identity>,
    limits: &QuotaLimits,
    now: i64,
) -> Result<ClusterRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let taken: Option<String> = sqlx::query_scalar("SELECT name FROM clusters WHERE name = $1")
        .bind(&spec.name)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(existing) = taken {
        return Err(StoreError::ClusterExists(existing));
    }
    let others = QuotaUsage::from_allocations(&allocations(&mut tx, &spec.location, None).await?);
    quota::check(
        &spec.location,
        limits.region(&spec.location),
        &others,
        &allocation(&spec, 0)?,
        true,
    )?;
    sqlx::query(
        "INSERT INTO clusters (name, location, spec, created_at, updated_at, scale_changed_at,
             allocation_since, identities)
         VALUES ($1, $2, $3, $4, $4, $4, $4, $5)",
    )
    .bind(&spec.name)
    .bind(&spec.location)
    .bind(encode_spec(&spec)?)
    .bind(now)
    .bind(serde_json::to_string(&identities).map_err(|e| corrupt("identities", e))?)
    .execute(&mut *tx)
    .await?;
    let record = load_cluster(&mut tx, &spec.name).await?;
    tx.commit().await?;
    Ok(record)
}

pub(super) async fn get_cluster(db: &SqlStore, name: &str) -> Result<ClusterRecord, StoreError> {
    let mut conn = db.pool.acquire().await?;
    load_cluster(&mut conn, name).await
}

pub(super) async fn list_clusters(db: &SqlStore) -> Result<Vec<ClusterRecord>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY name"
    )))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(cluster_from_row).collect()
}

pub(super) async fn update_cluster(
    db: &SqlStore,
    name: &str,
    update: SpecUpdate,
    limits: &QuotaLimits,
    now: i64,
) -> Result<ClusterRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let current = load_cluster(&mut tx, name).await?;
    let next = update(&current.spec)?;
    if next == current.spec {
        return Ok(current);
    }
    if next.max_nodes < current.spec.max_nodes {
        // A gang that no longer fits would hold back the whole queue.
        let widest: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, COALESCE({}, 1) AS n FROM jobs
             WHERE cluster = $1 AND state IN ('queued', 'preparing', 'running')
             ORDER BY n DESC LIMIT 1",
            db.dialect.json_int("spec", "node_count")
        )))
        .bind(&current.spec.name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((job, n)) = widest
            && n > i64::from(next.max_nodes)
        {
            return Err(Conflict::MaxNodesBelowGang {
                job,
                needs: u32::try_from(n).unwrap_or(u32::MAX),
            }
            .into());
        }
    }
    let nodes = node_count(&mut tx, &current.spec.name).await?;
    let (before, after) = (allocation(&current.spec, nodes)?, allocation(&next, nodes)?);
    // Only growth is checked: lowering min_nodes must work even when the
    // region is over its limit (e.g. after a limit was lowered).
    if after.vcpus() > before.vcpus() {
        let others = QuotaUsage::from_allocations(
            &allocations(&mut tx, &next.location, Some(&current.spec.name)).await?,
        );
        quota::check(
            &next.location,
            limits.region(&next.location),
            &others,
            &after,
            false,
        )?;
    }
    let record = save_cluster(&mut tx, &current.spec.name, &next, &current.identities, now).await?;
    tx.commit().await?;
    Ok(record)
}

pub(super) async fn update_identities(
    db: &SqlStore,
    name: &str,
    update: IdentityUpdate,
    now: i64,
) -> Result<ClusterRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let current = load_cluster(&mut tx, name).await?;
    let (identity, identities) = update(&current.spec, &current.identities)?;
    let mut spec = current.spec.clone();
    spec.identity = identity;
    let record = save_cluster(&mut tx, &current.spec.name, &spec, &identities, now).await?;
    tx.commit().await?;
    Ok(record)
}

pub(super) async fn delete_cluster(
    db: &SqlStore,
    name: &str,
) -> Result<Vec<NodeRecord>, StoreError> {
    let mut tx = db.begin_write().await?;
    let cluster = load_cluster(&mut tx, name).await?.spec.name;
    let active: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE cluster = $1 AND state IN ('queued', 'preparing', 'running', 'preempted')",
    )
    .bind(&cluster)
    .fetch_one(&mut *tx)
    .await?;
    if active > 0 {
        return Err(Conflict::ClusterHasUnfinishedJobs {
            cluster,
            unfinished: u64::try_from(active).unwrap_or(0),
        }
        .into());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE cluster = $1"
    )))
    .bind(&cluster)
    .fetch_all(&mut *tx)
    .await?;
    let nodes = rows
        .iter()
        .map(node_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query("DELETE FROM clusters WHERE name = $1")
        .bind(&cluster)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(nodes)
}

pub(super) async fn set_allocation(
    db: &SqlStore,
    cluster: &str,
    state: AllocationState,
    target_nodes: u32,
    errors: Vec<ClusterIssue>,
    now: i64,
) -> Result<(), StoreError> {
    // Most passes change nothing: read first, and take a write's turn only
    // for a change (checked again under it).
    {
        let mut conn = db.pool.acquire().await?;
        match load_cluster(&mut conn, cluster).await {
            Ok(current) => {
                if allocation_change(&current, state, target_nodes, &errors, now).is_none() {
                    return Ok(());
                }
            }
            Err(StoreError::ClusterNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let mut tx = db.begin_write().await?;
    let current = match load_cluster(&mut tx, cluster).await {
        Ok(c) => c,
        Err(StoreError::ClusterNotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some((errors, since)) = allocation_change(&current, state, target_nodes, &errors, now)
    else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE clusters SET allocation_state = $1, allocation_since = $2, errors = $3,
             target_nodes = $5 WHERE name = $4",
    )
    .bind(state.as_str())
    .bind(since)
    .bind(serde_json::to_string(&errors).map_err(|e| corrupt("cluster errors", e))?)
    .bind(cluster)
    .bind(i64::from(target_nodes))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What `set_allocation` writes over `current`: the issues (one that
/// persists keeps its first `since`) and the state's `since`; `None` when
/// `current` says all that already.
fn allocation_change(
    current: &ClusterRecord,
    state: AllocationState,
    target_nodes: u32,
    errors: &[ClusterIssue],
    now: i64,
) -> Option<(Vec<ClusterIssue>, i64)> {
    let errors: Vec<ClusterIssue> = errors
        .iter()
        .cloned()
        .map(|mut e| {
            if let Some(old) = current.errors.iter().find(|o| o.code == e.code) {
                e.since = old.since;
            }
            e
        })
        .collect();
    if current.allocation_state == state
        && current.errors == errors
        && current.target_nodes == target_nodes
    {
        return None;
    }
    let since = if current.allocation_state == state {
        current.allocation_since
    } else {
        now
    };
    Some((errors, since))
}
