//! A single-node job's life: submit, assign, run, end, retry, cancel, and
//! what the store answers to reports.

use strato_core::job::{AttemptEnd, JobSpec, JobState};
use strato_core::node::NodeState;

use super::{
    exited, given_a_and_b_placed, given_cluster, given_idle_nodes, given_placed, given_running,
    job, last_reason, node, queued_ids, report_of, states,
};
use crate::store::{
    AttemptReport, Conflict, JobPage, LogRecord, QUEUED_READ, QueuedJob, RankToStop, ReportOutcome,
    Store, StoreError,
};

pub async fn job_runs_to_completion<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    let submitted = store
        .submit_job("j", job("cpu"), "token:ci", 10)
        .await
        .expect("submit");
    assert_eq!(
        (submitted.state, submitted.attempt, submitted.created_at),
        (JobState::Queued, 1, 10)
    );
    assert_eq!(
        submitted.submitted_by, "token:ci",
        "who submitted it is kept"
    );
    assert_eq!(last_reason(&submitted), "submitted");
    assert_eq!(
        store.queued_jobs("cpu", QUEUED_READ).await.expect("queue"),
        vec![QueuedJob {
            id: "j".into(),
            node_count: 1
        }]
    );

    let assigned = store.assign_job("j", &nodes, 11).await.expect("assign");
    assert_eq!(
        store.get_job("j").await.expect("job"),
        assigned,
        "what assign answers is what it stored"
    );
    assert_eq!(
        (assigned.state, assigned.node_id.as_deref()),
        (JobState::Preparing, Some("cpu-n0"))
    );
    assert_eq!(last_reason(&assigned), "attempt 1 placed on node cpu-n0");
    assert_eq!(
        (assigned.attempts.len(), assigned.attempts[0].started_at),
        (1, 11)
    );
    assert_eq!(assigned.attempts[0].node_ids, ["cpu-n0"]);
    let n = node(&store, "cpu-n0").await;
    assert_eq!(
        (n.state, n.run_id.as_deref(), n.reason.as_str()),
        (NodeState::Preparing, Some("j"), "preparing a job")
    );
    assert!(queued_ids(&store, "cpu", QUEUED_READ).await.is_empty());

    let outcome = store
        .report_attempt("cpu-n0", "j", 1, AttemptReport::Running, 12)
        .await
        .expect("running");
    assert_eq!(outcome, ReportOutcome::Recorded);
    let running = store.get_job("j").await.expect("job");
    assert_eq!(running.state, JobState::Running);
    assert_eq!(last_reason(&running), "attempt 1 started on node cpu-n0");
    assert_eq!(node(&store, "cpu-n0").await.state, NodeState::Running);
    // Said twice, it is stored once.
    store
        .report_attempt("cpu-n0", "j", 1, AttemptReport::Running, 13)
        .await
        .expect("running again");
    assert_eq!(store.get_job("j").await.expect("job"), running);

    let outcome = store
        .report_attempt("cpu-n0", "j", 1, exited(0), 14)
        .await
        .expect("ended");
    assert_eq!(outcome, ReportOutcome::Release);
    let done = store.get_job("j").await.expect("job");
    assert_eq!(
        (
            done.state,
            done.exit_code,
            done.node_id.as_deref(),
            done.updated_at
        ),
        (JobState::Completed, Some(0), None, 14)
    );
    assert_eq!(
        states(&done),
        [
            JobState::Queued,
            JobState::Preparing,
            JobState::Running,
            JobState::Completed
        ]
    );
    assert_eq!(last_reason(&done), "exited with code 0");
    assert_eq!(
        (done.attempts[0].ended_at, done.attempts[0].exit_code),
        (Some(14), Some(0))
    );
    let n = node(&store, "cpu-n0").await;
    assert_eq!(
        (n.state, n.run_id, n.idle_since),
        (NodeState::Idle, None, 14)
    );
    // The agent reports again (e.g. after a reconnect): release once more.
    assert_eq!(
        store
            .report_attempt("cpu-n0", "j", 1, exited(0), 15)
            .await
            .expect("again"),
        ReportOutcome::Release
    );
    assert_eq!(store.get_job("j").await.expect("job"), done);
    assert!(store.ranks_to_stop().await.expect("stop").is_empty());
}

