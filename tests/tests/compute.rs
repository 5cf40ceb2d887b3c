//! End-to-end: the real `strato-control` process over real gRPC, and the
//! real `strato` CLI against it.

use std::time::Duration;

use strato_e2e::Channel;
use strato_e2e::ControlPlane;
use strato_proto::v1::{self, compute_service_client::ComputeServiceClient};
use tonic::Code;

fn spec(name: &str, size: &str, min: u32, max: u32) -> v1::ClusterSpec {
    v1::ClusterSpec {
        name: name.into(),
        vm_size: size.into(),
        min_nodes: min,
        max_nodes: Some(max),
        ..Default::default()
    }
}

async fn create(
    client: &mut ComputeServiceClient<Channel>,
    s: v1::ClusterSpec,
) -> Result<v1::Cluster, tonic::Status> {
    let r = client
        .create_cluster(v1::CreateClusterRequest { spec: Some(s) })
        .await?;
    Ok(r.into_inner().cluster.expect("cluster in response"))
}

async fn names(client: &mut ComputeServiceClient<Channel>) -> Vec<String> {
    client
        .list_clusters(v1::ListClustersRequest {})
        .await
        .expect("list")
        .into_inner()
        .clusters
        .into_iter()
        .map(|c| c.spec.expect("spec").name)
        .collect()
}

