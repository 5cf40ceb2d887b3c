//! Who may call, tried as an attacker would: against a real `strato-control`
//! process (no node provider, so no Docker), over its TLS port. Calls
//! without a token, with a bad, revoked or expired one, and with a token
//! whose role does not allow the call are refused with the right code and a
//! message naming the action and the principal; another team's identity is
//! refused; plaintext gets no answer; the token's secret is nowhere on
//! disk in clear.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use strato_e2e::{Channel, ControlPlane, wait_for};
use strato_proto::v1;
use strato_proto::v1::access_service_client::AccessServiceClient;
use strato_proto::v1::compute_service_client::ComputeServiceClient;
use strato_proto::v1::datastore_service_client::DatastoreServiceClient;
use strato_proto::v1::job_service_client::JobServiceClient;
use tonic::Code;

const TEAM_A_IDENTITY: &str = "/subscriptions/s/resourceGroups/team-a/providers/Microsoft.ManagedIdentity/userAssignedIdentities/trainer";

async fn start(dir: &std::path::Path) -> ControlPlane {
    ControlPlane::start(&dir.join("cp"), &["--provider", "none"])
        .await
        .expect("start strato-control")
}

/// A token made by the Owner: its secret.
async fn token(cp: &ControlPlane, name: &str, role: &str, scope: &str, expires: u64) -> String {
    let mut access = AccessServiceClient::new(cp.channel().await);
    access
        .create_token(v1::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            scope: scope.into(),
            expires_in_seconds: expires,
        })
        .await
        .expect("create token")
        .into_inner()
        .secret
}

async fn as_token(cp: &ControlPlane, secret: Option<&str>) -> Channel {
    cp.channel_with(secret).await.expect("connect")
}

fn spec(name: &str) -> v1::ClusterSpec {
    v1::ClusterSpec {
        name: name.into(),
        vm_size: "Standard_DS3_v2".into(),
        min_nodes: 0,
        max_nodes: Some(2),
        ..Default::default()
    }
}

/// Every user service refuses a call without a token, and one with a
/// token it did not issue, as UNAUTHENTICATED; health stays open.
#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated_on_every_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    for secret in [None, Some("strato_not-a-token-of-this-control-plane")] {
        let channel = as_token(&cp, secret).await;
        let codes = [
            ComputeServiceClient::new(channel.clone())
                .list_clusters(v1::ListClustersRequest {})
                .await
                .map(|_| ())
                .expect_err("compute")
                .code(),
            JobServiceClient::new(channel.clone())
                .list_jobs(v1::ListJobsRequest::default())
                .await
                .map(|_| ())
                .expect_err("jobs")
                .code(),
            DatastoreServiceClient::new(channel.clone())
                .list_datastores(v1::ListDatastoresRequest {})
                .await
                .map(|_| ())
                .expect_err("datastores")
                .code(),
            AccessServiceClient::new(channel.clone())
                .who_am_i(v1::WhoAmIRequest {})
                .await
                .map(|_| ())
                .expect_err("access")
                .code(),
        ];
        assert_eq!(codes, [Code::Unauthenticated; 4], "token {secret:?}");
    }
    // Health answers anyone: load balancers and probes carry no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(as_token(&cp, None).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is public");
}

