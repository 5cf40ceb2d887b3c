//! The in-process tier: the control plane's reconcile loop, placement,
//! node health, backoff, evictions and gangs, driven through the real gRPC
//! API and real agent sessions on FakeRuntimes, with a manual clock. No
//! Docker, no sleeping for time to pass: the clock is moved instead.

use std::time::Duration;

use strato_e2e::in_process::{InProcess, cluster_spec, eventually, job_spec};
use strato_proto::v1;
use strato_runtime::fake::EXIT_SIGTERM;

fn state(node: &v1::Node) -> v1::NodeState {
    v1::NodeState::try_from(node.state).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_scale_the_cluster_up_and_idle_nodes_go_after_the_idle_time() {
    let cp = InProcess::start(&[]).await.expect("start");
    cp.create_cluster("grow", 1, 3, 60).await;
    eventually("the min node", || async {
        (cp.nodes("grow").await.len() == 1).then_some(())
    })
    .await;

    let jobs = [
        cp.submit(job_spec("grow")).await,
        cp.submit(job_spec("grow")).await,
        cp.submit(job_spec("grow")).await,
    ];
    let mut nodes = Vec::new();
    for id in &jobs {
        let (node, container) = cp.running_container(id).await;
        nodes.push((node, container));
    }
    let mut distinct: Vec<_> = nodes.iter().map(|(n, _)| n.clone()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one job per node: {nodes:?}");
    assert_eq!(cp.fleet.creates(), 3, "exactly max_nodes were created");

    for (id, (node, container)) in jobs.iter().zip(&nodes) {
        let runtime = cp.fleet.runtime(node).expect("the node's engine");
        runtime
            .print(container, strato_runtime::OutputStream::Stdout, "done")
            .expect("print");
        runtime.exit(container, 0).expect("exit");
        let job = cp.job_in(id, v1::JobState::Completed).await;
        assert_eq!(job.exit_code, Some(0));
    }

    // Idle for less than the idle time: every node stays.
    cp.advance(Duration::from_secs(59));
    cp.after_passes(3).await;
    assert_eq!(
        cp.nodes("grow").await.len(),
        3,
        "no node leaves before its idle time"
    );

    // Past it: down to min_nodes, and no further however long they idle.
    cp.advance(Duration::from_secs(2));
    eventually("scale-down to min_nodes", || async {
        (cp.nodes("grow").await.len() == 1).then_some(())
    })
    .await;
    cp.advance(Duration::from_secs(3600));
    cp.after_passes(3).await;
    assert_eq!(cp.nodes("grow").await.len(), 1, "min_nodes is kept");
    assert_eq!(
        cp.fleet.node_ids().len(),
        1,
        "the provider took the others down"
    );
    cp.stop().await.expect("stop");
}

/// A pass that places a job reads again only the node it placed it on:
/// that node stays counted, so a cluster at `max_nodes` with more jobs
/// waiting asks the provider for nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_at_max_nodes_runs_its_queue_on_its_node_and_asks_for_no_more() {
    let cp = InProcess::start(&[]).await.expect("start");
    cp.create_cluster("one", 1, 1, 60).await;
    eventually("the min node", || async {
        (cp.nodes("one").await.len() == 1).then_some(())
    })
    .await;
    let first = cp.submit(job_spec("one")).await;
    let second = cp.submit(job_spec("one")).await;
    let (node, container) = cp.running_container(&first).await;
    cp.after_passes(3).await;
    assert_eq!(cp.fleet.creates(), 1, "max_nodes 1: one machine, no more");
    assert_eq!(cp.nodes("one").await.len(), 1);
    assert_eq!(cp.job(&second).await.state, v1::JobState::Queued as i32);
    let runtime = cp.fleet.runtime(&node).expect("the node's engine");
    runtime.exit(&container, 0).expect("exit");
    cp.job_in(&first, v1::JobState::Completed).await;
    let (ran_on, _) = cp.running_container(&second).await;
    assert_eq!(ran_on, node, "the next job runs on the same node");
    assert_eq!(cp.fleet.creates(), 1);
    cp.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_is_replaced_and_its_job_runs_again() {
    let cp = InProcess::start(&["--node-heartbeat-timeout", "30"])
        .await
        .expect("start");
    cp.create_cluster("beats", 0, 1, 600).await;
    let id = cp
        .submit(v1::JobSpec {
            max_retries: 1,
            ..job_spec("beats")
        })
        .await;
    let (first, _) = cp.running_container(&id).await;

    cp.fleet.stop_agent(&first).await;
    // Everything it sent has been stored once its session is closed.
    eventually("the session closed", || async {
        (cp.sessions().await == 0).then_some(())
    })
    .await;
    cp.advance(Duration::from_secs(29));
    cp.after_passes(3).await;
    let nodes = cp.nodes("beats").await;
    assert_eq!(nodes.len(), 1);
    assert_ne!(
        state(&nodes[0]),
        v1::NodeState::Unusable,
        "silent for less than the timeout"
    );

    cp.advance(Duration::from_secs(2));
    let (second, _) = eventually("the job on a new node", || async {
        let job = cp.job(&id).await;
        (job.attempt == 2 && job.state == v1::JobState::Running as i32).then_some(())?;
        let runtime = cp.fleet.runtime(&job.node_id)?;
        let c = runtime.containers().into_iter().find(|c| c.running())?;
        Some((job.node_id, c.spec.name))
    })
    .await;
    assert_ne!(second, first, "the silent node was replaced");
    assert!(
        !cp.fleet.node_ids().contains(&first),
        "the silent node was taken down"
    );
    let job = cp.job(&id).await;
    let ended = &job.attempts[0];
    assert!(
        ended.reason.contains("heartbeat") || ended.reason.contains("lost"),
        "the first attempt says why it ended: {ended:?}"
    );
    cp.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_asks_the_provider_for_machines_sixteen_at_a_time() {
    let cp = InProcess::start(&[]).await.expect("start");
    // A cloud's create call takes a while: asked one after another, 20
    // machines would take 20 times as long.
    cp.fleet.set_create_latency(Duration::from_millis(200));
    cp.create_cluster("wide", 20, 20, 600).await;
    eventually("the 20 nodes, enrolled", || async {
        let nodes = cp.nodes("wide").await;
        (nodes.len() == 20 && nodes.iter().all(|n| state(n) == v1::NodeState::Idle)).then_some(())
    })
    .await;
    assert_eq!(cp.fleet.creates(), 20);
    let most = cp.fleet.most_creates_at_once();
    assert!(
        (2..=16).contains(&most),
        "machines asked for at once, at most 16: {most}"
    );
    cp.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_retried_with_backoff_and_the_cluster_says_why() {
    let cp = InProcess::start(&[]).await.expect("start");
    cp.fleet.fail_next_creates(2);
    cp.create_cluster("flaky", 0, 1, 600).await;
    let id = cp.submit(job_spec("flaky")).await;

    let cluster = eventually("the provider error on the cluster", || async {
        let c = cp.cluster("flaky").await;
        c.errors
            .iter()
            .any(|e| e.code == "provider_error")
            .then_some(c)
    })
    .await;
    assert!(
        cluster
            .errors
            .iter()
            .any(|e| e.message.contains("out of machines")),
        "the cluster shows the provider's words: {:?}",
        cluster.errors
    );
    assert_eq!(cp.fleet.creates(), 1);
    // The clock has not moved: however many passes, no second try.
    cp.after_passes(5).await;
    assert_eq!(cp.fleet.creates(), 1, "backoff holds between passes");

    // First backoff: 4 s. Past it, one more try (which fails again).
    cp.advance(Duration::from_secs(5));
    eventually("a second try", || async {
        (cp.fleet.creates() == 2).then_some(())
    })
    .await;
    cp.advance(Duration::from_secs(5));
    cp.after_passes(3).await;
    assert_eq!(cp.fleet.creates(), 2, "the second backoff (8 s) is longer");

    cp.advance(Duration::from_secs(4));
    let (node, container) = cp.running_container(&id).await;
    assert_eq!(cp.fleet.creates(), 3);
    cp.fleet
        .runtime(&node)
        .expect("engine")
        .exit(&container, 0)
        .expect("exit");
    cp.job_in(&id, v1::JobState::Completed).await;
    eventually("the issue cleared", || async {
        cp.cluster("flaky").await.errors.is_empty().then_some(())
    })
    .await;
    cp.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_node_keeps_its_notice_window_and_its_job_runs_again() {
    let cp = InProcess::start(&[]).await.expect("start");
    cp.create_cluster_with(v1::ClusterSpec {
        vm_priority: v1::VmPriority::LowPriority as i32,
        ..cluster_spec("cheap", 0, 1, 600)
    })
    .await;
    let id = cp.submit(job_spec("cheap")).await;
    let (node, container) = cp.running_container(&id).await;

    cp.compute()
        .simulate_eviction(v1::SimulateEvictionRequest {
            name: "cheap".into(),
            node_id: node.clone(),
            notice_seconds: Some(30),
        })
        .await
        .expect("simulate an eviction");
    let runtime = cp.fleet.runtime(&node).expect("engine");
    // The agent sees the notice and SIGTERMs the job (the fake exits 143).
    let stopped = runtime
        .wait_until(strato_e2e::in_process::PATIENCE, |cs| {
            cs.iter()
                .any(|c| c.spec.name == container && c.exit_code == Some(EXIT_SIGTERM))
        })
        .await
        .expect("the job got SIGTERM");
    assert!(
        stopped
            .iter()
            .any(|c| c.signals.iter().any(|s| s.contains("TERM"))),
        "{stopped:?}"
    );
    eventually("the node preempted", || async {
        cp.nodes("cheap")
            .await
            .into_iter()
            .find(|n| n.node_id == node && state(n) == v1::NodeState::Preempted)
    })
    .await;

    // Within the notice window the node stays, and holds the cluster's one
    // place: the job waits.
    cp.advance(Duration::from_secs(20));
    cp.after_passes(3).await;
    assert!(
        cp.nodes("cheap").await.iter().any(|n| n.node_id == node),
        "the node stays until NotBefore"
    );

    cp.advance(Duration::from_secs(15));
    let job = eventually("the job on a new node", || async {
        let job = cp.job(&id).await;
        (job.attempt == 2 && job.state == v1::JobState::Running as i32 && job.node_id != node)
            .then_some(job)
    })
    .await;
    let preempted = job
        .transitions
        .iter()
        .find(|t| t.state == v1::JobState::Preempted as i32)
        .unwrap_or_else(|| panic!("the job went through preempted: {:?}", job.transitions));
    assert!(
        preempted.reason.contains("143"),
        "the attempt ended with the job's answer to SIGTERM: {}",
        preempted.reason
    );
    assert!(
        job.transitions.iter().any(|t| t
            .reason
            .contains("1 of 3 preemptions; failure retries untouched")),
        "the preemption is counted apart from failures: {:?}",
        job.transitions
    );
    assert!(
        !cp.fleet.node_ids().contains(&node),
        "the evicted node is gone"
    );
    cp.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_rank_ends_the_gang_and_stops_the_other_ranks() {
    let cp = InProcess::start(&[]).await.expect("start");
    cp.create_cluster("gang", 0, 2, 600).await;
    let id = cp
        .submit(v1::JobSpec {
            node_count: 2,
            distribution: v1::Distribution::Pytorch as i32,
            ..job_spec("gang")
        })
        .await;
    let job = cp.job_in(&id, v1::JobState::Running).await;
    let attempt = &job.attempts[0];
    assert_eq!(attempt.node_ids.len(), 2, "{attempt:?}");
    let ranks: Vec<_> = attempt
        .node_ids
        .iter()
        .map(|n| cp.fleet.runtime(n).expect("engine"))
        .collect();
    let mut containers = Vec::new();
    for runtime in &ranks {
        let c = runtime
            .wait_until(strato_e2e::in_process::PATIENCE, |cs| {
                cs.iter().any(|c| c.running())
            })
            .await
            .expect("every rank's container runs");
        containers.push(c[0].spec.name.clone());
    }

    ranks[1].exit(&containers[1], 3).expect("rank 1 fails");
    let failed = cp.job_in(&id, v1::JobState::Failed).await;
    assert!(
        failed.reason.contains("rank 1"),
        "the gang's end names the rank: {}",
        failed.reason
    );
    // Rank 0 is stopped, and both nodes are free again.
    let rank0 = ranks[0]
        .wait_until(strato_e2e::in_process::PATIENCE, |cs| {
            cs.iter().all(|c| !c.running())
        })
        .await
        .expect("rank 0 stopped");
    assert!(
        rank0
            .iter()
            .all(|c| c.signals.iter().any(|s| s.contains("TERM"))),
        "{rank0:?}"
    );
    eventually("both nodes idle", || async {
        let nodes = cp.nodes("gang").await;
        (nodes.len() == 2 && nodes.iter().all(|n| state(n) == v1::NodeState::Idle)).then_some(())
    })
    .await;
    cp.stop().await.expect("stop");
}

/// One caller may keep only so many log streams followed and jobs waited
/// on open at once; a call that ends gives its slot back. Listing logs
/// without following is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_followers_are_bounded_per_caller() {
    let cp = InProcess::start(&["--max-followers-per-caller", "2"])
        .await
        .expect("start");
    cp.create_cluster("quiet", 0, 1, 60).await;
    let id = cp.submit(job_spec("quiet")).await;
    let follow = || v1::StreamLogsRequest {
        id: id.clone(),
        follow: true,
        after: None,
    };
    let mut jobs = cp.jobs();
    let first = jobs.stream_logs(follow()).await.expect("first follower");
    let _second = jobs.stream_logs(follow()).await.expect("second follower");
    let refused = jobs
        .stream_logs(follow())
        .await
        .map(|_| ())
        .expect_err("a third is one too many");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-followers-per-caller"),
        "{}",
        refused.message()
    );
    jobs.stream_logs(v1::StreamLogsRequest {
        id: id.clone(),
        follow: false,
        after: None,
    })
    .await
    .expect("reading without following is not bounded");
    drop(first);
    let third = eventually("the ended stream's slot to be free again", || {
        let mut jobs = cp.jobs();
        let request = follow();
        async move { jobs.stream_logs(request).await.ok() }
    })
    .await;
    // A job waited on holds a slot too: with two streams open, a wait is
    // one too many, and with one stream open, a wait and a stream fill
    // both slots.
    let refused = jobs
        .wait_job(v1::WaitJobRequest { id: id.clone() })
        .await
        .expect_err("two streams and a wait");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    drop(third);
    let waiting = tokio::spawn({
        let mut jobs = cp.jobs();
        let id = id.clone();
        async move {
            // Until the dropped stream's slot is free, the wait is refused.
            loop {
                match jobs.wait_job(v1::WaitJobRequest { id: id.clone() }).await {
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => continue,
                    other => return other,
                }
            }
        }
    });
    eventually("the wait to take the freed slot", || {
        let mut jobs = cp.jobs();
        let request = follow();
        async move {
            match jobs.stream_logs(request).await {
                Err(e) if e.code() == tonic::Code::ResourceExhausted => Some(()),
                _ => None,
            }
        }
    })
    .await;
    waiting.abort();
}

/// Ended jobs are deleted with their logs once they are older than
/// `--job-retention`; a job still running is kept however old; `DeleteJob`
/// refuses a running job and deletes an ended one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_go_after_the_retention_period_or_when_deleted() {
    let cp = InProcess::start(&["--job-retention", "3600"])
        .await
        .expect("start");
    cp.create_cluster("keep", 1, 2, 600).await;
    let done = cp.submit(job_spec("keep")).await;
    let (node, container) = cp.running_container(&done).await;
    let runtime = cp.fleet.runtime(&node).expect("the node's engine");
    runtime
        .print(
            &container,
            strato_runtime::OutputStream::Stdout,
            "old output",
        )
        .expect("print");
    runtime.exit(&container, 0).expect("exit");
    cp.job_in(&done, v1::JobState::Completed).await;
    let running = cp.submit(job_spec("keep")).await;
    cp.running_container(&running).await;

    let mut jobs = cp.jobs();
    let e = jobs
        .delete_job(v1::DeleteJobRequest {
            id: running.clone(),
        })
        .await
        .expect_err("a running job");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("cancel it"), "{e:?}");

    // Within the retention period: kept.
    cp.advance(Duration::from_secs(3500));
    cp.after_passes(3).await;
    assert_eq!(cp.job(&done).await.state, v1::JobState::Completed as i32);
    // Past it (and past the minute between retention runs): gone, logs too.
    cp.advance(Duration::from_secs(200));
    eventually("the old job to go", || {
        let mut jobs = cp.jobs();
        let done = done.clone();
        async move {
            jobs.get_job(v1::GetJobRequest { id: done })
                .await
                .err()
                .filter(|e| e.code() == tonic::Code::NotFound)
        }
    })
    .await;
    assert_eq!(
        cp.job(&running).await.state,
        v1::JobState::Running as i32,
        "a running job is kept"
    );

    jobs.cancel_job(v1::CancelJobRequest {
        id: running.clone(),
    })
    .await
    .expect("cancel");
    cp.job_in(&running, v1::JobState::Canceled).await;
    jobs.delete_job(v1::DeleteJobRequest {
        id: running.clone(),
    })
    .await
    .expect("delete an ended job");
    let e = jobs
        .get_job(v1::GetJobRequest { id: running })
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), tonic::Code::NotFound);
    cp.stop().await.expect("stop");
}
