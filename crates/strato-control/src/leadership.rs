//! Which replica leads. Any number of control planes may serve one
//! database; the one holding the leader lease (one row, timed by the
//! database's clock) runs the reconcile loop, and writes through a store
//! fenced by the lease's epoch: once another replica took the lease over,
//! a deposed leader (frozen, partitioned) stores nothing more.
//!
//! Every replica serves the API and agents' sessions; the courier
//! (`courier`) carries what the leader stored to the agents this replica
//! holds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::plane::Plane;
use crate::reconcile::Reconciler;
use crate::store::{Lease, Store};

/// How long a lease lasts without renewal, by the database's clock: a
/// leader killed is replaced within this and one `TRY_EVERY`.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// The lease's TTL on SQLite, where one process serves the file (and
/// opening it frees the lease): a stall of the disk does not depose it.
pub const SINGLE_PROCESS_LEASE_TTL: Duration = Duration::from_secs(3600);

/// How often the leader renews its lease, and the others try to take it.
pub const TRY_EVERY: Duration = Duration::from_secs(1);

/// This process's name among the replicas: host, process id and a random
/// part (a restarted process is a new replica).
pub fn replica_id() -> String {
    let host = hostname().unwrap_or_else(|| "host".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    strato_core::naming::is_host_name(name).then(|| name.to_owned())
}

/// Takes the lease when it is free, renews it while held, and publishes
/// what this replica holds (`None` while another leads) until `stop`; then
/// gives it up, so another replica takes over at once.
pub async fn hold_lease<S: Store>(
    store: S,
    holder: String,
    ttl: Duration,
    held_tx: watch::Sender<Option<Lease>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    // The epoch held, and when the renewal that last succeeded began: the
    // database's expiry is no earlier than that and the TTL.
    let mut held: Option<(i64, Instant)> = None;
    loop {
        let began = Instant::now();
        let tried = tokio::time::timeout(
            ttl.min(LEASE_TTL),
            store.lead(&holder, held.map(|(epoch, _)| epoch), ttl_ms),
        )
        .await;
        match tried {
            Ok(Ok(Some(epoch))) => {
                if held.is_none_or(|(e, _)| e != epoch) {
                    tracing::info!(replica = %holder, epoch, "took the leader lease: this replica leads");
                }
                held = Some((epoch, began));
                held_tx.send_if_modified(|now| {
                    let lease = Some(Lease {
                        holder: holder.clone(),
                        epoch,
                    });
                    let changed = *now != lease;
                    *now = lease;
                    changed
                });
            }
            Ok(Ok(None)) => {
                if let Some((epoch, _)) = held.take() {
                    tracing::warn!(replica = %holder, epoch, "lost the leader lease; another replica leads");
                }
                held_tx.send_if_modified(|now| now.take().is_some());
            }
            Ok(Err(e)) => {
                tracing::warn!(replica = %holder, error = %e, "cannot take or renew the leader lease");
            }
            Err(_) => {
                tracing::warn!(replica = %holder, "the database did not answer about the leader lease in time");
            }
        }
        // Unrenewed past its TTL: it ran out (its writes are fenced anyway).
        if let Some((epoch, renewed)) = held
            && renewed.elapsed() >= ttl
        {
            tracing::warn!(replica = %holder, epoch, "the leader lease ran out unrenewed");
            held = None;
            held_tx.send_if_modified(|now| now.take().is_some());
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(TRY_EVERY) => {}
        }
    }
    held_tx.send_if_modified(|now| now.take().is_some());
    if let Some((epoch, _)) = held {
        let lease = Lease { holder, epoch };
        match store.resign(&lease).await {
            Ok(()) => tracing::info!(epoch, "gave the leader lease up"),
            Err(e) => tracing::warn!(error = %e, "cannot give the leader lease up; it runs out"),
        }
    }
}

/// Runs the reconcile loop while this replica holds the lease, through the
/// store fenced by it, until `stop` turns true (the pass under way
/// finishes first). Each time it takes the lease it first removes what the
/// provider holds of nodes the store does not know.
pub async fn reconcile_while_leading<S: Store>(
    plane: Arc<Plane<S>>,
    mut held: watch::Receiver<Option<Lease>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let lease = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            lease = held.wait_for(Option::is_some) => match lease {
                Ok(lease) => lease.clone(),
                Err(_) => return,
            },
        };
        let Some(lease) = lease else { continue };
        let store = plane.store.fenced(lease.clone());
        crate::remove_orphans(&store, plane.provider.as_ref()).await;
        let (mut lost, mut stopping) = (held.clone(), stop.clone());
        let until = async move {
            tokio::select! {
                _ = lost.wait_for(|now| now.as_ref() != Some(&lease)) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        };
        Reconciler::new(plane.clone(), store).run(until).await;
        if *stop.borrow() {
            return;
        }
        // The loop ended: the lease changed, or a write was fenced. Wait
        // for this replica's next lease (a fenced write means the lease is
        // gone: the next renewal says so).
        let current = held.borrow().clone();
        if current.is_some() {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = held.changed() => {}
            }
        }
    }
}
