//! Bounds that hold whatever a job does: output without a newline is split
//! into lines of at most 16 KiB (none dropped), sent in batches far below
//! the gRPC message limit, and the job ends normally with its node free
//! again. Real binaries, real Docker.

use std::time::Duration;

use strato_e2e::{ControlPlane, job_log_lines, require_docker, wait_for, wait_job_state};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(120);

/// A job that runs `true` on `cluster`.
fn job(cluster: &str) -> v1::JobSpec {
    v1::JobSpec {
        cluster: cluster.into(),
        image: strato_e2e::TEST_IMAGE.into(),
        command: vec!["true".into()],
        ..Default::default()
    }
}
/// `strato_core::limits::MAX_LOG_LINE_BYTES`, as users are told it.
const LINE: usize = 16 * 1024;

/// The agent never held the output whole: the peak resident memory
/// (VmHWM, since its start) of the agent that ran `job` stayed under
/// 100 MiB.
fn assert_agent_stayed_small(cp: &ControlPlane, job: &v1::Job) {
    let node = job.attempts[0].node_id.clone();
    let (pid, _) = cp
        .agents()
        .into_iter()
        .find(|(_, n)| *n == node)
        .expect("the node's agent");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 100 * 1024,
        "the agent peaked at {peak_kib} KiB resident"
    );
}

/// 400 MB without a newline: the agent streams it in bounded lines (its
/// memory stays under 100 MiB), the control plane keeps the first
/// `--max-log-bytes-per-attempt` (16 MiB here) and one marker, and the job
/// ends normally with its node idle again.
#[tokio::test]
async fn four_hundred_megabytes_without_a_newline_keep_the_agent_small_and_the_store_bounded() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let budget: usize = 16 * 1024 * 1024;
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &[
            "--reconcile-interval-ms",
            "200",
            "--heartbeat-interval",
            "1",
            "--node-heartbeat-timeout",
            "15",
            "--max-log-bytes-per-attempt",
            &budget.to_string(),
        ],
    )
    .await
    .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "flood", "--max-nodes", "1"]);
    let total: u64 = 400 * 1000 * 1000;
    let mut jobs = cp.jobs().await;
    let id = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "flood".into(),
                image: "strato-test/busybox:latest".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "yes x | head -c {} | tr -d '\\n'; echo; echo after",
                        2 * total
                    ),
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let job = wait_job_state(
        &mut jobs,
        &id,
        v1::JobState::Completed,
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(job.exit_code, Some(0));
    assert_agent_stayed_small(&cp, &job);
    let lines = job_log_lines(&mut jobs, &id).await;
    let kept: usize = lines
        .iter()
        .filter(|l| l.line.starts_with('x'))
        .map(|l| l.line.len())
        .sum();
    assert!(kept <= budget, "{kept} bytes kept");
    assert!(kept > budget - LINE, "the budget was used: {kept}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.line.starts_with("[strato] output truncated"))
            .count(),
        1,
        "one marker"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.line.contains("only the first")),
        "nothing after the marker"
    );
}

#[tokio::test]
async fn six_megabytes_without_a_newline_end_as_split_lines_and_free_the_node() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start_fast(&dir.path().join("cp"))
        .await
        .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "chatty", "--max-nodes", "1"]);
    let total: usize = 6 * 1024 * 1024;
    let mut jobs = cp.jobs().await;
    let id = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "chatty".into(),
                image: "strato-test/busybox:latest".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    // `yes x` gives "x\n" pairs: twice the bytes, newlines
                    // removed.
                    format!(
                        "yes x | head -c {} | tr -d '\\n'; echo; echo after",
                        2 * total
                    ),
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let job = wait_job_state(&mut jobs, &id, v1::JobState::Completed, LONG).await;
    assert_eq!(job.exit_code, Some(0));
    assert_agent_stayed_small(&cp, &job);

    let lines = job_log_lines(&mut jobs, &id).await;
    let (xs, rest): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.line.starts_with('x'));
    assert!(
        lines.iter().all(|l| l.line.len() <= LINE),
        "every line within the bound: longest {}",
        lines.iter().map(|l| l.line.len()).max().unwrap_or(0)
    );
    assert_eq!(
        xs.iter().map(|l| l.line.len()).sum::<usize>(),
        total,
        "nothing dropped"
    );
    assert_eq!(xs.len(), total.div_ceil(LINE));
    assert_eq!(
        rest.last().map(|l| l.line.as_str()),
        Some("after"),
        "what came after the long output arrived too"
    );

    let compute = cp.client().await;
    wait_for("the node idle again", LONG, || {
        let mut compute = compute.clone();
        async move {
            let nodes = compute
                .list_nodes(v1::ListNodesRequest {
                    cluster: "chatty".into(),
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            nodes
                .iter()
                .all(|n| n.state == v1::NodeState::Idle as i32)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn oversized_submits_are_refused_naming_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("cp"), &["--provider", "none"])
        .await
        .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "bounded", "--max-nodes", "1"]);
    let mut jobs = cp.jobs().await;
    let base = job("bounded");
    let cases = [
        (
            v1::JobSpec {
                image: "a".repeat(3_000_000),
                ..base.clone()
            },
            "image",
        ),
        (
            v1::JobSpec {
                environment: (0..20_000).map(|i| (format!("K{i}"), "v".into())).collect(),
                ..base.clone()
            },
            "environment",
        ),
        (
            v1::JobSpec {
                command: (0..200_000).map(|i| i.to_string()).collect(),
                ..base.clone()
            },
            "command",
        ),
    ];
    for (spec, field) in cases {
        let refused = jobs
            .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().starts_with(field) && refused.message().contains("at most"),
            "names {field} and its limit: {}",
            refused.message()
        );
    }
    let listed = jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert!(listed.is_empty(), "nothing stored: {listed:?}");
}

