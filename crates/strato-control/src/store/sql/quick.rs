//! The common reports of a batch written together: a single-rank job's
//! rank started (its job was preparing on a preparing node) and its rank
//! ended (on the node that runs it). Each is decided as `report_in`
//! decides it, from what the batch read before (`ReportReads`: its job and
//! rank, and its node, none of them written since in the transaction),
//! and written with the others of its kind: a few statements for the
//! batch instead of some six a report. Every other report goes through
//! `report_in`, after what is queued here is written.

use strato_core::job::{self, AttemptEnd, GangStep};
use strato_core::lifecycle::{self, AttemptEnded, Transition};
use strato_core::node::NodeState;

use sqlx::AnyConnection;

use super::jobs::attempt_ended;
use super::values_from;
use crate::store::{AttemptReport, JobRecord, NodeRecord, ReportOutcome, StoreError};

/// Reports decided and waiting to be written, in arrival order.
#[derive(Default)]
pub(super) struct QuickReports {
    /// (job, attempt, rank) whose container started.
    started: Vec<(String, u32, u32)>,
    /// (job, attempt, rank, exit code, reason) whose container stopped.
    ended_ranks: Vec<(String, u32, u32, Option<i64>, String)>,
    /// (job, what ending its attempt changes).
    ended_jobs: Vec<(String, u32, AttemptEnded)>,
    /// (job, transition) of jobs that started running.
    running_jobs: Vec<(String, Transition)>,
    /// Every transition, in order.
    transitions: Vec<(String, Transition)>,
    /// (node, its new state, its run).
    nodes: Vec<(String, NodeState, Option<String>)>,
}

impl QuickReports {
    /// Decides `report` of `job_id`'s `attempt` from `node_id` here when it
    /// is one of the common kinds, from `job` and `rank` (as read) and
    /// `node` (as read): its outcome, the writes queued; `None` (nothing
    /// queued) for `report_in` to store.
    pub(super) fn decide(
        &mut self,
        job: &JobRecord,
        rank: Option<(u32, bool)>,
        node: Option<&NodeRecord>,
        node_id: &str,
        attempt: u32,
        report: &AttemptReport,
    ) -> Option<ReportOutcome> {
        let (rank, false) = rank? else {
            return None;
        };
        let node = node?;
        let nodes = job
            .attempts
            .iter()
            .find(|a| a.attempt == attempt)
            .map(|a| a.node_ids.as_slice())?;
        let current = job.attempt == attempt && job.state.on_node();
        if !current || nodes.len() != 1 || job.spec.node_count > 1 {
            return None;
        }
        match report {
            AttemptReport::Running => {
                if node.state != NodeState::Preparing {
                    return None;
                }
                let t = lifecycle::rank_started(job.state, attempt, nodes, node_id, 0)?;
                self.started.push((job.id.clone(), attempt, rank));
                self.nodes
                    .push((node_id.to_owned(), NodeState::Running, Some(job.id.clone())));
                self.running_jobs.push((job.id.clone(), t.clone()));
                self.transitions.push((job.id.clone(), t));
                Some(ReportOutcome::Recorded)
            }
            AttemptReport::Ended(end, reason) => {
                let frees = lifecycle::frees_node(node.state, node.run_id.as_deref(), &job.id);
                let leaves =
                    lifecycle::releases_leaving_node(node.state, node.run_id.as_deref(), &job.id);
                if leaves {
                    return None;
                }
                let end = job::end_on_node(end.clone(), node.state == NodeState::Preempted);
                let exit_code = match end {
                    AttemptEnd::Exited(code) => Some(code),
                    _ => None,
                };
                let GangStep::End(end, why) = job::after_rank(
                    job.spec.distribution,
                    job.spec.node_count,
                    rank,
                    node_id,
                    end,
                    reason,
                    true,
                ) else {
                    return None;
                };
                let ended = attempt_ended(job, end, &why);
                if ended.transitions.is_empty() {
                    return None;
                }
                self.ended_ranks
                    .push((job.id.clone(), attempt, rank, exit_code, reason.clone()));
                self.transitions.extend(
                    ended
                        .transitions
                        .iter()
                        .map(|t| (job.id.clone(), t.clone())),
                );
                self.ended_jobs.push((job.id.clone(), job.attempt, ended));
                if frees {
                    self.nodes.push((node_id.to_owned(), NodeState::Idle, None));
                }
                Some(ReportOutcome::Release)
            }
            AttemptReport::Preparing(_) => None,
        }
    }

