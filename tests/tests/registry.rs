//! End-to-end: nodes pull job images from a real registry (Debian's
//! `docker-registry` over TLS with basic auth, `strato_e2e::registry`),
//! logging in with the credentials of the registry object that serves the
//! image's server. The pull's progress shows as the job's reason while it
//! prepares; a wrong password or no registry object fails the attempt with
//! the registry's reason; the password is never shown, logged or stored in
//! clear.

use std::time::Duration;

use strato_e2e::acr::AcrTokens;
use strato_e2e::machines::{ended, job, run_to_end};
use strato_e2e::registry::{Registry, RegistryAuth, TestCa, image_with_random_layer};
use strato_e2e::{ControlPlane, TEST_IMAGE, job_output, require_docker, wait_for};
use strato_proto::v1;

const LONG: Duration = Duration::from_secs(120);
const PASSWORD: &str = "s3cret-pull-password";

#[tokio::test]
async fn nodes_pull_with_the_registrys_credentials_and_show_progress() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path(), "puller", PASSWORD).expect("registry");
    let big = format!("strato-test/big-{}:1", std::process::id());
    image_with_random_layer(TEST_IMAGE, &big, 150).expect("a large image");
    let pushed = registry.push(&big, "team/big:1");
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &big])
        .output();
    let pushed = pushed.expect("push");
    let small = registry.push(TEST_IMAGE, "team/busybox:1").expect("push");

    // The node's image cache holds 100 MB: the large image goes once
    // another is pulled.
    let cp = ControlPlane::start_fast_with_env(
        &dir.path().join("data"),
        &[("STRATO_IMAGE_CACHE_BYTES", "100000000")],
    )
    .await
    .expect("start");
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "pulls",
        "-s",
        "Standard_D2_v2",
        "--min-nodes",
        "1",
        "--max-nodes",
        "1",
    ]);

    // Bad input names its field; only an Owner's token reaches this far.
    let bad = cp.cli(&[
        "registry",
        "create",
        "-n",
        "lab",
        "--server",
        "https://x",
        "-u",
        "puller",
        "--password-file",
        "/dev/null",
        "--clusters",
        "pulls",
    ]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("password") || said.contains("server"),
        "{said}"
    );

    // No registry object: the private image is refused, as the registry says.
    let (_, refused) = run_to_end(
        &cp,
        v1::JobSpec {
            cluster: "pulls".into(),
            image: small.clone(),
            command: vec!["echo".into(), "never".into()],
            ..Default::default()
        },
        "the anonymous pull refused",
        LONG,
    )
    .await;
    assert_eq!(refused.state, v1::JobState::Failed as i32, "{refused:?}");
    let reason = &refused.attempts.last().expect("an attempt").reason;
    assert!(reason.contains("unauthorized"), "{reason}");

    // With the registry's credentials: the large image is pulled, its
    // progress shown while the job prepares, and the job runs.
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let created = cp.cli_ok(&[
        "registry",
        "create",
        "-n",
        "lab",
        "--server",
        &registry.server,
        "-u",
        "puller",
        "--password-file",
        password_file.to_str().expect("utf-8"),
        "--clusters",
        "pulls",
        "-o",
        "json",
    ]);
    let shown = String::from_utf8_lossy(&created.stdout);
    assert!(
        shown.contains("puller") && !shown.contains(PASSWORD),
        "{shown}"
    );

    // Its credentials go to the clusters it names only: a job of another
    // cluster naming its server is refused at submit.
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "other",
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        "1",
    ]);
    let elsewhere = cp
        .jobs()
        .await
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "other".into(),
                image: pushed.clone(),
                command: vec!["true".into()],
                ..Default::default()
            }),
        })
        .await
        .expect_err("not served");
    assert_eq!(elsewhere.code(), tonic::Code::InvalidArgument);
    assert!(
        elsewhere.message().contains("serves only clusters pulls"),
        "{}",
        elsewhere.message()
    );

    let id = cp
        .submit(v1::JobSpec {
            cluster: "pulls".into(),
            image: pushed.clone(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "test -s /blob && echo pulled".into(),
            ],
            ..Default::default()
        })
        .await;
    let progress = std::sync::Mutex::new(Vec::<String>::new());
    let done = wait_for("the pulled job done", LONG, || async {
        let j = job(&cp, &id).await;
        if j.state == v1::JobState::Preparing as i32
            && j.reason.starts_with("preparing: pulling image")
        {
            let mut seen = progress.lock().expect("progress");
            if seen.last() != Some(&j.reason) {
                seen.push(j.reason.clone());
            }
        }
        ended(&j).then_some(j)
    })
    .await;
    let progress = progress.into_inner().expect("progress");
    assert_eq!(done.state, v1::JobState::Completed as i32, "{done:?}");
    let mut jobs = cp.jobs().await;
    assert_eq!(job_output(&mut jobs, &id).await, ["pulled"]);
    assert!(
        !progress.is_empty(),
        "the pull's progress was shown as the reason while preparing"
    );
    assert!(
        progress.iter().any(|r| r.contains('%') && r.contains("MB")),
        "a percentage of the layers' size: {progress:#?}"
    );

    // Another pull takes the cache past its budget: the large image, no
    // longer used, is removed; the new one stays.
    let present = |image: &str| {
        std::process::Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(present(&pushed), "kept while within the budget");
    let (_, after) = run_to_end(
        &cp,
        v1::JobSpec {
            cluster: "pulls".into(),
            image: small.clone(),
            command: vec!["echo".into(), "small".into()],
            ..Default::default()
        },
        "the small job done",
        LONG,
    )
    .await;
    assert_eq!(after.state, v1::JobState::Completed as i32, "{after:?}");
    assert!(
        !present(&pushed),
        "the least recently used image was removed"
    );
    assert!(present(&small));
    assert!(
        present(TEST_IMAGE),
        "what the agent did not pull is not its cache's"
    );

    // --pull always pulls again; a wrong password is refused with the
    // registry's reason.
    cp.cli_ok(&["registry", "delete", "-n", "lab"]);
    std::fs::write(&password_file, "wrong-password\n").expect("password file");
    cp.cli_ok(&[
        "registry",
        "create",
        "-n",
        "lab",
        "--server",
        &registry.server,
        "-u",
        "puller",
        "--password-file",
        password_file.to_str().expect("utf-8"),
        "--clusters",
        "pulls",
    ]);
    let (_, wrong) = run_to_end(
        &cp,
        v1::JobSpec {
            cluster: "pulls".into(),
            image: pushed.clone(),
            command: vec!["true".into()],
            pull: v1::PullPolicy::Always as i32,
            ..Default::default()
        },
        "the wrong password refused",
        LONG,
    )
    .await;
    assert_eq!(wrong.state, v1::JobState::Failed as i32, "{wrong:?}");
    let reason = &wrong.attempts.last().expect("an attempt").reason;
    assert!(reason.contains("unauthorized"), "{reason}");

    // The password is nowhere in clear: not in the log, not in the store.
    assert!(!cp.log_text().contains(PASSWORD));
    let db = std::fs::read(cp.data_dir.join("strato.db")).unwrap_or_default();
    let wal = std::fs::read(cp.data_dir.join("strato.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password is stored sealed only"
        );
    }
    drop(registry);
}

