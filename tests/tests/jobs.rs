//! End-to-end: jobs on autoscaled nodes. The real control plane with the
//! local provider starts real `strato-agent` processes, which run jobs in
//! the real Docker engine.

use std::time::Duration;

use strato_e2e::Channel;
use strato_e2e::{
    ControlPlane, TEST_IMAGE, containers_of, containers_of_job, require_docker, wait_for,
};
use strato_proto::v1::{
    self, compute_service_client::ComputeServiceClient, job_service_client::JobServiceClient,
};

/// Fast timings so failures show within seconds.
const FAST: &[&str] = &[
    "--node-heartbeat-timeout",
    "3",
    "--heartbeat-interval",
    "1",
    "--reconcile-interval-ms",
    "200",
    "--node-start-timeout",
    "30",
    "--cancel-grace",
    "1",
];

const LONG: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path, extra: &[&str]) -> ControlPlane {
    require_docker();
    // FAST's flag/value pairs, less those `extra` sets again.
    let mut args: Vec<&str> = FAST
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0]))
        .flatten()
        .copied()
        .collect();
    args.extend_from_slice(extra);
    ControlPlane::start(&dir.join("data"), &args)
        .await
        .expect("start the control plane")
}

async fn cluster(cp: &ControlPlane, name: &str, min: u32, max: u32, idle: u64) {
    cp.client()
        .await
        .create_cluster(v1::CreateClusterRequest {
            spec: Some(v1::ClusterSpec {
                name: name.into(),
                vm_size: "Standard_D2_v2".into(),
                min_nodes: min,
                max_nodes: Some(max),
                idle_seconds_before_scaledown: Some(idle),
                ..Default::default()
            }),
        })
        .await
        .expect("create cluster");
}

async fn submit(
    jobs: &mut JobServiceClient<Channel>,
    cluster: &str,
    script: &str,
    max_retries: u32,
) -> String {
    jobs.submit_job(v1::SubmitJobRequest {
        spec: Some(v1::JobSpec {
            cluster: cluster.into(),
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            max_retries,
            ..Default::default()
        }),
    })
    .await
    .expect("submit")
    .into_inner()
    .id
}

async fn job(jobs: &mut JobServiceClient<Channel>, id: &str) -> v1::Job {
    jobs.get_job(v1::GetJobRequest { id: id.into() })
        .await
        .expect("get job")
        .into_inner()
}

fn is(j: &v1::Job, s: v1::JobState) -> bool {
    j.state == s as i32
}

async fn wait_state(jobs: &mut JobServiceClient<Channel>, id: &str, s: v1::JobState) -> v1::Job {
    wait_for(&format!("job {id} {s:?}"), LONG, || {
        let mut jobs = jobs.clone();
        async move {
            let j = job(&mut jobs, id).await;
            is(&j, s).then_some(j)
        }
    })
    .await
}

async fn nodes(compute: &mut ComputeServiceClient<Channel>, cluster: &str) -> Vec<v1::Node> {
    compute
        .list_nodes(v1::ListNodesRequest {
            cluster: cluster.into(),
        })
        .await
        .expect("list nodes")
        .into_inner()
        .nodes
}

async fn show(compute: &mut ComputeServiceClient<Channel>, cluster: &str) -> v1::Cluster {
    compute
        .get_cluster(v1::GetClusterRequest {
            name: cluster.into(),
        })
        .await
        .expect("get cluster")
        .into_inner()
}

