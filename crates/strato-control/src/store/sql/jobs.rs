//! Jobs: submit, read, count, cancel, assign to nodes, and the attempt
//! reports that move them on; `end_attempt` decides what follows an attempt.

use std::collections::{HashMap, HashSet};

use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;
use strato_core::job::{self, AttemptEnd, JobSpec, JobState};
use strato_core::lifecycle::{self, AttemptEnded, AttemptFacts, CancelStep};
use strato_core::node::NodeState;

use super::clusters::load_cluster;
use super::nodes::load_nodes;
use super::nodes::{load_node, set_node_state};
use super::quick::QuickReports;
use super::ranks::{OpenRank, end_rank, rank_of};
use super::{SqlStore, corrupt, fetch_where_in, flag_col, job_state, u32_col, values_from};
use crate::store::{
    AttemptRecord, AttemptReport, Conflict, JobCursor, JobPage, JobRecord, NodeRecord, NodeReport,
    QueuedJob, ReportOutcome, StoreError, TransitionRecord,
};

const JOB_COLUMNS: &str = "id, spec, state, reason, attempt, failures, preemptions, node_id, \
     exit_code, cancel_requested, cancel_reason, submitted_by, created_at, updated_at";

/// A job row, without its transitions and attempts.
fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
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
        cancel_requested: flag_col(row, "cancel_requested")?,
        cancel_reason: row.try_get("cancel_reason")?,
        submitted_by: row.try_get("submitted_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        transitions: Vec::new(),
        attempts: Vec::new(),
    })
}

pub(super) async fn load_job(conn: &mut AnyConnection, id: &str) -> Result<JobRecord, StoreError> {
    load_jobs(conn, &[id], true)
        .await?
        .remove(id)
        .ok_or_else(|| StoreError::JobNotFound(id.to_owned()))
}

/// A job with its attempts but without its transitions (`transitions`
/// left empty): what the rules of a report read, one query less.
async fn load_job_untold(conn: &mut AnyConnection, id: &str) -> Result<JobRecord, StoreError> {
    load_jobs(conn, &[id], false)
        .await?
        .remove(id)
        .ok_or_else(|| StoreError::JobNotFound(id.to_owned()))
}

/// The jobs of `ids` that exist, by id, each with its attempts (and their
/// ranks' nodes) and, when `told`, its transitions: four statements
/// whatever the number of ids (at most `JOBS_PER_STATEMENT`, the
/// caller's bound).
async fn load_jobs(
    conn: &mut AnyConnection,
    ids: &[&str],
    told: bool,
) -> Result<HashMap<String, JobRecord>, StoreError> {
    let rows = fetch_where_in(
        &mut *conn,
        &format!("SELECT {JOB_COLUMNS} FROM jobs"),
        "id",
        ids,
        "",
    )
    .await?;
    let mut jobs = HashMap::with_capacity(rows.len());
    for row in &rows {
        let job = job_from_row(row)?;
        jobs.insert(job.id.clone(), job);
    }
    if jobs.is_empty() {
        return Ok(jobs);
    }
    let rows = fetch_where_in(
        &mut *conn,
        "SELECT job_id, attempt, node_id, started_at, ended_at, reason, exit_code
         FROM job_attempts",
        "job_id",
        ids,
        "ORDER BY job_id, attempt",
    )
    .await?;
    for r in &rows {
        let Some(job) = job_of(&mut jobs, r)? else {
            continue;
        };
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
    let rows = fetch_where_in(
        &mut *conn,
        "SELECT job_id, attempt, node_id FROM job_ranks",
        "job_id",
        ids,
        "ORDER BY job_id, attempt, rank",
    )
    .await?;
    for r in &rows {
        let Some(job) = job_of(&mut jobs, r)? else {
            continue;
        };
        let attempt = u32_col(r, "attempt")?;
        if let Some(a) = job.attempts.iter_mut().find(|a| a.attempt == attempt) {
            a.node_ids.push(r.try_get("node_id")?);
        }
    }
    if told {
        // Row order is the order they were recorded, for each job too.
        let rows = fetch_where_in(
            &mut *conn,
            "SELECT job_id, at, attempt, state, reason FROM job_transitions",
            "job_id",
            ids,
            "ORDER BY rowid",
        )
        .await?;
        for r in &rows {
            let Some(job) = job_of(&mut jobs, r)? else {
                continue;
            };
            let state: String = r.try_get("state")?;
            job.transitions.push(TransitionRecord {
                at: r.try_get("at")?,
                attempt: u32_col(r, "attempt")?,
                state: job_state(&state)?,
                reason: r.try_get("reason")?,
            });
        }
    }
    Ok(jobs)
}

/// The job of `jobs` a row's `job_id` names.
fn job_of<'a>(
    jobs: &'a mut HashMap<String, JobRecord>,
    row: &AnyRow,
) -> Result<Option<&'a mut JobRecord>, StoreError> {
    Ok(jobs.get_mut(&row.try_get::<String, _>("job_id")?))
}

