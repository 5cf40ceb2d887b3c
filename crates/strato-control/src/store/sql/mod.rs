//! The SQL store, on one of two databases through sqlx's `Any` driver:
//!
//! - **SQLite** (the embedded default): one file in WAL mode,
//!   `synchronous = FULL`, so a commit survives a crash of the process or
//!   the machine. A write transaction holds SQLite's write lock from its
//!   first statement (`BEGIN IMMEDIATE`); this process's writers take
//!   turns for it (`WriteTx`), first come first served.
//! - **PostgreSQL** (`--database-url postgres://...`): a write transaction
//!   first takes one transaction-scoped advisory lock, so writes are
//!   serialized as on SQLite, across every process on the database, and
//!   what a transaction read cannot change before it commits.
//!
//! The SQL is written once, in what both understand (`$N` parameters,
//! integers as `BIGINT`, flags as 0/1); [`Dialect`] spells the few things
//! that differ. Each database has its own migrations
//! (`migrations/sqlite`, `migrations/postgres`), ending at the same schema.
//!
//! One module per entity (`clusters`, `nodes`, `jobs`, `ranks`, `logs`,
//! `datastores`, `usage` for the quota); this one opens the database and
//! hands each `Store` method to its module.

mod access;
mod clusters;
mod datastores;
mod jobs;
mod lease;
mod logs;
mod nodes;
mod quick;
mod ranks;
mod registries;
mod usage;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_postgres;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor as _, Row};
use strato_core::identity::Identity;
use strato_core::job::{JobSpec, JobState};
use strato_core::node::AllocationState;
use strato_core::quota::{QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

use super::{
    ApiTokenRecord, AttemptReport, ClusterIssue, ClusterRecord, DatastoreRecord, EnrollReport,
    Enrolment, GangRank, IdentityUpdate, JobCursor, JobPage, JobRecord, Join, JoinTokenRecord,
    Lease, LogRecord, NodeLogs, NodeRecord, NodeReport, NodeSession, NodeUsage, QueuedJob,
    RankToStop, RegistryRecord, ReportOutcome, RoleAssignmentRecord, SpecUpdate, Store, StoreError,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "strato.db";

/// The advisory lock every PostgreSQL write transaction takes first: this
/// constant ("stra" in ASCII) with the hash of the schema the tables are in,
/// so that deployments in different schemas of one database do not wait
/// for each other.
const WRITE_LOCK: i32 = 0x7374_7261;

/// A node's last heartbeat as this process received it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Beat {
    pub(super) at: i64,
    /// `None`: a session's first message, which carries no utilisation.
    pub(super) usage: Option<NodeUsage>,
    /// Not written since it changed.
    dirty: bool,
}

/// Heartbeats kept in memory: a node's latest is what every read of it
/// shows, and the database gets them in one transaction per
/// `persist_heartbeats`. Holds one entry per node that beat; a node that is
/// gone is forgotten at the next write.
#[derive(Debug, Default)]
struct Beats(Mutex<HashMap<String, Beat>>);

impl Beats {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Beat>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, node_id: &str, at: i64, usage: Option<NodeUsage>, dirty: bool) {
        let mut beats = self.lock();
        let beat = beats.entry(node_id.to_owned()).or_insert(Beat {
            at,
            usage: None,
            dirty: false,
        });
        beat.at = beat.at.max(at);
        if usage.is_some() {
            beat.usage = usage;
        }
        beat.dirty |= dirty;
    }

    /// Shows each node's latest heartbeat: the later of the stored time and
    /// this one, and the utilisation received (newer than any stored: only
    /// this process writes it, from here).
    fn overlay(&self, nodes: &mut [NodeRecord]) {
        let beats = self.lock();
        for node in nodes {
            if let Some(beat) = beats.get(&node.node_id) {
                node.last_heartbeat = Some(node.last_heartbeat.map_or(beat.at, |t| t.max(beat.at)));
                if let Some(usage) = beat.usage {
                    node.usage = usage;
                }
            }
        }
    }

    /// The heartbeats not written since they changed, now marked written.
    fn take_dirty(&self) -> Vec<(String, Beat)> {
        let mut beats = self.lock();
        beats
            .iter_mut()
            .filter(|(_, b)| b.dirty)
            .map(|(id, b)| {
                b.dirty = false;
                (id.clone(), *b)
            })
            .collect()
    }

    /// Marks `taken` unwritten again (the write failed); the next write
    /// takes each node's latest beat.
    fn mark_dirty(&self, taken: &[(String, Beat)]) {
        let mut beats = self.lock();
        for (id, _) in taken {
            if let Some(b) = beats.get_mut(id) {
                b.dirty = true;
            }
        }
    }

    fn forget(&self, gone: &[String]) {
        if gone.is_empty() {
            return;
        }
        let mut beats = self.lock();
        for id in gone {
            beats.remove(id);
        }
    }
}

