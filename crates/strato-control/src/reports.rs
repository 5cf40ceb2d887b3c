//! The report and log writers: agents' attempt reports (preparing,
//! running, ended) and their output, from every session of this replica,
//! stored together.
//!
//! A session hands its report or log message over and waits for the
//! outcome before it reads the agent's next message, so a node's reports
//! and lines are stored in the order it sent them and nothing is answered
//! before its commit. While one batch is written, those that arrive
//! meanwhile queue up and go as the next batch, in one transaction: a
//! thousand nodes ending jobs at once, or printing a line each, cost a few
//! commits, not a thousand. A refusal is the outcome of its own report or
//! message (`Store::report_attempts` writes the others again without a
//! report that failed; `Store::append_node_logs` refuses a message before
//! it writes anything of it); a batch the database cannot write answers
//! each of its items with that error, and their sessions close (agents
//! send again).
//!
//! Bounds: `REPORT_QUEUE` (4,096) reports wait at most (a session waits
//! for room beyond that), `REPORT_BATCH` (128) go in one transaction;
//! `LOG_QUEUE` (4,096) log messages wait at most, and a transaction takes
//! messages until it holds `LOG_BATCH_LINES` (1,024) lines or more (an
//! agent sends at most `limits::MAX_LOG_BATCH_LINES`, 256, a message; the
//! gRPC message size bounds what another could send).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::store::{NodeLogs, NodeReport, ReportOutcome, Store, StoreError};

/// Reports waiting to be written, at most.
pub const REPORT_QUEUE: usize = 4_096;
/// Reports written in one transaction, at most: a batch holds the write
/// lock (on PostgreSQL every replica's) for some ten statements a report.
pub const REPORT_BATCH: usize = 128;
/// Log messages waiting to be written, at most.
pub const LOG_QUEUE: usize = 4_096;
/// Log lines a transaction takes messages until it holds (a statement a
/// line, and three a message).
pub const LOG_BATCH_LINES: usize = 1_024;

/// What waits in a writer's queue: an item, when it came, and who waits
/// for its outcome.
struct Pending<T, O> {
    item: T,
    now: i64,
    outcome: oneshot::Sender<Result<O, StoreError>>,
}

/// Hands items to a writer task that stores them in batches; the task
/// ends when the last handle is dropped.
struct Writer<T, O> {
    queue: mpsc::Sender<Pending<T, O>>,
    what: &'static str,
}