/// Azure Container Registry's way, against a stand-in token service the
/// test controls (`strato_e2e::acr`): the node gets a token of the cluster's
/// identity for the registry resource, exchanges it for a refresh token,
/// and the engine pulls with it; a registry token that expired is replaced
/// at the next pull; a cluster without the identity is refused at submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_pull_from_an_acr_with_the_clusters_identity() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path()).expect("a CA");
    let acr = AcrTokens::start(dir.path(), &ca)
        .await
        .expect("token service");
    let mut registry =
        Registry::start_with(dir.path(), &ca, RegistryAuth::Token(&acr)).expect("registry");
    let image = registry.push(TEST_IMAGE, "team/busybox:1").expect("push");

    let cp = ControlPlane::start_fast(&dir.path().join("data"))
        .await
        .expect("start");
    for (name, identity) in [("acr-id", Some("[system]")), ("acr-none", None)] {
        let mut args = vec![
            "compute",
            "create",
            "-n",
            name,
            "-s",
            "Standard_D2_v2",
            "--min-nodes",
            "1",
            "--max-nodes",
            "1",
        ];
        if let Some(identity) = identity {
            args.extend(["--assign-identity", identity]);
        }
        cp.cli_ok(&args);
    }
    let cluster = cp
        .client()
        .await
        .get_cluster(v1::GetClusterRequest {
            name: "acr-id".into(),
        })
        .await
        .expect("get cluster")
        .into_inner();
    acr.expect_client_id(&cluster.identities[0].client_id);
    let listed = cp.cli_ok(&[
        "registry",
        "create",
        "-n",
        "acr",
        "--server",
        &registry.server,
        "--identity",
        "default",
        "--all-clusters",
    ]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("identity default"), "{listed}");

    // A cluster without an identity cannot pull from it: refused at submit.
    let refused = cp
        .jobs()
        .await
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                cluster: "acr-none".into(),
                image: image.clone(),
                command: vec!["true".into()],
                ..Default::default()
            }),
        })
        .await
        .expect_err("no identity");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("image"), "{}", refused.message());

    let run = |pull: v1::PullPolicy| {
        let (cp, image) = (&cp, image.clone());
        async move {
            let spec = v1::JobSpec {
                cluster: "acr-id".into(),
                image,
                command: vec!["echo".into(), "from acr".into()],
                pull: pull as i32,
                ..Default::default()
            };
            run_to_end(cp, spec, "the ACR job done", LONG).await
        }
    };
    let (id, done) = run(v1::PullPolicy::IfNotPresent).await;
    assert_eq!(
        done.state,
        v1::JobState::Completed as i32,
        "{done:?}; refused exchanges: {:?}",
        acr.refused()
    );
    let mut jobs = cp.jobs().await;
    assert_eq!(job_output(&mut jobs, &id).await, ["from acr"]);
    assert_eq!(acr.exchanges(), 1, "one exchange of the identity's token");
    let first = acr.pull_tokens();
    assert!(!first.is_empty(), "the engine got a registry token");

    // Once that token has expired, the next pull gets a new one.
    let expired_at = first.iter().copied().max().unwrap_or_default();
    wait_for("the registry token expired", LONG, || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (now > expired_at).then_some(())
    })
    .await;
    let (_, again) = run(v1::PullPolicy::Always).await;
    assert_eq!(again.state, v1::JobState::Completed as i32, "{again:?}");
    assert!(
        acr.pull_tokens().iter().any(|e| *e > expired_at),
        "a new registry token after the first expired"
    );
    assert!(acr.refused().is_empty(), "{:?}", acr.refused());
    drop(registry);
}
