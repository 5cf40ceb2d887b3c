//! The use cases driven directly, without gRPC: on a temporary SQLite
//! store, no provider and the system clock.

use std::path::Path;
use std::sync::Arc;

use clap::Parser as _;
use strato_core::ClusterRequest;
use strato_core::job_request::{DataRequest, JobRequest};

use super::*;
use crate::config::Config;
use crate::plane::{Events, Plane, Sessions};
use crate::provider::NoProvider;
use crate::store::SqlStore;
use crate::tokens::TokenIssuer;

async fn plane(dir: &Path) -> Arc<Plane<SqlStore>> {
    let data_dir = dir.to_str().expect("utf-8 path");
    let settings = Config::parse_from([
        "strato-control",
        "--data-dir",
        data_dir,
        "--provider",
        "none",
    ])
    .validate()
    .expect("valid settings");
    let store = SqlStore::open(dir).await.expect("store opens");
    let tokens = TokenIssuer::load_or_create(dir, "http://issuer.test/".into(), "t".into())
        .expect("signing key");
    Arc::new(Plane {
        replica: "replica-test".into(),
        reports: crate::reports::ReportWriter::start(store.clone()),
        logs: crate::reports::LogWriter::start(store.clone()),
        store,
        tokens,
        federation: None,
        http_base: "http://127.0.0.1:9".into(),
        settings,
        provider: Box::new(NoProvider),
        clock: Arc::new(strato_runtime::SystemClock),
        sessions: Sessions::default(),
        execs: Default::default(),
        scheduled_events: Default::default(),
        counters: Default::default(),
        events: Events::default(),
        submits: crate::plane::SubmitLimits::new(1_000.0, 1_000),
        followers: Arc::new(crate::plane::Followers::new(100)),
        tls: None,
        oidc: None,
        secrets: crate::secrets::SecretBox::load_or_create(dir).expect("secrets key"),
        storage_ca: None,
        scale_events: Default::default(),
    })
}

fn cluster(name: &str) -> ClusterRequest {
    ClusterRequest {
        name: name.into(),
        max_nodes: Some(2),
        ..Default::default()
    }
}

static ME: std::sync::LazyLock<Caller> = std::sync::LazyLock::new(|| Caller::owner("token:test"));