/// Each role reaches what Azure ML's built-in role of its kind reaches,
/// at its scope only; refusals name the action and the principal.
#[tokio::test]
async fn roles_allow_only_their_actions_at_their_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    let mut owner = ComputeServiceClient::new(cp.channel().await);
    for name in ["team-a", "team-b"] {
        owner
            .create_cluster(v1::CreateClusterRequest {
                spec: Some(spec(name)),
            })
            .await
            .expect("owner creates");
    }
    let reader = token(&cp, "reader", "Reader", "/", 0).await;
    // Scopes name clusters in any case, as cluster names are.
    let scientist = token(&cp, "alice", "DataScientist", "/clusters/Team-A", 0).await;

    let mut as_reader = ComputeServiceClient::new(as_token(&cp, Some(&reader)).await);
    let listed = as_reader
        .list_clusters(v1::ListClustersRequest {})
        .await
        .expect("a reader lists")
        .into_inner();
    assert_eq!(listed.clusters.len(), 2);
    let denied = as_reader
        .delete_cluster(v1::DeleteClusterRequest {
            name: "team-a".into(),
        })
        .await
        .expect_err("a reader cannot delete");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("token:reader") && denied.message().contains("clusters/delete"),
        "{}",
        denied.message()
    );

    // A data scientist of team-a submits there, not to team-b, and writes
    // no cluster.
    let channel = as_token(&cp, Some(&scientist)).await;
    let mut jobs = JobServiceClient::new(channel.clone());
    let job = |cluster: &str| v1::SubmitJobRequest {
        spec: Some(v1::JobSpec {
            cluster: cluster.into(),
            image: "busybox:latest".into(),
            command: vec!["true".into()],
            ..Default::default()
        }),
    };
    let mine = jobs
        .submit_job(job("team-a"))
        .await
        .expect("submit to team-a")
        .into_inner();
    assert_eq!(
        mine.submitted_by, "token:alice",
        "jobs record who submitted them"
    );
    let theirs = jobs.submit_job(job("team-b")).await.expect_err("team-b");
    assert_eq!(theirs.code(), Code::PermissionDenied);
    assert!(
        theirs.message().contains("/clusters/team-b"),
        "{}",
        theirs.message()
    );
    // It lists only team-a's jobs, and cannot read or cancel team-b's.
    let listed = jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect("lists its cluster's jobs")
        .into_inner();
    assert_eq!(
        listed
            .jobs
            .iter()
            .map(|j| j.id.as_str())
            .collect::<Vec<_>>(),
        [mine.id.as_str()]
    );
    let mut owner_jobs = JobServiceClient::new(cp.channel().await);
    let other = owner_jobs
        .submit_job(job("team-b"))
        .await
        .expect("owner submits to team-b")
        .into_inner();
    let cancel = jobs
        .cancel_job(v1::CancelJobRequest { id: other.id })
        .await
        .expect_err("not its cluster");
    assert_eq!(cancel.code(), Code::PermissionDenied);
    let update = ComputeServiceClient::new(channel)
        .update_cluster(v1::UpdateClusterRequest {
            name: "team-a".into(),
            spec: Some(spec("team-a")),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["max_nodes".into()],
            }),
        })
        .await
        .expect_err("no cluster writes");
    assert_eq!(update.code(), Code::PermissionDenied);
    assert!(
        update.message().contains("clusters/write"),
        "{}",
        update.message()
    );
}

/// A team's operator cannot put another team's user-assigned identity on
/// its cluster (and so get that identity's tokens), until it is granted
/// the right to assign that identity, at the identity's scope.
#[tokio::test]
async fn another_teams_identity_is_refused_until_granted_on_the_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    let operator = token(&cp, "team-b-ops", "ComputeOperator", "/clusters/team-b", 0).await;
    let mut compute = ComputeServiceClient::new(as_token(&cp, Some(&operator)).await);
    let with_identity = || {
        let mut s = spec("team-b");
        s.identity = Some(v1::IdentitySpec {
            system_assigned: false,
            user_assigned_identities: vec![TEAM_A_IDENTITY.into()],
        });
        v1::CreateClusterRequest { spec: Some(s) }
    };
    let refused = compute
        .create_cluster(with_identity())
        .await
        .expect_err("team-a's identity");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("identities/assign")
            && refused
                .message()
                .contains(&TEAM_A_IDENTITY.to_ascii_lowercase()),
        "{}",
        refused.message()
    );
    let stored = ComputeServiceClient::new(cp.channel().await)
        .list_clusters(v1::ListClustersRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(stored.clusters.is_empty(), "nothing was stored");

    AccessServiceClient::new(cp.channel().await)
        .create_role_assignment(v1::CreateRoleAssignmentRequest {
            principal: "token:team-b-ops".into(),
            role: "ComputeOperator".into(),
            scope: TEAM_A_IDENTITY.into(),
        })
        .await
        .expect("the owner grants the identity");
    compute
        .create_cluster(with_identity())
        .await
        .expect("allowed once granted on the identity");
}

/// A revoked token stops working at once; an expired one when it expires.
#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    let revoked = token(&cp, "leaked", "Reader", "/", 0).await;
    let expiring = token(&cp, "short", "Reader", "/", 1).await;
    let who = |secret: String| {
        let cp = &cp;
        async move {
            AccessServiceClient::new(as_token(cp, Some(&secret)).await)
                .who_am_i(v1::WhoAmIRequest {})
                .await
        }
    };
    let me = who(revoked.clone()).await.expect("valid").into_inner();
    assert_eq!(me.principal, "token:leaked");
    // An Owner of one cluster cannot revoke a token that reaches further.
    let cluster_owner = token(&cp, "team-owner", "Owner", "/clusters/team-a", 0).await;
    let e = AccessServiceClient::new(as_token(&cp, Some(&cluster_owner)).await)
        .revoke_token(v1::RevokeTokenRequest {
            name: "leaked".into(),
        })
        .await
        .expect_err("leaked holds Reader at /");
    assert_eq!(e.code(), Code::PermissionDenied);
    who(revoked.clone()).await.expect("still valid");
    AccessServiceClient::new(cp.channel().await)
        .revoke_token(v1::RevokeTokenRequest {
            name: "leaked".into(),
        })
        .await
        .expect("revoke");
    let e = who(revoked).await.expect_err("revoked");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{}", e.message());
    let e = wait_for(
        "the one-second token to expire",
        Duration::from_secs(10),
        || {
            let who = who(expiring.clone());
            async move { who.await.err() }
        },
    )
    .await;
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
}