pub async fn reports_are_stored_together_and_answered_one_by_one<S: Store>(store: S) {
    given_a_and_b_placed(&store).await;
    let outcomes = store
        .report_attempts(
            &[
                report_of("cpu-n0", "a", AttemptReport::Running),
                report_of("cpu-n1", "b", AttemptReport::Running),
                // After the report before it, in the same transaction.
                report_of("cpu-n0", "a", exited(0)),
                // A job that does not exist, and one the node was not given.
                report_of("cpu-n0", "gone", AttemptReport::Running),
                report_of("cpu-n0", "b", exited(1)),
            ],
            5,
        )
        .await
        .expect("one batch");
    let outcomes: Vec<ReportOutcome> = outcomes
        .into_iter()
        .map(|o| o.expect("each answered"))
        .collect();
    assert_eq!(
        outcomes,
        [
            ReportOutcome::Recorded,
            ReportOutcome::Recorded,
            ReportOutcome::Release,
            ReportOutcome::Stale,
            ReportOutcome::Stale
        ]
    );
    let a = store.get_job("a").await.expect("job a");
    assert_eq!(
        (a.state, a.exit_code, a.updated_at),
        (JobState::Completed, Some(0), 5)
    );
    assert_eq!(
        states(&a),
        [
            JobState::Queued,
            JobState::Preparing,
            JobState::Running,
            JobState::Completed
        ]
    );
    let b = store.get_job("b").await.expect("job b");
    assert_eq!(
        (b.state, last_reason(&b)),
        (JobState::Running, "attempt 1 started on node cpu-n1")
    );
    assert_eq!(
        (
            node(&store, "cpu-n0").await.state,
            node(&store, "cpu-n1").await.state
        ),
        (NodeState::Idle, NodeState::Running)
    );
    assert!(
        store
            .report_attempts(&[], 6)
            .await
            .expect("no reports")
            .is_empty()
    );
}

/// Reports stored in batches (where a store writes the common ones
/// together) leave jobs and nodes as the same reports one by one do: a
/// job that completes, one that fails and goes back to the queue, one
/// canceled while it runs.
pub async fn reports_in_a_batch_store_what_one_by_one_stores<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let ids = ["cpu-n0", "cpu-n1", "cpu-n2", "cpu-n3", "cpu-n4", "cpu-n5"];
    let nodes = given_idle_nodes(&store, "cpu", &ids).await;
    let jobs = [
        "batch-0", "batch-1", "batch-2", "alone-0", "alone-1", "alone-2",
    ];
    given_placed(&store, &jobs, &nodes).await;
    let of = |i: usize, report: AttemptReport| report_of(&nodes[i], jobs[i], report);
    let rounds = [
        (5, [0, 1, 2].map(|i| of(i, AttemptReport::Running))),
        (7, [of(0, exited(0)), of(1, exited(1)), of(2, exited(137))]),
    ];
    for (at, batch) in &rounds {
        if *at == 7 {
            for id in ["batch-2", "alone-2"] {
                store.cancel_job(id, 6).await.expect("cancel");
            }
        }
        let outcomes = store.report_attempts(batch, *at).await.expect("batch");
        for r in batch {
            // The same report of the other job, on its own.
            let i = jobs.iter().position(|j| *j == r.job_id).expect("job") + 3;
            let alone = store
                .report_attempt(&nodes[i], jobs[i], 1, r.report.clone(), *at)
                .await
                .expect("alone");
            assert!(outcomes.iter().any(|o| o.as_ref().ok() == Some(&alone)));
        }
    }
    let same = |text: String| {
        let mut text = text;
        for (i, id) in nodes.iter().enumerate() {
            text = text.replace(id.as_str(), &format!("node-{}", i % 3));
        }
        text.replace("batch-", "job-").replace("alone-", "job-")
    };
    for i in 0..3 {
        let batched = store.get_job(jobs[i]).await.expect("batched");
        let alone = store.get_job(jobs[i + 3]).await.expect("alone");
        assert_eq!(same(format!("{batched:?}")), same(format!("{alone:?}")));
        let (b, a) = (
            node(&store, &nodes[i]).await,
            node(&store, &nodes[i + 3]).await,
        );
        assert_eq!(
            same(format!(
                "{:?}",
                (b.state, &b.run_id, &b.reason, b.state_since, b.idle_since)
            )),
            same(format!(
                "{:?}",
                (a.state, &a.run_id, &a.reason, a.state_since, a.idle_since)
            )),
        );
    }
    let states: Vec<JobState> =
        futures_util::future::join_all(jobs[..3].iter().map(|id| store.get_job(id)))
            .await
            .into_iter()
            .map(|j| j.expect("job").state)
            .collect();
    assert_eq!(
        states,
        [JobState::Completed, JobState::Queued, JobState::Canceled]
    );
}

