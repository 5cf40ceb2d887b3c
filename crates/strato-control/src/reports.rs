//! The report writer: agents' attempt reports (preparing, running, ended)
//! from every session of this replica, stored together.
//!
//! A session hands its report over and waits for the outcome before it
//! reads the agent's next message, so a node's reports are stored in the
//! order it sent them and nothing is answered before its commit. While
//! one batch is written, the reports that arrive meanwhile queue up and
//! go as the next batch (`Store::report_attempts`: one transaction; should
//! one report fail, each is written alone and answered with its own
//! outcome): a thousand nodes ending jobs at once cost a few commits, not
//! a thousand.
//!
//! Bounds: `REPORT_QUEUE` (4,096) reports wait at most (a session waits
//! for room beyond that), `REPORT_BATCH` (128) go in one transaction.

use tokio::sync::{mpsc, oneshot};

use crate::store::{NodeReport, ReportOutcome, Store, StoreError};

/// Reports waiting to be written, at most.
pub const REPORT_QUEUE: usize = 4_096;
/// Reports written in one transaction, at most: a batch holds the write
/// lock (on PostgreSQL every replica's) for some ten statements a report.
pub const REPORT_BATCH: usize = 128;

struct Pending {
    report: NodeReport,
    now: i64,
    outcome: oneshot::Sender<Result<ReportOutcome, StoreError>>,
}

/// Hands reports to the writer task; the task ends when the last handle
/// is dropped.
pub struct ReportWriter {
    queue: mpsc::Sender<Pending>,
}

impl ReportWriter {
    /// Starts the writer task on the current runtime.
    pub fn start<S: Store>(store: S) -> Self {
        let (queue, pending) = mpsc::channel(REPORT_QUEUE);
        tokio::spawn(write(store, pending));
        ReportWriter { queue }
    }

    /// Stores `report` (received at `now`) with the others waiting, and
    /// answers as `Store::report_attempt` would once its batch is
    /// committed. A batch is stored at its latest arrival's time, which
    /// is at most its wait for the batch before it later than `now`.
    pub async fn report(&self, report: NodeReport, now: i64) -> Result<ReportOutcome, StoreError> {
        let (outcome, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                report,
                now,
                outcome,
            })
            .await
            .map_err(|_| unstored("the report writer has stopped"))?;
        answer
            .await
            .map_err(|_| unstored("the report writer has stopped"))?
    }
}

fn unstored(why: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(format!(
        "the report was not stored: {why}"
    ))))
}

async fn write<S: Store>(store: S, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(REPORT_BATCH);
    while pending.recv_many(&mut batch, REPORT_BATCH).await > 0 {
        let reports: Vec<NodeReport> = batch.iter().map(|p| p.report.clone()).collect();
        // The latest arrival's time: the batch is stored after it.
        let now = batch.iter().map(|p| p.now).max().unwrap_or_default();
        // In a task of its own: a panic answers this batch with an error
        // and the writer goes on.
        let store = store.clone();
        let written = tokio::spawn(async move { store.report_attempts(&reports, now).await })
            .await
            .unwrap_or_else(|e| Err(unstored(&format!("the writer failed: {e}"))));
        match written {
            Ok(outcomes) => {
                for (p, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = p.outcome.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(reports = batch.len(), error = %e, "a batch of attempt reports was not stored; their agents send them again");
                let why = e.to_string();
                for p in batch.drain(..) {
                    let _ = p.outcome.send(Err(unstored(&why)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::conformance::{given_cluster, given_idle_nodes, job};
    use crate::store::{AttemptReport, SqlStore};
    use strato_core::job::JobState;

    #[tokio::test]
    async fn reports_sent_at_once_are_each_answered_with_their_own_outcome() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqlStore::open(dir.path()).await.expect("store opens");
        let mut placed = Vec::new();
        for c in 0..4 {
            let cluster = format!("cpu{c}");
            given_cluster(&store, &cluster).await;
            let ids: Vec<String> = (0..4).map(|n| format!("{cluster}-n{n}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            for node in given_idle_nodes(&store, &cluster, &ids).await {
                let job_id = format!("job-on-{node}");
                store
                    .submit_job(&job_id, job(&cluster), "", 3)
                    .await
                    .expect("submit");
                store
                    .assign_job(&job_id, std::slice::from_ref(&node), 4)
                    .await
                    .expect("assign");
                placed.push((node, job_id));
            }
        }
        let writer = Arc::new(ReportWriter::start(store.clone()));
        let send = |node: String, job_id: String, report: AttemptReport| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let report = NodeReport {
                    node_id: node,
                    job_id,
                    attempt: 1,
                    report,
                };
                writer.report(report, 5).await
            })
        };
        // Every node says its job runs, and one speaks of a job it was not
        // given, all at once.
        let mut sent: Vec<_> = placed
            .iter()
            .map(|(node, job_id)| send(node.clone(), job_id.clone(), AttemptReport::Running))
            .collect();
        sent.push(send(
            placed[0].0.clone(),
            placed[1].1.clone(),
            AttemptReport::Running,
        ));
        let mut outcomes = Vec::new();
        for s in sent {
            outcomes.push(s.await.expect("task").expect("stored"));
        }
        let stale = outcomes.pop();
        assert_eq!(stale, Some(ReportOutcome::Stale));
        assert!(
            outcomes.iter().all(|o| *o == ReportOutcome::Recorded),
            "{outcomes:?}"
        );
        for (_, job_id) in &placed {
            let stored = store.get_job(job_id).await.expect("job");
            assert_eq!(stored.state, JobState::Running, "{job_id}");
        }
    }
}