/// Moves a job to `state`, recording the transition.
async fn transition(
    conn: &mut AnyConnection,
    job_id: &str,
    attempt: u32,
    state: JobState,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
    record_transition(conn, job_id, attempt, state, reason, now).await
}

/// Records a transition whose state the `jobs` row has already.
async fn record_transition(
    conn: &mut AnyConnection,
    job_id: &str,
    attempt: u32,
    state: JobState,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_transitions (job_id, at, attempt, state, reason) VALUES ($1, $2, $3, $4, $5)",
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

/// What ending `job`'s current attempt with `end` changes
/// (`lifecycle::end_attempt` of its facts).
pub(super) fn attempt_ended(job: &JobRecord, end: AttemptEnd, reason: &str) -> AttemptEnded {
    lifecycle::end_attempt(
        &AttemptFacts {
            attempt: job.attempt,
            failures: job.failures,
            preemptions: job.preemptions,
            max_retries: job.spec.max_retries,
            max_preemptions: job.spec.max_preemptions,
            cancel_requested: job.cancel_requested,
            cancel_reason: job.cancel_reason.clone(),
        },
        end,
        reason,
    )
}

/// Ends the current attempt of a job on a node and stores what follows
/// (`lifecycle::end_attempt`): a final state, or back to the queue as the
/// next attempt.
pub(super) async fn end_attempt(
    conn: &mut AnyConnection,
    job: &JobRecord,
    end: AttemptEnd,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    let ended = attempt_ended(job, end, reason);
    sqlx::query(
        "UPDATE job_attempts SET ended_at = $1, reason = $2, exit_code = $3
         WHERE job_id = $4 AND attempt = $5 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(&ended.reason)
    .bind(ended.exit_code)
    .bind(&job.id)
    .bind(i64::from(job.attempt))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE jobs SET attempt = $1, failures = $2, preemptions = $3, node_id = NULL,
             exit_code = $4 WHERE id = $5",
    )
    .bind(i64::from(ended.attempt))
    .bind(i64::from(ended.failures))
    .bind(i64::from(ended.preemptions))
    .bind(ended.exit_code)
    .bind(&job.id)
    .execute(&mut *conn)
    .await?;
    for t in &ended.transitions {
        transition(conn, &job.id, t.attempt, t.state, &t.reason, now).await?;
    }
    Ok(())
}

pub(super) async fn set_queued_reason(
    db: &SqlStore,
    cluster: &str,
    reason: &str,
    since: Option<i64>,
) -> Result<(), StoreError> {
    // A queued job's updated_at is when it was queued (index
    // jobs_queued_by_change): with `since`, only the newly queued are read.
    const STALE: &str = "cluster = $2 AND state = 'queued' AND updated_at >= $3 AND reason <> $1";
    // Most passes find none to change: a write's turn only for some.
    let stale: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM jobs WHERE {STALE} LIMIT 1"
    )))
    .bind(reason)
    .bind(cluster)
    .bind(since.unwrap_or(i64::MIN))
    .fetch_optional(&db.pool)
    .await?;
    if stale.is_none() {
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET reason = $1 WHERE {STALE}"
    )))
    .bind(reason)
    .bind(cluster)
    .bind(since.unwrap_or(i64::MIN))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn submit_job(
    db: &SqlStore,
    id: &str,
    mut spec: JobSpec,
    submitted_by: &str,
    now: i64,
) -> Result<JobRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    spec.cluster = load_cluster(&mut tx, &spec.cluster).await?.spec.name;
    let reason = "submitted";
    sqlx::query(
        "INSERT INTO jobs (id, cluster, spec, state, reason, attempt, created_at, updated_at,
                           submitted_by)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7)",
    )
    .bind(id)
    .bind(&spec.cluster)
    .bind(serde_json::to_string(&spec).map_err(|e| corrupt("job spec", e))?)
    .bind(JobState::Queued.as_str())
    .bind(reason)
    .bind(now)
    .bind(submitted_by)
    .execute(&mut *tx)
    .await?;
    record_transition(&mut tx, id, 1, JobState::Queued, reason, now).await?;
    tx.commit().await?;
    // What reading it gives (the conformance cases compare), without
    // reading it: the columns not written take their defaults.
    Ok(JobRecord {
        id: id.to_owned(),
        spec,
        state: JobState::Queued,
        reason: reason.to_owned(),
        attempt: 1,
        failures: 0,
        preemptions: 0,
        node_id: None,
        exit_code: None,
        cancel_requested: false,
        cancel_reason: String::new(),
        submitted_by: submitted_by.to_owned(),
        created_at: now,
        updated_at: now,
        transitions: vec![TransitionRecord {
            at: now,
            attempt: 1,
            state: JobState::Queued,
            reason: reason.to_owned(),
        }],
        attempts: Vec::new(),
    })
}

