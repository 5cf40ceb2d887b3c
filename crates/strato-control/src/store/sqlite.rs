//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`, so
//! a commit survives a crash of the process or the machine.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use strato_core::job::{self, AttemptEnd, GangStep, JobSpec, JobState, NextStep};
use strato_core::node::{AllocationState, NodeState};
use strato_core::quota::{self, Allocation, QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

use strato_core::identity::Identity;

use super::{
    AttemptRecord, AttemptReport, ClusterIssue, ClusterRecord, DatastoreRecord, EnrollReport,
    GangRank, IdentityUpdate, JobRecord, LogRecord, NodeRecord, NodeUsage, QueuedJob, RankToStop,
    ReportOutcome, SpecUpdate, Store, StoreError, TransitionRecord,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "strato.db";

const CLUSTER_COLUMNS: &str = "spec, created_at, updated_at, allocation_state, allocation_since, \
     target_nodes, errors, identities";
const NODE_COLUMNS: &str = "node_id, cluster, state, private_ip, port, run_id, reason, state_since, \
     created_at, idle_since, last_heartbeat, session_token_hash IS NOT NULL AS enrolled, hostname, pid, \
     metrics_url, gpus, cpu_percent, memory_used, memory_total, gpu_percent, evict_at, gpu_info";
const JOB_COLUMNS: &str = "id, spec, state, reason, attempt, failures, preemptions, node_id, \
     exit_code, cancel_requested, created_at, updated_at";

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

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn decode_spec(json: &str) -> Result<ClusterSpec, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt("cluster spec", e))
}

fn encode_spec(spec: &ClusterSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| corrupt("cluster spec", e))
}

fn cluster_from_row(row: &SqliteRow) -> Result<ClusterRecord, StoreError> {
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

fn node_from_row(row: &SqliteRow) -> Result<NodeRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let port: i64 = row.try_get("port")?;
    let pid: Option<i64> = row.try_get("pid")?;
    Ok(NodeRecord {
        node_id: row.try_get("node_id")?,
        cluster: row.try_get("cluster")?,
        state: NodeState::parse(&state).ok_or_else(|| corrupt("node state", &state))?,
        private_ip: row.try_get("private_ip")?,
        port: u16::try_from(port).unwrap_or(0),
        run_id: row.try_get("run_id")?,
        reason: row.try_get("reason")?,
        state_since: row.try_get("state_since")?,
        created_at: row.try_get("created_at")?,
        idle_since: row.try_get("idle_since")?,
        last_heartbeat: row.try_get("last_heartbeat")?,
        enrolled: row.try_get("enrolled")?,
        hostname: row.try_get("hostname")?,
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        metrics_url: row.try_get("metrics_url")?,
        gpus: u32_col(row, "gpus")?,
        gpu_info: serde_json::from_str(&row.try_get::<String, _>("gpu_info")?)
            .map_err(|e| corrupt("node gpu_info", e))?,
        usage: NodeUsage {
            cpu_percent: row.try_get("cpu_percent")?,
            memory_used: u64::try_from(row.try_get::<i64, _>("memory_used")?).unwrap_or(0),
            memory_total: u64::try_from(row.try_get::<i64, _>("memory_total")?).unwrap_or(0),
            gpu_percent: row.try_get("gpu_percent")?,
        },
        evict_at: row.try_get("evict_at")?,
    })
}

fn datastore_from_row(row: &SqliteRow) -> Result<DatastoreRecord, StoreError> {
    Ok(DatastoreRecord {
        name: row.try_get("name")?,
        account_url: row.try_get("account_url")?,
        container: row.try_get("container")?,
        created_at: row.try_get("created_at")?,
    })
}

fn u32_col(row: &SqliteRow, name: &str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(name)?;
    u32::try_from(v).map_err(|e| corrupt(name, e))
}

fn job_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| corrupt("job state", s))
}

/// A job row, without its transitions and attempts.
fn job_from_row(row: &SqliteRow) -> Result<JobRecord, StoreError> {
    let spec: String = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("job spec", e))?,
        state: job_state(&state)?,
        reason: row.try_get("reason")?,
        attempt: u32_col(row, "attempt")?,
        failures: u32_col(row, "failures")?,
        preemptions: u32_col(row, "preemptions")?,
        node_id: row.try_get("node_id")?,
        exit_code: row.try_get("exit_code")?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        transitions: Vec::new(),
        attempts: Vec::new(),
    })
}

/// The cores one cluster holds: its minimum, or the nodes it has if more.
fn allocation(spec: &ClusterSpec, nodes: u32) -> Result<Allocation, StoreError> {
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

async fn load_cluster(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<ClusterRecord, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = ?1"
    )))
    .bind(name)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| StoreError::ClusterNotFound(name.to_owned()))?;
    cluster_from_row(&row)
}

async fn load_node(conn: &mut SqliteConnection, node_id: &str) -> Result<NodeRecord, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE node_id = ?1"
    )))
    .bind(node_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| StoreError::NodeNotFound(node_id.to_owned()))?;
    node_from_row(&row)
}

