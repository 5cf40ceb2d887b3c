//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`, so
//! a commit survives a crash of the process or the machine.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use strato_core::node::NodeState;
use strato_core::quota::{self, Allocation, QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

use super::{ClusterRecord, NodeRecord, SpecUpdate, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "strato.db";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `DATA_DIR/strato.db` and brings its schema
    /// up to date.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a write transaction that holds SQLite's write lock from its
    /// first statement, so what it reads cannot change before it commits.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn decode_spec(json: &str) -> Result<ClusterSpec, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("cluster spec: {e}")))
}

fn encode_spec(spec: &ClusterSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(format!("cluster spec: {e}")))
}

fn cluster_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ClusterRecord, StoreError> {
    Ok(ClusterRecord {
        spec: decode_spec(row.try_get("spec")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        scale_changed_at: row.try_get("scale_changed_at")?,
    })
}

/// The cores one cluster holds: its minimum, or the nodes it has if more.
fn allocation(spec: &ClusterSpec, nodes: u32) -> Result<Allocation, StoreError> {
    let size = spec
        .size()
        .map_err(|e| StoreError::Corrupt(format!("cluster {}: {e}", spec.name)))?;
    Ok(Allocation {
        family: size.family.to_owned(),
        priority: spec.vm_priority,
        vcpus_per_node: size.vcpus,
        nodes: nodes.max(spec.min_nodes),
    })
}

/// The allocations of every cluster in `location` except `excluding`.
async fn allocations(
    conn: &mut SqliteConnection,
    location: &str,
    excluding: Option<&str>,
) -> Result<Vec<Allocation>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.spec, (SELECT COUNT(*) FROM nodes n WHERE n.cluster = c.name) AS nodes
         FROM clusters c WHERE c.location = ?1 AND (?2 IS NULL OR c.name <> ?2)",
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

async fn node_count(conn: &mut SqliteConnection, cluster: &str) -> Result<u32, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE cluster = ?1")
        .bind(cluster)
        .fetch_one(conn)
        .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

impl Store for SqliteStore {
    async fn create_cluster(
        &self,
        spec: ClusterSpec,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<ClusterRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let taken: Option<String> = sqlx::query_scalar("SELECT name FROM clusters WHERE name = ?1")
            .bind(&spec.name)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(existing) = taken {
            return Err(StoreError::ClusterExists(existing));
        }
        let others =
            QuotaUsage::from_allocations(&allocations(&mut tx, &spec.location, None).await?);
        quota::check(
            &spec.location,
            limits.region(&spec.location),
            &others,
            &allocation(&spec, 0)?,
            true,
        )?;
        sqlx::query(
            "INSERT INTO clusters (name, location, spec, created_at, updated_at, scale_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?4, ?4)",
        )
        .bind(&spec.name)
        .bind(&spec.location)
        .bind(encode_spec(&spec)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ClusterRecord {
            spec,
            created_at: now,
            updated_at: now,
            scale_changed_at: now,
        })
    }

    async fn get_cluster(&self, name: &str) -> Result<ClusterRecord, StoreError> {
        let row = sqlx::query(
            "SELECT spec, created_at, updated_at, scale_changed_at FROM clusters WHERE name = ?1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::ClusterNotFound(name.to_owned()))?;
        cluster_from_row(&row)
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT spec, created_at, updated_at, scale_changed_at FROM clusters ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cluster_from_row).collect()
    }

    async fn update_cluster(
        &self,
        name: &str,
        update: SpecUpdate,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<ClusterRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT spec, created_at, updated_at, scale_changed_at FROM clusters WHERE name = ?1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::ClusterNotFound(name.to_owned()))?;
        let current = cluster_from_row(&row)?;
        let next = update(&current.spec)?;
        if next == current.spec {
            return Ok(current);
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
        let scale_changed_at = if (next.min_nodes, next.max_nodes)
            != (current.spec.min_nodes, current.spec.max_nodes)
        {
            now
        } else {
            current.scale_changed_at
        };
        sqlx::query(
            "UPDATE clusters SET spec = ?1, updated_at = ?2, scale_changed_at = ?3 WHERE name = ?4",
        )
        .bind(encode_spec(&next)?)
        .bind(now)
        .bind(scale_changed_at)
        .bind(&current.spec.name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ClusterRecord {
            spec: next,
            created_at: current.created_at,
            updated_at: now,
            scale_changed_at,
        })
    }

    async fn delete_cluster(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM clusters WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::ClusterNotFound(name.to_owned()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_nodes(&self, cluster: &str) -> Result<Vec<NodeRecord>, StoreError> {
        // Distinguish "no such cluster" from "no nodes".
        let cluster = self.get_cluster(cluster).await?.spec.name;
        let rows = sqlx::query(
            "SELECT node_id, cluster, state, private_ip, port, run_id, reason, state_since
             FROM nodes WHERE cluster = ?1 ORDER BY node_id",
        )
        .bind(&cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                let port: i64 = row.try_get("port")?;
                Ok(NodeRecord {
                    node_id: row.try_get("node_id")?,
                    cluster: row.try_get("cluster")?,
                    state: NodeState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("node state {state:?}")))?,
                    private_ip: row.try_get("private_ip")?,
                    port: u16::try_from(port).unwrap_or(0),
                    run_id: row.try_get("run_id")?,
                    reason: row.try_get("reason")?,
                    state_since: row.try_get("state_since")?,
                })
            })
            .collect()
    }

    async fn usage(&self, location: &str) -> Result<QuotaUsage, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(QuotaUsage::from_allocations(
            &allocations(&mut conn, location, None).await?,
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strato_core::quota::RegionQuota;
    use strato_core::spec::{ClusterRequest, validate};

    fn spec(name: &str, size: &str, min: u32, max: u32) -> ClusterSpec {
        validate(
            &ClusterRequest {
                name: name.into(),
                vm_size: Some(size.into()),
                min_nodes: Some(min),
                max_nodes: Some(max),
                ..Default::default()
            },
            "local",
        )
        .expect("valid spec")
    }

    fn limits(family_cores: u64) -> QuotaLimits {
        QuotaLimits {
            default: RegionQuota {
                dedicated_cores_per_family: family_cores,
                ..RegionQuota::default()
            },
            ..QuotaLimits::default()
        }
    }

    #[tokio::test]
    async fn create_refuses_duplicates_case_insensitively_and_over_quota_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let l = limits(8);
        store
            .create_cluster(spec("cpu", "Standard_D2_v2", 2, 4), &l, 1)
            .await
            .expect("create");
        assert!(matches!(
            store.create_cluster(spec("CPU", "Standard_D2_v2", 0, 1), &l, 2).await,
            Err(StoreError::ClusterExists(n)) if n == "cpu"
        ));
        // 2 nodes x 2 vCPUs held; 3 more nodes would make 10 > 8.
        assert!(matches!(
            store
                .create_cluster(spec("big", "Standard_D2_v2", 3, 4), &l, 3)
                .await,
            Err(StoreError::Quota(_))
        ));
        assert!(matches!(
            store.get_cluster("big").await,
            Err(StoreError::ClusterNotFound(_))
        ));
        assert_eq!(
            store
                .usage("local")
                .await
                .expect("usage")
                .family("standardDv2Family"),
            4
        );
    }

    #[tokio::test]
    async fn update_checks_quota_for_growth_only_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let l = limits(8);
        store
            .create_cluster(spec("cpu", "Standard_D2_v2", 2, 10), &l, 1)
            .await
            .expect("create");
        let grow = |min: u32| -> SpecUpdate {
            Box::new(move |s: &ClusterSpec| {
                let mut next = s.clone();
                next.min_nodes = min;
                Ok(next)
            })
        };
        assert!(matches!(
            store.update_cluster("cpu", grow(5), &l, 2).await,
            Err(StoreError::Quota(_))
        ));
        let tight = limits(2);
        let shrunk = store
            .update_cluster("cpu", grow(1), &tight, 3)
            .await
            .expect("shrink always fits");
        assert_eq!((shrunk.spec.min_nodes, shrunk.updated_at), (1, 3));
        store.close().await;

        let reopened = SqliteStore::open(dir.path()).await.expect("reopen");
        let got = reopened.get_cluster("cpu").await.expect("still there");
        assert_eq!(got, shrunk);
        reopened.delete_cluster("cpu").await.expect("delete");
        assert!(matches!(
            reopened.delete_cluster("cpu").await,
            Err(StoreError::ClusterNotFound(_))
        ));
    }
}