pub(super) async fn get_job(db: &SqlStore, id: &str) -> Result<JobRecord, StoreError> {
    let mut conn = db.pool.acquire().await?;
    load_job(&mut conn, id).await
}

pub(super) async fn list_jobs(
    db: &SqlStore,
    cluster: Option<&str>,
    page: JobPage,
) -> Result<(Vec<JobRecord>, Option<JobCursor>), StoreError> {
    let mut conn = db.pool.acquire().await?;
    let after = page.after;
    // One more than asked: whether there is a next page.
    let limit = i64::from(page.limit).saturating_add(1);
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT id, created_at, rowid FROM jobs
         WHERE ($1 IS NULL OR cluster = $1 COLLATE NOCASE)
           AND ($2 IS NULL OR created_at < $2 OR (created_at = $2 AND rowid < $3))
         ORDER BY created_at DESC, rowid DESC LIMIT $4",
    )
    .bind(cluster)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.position))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() > page.limit as usize;
    let rows = &rows[..rows.len().min(page.limit as usize)];
    let next = more
        .then(|| rows.last())
        .flatten()
        .map(|(_, created_at, position)| JobCursor {
            created_at: *created_at,
            position: *position,
        });
    let mut jobs = Vec::with_capacity(rows.len());
    for (id, _, _) in rows {
        jobs.push(load_job(&mut conn, id).await?);
    }
    Ok((jobs, next))
}

pub(super) async fn job_counts(db: &SqlStore) -> Result<Vec<(String, JobState, u64)>, StoreError> {
    super::counts_by_state(db, "jobs", job_state).await
}

pub(super) async fn queued_jobs(
    db: &SqlStore,
    cluster: &str,
    limit: u32,
) -> Result<Vec<QueuedJob>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, COALESCE({}, 1) AS node_count
         FROM jobs WHERE cluster = $1 AND state = 'queued' ORDER BY created_at, rowid LIMIT $2",
        db.dialect.json_int("spec", "node_count")
    )))
    .bind(cluster)
    .bind(i64::from(limit.min(crate::store::QUEUED_READ)))
    .fetch_all(&db.pool)
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

pub(super) async fn delete_job(db: &SqlStore, id: &str) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let job = load_job(&mut tx, id).await?;
    if !job.state.is_final() {
        return Err(Conflict::JobNotEnded {
            job: id.to_owned(),
            state: job.state,
        }
        .into());
    }
    let on_nodes: i64 = sqlx::query_scalar(STILL_ON_NODES)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if on_nodes != 0 {
        return Err(Conflict::JobStillOnNodes { job: id.to_owned() }.into());
    }
    // Attempts, transitions, ranks and logs go with it (ON DELETE CASCADE).
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether job `$1` still holds a node: a rank not yet ended (a gang's
/// other ranks stop after the job ended), or a node it runs on.
const STILL_ON_NODES: &str = "SELECT CASE
         WHEN EXISTS (SELECT 1 FROM job_ranks WHERE job_id = $1 AND ended_at IS NULL)
           OR EXISTS (SELECT 1 FROM nodes WHERE run_id = $1) THEN 1 ELSE 0 END";

pub(super) async fn delete_jobs_ended_before(
    db: &SqlStore,
    cutoff: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    let mut tx = db.begin_write().await?;
    // A final job's updated_at is when it ended: it never changes again.
    let deleted = sqlx::query(
        "DELETE FROM jobs WHERE id IN (
             SELECT j.id FROM jobs j
             WHERE j.state IN ('completed', 'failed', 'canceled') AND j.updated_at < $1
               AND NOT EXISTS (SELECT 1 FROM job_ranks r WHERE r.job_id = j.id AND r.ended_at IS NULL)
               AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.run_id = j.id)
             ORDER BY j.updated_at LIMIT $2)",
    )
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