    /// Writes what is queued (one statement of each kind) and empties it.
    pub(super) async fn write(
        &mut self,
        conn: &mut AnyConnection,
        now: i64,
    ) -> Result<(), StoreError> {
        let QuickReports {
            started,
            ended_ranks,
            ended_jobs,
            running_jobs,
            transitions,
            nodes,
        } = std::mem::take(self);
        if !started.is_empty() {
            let rows = values_from(1, started.len(), &["TEXT", "BIGINT", "BIGINT"]);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE job_ranks SET started = 1 FROM (VALUES {rows}) AS v
                 WHERE job_ranks.job_id = v.column1 AND job_ranks.attempt = v.column2
                   AND job_ranks.rank = v.column3"
            )));
            for (job, attempt, rank) in &started {
                query = query
                    .bind(job.as_str())
                    .bind(i64::from(*attempt))
                    .bind(i64::from(*rank));
            }
            query.execute(&mut *conn).await?;
        }
        if !ended_ranks.is_empty() {
            let rows = values_from(
                2,
                ended_ranks.len(),
                &["TEXT", "BIGINT", "BIGINT", "BIGINT", "TEXT"],
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE job_ranks SET ended_at = $1, exit_code = v.column4, reason = v.column5
                 FROM (VALUES {rows}) AS v
                 WHERE job_ranks.job_id = v.column1 AND job_ranks.attempt = v.column2
                   AND job_ranks.rank = v.column3 AND job_ranks.ended_at IS NULL"
            )))
            .bind(now);
            for (job, attempt, rank, exit_code, reason) in &ended_ranks {
                query = query
                    .bind(job.as_str())
                    .bind(i64::from(*attempt))
                    .bind(i64::from(*rank))
                    .bind(*exit_code)
                    .bind(reason.as_str());
            }
            query.execute(&mut *conn).await?;
        }
        if !ended_jobs.is_empty() {
            // The attempt's record (`end_attempt`).
            let rows = values_from(2, ended_jobs.len(), &["TEXT", "BIGINT", "TEXT", "BIGINT"]);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE job_attempts SET ended_at = $1, reason = v.column3, exit_code = v.column4
                 FROM (VALUES {rows}) AS v
                 WHERE job_attempts.job_id = v.column1 AND job_attempts.attempt = v.column2
                   AND job_attempts.ended_at IS NULL"
            )))
            .bind(now);
            for (job, attempt, ended) in &ended_jobs {
                query = query
                    .bind(job.as_str())
                    .bind(i64::from(*attempt))
                    .bind(ended.reason.as_str())
                    .bind(ended.exit_code);
            }
            query.execute(&mut *conn).await?;
            // The job: its counts, and its last transition's state.
            let rows = values_from(
                2,
                ended_jobs.len(),
                &[
                    "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "TEXT", "TEXT",
                ],
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE jobs SET attempt = v.column2, failures = v.column3,
                     preemptions = v.column4, node_id = NULL, exit_code = v.column5,
                     state = v.column6, reason = v.column7, updated_at = $1
                 FROM (VALUES {rows}) AS v WHERE jobs.id = v.column1"
            )))
            .bind(now);
            for (job, _, ended) in &ended_jobs {
                let last = ended.transitions.last();
                query = query
                    .bind(job.as_str())
                    .bind(i64::from(ended.attempt))
                    .bind(i64::from(ended.failures))
                    .bind(i64::from(ended.preemptions))
                    .bind(ended.exit_code)
                    .bind(last.map_or("", |t| t.state.as_str()))
                    .bind(last.map_or("", |t| t.reason.as_str()));
            }
            query.execute(&mut *conn).await?;
        }
        if !running_jobs.is_empty() {
            let rows = values_from(2, running_jobs.len(), &["TEXT", "TEXT", "TEXT"]);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE jobs SET state = v.column2, reason = v.column3, updated_at = $1
                 FROM (VALUES {rows}) AS v WHERE jobs.id = v.column1"
            )))
            .bind(now);
            for (job, t) in &running_jobs {
                query = query
                    .bind(job.as_str())
                    .bind(t.state.as_str())
                    .bind(t.reason.as_str());
            }
            query.execute(&mut *conn).await?;
        }
        if !transitions.is_empty() {
            let rows = values_from(
                1,
                transitions.len(),
                &["TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT"],
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO job_transitions (job_id, at, attempt, state, reason) VALUES {rows}"
            )));
            for (job, t) in &transitions {
                query = query
                    .bind(job.as_str())
                    .bind(now)
                    .bind(i64::from(t.attempt))
                    .bind(t.state.as_str())
                    .bind(t.reason.as_str());
            }
            query.execute(&mut *conn).await?;
        }
        if !nodes.is_empty() {
            // `set_node_state` of each (reason cleared).
            let rows = values_from(2, nodes.len(), &["TEXT", "TEXT", "TEXT"]);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE nodes SET state = v.column2, run_id = v.column3, reason = '',
                     state_since = $1,
                     idle_since = CASE WHEN v.column2 = 'idle' THEN $1 ELSE nodes.idle_since END
                 FROM (VALUES {rows}) AS v WHERE nodes.node_id = v.column1"
            )))
            .bind(now);
            for (node, state, run) in &nodes {
                query = query
                    .bind(node.as_str())
                    .bind(state.as_str())
                    .bind(run.as_deref());
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }
}
