//! Nodes: creation, enrolment, heartbeats, and their ends (unusable,
//! removed, preempted) with what those mean for the jobs on them.

use strato_core::job::JobState;
use strato_core::node::{GpuInfo, NodeState};

use super::{
    AGENT_KEY, JOIN_EXPIRES, exited, given_cluster, given_idle_nodes, given_running, job,
    join_token, last_reason, limits, node, session_token, states,
};
use crate::store::{
    Conflict, EnrollReport, Enrolment, NodeUsage, ReportOutcome, Store, StoreError,
};

pub async fn node_enrols_becomes_idle_and_heartbeats<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let created = store
        .create_node(
            "cpu",
            "cpu-n0",
            &join_token("cpu-n0"),
            JOIN_EXPIRES,
            &limits(100),
            10,
        )
        .await
        .expect("create");
    assert_eq!(
        (created.state, created.reason.as_str(), created.enrolled),
        (
            NodeState::Preparing,
            "starting: waiting for the agent to enrol",
            false
        )
    );
    assert_eq!(
        (created.created_at, created.last_heartbeat, created.run_id),
        (10, None, None)
    );
    assert!(matches!(
        store
            .enroll(
                Enrolment::JoinToken {
                    token: "join-unknown",
                    key: AGENT_KEY
                },
                "s",
                &EnrollReport::default(),
                11
            )
            .await,
        Err(StoreError::BadToken)
    ));
    let report = EnrollReport {
        hostname: "host0".into(),
        metrics_url: "http://127.0.0.1:9100/metrics".into(),
        // The cluster serves no SSH: neither is recorded.
        ssh_address: "127.0.0.1".into(),
        ssh_port: 50_000,
        ssh_host_key:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                .into(),
        gpus: 1,
        gpu_info: vec![GpuInfo {
            index: 0,
            uuid: "GPU-0".into(),
            model: "H100".into(),
            memory_mib: 81_559,
            problem: None,
        }],
    };
    let enrolled = store
        .enroll(
            Enrolment::JoinToken {
                token: &join_token("cpu-n0"),
                key: AGENT_KEY,
            },
            &session_token("cpu-n0"),
            &report,
            12,
        )
        .await
        .expect("enrol");
    assert_eq!(
        (enrolled.state, enrolled.enrolled, enrolled.idle_since),
        (NodeState::Idle, true, 12)
    );
    assert_eq!(
        (enrolled.hostname.as_str(), enrolled.metrics_url.as_str()),
        ("host0", "http://127.0.0.1:9100/metrics")
    );
    assert_eq!(
        (
            enrolled.private_ip.as_str(),
            enrolled.port,
            enrolled.ssh_host_key.as_str()
        ),
        ("", 0, "")
    );
    assert_eq!(
        (enrolled.gpus, enrolled.gpu_info.clone()),
        (1, report.gpu_info)
    );
    assert_eq!(enrolled.last_heartbeat, Some(12));
    assert_eq!(
        store
            .node_by_session(&session_token("cpu-n0"))
            .await
            .expect("by session"),
        enrolled
    );
    assert!(matches!(
        store.node_by_session("session-unknown").await,
        Err(StoreError::BadToken)
    ));

    store.heartbeat("cpu-n0", None, 20).await.expect("beat");
    let usage = NodeUsage {
        cpu_percent: 42.5,
        memory_used: 1 << 30,
        memory_total: 4 << 30,
        gpu_percent: 7.0,
    };
    let n = node(&store, "cpu-n0").await;
    assert_eq!(
        (n.last_heartbeat, n.usage),
        (Some(20), NodeUsage::default())
    );
    store
        .heartbeat("cpu-n0", Some(usage), 30)
        .await
        .expect("beat");
    store.set_node_pid("cpu-n0", 4242).await.expect("pid");
    let n = node(&store, "cpu-n0").await;
    assert_eq!(
        (n.last_heartbeat, n.usage, n.pid),
        (Some(30), usage, Some(4242))
    );
    let listed = store.list_nodes("CPU").await.expect("list");
    assert_eq!(listed, vec![n]);
}