/// A stream opened with a token ends once the token is revoked: a leaked
/// token cannot keep reading a job's logs (nor waiting on it).
#[tokio::test]
async fn a_revoked_token_ends_the_streams_it_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    ComputeServiceClient::new(cp.channel().await)
        .create_cluster(v1::CreateClusterRequest {
            spec: Some(spec("streams")),
        })
        .await
        .expect("create");
    // No provider: the job stays queued, and its followers stay open.
    let id = JobServiceClient::new(cp.channel().await)
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "streams".into(),
                image: "strato-test/busybox:latest".into(),
                command: vec!["true".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("submit")
        .into_inner()
        .id;
    let leaked = token(&cp, "leaked", "DataScientist", "/", 0).await;
    let mut jobs = JobServiceClient::new(as_token(&cp, Some(&leaked)).await);
    let mut stream = jobs
        .stream_logs(v1::StreamLogsRequest {
            id: id.clone(),
            follow: true,
            after: None,
        })
        .await
        .expect("follow")
        .into_inner();
    let waiting = tokio::spawn({
        let mut jobs = jobs.clone();
        let id = id.clone();
        async move { jobs.wait_job(v1::WaitJobRequest { id }).await }
    });
    AccessServiceClient::new(cp.channel().await)
        .revoke_token(v1::RevokeTokenRequest {
            name: "leaked".into(),
        })
        .await
        .expect("revoke");
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the stream ends within the recheck");
    let e = ended.expect_err("ended with an error");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("leaked"), "{e:?}");
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait ends within the recheck")
        .expect("join");
    assert_eq!(waited.expect_err("refused").code(), Code::Unauthenticated);
}

/// Only TLS is spoken: a plaintext client gets no answer, and a client
/// that does not trust the control plane's CA refuses the connection.
/// admin.conf is the owner's alone, and no token's secret is stored.
#[tokio::test]
async fn only_tls_is_spoken_and_secrets_stay_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    // A plaintext client gets no gRPC answer: what fails is the transport
    // (a status with a source), never a status the server sent.
    let plaintext = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.grpc))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| chain(&e))?;
        ComputeServiceClient::new(channel)
            .list_sizes(v1::ListSizesRequest::default())
            .await
            .map(|_| ())
            .map_err(|status| {
                assert!(
                    std::error::Error::source(&status).is_some(),
                    "the server answered plaintext: {status:?}"
                );
                chain(&status)
            })
    };
    plaintext.await.expect_err("no plaintext answer");
    // A client that trusts only the system's roots refuses the certificate.
    let untrusted = async {
        let channel = strato_proto::client::endpoint(&cp.endpoint(), None)
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| chain(&e))?;
        ComputeServiceClient::new(channel)
            .list_sizes(v1::ListSizesRequest::default())
            .await
            .map(|_| ())
            .map_err(|status| chain(&status))
    };
    let why = untrusted.await.expect_err("an untrusted CA");
    assert!(why.contains("UnknownIssuer"), "{why}");
    // And the control plane still serves a client that trusts its CA.
    cp.client()
        .await
        .list_sizes(v1::ListSizesRequest::default())
        .await
        .expect("TLS with the CA is served");

    let conf = cp.admin_conf();
    let mode = std::fs::metadata(&conf)
        .expect("admin.conf")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.conf is the owner's alone");
    let secret = token(&cp, "ci", "Reader", "/", 0).await;
    let owner = cp.admin().token.clone().expect("admin token");
    // A cluster's admin password is kept only as its SHA-512 crypt hash.
    let password = "Adm1n-Passw0rd-Kept-Hashed";
    cp.client()
        .await
        .create_cluster(v1::CreateClusterRequest {
            spec: Some(v1::ClusterSpec {
                ssh: Some(v1::SshSettings {
                    admin_username: "azureuser".into(),
                    admin_password: password.into(),
                    ..Default::default()
                }),
                ..spec("with-ssh")
            }),
        })
        .await
        .expect("create a cluster with an admin password");
    let shown = cp
        .client()
        .await
        .get_cluster(v1::GetClusterRequest {
            name: "with-ssh".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(shown.admin_password_set, "the cluster says it has one");
    assert!(
        shown
            .spec
            .and_then(|s| s.ssh)
            .is_some_and(|s| s.admin_password.is_empty()),
        "never returned"
    );
    let db = strato_control::store::DB_FILE;
    let mut stored = vec![(
        db.to_owned(),
        std::fs::read(cp.data_dir.join(db)).expect("the database"),
    )];
    // The WAL holds the newest commits until a checkpoint, if it exists.
    if let Ok(wal) = std::fs::read(cp.data_dir.join(format!("{db}-wal"))) {
        stored.push((format!("{db}-wal"), wal));
    }
    stored.push(("the log".to_owned(), cp.log_text().into_bytes()));
    assert!(
        stored
            .iter()
            .any(|(_, bytes)| bytes.windows(3).any(|w| w == b"$6$")),
        "the password's hash is stored"
    );
    let password = password.to_owned();
    for (what, bytes) in &stored {
        for s in [&secret, &owner, &password] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{what} holds a secret in clear"
            );
        }
    }
    let key = cp.data_dir.join("tls").join("ca.key");
    let mode = std::fs::metadata(&key)
        .expect("ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is the owner's alone");
}

