//! `SqlStore` against the conformance suite, and what only a file-backed
//! store promises: its state survives closing and reopening.

use strato_core::spec::ClusterSpec;

use super::SqlStore;
use crate::store::conformance::{cluster, exited, given_idle_nodes, given_running, job, limits};
use crate::store::{SpecUpdate, Store, StoreError};

crate::store_conformance_suite!(|| async {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    (store, dir)
});

#[tokio::test]
async fn state_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    let l = limits(8);
    store
        .create_cluster(cluster("cpu", "Standard_D2_v2", 2, 10), Vec::new(), &l, 1)
        .await
        .expect("create");
    let shrink: SpecUpdate = Box::new(|s: &ClusterSpec| {
        let mut next = s.clone();
        next.min_nodes = 1;
        Ok(next)
    });
    let shrunk = store
        .update_cluster("cpu", shrink, &l, 3)
        .await
        .expect("shrink");
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 4)
        .await
        .expect("submit");
    let running = given_running(&store, "j", &nodes, 5).await;
    let node = store.all_nodes().await.expect("nodes");
    store.close().await;

    let reopened = SqlStore::open(dir.path()).await.expect("reopen");
    let got = reopened.get_cluster("cpu").await.expect("still there");
    assert_eq!(got, shrunk);
    // A running job and its node are as they were: nothing runs twice.
    assert_eq!(reopened.get_job("j").await.expect("job"), running);
    assert_eq!(reopened.all_nodes().await.expect("nodes"), node);
    reopened
        .report_attempt("cpu-n0", "j", 1, exited(0), 6)
        .await
        .expect("ended");
    reopened.delete_cluster("cpu").await.expect("delete");
    assert!(matches!(
        reopened.delete_cluster("cpu").await,
        Err(StoreError::ClusterNotFound(_))
    ));
}

/// A cluster stored by an earlier version, with its admin password in
/// clear, has it replaced by the SHA-512 crypt hash at the next open.
#[tokio::test]
async fn an_admin_password_stored_in_clear_is_hashed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    let mut spec = cluster("old", "Standard_D2_v2", 0, 2);
    spec.ssh.admin_username = "azureuser".into();
    spec.ssh.admin_password = "Legacy-Passw0rd".into();
    store
        .create_cluster(spec, Vec::new(), &limits(8), 1)
        .await
        .expect("create as an earlier version did");
    store.close().await;

    let reopened = SqlStore::open(dir.path()).await.expect("reopen");
    let ssh = reopened.get_cluster("old").await.expect("cluster").spec.ssh;
    assert!(ssh.admin_password.is_empty(), "no password in clear");
    assert!(strato_core::crypt::verify(
        "Legacy-Passw0rd",
        &ssh.admin_password_hash
    ));
    reopened.close().await;
    let bytes = std::fs::read(dir.path().join(super::super::DB_FILE)).expect("db");
    let wal = std::fs::read(dir.path().join(format!("{}-wal", super::super::DB_FILE)))
        .unwrap_or_default();
    for file in [bytes, wal] {
        assert!(!file.windows(15).any(|w| w == b"Legacy-Passw0rd"));
    }
}

/// Past `--max-log-bytes-per-attempt` one marker line says the output was
/// truncated and nothing more is kept; lines sent again after a reconnect
/// are not counted twice.
#[tokio::test]
async fn output_past_the_byte_budget_leaves_one_marker() {
    use crate::store::LogRecord;
    use crate::store::conformance::given_cluster;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path())
        .await
        .expect("open")
        .with_log_budget(strato_core::limits::LogBudget {
            lines: 1_000,
            bytes: 25,
        });
    given_cluster(&store, "cpu").await;
    let nodes = given_idle_nodes(&store, "cpu", &["cpu-n0"]).await;
    store
        .submit_job("j", job("cpu"), "", 3)
        .await
        .expect("submit");
    given_running(&store, "j", &nodes, 4).await;
    let line = |seq: u64| LogRecord {
        pos: 0,
        rank: 0,
        attempt: 1,
        seq,
        stream: 1,
        line: "0123456789".into(),
        at: 5,
    };
    let batch: Vec<LogRecord> = (0..2).map(line).collect();
    store
        .append_logs("cpu-n0", "j", 1, &batch, 5)
        .await
        .expect("20 bytes");
    // Sent again: still 20 bytes kept, and the third line passes 25.
    let batch: Vec<LogRecord> = (0..5).map(line).collect();
    store
        .append_logs("cpu-n0", "j", 1, &batch, 6)
        .await
        .expect("past the budget");
    let logs = store.logs("j", None, 10).await.expect("logs");
    let lines: Vec<(u64, &str)> = logs.iter().map(|l| (l.seq, l.line.as_str())).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[..2], [(0, "0123456789"), (1, "0123456789")]);
    assert_eq!(lines[2].0, 2);
    assert!(
        lines[2].1.contains("only the first 25 bytes"),
        "{}",
        lines[2].1
    );
}