async fn load_job(conn: &mut SqliteConnection, id: &str) -> Result<JobRecord, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::JobNotFound(id.to_owned()))?;
    let mut job = job_from_row(&row)?;
    let rows = sqlx::query(
        "SELECT at, attempt, state, reason FROM job_transitions WHERE job_id = ?1 ORDER BY rowid",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let state: String = r.try_get("state")?;
        job.transitions.push(TransitionRecord {
            at: r.try_get("at")?,
            attempt: u32_col(r, "attempt")?,
            state: job_state(&state)?,
            reason: r.try_get("reason")?,
        });
    }
    let rows = sqlx::query(
        "SELECT attempt, node_id, started_at, ended_at, reason, exit_code
         FROM job_attempts WHERE job_id = ?1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        job.attempts.push(AttemptRecord {
            attempt: u32_col(r, "attempt")?,
            node_id: r.try_get("node_id")?,
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
            reason: r.try_get("reason")?,
            exit_code: r.try_get("exit_code")?,
            node_ids: Vec::new(),
        });
    }
    let rows = sqlx::query(
        "SELECT attempt, node_id FROM job_ranks WHERE job_id = ?1 ORDER BY attempt, rank",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let attempt = u32_col(r, "attempt")?;
        if let Some(a) = job.attempts.iter_mut().find(|a| a.attempt == attempt) {
            a.node_ids.push(r.try_get("node_id")?);
        }
    }
    Ok(job)
}