pub async fn a_failing_job_retries_until_max_retries_then_fails<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    let mut spec = job("cpu");
    spec.max_retries = 2;
    store.submit_job("j", spec, "", 3).await.expect("submit");
    for attempt in 1..=2 {
        given_running(&store, "j", &nodes, 4).await;
        store
            .report_attempt("cpu-n0", "j", attempt, exited(3), 5)
            .await
            .expect("failed");
        let j = store.get_job("j").await.expect("job");
        assert_eq!(
            (j.state, j.attempt, j.failures, j.exit_code),
            (JobState::Queued, attempt + 1, attempt, Some(3))
        );
        assert_eq!(
            last_reason(&j),
            format!(
                "attempt {attempt} ended (exited with code 3); retrying as attempt {} ({attempt} of 2 retries)",
                attempt + 1
            )
        );
        assert_eq!(node(&store, "cpu-n0").await.state, NodeState::Idle);
    }
    given_running(&store, "j", &nodes, 6).await;
    store
        .report_attempt("cpu-n0", "j", 3, exited(3), 7)
        .await
        .expect("failed");
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (j.state, j.attempt, j.failures, j.exit_code),
        (JobState::Failed, 3, 2, Some(3))
    );
    assert_eq!(last_reason(&j), "exited with code 3");
    assert_eq!(j.attempts.len(), 3);
    assert!(j.attempts.iter().all(|a| a.exit_code == Some(3)));
}

pub async fn an_attempt_that_cannot_start_is_not_retried<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    store.assign_job("j", &nodes, 4).await.expect("assign");
    let report = AttemptReport::Ended(AttemptEnd::CannotStart, "image img not found".into());
    store
        .report_attempt("cpu-n0", "j", 1, report, 5)
        .await
        .expect("report");
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (j.state, j.attempt, j.failures, j.exit_code),
        (JobState::Failed, 1, 0, None)
    );
    assert_eq!(last_reason(&j), "image img not found");
    assert_eq!(node(&store, "cpu-n0").await.state, NodeState::Idle);
}

pub async fn cancel_while_queued<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    let j = store.cancel_job("j", 4).await.expect("cancel");
    assert_eq!((j.state, j.updated_at), (JobState::Canceled, 4));
    assert_eq!(last_reason(&j), "canceled by user before it started");
    assert!(queued_ids(&store, "cpu", QUEUED_READ).await.is_empty());
    assert!(matches!(
        store.cancel_job("nope", 5).await,
        Err(StoreError::JobNotFound(n)) if n == "nope"
    ));
}