pub async fn enrolling_again_keeps_the_state_and_replaces_the_session<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    // Someone else presents the used join token (with another key, or none):
    // refused, and the node's session is untouched.
    assert!(matches!(
        store
            .enroll(
                Enrolment::JoinToken { token: &join_token("cpu-n0"), key: "impostor-key" },
                "session-impostor",
                &EnrollReport::default(),
                40,
            )
            .await,
        Err(StoreError::JoinTokenUsed(node)) if node == "cpu-n0"
    ));
    assert!(matches!(
        store.node_by_session("session-impostor").await,
        Err(StoreError::BadToken)
    ));
    assert_eq!(
        store
            .node_by_session(&session_token("cpu-n0"))
            .await
            .expect("the session holds")
            .node_id,
        "cpu-n0"
    );
    assert!(matches!(
        store
            .enroll(
                Enrolment::JoinToken {
                    token: &join_token("cpu-n0"),
                    key: ""
                },
                "session-keyless",
                &EnrollReport::default(),
                41,
            )
            .await,
        Err(StoreError::JoinTokenUsed(_))
    ));
    // The agent itself, whose first answer was lost, asks again with its
    // own key before the token expires: it is the node.
    let replayed = store
        .enroll(
            Enrolment::JoinToken {
                token: &join_token("cpu-n0"),
                key: AGENT_KEY,
            },
            "session-replay",
            &EnrollReport::default(),
            42,
        )
        .await
        .expect("the same key");
    assert_eq!(replayed.node_id, "cpu-n0");
    // The agent restarts: it enrols again as the node its certificate names.
    let again = store
        .enroll(
            Enrolment::Node("cpu-n0"),
            "session-2",
            &EnrollReport::default(),
            50,
        )
        .await
        .expect("enrol again");
    assert_eq!(
        (again.state, again.run_id.as_deref(), again.last_heartbeat),
        (NodeState::Running, Some("j"), Some(2))
    );
    assert!(matches!(
        store.node_by_session(&session_token("cpu-n0")).await,
        Err(StoreError::BadToken)
    ));
    assert_eq!(
        store
            .node_by_session("session-2")
            .await
            .expect("new")
            .node_id,
        "cpu-n0"
    );
    assert_eq!(
        store.get_job("j").await.expect("job").state,
        JobState::Running
    );
}

pub async fn an_expired_join_token_is_refused<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    store
        .create_node("cpu", "cpu-n0", &join_token("cpu-n0"), 5, &limits(100), 2)
        .await
        .expect("create");
    assert!(matches!(
        store
            .enroll(
                Enrolment::JoinToken { token: &join_token("cpu-n0"), key: AGENT_KEY },
                &session_token("cpu-n0"),
                &EnrollReport::default(),
                5,
            )
            .await,
        Err(StoreError::JoinTokenExpired(node)) if node == "cpu-n0"
    ));
    let n = node(&store, "cpu-n0").await;
    assert_eq!((n.state, n.enrolled), (NodeState::Preparing, false));
    assert!(matches!(
        store.node_by_session(&session_token("cpu-n0")).await,
        Err(StoreError::BadToken)
    ));
}

pub async fn an_unusable_node_refuses_enrolment<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    store
        .create_node(
            "cpu",
            "cpu-n0",
            &join_token("cpu-n0"),
            JOIN_EXPIRES,
            &limits(100),
            2,
        )
        .await
        .expect("create");
    let jobs = store
        .node_unusable("cpu-n0", "did not enrol within 60 s", 3)
        .await
        .expect("unusable");
    assert!(jobs.is_empty());
    let n = node(&store, "cpu-n0").await;
    assert_eq!(
        (n.state, n.reason.as_str(), n.state_since),
        (NodeState::Unusable, "did not enrol within 60 s", 3)
    );
    let e = store
        .enroll(
            Enrolment::JoinToken {
                token: &join_token("cpu-n0"),
                key: AGENT_KEY,
            },
            &session_token("cpu-n0"),
            &EnrollReport::default(),
            4,
        )
        .await
        .expect_err("refused");
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::NodeRetired { node, state: NodeState::Unusable, .. })
            if node == "cpu-n0"
    ));
    assert_eq!(
        e.to_string(),
        "node cpu-n0 is unusable (did not enrol within 60 s); it will be removed"
    );
    assert!(!node(&store, "cpu-n0").await.enrolled);
    assert!(matches!(
        store.node_unusable("nope", "why", 5).await,
        Err(StoreError::NodeNotFound(n)) if n == "nope"
    ));
}

pub async fn a_lost_node_ends_its_attempt_and_the_job_retries<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes[..1], 4).await;
    let jobs = store
        .node_unusable("cpu-n0", "no heartbeat for 30 s", 5)
        .await
        .expect("unusable");
    assert_eq!(jobs, ["j"]);
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (
            j.state,
            j.attempt,
            j.failures,
            j.preemptions,
            j.node_id.as_deref()
        ),
        (JobState::Queued, 2, 1, 0, None)
    );
    assert_eq!(
        last_reason(&j),
        "attempt 1 ended (node cpu-n0 lost: no heartbeat for 30 s); retrying as attempt 2 (1 of 3 retries)"
    );
    assert_eq!(
        (j.attempts[0].ended_at, j.attempts[0].reason.as_str()),
        (Some(5), "node cpu-n0 lost: no heartbeat for 30 s")
    );
    let n = node(&store, "cpu-n0").await;
    assert_eq!((n.state, n.run_id), (NodeState::Unusable, None));
    // The next attempt runs elsewhere; the lost node's late report is
    // answered with Release.
    let j = given_running(&store, "j", &nodes[1..], 6).await;
    assert_eq!((j.state, j.attempt), (JobState::Running, 2));
    assert_eq!(
        store
            .report_attempt("cpu-n0", "j", 1, exited(0), 7)
            .await
            .expect("late report"),
        ReportOutcome::Release
    );
    assert_eq!(
        store.get_job("j").await.expect("job").state,
        JobState::Running
    );
}