/// Which database a [`SqlStore`] speaks to: what differs in their SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The integer at `key` (a top-level field) of the JSON text in
    /// `column`, NULL when absent.
    fn json_int(self, column: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({column}, '$.{key}')"),
            Dialect::Postgres => format!("CAST(({column}::jsonb) ->> '{key}' AS BIGINT)"),
        }
    }

    /// The database's clock now, in milliseconds since the epoch (the
    /// lease is timed by it: one clock for every replica).
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Heartbeats since the last `persist_heartbeats`, in memory.
    beats: Arc<Beats>,
    /// How much of an attempt's output on one node is kept.
    log_budget: strato_core::limits::LogBudget,
    /// The lease every write checks first, for the leader's handle
    /// (`Store::fenced`).
    fence: Option<Arc<Lease>>,
    /// This process's writers take turns (see [`Turn`]).
    turn: Arc<Turn>,
}

/// This process's writers take turns, and take a connection in their
/// turn: from before their `BEGIN` to their commit or rollback. Without
/// it, SQLite's writers poll for the write lock in its busy handler
/// (sleeping up to 100 ms at a time, holding their connection, while
/// readers wait for one); PostgreSQL's would wait in the server for the
/// advisory lock.
///
/// Two lanes: the leader's writes (its reconcile passes, through the
/// fenced handle) and the lease's go [`Lane::First`]; every other write
/// (API calls, agents' reports) waits in arrival order in `in_order`, and
/// only its head waits for the turn itself. So a pass waits for the write
/// under way and at most one other, not for every submit queued before it
/// (a pass writes a few times, so the others still get their turns).
#[derive(Debug, Default)]
struct Turn {
    turn: Arc<tokio::sync::Mutex<()>>,
    in_order: tokio::sync::Mutex<()>,
}

/// Which lane of [`Turn`] a write waits in.
#[derive(Clone, Copy)]
enum Lane {
    First,
    InOrder,
}

impl Turn {
    async fn take(&self, lane: Lane) -> tokio::sync::OwnedMutexGuard<()> {
        match lane {
            Lane::First => self.turn.clone().lock_owned().await,
            Lane::InOrder => {
                let _head = self.in_order.lock().await;
                self.turn.clone().lock_owned().await
            }
        }
    }
}

/// The longest a write waits for this process's turn (as PostgreSQL's
/// `lock_timeout` for its lock) before it fails.
const WRITE_TURN_WAIT: Duration = Duration::from_secs(30);

/// A write transaction holding this process's writing turn: derefs to its
/// connection; committed with [`WriteTx::commit`]. Dropped uncommitted, it
/// is rolled back before the turn passes on (the next writer would find
/// the database's write lock still held).
pub(super) struct WriteTx {
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits; the turn passes on once the commit is done, even if the
    /// caller stops waiting for it.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let (Some(tx), turn) = (self.tx.take(), self.turn.take()) else {
            return Ok(());
        };
        let committed = tokio::spawn(async move {
            let committed = tx.commit().await;
            drop(turn);
            committed
        });
        committed
            .await
            .unwrap_or_else(|e| Err(sqlx::Error::Io(std::io::Error::other(e))))
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let (Some(tx), turn) = (self.tx.take(), self.turn.take()) else {
            return;
        };
        // Always inside the runtime (sqlx's connections need it).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // A connection that never answers holds the turn no longer
                // than a write may wait for it.
                let _ = tokio::time::timeout(WRITE_TURN_WAIT, tx.rollback()).await;
                drop(turn);
            });
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        #[allow(clippy::expect_used)]
        self.tx.as_ref().expect("an open write transaction")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        // Present until `commit` consumes it or `drop` takes it.
        #[allow(clippy::expect_used)]
        self.tx.as_mut().expect("an open write transaction")
    }
}

