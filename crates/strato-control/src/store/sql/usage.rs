//! What clusters hold against the quota: their minimum, or the nodes they
//! have if more.

use sqlx::AnyConnection;
use sqlx::Row;
use strato_core::quota::{Allocation, QuotaUsage};
use strato_core::spec::ClusterSpec;

use super::{SqlStore, corrupt, decode_spec};
use crate::store::StoreError;

/// The cores one cluster holds: its minimum, or the nodes it has if more.
pub(super) fn allocation(spec: &ClusterSpec, nodes: u32) -> Result<Allocation, StoreError> {
    let size = spec
        .size()
        .map_err(|e| corrupt(&format!("cluster {}", spec.name), e))?;
    Ok(Allocation {
        family: size.family.to_owned(),
        priority: spec.vm_priority,
        vcpus_per_node: size.vcpus,
        nodes: nodes.max(spec.min_nodes),
    })
}

/// The allocations of every cluster in `location` except `excluding`.
pub(super) async fn allocations(
    conn: &mut AnyConnection,
    location: &str,
    excluding: Option<&str>,
) -> Result<Vec<Allocation>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.spec, (SELECT COUNT(*) FROM nodes n WHERE n.cluster = c.name) AS nodes
         FROM clusters c WHERE c.location = $1 AND ($2 IS NULL OR c.name <> $2)",
    )
    .bind(location)
    .bind(excluding)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let spec = decode_spec(row.try_get("spec")?)?;
            let nodes: i64 = row.try_get("nodes")?;
            allocation(&spec, u32::try_from(nodes).unwrap_or(u32::MAX))
        })
        .collect()
}

pub(super) async fn node_count(conn: &mut AnyConnection, cluster: &str) -> Result<u32, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE cluster = $1")
        .bind(cluster)
        .fetch_one(conn)
        .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

pub(super) async fn usage_of_others(
    db: &SqlStore,
    location: &str,
    cluster: &str,
) -> Result<QuotaUsage, StoreError> {
    let mut conn = db.pool.acquire().await?;
    Ok(QuotaUsage::from_allocations(
        &allocations(&mut conn, location, Some(cluster)).await?,
    ))
}

pub(super) async fn usage(db: &SqlStore, location: &str) -> Result<QuotaUsage, StoreError> {
    let mut conn = db.pool.acquire().await?;
    Ok(QuotaUsage::from_allocations(
        &allocations(&mut conn, location, None).await?,
    ))
}