#[tokio::test]
async fn the_data_dir_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cp");
    let cp = ControlPlane::start(&data, &["--provider", "none"])
        .await
        .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "private", "--max-nodes", "1"]);
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700, "the data dir");
    for entry in std::fs::read_dir(&data)
        .expect("read the data dir")
        .flatten()
    {
        let path = entry.path();
        if path.is_file() {
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is readable by others",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn job_list_pages_through_twenty_thousand_jobs() {
    use futures_util::StreamExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &["--provider", "none", "--submit-burst", "20000"],
    )
    .await
    .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "many", "--max-nodes", "1"]);
    const JOBS: usize = 20_000;
    let jobs = cp.jobs().await;
    let submitted: Vec<String> = futures_util::stream::iter(0..JOBS)
        .map(|_| {
            let mut jobs = jobs.clone();
            async move {
                jobs.submit_job(v1::SubmitJobRequest {
                    spec: Some(job("many")),
                })
                .await
                .expect("submit")
                .into_inner()
                .id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let mut jobs = jobs;
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = jobs
            .list_jobs(v1::ListJobsRequest {
                cluster: String::new(),
                page_size: 1_000,
                page_token: token,
            })
            .await
            .expect("a page")
            .into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 1_000);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 20);
    assert_eq!(seen.len(), JOBS, "no job twice");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    let mut expected = submitted;
    expected.sort();
    assert_eq!(sorted, expected, "every job once");

    for (size, token, field) in [(1_001, "", "page_size"), (10, "nonsense", "page_token")] {
        let refused = jobs
            .list_jobs(v1::ListJobsRequest {
                cluster: String::new(),
                page_size: size,
                page_token: token.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with(field),
            "{}",
            refused.message()
        );
    }

    // The CLI follows the pages itself.
    let out = cp.cli_ok(&["job", "list", "-o", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed.len(), JOBS);
}

#[tokio::test]
async fn submits_past_the_rate_are_refused_with_a_retry_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &[
            "--provider",
            "none",
            "--submit-rate",
            "0.5",
            "--submit-burst",
            "5",
        ],
    )
    .await
    .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "paced", "--max-nodes", "1"]);
    let mut jobs = cp.jobs().await;
    let submit = || v1::SubmitJobRequest {
        spec: Some(job("paced")),
    };
    for _ in 0..5 {
        jobs.submit_job(submit()).await.expect("within the burst");
    }
    let refused = jobs.submit_job(submit()).await.expect_err("past the burst");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("0.5 jobs per second") && refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    let retry: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry-after-ms hint");
    assert!((1..=2_000).contains(&retry), "{retry}");
    let listed = jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 5, "the refused submit stored nothing");
}

#[tokio::test]
async fn a_page_of_large_jobs_stays_below_the_message_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("cp"), &["--provider", "none"])
        .await
        .expect("start");
    cp.cli_ok(&["compute", "create", "-n", "bulky", "--max-nodes", "1"]);
    let mut jobs = cp.jobs().await;
    // 16 jobs of about 250 KiB each: 4 MB in all, over one message.
    const JOBS: usize = 16;
    for _ in 0..JOBS {
        jobs.submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "bulky".into(),
                image: "strato-test/busybox:latest".into(),
                command: vec!["true".into()],
                environment: (0..8)
                    .map(|i| (format!("BIG{i}"), "v".repeat(31 * 1024)))
                    .collect(),
                ..Default::default()
            }),
        })
        .await
        .expect("submit");
    }
    let first = jobs
        .list_jobs(v1::ListJobsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("the first page")
        .into_inner();
    assert!(
        first.jobs.len() < JOBS,
        "a shorter page: {}",
        first.jobs.len()
    );
    assert!(!first.next_page_token.is_empty(), "and a next one");
    let out = cp.cli_ok(&["job", "list", "-o", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed.len(), JOBS, "the CLI lists them all");
}