impl SqlStore {
    /// Opens (creating if needed) the SQLite database `DATA_DIR/strato.db`
    /// and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let path = std::path::absolute(data_dir.join(DB_FILE))
            .map_err(|e| StoreError::Corrupt(format!("database path: {e}")))?;
        let url = format!("sqlite://{}?mode=rwc", percent_encode_path(&path)?);
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // A file on this machine: a connection cannot go stale between
            // uses (the ping would be a round trip on every acquire).
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // What is overwritten or deleted (a password replaced by
                    // its hash, a job's environment) leaves no copy in free
                    // pages (secure_delete).
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; \
                         PRAGMA busy_timeout = 30000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        // One process opens the file: no session or lease of an earlier
        // one lives (a restart after a crash leads at once).
        sqlx::query("UPDATE nodes SET session_replica = NULL")
            .execute(&pool)
            .await?;
        sqlx::query("UPDATE leader_lease SET expires_at = 0")
            .execute(&pool)
            .await?;
        seal_admin_passwords(&pool).await?;
        Ok(SqlStore {
            pool,
            dialect: Dialect::Sqlite,
            beats: Arc::default(),
            turn: Arc::default(),
            log_budget: strato_core::limits::LogBudget::default(),
            fence: None,
        })
    }

    /// Connects to the PostgreSQL database at `url`
    /// (`postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=...`) and
    /// brings its schema up to date.
    pub async fn connect_postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_postgres_as(url, max_connections, None).await
    }

    /// Connects as `connect_postgres` does, as the control-plane replica
    /// `replica` (letters, digits, '-' and '.'): its transactions'
    /// notifications name it, so that it can pass over its own.
    pub async fn connect_postgres_as(
        url: &str,
        max_connections: u32,
        replica: Option<&str>,
    ) -> Result<Self, StoreError> {
        let store = Self::postgres_pool(url, max_connections, replica).await?;
        POSTGRES_MIGRATIONS.run(&store.pool).await?;
        Ok(store)
    }

    async fn postgres_pool(
        url: &str,
        max_connections: u32,
        replica: Option<&str>,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let replica = match replica {
            Some(r)
                if r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
            {
                format!("SET strato.replica = '{r}';")
            }
            Some(r) => return Err(StoreError::Corrupt(format!("replica name {r:?}"))),
            None => String::new(),
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                // A process stopped inside a write transaction (frozen,
                // partitioned) would hold the write lock for good: the
                // server ends its session after 15 s, and a write that
                // waits 30 s for the lock fails instead of hanging. A peer
                // gone silent is noticed by keepalives.
                let setup = format!(
                    "{replica} SET idle_in_transaction_session_timeout = '15s'; \
                     SET lock_timeout = '30s'; \
                     SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                     SET tcp_keepalives_count = 3;"
                );
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(setup)).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(SqlStore {
            pool,
            dialect: Dialect::Postgres,
            beats: Arc::default(),
            turn: Arc::default(),
            log_budget: strato_core::limits::LogBudget::default(),
            fence: None,
        })
    }

    /// Which database this store speaks to.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Keeps at most `budget` of each attempt's output on each node
    /// (`--max-log-lines-per-attempt`, `--max-log-bytes-per-attempt`).
    pub fn with_log_budget(mut self, budget: strato_core::limits::LogBudget) -> Self {
        self.log_budget = budget;
        self
    }

    /// Closes every connection (on SQLite, checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a write transaction: what it reads cannot change before it
    /// commits, and no other write runs meanwhile. The leader's (fenced)
    /// writes go first.
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let lane = match self.fence {
            Some(_) => Lane::First,
            None => Lane::InOrder,
        };
        let mut tx = self.begin_write_unfenced(lane).await?;
        if let Some(lease) = &self.fence {
            // Under the write lock: a replica taking the lease over writes
            // under it too, so this check holds until the commit.
            self.lease_holds(&mut tx, lease).await?;
        }
        Ok(tx)
    }

    /// `Ok` while `lease` holds by the database's clock, else `Fenced`.
    async fn lease_holds(&self, conn: &mut AnyConnection, lease: &Lease) -> Result<(), StoreError> {
        let held: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM leader_lease
             WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > {}",
            self.dialect.now_ms()
        )))
        .bind(&lease.holder)
        .bind(lease.epoch)
        .fetch_one(conn)
        .await?;
        if held == 0 {
            return Err(StoreError::Fenced(lease.epoch));
        }
        Ok(())
    }

    /// Begins a write transaction that no lease fences (the lease's own),
    /// in `lane`.
    ///
    /// The turn comes first, then a connection: writers waiting for their
    /// turn hold none, so readers find one free however many writers
    /// queue. (No caller holds a connection of the pool while it begins a
    /// write: the turn's holder could wait for it.)
    async fn begin_write_unfenced(&self, lane: Lane) -> Result<WriteTx, StoreError> {
        let turn = tokio::time::timeout(WRITE_TURN_WAIT, self.turn.take(lane))
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "waited {} s for this process's turn to write",
                        WRITE_TURN_WAIT.as_secs()
                    ),
                ))
            })?;
        let connection = self.pool.acquire().await?;
        let begin = match self.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            // READ COMMITTED whatever the database's default: statements
            // after the lock must see what the writer before committed.
            Dialect::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
        };
        // How `Pool::begin_with` begins, on a connection taken in the turn
        // (sqlx's own entry point, hidden from its docs: sqlx is pinned by
        // Cargo.lock).
        let tx = sqlx::Transaction::begin(
            sqlx::pool::MaybePoolConnection::PoolConnection(connection),
            Some(sqlx::SqlSafeStr::into_sql_str(begin)),
        )
        .await?;
        let mut tx = WriteTx {
            tx: Some(tx),
            turn: Some(turn),
        };
        if self.dialect == Dialect::Postgres {
            // Across processes on the database.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

/// Clusters stored before admin passwords were hashed keep theirs in
/// clear: replaced by the SHA-512 crypt hash at the first open, in one
/// transaction.
async fn seal_admin_passwords(pool: &AnyPool) -> Result<(), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, spec FROM clusters WHERE json_extract(spec, '$.ssh.admin_password') <> ''",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (name, json) in &rows {
        let mut spec = decode_spec(json)?;
        spec.ssh.seal(&crate::plane::new_salt());
        sqlx::query("UPDATE clusters SET spec = $1 WHERE name = $2")
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

/// `path` as the path of a `sqlite://` URL: every byte but unreserved
/// ones and `/` percent-encoded (sqlx decodes them).
fn percent_encode_path(path: &Path) -> Result<String, StoreError> {
    let text = path.to_str().ok_or_else(|| {
        StoreError::Corrupt(format!("database path {} is not UTF-8", path.display()))
    })?;
    Ok(text
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect())
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

fn u32_col(row: &AnyRow, name: &str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(name)?;
    u32::try_from(v).map_err(|e| corrupt(name, e))
}

/// A 0/1 flag column (or a boolean expression: PostgreSQL answers those
/// as booleans, SQLite as integers).
fn flag_col(row: &AnyRow, name: &str) -> Result<bool, StoreError> {
    match row.try_get::<i64, _>(name) {
        Ok(v) => Ok(v != 0),
        Err(_) => Ok(row.try_get::<bool, _>(name)?),
    }
}

fn job_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| corrupt("job state", s))
}