/// The side port speaks only TLS, and asks who is there: `/metrics` wants
/// a token allowed `metrics/read` at `/`; a node's Scheduled Events want
/// that node's own certificate and `Metadata: true`; health, discovery and
/// JWKS are open to anyone.
#[tokio::test]
async fn the_side_port_speaks_tls_and_asks_who_is_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    let ca = cp.admin().ca_certificate.clone().expect("CA");
    let get = |path: &str, headers: &[(&str, &str)], client: Option<(&str, &str)>| {
        strato_e2e::https_request(cp.http, &ca, "GET", path, headers, client).expect("GET")
    };
    for open in [
        "/healthz",
        "/readyz",
        "/jwks",
        "/.well-known/openid-configuration",
    ] {
        assert_eq!(get(open, &[], None).0, 200, "{open}");
    }
    // Plaintext: no HTTP answer at all.
    let answer = strato_e2e::plaintext_answer(cp.http, "/metrics");
    assert!(
        !answer.contains("HTTP/1."),
        "plaintext was answered: {answer:?}"
    );

    let (code, body) = get("/metrics", &[], None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no bearer token"), "{body}");
    let bearer = |t: &str| format!("Bearer {t}");
    let scoped = token(&cp, "one-cluster", "Reader", "/clusters/team-x", 0).await;
    let (code, body) = get("/metrics", &[("Authorization", &bearer(&scoped))], None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("metrics/read") && body.contains("token:one-cluster"),
        "{body}"
    );
    let reader = token(&cp, "prometheus", "Reader", "/", 0).await;
    let (code, body) = get("/metrics", &[("Authorization", &bearer(&reader))], None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("strato_grpc_requests_total"), "{body}");

    // A certificate the control plane's CA signed for node-a.
    let keys = dir.path().join("node-a");
    let csr = strato_agent::session::credentials::Credentials::load(&keys, Default::default())
        .expect("key")
        .csr()
        .expect("csr");
    let tls =
        strato_control::tls::Tls::load_or_create(&cp.data_dir, &["localhost".into()], None, 600)
            .expect("the CA");
    let cert = tls
        .nodes
        .sign(
            strato_control::tls::Csr::parse(&csr).expect("csr"),
            "node-a",
            None,
        )
        .expect("signed")
        .pem;
    let key = std::fs::read_to_string(keys.join("node.key")).expect("key");
    let node_a = Some((cert.as_str(), key.as_str()));
    let events = "/scheduledevents/node-a?api-version=2020-07-01";
    let metadata = [("Metadata", "true")];
    let (code, body) = get(events, &metadata, None);
    assert_eq!(code, 401, "no certificate: {body}");
    let (code, body) = get(events, &[], node_a);
    assert_eq!(code, 400, "no Metadata header: {body}");
    let (code, body) = get(
        "/scheduledevents/node-b?api-version=2020-07-01",
        &metadata,
        node_a,
    );
    assert_eq!(code, 403, "another node's events: {body}");
    assert!(body.contains("names node node-a, not node-b"), "{body}");
    let (code, body) = get(events, &metadata, node_a);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"Events\""), "{body}");
    // An Owner's token is not a node's certificate.
    let owner = bearer(cp.admin().token.as_deref().expect("token"));
    let (code, _) = get(
        events,
        &[("Metadata", "true"), ("Authorization", &owner)],
        None,
    );
    assert_eq!(code, 401);
}

