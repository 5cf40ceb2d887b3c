use super::SqliteStore;
use crate::store::*;
use strato_core::job::{AttemptEnd, JobSpec, JobState};
use strato_core::quota::QuotaLimits;
use strato_core::quota::RegionQuota;
use strato_core::spec::ClusterSpec;
use strato_core::spec::{ClusterRequest, validate};

fn spec(name: &str, size: &str, min: u32, max: u32) -> ClusterSpec {
    validate(
        &ClusterRequest {
            name: name.into(),
            vm_size: Some(size.into()),
            min_nodes: Some(min),
            max_nodes: Some(max),
            ..Default::default()
        },
        "local",
    )
    .expect("valid spec")
}

fn limits(family_cores: u64) -> QuotaLimits {
    QuotaLimits {
        default: RegionQuota {
            dedicated_cores_per_family: family_cores,
            ..RegionQuota::default()
        },
        ..QuotaLimits::default()
    }
}

#[tokio::test]
async fn create_refuses_duplicates_case_insensitively_and_over_quota_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let l = limits(8);
    store
        .create_cluster(spec("cpu", "Standard_D2_v2", 2, 4), Vec::new(), &l, 1)
        .await
        .expect("create");
    assert!(matches!(
        store.create_cluster(spec("CPU", "Standard_D2_v2", 0, 1), Vec::new(), &l, 2).await,
        Err(StoreError::ClusterExists(n)) if n == "cpu"
    ));
    // 2 nodes x 2 vCPUs held; 3 more nodes would make 10 > 8.
    assert!(matches!(
        store
            .create_cluster(spec("big", "Standard_D2_v2", 3, 4), Vec::new(), &l, 3)
            .await,
        Err(StoreError::Quota(_))
    ));
    assert!(matches!(
        store.get_cluster("big").await,
        Err(StoreError::ClusterNotFound(_))
    ));
    assert_eq!(
        store
            .usage("local")
            .await
            .expect("usage")
            .family("standardDv2Family"),
        4
    );
}

#[tokio::test]
async fn update_checks_quota_for_growth_only_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let l = limits(8);
    store
        .create_cluster(spec("cpu", "Standard_D2_v2", 2, 10), Vec::new(), &l, 1)
        .await
        .expect("create");
    let grow = |min: u32| -> SpecUpdate {
        Box::new(move |s: &ClusterSpec| {
            let mut next = s.clone();
            next.min_nodes = min;
            Ok(next)
        })
    };
    assert!(matches!(
        store.update_cluster("cpu", grow(5), &l, 2).await,
        Err(StoreError::Quota(_))
    ));
    let tight = limits(2);
    let shrunk = store
        .update_cluster("cpu", grow(1), &tight, 3)
        .await
        .expect("shrink always fits");
    assert_eq!((shrunk.spec.min_nodes, shrunk.updated_at), (1, 3));
    store.close().await;

    let reopened = SqliteStore::open(dir.path()).await.expect("reopen");
    let got = reopened.get_cluster("cpu").await.expect("still there");
    assert_eq!(got, shrunk);
    reopened.delete_cluster("cpu").await.expect("delete");
    assert!(matches!(
        reopened.delete_cluster("cpu").await,
        Err(StoreError::ClusterNotFound(_))
    ));
}

