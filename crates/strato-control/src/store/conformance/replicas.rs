//! Replicas on one database: the leader lease, the writes it fences, and
//! which replica holds a node's session.

use super::{given_cluster, given_idle_nodes, job, node};
use crate::store::{Lease, NodeSession, Store, StoreError};

/// Long enough never to run out during a case.
const LONG: i64 = 600_000;

pub async fn the_lease_is_held_by_one_replica_renewed_and_given_up<S: Store>(store: S) {
    let a = store.clone();
    let b = store;
    assert_eq!(a.lead("a", None, LONG).await.expect("lead"), Some(1));
    assert_eq!(
        b.lead("b", None, LONG).await.expect("lead"),
        None,
        "held by a"
    );
    assert_eq!(
        b.lead("b", Some(1), LONG).await.expect("lead"),
        None,
        "b cannot renew a's epoch"
    );
    assert_eq!(
        a.lead("a", Some(1), LONG).await.expect("renew"),
        Some(1),
        "a renews its own epoch"
    );
    let lease = Lease {
        holder: "a".into(),
        epoch: 1,
    };
    // Another's resignation does nothing.
    b.resign(&Lease {
        holder: "b".into(),
        epoch: 1,
    })
    .await
    .expect("resign");
    assert_eq!(b.lead("b", None, LONG).await.expect("lead"), None);
    a.resign(&lease).await.expect("resign");
    assert_eq!(
        b.lead("b", None, LONG).await.expect("lead"),
        Some(2),
        "taken at once after a gave it up, one epoch later"
    );
    assert_eq!(
        a.lead("a", Some(1), LONG).await.expect("renew"),
        None,
        "a's epoch is over"
    );
}

pub async fn a_lease_that_runs_out_is_taken_over<S: Store>(store: S) {
    let a = store.clone();
    let b = store;
    assert_eq!(a.lead("a", None, 1).await.expect("lead"), Some(1));
    // The database's clock moves on: wait for it (1 ms), at most 10 s.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let taken = loop {
        if let Some(epoch) = b.lead("b", None, LONG).await.expect("lead") {
            break epoch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(taken, 2);
    assert_eq!(
        a.lead("a", Some(1), LONG).await.expect("renew"),
        None,
        "an expired lease is not renewed"
    );
}

pub async fn a_deposed_leaders_writes_are_refused_and_store_nothing<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    assert_eq!(store.lead("a", None, LONG).await.expect("lead"), Some(1));
    let a = store.fenced(Lease {
        holder: "a".into(),
        epoch: 1,
    });
    a.submit_job("while-leading", job("cpu"), "", 1)
        .await
        .expect("the leader writes");
    a.check_lease().await.expect("the lease holds");
    store
        .check_lease()
        .await
        .expect("an unfenced store has none");
    store
        .resign(&Lease {
            holder: "a".into(),
            epoch: 1,
        })
        .await
        .expect("resign");
    assert_eq!(store.lead("b", None, LONG).await.expect("lead"), Some(2));
    let refused = a
        .submit_job("after-deposed", job("cpu"), "", 2)
        .await
        .expect_err("fenced");
    assert!(matches!(refused, StoreError::Fenced(1)), "{refused}");
    assert!(matches!(a.check_lease().await, Err(StoreError::Fenced(1))));
    assert!(matches!(
        store.get_job("after-deposed").await,
        Err(StoreError::JobNotFound(_))
    ));
    let b = store.fenced(Lease {
        holder: "b".into(),
        epoch: 2,
    });
    b.submit_job("new-leader", job("cpu"), "", 3)
        .await
        .expect("the new leader writes");
    // Reads are never fenced.
    assert_eq!(
        a.get_job("new-leader").await.expect("read").id,
        "new-leader"
    );
}

pub async fn node_sessions_say_what_the_nodes_say<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    assert!(store.node_sessions().await.expect("read").is_empty());
    given_idle_nodes(&store, "cpu", &["cpu-n1", "cpu-n0"]).await;
    store
        .create_node("cpu", "cpu-n2", "join-n2", i64::MAX, &super::limits(100), 2)
        .await
        .expect("a node not enrolled");
    store.session_opened("cpu-n1", "r1#2").await.expect("open");
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    store
        .assign_job("j", &["cpu-n1".to_owned()], 4)
        .await
        .expect("assign");
    let attempt = store.get_job("j").await.expect("job").attempt;
    let sessions = store.node_sessions().await.expect("read");
    let mut from_nodes: Vec<NodeSession> = store
        .all_nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| NodeSession {
            node_id: n.node_id,
            state: n.state,
            attempt: n.run_id.is_some().then_some(attempt),
            run_id: n.run_id,
            session_replica: n.session_replica,
        })
        .collect();
    from_nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    assert_eq!(sessions, from_nodes);
    let n1 = &sessions[1];
    assert_eq!(
        (
            n1.node_id.as_str(),
            n1.run_id.as_deref(),
            n1.session_replica.as_deref()
        ),
        ("cpu-n1", Some("j"), Some("r1#2"))
    );
    assert_eq!(n1.state, strato_core::node::NodeState::Preparing);
    assert_eq!(sessions[0].state, strato_core::node::NodeState::Idle);
    // Not enrolled yet: preparing, without a job or a session.
    assert_eq!(
        (
            sessions[2].state,
            &sessions[2].run_id,
            &sessions[2].session_replica
        ),
        (strato_core::node::NodeState::Preparing, &None, &None)
    );
}

pub async fn the_replica_holding_a_session_is_recorded_until_it_ends<S: Store>(store: S) {
    given_cluster(&store, "cpu").await;
    given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    assert_eq!(node(&store, "cpu-n0").await.session_replica, None);
    store.session_opened("cpu-n0", "r1").await.expect("open");
    assert_eq!(
        node(&store, "cpu-n0").await.session_replica.as_deref(),
        Some("r1")
    );
    // The agent moved to r2 before r1 saw its session end.
    store.session_opened("cpu-n0", "r2").await.expect("open");
    store.session_closed("cpu-n0", "r1").await.expect("close");
    assert_eq!(
        node(&store, "cpu-n0").await.session_replica.as_deref(),
        Some("r2"),
        "r1's end leaves r2's session"
    );
    store.session_closed("cpu-n0", "r2").await.expect("close");
    assert_eq!(node(&store, "cpu-n0").await.session_replica, None);
    // A replica's shutdown ends its sessions, and no other's.
    given_idle_nodes(&store, "cpu", &["cpu-n1"]).await;
    store.session_opened("cpu-n0", "r1#3").await.expect("open");
    store.session_opened("cpu-n1", "r10#1").await.expect("open");
    store.sessions_ended("r1#").await.expect("ended");
    assert_eq!(node(&store, "cpu-n0").await.session_replica, None);
    assert_eq!(
        node(&store, "cpu-n1").await.session_replica.as_deref(),
        Some("r10#1")
    );
}