/// The CLI makes tokens, and a user of one sees a refusal in one line,
/// naming the action and the principal, with exit status 1.
#[tokio::test]
async fn the_cli_makes_tokens_and_prints_refusals_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = start(dir.path()).await;
    let made = cp.cli_ok(&[
        "token", "create", "--name", "viewer", "--role", "Reader", "-o", "json",
    ]);
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).expect("json");
    let secret = made["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("strato_"), "{secret}");
    let listed = cp.cli_ok(&["token", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("viewer") && !listed.contains(&secret),
        "{listed}"
    );

    let out = cp
        .cli_command()
        .env("STRATO_TOKEN", &secret)
        .args(["compute", "create", "-n", "sneaky"])
        .output()
        .expect("run strato");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("permission denied")
            && err.contains("token:viewer")
            && err.contains("clusters/create"),
        "{err}"
    );
    let out = cp
        .cli_command()
        .env("STRATO_TOKEN", "strato_wrong")
        .args(["compute", "list"])
        .output()
        .expect("run strato");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
}

/// An error and every error under it, in one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A real OpenID Provider's JWTs are users: `oidc:SUBJECT`, with the roles
/// their role assignments give (none at first: PERMISSION_DENIED naming
/// the principal). A token for another audience, a forged signature and,
/// once the issuer rotated its key, a token of the old key are
/// UNAUTHENTICATED; a token of the new key is accepted as soon as the
/// control plane fetched the new key set, which a token naming an unknown
/// key makes it do.
#[tokio::test]
async fn oidc_tokens_of_the_trusted_issuer_are_users_with_their_role_assignments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut issuer = strato_e2e::OidcIssuer::start(&dir.path().join("issuer"))
        .await
        .expect("start the OIDC issuer");
    let url = issuer.url();
    let ca = strato_e2e::OidcIssuer::ca_file();
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &[
            "--provider",
            "none",
            "--oidc-issuer",
            &url,
            "--oidc-audience",
            "api://strato",
            "--oidc-ca-file",
            &ca.display().to_string(),
        ],
    )
    .await
    .expect("start strato-control");
    let list = |secret: String| {
        let cp = &cp;
        async move {
            ComputeServiceClient::new(as_token(cp, Some(&secret)).await)
                .list_clusters(v1::ListClustersRequest {})
                .await
                .map(|_| ())
        }
    };
    let ml = issuer.token("ml-team", "api://strato").expect("a token");
    let e = list(ml.clone()).await.expect_err("no role yet");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("oidc:ml-team"), "{e:?}");

    AccessServiceClient::new(cp.channel().await)
        .create_role_assignment(v1::CreateRoleAssignmentRequest {
            principal: "oidc:ml-team".into(),
            role: "Reader".into(),
            scope: "/".into(),
        })
        .await
        .expect("assign Reader");
    list(ml.clone()).await.expect("a Reader lists clusters");
    let me = AccessServiceClient::new(as_token(&cp, Some(&ml)).await)
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert_eq!(me.principal, "oidc:ml-team");
    // Another client of the same issuer is another principal.
    let other = issuer.token("other-team", "api://strato").expect("a token");
    let e = list(other).await.expect_err("other-team has no role");
    assert!(e.message().contains("oidc:other-team"), "{e:?}");

    let elsewhere = issuer.token("ml-team", "api://other").expect("a token");
    let e = list(elsewhere).await.expect_err("another audience");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("OIDC token rejected"), "{e:?}");
    let mut forged = ml.clone();
    let last = forged.pop().expect("a signature");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let e = list(forged).await.expect_err("a forged signature");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // The issuer rotates its key: a token of the new key is accepted once
    // the control plane has fetched the new set (at most every few
    // seconds), and the old key's tokens are refused from then on.
    issuer.restart().await.expect("restart the issuer");
    let rotated = issuer.token("ml-team", "api://strato").expect("a token");
    wait_for(
        "a token of the rotated key",
        Duration::from_secs(30),
        || {
            let list = &list;
            let rotated = rotated.clone();
            async move { list(rotated).await.ok() }
        },
    )
    .await;
    let e = list(ml).await.expect_err("the old key is gone");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("does not publish"), "{e:?}");
}