/// Heartbeats are kept in memory: every read shows the latest, and the
/// database gets them only from `persist_heartbeats`, all in one go.
#[tokio::test]
async fn heartbeats_are_written_in_one_go_not_one_by_one() {
    use crate::store::NodeUsage;
    use crate::store::conformance::given_cluster;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    given_cluster(&store, "cpu").await;
    given_idle_nodes(&store, "cpu", &["cpu-n0", "cpu-n1"]).await;
    // What another process reading the database sees.
    let other = SqlStore::open(dir.path()).await.expect("open again");
    let stored = |id: &'static str| {
        let other = other.clone();
        async move {
            let nodes = other.all_nodes().await.expect("nodes");
            let n = nodes.into_iter().find(|n| n.node_id == id).expect("node");
            (n.last_heartbeat, n.usage.cpu_percent)
        }
    };
    let usage = |cpu: f64| NodeUsage {
        cpu_percent: cpu,
        ..NodeUsage::default()
    };
    store.heartbeat("cpu-n0", None, 10).await.expect("hello");
    assert_eq!(
        stored("cpu-n0").await.0,
        Some(10),
        "a session's start is written at once"
    );
    for (at, cpu) in [(11, 5.0), (12, 50.0), (13, 75.0)] {
        store
            .heartbeat("cpu-n0", Some(usage(cpu)), at)
            .await
            .expect("beat");
    }
    store
        .heartbeat("cpu-n1", Some(usage(1.0)), 12)
        .await
        .expect("beat");
    let seen = store.list_nodes("cpu").await.expect("nodes");
    let n0 = seen.iter().find(|n| n.node_id == "cpu-n0").expect("n0");
    assert_eq!(
        (n0.last_heartbeat, n0.usage.cpu_percent),
        (Some(13), 75.0),
        "reads show the latest"
    );
    assert_eq!(
        stored("cpu-n0").await,
        (Some(10), 0.0),
        "nothing written per beat"
    );
    assert_eq!(store.persist_heartbeats().await.expect("persist"), 2);
    assert_eq!(stored("cpu-n0").await, (Some(13), 75.0));
    assert_eq!(stored("cpu-n1").await, (Some(12), 1.0));
    assert_eq!(
        store.persist_heartbeats().await.expect("again"),
        0,
        "only what changed"
    );
    // A node that is gone is forgotten at the next write.
    store
        .heartbeat("cpu-n1", Some(usage(2.0)), 14)
        .await
        .expect("beat");
    store.delete_node("cpu-n1", 15).await.expect("delete");
    assert_eq!(store.persist_heartbeats().await.expect("persist"), 0);
    assert!(store.beats.lock().get("cpu-n1").is_none(), "forgotten");
}