fn update(name: &str, s: v1::ClusterSpec, paths: &[&str]) -> v1::UpdateClusterRequest {
    v1::UpdateClusterRequest {
        name: name.into(),
        spec: Some(s),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

fn write_quota(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("quota.toml");
    std::fs::write(&path, text).expect("write quota file");
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn lifecycle_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(&dir.path().join("data"), &["--provider", "none"])
        .await
        .expect("start");
    let mut client = cp.client().await;

    create(&mut client, spec("cpu-a", "Standard_D2_v2", 1, 4))
        .await
        .expect("create cpu-a");
    let mut gpu = spec("gpu-b", "standard_nc6s_v3", 0, 2);
    gpu.vm_priority = v1::VmPriority::LowPriority as i32;
    gpu.tags.insert("team".into(), "vision".into());
    let created = create(&mut client, gpu).await.expect("create gpu-b");
    assert_eq!(
        created.spec.as_ref().expect("spec").vm_size,
        "Standard_NC6s_v3"
    );
    create(&mut client, spec("doomed", "Standard_D2_v2", 0, 1))
        .await
        .expect("create doomed");

    let got = client
        .get_cluster(v1::GetClusterRequest {
            name: "cpu-a".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.spec.as_ref().expect("spec").min_nodes, 1);

    let patch = v1::ClusterSpec {
        max_nodes: Some(8),
        idle_seconds_before_scaledown: Some(30),
        ..Default::default()
    };
    let updated = client
        .update_cluster(update(
            "cpu-a",
            patch,
            &["max_nodes", "idle_seconds_before_scaledown"],
        ))
        .await
        .expect("update")
        .into_inner();
    let s = updated.spec.as_ref().expect("spec");
    assert_eq!(
        (s.max_nodes, s.idle_seconds_before_scaledown, s.min_nodes),
        (Some(8), Some(30), 1)
    );

    client
        .delete_cluster(v1::DeleteClusterRequest {
            name: "doomed".into(),
        })
        .await
        .expect("delete");
    let before = client
        .list_clusters(v1::ListClustersRequest {})
        .await
        .expect("list")
        .into_inner()
        .clusters;
    assert_eq!(before.len(), 2);

    cp.kill9();
    cp.restart().await.expect("restart on the same data dir");
    let mut client = cp.client().await;
    let after = client
        .list_clusters(v1::ListClustersRequest {})
        .await
        .expect("list after restart")
        .into_inner()
        .clusters;
    assert_eq!(
        after, before,
        "every acknowledged cluster is there, unchanged"
    );
}

#[tokio::test]
async fn refusals_carry_the_right_code_name_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quota = write_quota(dir.path(), "[default.families]\nstandardNCSv3Family = 6\n");
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &["--provider", "none", "--quota-file", &quota],
    )
    .await
    .expect("start");
    let mut client = cp.client().await;
    create(&mut client, spec("cpu-a", "Standard_D2_v2", 0, 2))
        .await
        .expect("create");

    let cases: Vec<(v1::ClusterSpec, &str)> = vec![
        (spec("gpu-2", "Standard_D2_v2", 0, 1), "name"),
        (spec("cpub", "Standard_D2_v2", 3, 2), "min_nodes"),
        (spec("cpuc", "Standard_D2_v2", 0, 101), "max_nodes"),
        (spec("cpud", "Standard_NC6", 0, 1), "vm_size"),
        (spec("cpue", "Standard_Nope", 0, 1), "vm_size"),
    ];
    for (s, field) in cases {
        let e = create(&mut client, s).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            e.message()
        );
    }
    let mut both = spec("ident", "Standard_D2_v2", 0, 1);
    both.identity = Some(v1::IdentitySpec {
        system_assigned: true,
        user_assigned_identities: vec!["/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u".into()],
    });
    let e = create(&mut client, both)
        .await
        .expect_err("both identities");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("identity:"), "{}", e.message());

    let e = create(&mut client, spec("CPU-A", "Standard_D2_v2", 0, 1))
        .await
        .expect_err("dup");
    assert_eq!(e.code(), Code::AlreadyExists);

    let e = client
        .get_cluster(v1::GetClusterRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .delete_cluster(v1::DeleteClusterRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Code::NotFound);

    // Immutable: FAILED_PRECONDITION naming the field; the cluster is unchanged.
    let before = client
        .get_cluster(v1::GetClusterRequest {
            name: "cpu-a".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let mut change = spec("cpu-a", "Standard_D3_v2", 0, 5);
    change.vm_priority = v1::VmPriority::Dedicated as i32;
    let e = client
        .update_cluster(update("cpu-a", change, &["max_nodes", "vm_size"]))
        .await
        .expect_err("immutable");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("vm_size:"), "{}", e.message());
    let e = client
        .update_cluster(update(
            "cpu-a",
            spec("cpu-a", "", 4, 5),
            &["min_nodes", "colour"],
        ))
        .await
        .expect_err("unknown field");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("update_mask:"), "{}", e.message());
    let after = client
        .get_cluster(v1::GetClusterRequest {
            name: "cpu-a".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(after, before, "a refused update changes nothing");

    // Quota: a cluster whose min_nodes do not fit is refused whole.
    let e = create(&mut client, spec("gpu-big", "Standard_NC6s_v3", 2, 2))
        .await
        .expect_err("quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
    for part in [
        "standardNCSv3Family",
        "is 6",
        "2 requested nodes",
        "12 vCPUs",
    ] {
        assert!(
            e.message().contains(part),
            "{part} missing: {}",
            e.message()
        );
    }
    assert_eq!(
        names(&mut client).await,
        vec!["cpu-a".to_owned()],
        "nothing stored"
    );
    let usage = client
        .list_usage(v1::ListUsageRequest::default())
        .await
        .expect("usage")
        .into_inner();
    let nc = usage
        .usages
        .iter()
        .find(|u| u.name == "standardNCSv3Family")
        .expect("family line");
    assert_eq!((nc.current, nc.limit), (0, 6));

    // Growing min_nodes past the quota is refused too.
    create(&mut client, spec("gpu-ok", "Standard_NC6s_v3", 1, 3))
        .await
        .expect("fits");
    let e = client
        .update_cluster(update("gpu-ok", spec("", "", 2, 3), &["min_nodes"]))
        .await
        .expect_err("growth over quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn concurrent_creates_over_quota_admit_exactly_those_that_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Standard_D2_v2 has 2 vCPUs; each cluster holds min 2 nodes = 4 vCPUs.
    let quota = write_quota(dir.path(), "[default.families]\nstandardDv2Family = 20\n");
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &["--provider", "none", "--quota-file", &quota],
    )
    .await
    .expect("start");
    let channel = cp.channel().await;
    let attempts = 12;
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let mut client = ComputeServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            create(
                &mut client,
                spec(&format!("race{i}"), "Standard_D2_v2", 2, 4),
            )
            .await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(admitted, 5, "20 vCPUs hold exactly five clusters of 4");
    let mut client = cp.client().await;
    assert_eq!(names(&mut client).await.len(), 5);
    let usage = client
        .list_usage(v1::ListUsageRequest::default())
        .await
        .expect("usage")
        .into_inner();
    let line = usage
        .usages
        .iter()
        .find(|u| u.name == "standardDv2Family")
        .expect("family");
    assert_eq!((line.current, line.limit), (20, 20));
}

#[tokio::test]
async fn health_and_reflection_are_served_and_sigterm_stops_cleanly() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(&dir.path().join("data"), &["--provider", "none"])
        .await
        .expect("start");
    let channel = cp.channel().await;

    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "strato.v1.ComputeService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = stream.message().await.expect("answer").expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "strato.v1.ComputeService",
        "strato.v1.JobService",
        "strato.v1.AgentService",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} not in {services:?}");
    }

    // Health needs no token; the side port speaks only TLS.
    let ca = cp.admin().ca_certificate.clone().expect("CA");
    let health = |path: &str| {
        strato_e2e::https_request(cp.http, &ca, "GET", path, &[], None).expect("GET over TLS")
    };
    assert_eq!(health("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(health("/readyz").0, 200);
    let plain = http_get(
        std::net::TcpStream::connect(cp.http).expect("http port"),
        "/healthz",
    );
    assert!(
        !plain.contains("200 OK"),
        "plaintext gets no answer: {plain:?}"
    );

    let status = cp
        .terminate(Duration::from_secs(10))
        .await
        .expect("exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        cp.log_text().contains("strato-control stopped"),
        "{}",
        cp.log_text()
    );
}

/// A plaintext GET, as a client that does not speak TLS sends it: what
/// comes back, lossily (a TLS alert is not text).
fn http_get(mut stream: std::net::TcpStream, path: &str) -> String {
    use std::io::{Read, Write};
    // One write: a TLS server may close (with a reset) as soon as the first
    // bytes are not a ClientHello, and a later write would fail with EPIPE.
    // A refused write is an answer too: nothing comes back.
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bad_configuration_exits_2_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(strato_e2e::binary("strato-control"))
        .args(["--region", "West Europe", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--region"));

    let quota = write_quota(dir.path(), "[default]\ndedicated_core_total = 1\n");
    let out = std::process::Command::new(strato_e2e::binary("strato-control"))
        .args(["--quota-file", &quota, "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--quota-file") && err.contains("dedicated_core_total"),
        "{err}"
    );
}

/// Sizes of the operator's own (`--vm-sizes-file`) are listed beside the
/// built-in ones, make clusters, and count against their family's quota.
#[tokio::test]
async fn a_size_of_the_operators_own_makes_a_cluster_under_its_familys_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes = dir.path().join("vm-sizes.toml");
    std::fs::write(
        &sizes,
        "[[size]]\nname = \"lab-gpu\"\nvcpus = 32\nmemory_gib = 128\ngpus = 2\n\
         gpu_model = \"RTX 4090 24 GB\"\nfamily = \"labGpuFamily\"\n",
    )
    .expect("sizes file");
    let quota = write_quota(dir.path(), "[default.families]\nlabGpuFamily = 64\n");
    let sizes = sizes.display().to_string();
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &[
            "--provider",
            "none",
            "--quota-file",
            &quota,
            "--vm-sizes-file",
            &sizes,
        ],
    )
    .await
    .expect("start");
    let listed = cp.cli_ok(&["compute", "list-sizes", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let lab = listed
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "lab-gpu"))
        .expect("the custom size is listed");
    assert_eq!(
        (lab["vcpus"].as_u64(), lab["gpus"].as_u64()),
        (Some(32), Some(2))
    );

    let mut client = cp.client().await;
    let made = create(&mut client, spec("lab-a", "LAB-GPU", 2, 2))
        .await
        .expect("two nodes of 32 vCPUs fit 64");
    assert_eq!(made.quota_family, "labGpuFamily");
    assert_eq!(made.vcpus_per_node, 32);
    let e = create(&mut client, spec("lab-b", "lab-gpu", 1, 1))
        .await
        .expect_err("over the family's quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("labGpuFamily"), "{}", e.message());
    let usage = client
        .list_usage(v1::ListUsageRequest::default())
        .await
        .expect("usage")
        .into_inner();
    let line = usage
        .usages
        .iter()
        .find(|u| u.name == "labGpuFamily")
        .expect("the family has a line");
    assert_eq!((line.current, line.limit), (64, 64));

    // A bad sizes file stops the control plane before it binds, naming it.
    let bad = dir.path().join("bad-sizes.toml");
    std::fs::write(
        &bad,
        "[[size]]\nname = \"x\"\nvcpus = 0\nmemory_gib = 1\nfamily = \"f\"\n",
    )
    .expect("bad file");
    let out = std::process::Command::new(strato_e2e::binary("strato-control"))
        .arg("--vm-sizes-file")
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--vm-sizes-file") && err.contains("size[0].vcpus"),
        "{err}"
    );
}
