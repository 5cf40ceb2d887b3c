//! Job output: lines stored per rank and sequence number, read back in
//! arrival order (the follow cursor).

use sqlx::Row;
use strato_core::limits::{self, StoredLine};

use super::ranks::rank_of;
use super::{SqliteStore, u32_col};
use crate::store::{Conflict, LogRecord, StoreError};

pub(super) async fn append_logs(
    db: &SqliteStore,
    node_id: &str,
    job_id: &str,
    attempt: u32,
    lines: &[LogRecord],
    now: i64,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    sqlx::query("UPDATE nodes SET last_heartbeat = ?1 WHERE node_id = ?2")
        .bind(now)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    let Some((rank, _)) = rank_of(&mut tx, job_id, attempt, node_id).await? else {
        tx.commit().await?;
        return Err(Conflict::NotAttemptOfNode {
            node: node_id.to_owned(),
            job: job_id.to_owned(),
            attempt,
        }
        .into());
    };
    for l in lines {
        // The first lines are kept; past the bound one marker says so.
        let text = match limits::stored_line(l.seq, limits::MAX_STORED_LINES_PER_RANK) {
            StoredLine::Line => std::borrow::Cow::Borrowed(l.line.as_str()),
            StoredLine::Marker(marker) => std::borrow::Cow::Owned(marker),
            StoredLine::Dropped => continue,
        };
        sqlx::query(
            "INSERT OR IGNORE INTO job_logs (job_id, attempt, rank, seq, stream, line, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(i64::from(rank))
        .bind(i64::try_from(l.seq).unwrap_or(i64::MAX))
        .bind(i64::from(l.stream))
        .bind(text.as_ref())
        .bind(l.at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn logs(
    db: &SqliteStore,
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
