//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`, so
//! a commit survives a crash of the process or the machine.
//!
//! One module per entity (`clusters`, `nodes`, `jobs`, `ranks`, `logs`,
//! `datastores`, `usage` for the quota); this one opens the database and
//! hands each `Store` method to its module.

mod access;
mod clusters;
mod datastores;
mod jobs;
mod logs;
mod nodes;
mod ranks;
mod registries;
mod usage;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use strato_core::identity::Identity;
use strato_core::job::{JobSpec, JobState};
use strato_core::node::AllocationState;
use strato_core::quota::{QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

use super::{
    ApiTokenRecord, AttemptReport, ClusterIssue, ClusterRecord, DatastoreRecord, EnrollReport,
    Enrolment, GangRank, IdentityUpdate, JobCursor, JobPage, JobRecord, Join, JoinTokenRecord,
    LogRecord, NodeRecord, NodeUsage, QueuedJob, RankToStop, RegistryRecord, ReportOutcome,
    RoleAssignmentRecord, SpecUpdate, Store, StoreError,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "strato.db";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// How much of an attempt's output on one node is kept.
    log_budget: strato_core::limits::LogBudget,
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
            // What is overwritten or deleted (a password replaced by its
            // hash, a job's environment) leaves no copy in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        seal_admin_passwords(&pool).await?;
        Ok(SqliteStore {
            pool,
            log_budget: strato_core::limits::LogBudget::default(),
        })
    }

    /// Keeps at most `budget` of each attempt's output on each node
    /// (`--max-log-lines-per-attempt`, `--max-log-bytes-per-attempt`).
    pub fn with_log_budget(mut self, budget: strato_core::limits::LogBudget) -> Self {
        self.log_budget = budget;
        self
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

/// Clusters stored before admin passwords were hashed keep theirs in
/// clear: replaced by the SHA-512 crypt hash at the first open, in one
/// transaction.
async fn seal_admin_passwords(pool: &sqlx::SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, spec FROM clusters WHERE json_extract(spec, '$.ssh.admin_password') <> ''",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (name, json) in &rows {
        let mut spec = decode_spec(json)?;
        spec.ssh.seal(&crate::plane::new_salt());
        sqlx::query("UPDATE clusters SET spec = ?1 WHERE name = ?2")
            .bind(encode_spec(&spec)?)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !rows.is_empty() {
        // The WAL still holds the pages with the clear passwords: write
        // them back into the (secure_delete) database and truncate it.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(pool)
            .await?;
        tracing::info!(
            clusters = rows.len(),
            "admin passwords replaced by their hashes"
        );
    }
    Ok(())
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

fn u32_col(row: &SqliteRow, name: &str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(name)?;
    u32::try_from(v).map_err(|e| corrupt(name, e))
}

fn job_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| corrupt("job state", s))
}

/// The `columns` of the row of `table` whose `key` is `value`, if any.
async fn select_one(
    conn: &mut SqliteConnection,
    columns: &str,
    table: &str,
    key: &str,
    value: &str,
) -> Result<Option<SqliteRow>, StoreError> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM {table} WHERE {key} = ?1"
    )))
    .bind(value)
    .fetch_optional(conn)
    .await?)
}

