//! Multi-node jobs (gangs) and job output.

use strato_core::job::{Distribution, JobSpec, JobState};
use strato_core::node::NodeState;
use strato_core::spec::ClusterSpec;

use super::{
    exited, gang, given_cluster, given_idle_nodes, given_running, job, last_reason, limits, node,
};
use crate::store::{
    AttemptReport, Conflict, GangRank, LogRecord, QUEUED_READ, QueuedJob, RankToStop,
    ReportOutcome, SpecUpdate, Store, StoreError,
};

/// Cluster `mpi` with idle nodes `mpi-n0` and `mpi-n1`, and job `g` of
/// `spec` queued on it at time 3.
async fn given_gang_of_two<S: Store>(store: &S, spec: JobSpec) -> Vec<String> {
    given_cluster(store, "mpi").await;
    let nodes = given_idle_nodes(store, "mpi", &["mpi-n0", "mpi-n1"]).await;
    store.submit_job("g", spec, "", 3).await.expect("submit");
    nodes
}

/// A gang of two: placed together, a failing rank ends the attempt for
/// both, the other rank is then to be stopped, and its node is freed only
/// once its container stopped.
pub async fn a_gang_ends_as_a_whole_and_frees_each_node_when_its_container_stops<S: Store>(
    store: S,
) {
    given_cluster(&store, "mpi").await;
    let nodes = given_idle_nodes(&store, "mpi", &["mpi-n0", "mpi-n1", "mpi-n2"]).await;
    store
        .submit_job("g", gang("mpi", 2, Distribution::Mpi), "", 3)
        .await
        .expect("submit");
    assert_eq!(
        store.queued_jobs("mpi", QUEUED_READ).await.expect("queue"),
        vec![QueuedJob {
            id: "g".into(),
            node_count: 2
        }]
    );
    // All or nothing.
    assert!(matches!(
        store.assign_job("g", &nodes[..1], 4).await,
        Err(StoreError::Conflict(Conflict::WrongNodeCount {
            needs: 2,
            got: 1,
            ..
        }))
    ));
    let job = store.assign_job("g", &nodes[..2], 4).await.expect("assign");
    assert_eq!(job.attempts[0].node_ids, nodes[..2].to_vec());
    assert_eq!(
        last_reason(&job),
        "attempt 1 placed on 2 nodes: mpi-n0, mpi-n1"
    );
    for n in &nodes[..2] {
        store
            .report_attempt(n, "g", 1, AttemptReport::Running, 5)
            .await
            .expect("running");
    }
    assert_eq!(
        store.get_job("g").await.expect("job").state,
        JobState::Running
    );
    assert_eq!(store.gang("g", 1).await.expect("gang").len(), 2);
    // Logs keep their rank; the cursor is the arrival order.
    for (n, line) in [(&nodes[1], "from 1"), (&nodes[0], "from 0")] {
        store
            .append_logs(n, "g", 1, &[line_of(1, 0, line)], 6)
            .await
            .expect("logs");
    }
    let logs = store.logs("g", None, 10).await.expect("logs");
    assert_eq!(
        logs.iter()
            .map(|l| (l.rank, l.line.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "from 1"), (0, "from 0")]
    );
    assert_eq!(
        store
            .logs("g", Some(logs[0].pos), 10)
            .await
            .expect("after")
            .len(),
        1
    );

    // Rank 1 fails: the attempt ends (retried), naming the rank and node.
    let outcome = store
        .report_attempt(&nodes[1], "g", 1, exited(137), 7)
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Release);
    let job = store.get_job("g").await.expect("job");
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert_eq!(
        last_reason(&job),
        "attempt 1 ended (rank 1 (node mpi-n1) exited 137: exited with code 137); retrying as attempt 2 (1 of 1 retries)"
    );
    // Rank 0 still runs: it must be stopped, and its node stays busy.
    assert_eq!(
        store.ranks_to_stop().await.expect("stop"),
        vec![RankToStop {
            job_id: "g".into(),
            attempt: 1,
            node_id: nodes[0].clone()
        }]
    );
    assert!(store.gang("g", 1).await.expect("gang").is_empty());
    assert!(node(&store, &nodes[0]).await.run_id.is_some());
    assert!(node(&store, &nodes[1]).await.run_id.is_none());
    // A late Running report of the ended attempt changes nothing.
    assert_eq!(
        store
            .report_attempt(&nodes[0], "g", 1, AttemptReport::Running, 8)
            .await
            .expect("late running"),
        ReportOutcome::Recorded
    );
    assert_eq!(store.get_job("g").await.expect("job"), job);
    // Its container stopped: released, node free, nothing left to stop.
    let outcome = store
        .report_attempt(&nodes[0], "g", 1, exited(143), 8)
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Release);
    assert!(node(&store, &nodes[0]).await.run_id.is_none());
    assert!(store.ranks_to_stop().await.expect("stop").is_empty());
    let job = store.get_job("g").await.expect("job");
    assert_eq!((job.state, job.failures), (JobState::Queued, 1));
    assert_eq!(
        store.job_counts().await.expect("counts"),
        vec![("mpi".to_owned(), JobState::Queued, 1)]
    );
    // max_nodes cannot drop below a waiting gang: it would block the queue.
    let shrink: SpecUpdate = Box::new(|s: &ClusterSpec| {
        let mut next = s.clone();
        next.max_nodes = 1;
        Ok(next)
    });
    match store.update_cluster("mpi", shrink, &limits(100), 9).await {
        Err(StoreError::Conflict(m)) => {
            assert!(m.to_string().contains("job g needs 2 nodes"), "{m}")
        }
        other => panic!("lowering max_nodes below a gang: {other:?}"),
    }
    // Attempt 2: an eviction notice SIGTERMs rank 1's container; on an
    // evicted node that is a preemption, not a failure.
    let job = store
        .assign_job("g", &nodes[1..3], 10)
        .await
        .expect("assign");
    assert_eq!(job.attempt, 2);
    store
        .node_preempted(&nodes[2], 99_000, "preempted", 11)
        .await
        .expect("preempted");
    store
        .report_attempt(&nodes[2], "g", 2, exited(143), 12)
        .await
        .expect("report");
    let job = store.get_job("g").await.expect("job");
    assert_eq!(
        (job.state, job.attempt, job.failures, job.preemptions),
        (JobState::Queued, 3, 1, 1)
    );
}