pub(super) async fn cancel_job(db: &SqlStore, id: &str, now: i64) -> Result<JobRecord, StoreError> {
    let mut tx = db.begin_write().await?;
    let job = load_job(&mut tx, id).await?;
    match lifecycle::cancel(job.state, job.cancel_requested) {
        CancelStep::Now(reason) => {
            transition(&mut tx, id, job.attempt, JobState::Canceled, reason, now).await?;
        }
        CancelStep::StopOnNodes => {
            sqlx::query("UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        CancelStep::Nothing => {}
    }
    let job = load_job(&mut tx, id).await?;
    tx.commit().await?;
    Ok(job)
}

/// Marks every job whose running attempt has outlived its
/// `limits.timeout` for cancellation, with the timeout as the reason; the
/// jobs marked.
pub(super) async fn cancel_timed_out(
    db: &SqlStore,
    now: i64,
) -> Result<Vec<JobRecord>, StoreError> {
    // Read first (most passes find none), then again under a write's turn.
    let any = {
        let mut conn = db.pool.acquire().await?;
        !timed_out(&mut conn, db.dialect, now).await?.is_empty()
    };
    if !any {
        return Ok(Vec::new());
    }
    let mut tx = db.begin_write().await?;
    let mut marked = Vec::new();
    for (id, timeout) in timed_out(&mut tx, db.dialect, now).await? {
        sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, cancel_reason = $1, updated_at = $2
             WHERE id = $3",
        )
        .bind(job::timeout_reason(timeout))
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        marked.push(load_job(&mut tx, &id).await?);
    }
    tx.commit().await?;
    Ok(marked)
}

/// The running jobs not yet marked for cancellation whose current attempt
/// has outlived its timeout at `now`, with their timeouts (s).
async fn timed_out(
    conn: &mut AnyConnection,
    dialect: super::Dialect,
    now: i64,
) -> Result<Vec<(String, u64)>, StoreError> {
    // Only jobs with a timeout are read; each with when its current
    // attempt started running.
    let timeout = dialect.json_int("j.spec", "timeout_seconds");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT j.id, {timeout} AS timeout_seconds,
                (SELECT MAX(t.at) FROM job_transitions t
                  WHERE t.job_id = j.id AND t.attempt = j.attempt AND t.state = 'running')
                  AS running_since
         FROM jobs j
         WHERE j.state = 'running' AND j.cancel_requested = 0 AND {timeout} IS NOT NULL"
    )))
    .fetch_all(conn)
    .await?;
    let mut past = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let timeout: i64 = row.try_get("timeout_seconds")?;
        let Some(since) = row.try_get::<Option<i64>, _>("running_since")? else {
            continue;
        };
        let timeout = u64::try_from(timeout).unwrap_or(0);
        if job::past_timeout(timeout, since, now) {
            past.push((id, timeout));
        }
    }
    Ok(past)
}

pub(super) async fn assign_job(
    db: &SqlStore,
    job_id: &str,
    node_ids: &[String],
    now: i64,
) -> Result<JobRecord, StoreError> {
    let placement = [(job_id.to_owned(), node_ids.to_vec())];
    let mut placed = assign_jobs(db, &placement, now).await?;
    placed.pop().unwrap_or_else(|| {
        // Unreachable: one answer a placement.
        Err(StoreError::JobNotFound(job_id.to_owned()))
    })
}

/// Placements stored by one statement of each kind: at most this many
/// jobs, and ranks (nodes) until `RANKS_PER_STATEMENT` (a placement's
/// ranks are never split: a job has at most `MAX_NODES_WITHOUT_INTER_NODE`,
/// 1,000). The largest statement binds four parameters a rank, far within
/// both databases' limits (SQLite 32,766, PostgreSQL 65,535).
const JOBS_PER_STATEMENT: usize = 250;
const RANKS_PER_STATEMENT: usize = 500;