#[tokio::test]
async fn three_jobs_grow_the_cluster_to_two_and_it_shrinks_back_to_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "burst", 0, 2, 2).await;
    let mut jobs = cp.jobs().await;
    let compute = cp.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            submit(
                &mut jobs,
                "burst",
                &format!("echo out-{i}; echo err-{i} >&2; sleep 1"),
                0,
            )
            .await,
        );
    }
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    wait_for("all three jobs to complete", LONG, || {
        let (mut jobs, mut compute, ids) = (jobs.clone(), compute.clone(), ids.clone());
        let most = most.clone();
        async move {
            let n = nodes(&mut compute, "burst").await.len();
            most.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            for id in &ids {
                let j = job(&mut jobs, id).await;
                assert!(!is(&j, v1::JobState::Failed), "job failed: {j:?}");
                if !is(&j, v1::JobState::Completed) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    assert_eq!(
        most.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the cluster grows to max_nodes and never past it"
    );
    for (i, id) in ids.iter().enumerate() {
        let lines = strato_e2e::job_output(&mut jobs, id).await;
        assert!(
            lines.contains(&format!("out-{i}")) && lines.contains(&format!("err-{i}")),
            "{lines:?}"
        );
        let j = job(&mut jobs, id).await;
        assert_eq!((j.exit_code, j.attempts.len()), (Some(0), 1));
    }
    wait_for("the cluster to return to zero nodes", LONG, || {
        let mut compute = compute.clone();
        async move {
            let c = show(&mut compute, "burst").await;
            (c.current_node_count == 0
                && c.allocation_state == v1::AllocationState::Steady as i32
                && nodes(&mut compute, "burst").await.is_empty())
            .then_some(())
        }
    })
    .await;
    assert!(cp.agents().is_empty(), "no agent process outlives its node");
    // Logs are kept by the control plane after the nodes are gone.
    assert!(
        strato_e2e::job_output(&mut jobs, &ids[0])
            .await
            .contains(&"out-0".to_owned())
    );
}

#[tokio::test]
async fn min_one_keeps_exactly_one_node_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "warm", 1, 3, 1).await;
    let mut compute = cp.client().await;
    wait_for("one idle node", LONG, || {
        let mut compute = compute.clone();
        async move {
            let n = nodes(&mut compute, "warm").await;
            (n.len() == 1 && n[0].state == v1::NodeState::Idle as i32).then_some(())
        }
    })
    .await;
    let mut jobs = cp.jobs().await;
    let id = submit(&mut jobs, "warm", "echo warm", 0).await;
    wait_state(&mut jobs, &id, v1::JobState::Completed).await;
    // Until the node has been idle for three idle times, it stays and no
    // other appears.
    wait_for("the node to be idle for three idle times", LONG, || {
        let mut compute = compute.clone();
        async move {
            let n = nodes(&mut compute, "warm").await;
            assert_eq!(n.len(), 1, "min 1 keeps exactly one node: {n:?}");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            let idle_since = n[0].state_since.as_ref().map_or(now, |t| t.seconds);
            (n[0].state == v1::NodeState::Idle as i32 && now - idle_since >= 3).then_some(())
        }
    })
    .await;
    let c = show(&mut compute, "warm").await;
    assert_eq!((c.current_node_count, c.target_node_count), (1, 1));
}

#[tokio::test]
async fn a_failing_job_reports_its_exit_code_and_wait_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "fail", 0, 1, 5).await;
    let mut jobs = cp.jobs().await;
    let id = submit(&mut jobs, "fail", "echo about to fail; exit 3", 0).await;
    let out = tokio::task::spawn_blocking({
        let mut cli = cp.cli_command();
        let id = id.clone();
        move || {
            cli.args(["job", "wait", &id])
                .output()
                .expect("strato job wait")
        }
    })
    .await
    .expect("join");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j = job(&mut jobs, &id).await;
    assert!(is(&j, v1::JobState::Failed));
    assert_eq!(j.exit_code, Some(3));
    assert!(j.reason.contains('3'), "{}", j.reason);
    assert_eq!(
        strato_e2e::job_output(&mut jobs, &id).await,
        vec!["about to fail".to_owned()]
    );
}