/// The `columns` of the row of `table` whose `key` is `value`, if any.
/// How many rows of `table` (jobs or nodes) each cluster has in each
/// state, the state read by `state`; `/metrics` counts with it.
async fn counts_by_state<T>(
    db: &SqlStore,
    table: &str,
    state: impl Fn(&str) -> Result<T, StoreError>,
) -> Result<Vec<(String, T, u64)>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT cluster, state, COUNT(*) AS n FROM {table} GROUP BY cluster, state"
    )))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let name: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            Ok((
                r.try_get("cluster")?,
                state(&name)?,
                u64::try_from(n).unwrap_or(0),
            ))
        })
        .collect()
}

/// `n` rows of a `VALUES` list, each of one parameter a type of `types`
/// (cast, so both databases know them), numbered from `$first`:
/// `(CAST($1 AS TEXT), CAST($2 AS BIGINT)), (...)`. Both databases name
/// the columns `column1`, `column2`...
fn values_from(first: usize, n: usize, types: &[&str]) -> String {
    (0..n)
        .map(|row| {
            let cells: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("CAST(${} AS {ty})", first + row * types.len() + i))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of `select` (`SELECT ... FROM ...`) whose `column` is one of
/// `ids`, in `order` (an `ORDER BY` clause, or empty): one statement; none
/// for no ids (`IN ()` is not PostgreSQL).
async fn fetch_where_in(
    conn: &mut AnyConnection,
    select: &str,
    column: &str,
    ids: &[&str],
    order: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{select} WHERE {column} IN ({}) {order}",
        marks.join(", ")
    )));
    for id in ids {
        query = query.bind(*id);
    }
    Ok(query.fetch_all(conn).await?)
}