pub async fn cancel_while_running_overrides_the_reported_end<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    for (id, n) in [("ok", &nodes[0]), ("bad", &nodes[1])] {
        store
            .submit_job(id, job("cpu"), "", 3)
            .await
            .expect("submit");
        given_running(&store, id, std::slice::from_ref(n), 4).await;
        let j = store.cancel_job(id, 5).await.expect("cancel");
        assert_eq!(
            (j.state, j.cancel_requested, j.updated_at),
            (JobState::Running, true, 5)
        );
        // Asked again: nothing changes.
        assert_eq!(store.cancel_job(id, 6).await.expect("again"), j);
        assert!(store.gang(id, 1).await.expect("gang").is_empty());
    }
    let mut stop = store.ranks_to_stop().await.expect("stop");
    stop.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    assert_eq!(
        stop,
        vec![
            RankToStop {
                job_id: "bad".into(),
                attempt: 1,
                node_id: "cpu-n1".into()
            },
            RankToStop {
                job_id: "ok".into(),
                attempt: 1,
                node_id: "cpu-n0".into()
            },
        ]
    );
    // Whatever the container's end, the job is canceled, not retried.
    for (id, n, code) in [("ok", "cpu-n0", 0), ("bad", "cpu-n1", 137)] {
        store
            .report_attempt(n, id, 1, exited(code), 7)
            .await
            .expect("report");
        let j = store.get_job(id).await.expect("job");
        assert_eq!(
            (j.state, j.attempt, j.failures, j.exit_code),
            (JobState::Canceled, 1, 0, None)
        );
        assert_eq!(last_reason(&j), "canceled by user");
        assert_eq!(node(&store, n).await.state, NodeState::Idle);
    }
    assert!(store.ranks_to_stop().await.expect("stop").is_empty());
}

pub async fn a_job_past_its_timeout_is_canceled_saying_so<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    let timed = JobSpec {
        timeout_seconds: Some(10),
        ..job("cpu")
    };
    store.submit_job("t", timed, "", 1).await.expect("submit");
    store
        .submit_job("u", job("cpu"), "", 1)
        .await
        .expect("submit");
    given_running(&store, "t", std::slice::from_ref(&nodes[0]), 1_000).await;
    given_running(&store, "u", std::slice::from_ref(&nodes[1]), 1_000).await;
    assert!(
        store
            .cancel_timed_out(10_999)
            .await
            .expect("early")
            .is_empty(),
        "not yet past 10 s"
    );
    let marked = store.cancel_timed_out(11_000).await.expect("past");
    assert_eq!(
        marked
            .iter()
            .map(|j| (j.id.as_str(), j.cancel_requested))
            .collect::<Vec<_>>(),
        [("t", true)],
        "only the job with a timeout, once it is past"
    );
    assert!(
        store
            .cancel_timed_out(12_000)
            .await
            .expect("again")
            .is_empty()
    );
    // Its node stops it; the job ends canceled with the timeout as reason.
    store
        .report_attempt(&nodes[0], "t", 1, exited(137), 12_500)
        .await
        .expect("ended");
    let t = store.get_job("t").await.expect("t");
    assert_eq!(t.state, JobState::Canceled);
    assert_eq!(last_reason(&t), strato_core::job::timeout_reason(10));
}

pub async fn cancel_of_a_finished_job_changes_nothing<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    store
        .report_attempt("cpu-n0", "j", 1, exited(0), 5)
        .await
        .expect("ended");
    let done = store.get_job("j").await.expect("job");
    assert_eq!(store.cancel_job("j", 6).await.expect("cancel"), done);
    assert_eq!(done.state, JobState::Completed);
}

