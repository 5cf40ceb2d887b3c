//! End-to-end: managed identities. Jobs in real containers ask the agent's
//! identity endpoint for tokens over the three protocols; the tokens verify
//! against the control plane's JWKS; nothing gets a token it should not.

use std::collections::HashMap;
use std::time::Duration;

use strato_e2e::Channel;
use strato_e2e::{
    ControlPlane, TEST_IMAGE, containers_of_job, require_docker, running_sandboxes_of, wait_for,
};
use strato_proto::v1::{
    self, compute_service_client::ComputeServiceClient, job_service_client::JobServiceClient,
};

const ISSUER: &str = "https://sts.windows.net/11111111-2222-3333-4444-555555555555/";
const STORAGE: &str = "https://storage.azure.com/";
const USER_ID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/trainer";

/// A job script: token requests with busybox wget over the three
/// protocols, each answer after a `== NAME` line, then it waits so the test
/// can probe the endpoint with the job's secret while it runs.
const PROBE: &str = r#"
R="resource=https://storage.azure.com/"
IMDS="$AZURE_POD_IDENTITY_AUTHORITY_HOST/metadata/identity/oauth2/token"
echo "== env"; echo "DEFAULT=$DEFAULT_IDENTITY_CLIENT_ID AZURE=$AZURE_CLIENT_ID SECRET=$MSI_SECRET ENDPOINT=$MSI_ENDPOINT"
echo "== aml"; wget -q -O - --header "secret: $MSI_SECRET" "$MSI_ENDPOINT?api-version=2017-09-01&$R" 2>&1; echo
echo "== appservice"; wget -q -O - --header "X-IDENTITY-HEADER: $IDENTITY_HEADER" "$IDENTITY_ENDPOINT?api-version=2019-08-01&$R&client_id=$OWN_CLIENT" 2>&1; echo
echo "== imds"; wget -q -O - --header "Metadata: true" "$IMDS?api-version=2018-02-01&$R" 2>&1; echo
echo "== other_cluster"; wget -q -O - --header "secret: $MSI_SECRET" "$MSI_ENDPOINT?api-version=2017-09-01&$R&clientid=$OTHER_CLIENT" 2>&1; echo
echo "== waiting"
sleep 300
"#;