#[tokio::test]
async fn canceling_a_running_job_removes_its_container() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "cancel", 0, 1, 5).await;
    let mut jobs = cp.jobs().await;
    let id = submit(&mut jobs, "cancel", "echo started; sleep 300", 0).await;
    wait_state(&mut jobs, &id, v1::JobState::Running).await;
    wait_for("the job's output", LONG, || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            strato_e2e::job_output(&mut jobs, &id)
                .await
                .contains(&"started".to_owned())
                .then_some(())
        }
    })
    .await;
    assert_eq!(containers_of_job(&id).len(), 1);
    jobs.cancel_job(v1::CancelJobRequest { id: id.clone() })
        .await
        .expect("cancel");
    let j = wait_state(&mut jobs, &id, v1::JobState::Canceled).await;
    assert!(j.reason.contains("cancel"), "{}", j.reason);
    wait_for("the container to be removed", LONG, || {
        let id = id.clone();
        async move { containers_of_job(&id).is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn control_plane_kill_9_loses_no_job_and_runs_none_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = start(dir.path(), &[]).await;
    kill_9_while_jobs_run(&mut cp, "crash", 3).await;
}

/// Submits `count` jobs to a new cluster `name`, kills the control plane
/// with -9 once the first runs and starts it again: every job completes,
/// in one attempt, having printed its line once.
async fn kill_9_while_jobs_run(cp: &mut ControlPlane, name: &str, count: usize) {
    cluster(cp, name, 0, 2, 30).await;
    let mut jobs = cp.jobs().await;
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(submit(&mut jobs, name, &format!("echo once-{i}; sleep 2"), 0).await);
    }
    wait_state(&mut jobs, &ids[0], v1::JobState::Running).await;
    cp.kill9();
    cp.restart().await.expect("restart");
    let mut jobs = cp.jobs().await;
    for (i, id) in ids.iter().enumerate() {
        let j = wait_state(&mut jobs, id, v1::JobState::Completed).await;
        assert_eq!(j.attempts.len(), 1, "one attempt only: {j:?}");
        let lines = strato_e2e::job_output(&mut jobs, id).await;
        assert_eq!(lines, vec![format!("once-{i}")], "the job ran once");
    }
}

/// The same on PostgreSQL (`STRATO_DATABASE_URL`): the control plane keeps
/// nothing in its data directory's database, and a kill -9 loses nothing.
#[tokio::test]
async fn on_postgres_a_control_plane_kill_9_loses_no_job_and_runs_none_twice() {
    require_docker();
    let schema = strato_control::store::conformance::postgres::Schema::new().await;
    let url = schema.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut cp = ControlPlane::start_with_env(&data, FAST, &[("STRATO_DATABASE_URL", &url)])
        .await
        .expect("start the control plane on PostgreSQL");
    kill_9_while_jobs_run(&mut cp, "pgsql", 2).await;
    assert!(
        !data.join(strato_control::store::DB_FILE).exists(),
        "the state is in PostgreSQL, not in a SQLite file"
    );
    let agents = cp.agents();
    assert!(!agents.is_empty(), "the jobs' nodes are up");
    for (pid, node) in agents {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("agent environ");
        assert!(
            !String::from_utf8_lossy(&environ).contains("postgres://"),
            "agent {node} never sees the database URL"
        );
    }
}

/// Finds the node a job runs on.
async fn node_of(jobs: &mut JobServiceClient<Channel>, id: &str) -> String {
    wait_state(jobs, id, v1::JobState::Running).await.node_id
}

#[tokio::test]
async fn a_lost_agent_makes_its_node_unusable_and_the_job_runs_again_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "lost", 0, 2, 30).await;
    let mut jobs = cp.jobs().await;
    let compute = cp.client().await;
    let retried = submit(
        &mut jobs,
        "lost",
        "echo attempt $STRATO_ATTEMPT; sleep 4",
        1,
    )
    .await;
    let node = node_of(&mut jobs, &retried).await;
    cp.kill_agent(&node);
    wait_for("the node to become unusable or be removed", LONG, || {
        let (mut compute, node) = (compute.clone(), node.clone());
        async move {
            let n = nodes(&mut compute, "lost").await;
            n.iter()
                .find(|x| x.node_id == node)
                .is_none_or(|x| x.state == v1::NodeState::Unusable as i32)
                .then_some(())
        }
    })
    .await;
    let j = wait_state(&mut jobs, &retried, v1::JobState::Completed).await;
    assert_eq!(j.attempt, 2);
    assert_eq!(j.attempts.len(), 2);
    assert_eq!(j.attempts[0].node_id, node);
    assert!(
        j.attempts[0].reason.contains("lost"),
        "{}",
        j.attempts[0].reason
    );
    assert_ne!(j.attempts[1].node_id, node);
    wait_for("the lost node and its containers to be gone", LONG, || {
        let (mut compute, node) = (compute.clone(), node.clone());
        async move {
            let gone = nodes(&mut compute, "lost")
                .await
                .iter()
                .all(|x| x.node_id != node);
            (gone && containers_of(&node).is_empty()).then_some(())
        }
    })
    .await;

    // Without retries left, the job fails with the reason.
    let doomed = submit(&mut jobs, "lost", "sleep 60", 0).await;
    let node = node_of(&mut jobs, &doomed).await;
    cp.kill_agent(&node);
    let j = wait_state(&mut jobs, &doomed, v1::JobState::Failed).await;
    assert!(
        j.reason.contains(&node) && j.reason.contains("lost"),
        "{}",
        j.reason
    );
    wait_for("no container of the failed job", LONG, || {
        let doomed = doomed.clone();
        async move { containers_of_job(&doomed).is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn an_agent_back_within_the_timeout_readopts_its_container() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A generous heartbeat timeout: the agent is back well before it.
    let cp = start(dir.path(), &["--node-heartbeat-timeout", "20"]).await;
    cluster(&cp, "back", 0, 1, 30).await;
    let mut jobs = cp.jobs().await;
    let id = submit(&mut jobs, "back", "echo before; sleep 4; echo after", 2).await;
    let node = node_of(&mut jobs, &id).await;
    wait_for("the first line", LONG, || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            strato_e2e::job_output(&mut jobs, &id)
                .await
                .contains(&"before".to_owned())
                .then_some(())
        }
    })
    .await;
    cp.kill_agent(&node);
    let mut agent = cp.restart_agent(&node).expect("restart the agent");
    let j = wait_state(&mut jobs, &id, v1::JobState::Completed).await;
    assert_eq!(j.attempts.len(), 1, "not retried: {j:?}");
    assert_eq!(
        strato_e2e::job_output(&mut jobs, &id).await,
        vec!["before".to_owned(), "after".to_owned()]
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[tokio::test]
async fn a_scale_up_beyond_quota_says_why_and_jobs_wait_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quota = dir.path().join("quota.toml");
    // Standard_D2_v2 has 2 vCPUs: room for one node.
    std::fs::write(&quota, "[default.families]\nstandardDv2Family = 2\n").expect("quota file");
    let quota = quota.to_string_lossy().into_owned();
    let cp = start(dir.path(), &["--quota-file", &quota]).await;
    cluster(&cp, "tight", 0, 2, 30).await;
    let mut jobs = cp.jobs().await;
    let mut compute = cp.client().await;
    let first = submit(&mut jobs, "tight", "sleep 30", 0).await;
    let second = submit(&mut jobs, "tight", "echo second", 0).await;
    wait_state(&mut jobs, &first, v1::JobState::Running).await;
    let c = wait_for("a quota error on the cluster", LONG, || {
        let mut compute = compute.clone();
        async move {
            let c = show(&mut compute, "tight").await;
            c.errors
                .iter()
                .any(|e| e.code == "quota_exceeded")
                .then_some(c)
        }
    })
    .await;
    assert_eq!(c.allocation_state, v1::AllocationState::Resizing as i32);
    let e = c
        .errors
        .iter()
        .find(|e| e.code == "quota_exceeded")
        .expect("quota error");
    assert!(
        e.message.contains("standardDv2Family") && e.message.contains("is 2"),
        "{}",
        e.message
    );
    assert_eq!(nodes(&mut compute, "tight").await.len(), 1);
    let waiting = job(&mut jobs, &second).await;
    assert!(is(&waiting, v1::JobState::Queued));
    assert!(waiting.reason.contains("quota"), "{}", waiting.reason);
    // Once the first job ends, the second runs on the same node.
    jobs.cancel_job(v1::CancelJobRequest { id: first.clone() })
        .await
        .expect("cancel");
    wait_state(&mut jobs, &second, v1::JobState::Completed).await;
}

#[tokio::test]
async fn an_agent_without_a_valid_join_token_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    for token in ["", "not-a-token"] {
        let out = std::process::Command::new(strato_e2e::binary("strato-agent"))
            .env("STRATO_CONTROL_PLANE", cp.endpoint())
            .env(
                "STRATO_CONTROL_PLANE_CA",
                strato_control::tls::Tls::ca_path(&cp.data_dir),
            )
            .env("STRATO_JOIN_TOKEN", token)
            .output()
            .expect("run strato-agent");
        assert_eq!(
            out.status.code(),
            Some(2),
            "token {token:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A session without a session token is refused too.
    let mut agents = v1::agent_service_client::AgentServiceClient::new(cp.channel().await);
    let e = agents
        .session(tokio_stream::iter(Vec::<v1::AgentMessage>::new()))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Without a CSR: INVALID_ARGUMENT naming the field, before any token
    // is looked at; with one and a forged token: UNAUTHENTICATED.
    let e = agents
        .enroll(v1::EnrollRequest {
            join_token: "forged".into(),
            ..Default::default()
        })
        .await
        .expect_err("no CSR");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("csr_pem"), "{e:?}");
    let e = agents
        .enroll(v1::EnrollRequest {
            join_token: "forged".into(),
            csr_pem: csr(dir.path()),
            ..Default::default()
        })
        .await
        .expect_err("forged token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Enrolling again without a join token needs a node's certificate.
    let e = agents
        .enroll(v1::EnrollRequest {
            csr_pem: csr(dir.path()),
            ..Default::default()
        })
        .await
        .expect_err("no certificate");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("client certificate"), "{e:?}");
}

/// A CSR for a fresh key kept under `dir`.
fn csr(dir: &std::path::Path) -> String {
    let keys = dir.join(format!("impostor-{}", uuid_like()));
    strato_agent::session::credentials::Credentials::load(&keys, Default::default())
        .expect("a key")
        .csr()
        .expect("a CSR")
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The variable `key` of node `node`'s agent.env, as the local provider
/// wrote it.
fn agent_env(cp: &ControlPlane, node: &str, key: &str) -> String {
    let env = std::fs::read_to_string(cp.data_dir.join("nodes").join(node).join("agent.env"))
        .expect("agent.env");
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{key} in agent.env"))
}

/// The node's credentials directory under the local provider.
fn credentials(cp: &ControlPlane, node: &str) -> std::path::PathBuf {
    cp.data_dir
        .join("nodes")
        .join(node)
        .join("work")
        .join("credentials")
}

async fn one_idle_node(cp: &ControlPlane, cluster_name: &str) -> String {
    let mut compute = cp.client().await;
    wait_for("an idle node", LONG, || {
        let mut compute = compute.clone();
        async move {
            let n = nodes(&mut compute, cluster_name).await;
            (n.len() == 1 && n[0].state == v1::NodeState::Idle as i32).then(|| n[0].node_id.clone())
        }
    })
    .await;
    nodes(&mut compute, cluster_name).await[0].node_id.clone()
}

/// Someone who read a node's join token (it sits in the agent's
/// environment) cannot take its place: the token was used up by the
/// node's first enrolment, so it is refused and the node keeps its session
/// and runs the next job. Without the node's certificate nothing of the
/// agent service answers; the key and certificate are the agent's alone.
#[tokio::test]
async fn a_used_join_token_is_refused_and_the_node_keeps_its_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "held", 1, 1, 300).await;
    let node = one_idle_node(&cp, "held").await;
    // Its first session, right after enrolling with the join token, already
    // presented the new certificate: no session was refused.
    let agent_log =
        std::fs::read_to_string(cp.data_dir.join("nodes").join(&node).join("agent.log"))
            .expect("agent.log");
    assert!(
        !agent_log.contains("no session with the control plane"),
        "{agent_log}"
    );
    let stolen = agent_env(&cp, &node, "STRATO_JOIN_TOKEN");
    let mut agents = v1::agent_service_client::AgentServiceClient::new(cp.channel().await);
    let e = agents
        .enroll(v1::EnrollRequest {
            join_token: stolen,
            csr_pem: csr(dir.path()),
            hostname: "impostor".into(),
            ..Default::default()
        })
        .await
        .expect_err("a used join token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("already used"), "{e:?}");
    // The real agent still holds the node: the next job runs on it.
    let mut jobs = cp.jobs().await;
    let id = submit(&mut jobs, "held", "echo still-mine", 0).await;
    let done = wait_state(&mut jobs, &id, v1::JobState::Completed).await;
    assert_eq!(
        done.attempts.last().map(|a| a.node_id.as_str()),
        Some(node.as_str())
    );
    assert_eq!(strato_e2e::job_output(&mut jobs, &id).await, ["still-mine"]);
    // The node's certificate without its session token opens nothing.
    let creds = credentials(&cp, &node);
    let (cert, key) = (
        std::fs::read_to_string(creds.join("node.crt")).expect("node.crt"),
        std::fs::read_to_string(creds.join("node.key")).expect("node.key"),
    );
    use std::os::unix::fs::PermissionsExt as _;
    for (path, want) in [
        (creds.clone(), 0o700),
        (creds.join("node.key"), 0o600),
        (creds.join("node.crt"), 0o600),
    ] {
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, want, "{}", path.display());
    }
    let ca = std::fs::read_to_string(strato_control::tls::Tls::ca_path(&cp.data_dir)).expect("ca");
    let with_cert =
        strato_proto::client::endpoint_with_identity(&cp.endpoint(), Some(&ca), &cert, &key)
            .expect("endpoint")
            .connect()
            .await
            .expect("mutual TLS");
    let e = v1::agent_service_client::AgentServiceClient::new(with_cert)
        .renew_certificate(v1::RenewCertificateRequest {
            csr_pem: csr(dir.path()),
        })
        .await
        .expect_err("no session token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // And the node is still there, idle, with one session.
    let mut compute = cp.client().await;
    let n = nodes(&mut compute, "held").await;
    assert_eq!((n.len(), n[0].state), (1, v1::NodeState::Idle as i32));
}

/// Node certificates are short-lived and renewed by their agents: with a
/// 12-second lifetime, the agent has a new certificate before the first
/// expires, keeps its session past that expiry (the next job runs), and a
/// restarted agent enrols again with the renewed one.
#[tokio::test]
async fn node_certificates_are_renewed_before_they_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &["--node-certificate-lifetime", "12"]).await;
    cluster(&cp, "renew", 1, 1, 300).await;
    let node = one_idle_node(&cp, "renew").await;
    let path = credentials(&cp, &node).join("node.crt");
    // The agent writes it once enrolment has answered.
    let first = wait_for("the node's certificate", LONG, || {
        let path = path.clone();
        async move { std::fs::read_to_string(&path).ok() }
    })
    .await;
    let issued = std::time::SystemTime::now();
    let renewed = wait_for("a renewed certificate", LONG, || {
        let (path, first) = (path.clone(), first.clone());
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|now| *now != first)
        }
    })
    .await;
    assert!(renewed.contains("BEGIN CERTIFICATE"));
    assert!(
        issued.elapsed().expect("clock") < Duration::from_secs(12),
        "renewed before the first expired"
    );
    // Past the first certificate's end.
    wait_for("the first certificate to expire", LONG, || async {
        (issued.elapsed().unwrap_or_default() > Duration::from_secs(13)).then_some(())
    })
    .await;
    let mut jobs = cp.jobs().await;
    let id = submit(&mut jobs, "renew", "echo renewed", 0).await;
    let done = wait_state(&mut jobs, &id, v1::JobState::Completed).await;
    assert_eq!(
        done.attempts.last().map(|a| a.node_id.as_str()),
        Some(node.as_str())
    );
    // A restarted agent enrols with what it kept on disk.
    cp.kill_agent(&node);
    let mut agent = cp.restart_agent(&node).expect("restart the agent");
    let id = submit(&mut jobs, "renew", "echo after-restart", 0).await;
    let done = wait_state(&mut jobs, &id, v1::JobState::Completed).await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(
        done.attempts.last().map(|a| a.node_id.as_str()),
        Some(node.as_str())
    );
    assert!(
        cp.log_text().contains("node certificate renewed"),
        "the control plane logged the renewal"
    );
}