async fn select_one(
    conn: &mut AnyConnection,
    columns: &str,
    table: &str,
    key: &str,
    value: &str,
) -> Result<Option<AnyRow>, StoreError> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM {table} WHERE {key} = $1"
    )))
    .bind(value)
    .fetch_optional(conn)
    .await?)
}

impl Store for SqlStore {
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
        let removed = clusters::delete_cluster(self, name).await?;
        let ids: Vec<String> = removed.iter().map(|n| n.node_id.clone()).collect();
        self.beats.forget(&ids);
        Ok(removed)
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
        let mut nodes = nodes::list_nodes(self, cluster).await?;
        self.beats.overlay(&mut nodes);
        Ok(nodes)
    }

    async fn get_node(&self, node_id: &str) -> Result<NodeRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut node = [nodes::load_node(&mut conn, node_id).await?];
        self.beats.overlay(&mut node);
        let [node] = node;
        Ok(node)
    }

    async fn all_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut nodes = nodes::all_nodes(self).await?;
        self.beats.overlay(&mut nodes);
        Ok(nodes)
    }

    async fn nodes_by_id(&self, node_ids: &[String]) -> Result<Vec<NodeRecord>, StoreError> {
        if node_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = node_ids.iter().map(String::as_str).collect();
        let mut conn = self.pool.acquire().await?;
        let mut nodes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(nodes::NODES_PER_STATEMENT) {
            nodes.extend(nodes::load_nodes(&mut conn, chunk).await?.into_values());
        }
        self.beats.overlay(&mut nodes);
        Ok(nodes)
    }

    async fn node_sessions(&self) -> Result<Vec<NodeSession>, StoreError> {
        nodes::node_sessions(self).await
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
        let made = nodes::create_nodes(
            self,
            cluster,
            &[(node_id.to_owned(), join_token_hash.to_owned())],
            join_expires_at,
            limits,
            now,
        )
        .await?;
        made.into_iter()
            .next()
            .ok_or_else(|| StoreError::NodeNotFound(node_id.to_owned()))
    }

    async fn create_nodes(
        &self,
        cluster: &str,
        nodes: &[(String, String)],
        join_expires_at: i64,
        limits: &QuotaLimits,
        now: i64,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        nodes::create_nodes(self, cluster, nodes, join_expires_at, limits, now).await
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
        let mut node = nodes::node_by_session(self, session_token_hash).await?;
        self.beats.overlay(std::slice::from_mut(&mut node));
        Ok(node)
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        usage: Option<NodeUsage>,
        now: i64,
    ) -> Result<(), StoreError> {
        match usage {
            // A session begins: written at once.
            None => {
                nodes::session_began(self, node_id, now).await?;
                self.beats.record(node_id, now, None, false);
            }
            Some(usage) => self.beats.record(node_id, now, Some(usage), true),
        }
        Ok(())
    }

    async fn persist_heartbeats(&self) -> Result<usize, StoreError> {
        let dirty = self.beats.take_dirty();
        if dirty.is_empty() {
            return Ok(0);
        }
        let written = nodes::persist_heartbeats(self, &dirty).await;
        match written {
            Ok(gone) => {
                self.beats.forget(&gone);
                Ok(dirty.len() - gone.len())
            }
            Err(e) => {
                // Kept for the next try.
                self.beats.mark_dirty(&dirty);
                Err(e)
            }
        }
    }

    async fn session_opened(&self, node_id: &str, replica: &str) -> Result<(), StoreError> {
        nodes::session_opened(self, node_id, replica).await
    }

    async fn session_closed(&self, node_id: &str, replica: &str) -> Result<(), StoreError> {
        nodes::session_closed(self, node_id, replica).await
    }

    async fn sessions_ended(&self, prefix: &str) -> Result<(), StoreError> {
        nodes::sessions_ended(self, prefix).await
    }

    async fn lead(
        &self,
        holder: &str,
        held: Option<i64>,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        lease::lead(self, holder, held, ttl_ms).await
    }

    async fn resign(&self, lease: &Lease) -> Result<(), StoreError> {
        lease::resign(self, lease).await
    }

    async fn check_lease(&self) -> Result<(), StoreError> {
        // A read, not a write's turn: what it guards (a provider call)
        // happens after it either way, and a scale-up checks before each
        // round of launches, behind no queue of writers.
        if let Some(lease) = &self.fence {
            let mut conn = self.pool.acquire().await?;
            self.lease_holds(&mut conn, lease).await?;
        }
        Ok(())
    }

    fn fenced(&self, lease: Lease) -> Self {
        SqlStore {
            fence: Some(Arc::new(lease)),
            ..self.clone()
        }
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
        nodes::delete_node(self, node_id, now).await?;
        self.beats.forget(&[node_id.to_owned()]);
        Ok(())
    }

    async fn usage_of_others(
        &self,
        location: &str,
        cluster: &str,
    ) -> Result<QuotaUsage, StoreError> {
        usage::usage_of_others(self, location, cluster).await
    }

    async fn set_queued_reason(
        &self,
        cluster: &str,
        reason: &str,
        since: Option<i64>,
    ) -> Result<(), StoreError> {
        jobs::set_queued_reason(self, cluster, reason, since).await
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

    async fn node_counts(
        &self,
    ) -> Result<Vec<(String, strato_core::node::NodeState, u64)>, StoreError> {
        nodes::node_counts(self).await
    }

    async fn job_counts(&self) -> Result<Vec<(String, JobState, u64)>, StoreError> {
        jobs::job_counts(self).await
    }

    async fn queued_jobs(&self, cluster: &str, limit: u32) -> Result<Vec<QueuedJob>, StoreError> {
        jobs::queued_jobs(self, cluster, limit).await
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

    async fn assign_jobs(
        &self,
        placements: &[(String, Vec<String>)],
        now: i64,
    ) -> Result<Vec<Result<JobRecord, StoreError>>, StoreError> {
        jobs::assign_jobs(self, placements, now).await
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

    async fn report_attempts(
        &self,
        reports: &[NodeReport],
        now: i64,
    ) -> Result<Vec<Result<ReportOutcome, StoreError>>, StoreError> {
        jobs::report_attempts(self, reports, now).await
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

    async fn append_node_logs(
        &self,
        batch: &[NodeLogs],
        now: i64,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        logs::append_node_logs(self, batch, now).await
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