/// The answers of a probe run, by name: (status, output).
fn answers(lines: &[String]) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in lines.iter().chain(std::iter::once(&"== end".to_owned())) {
        if let Some(name) = line.strip_prefix("== ") {
            if let Some((n, body)) = current.take() {
                let text = body.join("\n");
                // busybox wget prints the status line of a refusal on stderr.
                let status = match text.split("server returned error: ").nth(1) {
                    Some(s) => s.lines().next().unwrap_or_default().to_owned(),
                    None => "200".to_owned(),
                };
                out.insert(n, (status, text));
            }
            current = Some((name.to_owned(), Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push(line.trim_end_matches('\r').to_owned());
        }
    }
    out
}

async fn create(
    compute: &mut ComputeServiceClient<Channel>,
    name: &str,
    identity: v1::IdentitySpec,
) -> v1::Cluster {
    create_with_min(compute, name, identity, 0).await
}

async fn create_with_min(
    compute: &mut ComputeServiceClient<Channel>,
    name: &str,
    identity: v1::IdentitySpec,
    min_nodes: u32,
) -> v1::Cluster {
    compute
        .create_cluster(v1::CreateClusterRequest {
            spec: Some(v1::ClusterSpec {
                name: name.into(),
                vm_size: "Standard_D2_v2".into(),
                min_nodes,
                max_nodes: Some(1),
                idle_seconds_before_scaledown: Some(30),
                identity: Some(identity),
                ..Default::default()
            }),
        })
        .await
        .expect("create")
        .into_inner()
        .cluster
        .expect("cluster")
}

async fn submit(
    jobs: &mut JobServiceClient<Channel>,
    cluster: &str,
    env: &[(&str, &str)],
) -> String {
    jobs.submit_job(v1::SubmitJobRequest {
        spec: Some(v1::JobSpec {
            cluster: cluster.into(),
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), PROBE.into()],
            environment: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
    })
    .await
    .expect("submit")
    .into_inner()
    .id
}

fn host_port_of(env_line: &str) -> String {
    let endpoint = env_line.split("ENDPOINT=").nth(1).expect("endpoint").trim();
    endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_owned()
}

/// A plain HTTP/1.0 GET with one optional header line: (status line, body).
fn http_get(addr: &str, path: &str, header: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let header = if header.is_empty() {
        String::new()
    } else {
        format!("{header}\r\n")
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{header}\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn jobs_get_tokens_for_their_own_clusters_identities_only() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &[
            "--token-issuer",
            ISSUER,
            "--reconcile-interval-ms",
            "200",
            "--heartbeat-interval",
            "1",
            "--node-heartbeat-timeout",
            "5",
        ],
    )
    .await
    .expect("start");
    let mut compute = cp.client().await;
    let a = create_with_min(
        &mut compute,
        "ida",
        v1::IdentitySpec {
            system_assigned: true,
            user_assigned_identities: vec![],
        },
        // Up before the probe comes (see below).
        1,
    )
    .await;
    let b = create(
        &mut compute,
        "idb",
        v1::IdentitySpec {
            system_assigned: false,
            user_assigned_identities: vec![USER_ID.into()],
        },
    )
    .await;
    create(&mut compute, "idnone", v1::IdentitySpec::default()).await;
    let (a_id, b_id) = (a.identities[0].clone(), b.identities[0].clone());
    assert!(a_id.is_default && a_id.kind == "system_assigned");
    assert_eq!(b_id.resource_id, USER_ID);

    // A node of "ida" with a network made ready for its next job: the
    // probe joins that sandbox, and IMDS knows it by the sandbox's address.
    wait_for(
        "a node of ida with a sandbox",
        Duration::from_secs(90),
        || {
            let mut compute = compute.clone();
            async move {
                let nodes = compute
                    .list_nodes(v1::ListNodesRequest {
                        cluster: "ida".into(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .nodes;
                let node = nodes
                    .iter()
                    .find(|n| n.state == v1::NodeState::Idle as i32)?;
                (!running_sandboxes_of(&node.node_id).is_empty()).then_some(())
            }
        },
    )
    .await;
    let mut jobs = cp.jobs().await;
    let id = submit(
        &mut jobs,
        "ida",
        &[
            ("OWN_CLIENT", &a_id.client_id),
            ("OTHER_CLIENT", &b_id.client_id),
        ],
    )
    .await;
    let lines = wait_for("the probe's answers", Duration::from_secs(60), || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            let lines = strato_e2e::job_output(&mut jobs, &id).await;
            lines.iter().any(|l| l == "== waiting").then_some(lines)
        }
    })
    .await;
    let got = answers(&lines);
    let container = containers_of_job(&id).pop().expect("the probe's container");
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{index .Config.Labels \"strato.sandbox\"}}",
            &container,
        ])
        .output()
        .expect("docker inspect");
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "the probe joined its node's sandbox"
    );
    let env = &got["env"].1;
    assert!(
        env.contains(&format!("DEFAULT={}", a_id.client_id))
            && env.contains(&format!("AZURE={}", a_id.client_id)),
        "{env}"
    );

    // The JWKS that verifies the tokens: public (no token), over TLS.
    let ca = cp.admin().ca_certificate.clone().expect("CA");
    let public = |path: &str| {
        let (code, body) =
            strato_e2e::https_request(cp.http, &ca, "GET", path, &[], None).expect("GET");
        assert_eq!(code, 200, "{path}: {body}");
        body
    };
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&public("/jwks")).expect("jwks");
    let discovery: serde_json::Value =
        serde_json::from_str(&public("/.well-known/openid-configuration")).expect("discovery");
    assert_eq!(discovery["issuer"], ISSUER);
    assert!(
        discovery["jwks_uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{discovery}"
    );
    let verify = |token: &str| {
        let kid = jsonwebtoken::decode_header(token)
            .expect("header")
            .kid
            .expect("kid");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).expect("kid in jwks"))
            .expect("key");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["https://storage.azure.com"]);
        v.set_issuer(&[ISSUER]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .expect("verifies")
            .claims
    };
    for protocol in ["aml", "appservice", "imds"] {
        let (status, body) = &got[protocol];
        assert_eq!(status, "200", "{protocol}: {body}");
        let answer: serde_json::Value =
            serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{protocol}: {e}: {body}"));
        let claims = verify(answer["access_token"].as_str().expect("token"));
        assert_eq!(claims["oid"], a_id.principal_id.as_str(), "{protocol}");
        assert_eq!(claims["appid"], a_id.client_id.as_str(), "{protocol}");
        assert_eq!(claims["tid"], "11111111-2222-3333-4444-555555555555");
        assert_eq!(answer["resource"], STORAGE);
        assert_eq!(answer["token_type"], "Bearer");
        if protocol == "imds" {
            for field in ["expires_in", "expires_on", "not_before", "refresh_token"] {
                assert!(
                    answer[field].is_string(),
                    "IMDS {field} is a string: {answer}"
                );
            }
        } else if protocol == "appservice" {
            // As App Service answers (2019-08-01): seconds, as a string.
            assert!(
                answer["expires_on"]
                    .as_str()
                    .is_some_and(|s| s.parse::<i64>().is_ok()),
                "App Service expires_on is a string of seconds: {answer}"
            );
        } else {
            assert!(
                answer["expires_on"].is_i64(),
                "{protocol} expires_on is an integer: {answer}"
            );
        }
    }
    assert!(
        got["other_cluster"].0.starts_with("HTTP/1.1 400"),
        "{:?}",
        got["other_cluster"]
    );

    // Probe the endpoint from here with the running job's secret.
    let secret = env
        .split("SECRET=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("secret")
        .to_owned();
    let endpoint = env
        .split("ENDPOINT=")
        .nth(1)
        .expect("endpoint")
        .trim()
        .to_owned();
    let host_port = endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_owned();
    let token_path = "/msi/token?api-version=2017-09-01&resource=https://storage.azure.com/";
    let refused = |name: &str, (status, body): (String, String), code: &str, text: &str| {
        assert!(status.contains(code), "{name}: {status} {body}");
        let answer: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{name}: JSON error body, got {body}"));
        assert!(answer["error"].is_string(), "{name}: {answer}");
        assert!(
            answer["error_description"]
                .as_str()
                .is_some_and(|d| d.contains(text)),
            "{name}: {answer}"
        );
    };
    refused(
        "other cluster's identity",
        http_get(
            &host_port,
            &format!("{token_path}&clientid={}", b_id.client_id),
            &format!("secret: {secret}"),
        ),
        "400",
        "Identity not found",
    );
    refused(
        "no header",
        http_get(&host_port, token_path, ""),
        "400",
        "Required metadata header not specified",
    );
    refused(
        "IMDS without header",
        http_get(&host_port, "/metadata/identity/oauth2/token?resource=x", ""),
        "400",
        "Required metadata header not specified",
    );
    refused(
        "wrong secret",
        http_get(&host_port, token_path, "secret: nope"),
        "401",
        "secret",
    );
    refused(
        "IMDS from outside a job",
        http_get(
            &host_port,
            "/metadata/identity/oauth2/token?resource=x",
            "Metadata: true",
        ),
        "401",
        "not a running job",
    );
    let (status, _) = http_get(&host_port, token_path, &format!("secret: {secret}"));
    assert!(status.contains("200"), "the live secret works: {status}");

    // Azure's own Python client, unmodified, over the App Service protocol
    // (it prefers it) and over Azure ML's.
    let python = strato_e2e::python_with_azure_identity();
    let script = "from azure.identity import ManagedIdentityCredential\n\
                  print(ManagedIdentityCredential().get_token('https://storage.azure.com/.default').token)";
    for (protocol, vars) in [
        (
            "App Service",
            vec![
                ("IDENTITY_ENDPOINT", endpoint.clone()),
                ("IDENTITY_HEADER", secret.clone()),
            ],
        ),
        (
            "Azure ML",
            vec![
                ("MSI_ENDPOINT", endpoint.clone()),
                ("MSI_SECRET", secret.clone()),
            ],
        ),
    ] {
        let mut cmd = std::process::Command::new(&python);
        cmd.args(["-c", script]);
        for k in [
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "MSI_ENDPOINT",
            "MSI_SECRET",
            "AZURE_CLIENT_ID",
        ] {
            cmd.env_remove(k);
        }
        let out = cmd.envs(vars).output().expect("run python");
        assert!(
            out.status.success(),
            "azure-identity over {protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let claims = verify(&token);
        assert_eq!(
            claims["oid"],
            a_id.principal_id.as_str(),
            "azure-identity over {protocol}"
        );
    }

    // Azure's own Rust client, unmodified, over the App Service protocol
    // (the one azure_identity speaks besides IMDS).
    let out = std::process::Command::new(strato_e2e::binary("azure-identity-rs"))
        .env_remove("MSI_ENDPOINT")
        .env_remove("MSI_SECRET")
        .env_remove("AZURE_CLIENT_ID")
        .env("IDENTITY_ENDPOINT", &endpoint)
        .env("IDENTITY_HEADER", &secret)
        .output()
        .expect("run azure-identity-rs");
    assert!(
        out.status.success(),
        "azure_identity (Rust): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims = verify(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(
        claims["oid"],
        a_id.principal_id.as_str(),
        "azure_identity (Rust)"
    );
    assert_eq!(
        claims["aud"], "https://storage.azure.com",
        "azure_identity (Rust)"
    );

    // Refusals are logged without the secret.
    assert!(
        !cp.log_text().contains(&secret),
        "the control plane logged a secret"
    );
    for entry in std::fs::read_dir(cp.data_dir.join("nodes"))
        .expect("node dirs")
        .flatten()
    {
        let log = std::fs::read_to_string(entry.path().join("agent.log")).unwrap_or_default();
        assert!(!log.is_empty(), "agent log exists");
        assert!(!log.contains(&secret), "an agent logged a secret");
    }

    // Once the attempt ended, its secret is refused.
    jobs.cancel_job(v1::CancelJobRequest { id: id.clone() })
        .await
        .expect("cancel");
    wait_for("the job to end", Duration::from_secs(60), || {
        let (mut jobs, id) = (jobs.clone(), id.clone());
        async move {
            let j = jobs
                .get_job(v1::GetJobRequest { id })
                .await
                .expect("get")
                .into_inner();
            (j.state == v1::JobState::Canceled as i32).then_some(())
        }
    })
    .await;
    refused(
        "secret after the attempt",
        http_get(&host_port, token_path, &format!("secret: {secret}")),
        "401",
        "secret",
    );

    // A cluster without identities: the job gets a clear refusal.
    let none = submit(&mut jobs, "idnone", &[]).await;
    let lines = wait_for(
        "the second probe's answers",
        Duration::from_secs(60),
        || {
            let (mut jobs, id) = (jobs.clone(), none.clone());
            async move {
                let lines = strato_e2e::job_output(&mut jobs, &id).await;
                lines.iter().any(|l| l == "== waiting").then_some(lines)
            }
        },
    )
    .await;
    let got = answers(&lines);
    assert!(got["aml"].0.starts_with("HTTP/1.1 400"), "{:?}", got["aml"]);
    let env = &got["env"].1;
    assert!(
        env.contains("DEFAULT= AZURE="),
        "no default identity variables: {env}"
    );
    let secret = env
        .split("SECRET=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("secret");
    refused(
        "a cluster without identities",
        http_get(&host_port_of(env), token_path, &format!("secret: {secret}")),
        "400",
        "no managed identity",
    );
    jobs.cancel_job(v1::CancelJobRequest { id: none })
        .await
        .expect("cancel");

    // Tokens are for agents only.
    let e = v1::identity_service_client::IdentityServiceClient::new(cp.channel().await)
        .get_token(v1::GetTokenRequest {
            job_id: "x".into(),
            attempt: 1,
            resource: STORAGE.into(),
            ..Default::default()
        })
        .await
        .expect_err("no session token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn identities_are_assigned_and_removed_never_both_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("data"), &["--provider", "none"])
        .await
        .expect("start");
    let mut compute = cp.client().await;
    create(&mut compute, "plain", v1::IdentitySpec::default()).await;
    let assign = |system: bool, ids: Vec<String>| v1::AssignIdentityRequest {
        name: "plain".into(),
        system_assigned: system,
        user_assigned_identities: ids,
    };
    let c = compute
        .assign_identity(assign(false, vec![USER_ID.into()]))
        .await
        .expect("assign")
        .into_inner();
    let user = c.identities[0].clone();
    assert_eq!(
        (user.kind.as_str(), user.is_default),
        ("user_assigned", true)
    );
    let e = compute
        .assign_identity(assign(true, vec![]))
        .await
        .expect_err("both kinds");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("identity:"), "{}", e.message());

    // The same user-assigned identity has the same ids on every cluster.
    let other = create(
        &mut compute,
        "other",
        v1::IdentitySpec {
            system_assigned: false,
            user_assigned_identities: vec![USER_ID.to_uppercase()],
        },
    )
    .await;
    assert_eq!(other.identities[0].client_id, user.client_id);

    let c = compute
        .remove_identity(v1::RemoveIdentityRequest {
            name: "plain".into(),
            user_assigned_identities: vec![],
        })
        .await
        .expect("remove all")
        .into_inner();
    assert!(c.identities.is_empty());
    let c = compute
        .assign_identity(assign(true, vec![]))
        .await
        .expect("system")
        .into_inner();
    assert_eq!(c.identities[0].kind, "system_assigned");

    // The CLI shows the ids.
    let shown = cp.cli(&["compute", "show", "-n", "plain", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(
        json["identity"]["identities"][0]["client_id"],
        c.identities[0].client_id.as_str()
    );
    let out = cp.cli(&["compute", "identity", "assign", "-n", "plain", USER_ID]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never both"));
    let out = cp.cli(&["compute", "identity", "remove", "-n", "plain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
