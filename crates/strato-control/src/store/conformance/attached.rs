//! Attached clusters: machines that join with the cluster's join token,
//! leave when detached, and come back after their agent was lost.

use strato_core::job::JobState;
use strato_core::lifecycle::JoinRefusal;
use strato_core::node::NodeState;
use strato_core::spec::{ClusterRequest, ComputeType, validate};

use super::{REGION, exited, given_running, job, limits, node};
use crate::store::{EnrollReport, Enrolment, Join, Store, StoreError};

/// An attached cluster `name` of Standard_D2_v2 machines, at most `max`.
async fn given_attached<S: Store>(store: &S, name: &str, max: u32) {
    let spec = validate(
        &ClusterRequest {
            name: name.into(),
            compute_type: Some(ComputeType::Attached),
            vm_size: Some("Standard_D2_v2".into()),
            max_nodes: Some(max),
            ..Default::default()
        },
        REGION,
    )
    .expect("valid attached spec");
    store
        .create_cluster(spec, Vec::new(), &limits(100), 1)
        .await
        .expect("create attached cluster");
}

/// A machine with `key` joins with `token` as `new_node` at `now`.
async fn join<S: Store>(
    store: &S,
    token: &str,
    key: &str,
    new_node: &str,
    now: i64,
) -> Result<crate::store::NodeRecord, StoreError> {
    store
        .join(
            Join {
                token,
                key,
                new_node,
            },
            &format!("session-{new_node}-{now}"),
            &EnrollReport {
                hostname: new_node.into(),
                ..EnrollReport::default()
            },
            &limits(100),
            now,
        )
        .await
}

pub async fn machines_join_with_the_clusters_token_within_its_uses_and_max_nodes<S: Store>(
    store: S,
) {
    given_attached(&store, "lab", 2).await;
    store
        .create_join_token("LAB", "tok-a", 3, 100, "token:admin", 2)
        .await
        .expect("token of a cluster named in another case");
    assert!(matches!(
        store
            .create_join_token("nope", "tok-x", 1, 100, "token:admin", 2)
            .await,
        Err(StoreError::ClusterNotFound(_))
    ));
    assert!(matches!(
        join(&store, "tok-unknown", "k1", "m1-00000001", 3).await,
        Err(StoreError::BadToken)
    ));

    let first = join(&store, "tok-a", "k1", "m1-00000001", 3)
        .await
        .expect("first machine");
    assert_eq!(
        (first.node_id.as_str(), first.cluster.as_str(), first.state),
        ("m1-00000001", "lab", NodeState::Idle)
    );
    assert!(first.enrolled);
    // The same agent again (its answer was lost): its own node, no use.
    let again = join(&store, "tok-a", "k1", "m1-00000009", 4)
        .await
        .expect("same agent");
    assert_eq!(again.node_id, "m1-00000001");
    let second = join(&store, "tok-a", "k2", "m2-00000002", 5)
        .await
        .expect("second machine");
    assert_eq!(second.state, NodeState::Idle);
    // Uses are left, the cluster is full.
    assert!(matches!(
        join(&store, "tok-a", "k3", "m3-00000003", 6).await,
        Err(StoreError::JoinRefused {
            why: JoinRefusal::ClusterFull { max_nodes: 2 },
            ..
        })
    ));
    assert_eq!(store.list_nodes("lab").await.expect("nodes").len(), 2);

    // A single-use token, and one that expired.
    given_attached(&store, "lab2", 5).await;
    store
        .create_join_token("lab2", "tok-once", 1, 100, "token:admin", 2)
        .await
        .expect("token");
    join(&store, "tok-once", "k4", "m4-00000004", 7)
        .await
        .expect("its one use");
    assert!(matches!(
        join(&store, "tok-once", "k5", "m5-00000005", 8).await,
        Err(StoreError::JoinRefused {
            why: JoinRefusal::UsedUp,
            ..
        })
    ));
    store
        .create_join_token("lab2", "tok-old", 5, 50, "token:admin", 2)
        .await
        .expect("token");
    assert!(matches!(
        join(&store, "tok-old", "k6", "m6-00000006", 50).await,
        Err(StoreError::JoinRefused {
            why: JoinRefusal::Expired,
            ..
        })
    ));
    assert_eq!(store.list_nodes("lab2").await.expect("nodes").len(), 1);
}

