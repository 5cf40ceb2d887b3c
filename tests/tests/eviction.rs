//! End-to-end: low-priority nodes, evictions delivered as real Scheduled
//! Events, and jobs re-queued after them.

use std::time::Duration;

use strato_e2e::{ControlPlane, TEST_IMAGE, containers_of, require_docker, wait_for};
use strato_proto::v1;
use tonic::Code;

const LONG: Duration = Duration::from_secs(90);

/// Attempt 1 waits for the eviction notice and reports it; later attempts
/// finish at once.
const CHECKPOINTING: &str = r#"
if [ "$STRATO_ATTEMPT" = 1 ]; then
  echo "attempt 1 on $STRATO_NODE_ID"
  while [ ! -f "$STRATO_PREEMPT_NOTICE" ]; do sleep 1; done
  echo "notice: $(cat $STRATO_PREEMPT_NOTICE)"
  sleep 600
else
  echo "attempt $STRATO_ATTEMPT done"
fi
"#;

#[tokio::test]
async fn an_evicted_job_sees_the_notice_and_runs_again_on_a_new_node() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start_fast(&dir.path().join("data"))
        .await
        .expect("start");
    for (name, tier) in [("spot", "low_priority"), ("steady", "dedicated")] {
        let out = cp.cli(&[
            "compute",
            "create",
            "-n",
            name,
            "-s",
            "Standard_D2_v2",
            "--max-nodes",
            "2",
            "--tier",
            tier,
            "--idle-seconds-before-scaledown",
            "30",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut jobs = cp.jobs().await;
    let id = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "spot".into(),
                image: TEST_IMAGE.into(),
                command: vec!["sh".into(), "-c".into(), CHECKPOINTING.into()],
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let running = wait_for("the job running", LONG, || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            let j = jobs
                .get_job(v1::GetJobRequest { id })
                .await
                .expect("get")
                .into_inner();
            (j.state == v1::JobState::Running as i32).then_some(j)
        }
    })
    .await;
    let node = running.node_id.clone();

    let out = cp.cli(&[
        "compute",
        "simulate-eviction",
        "-n",
        "spot",
        "--node",
        &node,
        "--notice-seconds",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Within the notice window: the job sees the notice, the node is preempted.
    let lines = wait_for("the job to see the notice", LONG, || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            let l = strato_e2e::job_output(&mut jobs, &id).await;
            l.iter()
                .any(|x| x.starts_with("notice: Preempt"))
                .then_some(l)
        }
    })
    .await;
    assert!(
        lines.iter().any(|l| l.contains("checkpoint now")),
        "{lines:?}"
    );
    let listed = cp.cli(&["compute", "list-nodes", "-n", "spot", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let evicted = nodes
        .as_array()
        .and_then(|n| n.iter().find(|x| x["node_id"] == node.as_str()))
        .cloned();
    if let Some(n) = evicted {
        assert_eq!(n["state"], "preempted", "{n}");
    }

    // Then the node goes, and the job runs again on another node.
    let done = wait_for("attempt 2 to complete", LONG, || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            let j = jobs
                .get_job(v1::GetJobRequest { id })
                .await
                .expect("get")
                .into_inner();
            (j.state == v1::JobState::Completed as i32).then_some(j)
        }
    })
    .await;
    assert_eq!(done.attempt, 2);
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(done.attempts[0].node_id, node);
    assert!(
        done.attempts[0].reason.contains("evicted"),
        "{:?}",
        done.attempts[0]
    );
    assert_ne!(done.attempts[1].node_id, node);
    assert!(
        done.transitions
            .iter()
            .any(|t| t.state == v1::JobState::Preempted as i32),
        "{:?}",
        done.transitions
    );
    assert_eq!(
        done.spec.as_ref().map(|s| s.max_retries),
        Some(0),
        "re-queued without failure retries"
    );
    assert!(
        strato_e2e::job_output(&mut jobs, &id)
            .await
            .contains(&"attempt 2 done".to_owned())
    );
    let shown = cp.cli(&["job", "show", &id, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(json["attempt"], 2);
    assert_eq!(json["attempts"].as_array().map(Vec::len), Some(2));
    wait_for(
        "the evicted node and its containers to be gone",
        LONG,
        || {
            let node = node.clone();
            let out = cp.cli(&["compute", "list-nodes", "-n", "spot", "-o", "json"]);
            async move {
                let nodes: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                let gone = nodes
                    .as_array()
                    .is_some_and(|n| n.iter().all(|x| x["node_id"] != node.as_str()));
                (gone && containers_of(&node).is_empty()).then_some(())
            }
        },
    )
    .await;

    // A dedicated cluster is never evicted.
    let e = cp
        .client()
        .await
        .simulate_eviction(v1::SimulateEvictionRequest {
            name: "steady".into(),
            node_id: "any".into(),
            notice_seconds: None,
        })
        .await
        .expect_err("dedicated");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("dedicated"), "{}", e.message());
}

#[tokio::test]
async fn low_priority_and_dedicated_quotas_do_not_touch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quota = dir.path().join("quota.toml");
    std::fs::write(
        &quota,
        "[default]\nlow_priority_cores = 4\ndedicated_cores_total = 4\n",
    )
    .expect("quota");
    let quota = quota.to_string_lossy().into_owned();
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &["--provider", "none", "--quota-file", &quota],
    )
    .await
    .expect("start");
    let create = |name: &str, tier: &str| {
        cp.cli(&[
            "compute",
            "create",
            "-n",
            name,
            "-s",
            "Standard_D2_v2",
            "--min-nodes",
            "2",
            "--max-nodes",
            "2",
            "--tier",
            tier,
            // No provider: the min nodes never come; the quota is the point.
            "--no-wait",
        ])
    };
    assert!(create("spota", "low_priority").status.success());
    let full = create("spotb", "low_priority");
    assert_eq!(full.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&full.stderr).contains("lowPriority"));
    // The dedicated quota is untouched by the low-priority cluster, and the reverse.
    assert!(create("deda", "dedicated").status.success());
    let full = create("dedb", "dedicated");
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("dedicatedTotal"),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let usage = cp.cli(&["compute", "list-usage", "-o", "json"]);
    let lines: serde_json::Value = serde_json::from_slice(&usage.stdout).expect("json");
    let line = |n: &str| {
        lines
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == n))
            .cloned()
            .expect(n)
    };
    assert_eq!(
        (
            line("lowPriority")["current"].clone(),
            line("dedicatedTotal")["current"].clone()
        ),
        (4.into(), 4.into())
    );
    let shown = cp.cli(&["compute", "show", "-n", "spota", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(json["quota_family"], "lowPriority");
}