pub async fn an_ended_job_is_deleted_with_its_logs_and_a_live_one_is_not<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    let line = LogRecord {
        pos: 0,
        rank: 0,
        attempt: 1,
        seq: 1,
        stream: 1,
        line: "hello".into(),
        at: 5,
    };
    store
        .append_logs("cpu-n0", "j", 1, &[line], 5)
        .await
        .expect("log");
    assert!(matches!(
        store.delete_job("j").await,
        Err(StoreError::Conflict(Conflict::JobNotEnded {
            state: JobState::Running,
            ..
        }))
    ));
    assert_eq!(
        store.get_job("j").await.expect("kept").state,
        JobState::Running
    );
    store
        .report_attempt("cpu-n0", "j", 1, exited(0), 6)
        .await
        .expect("ended");
    store.delete_job("j").await.expect("delete");
    assert!(matches!(
        store.get_job("j").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(store.logs("j", None, 10).await.expect("logs").is_empty());
    assert!(matches!(
        store.delete_job("j").await,
        Err(StoreError::JobNotFound(_))
    ));
    // A report about it now is stale: the agent releases its container.
    assert_eq!(
        store
            .report_attempt("cpu-n0", "j", 1, exited(0), 7)
            .await
            .expect("report"),
        ReportOutcome::Stale
    );
}

pub async fn jobs_ended_before_the_cutoff_are_deleted_oldest_first<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    for (id, at) in [("old-1", 10), ("old-2", 11), ("old-3", 12), ("new", 50)] {
        store
            .submit_job(id, job("cpu"), "", at)
            .await
            .expect("submit");
        store.cancel_job(id, at).await.expect("canceled at once");
    }
    store
        .submit_job("queued", job("cpu"), "", 1)
        .await
        .expect("submit");
    assert_eq!(store.delete_jobs_ended_before(40, 2).await.expect("two"), 2);
    assert!(matches!(
        store.get_job("old-1").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.get_job("old-2").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert_eq!(
        store
            .delete_jobs_ended_before(40, 100)
            .await
            .expect("the rest"),
        1
    );
    assert_eq!(
        store.delete_jobs_ended_before(40, 100).await.expect("none"),
        0
    );
    for kept in ["new", "queued"] {
        store.get_job(kept).await.expect("kept");
    }
}

pub async fn stale_reports_are_answered_stale_or_release<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes[..1], 4).await;
    let before = store.get_job("j").await.expect("job");
    // A job the store does not know, an attempt never given, another node.
    for (n, j, attempt) in [
        ("cpu-n0", "nope", 1),
        ("cpu-n0", "j", 2),
        ("cpu-n1", "j", 1),
    ] {
        assert_eq!(
            store
                .report_attempt(n, j, attempt, exited(1), 5)
                .await
                .expect("report"),
            ReportOutcome::Stale,
            "{n} {j} {attempt}"
        );
    }
    assert_eq!(store.get_job("j").await.expect("job"), before);
    assert_eq!(node(&store, "cpu-n1").await.state, NodeState::Idle);
}

/// Cluster `cpu` with idle nodes `cpu-n0` and `cpu-n1` (their ids), and
/// jobs `a`, `b`, `c` queued at times 3, 4, 5.
async fn given_a_b_c_queued_and_two_nodes<S: Store>(store: &S) -> Vec<String> {
    given_cluster(store, "cpu").await;
    let nodes = given_idle_nodes(store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let at = 3 + i64::try_from(i).expect("small");
        store
            .submit_job(id, job("cpu"), "", at)
            .await
            .expect("submit");
    }
    nodes
}

/// A pass's placements go in one transaction: each stored as `assign_job`
/// stores it, or refused with nothing of it stored (here: a node an
/// earlier placement of the same batch took, a job that does not exist),
/// and the rest stored all the same.
pub async fn placements_are_stored_together_and_refused_one_by_one<S: Store>(store: S) {
    let nodes = given_a_b_c_queued_and_two_nodes(&store).await;
    // A pass reads as many as it could use, the oldest.
    assert_eq!(queued_ids(&store, "cpu", 2).await, ["a", "b"]);
    let placements = [
        ("a".to_owned(), vec![nodes[0].clone()]),
        ("b".to_owned(), vec![nodes[0].clone()]),
        ("gone".to_owned(), vec![nodes[1].clone()]),
        ("c".to_owned(), vec![nodes[1].clone()]),
    ];
    let results = store
        .assign_jobs(&placements, 10)
        .await
        .expect("one transaction");
    assert_eq!(results.len(), 4);
    let a = results[0].as_ref().expect("a placed");
    assert_eq!(
        (a.state, a.node_id.as_deref()),
        (JobState::Preparing, Some("cpu-n0"))
    );
    assert!(matches!(
        &results[1],
        Err(StoreError::Conflict(Conflict::NodeNotIdle { node, .. })) if node == "cpu-n0"
    ));
    assert!(matches!(&results[2], Err(StoreError::JobNotFound(id)) if id == "gone"));
    let c = results[3].as_ref().expect("c placed");
    assert_eq!(c.node_id.as_deref(), Some("cpu-n1"));
    for placed in [a, c] {
        assert_eq!(
            &store.get_job(&placed.id).await.expect("job"),
            placed,
            "what assign_jobs answers is what it stored"
        );
    }
    let b = store.get_job("b").await.expect("b");
    assert_eq!(
        (b.state, b.node_id, b.attempts.len()),
        (JobState::Queued, None, 0)
    );
    assert_eq!(queued_ids(&store, "cpu", QUEUED_READ).await, ["b"]);
    assert!(
        store
            .assign_jobs(&[], 11)
            .await
            .expect("nothing")
            .is_empty(),
        "an empty pass stores nothing"
    );
}