pub async fn a_lost_machine_comes_back_when_its_agent_does<S: Store>(store: S) {
    given_attached(&store, "lab", 2).await;
    store
        .create_join_token("lab", "tok", 1, 100, "token:admin", 2)
        .await
        .expect("token");
    join(&store, "tok", "k1", "m1-00000001", 3)
        .await
        .expect("joined");
    store
        .node_unusable("m1-00000001", "no heartbeat for 30 s", 4)
        .await
        .expect("unusable");
    let back = store
        .enroll(
            Enrolment::Node("m1-00000001"),
            "session-back",
            &EnrollReport::default(),
            5,
        )
        .await
        .expect("back");
    assert_eq!((back.state, back.run_id), (NodeState::Idle, None));
    assert_eq!(
        back.last_heartbeat,
        Some(5),
        "its silence counts from its return"
    );
}

pub async fn a_detached_machine_finishes_its_job_or_queues_it_again<S: Store>(store: S) {
    given_attached(&store, "lab", 3).await;
    store
        .create_join_token("lab", "tok", 3, 100, "token:admin", 2)
        .await
        .expect("token");
    for (key, id) in [("k1", "m1-00000001"), ("k2", "m2-00000002")] {
        join(&store, "tok", key, id, 3).await.expect("joined");
    }
    for id in ["finishes", "requeued"] {
        store
            .submit_job(id, job("lab"), "", 3)
            .await
            .expect("submit");
    }
    given_running(&store, "finishes", &["m1-00000001".to_owned()], 4).await;
    given_running(&store, "requeued", &["m2-00000002".to_owned()], 4).await;

    // Drained: the job runs on, the node takes no other.
    let (n, ended) = store
        .detach_node("m1-00000001", false, 5)
        .await
        .expect("detach");
    assert_eq!(
        (n.state, n.run_id.as_deref(), ended.len()),
        (NodeState::Leaving, Some("finishes"), 0)
    );
    assert!(n.reason.starts_with("detaching"), "{}", n.reason);
    store
        .report_attempt("m1-00000001", "finishes", 1, exited(0), 6)
        .await
        .expect("exit");
    assert_eq!(
        store.get_job("finishes").await.expect("job").state,
        JobState::Completed
    );
    let n = node(&store, "m1-00000001").await;
    assert_eq!((n.state, n.run_id), (NodeState::Leaving, None));

    // Requeued: the attempt ends now as a lost node's would.
    let (n, ended) = store
        .detach_node("m2-00000002", true, 7)
        .await
        .expect("detach");
    assert_eq!((n.state, n.run_id), (NodeState::Leaving, None));
    assert_eq!(ended, vec![("requeued".to_owned(), 1)]);
    let j = store.get_job("requeued").await.expect("job");
    assert_eq!((j.state, j.attempt), (JobState::Queued, 2));
    assert_eq!(
        (j.failures, j.preemptions),
        (0, 0),
        "a detach is not the job's failure"
    );
    // Detaching again changes nothing; a draining machine's agent may
    // reconnect (to reach its job) and stays leaving.
    let (again, ended) = store
        .detach_node("m2-00000002", true, 8)
        .await
        .expect("again");
    assert_eq!((again.state, ended.len()), (NodeState::Leaving, 0));
    let back = store
        .enroll(
            Enrolment::Node("m2-00000002"),
            "s",
            &EnrollReport::default(),
            9,
        )
        .await
        .expect("a draining machine reconnects");
    assert_eq!(back.state, NodeState::Leaving);
    // A lost-heartbeat verdict reached after the detach leaves it leaving.
    assert!(
        store
            .node_unusable("m2-00000002", "no heartbeat for 30 s", 10)
            .await
            .expect("unusable")
            .is_empty()
    );
    assert_eq!(node(&store, "m2-00000002").await.state, NodeState::Leaving);
}

