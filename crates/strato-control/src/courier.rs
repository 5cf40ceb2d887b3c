//! What reaches the agents whose sessions this replica holds, read from
//! the database: the leader (this replica or another) stores placements
//! and cancellations, and each replica's courier sends them on to its own
//! agents. Level-triggered: woken by this replica's events (which the
//! database's notifications raise too, `listen`) and every second.
//!
//! - An attempt placed on a node and not yet sent in its session is sent
//!   once (the leader sends it at once where it holds the session itself).
//! - Stops of canceled jobs' ranks, and of a gang's other ranks once its
//!   attempt ended, go again on every round until the containers stopped
//!   (the agent stops a container once).
//! - A session whose node is gone, or that another replica holds now, is
//!   ended.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strato_core::lifecycle;
use strato_core::node::NodeState;
use strato_proto::v1;

use crate::agents::send_assignment;
use crate::plane::Plane;
use crate::store::{NodeSession, Store, StoreError};

/// The longest a courier sleeps without an event.
const ROUND_EVERY: Duration = Duration::from_secs(1);
/// The shortest time between two rounds (events come in bursts; a round
/// reads every node).
const ROUND_GAP: Duration = Duration::from_millis(50);

/// Runs rounds until `stop`.
pub async fn run<S: Store>(plane: Arc<Plane<S>>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut changes = plane.events.subscribe();
    loop {
        if let Err(e) = round(&plane).await {
            tracing::warn!(error = %e, "courier round failed; trying again");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(ROUND_EVERY) => {}
        }
        tokio::time::sleep(ROUND_GAP).await;
    }
}

/// One round over the sessions this replica holds.
pub async fn round<S: Store>(plane: &Plane<S>) -> Result<(), StoreError> {
    let ready = plane.sessions.ready_nodes();
    if ready.is_empty() {
        return Ok(());
    }
    let held: HashSet<&str> = ready.iter().map(|(id, _)| id.as_str()).collect();
    // A few columns of every node (not whole records): rounds come up
    // to 20 times a second.
    let nodes: HashMap<String, NodeSession> = plane
        .store
        .node_sessions()
        .await?
        .into_iter()
        .filter(|n| held.contains(n.node_id.as_str()))
        .map(|n| (n.node_id.clone(), n))
        .collect();
    for (node_id, generation) in &ready {
        let Some(node) = nodes.get(node_id) else {
            tracing::info!(node = %node_id, "the node is gone: its session ends");
            plane.sessions.drop_node(node_id);
            continue;
        };
        let key = plane.session_key(*generation);
        match node.session_replica.as_deref() {
            Some(k) if k == key => {}
            Some(other) => {
                tracing::info!(node = %node_id, holder = %other, "another session holds the node now: this one ends");
                plane.sessions.drop_node(node_id);
                continue;
            }
            // Cleared by an older session's end racing this one's start:
            // recorded again.
            None => plane.store.session_opened(node_id, &key).await?,
        }
        // Only a node being prepared for a job can be owed its assignment.
        if node.state != NodeState::Preparing {
            continue;
        }
        let Some(job_id) = &node.run_id else { continue };
        // Sent in this session already: nothing is owed, and the job need
        // not be read.
        if node
            .attempt
            .is_some_and(|a| plane.sessions.was_assigned(node_id, job_id, a))
        {
            continue;
        }
        let job = match plane.store.get_job(job_id).await {
            Ok(job) => job,
            Err(StoreError::JobNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let owed = lifecycle::assignment_owed(&lifecycle::AssignmentFacts {
            node: node.state,
            job: job.state,
            placed_on_node: job
                .attempts
                .iter()
                .any(|a| a.attempt == job.attempt && a.node_ids.iter().any(|n| n == node_id)),
            cancel_requested: job.cancel_requested,
            sent_in_session: plane.sessions.was_assigned(node_id, &job.id, job.attempt),
        });
        if owed {
            tracing::info!(node = %node_id, job = %job.id, attempt = job.attempt, "sending the placed attempt to its node");
            send_assignment(plane, &job, Some(node_id)).await;
        }
    }
    let grace = plane.settings.config.cancel_grace;
    for rank in plane.store.ranks_to_stop().await? {
        if held.contains(rank.node_id.as_str()) {
            plane.sessions.send(
                &rank.node_id,
                v1::control_message::Body::Cancel(v1::JobCancellation {
                    job_id: rank.job_id,
                    attempt: rank.attempt,
                    grace_seconds: grace,
                }),
            );
        }
    }
    Ok(())
}

/// On PostgreSQL: raises this replica's events when another process's
/// transaction changed jobs, nodes or ranks (`changed`) or stored output
/// (`output:JOB`), from the database's notifications (sent by triggers at
/// commit; those of this replica's own writes are passed over), until
/// `stop`. A broken connection is made again, and what it
/// may have missed counts as a change.
pub async fn listen<S: Store>(plane: Arc<Plane<S>>, url: String, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut listener = loop {
        let connected = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen("strato").await?;
            Ok::<_, sqlx::Error>(l)
        };
        tokio::select! {
            _ = &mut stop => return,
            l = connected => match l {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen to the database's notifications; trying again");
                    tokio::time::sleep(ROUND_EVERY).await;
                }
            },
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            n = listener.try_recv() => match n {
                Ok(Some(n)) => match n.payload().split_once('|') {
                    // This replica raised its own events as it wrote.
                    Some((from, _)) if from == plane.replica => {}
                    Some((_, what)) => match what.strip_prefix("output:") {
                        Some(job) => plane.events.output(job),
                        None => plane.events.changed(),
                    },
                    None => plane.events.changed(),
                },
                // The connection broke; the next call makes it again.
                Ok(None) => plane.events.changed(),
                Err(e) => {
                    tracing::warn!(error = %e, "the database's notifications; trying again");
                    tokio::time::sleep(ROUND_EVERY).await;
                }
            },
        }
    }
}