#[tokio::test]
async fn cluster_use_cases_refuse_with_typed_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let compute = Compute::new(plane(dir.path()).await);

    let created = compute
        .create_cluster(&ME, cluster("cpu-a"))
        .await
        .expect("created");
    assert_eq!(created.cluster.record.spec.name, "cpu-a");
    assert!(created.warnings.is_empty());
    assert!(created.cluster.nodes.is_empty());

    let again = compute.create_cluster(&ME, cluster("cpu-a")).await;
    assert!(
        matches!(again, Err(AppError::AlreadyExists(AlreadyExists::Cluster(ref n))) if n == "cpu-a"),
        "{again:?}"
    );
    let missing = compute.get_cluster(&ME, "nope").await;
    assert!(
        matches!(missing, Err(AppError::NotFound(NotFound::Cluster(_)))),
        "{missing:?}"
    );
    let unnamed = compute.get_cluster(&ME, "").await;
    assert!(
        matches!(unnamed, Err(AppError::InvalidArgument(ref f)) if f.field == "name"),
        "{unnamed:?}"
    );
    let dedicated = compute.simulate_eviction(&ME, "cpu-a", "n1", None).await;
    assert!(
        matches!(
            dedicated,
            Err(AppError::FailedPrecondition(
                Precondition::DedicatedCluster { .. }
            ))
        ),
        "{dedicated:?}"
    );
    assert_eq!(compute.list_clusters(&ME).await.expect("listed").len(), 1);
    let every = compute.list_sizes(&ME, "").expect("sizes");
    assert!(!every.is_empty());
    // A location lists the sizes its quota can hold a node of.
    let offered = compute.list_sizes(&ME, "westeurope").expect("sizes");
    assert!(
        !offered.is_empty() && offered.len() <= every.len(),
        "{} of {}",
        offered.len(),
        every.len()
    );
    let bad = compute.list_sizes(&ME, "West Europe");
    assert!(
        matches!(bad, Err(AppError::InvalidArgument(ref f)) if f.field == "location"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn identities_are_assigned_and_removed_through_one_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let compute = Compute::new(plane(dir.path()).await);
    compute
        .create_cluster(&ME, cluster("cpu-b"))
        .await
        .expect("created");

    let nothing = compute.assign_identity(&ME, "cpu-b", false, vec![]).await;
    assert!(
        matches!(nothing, Err(AppError::InvalidArgument(ref f)) if f.field == "identity"),
        "{nothing:?}"
    );
    let uai = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";
    let assigned = compute
        .assign_identity(&ME, "cpu-b", false, vec![uai.into()])
        .await
        .expect("assigned");
    assert_eq!(assigned.record.identities.len(), 1);
    let unknown = compute
        .remove_identity(&ME, "cpu-b", vec!["/other".into()])
        .await;
    assert!(
        matches!(unknown, Err(AppError::InvalidArgument(ref f)) if f.field == "identity.user_assigned_identities"),
        "{unknown:?}"
    );
    let removed = compute
        .remove_identity(&ME, "cpu-b", vec![uai.into()])
        .await
        .expect("removed");
    assert!(removed.record.identities.is_empty());
}

#[tokio::test]
async fn a_job_is_checked_against_its_cluster_and_datastores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plane = plane(dir.path()).await;
    Compute::new(plane.clone())
        .create_cluster(&ME, cluster("cpu-c"))
        .await
        .expect("created");
    let jobs = Jobs::new(plane);
    let request = JobRequest {
        cluster: "cpu-c".into(),
        image: "busybox".into(),
        command: vec!["true".into()],
        ..Default::default()
    };

    let gpus = jobs
        .submit_job(
            &ME,
            JobRequest {
                gpus: 1,
                ..request.clone()
            },
        )
        .await;
    assert!(
        matches!(gpus, Err(AppError::InvalidArgument(ref f)) if f.field == "resources.gpus"),
        "{gpus:?}"
    );
    let no_store = jobs
        .submit_job(
            &ME,
            JobRequest {
                inputs: vec![DataRequest {
                    name: "data".into(),
                    uri: "azureml://datastores/nope/paths/x".into(),
                    mode: String::new(),
                }],
                ..request.clone()
            },
        )
        .await;
    assert!(
        matches!(no_store, Err(AppError::InvalidArgument(ref f)) if f.field == "inputs[0].uri"),
        "{no_store:?}"
    );

    let job = jobs.submit_job(&ME, request).await.expect("submitted");
    assert_eq!(job.spec.node_count, 1);
    assert_eq!(
        job.spec.max_preemptions,
        strato_core::job::DEFAULT_MAX_PREEMPTIONS
    );
    assert_eq!(
        jobs.list_jobs(&ME, Some("cpu-c"), crate::store::JobPage::ALL)
            .await
            .expect("listed")
            .0
            .len(),
        1
    );
    let canceled = jobs.cancel_job(&ME, &job.id).await.expect("canceled");
    assert!(canceled.state.is_final(), "{:?}", canceled.state);
    assert_eq!(
        jobs.wait_job(&ME, &job.id).await.expect("waited").id,
        job.id
    );
}