/// One report of a batch that fails (here a record that cannot be read)
/// fails alone: the others are stored and answered as if written one by
/// one.
#[tokio::test]
async fn a_report_that_fails_fails_alone_in_its_batch() {
    use crate::store::conformance::{given_a_and_b_placed, report_of};
    use crate::store::{AttemptReport, ReportOutcome};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    given_a_and_b_placed(&store).await;
    sqlx::query("UPDATE jobs SET spec = 'not json' WHERE id = 'b'")
        .execute(&store.pool)
        .await
        .expect("spoil b");
    let outcomes = store
        .report_attempts(
            &[
                report_of("cpu-n0", "a", AttemptReport::Running),
                report_of("cpu-n1", "b", AttemptReport::Running),
                report_of("cpu-n0", "a", exited(0)),
            ],
            5,
        )
        .await
        .expect("the batch is answered");
    assert!(matches!(outcomes[0], Ok(ReportOutcome::Recorded)));
    assert!(
        matches!(&outcomes[1], Err(StoreError::Corrupt(why)) if why.contains("job spec")),
        "{:?}",
        outcomes[1]
    );
    assert!(matches!(outcomes[2], Ok(ReportOutcome::Release)));
    let a = store.get_job("a").await.expect("a");
    assert_eq!(
        (a.state, a.exit_code),
        (strato_core::job::JobState::Completed, Some(0))
    );
}

/// Writers waiting for their turn hold no connection: while one write is
/// under way and more writers than the pool has connections wait behind
/// it, a read still answers.
#[tokio::test]
async fn reads_answer_while_more_writers_wait_than_the_pool_has_connections() {
    use crate::store::conformance::given_cluster;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    given_cluster(&store, "cpu").await;
    let under_way = store.begin_write().await.expect("a write under way");
    // Twice the pool's 8 connections.
    let (writers, started) = (16, std::sync::Arc::new(AtomicUsize::new(0)));
    let waiting: Vec<_> = (0..writers)
        .map(|i| {
            let (store, started) = (store.clone(), started.clone());
            tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                store.submit_job(&format!("j{i}"), job("cpu"), "", 2).await
            })
        })
        .collect();
    // Every writer on its way to its turn (each runs until it waits).
    while started.load(Ordering::SeqCst) < writers {
        tokio::task::yield_now().await;
    }
    for _ in 0..writers {
        tokio::task::yield_now().await;
    }
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), store.list_clusters())
        .await
        .expect("a read while writers wait for their turn")
        .expect("clusters");
    assert_eq!(read.len(), 1);
    drop(under_way);
    for writer in waiting {
        writer
            .await
            .expect("writer")
            .expect("submitted in its turn");
    }
    let (jobs, _) = store
        .list_jobs(Some("cpu"), crate::store::JobPage::ALL)
        .await
        .expect("jobs");
    assert_eq!(jobs.len(), writers);
}

/// The leader's writes (its fenced handle: reconcile passes) go first: one
/// that comes while many other writers wait follows the write under way
/// and at most the next in line, not every write queued before it.
#[tokio::test]
async fn the_leaders_writes_pass_the_queue_of_other_writers() {
    use crate::store::Lease;
    use crate::store::conformance::given_cluster;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open(dir.path()).await.expect("open");
    given_cluster(&store, "cpu").await;
    let epoch = store.lead("a", None, 60_000).await.expect("lead");
    let leader = store.fenced(Lease {
        holder: "a".into(),
        epoch: epoch.expect("the lease"),
    });
    let done = Arc::new(Mutex::new(Vec::new()));
    let under_way = store.begin_write().await.expect("a write under way");
    let writers = 16;
    let mut waiting = Vec::new();
    for i in 0..writers {
        let (store, done) = (store.clone(), done.clone());
        waiting.push(tokio::spawn(async move {
            let name = format!("j{i}");
            store.submit_job(&name, job("cpu"), "", 2).await?;
            done.lock().expect("done").push(name);
            Ok::<_, StoreError>(())
        }));
        // In arrival order: each waits before the next comes.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    let pass = {
        let done = done.clone();
        tokio::spawn(async move {
            leader.submit_job("leader", job("cpu"), "", 3).await?;
            done.lock().expect("done").push("leader".to_owned());
            Ok::<_, StoreError>(())
        })
    };
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    drop(under_way);
    pass.await.expect("leader").expect("the leader's write");
    for writer in waiting {
        writer
            .await
            .expect("writer")
            .expect("submitted in its turn");
    }
    let done = done.lock().expect("done").clone();
    let at = done.iter().position(|n| n == "leader").expect("leader");
    assert!(at <= 1, "the leader's write came {at}th: {done:?}");
    assert_eq!(done.len(), writers + 1);
}
