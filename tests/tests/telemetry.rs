//! End-to-end: a real Prometheus scrapes the control plane and the agents of
//! a running cluster.

use std::time::Duration;

use strato_e2e::{ControlPlane, Prometheus, TEST_IMAGE, require_docker, wait_for};
use strato_proto::v1;

#[tokio::test]
async fn prometheus_scrapes_the_control_plane_and_the_agents() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start_fast(&dir.path().join("data"))
        .await
        .expect("start");
    let out = cp.cli(&[
        "compute",
        "create",
        "-n",
        "watched",
        "-s",
        "Standard_D2_v2",
        "--min-nodes",
        "1",
        "--max-nodes",
        "1",
    ]);
    // The create waits until its min node is up, saying how far it is.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("watched: 1 of 1 min nodes up"),
        "{said}"
    );
    let shown = cp.cli(&["compute", "show", "-n", "watched", "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["node_state_counts"]["idle"], 1, "{shown}");
    let mut jobs = cp.jobs().await;
    let id = jobs
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "watched".into(),
                image: TEST_IMAGE.into(),
                command: vec!["sleep".into(), "120".into()],
                resources: Some(v1::JobResources {
                    cpu: 0.5,
                    memory_mb: 64,
                    gpus: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let prom = Prometheus::start(&dir.path().join("prometheus"), &cp)
        .await
        .expect("prometheus");

    let up = wait_for("both targets up", Duration::from_secs(60), || {
        let up = prom.query("up == 1");
        async move { (up.len() == 2).then_some(up) }
    })
    .await;
    let jobs_up: Vec<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str())
        .collect();
    assert!(
        jobs_up.contains(&"strato-control") && jobs_up.contains(&"strato-agents"),
        "{up:?}"
    );

    let memory = wait_for(
        "the node's available memory",
        Duration::from_secs(30),
        || {
            let r = prom.query("node_memory_MemAvailable_bytes");
            async move { (!r.is_empty()).then_some(r) }
        },
    )
    .await;
    assert_eq!(memory[0]["metric"]["cluster"], "watched");
    let container = wait_for(
        "the running job's container memory",
        Duration::from_secs(60),
        || {
            let r = prom.query(&format!("strato_job_memory_usage_bytes{{job_id=\"{id}\"}}"));
            async move { (!r.is_empty()).then_some(r) }
        },
    )
    .await;
    let limit = prom.query(&format!("strato_job_memory_limit_bytes{{job_id=\"{id}\"}}"));
    assert_eq!(
        limit[0]["value"][1], "67108864",
        "the 64 MiB limit: {limit:?}"
    );
    assert_eq!(container[0]["metric"]["attempt"], "1");
    let nodes = prom.query("strato_cluster_nodes{cluster=\"watched\",state=\"running\"}");
    assert_eq!(nodes[0]["value"][1], "1", "{nodes:?}");

    // Heartbeats carry utilisation; list-nodes shows it and the metrics URL.
    let listed = wait_for("utilisation in list-nodes", Duration::from_secs(30), || {
        let out = cp.cli(&["compute", "list-nodes", "-n", "watched", "-o", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        async move { (json[0]["memory_total_bytes"].as_u64().unwrap_or(0) > 0).then_some(json) }
    })
    .await;
    let metrics_url = listed[0]["metrics_url"].as_str().unwrap_or_default();
    assert!(metrics_url.starts_with("https://127.0.0.1:"), "{listed}");
    agent_metrics_answer_only_the_scraper(&cp, &listed[0]["node_id"], metrics_url);

    // promtool finds nothing to say about the control plane's metrics.
    let text = cp.http_get("/metrics");
    for series in [
        "strato_grpc_requests_total{method=\"/strato.v1.ComputeService/CreateCluster\",code=\"Ok\"} 1",
        "strato_grpc_request_duration_seconds_bucket{method=\"/strato.v1.JobService/SubmitJob\",code=\"Ok\",le=\"+Inf\"} 1",
        "strato_scale_events_total{cluster=\"watched\",direction=\"up\",reason=\"demand\"} 1",
        "strato_quota_limit{location=\"local\",quota=\"standardDv2Family\",unit=\"vCPUs\"} 100",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    jobs.cancel_job(v1::CancelJobRequest { id })
        .await
        .expect("cancel");
}

/// The agent's `/metrics` speaks only TLS, with a serving certificate of
/// the node serving CA (which clients of the main CA do not trust), and
/// answers only the control plane's scraper certificate: not a client
/// without a certificate, not a node's.
fn agent_metrics_answer_only_the_scraper(cp: &ControlPlane, node: &serde_json::Value, url: &str) {
    let addr: std::net::SocketAddr = url
        .trim_start_matches("https://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("host:port");
    let tls = cp.data_dir.join("tls");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).expect("readable");
    let serving_ca = read(tls.join("node-serving-ca.crt"));
    let (scraper_cert, scraper_key) =
        (read(tls.join("scraper.crt")), read(tls.join("scraper.key")));
    let node = node.as_str().expect("node id");
    let credentials = cp
        .data_dir
        .join("nodes")
        .join(node)
        .join("work/credentials");
    let (node_cert, node_key) = (
        read(credentials.join("node.crt")),
        read(credentials.join("node.key")),
    );
    let get = |ca: &str, client: Option<(&str, &str)>| {
        strato_e2e::https_request(addr, ca, "GET", "/metrics", &[], client)
    };

    let (code, body) = get(&serving_ca, Some((&scraper_cert, &scraper_key))).expect("scrape");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("node_memory_MemTotal_bytes"), "{body}");
    let (code, body) = get(&serving_ca, None).expect("GET");
    assert_eq!(code, 401, "no client certificate: {body}");
    assert!(body.contains("scraper.crt"), "{body}");
    let (code, body) = get(&serving_ca, Some((&node_cert, &node_key))).expect("GET");
    assert_eq!(code, 403, "a node's certificate: {body}");
    let main_ca = cp.admin().ca_certificate.clone().expect("CA");
    let refused = get(&main_ca, Some((&scraper_cert, &scraper_key)))
        .expect_err("the main CA does not vouch for a node's serving certificate");
    assert!(
        format!("{refused:#}").contains("certificate"),
        "{refused:#}"
    );

    // Plaintext: no HTTP answer at all.
    let answer = strato_e2e::plaintext_answer(addr, "/metrics");
    assert!(
        !answer.contains("HTTP/1."),
        "plaintext was answered: {answer:?}"
    );
}