/// Moves a job to `state`, recording the transition.
async fn transition(
    conn: &mut SqliteConnection,
    job_id: &str,
    attempt: u32,
    state: JobState,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET state = ?1, reason = ?2, updated_at = ?3 WHERE id = ?4")
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO job_transitions (job_id, at, attempt, state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(job_id)
    .bind(now)
    .bind(i64::from(attempt))
    .bind(state.as_str())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets a node's state (and clears its job when it becomes idle).
async fn set_node_state(
    conn: &mut SqliteConnection,
    node_id: &str,
    state: NodeState,
    run_id: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE nodes SET state = ?1, run_id = ?2, reason = ?3, state_since = ?4,
             idle_since = CASE WHEN ?1 = 'idle' THEN ?4 ELSE idle_since END
         WHERE node_id = ?5",
    )
    .bind(state.as_str())
    .bind(run_id)
    .bind(reason)
    .bind(now)
    .bind(node_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends the current attempt of a job on a node and decides what follows:
/// a final state, or back to the queue as the next attempt.
async fn end_attempt(
    conn: &mut SqliteConnection,
    job: &JobRecord,
    end: AttemptEnd,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    let end = if job.cancel_requested {
        AttemptEnd::Canceled
    } else {
        end
    };
    let exit_code = match end {
        AttemptEnd::Exited(code) => Some(code),
        _ => None,
    };
    let reason = match end {
        AttemptEnd::Canceled => "canceled by user".to_owned(),
        _ => reason.to_owned(),
    };
    sqlx::query(
        "UPDATE job_attempts SET ended_at = ?1, reason = ?2, exit_code = ?3
         WHERE job_id = ?4 AND attempt = ?5 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(&reason)
    .bind(exit_code)
    .bind(&job.id)
    .bind(i64::from(job.attempt))
    .execute(&mut *conn)
    .await?;
    let preempted = end == AttemptEnd::Preempted;
    match job::after_attempt(
        &end,
        job.failures,
        job.spec.max_retries,
        job.preemptions,
        job.spec.max_preemptions,
    ) {
        NextStep::Retry => {
            let next = job.attempt + 1;
            sqlx::query(
                "UPDATE jobs SET attempt = ?1, failures = failures + ?4,
                     preemptions = preemptions + ?5, node_id = NULL, exit_code = ?2 WHERE id = ?3",
            )
            .bind(i64::from(next))
            .bind(exit_code)
            .bind(&job.id)
            .bind(i64::from(!preempted))
            .bind(i64::from(preempted))
            .execute(&mut *conn)
            .await?;
            let why = if preempted {
                transition(
                    conn,
                    &job.id,
                    job.attempt,
                    JobState::Preempted,
                    &reason,
                    now,
                )
                .await?;
                format!(
                    "attempt {} was preempted ({reason}); re-queued as attempt {next} ({} of {} preemptions; failure retries untouched)",
                    job.attempt,
                    job.preemptions + 1,
                    job.spec.max_preemptions
                )
            } else {
                format!(
                    "attempt {} ended ({reason}); retrying as attempt {next} ({} of {} retries)",
                    job.attempt,
                    job.failures + 1,
                    job.spec.max_retries
                )
            };
            transition(conn, &job.id, next, JobState::Queued, &why, now).await?;
        }
        NextStep::Finish(state) => {
            sqlx::query("UPDATE jobs SET node_id = NULL, exit_code = ?1 WHERE id = ?2")
                .bind(exit_code)
                .bind(&job.id)
                .execute(&mut *conn)
                .await?;
            transition(conn, &job.id, job.attempt, state, &reason, now).await?;
        }
    }
    Ok(())
}

/// Ends, with `end`, every rank still open on a node (its node was lost,
/// removed or evicted); returns the jobs they belonged to.
async fn end_ranks_on(
    conn: &mut SqliteConnection,
    node_id: &str,
    end: AttemptEnd,
    reason: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT job_id, attempt, rank FROM job_ranks WHERE node_id = ?1 AND ended_at IS NULL",
    )
    .bind(node_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in &rows {
        let job_id: String = r.try_get("job_id")?;
        let job = load_job(conn, &job_id).await?;
        let rank = OpenRank {
            attempt: u32_col(r, "attempt")?,
            rank: u32_col(r, "rank")?,
            node_id,
        };
        end_rank(conn, &job, &rank, end.clone(), reason, now).await?;
        jobs.push(job_id);
    }
    Ok(jobs)
}

/// A rank of an attempt whose container has not been seen to stop.
struct OpenRank<'a> {
    attempt: u32,
    rank: u32,
    node_id: &'a str,
}

/// Records that a rank's container stopped, applies the gang rule
/// (`job::after_rank`) while its attempt is current, and frees its node.
async fn end_rank(
    conn: &mut SqliteConnection,
    job: &JobRecord,
    open: &OpenRank<'_>,
    end: AttemptEnd,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    let node = load_node(conn, open.node_id).await?;
    let end = job::end_on_node(end, node.state == NodeState::Preempted);
    let exit_code = match end {
        AttemptEnd::Exited(code) => Some(code),
        _ => None,
    };
    sqlx::query(
        "UPDATE job_ranks SET ended_at = ?1, exit_code = ?2, reason = ?3
         WHERE job_id = ?4 AND attempt = ?5 AND rank = ?6 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(exit_code)
    .bind(reason)
    .bind(&job.id)
    .bind(i64::from(open.attempt))
    .bind(i64::from(open.rank))
    .execute(&mut *conn)
    .await?;
    if job.attempt == open.attempt && job.state.on_node() {
        let not_done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM job_ranks WHERE job_id = ?1 AND attempt = ?2 AND rank != ?3
               AND (ended_at IS NULL OR exit_code IS NULL OR exit_code != 0)",
        )
        .bind(&job.id)
        .bind(i64::from(open.attempt))
        .bind(i64::from(open.rank))
        .fetch_one(&mut *conn)
        .await?;
        let step = job::after_rank(
            job.spec.distribution,
            job.spec.node_count,
            open.rank,
            open.node_id,
            end,
            reason,
            not_done == 0,
        );
        if let GangStep::End(end, why) = step {
            end_attempt(conn, job, end, &why, now).await?;
        }
    }
    if matches!(node.state, NodeState::Preparing | NodeState::Running)
        && node.run_id.as_deref() == Some(job.id.as_str())
    {
        set_node_state(conn, open.node_id, NodeState::Idle, None, "", now).await?;
    }
    Ok(())
}

impl Store for SqliteStore {
    async fn create_cluster(
        &self,
        spec: ClusterSpec,
        identities: Vec<Identity>,
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
            "INSERT INTO clusters (name, location, spec, created_at, updated_at, scale_changed_at,
                 allocation_since, identities)
             VALUES (?1, ?2, ?3, ?4, ?4, ?4, ?4, ?5)",
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

    async fn get_cluster(&self, name: &str) -> Result<ClusterRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_cluster(&mut conn, name).await
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY name"
        )))
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
        let current = load_cluster(&mut tx, name).await?;
        let next = update(&current.spec)?;
        if next == current.spec {
            return Ok(current);
        }
        if next.max_nodes < current.spec.max_nodes {
            // A gang that no longer fits would hold back the whole queue.
            let widest: Option<(String, i64)> = sqlx::query_as(
                "SELECT id, COALESCE(json_extract(spec, '$.node_count'), 1) AS n FROM jobs
                 WHERE cluster = ?1 AND state IN ('queued', 'preparing', 'running')
                 ORDER BY n DESC LIMIT 1",
            )
            .bind(&current.spec.name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((job, n)) = widest
                && n > i64::from(next.max_nodes)
            {
                return Err(StoreError::Conflict(format!(
                    "max_nodes: job {job} needs {n} nodes at once; cancel it or keep max_nodes at {n} or more"
                )));
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
        sqlx::query("UPDATE clusters SET spec = ?1, updated_at = ?2 WHERE name = ?3")
            .bind(encode_spec(&next)?)
            .bind(now)
            .bind(&current.spec.name)
            .execute(&mut *tx)
            .await?;
        let record = load_cluster(&mut tx, &current.spec.name).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn update_identities(
        &self,
        name: &str,
        update: IdentityUpdate,
        now: i64,
    ) -> Result<ClusterRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = load_cluster(&mut tx, name).await?;
        let (identity, identities) = update(&current.spec, &current.identities)?;
        let mut spec = current.spec.clone();
        spec.identity = identity;
        sqlx::query(
            "UPDATE clusters SET spec = ?1, identities = ?2, updated_at = ?3 WHERE name = ?4",
        )
        .bind(encode_spec(&spec)?)
        .bind(serde_json::to_string(&identities).map_err(|e| corrupt("identities", e))?)
        .bind(now)
        .bind(&current.spec.name)
        .execute(&mut *tx)
        .await?;
        let record = load_cluster(&mut tx, &current.spec.name).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_cluster(&self, name: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let cluster = load_cluster(&mut tx, name).await?.spec.name;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE cluster = ?1 AND state IN ('queued', 'preparing', 'running', 'preempted')",
        )
        .bind(&cluster)
        .fetch_one(&mut *tx)
        .await?;
        if active > 0 {
            return Err(StoreError::Conflict(format!(
                "cluster {cluster} has {active} unfinished jobs; cancel them (`strato job cancel`) or wait for them first"
            )));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE cluster = ?1"
        )))
        .bind(&cluster)
        .fetch_all(&mut *tx)
        .await?;
        let nodes = rows
            .iter()
            .map(node_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM clusters WHERE name = ?1")
            .bind(&cluster)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(nodes)
    }

    async fn set_allocation(
        &self,
        cluster: &str,
        state: AllocationState,
        target_nodes: u32,
        errors: Vec<ClusterIssue>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let current = match load_cluster(&mut tx, cluster).await {
            Ok(c) => c,
            Err(StoreError::ClusterNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        // An issue that persists keeps its first `since`.
        let errors: Vec<ClusterIssue> = errors
            .into_iter()
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
            return Ok(());
        }
        let since = if current.allocation_state == state {
            current.allocation_since
        } else {
            now
        };
        sqlx::query(
            "UPDATE clusters SET allocation_state = ?1, allocation_since = ?2, errors = ?3,
                 target_nodes = ?5 WHERE name = ?4",
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

    async fn list_nodes(&self, cluster: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // Distinguish "no such cluster" from "no nodes".
        let cluster = load_cluster(&mut conn, cluster).await?.spec.name;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE cluster = ?1 ORDER BY created_at, node_id"
        )))
        .bind(&cluster)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(node_from_row).collect()
    }

    async fn all_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY created_at, node_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(node_from_row).collect()
    }

    async fn create_node(
        &self,
        cluster: &str,
        node_id: &str,
        join_token_hash: &str,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<NodeRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let spec = load_cluster(&mut tx, cluster).await?.spec;
        let nodes = node_count(&mut tx, &spec.name).await?;
        let others = QuotaUsage::from_allocations(
            &allocations(&mut tx, &spec.location, Some(&spec.name)).await?,
        );
        quota::check(
            &spec.location,
            limits.region(&spec.location),
            &others,
            &allocation(&spec, nodes + 1)?,
            false,
        )?;
        sqlx::query(
            "INSERT INTO nodes (node_id, cluster, state, reason, state_since, created_at, idle_since, join_token_hash)
             VALUES (?1, ?2, 'preparing', 'starting: waiting for the agent to enrol', ?3, ?3, ?3, ?4)",
        )
        .bind(node_id)
        .bind(&spec.name)
        .bind(now)
        .bind(join_token_hash)
        .execute(&mut *tx)
        .await?;
        let node = load_node(&mut tx, node_id).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn set_node_pid(&self, node_id: &str, pid: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET pid = ?1 WHERE node_id = ?2")
            .bind(i64::from(pid))
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn enroll(
        &self,
        join_token_hash: &str,
        session_token_hash: &str,
        report: &EnrollReport,
        now: i64,
    ) -> Result<NodeRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let node_id: String =
            sqlx::query_scalar("SELECT node_id FROM nodes WHERE join_token_hash = ?1")
                .bind(join_token_hash)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::BadToken)?;
        let node = load_node(&mut tx, &node_id).await?;
        if matches!(node.state, NodeState::Unusable | NodeState::Leaving) {
            return Err(StoreError::Conflict(format!(
                "node {node_id} is {} ({}); it will be removed",
                node.state.as_str(),
                node.reason
            )));
        }
        sqlx::query(
            "UPDATE nodes SET session_token_hash = ?1, hostname = ?2,
                 last_heartbeat = COALESCE(last_heartbeat, ?3), metrics_url = ?5, gpus = ?6,
                 gpu_info = ?7
             WHERE node_id = ?4",
        )
        .bind(session_token_hash)
        .bind(&report.hostname)
        .bind(now)
        .bind(&node_id)
        .bind(&report.metrics_url)
        .bind(i64::from(report.gpus))
        .bind(serde_json::to_string(&report.gpu_info).map_err(|e| corrupt("node gpu_info", e))?)
        .execute(&mut *tx)
        .await?;
        if !node.enrolled && node.state == NodeState::Preparing && node.run_id.is_none() {
            set_node_state(&mut tx, &node_id, NodeState::Idle, None, "", now).await?;
        }
        let node = load_node(&mut tx, &node_id).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn node_by_session(&self, session_token_hash: &str) -> Result<NodeRecord, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE session_token_hash = ?1"
        )))
        .bind(session_token_hash)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::BadToken)?;
        node_from_row(&row)
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        usage: Option<NodeUsage>,
        now: i64,
    ) -> Result<(), StoreError> {
        match usage {
            None => {
                sqlx::query("UPDATE nodes SET last_heartbeat = ?1 WHERE node_id = ?2")
                    .bind(now)
                    .bind(node_id)
                    .execute(&self.pool)
                    .await?;
            }
            Some(u) => {
                sqlx::query(
                    "UPDATE nodes SET last_heartbeat = ?1, cpu_percent = ?2, memory_used = ?3,
                         memory_total = ?4, gpu_percent = ?5 WHERE node_id = ?6",
                )
                .bind(now)
                .bind(u.cpu_percent)
                .bind(i64::try_from(u.memory_used).unwrap_or(i64::MAX))
                .bind(i64::try_from(u.memory_total).unwrap_or(i64::MAX))
                .bind(u.gpu_percent)
                .bind(node_id)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn node_unusable(
        &self,
        node_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        load_node(&mut tx, node_id).await?;
        let jobs = end_ranks_on(
            &mut tx,
            node_id,
            AttemptEnd::NodeLost,
            &format!("node {node_id} lost: {reason}"),
            now,
        )
        .await?;
        set_node_state(&mut tx, node_id, NodeState::Unusable, None, reason, now).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    async fn node_preempted(
        &self,
        node_id: &str,
        evict_at: i64,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let node = load_node(&mut tx, node_id).await?;
        if node.state == NodeState::Preempted {
            return Ok(());
        }
        set_node_state(
            &mut tx,
            node_id,
            NodeState::Preempted,
            node.run_id.as_deref(),
            reason,
            now,
        )
        .await?;
        sqlx::query("UPDATE nodes SET evict_at = ?1 WHERE node_id = ?2")
            .bind(evict_at)
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_node(&self, node_id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        match load_node(&mut tx, node_id).await {
            Ok(n) if n.state == NodeState::Preempted => {
                let why = format!("node {node_id} was evicted");
                end_ranks_on(&mut tx, node_id, AttemptEnd::Preempted, &why, now).await?;
            }
            _ => {
                let why = format!("node {node_id} was removed");
                end_ranks_on(&mut tx, node_id, AttemptEnd::NodeLost, &why, now).await?;
            }
        }
        sqlx::query("DELETE FROM nodes WHERE node_id = ?1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn usage_of_others(
        &self,
        location: &str,
        cluster: &str,
    ) -> Result<QuotaUsage, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(QuotaUsage::from_allocations(
            &allocations(&mut conn, location, Some(cluster)).await?,
        ))
    }

    async fn set_queued_reason(&self, cluster: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET reason = ?1 WHERE cluster = ?2 AND state = 'queued' AND reason <> ?1",
        )
        .bind(reason)
        .bind(cluster)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn usage(&self, location: &str) -> Result<QuotaUsage, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(QuotaUsage::from_allocations(
            &allocations(&mut conn, location, None).await?,
        ))
    }

    async fn submit_job(
        &self,
        id: &str,
        mut spec: JobSpec,
        now: i64,
    ) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        spec.cluster = load_cluster(&mut tx, &spec.cluster).await?.spec.name;
        sqlx::query(
            "INSERT INTO jobs (id, cluster, spec, state, attempt, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'queued', 1, ?4, ?4)",
        )
        .bind(id)
        .bind(&spec.cluster)
        .bind(serde_json::to_string(&spec).map_err(|e| corrupt("job spec", e))?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        transition(&mut tx, id, 1, JobState::Queued, "submitted", now).await?;
        let job = load_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn get_job(&self, id: &str) -> Result<JobRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_job(&mut conn, id).await
    }

    async fn list_jobs(&self, cluster: Option<&str>) -> Result<Vec<JobRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE ?1 IS NULL OR cluster = ?1 COLLATE NOCASE
             ORDER BY created_at DESC, rowid DESC",
        )
        .bind(cluster)
        .fetch_all(&mut *conn)
        .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(load_job(&mut conn, &id).await?);
        }
        Ok(jobs)
    }

    async fn job_counts(&self) -> Result<Vec<(String, JobState, u64)>, StoreError> {
        let rows =
            sqlx::query("SELECT cluster, state, COUNT(*) AS n FROM jobs GROUP BY cluster, state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let n: i64 = r.try_get("n")?;
                Ok((
                    r.try_get("cluster")?,
                    job_state(&state)?,
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn queued_jobs(&self, cluster: &str) -> Result<Vec<QueuedJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, COALESCE(json_extract(spec, '$.node_count'), 1) AS node_count
             FROM jobs WHERE cluster = ?1 AND state = 'queued' ORDER BY created_at, rowid",
        )
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedJob {
                    id: r.try_get("id")?,
                    node_count: u32_col(r, "node_count")?.max(1),
                })
            })
            .collect()
    }

    async fn cancel_job(&self, id: &str, now: i64) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let job = load_job(&mut tx, id).await?;
        if job.state == JobState::Queued || job.state == JobState::Preempted {
            transition(
                &mut tx,
                id,
                job.attempt,
                JobState::Canceled,
                "canceled by user before it started",
                now,
            )
            .await?;
        } else if job.state.on_node() && !job.cancel_requested {
            sqlx::query("UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE id = ?2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let job = load_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn ranks_to_stop(&self) -> Result<Vec<RankToStop>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.job_id, r.attempt, r.node_id FROM job_ranks r JOIN jobs j ON j.id = r.job_id
             WHERE r.ended_at IS NULL
               AND (j.attempt != r.attempt OR j.state NOT IN ('preparing', 'running')
                    OR j.cancel_requested = 1)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RankToStop {
                    job_id: r.try_get("job_id")?,
                    attempt: u32_col(r, "attempt")?,
                    node_id: r.try_get("node_id")?,
                })
            })
            .collect()
    }

    async fn assign_job(
        &self,
        job_id: &str,
        node_ids: &[String],
        now: i64,
    ) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let job = load_job(&mut tx, job_id).await?;
        if job.state != JobState::Queued {
            return Err(StoreError::Conflict(format!(
                "job {job_id} is {}, not queued",
                job.state.as_str()
            )));
        }
        let wanted = usize::try_from(job.spec.node_count.max(1)).unwrap_or(usize::MAX);
        if node_ids.len() != wanted {
            return Err(StoreError::Conflict(format!(
                "job {job_id} needs {wanted} nodes, not {}",
                node_ids.len()
            )));
        }
        for node_id in node_ids {
            let node = load_node(&mut tx, node_id).await?;
            if node.state != NodeState::Idle || node.run_id.is_some() {
                return Err(StoreError::Conflict(format!(
                    "node {node_id} is {}, not idle",
                    node.state.as_str()
                )));
            }
        }
        let Some(first) = node_ids.first() else {
            return Err(StoreError::Conflict(format!("job {job_id} got no node")));
        };
        sqlx::query("UPDATE jobs SET node_id = ?1 WHERE id = ?2")
            .bind(first)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO job_attempts (job_id, attempt, node_id, started_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(job_id)
        .bind(i64::from(job.attempt))
        .bind(first)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (rank, node_id) in node_ids.iter().enumerate() {
            sqlx::query(
                "INSERT INTO job_ranks (job_id, attempt, rank, node_id) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(job_id)
            .bind(i64::from(job.attempt))
            .bind(i64::try_from(rank).unwrap_or(i64::MAX))
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
            set_node_state(
                &mut tx,
                node_id,
                NodeState::Preparing,
                Some(job_id),
                "preparing a job",
                now,
            )
            .await?;
        }
        let placed = if node_ids.len() == 1 {
            format!("attempt {} placed on node {first}", job.attempt)
        } else {
            format!(
                "attempt {} placed on {} nodes: {}",
                job.attempt,
                node_ids.len(),
                node_ids.join(", ")
            )
        };
        transition(
            &mut tx,
            job_id,
            job.attempt,
            JobState::Preparing,
            &placed,
            now,
        )
        .await?;
        let job = load_job(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn gang(&self, job_id: &str, attempt: u32) -> Result<Vec<GangRank>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.rank, r.node_id FROM job_ranks r JOIN jobs j ON j.id = r.job_id
             WHERE r.job_id = ?1 AND r.attempt = ?2 AND j.attempt = ?2
               AND j.state IN ('preparing', 'running') AND j.cancel_requested = 0
               AND r.ended_at IS NULL
             ORDER BY r.rank",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GangRank {
                    rank: u32_col(r, "rank")?,
                    node_id: r.try_get("node_id")?,
                })
            })
            .collect()
    }

    async fn report_attempt(
        &self,
        node_id: &str,
        job_id: &str,
        attempt: u32,
        report: AttemptReport,
        now: i64,
    ) -> Result<ReportOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let job = match load_job(&mut tx, job_id).await {
            Ok(j) => j,
            Err(StoreError::JobNotFound(_)) => return Ok(ReportOutcome::Stale),
            Err(e) => return Err(e),
        };
        let row = sqlx::query(
            "SELECT rank, ended_at FROM job_ranks WHERE job_id = ?1 AND attempt = ?2 AND node_id = ?3",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Not an attempt this node was given.
            return Ok(ReportOutcome::Stale);
        };
        let ended_at: Option<i64> = row.try_get("ended_at")?;
        if ended_at.is_some() {
            // Its end is stored already: the agent may remove the container.
            return Ok(ReportOutcome::Release);
        }
        let open = OpenRank {
            attempt,
            rank: u32_col(&row, "rank")?,
            node_id,
        };
        let current = job.attempt == attempt && job.state.on_node();
        let outcome = match report {
            AttemptReport::Running if !current => {
                // Its attempt ended (the gang ended as a whole, or the job was
                // canceled): the container is stopped through ranks_to_stop,
                // and its end reported then.
                ReportOutcome::Recorded
            }
            AttemptReport::Running => {
                sqlx::query(
                    "UPDATE job_ranks SET started = 1 WHERE job_id = ?1 AND attempt = ?2 AND rank = ?3",
                )
                .bind(job_id)
                .bind(i64::from(attempt))
                .bind(i64::from(open.rank))
                .execute(&mut *tx)
                .await?;
                let node = load_node(&mut tx, node_id).await?;
                if node.state == NodeState::Preparing {
                    set_node_state(&mut tx, node_id, NodeState::Running, Some(job_id), "", now)
                        .await?;
                }
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM job_ranks WHERE job_id = ?1 AND attempt = ?2 AND started = 0",
                )
                .bind(job_id)
                .bind(i64::from(attempt))
                .fetch_one(&mut *tx)
                .await?;
                if job.state == JobState::Preparing && waiting == 0 {
                    let nodes = job
                        .attempts
                        .iter()
                        .find(|a| a.attempt == attempt)
                        .map(|a| a.node_ids.clone())
                        .unwrap_or_default();
                    let started = if nodes.len() > 1 {
                        format!("attempt {attempt} started on {} nodes", nodes.len())
                    } else {
                        format!("attempt {attempt} started on node {node_id}")
                    };
                    transition(&mut tx, job_id, attempt, JobState::Running, &started, now).await?;
                }
                ReportOutcome::Recorded
            }
            AttemptReport::Ended(end, reason) => {
                end_rank(&mut tx, &job, &open, end, &reason, now).await?;
                ReportOutcome::Release
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn append_logs(
        &self,
        node_id: &str,
        job_id: &str,
        attempt: u32,
        lines: &[LogRecord],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE nodes SET last_heartbeat = ?1 WHERE node_id = ?2")
            .bind(now)
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        let rank: Option<i64> = sqlx::query_scalar(
            "SELECT rank FROM job_ranks WHERE job_id = ?1 AND attempt = ?2 AND node_id = ?3",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(rank) = rank else {
            tx.commit().await?;
            return Err(StoreError::Conflict(format!(
                "node {node_id} sent output of attempt {attempt} of job {job_id}, which it does not run"
            )));
        };
        for l in lines {
            sqlx::query(
                "INSERT OR IGNORE INTO job_logs (job_id, attempt, rank, seq, stream, line, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(rank)
            .bind(i64::try_from(l.seq).unwrap_or(i64::MAX))
            .bind(i64::from(l.stream))
            .bind(&l.line)
            .bind(l.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn logs(
        &self,
        job_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT pos, attempt, rank, seq, stream, line, at FROM job_logs
             WHERE job_id = ?1 AND pos > ?2 ORDER BY pos LIMIT ?3",
        )
        .bind(job_id)
        .bind(after.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq")?;
                let stream: i64 = r.try_get("stream")?;
                Ok(LogRecord {
                    pos: r.try_get("pos")?,
                    attempt: u32_col(r, "attempt")?,
                    rank: u32_col(r, "rank")?,
                    seq: u64::try_from(seq).unwrap_or(0),
                    stream: u8::try_from(stream).unwrap_or(1),
                    line: r.try_get("line")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    async fn create_datastore(&self, d: DatastoreRecord) -> Result<DatastoreRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let taken: Option<String> =
            sqlx::query_scalar("SELECT name FROM datastores WHERE name = ?1")
                .bind(&d.name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Err(StoreError::DatastoreExists(d.name));
        }
        sqlx::query("INSERT INTO datastores (name, account_url, container, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(&d.name)
            .bind(&d.account_url)
            .bind(&d.container)
            .bind(d.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(d)
    }

    async fn get_datastore(&self, name: &str) -> Result<DatastoreRecord, StoreError> {
        let row = sqlx::query(
            "SELECT name, account_url, container, created_at FROM datastores WHERE name = ?1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::DatastoreNotFound(name.to_owned()))?;
        datastore_from_row(&row)
    }

    async fn list_datastores(&self) -> Result<Vec<DatastoreRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, account_url, container, created_at FROM datastores ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(datastore_from_row).collect()
    }

    async fn delete_datastore(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM datastores WHERE name = ?1")
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
            .create_cluster(spec("cpu", "Standard_D2_v2", 2, 4), Vec::new(), &l, 1)
            .await
            .expect("create");
        assert!(matches!(
            store.create_cluster(spec("CPU", "Standard_D2_v2", 0, 1), Vec::new(), &l, 2).await,
            Err(StoreError::ClusterExists(n)) if n == "cpu"
        ));
        // 2 nodes x 2 vCPUs held; 3 more nodes would make 10 > 8.
        assert!(matches!(
            store
                .create_cluster(spec("big", "Standard_D2_v2", 3, 4), Vec::new(), &l, 3)
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
            .create_cluster(spec("cpu", "Standard_D2_v2", 2, 10), Vec::new(), &l, 1)
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

    /// A gang of two: placed together, a failing rank ends the attempt for
    /// both, the other rank is then to be stopped, and its node is freed
    /// only once its container stopped.
    #[tokio::test]
    async fn a_gang_ends_as_a_whole_and_frees_each_node_when_its_container_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let l = limits(100);
        store
            .create_cluster(spec("mpi", "Standard_D2_v2", 0, 4), Vec::new(), &l, 1)
            .await
            .expect("create");
        let mut nodes = Vec::new();
        for n in ["mpi-n0", "mpi-n1", "mpi-n2"] {
            store
                .create_node("mpi", n, &format!("join-{n}"), &l, 1)
                .await
                .expect("node");
            store
                .enroll(
                    &format!("join-{n}"),
                    &format!("session-{n}"),
                    &EnrollReport::default(),
                    2,
                )
                .await
                .expect("enrol");
            nodes.push(n.to_owned());
        }
        let gang = JobSpec {
            cluster: "mpi".into(),
            display_name: String::new(),
            image: "img".into(),
            command: vec!["true".into()],
            environment: Default::default(),
            cpu: 0.0,
            memory_mb: 0,
            max_retries: 1,
            max_preemptions: 3,
            inputs: Vec::new(),
            outputs: Vec::new(),
            node_count: 2,
            process_count_per_node: 2,
            distribution: strato_core::job::Distribution::Mpi,
        };
        store.submit_job("g", gang, 3).await.expect("submit");
        assert_eq!(
            store.queued_jobs("mpi").await.expect("queue"),
            vec![QueuedJob {
                id: "g".into(),
                node_count: 2
            }]
        );
        // All or nothing.
        assert!(matches!(
            store.assign_job("g", &nodes[..1], 4).await,
            Err(StoreError::Conflict(_))
        ));
        let job = store.assign_job("g", &nodes[..2], 4).await.expect("assign");
        assert_eq!(job.attempts[0].node_ids, nodes[..2].to_vec());
        for n in &nodes[..2] {
            store
                .report_attempt(n, "g", 1, AttemptReport::Running, 5)
                .await
                .expect("running");
        }
        assert_eq!(
            store.get_job("g").await.expect("job").state,
            JobState::Running
        );
        let gang_ranks = store.gang("g", 1).await.expect("gang");
        assert_eq!(gang_ranks.len(), 2);
        // Logs keep their rank; the cursor is the arrival order.
        for (n, line) in [(&nodes[1], "from 1"), (&nodes[0], "from 0")] {
            let record = LogRecord {
                pos: 0,
                attempt: 1,
                rank: 0,
                seq: 0,
                stream: 1,
                line: line.into(),
                at: 6,
            };
            store
                .append_logs(n, "g", 1, &[record], 6)
                .await
                .expect("logs");
        }
        let logs = store.logs("g", None, 10).await.expect("logs");
        assert_eq!(
            logs.iter()
                .map(|l| (l.rank, l.line.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "from 1"), (0, "from 0")]
        );
        assert!(
            store
                .logs("g", Some(logs[0].pos), 10)
                .await
                .expect("after")
                .len()
                == 1
        );

        // Rank 1 fails: the attempt ends (retried), naming the rank and node.
        let outcome = store
            .report_attempt(
                &nodes[1],
                "g",
                1,
                AttemptReport::Ended(AttemptEnd::Exited(137), "exited with code 137".into()),
                7,
            )
            .await
            .expect("report");
        assert_eq!(outcome, ReportOutcome::Release);
        let job = store.get_job("g").await.expect("job");
        assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
        let ended = job.transitions.last().expect("transition");
        assert!(
            ended.reason.contains("rank 1 (node mpi-n1) exited 137"),
            "{}",
            ended.reason
        );
        // Rank 0 still runs: it must be stopped, and its node stays busy.
        assert_eq!(
            store.ranks_to_stop().await.expect("stop"),
            vec![RankToStop {
                job_id: "g".into(),
                attempt: 1,
                node_id: nodes[0].clone()
            }]
        );
        let busy = |store: &SqliteStore, n: &str| {
            let n = n.to_owned();
            let store = store.clone();
            async move {
                store
                    .list_nodes("mpi")
                    .await
                    .expect("nodes")
                    .into_iter()
                    .find(|x| x.node_id == n)
                    .expect("node")
                    .run_id
                    .is_some()
            }
        };
        assert!(busy(&store, &nodes[0]).await && !busy(&store, &nodes[1]).await);
        // Its container stopped: released, node free, nothing left to stop.
        let outcome = store
            .report_attempt(
                &nodes[0],
                "g",
                1,
                AttemptReport::Ended(AttemptEnd::Exited(143), "exited with code 143".into()),
                8,
            )
            .await
            .expect("report");
        assert_eq!(outcome, ReportOutcome::Release);
        assert!(!busy(&store, &nodes[0]).await);
        assert!(store.ranks_to_stop().await.expect("stop").is_empty());
        let counts = store.job_counts().await.expect("counts");
        assert_eq!(counts, vec![("mpi".to_owned(), JobState::Queued, 1)]);
        // max_nodes cannot drop below a waiting gang: it would block the queue.
        let shrink: SpecUpdate = Box::new(|s: &ClusterSpec| {
            let mut next = s.clone();
            next.max_nodes = 1;
            Ok(next)
        });
        match store.update_cluster("mpi", shrink, &l, 9).await {
            Err(StoreError::Conflict(m)) => assert!(m.contains("job g needs 2 nodes"), "{m}"),
            other => panic!("lowering max_nodes below a gang: {other:?}"),
        }
        // Attempt 2: an eviction notice SIGTERMs rank 1's container; on an
        // evicted node that is a preemption, not a failure.
        let job = store
            .assign_job("g", &nodes[1..3], 10)
            .await
            .expect("assign");
        assert_eq!(job.attempt, 2);
        store
            .node_preempted(&nodes[2], 99_000, "preempted", 11)
            .await
            .expect("preempted");
        store
            .report_attempt(
                &nodes[2],
                "g",
                2,
                AttemptReport::Ended(AttemptEnd::Exited(143), "exited with code 143".into()),
                12,
            )
            .await
            .expect("report");
        let job = store.get_job("g").await.expect("job");
        assert_eq!(
            (job.state, job.attempt, job.failures, job.preemptions),
            (JobState::Queued, 3, 1, 1)
        );
    }
}
