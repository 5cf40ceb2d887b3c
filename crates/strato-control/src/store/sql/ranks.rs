//! The ranks of an attempt (one per node; rank 0 is `jobs.node_id`): how a
//! rank's end applies the gang rule, and which ranks must still stop.

use sqlx::AnyConnection;
use sqlx::Row;
use strato_core::job::{self, AttemptEnd, GangStep};
use strato_core::lifecycle;
use strato_core::node::NodeState;

use super::jobs::{end_attempt, load_job};
use super::nodes::{load_node, set_node_state};
use super::{SqlStore, u32_col};
use crate::store::{GangRank, JobRecord, RankToStop, StoreError};

/// Ends, with `end`, every rank still open on a node (its node was lost,
/// removed or evicted); returns the jobs they belonged to.
pub(super) async fn end_ranks_on(
    conn: &mut AnyConnection,
    node_id: &str,
    end: AttemptEnd,
    reason: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT job_id, attempt, rank FROM job_ranks WHERE node_id = $1 AND ended_at IS NULL",
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

/// A node's rank in an attempt, and whether its end is stored already;
/// `None` if the node was not given that attempt.
pub(super) async fn rank_of(
    conn: &mut AnyConnection,
    job_id: &str,
    attempt: u32,
    node_id: &str,
) -> Result<Option<(u32, bool)>, StoreError> {
    let row = sqlx::query(
        "SELECT rank, ended_at FROM job_ranks WHERE job_id = $1 AND attempt = $2 AND node_id = $3",
    )
    .bind(job_id)
    .bind(i64::from(attempt))
    .bind(node_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        let ended_at: Option<i64> = r.try_get("ended_at")?;
        Ok((u32_col(&r, "rank")?, ended_at.is_some()))
    })
    .transpose()
}

/// A rank of an attempt whose container has not been seen to stop.
pub(super) struct OpenRank<'a> {
    pub(super) attempt: u32,
    pub(super) rank: u32,
    pub(super) node_id: &'a str,
}

/// Records that a rank's container stopped, applies the gang rule
/// (`job::after_rank`) while its attempt is current, and frees its node.
pub(super) async fn end_rank(
    conn: &mut AnyConnection,
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
        "UPDATE job_ranks SET ended_at = $1, exit_code = $2, reason = $3
         WHERE job_id = $4 AND attempt = $5 AND rank = $6 AND ended_at IS NULL",
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
        let ranks = job
            .attempts
            .iter()
            .find(|a| a.attempt == open.attempt)
            .map_or(0, |a| a.node_ids.len());
        // A single rank has no others to count.
        let not_done: i64 = if ranks <= 1 {
            0
        } else {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM job_ranks WHERE job_id = $1 AND attempt = $2 AND rank != $3
                   AND (ended_at IS NULL OR exit_code IS NULL OR exit_code != 0)",
            )
            .bind(&job.id)
            .bind(i64::from(open.attempt))
            .bind(i64::from(open.rank))
            .fetch_one(&mut *conn)
            .await?
        };
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
    if lifecycle::frees_node(node.state, node.run_id.as_deref(), &job.id) {
        set_node_state(conn, open.node_id, NodeState::Idle, None, "", now).await?;
    } else if lifecycle::releases_leaving_node(node.state, node.run_id.as_deref(), &job.id) {
        set_node_state(
            conn,
            open.node_id,
            NodeState::Leaving,
            None,
            &node.reason,
            now,
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn ranks_to_stop(db: &SqlStore) -> Result<Vec<RankToStop>, StoreError> {
    let rows = sqlx::query(
        "SELECT r.job_id, r.attempt, r.node_id FROM job_ranks r JOIN jobs j ON j.id = r.job_id
         WHERE r.ended_at IS NULL
           AND (j.attempt != r.attempt OR j.state NOT IN ('preparing', 'running')
                OR j.cancel_requested = 1)",
    )
    .fetch_all(&db.pool)
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

pub(super) async fn gang(
    db: &SqlStore,
    job_id: &str,
    attempt: u32,
) -> Result<Vec<GangRank>, StoreError> {
    let rows = sqlx::query(
        "SELECT r.rank, r.node_id FROM job_ranks r JOIN jobs j ON j.id = r.job_id
         WHERE r.job_id = $1 AND r.attempt = $2 AND j.attempt = $2
           AND j.state IN ('preparing', 'running') AND j.cancel_requested = 0
           AND r.ended_at IS NULL
         ORDER BY r.rank",
    )
    .bind(job_id)
    .bind(i64::from(attempt))
    .fetch_all(&db.pool)
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