/// A gang that failed while one rank still stops is kept, by delete and
/// by retention, until that rank's container has stopped.
pub async fn an_ended_gang_is_kept_while_a_rank_still_stops<S: Store>(store: S) {
    let spec = JobSpec {
        max_retries: 0,
        ..gang("mpi", 2, Distribution::Mpi)
    };
    let nodes = given_gang_of_two(&store, spec).await;
    store.assign_job("g", &nodes, 4).await.expect("assign");
    for n in &nodes {
        store
            .report_attempt(n, "g", 1, AttemptReport::Running, 5)
            .await
            .expect("running");
    }
    store
        .report_attempt(&nodes[1], "g", 1, exited(1), 6)
        .await
        .expect("rank 1 failed");
    assert_eq!(
        store.get_job("g").await.expect("job").state,
        JobState::Failed
    );
    assert!(matches!(
        store.delete_job("g").await,
        Err(StoreError::Conflict(Conflict::JobStillOnNodes { .. }))
    ));
    assert_eq!(
        store
            .delete_jobs_ended_before(i64::MAX, 100)
            .await
            .expect("retention"),
        0
    );
    store
        .report_attempt(&nodes[0], "g", 1, exited(143), 7)
        .await
        .expect("rank 0 stopped");
    store
        .delete_job("g")
        .await
        .expect("deleted once every rank stopped");
}