#[tokio::test]
async fn cli_submit_then_follow_prints_the_output_as_it_comes_and_ends_with_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "follow", 0, 1, 5).await;
    let (mut submit, mut follow) = (cp.cli_command(), cp.cli_command());
    let out = tokio::task::spawn_blocking(move || {
        let submit = submit
            .args([
                "job",
                "submit",
                "--compute",
                "follow",
                "--image",
                TEST_IMAGE,
            ])
            .args([
                "--env",
                "WHO=world",
                "--",
                "sh",
                "-c",
                "echo hello $WHO; sleep 1; echo bye",
            ])
            .output()
            .expect("submit");
        assert!(
            submit.status.success(),
            "{}",
            String::from_utf8_lossy(&submit.stderr)
        );
        let id = String::from_utf8_lossy(&submit.stdout).trim().to_owned();
        assert!(id.starts_with("job-"), "{id}");
        follow
            .args(["job", "logs", &id, "--follow"])
            .output()
            .expect("logs --follow")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\nbye\n");
    let mut jobs = cp.jobs().await;
    let listed = jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    let id = listed[0].id.clone();
    // A reader goes on from a line's position (as the CLI does when its
    // stream breaks); a position no store can hold (above i64::MAX) is
    // refused, naming the field.
    let lines = strato_e2e::job_log_lines(&mut jobs, &id).await;
    assert!(lines[0].pos < lines[1].pos, "{lines:?}");
    let after = |after: u64| v1::StreamLogsRequest {
        id: id.clone(),
        follow: false,
        after: Some(after),
    };
    let mut rest = jobs
        .stream_logs(after(lines[0].pos))
        .await
        .expect("logs after the first line")
        .into_inner();
    let mut texts = Vec::new();
    while let Some(l) = rest.message().await.expect("a line") {
        texts.push(l.line);
    }
    assert_eq!(texts, ["bye"]);
    let refused = jobs
        .stream_logs(after(u64::MAX))
        .await
        .map(|_| ())
        .expect_err("above i64::MAX");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("after"), "{}", refused.message());
    // An ended job can be deleted, with its logs.
    let deleted = cp.cli_ok(&["job", "delete", &id]);
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout),
        format!("job {id}: deleted\n")
    );
    let gone = cp.cli(&["job", "show", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

/// `job submit --stream` follows on the same connection: the output on
/// stdout, the id and the outcome on stderr, the exit status the job's.
#[tokio::test]
async fn cli_submit_stream_prints_the_output_and_exits_as_the_job_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "stream", 0, 1, 5).await;
    let (mut ok, mut failing) = (cp.cli_command(), cp.cli_command());
    let submit = [
        "job",
        "submit",
        "--stream",
        "--compute",
        "stream",
        "--image",
        TEST_IMAGE,
        "--",
    ];
    let (ok, failing) = tokio::task::spawn_blocking(move || {
        let ok = ok
            .args(submit)
            .args(["sh", "-c", "echo first; sleep 1; echo second"])
            .output()
            .expect("submit --stream");
        let failing = failing
            .args(submit)
            .args(["sh", "-c", "echo oops; exit 3"])
            .output()
            .expect("submit --stream");
        (ok, failing)
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "first\nsecond\n");
    assert!(stderr.contains("submitted; its output follows"), "{stderr}");
    assert!(stderr.contains("completed"), "{stderr}");
    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert_eq!(failing.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&failing.stdout), "oops\n");
    assert!(stderr.contains("failed (exit code 3)"), "{stderr}");
}