impl Store for SqliteStore {
    async fn create_cluster(
        &self,
        spec: ClusterSpec,
        identities: Vec<Identity>,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<ClusterRecord, StoreError> {
        clusters::create_cluster(self, spec, identities, limits, now).await
    }

    async fn update_identities(
        &self,
        name: &str,
        update: IdentityUpdate,
        now: i64,
    ) -> Result<ClusterRecord, StoreError> {
        clusters::update_identities(self, name, update, now).await
    }

    async fn get_cluster(&self, name: &str) -> Result<ClusterRecord, StoreError> {
        clusters::get_cluster(self, name).await
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        clusters::list_clusters(self).await
    }

    async fn update_cluster(
        &self,
        name: &str,
        update: SpecUpdate,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<ClusterRecord, StoreError> {
        clusters::update_cluster(self, name, update, limits, now).await
    }

    async fn delete_cluster(&self, name: &str) -> Result<Vec<NodeRecord>, StoreError> {
        clusters::delete_cluster(self, name).await
    }

    async fn set_allocation(
        &self,
        cluster: &str,
        state: AllocationState,
        target_nodes: u32,
        errors: Vec<ClusterIssue>,
        now: i64,
    ) -> Result<(), StoreError> {
        clusters::set_allocation(self, cluster, state, target_nodes, errors, now).await
    }

    async fn list_nodes(&self, cluster: &str) -> Result<Vec<NodeRecord>, StoreError> {
        nodes::list_nodes(self, cluster).await
    }

    async fn all_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        nodes::all_nodes(self).await
    }

    async fn create_node(
        &self,
        cluster: &str,
        node_id: &str,
        join_token_hash: &str,
        join_expires_at: i64,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<NodeRecord, StoreError> {
        nodes::create_node(
            self,
            cluster,
            node_id,
            join_token_hash,
            join_expires_at,
            limits,
            now,
        )
        .await
    }

    async fn set_node_pid(&self, node_id: &str, pid: u32) -> Result<(), StoreError> {
        nodes::set_node_pid(self, node_id, pid).await
    }

    async fn enroll(
        &self,
        by: Enrolment<'_>,
        session_token_hash: &str,
        report: &EnrollReport,
        now: i64,
    ) -> Result<NodeRecord, StoreError> {
        nodes::enroll(self, by, session_token_hash, report, now).await
    }

    async fn create_join_token(
        &self,
        cluster: &str,
        token_hash: &str,
        uses: u32,
        expires_at: i64,
        created_by: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        nodes::create_join_token(self, cluster, token_hash, uses, expires_at, created_by, now).await
    }

    async fn list_join_tokens(&self, cluster: &str) -> Result<Vec<JoinTokenRecord>, StoreError> {
        nodes::list_join_tokens(self, cluster).await
    }

    async fn revoke_join_token(&self, cluster: &str, id: &str) -> Result<(), StoreError> {
        nodes::revoke_join_token(self, cluster, id).await
    }

    async fn join(
        &self,
        join: Join<'_>,
        session_token_hash: &str,
        report: &EnrollReport,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<NodeRecord, StoreError> {
        nodes::join(self, join, session_token_hash, report, limits, now).await
    }

    async fn detach_node(
        &self,
        node_id: &str,
        requeue: bool,
        now: i64,
    ) -> Result<(NodeRecord, Vec<(String, u32)>), StoreError> {
        nodes::detach_node(self, node_id, requeue, now).await
    }

    async fn power_step(
        &self,
        node_id: &str,
        step: strato_core::lifecycle::PowerStep,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        nodes::power_step(self, node_id, step, reason, now).await
    }

    async fn node_by_session(&self, session_token_hash: &str) -> Result<NodeRecord, StoreError> {
        nodes::node_by_session(self, session_token_hash).await
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        usage: Option<NodeUsage>,
        now: i64,
    ) -> Result<(), StoreError> {
        nodes::heartbeat(self, node_id, usage, now).await
    }

    async fn node_unusable(
        &self,
        node_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        nodes::node_unusable(self, node_id, reason, now).await
    }

    async fn node_preempted(
        &self,
        node_id: &str,
        evict_at: i64,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        nodes::node_preempted(self, node_id, evict_at, reason, now).await
    }

    async fn delete_node(&self, node_id: &str, now: i64) -> Result<(), StoreError> {
        nodes::delete_node(self, node_id, now).await
    }

    async fn usage_of_others(
        &self,
        location: &str,
        cluster: &str,
    ) -> Result<QuotaUsage, StoreError> {
        usage::usage_of_others(self, location, cluster).await
    }

    async fn set_queued_reason(&self, cluster: &str, reason: &str) -> Result<(), StoreError> {
        jobs::set_queued_reason(self, cluster, reason).await
    }

    async fn usage(&self, location: &str) -> Result<QuotaUsage, StoreError> {
        usage::usage(self, location).await
    }

    async fn submit_job(
        &self,
        id: &str,
        spec: JobSpec,
        submitted_by: &str,
        now: i64,
    ) -> Result<JobRecord, StoreError> {
        jobs::submit_job(self, id, spec, submitted_by, now).await
    }

    async fn get_job(&self, id: &str) -> Result<JobRecord, StoreError> {
        jobs::get_job(self, id).await
    }

    async fn list_jobs(
        &self,
        cluster: Option<&str>,
        page: JobPage,
    ) -> Result<(Vec<JobRecord>, Option<JobCursor>), StoreError> {
        jobs::list_jobs(self, cluster, page).await
    }

    async fn job_counts(&self) -> Result<Vec<(String, JobState, u64)>, StoreError> {
        jobs::job_counts(self).await
    }

    async fn queued_jobs(&self, cluster: &str) -> Result<Vec<QueuedJob>, StoreError> {
        jobs::queued_jobs(self, cluster).await
    }

    async fn delete_job(&self, id: &str) -> Result<(), StoreError> {
        jobs::delete_job(self, id).await
    }

    async fn delete_jobs_ended_before(&self, cutoff: i64, limit: u32) -> Result<u64, StoreError> {
        jobs::delete_jobs_ended_before(self, cutoff, limit).await
    }

    async fn cancel_job(&self, id: &str, now: i64) -> Result<JobRecord, StoreError> {
        jobs::cancel_job(self, id, now).await
    }

    async fn cancel_timed_out(&self, now: i64) -> Result<Vec<JobRecord>, StoreError> {
        jobs::cancel_timed_out(self, now).await
    }

    async fn ranks_to_stop(&self) -> Result<Vec<RankToStop>, StoreError> {
        ranks::ranks_to_stop(self).await
    }

    async fn assign_job(
        &self,
        job_id: &str,
        node_ids: &[String],
        now: i64,
    ) -> Result<JobRecord, StoreError> {
        jobs::assign_job(self, job_id, node_ids, now).await
    }

    async fn gang(&self, job_id: &str, attempt: u32) -> Result<Vec<GangRank>, StoreError> {
        ranks::gang(self, job_id, attempt).await
    }

    async fn report_attempt(
        &self,
        node_id: &str,
        job_id: &str,
        attempt: u32,
        report: AttemptReport,
        now: i64,
    ) -> Result<ReportOutcome, StoreError> {
        jobs::report_attempt(self, node_id, job_id, attempt, report, now).await
    }

    async fn append_logs(
        &self,
        node_id: &str,
        job_id: &str,
        attempt: u32,
        lines: &[LogRecord],
        now: i64,
    ) -> Result<(), StoreError> {
        logs::append_logs(self, node_id, job_id, attempt, lines, now).await
    }

    async fn logs(
        &self,
        job_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>, StoreError> {
        logs::logs(self, job_id, after, limit).await
    }

    async fn create_datastore(&self, d: DatastoreRecord) -> Result<DatastoreRecord, StoreError> {
        datastores::create_datastore(self, d).await
    }

    async fn get_datastore(&self, name: &str) -> Result<DatastoreRecord, StoreError> {
        datastores::get_datastore(self, name).await
    }

    async fn list_datastores(&self) -> Result<Vec<DatastoreRecord>, StoreError> {
        datastores::list_datastores(self).await
    }

    async fn delete_datastore(&self, name: &str) -> Result<(), StoreError> {
        datastores::delete_datastore(self, name).await
    }

    async fn create_registry(&self, r: RegistryRecord) -> Result<RegistryRecord, StoreError> {
        registries::create_registry(self, r).await
    }

    async fn get_registry(&self, name: &str) -> Result<RegistryRecord, StoreError> {
        registries::get_registry(self, name).await
    }

    async fn registry_for_server(
        &self,
        server: &str,
    ) -> Result<Option<RegistryRecord>, StoreError> {
        registries::registry_for_server(self, server).await
    }

    async fn list_registries(&self) -> Result<Vec<RegistryRecord>, StoreError> {
        registries::list_registries(self).await
    }

    async fn delete_registry(&self, name: &str) -> Result<(), StoreError> {
        registries::delete_registry(self, name).await
    }

    async fn create_api_token(
        &self,
        token: ApiTokenRecord,
        replace: bool,
    ) -> Result<ApiTokenRecord, StoreError> {
        access::create_api_token(self, token, replace).await
    }

    async fn api_token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        access::api_token_by_hash(self, secret_hash).await
    }

    async fn api_token(&self, name: &str) -> Result<ApiTokenRecord, StoreError> {
        access::api_token(self, name).await
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        access::list_api_tokens(self).await
    }

    async fn revoke_api_token(&self, name: &str, now: i64) -> Result<ApiTokenRecord, StoreError> {
        access::revoke_api_token(self, name, now).await
    }

    async fn create_role_assignment(
        &self,
        assignment: RoleAssignmentRecord,
    ) -> Result<RoleAssignmentRecord, StoreError> {
        access::create_role_assignment(self, assignment).await
    }

    async fn list_role_assignments(
        &self,
        principal: Option<&str>,
    ) -> Result<Vec<RoleAssignmentRecord>, StoreError> {
        access::list_role_assignments(self, principal).await
    }

    async fn delete_role_assignment(
        &self,
        principal: &str,
        grant: &strato_core::access::Grant,
    ) -> Result<(), StoreError> {
        access::delete_role_assignment(self, principal, grant).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