impl<T: Send + 'static, O: Send + 'static> Writer<T, O> {
    /// Starts the writer task on the current runtime: `write` stores a
    /// batch (at the latest arrival's time) and answers each item of it;
    /// a batch takes items until their `weight` reaches `batch`.
    fn start<F, Fut>(
        what: &'static str,
        queue: usize,
        batch: usize,
        weight: fn(&T) -> usize,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<T>, i64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>> + Send + 'static,
    {
        let (tx, pending) = mpsc::channel(queue);
        tokio::spawn(run(what, pending, batch, weight, write));
        Writer { queue: tx, what }
    }

    /// Stores `item` (received at `now`) with the others waiting, and
    /// answers once its batch is committed. A batch is stored at its
    /// latest arrival's time, which is at most its wait for the batch
    /// before it later than `now`.
    async fn store(&self, item: T, now: i64) -> Result<O, StoreError> {
        let (outcome, answer) = oneshot::channel();
        let stopped = || unstored(self.what, "its writer has stopped");
        self.queue
            .send(Pending { item, now, outcome })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn unstored(what: &str, why: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(format!(
        "the {what} was not stored: {why}"
    ))))
}

async fn run<T, O, F, Fut>(
    what: &'static str,
    mut pending: mpsc::Receiver<Pending<T, O>>,
    batch_weight: usize,
    weight: fn(&T) -> usize,
    write: F,
) where
    T: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<T>, i64) -> Fut,
    Fut: Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>> + Send + 'static,
{
    while let Some(first) = pending.recv().await {
        let mut held = weight(&first.item);
        let mut batch = vec![first];
        while held < batch_weight {
            match pending.try_recv() {
                Ok(p) => {
                    held += weight(&p.item);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // The latest arrival's time: the batch is stored after it.
        let now = batch.iter().map(|p| p.now).max().unwrap_or_default();
        let (items, waiting): (Vec<T>, Vec<_>) =
            batch.into_iter().map(|p| (p.item, p.outcome)).unzip();
        // In a task of its own: a panic answers this batch with an error
        // and the writer goes on.
        let written = tokio::spawn(write(items, now))
            .await
            .unwrap_or_else(|e| Err(unstored(what, &format!("its writer failed: {e}"))));
        match written {
            Ok(outcomes) => {
                for (outcome, answer) in outcomes.into_iter().zip(waiting) {
                    let _ = answer.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(count = waiting.len(), error = %e, "a batch ({what}s) was not stored; their agents send them again");
                let why = e.to_string();
                for answer in waiting {
                    let _ = answer.send(Err(unstored(what, &why)));
                }
            }
        }
    }
}

/// Agents' attempt reports, stored in batches.
pub struct ReportWriter(Writer<NodeReport, ReportOutcome>);

impl ReportWriter {
    /// Starts the writer task on the current runtime.
    pub fn start<S: Store>(store: S) -> Self {
        ReportWriter(Writer::start(
            "report",
            REPORT_QUEUE,
            REPORT_BATCH,
            |_| 1,
            move |reports: Vec<NodeReport>, now| {
                let store = store.clone();
                async move { store.report_attempts(&reports, now).await }
            },
        ))
    }

    /// Stores `report` (received at `now`) with the others waiting, and
    /// answers as `Store::report_attempt` would once its batch is
    /// committed.
    pub async fn report(&self, report: NodeReport, now: i64) -> Result<ReportOutcome, StoreError> {
        self.0.store(report, now).await
    }
}

/// Agents' log messages, stored in batches.
pub struct LogWriter(Writer<NodeLogs, ()>);

impl LogWriter {
    /// Starts the writer task on the current runtime.
    pub fn start<S: Store>(store: S) -> Self {
        LogWriter(Writer::start(
            "log message",
            LOG_QUEUE,
            LOG_BATCH_LINES,
            |logs| logs.lines.len().max(1),
            move |batch: Vec<NodeLogs>, now| {
                let store = store.clone();
                async move { store.append_node_logs(&batch, now).await }
            },
        ))
    }

    /// Stores `logs` (received at `now`) with the others waiting, and
    /// answers once its batch is committed: stored, refused as
    /// `Store::append_logs` refuses, or the batch's error.
    pub async fn append(&self, logs: NodeLogs, now: i64) -> Result<(), StoreError> {
        self.0.store(logs, now).await
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

    /// A test writer's answer to one item.
    type Answer = oneshot::Receiver<Result<usize, StoreError>>;

    /// Queues items of these weights before a writer runs; its answers'
    /// receivers.
    fn queued(weights: &[usize]) -> (mpsc::Receiver<Pending<usize, usize>>, Vec<Answer>) {
        let (tx, rx) = mpsc::channel(LOG_QUEUE);
        let mut answers = Vec::new();
        for weight in weights {
            let (outcome, answer) = oneshot::channel();
            let queued = tx.try_send(Pending {
                item: *weight,
                now: 1,
                outcome,
            });
            assert!(queued.is_ok());
            answers.push(answer);
        }
        (rx, answers)
    }

    #[tokio::test]
    async fn a_batch_takes_messages_until_it_holds_its_lines() {
        // Everything queued before the writer runs: each batch takes what
        // is waiting until its weight reaches the bound, the item that
        // crosses it included, and nothing after; each item is answered
        // with its own outcome.
        let weights = [300, 300, 300, 300, 10, 1_024, 1, 2];
        let (rx, answers) = queued(&weights);
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = batches.clone();
        run(
            "test item",
            rx,
            LOG_BATCH_LINES,
            |lines: &usize| *lines,
            move |items: Vec<usize>, _| {
                seen.lock().expect("not poisoned").push(items.clone());
                // Each item's outcome is its own weight, doubled.
                async move { Ok(items.into_iter().map(|w| Ok(w * 2)).collect()) }
            },
        )
        .await;
        assert_eq!(
            *batches.lock().expect("not poisoned"),
            vec![vec![300, 300, 300, 300], vec![10, 1_024], vec![1, 2]]
        );
        for (answer, weight) in answers.into_iter().zip(weights) {
            assert_eq!(answer.await.expect("answered").expect("stored"), weight * 2);
        }
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_written_answers_each_item_with_the_error() {
        let (rx, answers) = queued(&[1, 1, 1]);
        run(
            "test item",
            rx,
            LOG_BATCH_LINES,
            |_: &usize| 1,
            |_: Vec<usize>, _| async {
                Err::<Vec<Result<usize, StoreError>>, _>(StoreError::Corrupt("disk on fire".into()))
            },
        )
        .await;
        for answer in answers {
            let e = answer.await.expect("answered").expect_err("not stored");
            assert!(
                e.to_string().contains("the test item was not stored")
                    && e.to_string().contains("disk on fire"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn log_messages_sent_at_once_are_each_answered_and_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqlStore::open(dir.path()).await.expect("store opens");
        given_cluster(&store, "cpu").await;
        let ids: Vec<String> = (0..8).map(|n| format!("cpu-n{n}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let nodes = given_idle_nodes(&store, "cpu", &ids).await;
        for node in &nodes {
            let job_id = format!("job-on-{node}");
            store
                .submit_job(&job_id, job("cpu"), "", 3)
                .await
                .expect("submit");
            store
                .assign_job(&job_id, std::slice::from_ref(node), 4)
                .await
                .expect("assign");
        }
        let writer = Arc::new(LogWriter::start(store.clone()));
        let send = |node: &str, job_id: String, line: &str| {
            let (writer, node, line) = (writer.clone(), node.to_owned(), line.to_owned());
            tokio::spawn(async move {
                let logs = NodeLogs {
                    node_id: node,
                    job_id,
                    attempt: 1,
                    lines: vec![crate::store::LogRecord {
                        pos: 0,
                        rank: 0,
                        attempt: 1,
                        seq: 1,
                        stream: 1,
                        line,
                        at: 5,
                    }],
                };
                writer.append(logs, 5).await
            })
        };
        // Every node prints a line, and one sends a line of a job it was
        // not given, all at once.
        let mut sent: Vec<_> = nodes
            .iter()
            .map(|node| {
                send(
                    node,
                    format!("job-on-{node}"),
                    &format!("hello from {node}"),
                )
            })
            .collect();
        sent.push(send(&nodes[0], format!("job-on-{}", nodes[1]), "sneaky"));
        let mut outcomes = Vec::new();
        for s in sent {
            outcomes.push(s.await.expect("task"));
        }
        let refused = outcomes.pop().expect("the stray line's outcome");
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        for node in &nodes {
            let lines: Vec<String> = store
                .logs(&format!("job-on-{node}"), None, 10)
                .await
                .expect("logs")
                .into_iter()
                .map(|l| l.line)
                .collect();
            assert_eq!(lines, [format!("hello from {node}")]);
        }
    }
}