/// A pass's placements in one transaction, a few statements for every
/// `JOBS_PER_STATEMENT` of them (not several a job): each placement's
/// job and nodes are read and checked, then the accepted ones written
/// together. A refused placement (its job not queued or not found, a node
/// not idle or not found, the wrong number of nodes) writes nothing and the
/// others go on, in order: a job or node an earlier placement took is
/// refused as the database would now answer.
pub(super) async fn assign_jobs(
    db: &SqlStore,
    placements: &[(String, Vec<String>)],
    now: i64,
) -> Result<Vec<Result<JobRecord, StoreError>>, StoreError> {
    let mut tx = db.begin_write().await?;
    let mut results = Vec::with_capacity(placements.len());
    let mut rest = placements;
    while !rest.is_empty() {
        let mut take = 0;
        let mut ranks = 0;
        for (_, node_ids) in rest.iter().take(JOBS_PER_STATEMENT) {
            if take > 0 && ranks + node_ids.len() > RANKS_PER_STATEMENT {
                break;
            }
            take += 1;
            ranks += node_ids.len();
        }
        let (chunk, after) = rest.split_at(take);
        results.extend(assign_chunk(&mut tx, chunk, now).await?);
        rest = after;
    }
    tx.commit().await?;
    Ok(results)
}

/// One statement group of `assign_jobs`.
async fn assign_chunk(
    tx: &mut AnyConnection,
    placements: &[(String, Vec<String>)],
    now: i64,
) -> Result<Vec<Result<JobRecord, StoreError>>, StoreError> {
    let job_ids: Vec<&str> = distinct(placements.iter().map(|(job, _)| job.as_str()));
    let node_ids: Vec<&str> = distinct(
        placements
            .iter()
            .flat_map(|(_, nodes)| nodes.iter().map(String::as_str)),
    );
    let mut jobs = load_jobs(&mut *tx, &job_ids, true).await?;
    let nodes = load_nodes(&mut *tx, &node_ids).await?;
    // What an earlier placement of this chunk took.
    let mut taken_jobs = HashSet::new();
    let mut taken_nodes = HashSet::new();
    let mut results = Vec::with_capacity(placements.len());
    let mut accepted = Vec::new();
    for (job_id, node_ids) in placements {
        let checked = check_placement(
            jobs.get(job_id),
            job_id,
            node_ids,
            &nodes,
            &taken_jobs,
            &taken_nodes,
        );
        match checked {
            Ok(()) => {
                taken_jobs.insert(job_id.as_str());
                taken_nodes.extend(node_ids.iter().map(String::as_str));
                let mut job = jobs.remove(job_id).ok_or_else(|| {
                    // Unreachable: the check found it.
                    StoreError::JobNotFound(job_id.clone())
                })?;
                let placed = lifecycle::placed(job.attempt, node_ids);
                // What reading it again would give (the conformance cases
                // compare).
                job.state = JobState::Preparing;
                job.node_id = node_ids.first().cloned();
                job.updated_at = now;
                job.transitions.push(TransitionRecord {
                    at: now,
                    attempt: job.attempt,
                    state: JobState::Preparing,
                    reason: placed.clone(),
                });
                job.attempts.push(AttemptRecord {
                    attempt: job.attempt,
                    node_id: node_ids.first().cloned().unwrap_or_default(),
                    started_at: now,
                    ended_at: None,
                    reason: String::new(),
                    exit_code: None,
                    node_ids: node_ids.clone(),
                });
                job.reason = placed;
                accepted.push(results.len());
                results.push(Ok(job));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    let placed: Vec<&JobRecord> = accepted
        .iter()
        .filter_map(|&i| results[i].as_ref().ok())
        .collect();
    write_placements(tx, &placed, now).await?;
    Ok(results)
}

/// Whether a placement may be stored: every refusal `assign_job`
/// documents, in its order (the job, its state, the number of nodes, each
/// node), as if the chunk's earlier placements were stored.
fn check_placement(
    job: Option<&JobRecord>,
    job_id: &str,
    node_ids: &[String],
    nodes: &HashMap<String, NodeRecord>,
    taken_jobs: &HashSet<&str>,
    taken_nodes: &HashSet<&str>,
) -> Result<(), StoreError> {
    if taken_jobs.contains(job_id) {
        return Err(Conflict::JobNotQueued {
            job: job_id.to_owned(),
            state: JobState::Preparing,
        }
        .into());
    }
    let job = job.ok_or_else(|| StoreError::JobNotFound(job_id.to_owned()))?;
    if job.state != JobState::Queued {
        return Err(Conflict::JobNotQueued {
            job: job_id.to_owned(),
            state: job.state,
        }
        .into());
    }
    let wanted = usize::try_from(job.spec.node_count.max(1)).unwrap_or(usize::MAX);
    if node_ids.len() != wanted {
        return Err(Conflict::WrongNodeCount {
            job: job_id.to_owned(),
            needs: wanted,
            got: node_ids.len(),
        }
        .into());
    }
    for node_id in node_ids {
        let node = nodes
            .get(node_id)
            .ok_or_else(|| StoreError::NodeNotFound(node_id.clone()))?;
        let (state, busy) = if taken_nodes.contains(node_id.as_str()) {
            (NodeState::Preparing, true)
        } else {
            (node.state, node.run_id.is_some())
        };
        if state != NodeState::Idle || busy {
            return Err(Conflict::NodeNotIdle {
                node: node_id.clone(),
                state,
            }
            .into());
        }
    }
    Ok(())
}

/// The writes of checked placements (`placed`: the jobs as they now are):
/// their attempts, ranks, nodes (preparing the job), jobs and transitions,
/// one statement each.
async fn write_placements(
    tx: &mut AnyConnection,
    placed: &[&JobRecord],
    now: i64,
) -> Result<(), StoreError> {
    if placed.is_empty() {
        return Ok(());
    }
    let attempt_of = |job: &JobRecord| -> Result<AttemptRecord, StoreError> {
        job.attempts
            .last()
            .cloned()
            .ok_or_else(|| corrupt("placement", "no attempt"))
    };
    let mut attempts = Vec::with_capacity(placed.len());
    for job in placed {
        attempts.push(attempt_of(job)?);
    }
    let rows = values_from(1, placed.len(), &["TEXT", "BIGINT", "TEXT", "BIGINT"]);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO job_attempts (job_id, attempt, node_id, started_at) VALUES {rows}"
    )));
    for (job, attempt) in placed.iter().zip(&attempts) {
        query = query
            .bind(job.id.as_str())
            .bind(i64::from(job.attempt))
            .bind(attempt.node_id.as_str())
            .bind(now);
    }
    query.execute(&mut *tx).await?;

    let ranks: Vec<(&str, u32, i64, &str)> = placed
        .iter()
        .zip(&attempts)
        .flat_map(|(job, attempt)| {
            attempt.node_ids.iter().enumerate().map(|(rank, node)| {
                (
                    job.id.as_str(),
                    job.attempt,
                    i64::try_from(rank).unwrap_or(i64::MAX),
                    node.as_str(),
                )
            })
        })
        .collect();
    let rows = values_from(1, ranks.len(), &["TEXT", "BIGINT", "BIGINT", "TEXT"]);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO job_ranks (job_id, attempt, rank, node_id) VALUES {rows}"
    )));
    for (job, attempt, rank, node) in &ranks {
        query = query
            .bind(*job)
            .bind(i64::from(*attempt))
            .bind(*rank)
            .bind(*node);
    }
    query.execute(&mut *tx).await?;

    // Each rank's node prepares its job (`set_node_state`, many at once).
    let rows = values_from(4, ranks.len(), &["TEXT", "TEXT"]);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE nodes SET state = $1, run_id = v.column2, reason = $2, state_since = $3
         FROM (VALUES {rows}) AS v WHERE nodes.node_id = v.column1"
    )))
    .bind(NodeState::Preparing.as_str())
    .bind("preparing a job")
    .bind(now);
    for (job, _, _, node) in &ranks {
        query = query.bind(*node).bind(*job);
    }
    query.execute(&mut *tx).await?;

    let rows = values_from(3, placed.len(), &["TEXT", "TEXT", "TEXT"]);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET node_id = v.column2, state = $1, reason = v.column3, updated_at = $2
         FROM (VALUES {rows}) AS v WHERE jobs.id = v.column1"
    )))
    .bind(JobState::Preparing.as_str())
    .bind(now);
    for (job, attempt) in placed.iter().zip(&attempts) {
        query = query
            .bind(job.id.as_str())
            .bind(attempt.node_id.as_str())
            .bind(job.reason.as_str());
    }
    query.execute(&mut *tx).await?;

    let rows = values_from(
        1,
        placed.len(),
        &["TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT"],
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO job_transitions (job_id, at, attempt, state, reason) VALUES {rows}"
    )));
    for job in placed {
        query = query
            .bind(job.id.as_str())
            .bind(now)
            .bind(i64::from(job.attempt))
            .bind(JobState::Preparing.as_str())
            .bind(job.reason.as_str());
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// `items` in their first order, each once.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|item| seen.insert(*item)).collect()
}