pub async fn a_gang_runs_once_every_rank_runs<S: Store>(store: S) {
    let nodes = given_gang_of_two(&store, gang("mpi", 2, Distribution::Pytorch)).await;
    store.assign_job("g", &nodes, 4).await.expect("assign");
    assert_eq!(
        store.gang("g", 1).await.expect("gang"),
        vec![
            GangRank {
                rank: 0,
                node_id: "mpi-n0".into()
            },
            GangRank {
                rank: 1,
                node_id: "mpi-n1".into()
            },
        ]
    );
    assert!(
        store
            .gang("g", 2)
            .await
            .expect("no such attempt")
            .is_empty()
    );
    store
        .report_attempt("mpi-n1", "g", 1, AttemptReport::Running, 5)
        .await
        .expect("running");
    assert_eq!(
        store.get_job("g").await.expect("job").state,
        JobState::Preparing
    );
    assert_eq!(node(&store, "mpi-n1").await.state, NodeState::Running);
    assert_eq!(node(&store, "mpi-n0").await.state, NodeState::Preparing);
    store
        .report_attempt("mpi-n0", "g", 1, AttemptReport::Running, 6)
        .await
        .expect("running");
    let j = store.get_job("g").await.expect("job");
    assert_eq!(j.state, JobState::Running);
    assert_eq!(last_reason(&j), "attempt 1 started on 2 nodes");
    assert_eq!(j.node_id.as_deref(), Some("mpi-n0"));
}

pub async fn a_gang_completes_once_every_rank_exited_0<S: Store>(store: S) {
    let nodes = given_gang_of_two(&store, gang("mpi", 2, Distribution::Pytorch)).await;
    given_running(&store, "g", &nodes, 4).await;
    store
        .report_attempt("mpi-n1", "g", 1, exited(0), 5)
        .await
        .expect("rank 1 done");
    // The gang waits for rank 0; rank 1's node is free already.
    assert_eq!(
        store.get_job("g").await.expect("job").state,
        JobState::Running
    );
    assert_eq!(node(&store, "mpi-n1").await.state, NodeState::Idle);
    assert!(store.ranks_to_stop().await.expect("stop").is_empty());
    store
        .report_attempt("mpi-n0", "g", 1, exited(0), 6)
        .await
        .expect("rank 0 done");
    let j = store.get_job("g").await.expect("job");
    assert_eq!((j.state, j.exit_code), (JobState::Completed, Some(0)));
    assert_eq!(last_reason(&j), "every rank exited 0");
    assert_eq!(node(&store, "mpi-n0").await.state, NodeState::Idle);
}

pub async fn an_mpi_worker_ending_first_fails_the_attempt<S: Store>(store: S) {
    let mut spec = gang("mpi", 2, Distribution::Mpi);
    spec.max_retries = 0;
    let nodes = given_gang_of_two(&store, spec).await;
    given_running(&store, "g", &nodes, 4).await;
    store
        .report_attempt("mpi-n1", "g", 1, exited(0), 5)
        .await
        .expect("worker done");
    let j = store.get_job("g").await.expect("job");
    assert_eq!((j.state, j.exit_code), (JobState::Failed, Some(1)));
    assert_eq!(
        last_reason(&j),
        "rank 1 (node mpi-n1) left the gang while mpirun ran: exited with code 0"
    );
    // Rank 0 is then stopped, and its end changes nothing more.
    assert_eq!(store.ranks_to_stop().await.expect("stop").len(), 1);
    store
        .report_attempt("mpi-n0", "g", 1, exited(143), 6)
        .await
        .expect("rank 0 stopped");
    assert_eq!(store.get_job("g").await.expect("job"), j);
}