#[tokio::test]
async fn code_and_outputs_without_a_path_need_the_default_datastore() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plane = plane(dir.path()).await;
    let compute = Compute::new(plane.clone());
    compute
        .create_cluster(&ME, cluster("cpu-d"))
        .await
        .expect("created");
    let jobs = Jobs::new(plane.clone());
    let part = |path: &str, data: &[u8]| CodePart {
        cluster: "cpu-d".into(),
        path: path.into(),
        data: data.to_vec(),
    };
    let upload = async |caller: &Caller, parts: Vec<CodePart>| {
        jobs.upload_code(
            caller,
            futures_util::stream::iter(parts.into_iter().map(Ok)),
        )
        .await
    };
    let reader = Caller::User(Principal {
        name: "token:reader".into(),
        grants: vec![Grant {
            role: Role::Reader,
            scope: Scope::All,
        }],
        expires_at: None,
    });
    let denied = upload(&reader, vec![part("a.py", b"x")]).await;
    assert!(
        matches!(denied, Err(AppError::PermissionDenied(_))),
        "{denied:?}"
    );
    let no_store = upload(&ME, vec![part("a.py", b"x")]).await;
    assert!(
        matches!(
            no_store,
            Err(AppError::FailedPrecondition(
                Precondition::NoDefaultDatastore { .. }
            ))
        ),
        "{no_store:?}"
    );
    let output = JobRequest {
        cluster: "cpu-d".into(),
        image: "busybox".into(),
        command: vec!["true".into()],
        outputs: vec![DataRequest {
            name: "model".into(),
            uri: String::new(),
            mode: String::new(),
        }],
        ..Default::default()
    };
    let refused = jobs.submit_job(&ME, output.clone()).await;
    assert!(
        matches!(
            refused,
            Err(AppError::FailedPrecondition(Precondition::NoDefaultDatastore { ref what })) if what.starts_with("outputs[0]")
        ),
        "{refused:?}"
    );

    Datastores::new(plane.clone())
        .create_datastore(
            &ME,
            NewDatastore {
                name: strato_core::job::DEFAULT_DATASTORE.into(),
                account_url: "https://127.0.0.1:9/devstoreaccount1".into(),
                container: "data".into(),
            },
        )
        .await
        .expect("default datastore");
    // Azure ML's default path, under the job's name; an output's
    // ${{name}} is the job's name too.
    let job = jobs
        .submit_job(&ME, output.clone())
        .await
        .expect("submitted");
    assert_eq!(
        (
            job.spec.outputs[0].datastore.as_str(),
            job.spec.outputs[0].path.clone()
        ),
        ("workspaceblobstore", format!("azureml/{}/model", job.id))
    );
    let mut named = output;
    named.outputs[0].uri =
        "azureml://datastores/workspaceblobstore/paths/runs/${{name}}/out".into();
    let job = jobs.submit_job(&ME, named).await.expect("submitted");
    assert_eq!(job.spec.outputs[0].path, format!("runs/{}/out", job.id));
    // The cluster's identity writes the code: none, none written.
    let no_identity = upload(&ME, vec![part("a.py", b"x")]).await;
    assert!(
        matches!(
            no_identity,
            Err(AppError::FailedPrecondition(
                Precondition::NoIdentity { .. }
            ))
        ),
        "{no_identity:?}"
    );
    // A job's code comes with the digest its upload returned.
    let undigested = jobs
        .submit_job(
            &ME,
            JobRequest {
                cluster: "cpu-d".into(),
                image: "busybox".into(),
                command: vec!["true".into()],
                code: "azureml://datastores/workspaceblobstore/paths/LocalUpload/x".into(),
                code_digest: "nope".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(undigested, Err(AppError::InvalidArgument(ref f)) if f.field == "code.digest"),
        "{undigested:?}"
    );
    compute
        .assign_identity(&ME, "cpu-d", true, vec![])
        .await
        .expect("identity");
    // Refused before anything is written: paths outside the folder, data
    // before a file, chunks over the bound, a file sent twice, nothing.
    let too_big = vec![0u8; strato_core::limits::MAX_CODE_CHUNK_BYTES + 1];
    for (parts, field) in [
        (vec![part("../etc/passwd", b"x")], "path"),
        (vec![part("/abs", b"x")], "path"),
        (vec![part("", b"x")], "path"),
        (vec![part("a.py", &too_big)], "data"),
        (vec![part("a.py", b""), part("a.py", b"")], "path"),
        (vec![part("", b"")], "path"),
    ] {
        let refused = upload(&ME, parts).await;
        assert!(
            matches!(refused, Err(AppError::InvalidArgument(ref f)) if f.field == field),
            "{field}: {refused:?}"
        );
    }
    let other = upload(
        &ME,
        vec![
            part("a.py", b""),
            CodePart {
                cluster: "other".into(),
                ..part("b.py", b"")
            },
        ],
    )
    .await;
    assert!(
        matches!(other, Err(AppError::InvalidArgument(ref f)) if f.field == "cluster"),
        "{other:?}"
    );
}
