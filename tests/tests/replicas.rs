//! End-to-end: three control-plane replicas on one PostgreSQL database
//! (and one data directory: the CA, signing and secrets keys they share).
//! The leader is killed with -9 while a client submits jobs and agents run
//! them; then the next leader is frozen with SIGSTOP and resumed.

use std::io::{BufRead as _, Read as _};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use strato_e2e::{Channel, ControlPlane, TEST_IMAGE, free_port, require_docker, wait_for};
use strato_proto::v1::{self, job_service_client::JobServiceClient};

/// Fast timings so failures show within seconds.
/// The heartbeat timeout leaves agents of a frozen replica time to notice
/// it (HTTP/2 pings, about 15 s) and to dial the next (up to 5 s).
const FAST: &[&str] = &[
    "--node-heartbeat-timeout",
    "30",
    "--heartbeat-interval",
    "1",
    "--reconcile-interval-ms",
    "200",
    "--node-start-timeout",
    "30",
    "--cancel-grace",
    "1",
];

const LONG: Duration = Duration::from_secs(90);

/// A CLI process, killed if the test ends before it does.
struct Cli(Child);

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a replica logs when it takes the lease.
const LEADS: &str = "this replica leads";

async fn submit(jobs: &mut JobServiceClient<Channel>, script: &str) -> String {
    jobs.submit_job(v1::SubmitJobRequest {
        spec: Some(v1::JobSpec {
            cluster: "replicated".into(),
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }),
    })
    .await
    .expect("submit")
    .into_inner()
    .id
}

async fn wait_state(jobs: &JobServiceClient<Channel>, id: &str, s: v1::JobState) -> v1::Job {
    wait_for(&format!("job {id} {s:?}"), LONG, || {
        let mut jobs = jobs.clone();
        async move {
            let j = jobs
                .get_job(v1::GetJobRequest { id: id.into() })
                .await
                .ok()?
                .into_inner();
            (j.state == s as i32).then_some(j)
        }
    })
    .await
}