/// A pass larger than a store writes in one statement (SQL: 250 jobs)
/// refuses, as one by one would, a job placed twice and a node an earlier
/// placement took, whether the earlier one is in the same statement or
/// an earlier one; the others are stored.
pub async fn placements_of_a_large_pass_see_the_earlier_ones<S: Store>(store: S) {
    let nodes = given_a_b_c_queued_and_two_nodes(&store).await;
    let mut placements = vec![
        ("a".to_owned(), vec![nodes[0].clone()]),
        ("a".to_owned(), vec![nodes[1].clone()]),
    ];
    placements.extend((0..300).map(|i| (format!("gone-{i}"), vec![nodes[1].clone()])));
    placements.push(("b".to_owned(), vec![nodes[0].clone()]));
    placements.push(("a".to_owned(), vec![nodes[1].clone()]));
    placements.push(("c".to_owned(), vec![nodes[1].clone()]));
    let results = store
        .assign_jobs(&placements, 10)
        .await
        .expect("one transaction");
    assert_eq!(results.len(), placements.len());
    assert_eq!(
        results[0].as_ref().expect("a placed").node_id.as_deref(),
        Some("cpu-n0")
    );
    for i in [1, 303] {
        assert!(
            matches!(
                &results[i],
                Err(StoreError::Conflict(Conflict::JobNotQueued { job, state: JobState::Preparing }))
                    if job == "a"
            ),
            "placement {i}: {:?}",
            results[i]
        );
    }
    assert!(
        results[2..302]
            .iter()
            .all(|r| matches!(r, Err(StoreError::JobNotFound(_))))
    );
    assert!(
        matches!(
            &results[302],
            Err(StoreError::Conflict(Conflict::NodeNotIdle { node, state: NodeState::Preparing }))
                if node == "cpu-n0"
        ),
        "{:?}",
        results[302]
    );
    let c = results[304].as_ref().expect("c placed");
    assert_eq!(c.node_id.as_deref(), Some("cpu-n1"));
    for id in ["a", "c"] {
        let stored = store.get_job(id).await.expect("job");
        assert_eq!(stored.attempts.len(), 1, "{id} placed once");
        assert_eq!(stored.state, JobState::Preparing);
    }
    assert_eq!(queued_ids(&store, "cpu", QUEUED_READ).await, ["b"]);
    assert_eq!(node(&store, "cpu-n1").await.run_id.as_deref(), Some("c"));
    // A placement without nodes is refused as one with too few.
    let results = store
        .assign_jobs(&[("b".to_owned(), Vec::new())], 11)
        .await
        .expect("one transaction");
    assert!(
        matches!(
            &results[0],
            Err(StoreError::Conflict(Conflict::WrongNodeCount {
                needs: 1,
                got: 0,
                ..
            }))
        ),
        "{results:?}"
    );
}