pub async fn a_removed_node_ends_its_attempt_as_lost<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    store.delete_node("cpu-n0", 5).await.expect("delete");
    assert!(store.all_nodes().await.expect("nodes").is_empty());
    let j = store.get_job("j").await.expect("job");
    assert_eq!((j.state, j.attempt, j.failures), (JobState::Queued, 2, 1));
    assert_eq!(j.attempts[0].reason, "node cpu-n0 was removed");
    // Removing what is gone already is no error.
    store.delete_node("cpu-n0", 6).await.expect("again");
}

pub async fn a_preempted_node_keeps_its_job_until_it_is_evicted<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    store
        .node_preempted("cpu-n0", 90_000, "preempted: evicted at 90", 5)
        .await
        .expect("preempted");
    // A second notice changes nothing.
    store
        .node_preempted("cpu-n0", 99_000, "preempted: again", 6)
        .await
        .expect("preempted again");
    let n = node(&store, "cpu-n0").await;
    assert_eq!(
        (n.state, n.run_id.as_deref(), n.evict_at, n.reason.as_str()),
        (
            NodeState::Preempted,
            Some("j"),
            Some(90_000),
            "preempted: evicted at 90"
        )
    );
    assert_eq!(
        store.get_job("j").await.expect("job").state,
        JobState::Running
    );
    store.delete_node("cpu-n0", 90_000).await.expect("evicted");
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (j.state, j.attempt, j.failures, j.preemptions),
        (JobState::Queued, 2, 0, 1)
    );
    assert_eq!(&states(&j)[3..], [JobState::Preempted, JobState::Queued]);
    assert_eq!(
        last_reason(&j),
        "attempt 1 was preempted (node cpu-n0 was evicted); re-queued as attempt 2 (1 of 3 preemptions; failure retries untouched)"
    );
}

pub async fn preemptions_are_counted_apart_and_limited<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1", "cpu-n2"]).await;
    let mut spec = job("cpu");
    spec.max_retries = 1;
    spec.max_preemptions = 1;
    store.submit_job("j", spec, "", 3).await.expect("submit");
    // A failure, retried.
    given_running(&store, "j", &nodes[..1], 4).await;
    store
        .report_attempt("cpu-n0", "j", 1, exited(1), 5)
        .await
        .expect("report");
    // A preemption: counted apart, retried although retries are used up.
    given_running(&store, "j", &nodes[1..2], 6).await;
    store
        .node_preempted("cpu-n1", 10, "preempted", 7)
        .await
        .expect("preempted");
    store.delete_node("cpu-n1", 10).await.expect("evicted");
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (j.state, j.attempt, j.failures, j.preemptions),
        (JobState::Queued, 3, 1, 1)
    );
    // A second preemption is one more than allowed.
    given_running(&store, "j", &nodes[2..], 11).await;
    store
        .node_preempted("cpu-n2", 20, "preempted", 12)
        .await
        .expect("preempted");
    store.delete_node("cpu-n2", 20).await.expect("evicted");
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (j.state, j.attempt, j.failures, j.preemptions),
        (JobState::Failed, 3, 1, 1)
    );
    assert_eq!(last_reason(&j), "node cpu-n2 was evicted");
}

pub async fn an_exit_on_an_evicted_node_is_a_preemption<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    let mut spec = job("cpu");
    spec.max_retries = 0;
    store.submit_job("j", spec, "", 3).await.expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    store
        .node_preempted("cpu-n0", 10, "preempted", 5)
        .await
        .expect("preempted");
    // The notice's SIGTERM ends the container before the node goes.
    let outcome = store
        .report_attempt("cpu-n0", "j", 1, exited(143), 6)
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Release);
    let j = store.get_job("j").await.expect("job");
    assert_eq!(
        (j.state, j.attempt, j.failures, j.preemptions),
        (JobState::Queued, 2, 0, 1)
    );
    // The preempted node is no capacity: it keeps its state, without the job.
    let n = node(&store, "cpu-n0").await;
    assert_eq!(n.state, NodeState::Preempted);
}

pub async fn nodes_read_by_id_are_those_that_exist_as_get_node_reads_them<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1", "cpu-n2"]).await;
    let usage = NodeUsage {
        cpu_percent: 40.0,
        ..NodeUsage::default()
    };
    store
        .heartbeat("cpu-n1", Some(usage), 7)
        .await
        .expect("beat");
    assert!(store.nodes_by_id(&[]).await.expect("none").is_empty());
    // More ids than one statement takes, most of them of no node: the
    // nodes asked for on either side of the split are read.
    let mut ids: Vec<String> = (0..600).map(|i| format!("cpu-gone-{i}")).collect();
    ids[0] = "cpu-n2".to_owned();
    ids[550] = "cpu-n1".to_owned();
    let mut read = store.nodes_by_id(&ids).await.expect("read");
    read.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    assert_eq!(
        read,
        vec![
            store.get_node("cpu-n1").await.expect("n1"),
            store.get_node("cpu-n2").await.expect("n2")
        ]
    );
    // With its latest heartbeat, kept in memory.
    assert_eq!(
        (read[0].last_heartbeat, read[0].usage.cpu_percent),
        (Some(7), 40.0)
    );
}