pub(super) async fn report_attempt(
    db: &SqlStore,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    report: AttemptReport,
    now: i64,
) -> Result<ReportOutcome, StoreError> {
    let mut tx = db.begin_write().await?;
    let outcome = report_in(&mut tx, node_id, job_id, attempt, report, None, now).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Many agents' reports in one transaction. A report's refusals are
/// outcomes (`Stale`), so one fails only on an unreadable record, a node
/// gone under it, or the database: on the first of those the transaction
/// is rolled back, that report answered with its error and the others
/// written again as one batch (each try drops one report); the database
/// failing (or the lease lost) fails the whole batch.
pub(super) async fn report_attempts(
    db: &SqlStore,
    reports: &[NodeReport],
    now: i64,
) -> Result<Vec<Result<ReportOutcome, StoreError>>, StoreError> {
    let mut answers: Vec<Option<Result<ReportOutcome, StoreError>>> =
        reports.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..reports.len()).collect();
    loop {
        let mut tx = db.begin_write().await?;
        let mut stored = Vec::with_capacity(pending.len());
        let mut failed = None;
        // Jobs and nodes an earlier report of this transaction may have
        // changed: their reports read again what they decide on.
        let mut touched = HashSet::new();
        let mut touched_nodes = HashSet::new();
        'chunks: for chunk in pending.chunks(JOBS_PER_STATEMENT) {
            let job_ids = distinct(chunk.iter().map(|&i| reports[i].job_id.as_str()));
            let node_ids = distinct(chunk.iter().map(|&i| reports[i].node_id.as_str()));
            // A record that cannot be read fails its own report only: then
            // each report reads for itself.
            let mut read = match ReportReads::of(&mut tx, &job_ids, &node_ids).await {
                Ok(read) => Some(read),
                Err(
                    e
                    @ (StoreError::Database(_) | StoreError::Fenced(_) | StoreError::Migration(_)),
                ) => return Err(e),
                Err(_) => None,
            };
            let mut quick = QuickReports::default();
            for &i in chunk {
                let r = &reports[i];
                let first = touched.insert(r.job_id.as_str());
                let node_first = touched_nodes.insert(r.node_id.as_str());
                let known = read
                    .as_mut()
                    .filter(|_| first)
                    .map(|read| read.take(&r.job_id, r.attempt, &r.node_id));
                // The common reports wait to be written together.
                if let (Some(known), Some(read)) = (&known, &read)
                    && let Some(job) = &known.job
                    && let Some(outcome) = quick.decide(
                        job,
                        known.rank,
                        read.nodes.get(&r.node_id).filter(|_| node_first),
                        &r.node_id,
                        r.attempt,
                        &r.report,
                    )
                {
                    stored.push((i, outcome));
                    continue;
                }
                // Others read what those wrote.
                quick.write(&mut tx, now).await?;
                let report = r.report.clone();
                match report_in(
                    &mut tx, &r.node_id, &r.job_id, r.attempt, report, known, now,
                )
                .await
                {
                    Ok(outcome) => stored.push((i, outcome)),
                    Err(
                        e @ (StoreError::Database(_)
                        | StoreError::Fenced(_)
                        | StoreError::Migration(_)),
                    ) => return Err(e),
                    Err(e) => {
                        tracing::warn!(job = %r.job_id, node = %r.node_id, error = %e, "a report failed; the others of its batch are written again");
                        failed = Some((i, e));
                        break 'chunks;
                    }
                }
            }
            quick.write(&mut tx, now).await?;
        }
        let Some((i, e)) = failed else {
            tx.commit().await?;
            for (i, outcome) in stored {
                answers[i] = Some(Ok(outcome));
            }
            break;
        };
        // Rolled back before the next try takes its turn.
        drop(tx);
        answers[i] = Some(Err(e));
        pending.retain(|&j| j != i);
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Corrupt("a report left unanswered".into()))))
        .collect())
}

