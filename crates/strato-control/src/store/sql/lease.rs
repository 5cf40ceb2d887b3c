//! The leader lease: one row, taken and renewed under the write lock (so
//! a fenced write's check of it holds until that write commits), timed by
//! the database's clock.

use super::SqlStore;
use crate::store::{Lease, StoreError};

pub(super) async fn lead(
    db: &SqlStore,
    holder: &str,
    held: Option<i64>,
    ttl_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let now = db.dialect.now_ms();
    let mut tx = db.begin_write_unfenced(super::Lane::First).await?;
    let taken = match held {
        Some(epoch) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE leader_lease SET expires_at = {now} + $1
                 WHERE id = 1 AND holder = $2 AND epoch = $3 AND expires_at > {now}"
            )))
            .bind(ttl_ms)
            .bind(holder)
            .bind(epoch)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE leader_lease SET holder = $2, epoch = epoch + 1, expires_at = {now} + $1
                 WHERE id = 1 AND expires_at <= {now}"
            )))
            .bind(ttl_ms)
            .bind(holder)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        }
    };
    let epoch = if taken {
        Some(
            sqlx::query_scalar::<_, i64>("SELECT epoch FROM leader_lease WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?,
        )
    } else {
        None
    };
    tx.commit().await?;
    Ok(epoch)
}

pub(super) async fn resign(db: &SqlStore, lease: &Lease) -> Result<(), StoreError> {
    let mut tx = db.begin_write_unfenced(super::Lane::First).await?;
    sqlx::query(
        "UPDATE leader_lease SET expires_at = 0 WHERE id = 1 AND holder = $1 AND epoch = $2",
    )
    .bind(&lease.holder)
    .bind(lease.epoch)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