pub async fn power_steps_move_only_from_their_state<S: Store>(store: S) {
    use strato_core::lifecycle::PowerStep;
    given_attached(&store, "lab", 2).await;
    store
        .create_join_token("lab", "tok", 2, 100, "token:admin", 2)
        .await
        .expect("token");
    join(&store, "tok", "k1", "m1-00000001", 3)
        .await
        .expect("joined");
    // Only an idle machine without a job is suspended.
    assert!(
        !store
            .power_step("m1-00000001", PowerStep::Resume, "resuming", 4)
            .await
            .expect("step"),
        "an idle machine is not resumed"
    );
    assert!(
        store
            .power_step("m1-00000001", PowerStep::Suspend, "suspended by sleep", 5)
            .await
            .expect("step")
    );
    let n = node(&store, "m1-00000001").await;
    assert_eq!(
        (n.state, n.reason.as_str(), n.enrolled),
        (NodeState::Suspended, "suspended by sleep", true)
    );
    // Its agent still talking (the machine is going down slowly) does not
    // wake it.
    let talking = store
        .enroll(
            Enrolment::Node("m1-00000001"),
            "session-1",
            &EnrollReport::default(),
            5,
        )
        .await
        .expect("enrols");
    assert_eq!(talking.state, NodeState::Suspended);
    // Resumed: starting again.
    assert!(
        store
            .power_step("m1-00000001", PowerStep::Resume, "resuming: wake", 6)
            .await
            .expect("step")
    );
    let n = node(&store, "m1-00000001").await;
    assert_eq!((n.state, n.state_since), (NodeState::Preparing, 6));
    // Its agent enrols again with its certificate: idle.
    let back = store
        .enroll(
            Enrolment::Node("m1-00000001"),
            "session-2",
            &EnrollReport::default(),
            7,
        )
        .await
        .expect("back");
    assert_eq!(
        (back.state, back.last_heartbeat),
        (NodeState::Idle, Some(7))
    );
    // A machine that took a job is not suspended.
    store
        .submit_job("j", job("lab"), "", 8)
        .await
        .expect("submit");
    given_running(&store, "j", &["m1-00000001".to_owned()], 9).await;
    assert!(
        !store
            .power_step("m1-00000001", PowerStep::Suspend, "x", 10)
            .await
            .expect("step")
    );
    assert_eq!(node(&store, "m1-00000001").await.state, NodeState::Running);
}

pub async fn join_tokens_are_listed_revoked_and_bounded<S: Store>(store: S) {
    use strato_core::lifecycle::join_token_id;
    given_attached(&store, "lab", 3).await;
    let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    store
        .create_join_token("lab", hash, 2, 100, "token:ops", 2)
        .await
        .expect("token");
    let listed = store.list_join_tokens("LAB").await.expect("list");
    assert_eq!(listed.len(), 1);
    let t = &listed[0];
    assert_eq!(
        (
            t.id.as_str(),
            t.uses_left,
            t.expires_at,
            t.created_by.as_str()
        ),
        (join_token_id(hash).as_str(), 2, 100, "token:ops")
    );
    assert_eq!(t.id, "0123456789abcdef");
    assert!(matches!(
        store.revoke_join_token("lab", "ffffffffffffffff").await,
        Err(StoreError::JoinTokenNotFound { .. })
    ));
    store
        .revoke_join_token("lab", &t.id)
        .await
        .expect("revoked");
    assert!(
        store
            .list_join_tokens("lab")
            .await
            .expect("list")
            .is_empty()
    );
    assert!(matches!(
        join(&store, hash, "k1", "m1-00000001", 3).await,
        Err(StoreError::BadToken)
    ));

    // Expired tokens go when another is made; live ones are bounded.
    store
        .create_join_token("lab", "old", 1, 10, "token:ops", 2)
        .await
        .expect("old");
    for i in 0..crate::store::MAX_JOIN_TOKENS {
        store
            .create_join_token("lab", &format!("live-{i}"), 1, 1_000, "token:ops", 20)
            .await
            .expect("under the bound");
    }
    let listed = store.list_join_tokens("lab").await.expect("list");
    assert_eq!(
        listed.len(),
        crate::store::MAX_JOIN_TOKENS as usize,
        "the expired one went"
    );
    assert!(matches!(
        store
            .create_join_token("lab", "one-more", 1, 1_000, "token:ops", 30)
            .await,
        Err(StoreError::TooManyJoinTokens { limit: 100, .. })
    ));
}