pub async fn assign_is_all_or_nothing<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1", "cpu-n2"]).await;
    store
        .submit_job("busy", job("cpu"), "", 3)
        .await
        .expect("submit");
    store
        .assign_job("busy", &nodes[..1], 4)
        .await
        .expect("assign");
    store
        .submit_job("j", job("cpu"), "", 5)
        .await
        .expect("submit");

    let e = store
        .assign_job("busy", &nodes[1..2], 6)
        .await
        .expect_err("not queued");
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::JobNotQueued { job, state: JobState::Preparing }) if job == "busy"
    ));
    assert_eq!(e.to_string(), "job busy is preparing, not queued");

    let e = store
        .assign_job("j", &nodes[1..3], 6)
        .await
        .expect_err("two nodes for one");
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::WrongNodeCount {
            needs: 1,
            got: 2,
            ..
        })
    ));
    assert_eq!(e.to_string(), "job j needs 1 nodes, not 2");

    let e = store
        .assign_job("j", &nodes[..1], 6)
        .await
        .expect_err("busy node");
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::NodeNotIdle { node, state: NodeState::Preparing }) if node == "cpu-n0"
    ));
    assert_eq!(e.to_string(), "node cpu-n0 is preparing, not idle");

    assert!(matches!(
        store.assign_job("nope", &nodes[1..2], 6).await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.assign_job("j", &["cpu-gone".to_owned()], 6).await,
        Err(StoreError::NodeNotFound(_))
    ));
    // Nothing of the refused assignments was stored.
    let j = store.get_job("j").await.expect("job");
    assert_eq!((j.state, j.attempts.len()), (JobState::Queued, 0));
    for n in &nodes[1..] {
        assert_eq!(node(&store, n).await.state, NodeState::Idle);
    }
    let j = store.assign_job("j", &nodes[2..], 7).await.expect("assign");
    assert_eq!(j.node_id.as_deref(), Some("cpu-n2"));
}

pub async fn submit_needs_a_cluster_and_stores_its_canonical_name<S: Store>(store: S) {
    assert!(matches!(
        store.submit_job("j", job("cpu"), "", 1).await,
        Err(StoreError::ClusterNotFound(_))
    ));
    assert!(matches!(
        store.get_job("j").await,
        Err(StoreError::JobNotFound(n)) if n == "j"
    ));
    given_cluster(&store, "cpu").await;
    let j = store
        .submit_job("j", job("CPU"), "", 2)
        .await
        .expect("submit");
    assert_eq!(j.spec.cluster, "cpu");
    assert_eq!(store.get_job("j").await.expect("get"), j);
}

/// Writers at once take turns: each is stored or refused whole, one that
/// fails (here: submitted to a cluster that does not exist) holds up none
/// after it.
pub async fn writes_at_once_take_turns<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let writes = (0..40).map(|i| {
        let store = store.clone();
        async move {
            let cluster = if i % 4 == 3 { "nope" } else { "cpu" };
            store
                .submit_job(&format!("j{i}"), job(cluster), "", 10 + i)
                .await
        }
    });
    let results = futures_util::future::join_all(writes).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::ClusterNotFound(c)) if c == "nope"))
        .count();
    assert_eq!(refused, 10, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 30);
    let queued = store.queued_jobs("cpu", QUEUED_READ).await.expect("queue");
    assert_eq!(queued.len(), 30, "every accepted job is stored, once");
    for i in [3, 7, 39] {
        assert!(matches!(
            store.get_job(&format!("j{i}")).await,
            Err(StoreError::JobNotFound(_))
        ));
    }
    store
        .submit_job("after", job("cpu"), "", 60)
        .await
        .expect("a write after them all");
}