/// A gang of two: placed together, a failing rank ends the attempt for
/// both, the other rank is then to be stopped, and its node is freed
/// only once its container stopped.
#[tokio::test]
async fn a_gang_ends_as_a_whole_and_frees_each_node_when_its_container_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let l = limits(100);
    store
        .create_cluster(spec("mpi", "Standard_D2_v2", 0, 4), Vec::new(), &l, 1)
        .await
        .expect("create");
    let mut nodes = Vec::new();
    for n in ["mpi-n0", "mpi-n1", "mpi-n2"] {
        store
            .create_node("mpi", n, &format!("join-{n}"), &l, 1)
            .await
            .expect("node");
        store
            .enroll(
                &format!("join-{n}"),
                &format!("session-{n}"),
                &EnrollReport::default(),
                2,
            )
            .await
            .expect("enrol");
        nodes.push(n.to_owned());
    }
    let gang = JobSpec {
        cluster: "mpi".into(),
        display_name: String::new(),
        image: "img".into(),
        command: vec!["true".into()],
        environment: Default::default(),
        cpu: 0.0,
        memory_mb: 0,
        max_retries: 1,
        max_preemptions: 3,
        inputs: Vec::new(),
        outputs: Vec::new(),
        node_count: 2,
        process_count_per_node: 2,
        distribution: strato_core::job::Distribution::Mpi,
    };
    store.submit_job("g", gang, 3).await.expect("submit");
    assert_eq!(
        store.queued_jobs("mpi").await.expect("queue"),
        vec![QueuedJob {
            id: "g".into(),
            node_count: 2
        }]
    );
    // All or nothing.
    assert!(matches!(
        store.assign_job("g", &nodes[..1], 4).await,
        Err(StoreError::Conflict(_))
    ));
    let job = store.assign_job("g", &nodes[..2], 4).await.expect("assign");
    assert_eq!(job.attempts[0].node_ids, nodes[..2].to_vec());
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
    let gang_ranks = store.gang("g", 1).await.expect("gang");
    assert_eq!(gang_ranks.len(), 2);
    // Logs keep their rank; the cursor is the arrival order.
    for (n, line) in [(&nodes[1], "from 1"), (&nodes[0], "from 0")] {
        let record = LogRecord {
            pos: 0,
            attempt: 1,
            rank: 0,
            seq: 0,
            stream: 1,
            line: line.into(),
            at: 6,
        };
        store
            .append_logs(n, "g", 1, &[record], 6)
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
    assert!(
        store
            .logs("g", Some(logs[0].pos), 10)
            .await
            .expect("after")
            .len()
            == 1
    );

    // Rank 1 fails: the attempt ends (retried), naming the rank and node.
    let outcome = store
        .report_attempt(
            &nodes[1],
            "g",
            1,
            AttemptReport::Ended(AttemptEnd::Exited(137), "exited with code 137".into()),
            7,
        )
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Release);
    let job = store.get_job("g").await.expect("job");
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    let ended = job.transitions.last().expect("transition");
    assert!(
        ended.reason.contains("rank 1 (node mpi-n1) exited 137"),
        "{}",
        ended.reason
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
    let busy = |store: &SqliteStore, n: &str| {
        let n = n.to_owned();
        let store = store.clone();
        async move {
            store
                .list_nodes("mpi")
                .await
                .expect("nodes")
                .into_iter()
                .find(|x| x.node_id == n)
                .expect("node")
                .run_id
                .is_some()
        }
    };
    assert!(busy(&store, &nodes[0]).await && !busy(&store, &nodes[1]).await);
    // Its container stopped: released, node free, nothing left to stop.
    let outcome = store
        .report_attempt(
            &nodes[0],
            "g",
            1,
            AttemptReport::Ended(AttemptEnd::Exited(143), "exited with code 143".into()),
            8,
        )
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Release);
    assert!(!busy(&store, &nodes[0]).await);
    assert!(store.ranks_to_stop().await.expect("stop").is_empty());
    let counts = store.job_counts().await.expect("counts");
    assert_eq!(counts, vec![("mpi".to_owned(), JobState::Queued, 1)]);
    // max_nodes cannot drop below a waiting gang: it would block the queue.
    let shrink: SpecUpdate = Box::new(|s: &ClusterSpec| {
        let mut next = s.clone();
        next.max_nodes = 1;
        Ok(next)
    });
    match store.update_cluster("mpi", shrink, &l, 9).await {
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
        .report_attempt(
            &nodes[2],
            "g",
            2,
            AttemptReport::Ended(AttemptEnd::Exited(143), "exited with code 143".into()),
            12,
        )
        .await
        .expect("report");
    let job = store.get_job("g").await.expect("job");
    assert_eq!(
        (job.state, job.attempt, job.failures, job.preemptions),
        (JobState::Queued, 3, 1, 1)
    );
}