/// What a report decides on, read before it: its job (with its attempts,
/// without its transitions) and its node's rank in its attempt with
/// whether that rank's end is stored; `None` where there is none.
struct ReportRead {
    job: Option<JobRecord>,
    rank: Option<(u32, bool)>,
}

/// `ReportRead`s of many reports' jobs, and their nodes, read together
/// (five statements).
struct ReportReads {
    jobs: HashMap<String, JobRecord>,
    ranks: HashMap<(String, u32, String), (u32, bool)>,
    /// The reports' nodes, as they were before the first report.
    nodes: HashMap<String, NodeRecord>,
}

impl ReportReads {
    async fn of(
        conn: &mut AnyConnection,
        job_ids: &[&str],
        node_ids: &[&str],
    ) -> Result<Self, StoreError> {
        let jobs = load_jobs(&mut *conn, job_ids, false).await?;
        let nodes = load_nodes(&mut *conn, node_ids).await?;
        let rows = fetch_where_in(
            &mut *conn,
            "SELECT job_id, attempt, node_id, rank, ended_at FROM job_ranks",
            "job_id",
            job_ids,
            "",
        )
        .await?;
        let mut ranks = HashMap::with_capacity(rows.len());
        for r in &rows {
            let ended_at: Option<i64> = r.try_get("ended_at")?;
            ranks.insert(
                (
                    r.try_get("job_id")?,
                    u32_col(r, "attempt")?,
                    r.try_get("node_id")?,
                ),
                (u32_col(r, "rank")?, ended_at.is_some()),
            );
        }
        Ok(ReportReads { jobs, ranks, nodes })
    }