pub async fn job_counts_and_lists<S: Store>(store: S) {
    given_cluster(&store, "east").await;
    given_cluster(&store, "west").await;
    let nodes = given_idle_nodes(&store, "east", &["a-n0"]).await;
    store
        .submit_job("a1", job("east"), "", 10)
        .await
        .expect("submit");
    store
        .submit_job("a2", job("east"), "", 11)
        .await
        .expect("submit");
    store
        .submit_job("a3", job("east"), "", 11)
        .await
        .expect("submit");
    store
        .submit_job("b1", job("west"), "", 12)
        .await
        .expect("submit");
    given_running(&store, "a1", &nodes, 13).await;
    store.cancel_job("a2", 14).await.expect("cancel");
    let mut counts = store.job_counts().await.expect("counts");
    counts.sort_by(|x, y| (&x.0, x.1.as_str()).cmp(&(&y.0, y.1.as_str())));
    assert_eq!(
        counts,
        vec![
            ("east".to_owned(), JobState::Canceled, 1),
            ("east".to_owned(), JobState::Queued, 1),
            ("east".to_owned(), JobState::Running, 1),
            ("west".to_owned(), JobState::Queued, 1),
        ]
    );
    given_idle_nodes(&store, "west", &["b-n0", "b-n1"]).await;
    let mut nodes = store.node_counts().await.expect("node counts");
    nodes.sort_by(|x, y| (&x.0, x.1.as_str()).cmp(&(&y.0, y.1.as_str())));
    assert_eq!(
        nodes,
        vec![
            ("east".to_owned(), NodeState::Running, 1),
            ("west".to_owned(), NodeState::Idle, 2),
        ]
    );
    let ids =
        |jobs: Vec<crate::store::JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    // Newest first; of the same time, the later submitted first.
    assert_eq!(
        ids(store.list_jobs(None, JobPage::ALL).await.expect("all").0),
        ["b1", "a3", "a2", "a1"]
    );
    assert_eq!(
        ids(store
            .list_jobs(Some("EAST"), JobPage::ALL)
            .await
            .expect("of a")
            .0),
        ["a3", "a2", "a1"]
    );
    assert!(
        store
            .list_jobs(Some("c"), JobPage::ALL)
            .await
            .expect("none")
            .0
            .is_empty()
    );
    let listed = store
        .list_jobs(Some("east"), JobPage::ALL)
        .await
        .expect("of a")
        .0;
    assert_eq!(listed[2], store.get_job("a1").await.expect("a1"));
    // Page by page, the same order, each job once, and no next page after
    // the last.
    for limit in [1, 2, 3] {
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let (page, next) = store
                .list_jobs(None, JobPage { after, limit })
                .await
                .expect("a page");
            assert!(page.len() <= limit as usize);
            seen.extend(ids(page));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["b1", "a3", "a2", "a1"], "pages of {limit}");
    }
    let (all, next) = store
        .list_jobs(
            None,
            JobPage {
                after: None,
                limit: 4,
            },
        )
        .await
        .expect("one full page");
    assert_eq!(
        (all.len(), next),
        (4, None),
        "a page that holds the rest is the last"
    );
}

pub async fn queued_reason_is_set_on_queued_jobs_only<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    given_cluster(&store, "other").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("run", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "run", &nodes, 4).await;
    store
        .submit_job("wait", job("cpu"), "", 5)
        .await
        .expect("submit");
    store
        .submit_job("else", job("other"), "", 5)
        .await
        .expect("submit");
    let why = "waiting: quota_exceeded: no room for another node";
    store
        .set_queued_reason("cpu", why, None)
        .await
        .expect("reason");
    let wait = store.get_job("wait").await.expect("job");
    assert_eq!((wait.state, wait.reason.as_str()), (JobState::Queued, why));
    // The reason is shown, not a transition.
    assert_eq!(last_reason(&wait), "submitted");
    assert_ne!(store.get_job("run").await.expect("job").reason, why);
    assert_eq!(
        store.get_job("else").await.expect("job").reason,
        "submitted"
    );

    // With a time, only the jobs queued since then are given it.
    store
        .submit_job("later", job("cpu"), "", 9)
        .await
        .expect("submit");
    let now = "waiting for a node";
    store
        .set_queued_reason("cpu", now, Some(9))
        .await
        .expect("reason");
    let reason = |id: &'static str| {
        let store = &store;
        async move { store.get_job(id).await.expect("job").reason }
    };
    assert_eq!(reason("later").await, now);
    assert_eq!(reason("wait").await, why, "queued at 5, before 9");
    store
        .set_queued_reason("cpu", now, None)
        .await
        .expect("reason");
    assert_eq!(reason("wait").await, now);
}