#[tokio::test]
async fn nodes_that_never_enrol_become_unusable_and_the_provider_backs_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An "agent" that exits at once: its node never enrols.
    let cp = start(
        dir.path(),
        &["--agent-binary", "/bin/false", "--node-start-timeout", "1"],
    )
    .await;
    cluster(&cp, "broken", 1, 2, 5).await;
    let mut compute = cp.client().await;
    let c = wait_for("a provider error on the cluster", LONG, || {
        let mut compute = compute.clone();
        async move {
            let c = show(&mut compute, "broken").await;
            c.errors
                .iter()
                .any(|e| e.code == "provider_error")
                .then_some(c)
        }
    })
    .await;
    let e = c
        .errors
        .iter()
        .find(|e| e.code == "provider_error")
        .expect("provider error");
    assert!(
        e.message.contains("did not enrol") && e.message.contains("next try"),
        "{}",
        e.message
    );
    assert_eq!(c.allocation_state, v1::AllocationState::Resizing as i32);
    // Backoff: over the next seconds, at most one more node is tried.
    let log_nodes = || cp.log_text().matches("scale up: node added").count();
    let before = log_nodes();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert!(nodes(&mut compute, "broken").await.len() <= 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        log_nodes() <= before + 1,
        "the provider is retried with backoff, not in a loop"
    );
}