    /// What a report of `job_id`'s `attempt` from `node_id` reads; for the
    /// first report of each job only (the job is handed over).
    fn take(&mut self, job_id: &str, attempt: u32, node_id: &str) -> ReportRead {
        ReportRead {
            job: self.jobs.remove(job_id),
            rank: self
                .ranks
                .get(&(job_id.to_owned(), attempt, node_id.to_owned()))
                .copied(),
        }
    }
}

/// `report_attempt` inside `tx`; `known`: what it decides on, read before
/// in this transaction with nothing of its job written since (else it is
/// read here).
async fn report_in(
    tx: &mut AnyConnection,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    report: AttemptReport,
    known: Option<ReportRead>,
    now: i64,
) -> Result<ReportOutcome, StoreError> {
    let (job, rank) = match known {
        Some(ReportRead { job: None, .. }) => return Ok(ReportOutcome::Stale),
        Some(ReportRead {
            job: Some(job),
            rank,
        }) => (job, rank),
        None => match load_job_untold(&mut *tx, job_id).await {
            Ok(job) => (job, rank_of(&mut *tx, job_id, attempt, node_id).await?),
            Err(StoreError::JobNotFound(_)) => return Ok(ReportOutcome::Stale),
            Err(e) => return Err(e),
        },
    };
    let Some((rank, ended)) = rank else {
        // Not an attempt this node was given.
        return Ok(ReportOutcome::Stale);
    };
    if ended {
        // Its end is stored already: the agent may remove the container.
        return Ok(ReportOutcome::Release);
    }
    let open = OpenRank {
        attempt,
        rank,
        node_id,
    };
    let current = job.attempt == attempt && job.state.on_node();
    let outcome = match report {
        AttemptReport::Preparing(reason) => {
            if current && job.state == JobState::Preparing {
                sqlx::query("UPDATE jobs SET reason = $1, updated_at = $2 WHERE id = $3")
                    .bind(&reason)
                    .bind(now)
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
            }
            ReportOutcome::Recorded
        }
        AttemptReport::Running if !current => {
            // Its attempt ended (the gang ended as a whole, or the job was
            // canceled): the container is stopped through ranks_to_stop,
            // and its end reported then.
            ReportOutcome::Recorded
        }
        AttemptReport::Running => {
            sqlx::query(
                "UPDATE job_ranks SET started = 1 WHERE job_id = $1 AND attempt = $2 AND rank = $3",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(i64::from(open.rank))
            .execute(&mut *tx)
            .await?;
            let node = load_node(&mut *tx, node_id).await?;
            if node.state == NodeState::Preparing {
                set_node_state(&mut *tx, node_id, NodeState::Running, Some(job_id), "", now)
                    .await?;
            }
            let nodes = job
                .attempts
                .iter()
                .find(|a| a.attempt == attempt)
                .map_or(&[][..], |a| a.node_ids.as_slice());
            // A single rank, started just now, leaves none waiting.
            let waiting: i64 = if nodes.len() <= 1 {
                0
            } else {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM job_ranks WHERE job_id = $1 AND attempt = $2 AND started = 0",
                )
                .bind(job_id)
                .bind(i64::from(attempt))
                .fetch_one(&mut *tx)
                .await?
            };
            let waiting = u64::try_from(waiting).unwrap_or(u64::MAX);
            if let Some(t) = lifecycle::rank_started(job.state, attempt, nodes, node_id, waiting) {
                transition(&mut *tx, job_id, t.attempt, t.state, &t.reason, now).await?;
            }
            ReportOutcome::Recorded
        }
        AttemptReport::Ended(end, reason) => {
            end_rank(&mut *tx, &job, &open, end, &reason, now).await?;
            ReportOutcome::Release
        }
    };
    Ok(outcome)
}
