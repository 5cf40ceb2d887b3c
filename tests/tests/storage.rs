//! End-to-end: job inputs and outputs in a real Azurite over HTTPS with
//! `--oauth basic`, moved by the agent with the cluster's identity's tokens.

use strato_e2e::{AZURITE_ISSUER, Azurite, ControlPlane, TEST_IMAGE, require_docker};
use strato_proto::v1;

const USER_ID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/etl";

#[tokio::test]
async fn inputs_are_downloaded_and_outputs_uploaded_with_bearer_tokens_only() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let azurite = Azurite::start(&dir.path().join("azurite"))
        .await
        .expect("azurite");
    let ca = azurite.ca().to_string_lossy().into_owned();
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &[
            "--token-issuer",
            AZURITE_ISSUER,
            "--storage-ca-file",
            &ca,
            "--reconcile-interval-ms",
            "200",
            "--cancel-grace",
            "1",
        ],
    )
    .await
    .expect("start");

    assert_eq!(
        azurite.request("PUT", "data?restype=container", None).0,
        201
    );
    assert_eq!(
        azurite.request("PUT", "data/in/a.txt", Some(b"alpha")).0,
        201
    );
    assert_eq!(
        azurite.request("PUT", "data/in/sub/b.txt", Some(b"beta")).0,
        201
    );

    let out = cp.cli(&[
        "datastore",
        "create",
        "-n",
        "lake",
        "--account-url",
        &azurite.account_url(),
        "--container",
        "data",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, identity) in [("etl", Some(USER_ID)), ("noid", None)] {
        let mut args = vec![
            "compute",
            "create",
            "-n",
            name,
            "-s",
            "Standard_D2_v2",
            "--max-nodes",
            "1",
        ];
        if let Some(id) = identity {
            args.extend(["--assign-identity", id]);
        }
        let out = cp.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut jobs = cp.jobs().await;
    let submit = |cluster: &str, script: &str| v1::SubmitJobRequest {
        spec: Some(v1::JobSpec {
            cluster: cluster.into(),
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            inputs: vec![v1::JobData {
                name: "raw".into(),
                uri: "azureml://datastores/lake/paths/in".into(),
                ..Default::default()
            }],
            outputs: vec![v1::JobData {
                name: "model".into(),
                uri: format!("azureml://datastores/lake/paths/out/{cluster}"),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    // The job fails on purpose: its outputs are uploaded all the same.
    let script = "cat $AZURE_ML_INPUT_raw/a.txt; echo; cat $AZURE_ML_INPUT_raw/sub/b.txt; echo; \
                  echo weights > $AZURE_ML_OUTPUT_model/w.bin; mkdir $AZURE_ML_OUTPUT_model/m; \
                  echo meta > $AZURE_ML_OUTPUT_model/m/info.txt; \
                  ln -s /etc/hostname $AZURE_ML_OUTPUT_model/leak; \
                  dd if=/dev/zero of=$AZURE_ML_OUTPUT_model/big.bin bs=1048576 count=12 2>/dev/null; exit 4";
    let id = jobs
        .submit_job(submit("etl", script))
        .await
        .expect("submit")
        .into_inner()
        .id;
    let job = jobs
        .wait_job(v1::WaitJobRequest { id: id.clone() })
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(
        (job.state, job.exit_code),
        (v1::JobState::Failed as i32, Some(4)),
        "{job:?}"
    );
    let mut stream = jobs
        .stream_logs(v1::StreamLogsRequest {
            id,
            follow: false,
            after: None,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(l) = stream.message().await.expect("line") {
        lines.push(l.line);
    }
    assert_eq!(lines, vec!["alpha".to_owned(), "beta".to_owned()]);
    assert_eq!(
        azurite.request("GET", "data/out/etl/w.bin", None),
        (200, "weights\n".to_owned())
    );
    assert_eq!(
        azurite.request("GET", "data/out/etl/m/info.txt", None),
        (200, "meta\n".to_owned())
    );
    // A file above the upload buffer (10 MiB) goes up in blocks, streamed.
    let (status, big) = azurite.request("GET", "data/out/etl/big.bin", None);
    assert_eq!((status, big.len()), (200, 12 * 1024 * 1024));
    assert!(big.bytes().all(|b| b == 0));
    // A symbolic link in the outputs is not followed to a file of the host.
    assert_eq!(azurite.request("GET", "data/out/etl/leak", None).0, 404);

    // Azurite saw bearer tokens only, never an account key.
    let log = azurite.debug_log();
    assert!(log.contains("Bearer"), "Azurite logged the requests");
    // Azurite tries each authenticator; with no key it logs only these two.
    let keyed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("SharedKey"))
        .filter(|l| !l.contains("Start validation") && !l.contains("doesn't include shared key"))
        .take(3)
        .collect();
    assert!(keyed.is_empty(), "an account key was used: {keyed:?}");

    // The same from an Azure ML command job file: a code folder, an input
    // folder, a literal input and an output without a path, copied as
    // their modes say.
    let code = dir.path().join("src");
    std::fs::create_dir_all(code.join("lib")).expect("code folder");
    std::fs::write(
        code.join("run.sh"),
        "cat \"$1/a.txt\"; echo; echo \"$2\" > \"$3/greeting.txt\"; pwd; cat lib/data.txt \"lib/données[1].txt\" \"$4\" > outputs/metrics.txt\n",
    )
    .expect("run.sh");
    std::fs::write(code.join("lib/data.txt"), "accuracy 0.9\n").expect("data.txt");
    // Names keep their spelling on the way through the datastore.
    std::fs::write(code.join("lib/données[1].txt"), "é\n").expect("non-ASCII name");
    // What .amlignore names stays home, as in Azure ML.
    std::fs::write(code.join(".amlignore"), "*.tmp\n").expect(".amlignore");
    std::fs::write(code.join("lib/scratch.tmp"), "not uploaded").expect("scratch");
    let job_file = dir.path().join("job.yml");
    std::fs::write(
        &job_file,
        format!(
            "$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json\n\
             type: command\n\
             code: ./src\n\
             command: sh run.sh ${{{{inputs.raw}}}} '${{{{inputs.greeting}}}}' ${{{{outputs.model}}}} ${{{{inputs.one}}}}\n\
             environment:\n  image: {TEST_IMAGE}\n\
             compute: azureml:etl\n\
             display_name: from-yaml\n\
             inputs:\n\
             \x20 raw: {{type: uri_folder, path: azureml://datastores/lake/paths/in, mode: download}}\n\
             \x20 greeting: hello yaml\n\
             \x20 one: {{type: uri_file, path: azureml://datastores/lake/paths/in/sub/b.txt}}\n\
             outputs:\n\
             \x20 model: {{type: uri_folder, mode: upload}}\n"
        ),
    )
    .expect("job.yml");
    // Code and outputs without a path go to the default datastore: until
    // the operator registers it, the job is refused saying how.
    let out = cp.cli(&["job", "create", "--file", &job_file.to_string_lossy()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("failed precondition")
            && said.contains("strato datastore create -n workspaceblobstore"),
        "{said}"
    );
    let out = cp.cli(&[
        "datastore",
        "create",
        "-n",
        "workspaceblobstore",
        "--account-url",
        &azurite.account_url(),
        "--container",
        "data",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp.cli(&[
        "job",
        "create",
        "--file",
        &job_file.to_string_lossy(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the job as JSON");
    let id = created["id"].as_str().expect("id").to_owned();
    let job = jobs
        .wait_job(v1::WaitJobRequest { id: id.clone() })
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(
        (job.state, job.spec.map(|s| s.display_name)),
        (v1::JobState::Completed as i32, Some("from-yaml".to_owned())),
        "{}",
        job.reason
    );
    // The output is where `job show` says: Azure ML's default path in the
    // default datastore.
    let out = cp.cli(&["job", "show", "-n", &id, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job show");
    let model = shown["outputs"]["model"]["path"]
        .as_str()
        .expect("model path");
    assert_eq!(
        model,
        format!("azureml://datastores/workspaceblobstore/paths/azureml/{id}/model")
    );
    assert!(
        shown["code"].as_str().is_some_and(
            |c| c.starts_with("azureml://datastores/workspaceblobstore/paths/LocalUpload/")
        ),
        "{shown}"
    );
    assert_eq!(
        azurite.request(
            "GET",
            &format!("data/azureml/{id}/model/greeting.txt"),
            None
        ),
        (200, "hello yaml\n".to_owned())
    );
    // The code folder's ./outputs are the job's artifacts.
    assert_eq!(
        azurite.request(
            "GET",
            &format!("data/ExperimentRun/dcid.{id}/outputs/metrics.txt"),
            None
        ),
        (200, "accuracy 0.9\né\nbeta".to_owned())
    );
    // Its log, artifacts and outputs, where `az ml job download` puts them.
    let into = dir.path().join("downloads");
    let out = cp.cli(&[
        "job",
        "download",
        "-n",
        &id,
        "--download-path",
        &into.to_string_lossy(),
        "--all",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(into.join(&id).join("artifacts/user_logs/std_log.txt"))
            .expect("std_log.txt"),
        "alpha\n/mnt/strato/code\n",
        "the command ran in the code folder"
    );
    assert_eq!(
        std::fs::read_to_string(into.join(&id).join("artifacts/outputs/metrics.txt"))
            .expect("metrics.txt"),
        "accuracy 0.9\né\nbeta"
    );
    assert_eq!(
        std::fs::read_to_string(into.join(&id).join("named-outputs/model/greeting.txt"))
            .expect("greeting.txt"),
        "hello yaml\n"
    );
    // A code folder changed after its upload (any job whose identity may
    // write the default datastore could) is never run.
    let code = jobs
        .get_job(v1::GetJobRequest { id: id.clone() })
        .await
        .expect("get")
        .into_inner()
        .spec
        .and_then(|s| s.code)
        .expect("the job's code");
    assert_eq!(code.digest.len(), 64, "{code:?}");
    assert_eq!(
        azurite
            .request("GET", &format!("data/{}/lib/scratch.tmp", code.path), None)
            .0,
        404,
        "a file .amlignore names was uploaded"
    );
    assert_eq!(
        azurite
            .request(
                "PUT",
                &format!("data/{}/run.sh", code.path),
                Some(b"echo tampered")
            )
            .0,
        201
    );
    let mut again = submit("etl", "true");
    if let Some(spec) = again.spec.as_mut() {
        spec.inputs.clear();
        spec.outputs.clear();
        spec.code = Some(v1::JobData {
            uri: code.uri.clone(),
            digest: code.digest.clone(),
            ..Default::default()
        });
    }
    let rerun = jobs
        .submit_job(again)
        .await
        .expect("submit")
        .into_inner()
        .id;
    let rerun = jobs
        .wait_job(v1::WaitJobRequest { id: rerun })
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(rerun.state, v1::JobState::Failed as i32, "{}", rerun.reason);
    assert!(
        rerun.reason.contains("changed after it was uploaded"),
        "{}",
        rerun.reason
    );

    // A job file's limits.timeout: the job is canceled once it has run
    // that long, saying so.
    let slow_file = dir.path().join("slow.yml");
    std::fs::write(
        &slow_file,
        format!(
            "type: command\ncommand: echo started; sleep 120\nenvironment:\n  image: {TEST_IMAGE}\n\
             compute: etl\nlimits:\n  timeout: 2\nexperiment_name: timeouts\n"
        ),
    )
    .expect("slow.yml");
    let out = cp.cli(&[
        "job",
        "create",
        "--file",
        &slow_file.to_string_lossy(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the job as JSON");
    assert_eq!(
        (
            created["timeout_seconds"].as_u64(),
            created["experiment_name"].as_str()
        ),
        (Some(2), Some("timeouts"))
    );
    let id = created["id"].as_str().expect("id").to_owned();
    let job = jobs
        .wait_job(v1::WaitJobRequest { id })
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(
        (job.state, job.reason.as_str()),
        (
            v1::JobState::Canceled as i32,
            "canceled: it ran past its limits.timeout of 2 s"
        )
    );

    // A cluster without an identity cannot reach the data: the job fails, saying why.
    let id = jobs
        .submit_job(submit("noid", "true"))
        .await
        .expect("submit")
        .into_inner()
        .id;
    let job = jobs
        .wait_job(v1::WaitJobRequest { id })
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(job.state, v1::JobState::Failed as i32);
    assert!(job.reason.contains("no managed identity"), "{}", job.reason);

    // Bad references are refused at submit, naming the field.
    let mut bad = submit("etl", "true");
    if let Some(spec) = bad.spec.as_mut() {
        spec.inputs[0].uri = "azureml://datastores/nope/paths/x".into();
    }
    let e = jobs.submit_job(bad).await.expect_err("unknown datastore");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("inputs[0].uri:"), "{}", e.message());
}