/// Everything between the agents and the control plane crosses a proxy
/// here (`--agent-endpoint` points at it), as on a shared network: the
/// proxy sees TLS records only, and none of the join token, a job's secret
/// environment or its output.
#[tokio::test]
async fn a_proxy_between_agent_and_control_plane_sees_only_tls() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let via = format!("https://{}", proxy.local_addr().expect("addr"));
    let cp = start(dir.path(), &["--agent-endpoint", &via]).await;
    // Every byte each way, and how each connection began.
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let first = Arc::new(Mutex::new(Vec::<u8>::new()));
    let upstream = cp.grpc;
    let (seen2, first2) = (seen.clone(), first.clone());
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = proxy.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (seen, first) = (seen2.clone(), first2.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = {
                    let seen = seen.clone();
                    async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut began = false;
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            if !began {
                                began = true;
                                first.lock().expect("lock").push(buf[0]);
                            }
                            seen.lock().expect("lock").extend_from_slice(&buf[..n]);
                        }
                        let _ = sw.shutdown().await;
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        seen.lock().expect("lock").extend_from_slice(&buf[..n]);
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    cluster(&cp, "tapped", 1, 1, 300).await;
    let node = one_idle_node(&cp, "tapped").await;
    let join_token = agent_env(&cp, &node, "STRATO_JOIN_TOKEN");
    let secret = "s3cret-value-the-proxy-must-not-see";
    let marker = "output-the-proxy-must-not-see";
    let mut jobs = cp.jobs().await;
    let id = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "tapped".into(),
                image: strato_e2e::TEST_IMAGE.into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo {marker}; test -n \"$SECRET\""),
                ],
                environment: [("SECRET".to_owned(), secret.to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    wait_state(&mut jobs, &id, v1::JobState::Completed).await;
    assert_eq!(strato_e2e::job_output(&mut jobs, &id).await, [marker]);
    forwarder.abort();

    let seen = seen.lock().expect("lock").clone();
    let first = first.lock().expect("lock").clone();
    assert!(
        !first.is_empty(),
        "the agent's traffic went through the proxy"
    );
    assert!(
        first.iter().all(|b| *b == 0x16),
        "every connection began with a TLS handshake record: {first:?}"
    );
    for (what, text) in [
        ("the join token", join_token.as_str()),
        ("the job's secret", secret),
        ("the job's output", marker),
    ] {
        assert!(
            !seen.windows(text.len()).any(|w| w == text.as_bytes()),
            "{what} crossed the proxy in clear"
        );
    }
}

/// A job runs as the image's user unless it names one (`--user`, as
/// `docker run --user`); a malformed user is refused naming the field.
#[tokio::test]
async fn a_job_runs_as_the_user_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path(), &[]).await;
    cluster(&cp, "users", 0, 1, 300).await;
    let mut jobs = cp.jobs().await;
    let spec = |user: &str| v1::JobSpec {
        cluster: "users".into(),
        image: strato_e2e::TEST_IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), "echo $(id -u) $(id -g)".into()],
        user: user.into(),
        ..Default::default()
    };
    let e = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec("root; rm -rf /")),
        })
        .await
        .expect_err("a malformed user");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("user"), "{e:?}");
    for (user, shown) in [("", "0 0"), ("1234:4321", "1234 4321")] {
        let id = jobs
            .submit_job(v1::SubmitJobRequest {
                spec: Some(spec(user)),
            })
            .await
            .expect("submit")
            .into_inner()
            .id;
        wait_state(&mut jobs, &id, v1::JobState::Completed).await;
        assert_eq!(
            strato_e2e::job_output(&mut jobs, &id).await,
            [shown],
            "{user:?}"
        );
    }
}