pub async fn a_lost_rank_ends_the_gang<S: Store>(store: S) {
    let nodes = given_gang_of_two(&store, gang("mpi", 2, Distribution::Mpi)).await;
    given_running(&store, "g", &nodes, 4).await;
    let jobs = store
        .node_unusable("mpi-n1", "no heartbeat", 5)
        .await
        .expect("lost");
    assert_eq!(jobs, ["g"]);
    let j = store.get_job("g").await.expect("job");
    assert_eq!((j.state, j.attempt, j.failures), (JobState::Queued, 2, 1));
    assert_eq!(
        j.attempts[0].reason,
        "rank 1 (node mpi-n1) was lost: node mpi-n1 lost: no heartbeat"
    );
    assert_eq!(
        store.ranks_to_stop().await.expect("stop"),
        vec![RankToStop {
            job_id: "g".into(),
            attempt: 1,
            node_id: "mpi-n0".into()
        }]
    );
}

fn line_of(seq: u64, stream: u8, line: &str) -> LogRecord {
    LogRecord {
        // Both are the store's to set.
        pos: 0,
        rank: 0,
        attempt: 1,
        seq,
        stream,
        line: line.into(),
        at: 100 + i64::try_from(seq).unwrap_or(0),
    }
}

pub async fn logs_keep_arrival_order_rank_and_sequence<S: Store>(store: S) {
    let nodes = given_gang_of_two(&store, gang("mpi", 2, Distribution::Pytorch)).await;
    given_running(&store, "g", &nodes, 4).await;
    let batch = |lines: &[(u64, &str)]| -> Vec<LogRecord> {
        lines.iter().map(|(s, l)| line_of(*s, 1, l)).collect()
    };
    store
        .append_logs("mpi-n0", "g", 1, &batch(&[(1, "a"), (2, "b")]), 10)
        .await
        .expect("batch");
    store
        .append_logs("mpi-n1", "g", 1, &[line_of(1, 2, "x")], 11)
        .await
        .expect("batch");
    // A batch sent again after a reconnect, overlapping what is stored; a
    // NUL in a line is stored as U+FFFD (PostgreSQL's text refuses it).
    store
        .append_logs("mpi-n0", "g", 1, &batch(&[(2, "b"), (3, "c\0d")]), 12)
        .await
        .expect("batch");
    let logs = store.logs("g", None, 100).await.expect("logs");
    assert_eq!(
        logs.iter()
            .map(|l| (l.rank, l.seq, l.stream, l.line.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (0, 1, 1, "a"),
            (0, 2, 1, "b"),
            (1, 1, 2, "x"),
            (0, 3, 1, "c\u{FFFD}d")
        ]
    );
    assert!(logs.windows(2).all(|w| w[0].pos < w[1].pos));
    assert_eq!((logs[0].attempt, logs[0].at), (1, 101));
    // Following: at most `limit` lines after the cursor.
    let page = store.logs("g", Some(logs[0].pos), 2).await.expect("page");
    assert_eq!(page, logs[1..3].to_vec());
    assert!(
        store
            .logs("g", Some(logs[3].pos), 10)
            .await
            .expect("end")
            .is_empty()
    );
    // Output counts as a heartbeat.
    assert_eq!(node(&store, "mpi-n0").await.last_heartbeat, Some(12));
    // The last lines may come after the attempt's end.
    store
        .report_attempt("mpi-n1", "g", 1, exited(1), 13)
        .await
        .expect("ended");
    store
        .append_logs("mpi-n1", "g", 1, &[line_of(2, 2, "last")], 14)
        .await
        .expect("after the end");
    assert_eq!(store.logs("g", None, 100).await.expect("logs").len(), 5);
    assert!(
        store
            .logs("other", None, 100)
            .await
            .expect("none")
            .is_empty()
    );
}

pub async fn logs_of_an_attempt_the_node_does_not_run_are_refused<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes[..1], 4).await;
    for (n, attempt) in [("cpu-n1", 1), ("cpu-n0", 2)] {
        let e = store
            .append_logs(n, "j", attempt, &[line_of(1, 1, "sneaky")], 5)
            .await
            .expect_err("refused");
        assert!(matches!(
            &e,
            StoreError::Conflict(Conflict::NotAttemptOfNode { node, job, attempt: a })
                if node == n && job == "j" && *a == attempt
        ));
        assert_eq!(
            e.to_string(),
            format!("node {n} sent output of attempt {attempt} of job j, which it does not run")
        );
    }
    assert!(store.logs("j", None, 10).await.expect("logs").is_empty());
}