/// Which of `replicas` leads now (its log says it took the lease last, and
/// it runs), waiting up to `within`.
async fn leader(replicas: &[ControlPlane], not: &[usize], within: Duration) -> usize {
    wait_for("a replica to take the leader lease", within, || async {
        (0..replicas.len())
            .filter(|i| !not.contains(i) && replicas[*i].pid().is_some())
            .find(|i| replicas[*i].log_text().contains(LEADS))
    })
    .await
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn three_replicas_fail_over_losing_no_job_and_running_none_twice() {
    require_docker();
    let schema = strato_control::store::conformance::postgres::Schema::new().await;
    let url = schema.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut ports = Vec::new();
    while ports.len() < 6 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("https://127.0.0.1:{}", ports[2 * i]))
        .collect();
    // Agents know every replica, and hold their session with the first
    // that answers.
    let agent_endpoints = endpoints.join(",");
    let env = [
        ("STRATO_DATABASE_URL", url.as_str()),
        ("STRATO_AGENT_ENDPOINT", agent_endpoints.as_str()),
    ];
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(
            ControlPlane::start_replica(
                &data,
                &format!("replica-{i}"),
                (ports[2 * i], ports[2 * i + 1]),
                FAST,
                &env,
            )
            .await
            .expect("start a replica"),
        );
    }
    let first = leader(&replicas, &[], LONG).await;
    // The cluster is made, and jobs submitted, through a replica that does
    // not lead.
    let follower = (first + 1) % 3;
    replicas[follower]
        .client()
        .await
        .create_cluster(v1::CreateClusterRequest {
            spec: Some(v1::ClusterSpec {
                name: "replicated".into(),
                vm_size: "Standard_D2_v2".into(),
                min_nodes: 0,
                max_nodes: Some(2),
                idle_seconds_before_scaledown: Some(60),
                ..Default::default()
            }),
        })
        .await
        .expect("create the cluster through a follower");
    let mut jobs = replicas[follower].jobs().await;
    let mut ids = Vec::new();
    // The first runs across the kill: its container must be kept.
    ids.push(submit(&mut jobs, "echo before; sleep 6; echo after").await);
    for i in 1..3 {
        ids.push(submit(&mut jobs, &format!("echo once-{i}; sleep 1")).await);
    }
    wait_for("the first job's first line", LONG, || {
        let (mut jobs, id) = (jobs.clone(), ids[0].clone());
        async move {
            strato_e2e::job_output(&mut jobs, &id)
                .await
                .contains(&"before".to_owned())
                .then_some(())
        }
    })
    .await;

    // A CLI follows the first job's output through the leader (its
    // endpoint first): after the kill it goes on through another replica
    // from the line after the last it printed.
    let mut follow = Cli(replicas[follower]
        .cli_command()
        .arg("--endpoint")
        .arg(format!("{},{}", endpoints[first], endpoints[follower]))
        .args(["job", "logs", &ids[0], "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strato job logs --follow"));
    let mut followed = std::io::BufReader::new(follow.0.stdout.take().expect("stdout"));
    let (followed, line) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        followed
            .read_line(&mut line)
            .expect("the follower's output");
        (followed, line)
    })
    .await
    .expect("join");
    assert_eq!(
        line, "before\n",
        "the follower's first line, through the leader"
    );

    // kill -9 the leader while a client goes on submitting.
    let killed = Instant::now();
    replicas[first].kill9();
    let submitter = {
        let mut jobs = replicas[follower].jobs().await;
        tokio::spawn(async move {
            let mut more = Vec::new();
            for i in 3..6 {
                more.push(submit(&mut jobs, &format!("echo once-{i}")).await);
            }
            more
        })
    };
    let second = leader(&replicas, &[first], Duration::from_secs(10)).await;
    let took_over = killed.elapsed();
    eprintln!("a new leader (replica-{second}) took over {took_over:?} after the kill -9");
    assert!(
        took_over < Duration::from_secs(10),
        "took over in {took_over:?}"
    );
    ids.extend(submitter.await.expect("the submitter"));

    // Every acknowledged job completes, once, and the first kept its
    // container (one attempt, both lines).
    for (i, id) in ids.iter().enumerate() {
        let j = wait_state(&jobs, id, v1::JobState::Completed).await;
        assert_eq!(j.attempts.len(), 1, "one attempt only: {j:?}");
        let lines = strato_e2e::job_output(&mut jobs, id).await;
        let want = if i == 0 {
            vec!["before".to_owned(), "after".to_owned()]
        } else {
            vec![format!("once-{i}")]
        };
        assert_eq!(lines, want, "job {id} ran once");
    }

    // The follower went on through the other replica: the rest of the
    // output once, and it ended with the job.
    let (rest, status, stderr) = tokio::task::spawn_blocking(move || {
        let mut followed = followed;
        let mut rest = String::new();
        followed
            .read_to_string(&mut rest)
            .expect("the follower's output");
        let status = follow.0.wait().expect("the follower's exit");
        let mut stderr = String::new();
        if let Some(mut e) = follow.0.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (rest, status, stderr)
    })
    .await
    .expect("join");
    assert!(status.success(), "{stderr}");
    assert_eq!(
        rest, "after\n",
        "after the kill, from the next line: {stderr}"
    );
    eprintln!(
        "the follower across the kill said on stderr: {}",
        stderr.trim()
    );

    // The CLI fails over too: the dead replica's endpoint first.
    let listed = replicas[second]
        .cli_command()
        .arg("--endpoint")
        .arg(format!("{},{}", endpoints[first], endpoints[second]))
        .args(["job", "show", &ids[0], "-o", "json"])
        .output()
        .expect("strato");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&ids[0]));

    // SIGSTOP the new leader: the third replica takes over; resumed, the
    // old one makes no write as leader.
    let frozen_pid = replicas[second].pid().expect("running");
    let before = replicas[second].log_text().len();
    signal(frozen_pid, "-STOP");
    let third = 3 - first - second;
    wait_for("the third replica to take the lease", LONG, || async {
        replicas[third].log_text().contains(LEADS).then_some(())
    })
    .await;
    let mut jobs = replicas[third].jobs().await;
    let late = submit(&mut jobs, "echo late").await;
    signal(frozen_pid, "-CONT");
    let j = wait_state(&jobs, &late, v1::JobState::Completed).await;
    assert_eq!(j.attempts.len(), 1, "{j:?}");
    wait_for(
        "the resumed replica to see it lost the lease",
        LONG,
        || async {
            let log = replicas[second].log_text();
            let after = &log[before.min(log.len())..];
            (after.contains("lost the leader lease") || after.contains("ran out unrenewed"))
                .then(|| after.to_owned())
        },
    )
    .await;
    let log = replicas[second].log_text();
    let after = &log[before.min(log.len())..];
    eprintln!("the resumed replica's log about its lease:");
    for line in after
        .lines()
        .filter(|l| l.contains("lease") || l.contains("leader"))
    {
        eprintln!("  {line}");
    }
    for acted in ["job placed", "node added", "node removed", "node unusable"] {
        assert!(
            !after.contains(acted),
            "the deposed leader acted ({acted}) after it was resumed:\n{after}"
        );
    }
    drop(replicas);
    drop(schema);
}
