//! Job output: lines stored per rank and sequence number, read back in
//! arrival order (the follow cursor).

use sqlx::Row;
use strato_core::limits::{self, StoredLine};

use super::ranks::rank_of;
use super::{SqlStore, WriteTx, u32_col};
use crate::store::{Conflict, LogRecord, NodeLogs, StoreError};

pub(super) async fn append_logs(
    db: &SqlStore,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    lines: &[LogRecord],
    now: i64,
) -> Result<(), StoreError> {
    let one = NodeLogs {
        node_id: node_id.to_owned(),
        job_id: job_id.to_owned(),
        attempt,
        lines: lines.to_vec(),
    };
    append_node_logs(db, std::slice::from_ref(&one), now)
        .await?
        .pop()
        .unwrap_or(Ok(()))
}

/// Many nodes' log messages in one transaction, in order: each stored as
/// `append_logs` stores it, or refused as it refuses it (having stored
/// nothing of that one).
pub(super) async fn append_node_logs(
    db: &SqlStore,
    batch: &[NodeLogs],
    now: i64,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    for logs in batch {
        db.beats.record(&logs.node_id, now, None, true);
    }
    let mut tx = db.begin_write().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for logs in batch {
        let stored = append_in(
            db,
            &mut tx,
            &logs.node_id,
            &logs.job_id,
            logs.attempt,
            &logs.lines,
        )
        .await?;
        outcomes.push(stored.map_err(StoreError::from));
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Stores the lines of one message in `tx`; refused (having written
/// nothing) when the attempt is not `node_id`'s.
async fn append_in(
    db: &SqlStore,
    tx: &mut WriteTx,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    lines: &[LogRecord],
) -> Result<Result<(), Conflict>, StoreError> {
    let Some((rank, _)) = rank_of(&mut *tx, job_id, attempt, node_id).await? else {
        return Ok(Err(Conflict::NotAttemptOfNode {
            node: node_id.to_owned(),
            job: job_id.to_owned(),
            attempt,
        }));
    };
    let (stored, truncated): (i64, i64) = sqlx::query_as(
        "SELECT stored_bytes, truncated FROM job_ranks WHERE job_id = $1 AND attempt = $2 AND rank = $3",
    )
    .bind(job_id)
    .bind(i64::from(attempt))
    .bind(i64::from(rank))
    .fetch_one(&mut **tx)
    .await?;
    let (mut stored, mut truncated) = (u64::try_from(stored).unwrap_or(0), truncated != 0);
    let (was_stored, was_truncated) = (stored, truncated);
    for l in lines {
        // The first lines and bytes are kept; past the budget one marker
        // says so. A line sent again (after a reconnect) is not counted
        // again: its sequence number is stored already.
        let len = l.line.len() as u64;
        let (text, marker) = match limits::stored_line(l.seq, len, stored, truncated, db.log_budget)
        {
            StoredLine::Line => (limits::without_nul(&l.line), false),
            StoredLine::Marker(marker) => (std::borrow::Cow::Owned(marker), true),
            StoredLine::Dropped => continue,
        };
        let inserted = sqlx::query(
            "INSERT INTO job_logs (job_id, attempt, rank, seq, stream, line, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(i64::from(rank))
        .bind(i64::try_from(l.seq).unwrap_or(i64::MAX))
        .bind(i64::from(l.stream))
        .bind(text.as_ref())
        .bind(l.at)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        match (inserted, marker) {
            (true, false) => stored += len,
            (true, true) => truncated = true,
            (false, _) => {}
        }
    }
    if (stored, truncated) != (was_stored, was_truncated) {
        sqlx::query(
            "UPDATE job_ranks SET stored_bytes = $4, truncated = $5
             WHERE job_id = $1 AND attempt = $2 AND rank = $3",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(i64::from(rank))
        .bind(i64::try_from(stored).unwrap_or(i64::MAX))
        .bind(i64::from(truncated))
        .execute(&mut **tx)
        .await?;
    }
    Ok(Ok(()))
}

pub(super) async fn logs(
    db: &SqlStore,
    job_id: &str,
    after: Option<i64>,
    limit: u32,
) -> Result<Vec<LogRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT pos, attempt, rank, seq, stream, line, at FROM job_logs
         WHERE job_id = $1 AND pos > $2 ORDER BY pos LIMIT $3",
    )
    .bind(job_id)
    .bind(after.unwrap_or(-1))
    .bind(i64::from(limit))
    .fetch_all(&db.pool)
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