pub async fn lines_past_the_bound_leave_one_marker_and_nothing_more<S: Store>(store: S) {
    use strato_core::limits::MAX_STORED_LINES_PER_RANK as MAX;
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    let lines: Vec<LogRecord> = [MAX - 1, MAX, MAX + 1, MAX + 2]
        .iter()
        .map(|seq| line_of(*seq, 1, "chatty"))
        .collect();
    store
        .append_logs("cpu-n0", "j", 1, &lines, 5)
        .await
        .expect("batch");
    // Sent again after a reconnect: still one marker.
    store
        .append_logs("cpu-n0", "j", 1, &lines[1..], 6)
        .await
        .expect("batch");
    let logs = store.logs("j", None, 10).await.expect("logs");
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert_eq!(logs[0].line, "chatty");
    assert_eq!(
        (
            logs[1].seq,
            logs[1].line.starts_with("[strato] output truncated")
        ),
        (MAX, true)
    );
}

pub async fn log_messages_stored_together_are_refused_one_by_one<S: Store>(store: S) {
    use crate::store::NodeLogs;
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    for (id, node) in [("j0", &nodes[0]), ("j1", &nodes[1])] {
        store
            .submit_job(id, job("cpu"), "", 3)
            .await
            .expect("submit");
        given_running(&store, id, std::slice::from_ref(node), 4).await;
    }
    let message = |node: &str, job: &str, lines: &[(u64, &str)]| NodeLogs {
        node_id: node.to_owned(),
        job_id: job.to_owned(),
        attempt: 1,
        lines: lines.iter().map(|(seq, l)| line_of(*seq, 1, l)).collect(),
    };
    let outcomes = store
        .append_node_logs(
            &[
                message("cpu-n0", "j0", &[(1, "a"), (2, "b")]),
                // Not the attempt of cpu-n1: refused, the others stored.
                message("cpu-n1", "j0", &[(3, "sneaky")]),
                message("cpu-n1", "j1", &[(1, "x")]),
                // A line sent again in the same batch is stored once.
                message("cpu-n0", "j0", &[(2, "b"), (3, "c\0d")]),
            ],
            5,
        )
        .await
        .expect("one transaction");
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok());
    assert!(
        matches!(
            &outcomes[1],
            Err(StoreError::Conflict(Conflict::NotAttemptOfNode { node, job, attempt: 1 }))
                if node == "cpu-n1" && job == "j0"
        ),
        "{:?}",
        outcomes[1]
    );
    let lines = |job: &'static str| {
        let store = store.clone();
        async move {
            store
                .logs(job, None, 10)
                .await
                .expect("logs")
                .into_iter()
                .map(|l| l.line)
                .collect::<Vec<_>>()
        }
    };
    // As `append_logs` stores them: NUL replaced.
    assert_eq!(lines("j0").await, ["a", "b", "c\u{FFFD}d"]);
    assert_eq!(lines("j1").await, ["x"]);
    // Output counts as a sign of life, as a heartbeat does.
    assert_eq!(node(&store, "cpu-n1").await.last_heartbeat, Some(5));
    // Two messages of one rank in one batch share its bound: the second
    // sees the marker the first stored, and stores nothing more.
    use strato_core::limits::MAX_STORED_LINES_PER_RANK as MAX;
    let past = store
        .append_node_logs(
            &[
                message("cpu-n1", "j1", &[(MAX - 1, "y"), (MAX, "z")]),
                message("cpu-n1", "j1", &[(MAX + 1, "z")]),
            ],
            6,
        )
        .await
        .expect("one transaction");
    assert!(past.iter().all(Result::is_ok), "{past:?}");
    let j1 = lines("j1").await;
    assert_eq!(j1.len(), 3, "{j1:?}");
    assert!(j1[2].starts_with("[strato] output truncated"), "{j1:?}");
}
