//! An attempt's data on this node: inputs downloaded and outputs' directories
//! prepared before its container starts, bound into it, and outputs uploaded
//! after it ends. The outputs' plan is written beside them, so a restarted
//! agent still uploads them.

use std::path::{Path, PathBuf};

use strato_proto::v1;
use strato_runtime::ContainerSpec;

use super::attempt::Staging;
use super::job_key;
use super::mounts::DataMount;
use crate::identity::{AttemptIdentity, Refusal};
use crate::storage::{self, StorageError, Transfer};

pub(super) const INPUTS_IN_CONTAINER: &str = "/mnt/strato/inputs";
pub(super) const OUTPUTS_IN_CONTAINER: &str = "/mnt/strato/outputs";
/// Where a job's code folder is, and where its command starts; the job's
/// `./outputs` there are its artifacts.
pub(super) const CODE_IN_CONTAINER: &str = "/mnt/strato/code";
/// Why an attempt's data could not be staged or uploaded; the text is the
/// attempt's failure reason.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("no storage token for the job's data (the cluster's default identity): {0}")]
    NoToken(#[source] Refusal),
    #[error("downloading input {name}: {source}")]
    Download { name: String, source: StorageError },
    #[error("downloading the code folder: {source}")]
    Code { source: StorageError },
    #[error("reading the downloaded code folder: {0}")]
    CodeDigest(#[source] std::io::Error),
    #[error(
        "the code folder {path} changed after it was uploaded (its digest differs): it is not run; create the job again"
    )]
    CodeChanged { path: String },
    #[error("output {name}: {source}")]
    OutputDir {
        name: String,
        source: std::io::Error,
    },
    /// The outputs' plan could not be written or read back.
    #[error("{0}")]
    EncodePlan(#[source] serde_json::Error),
    #[error("writing the outputs' plan: {0}")]
    WritePlan(#[source] std::io::Error),
    #[error("the outputs' plan: {0}")]
    DecodePlan(#[source] serde_json::Error),
    #[error("no storage token to upload outputs: {0}")]
    NoUploadToken(#[source] Refusal),
    #[error("uploading output {name}: {source}")]
    Upload { name: String, source: StorageError },
    /// Every output that could not be uploaded, said together.
    #[error("{0}")]
    Uploads(String),
}

/// An attempt's inputs and outputs: those copied (downloaded before the
/// job, uploaded after it) and those mounted.
#[derive(Debug, Clone, Default)]
pub struct DataPlan {
    pub inputs: Vec<Transfer>,
    pub outputs: Vec<Transfer>,
    pub mounts: Vec<DataMount>,
    /// The code folder, downloaded into the working directory, and the
    /// digest it must have.
    pub code: Option<(Transfer, String)>,
    /// Where the working directory's `outputs` go after the job.
    pub artifacts: Option<Transfer>,
}

impl DataPlan {
    /// The plan of a job's data, as its modes say.
    pub(super) fn of(spec: &v1::JobSpec) -> DataPlan {
        let transfer = |d: &v1::JobData| Transfer {
            name: d.name.clone(),
            account_url: d.account_url.clone(),
            container: d.container.clone(),
            path: d.path.clone(),
        };
        let mut plan = DataPlan::default();
        for (list, output) in [(&spec.inputs, false), (&spec.outputs, true)] {
            for d in list {
                match DataMount::of(d, output, transfer(d)) {
                    Some(m) => plan.mounts.push(m),
                    None if output => plan.outputs.push(transfer(d)),
                    None => plan.inputs.push(transfer(d)),
                }
            }
        }
        plan.code = spec.code.as_ref().map(|c| (transfer(c), c.digest.clone()));
        plan.artifacts = spec.artifacts.as_ref().map(transfer);
        plan
    }
}

/// The directory of an attempt's staged data on this node.
pub(super) fn attempt_dir(work_dir: &Path, job_id: &str, attempt: u32) -> PathBuf {
    work_dir.join(job_key(job_id, attempt))
}

/// Downloads the inputs and prepares the output directories, and binds both
/// into the container with `AZURE_ML_INPUT_<name>` / `AZURE_ML_OUTPUT_<name>`.
/// The outputs' plan is written beside them, so a restarted agent uploads
/// them too.
pub(super) async fn stage_data(
    staging: &Staging,
    plan: &DataPlan,
    spec: &mut ContainerSpec,
    job_id: &str,
    attempt: u32,
) -> Result<(), StagingError> {
    if plan.inputs.is_empty() && plan.outputs.is_empty() && plan.code.is_none() {
        return Ok(());
    }
    let dir = attempt_dir(&staging.work_dir, job_id, attempt);
    let token = storage_token(staging, job_id, attempt)
        .await
        .map_err(StagingError::NoToken)?;
    for input in &plan.inputs {
        let host = dir.join("inputs").join(&input.name);
        let files = storage::download(input, &token, staging.storage_ca.as_deref(), &host)
            .await
            .map_err(|source| StagingError::Download {
                name: input.name.clone(),
                source,
            })?;
        tracing::info!(job = %job_id, attempt, input = %input.name, files, "input downloaded");
        let inside = format!("{INPUTS_IN_CONTAINER}/{}", input.name);
        spec.mounts
            .push((host.display().to_string(), inside.clone(), true));
        spec.env
            .push((format!("AZURE_ML_INPUT_{}", input.name), inside));
    }
    if let Some((code, digest)) = &plan.code {
        let host = dir.join("code");
        let files = storage::download(code, &token, staging.storage_ca.as_deref(), &host)
            .await
            .map_err(|source| StagingError::Code { source })?;
        // What was uploaded, and nothing else: a folder changed since (by
        // any job whose identity may write the default datastore) never
        // runs.
        let found = {
            let host = host.clone();
            tokio::task::spawn_blocking(move || storage::folder_digest(&host))
                .await
                .map_err(std::io::Error::other)
                .and_then(|d| d)
                .map_err(StagingError::CodeDigest)?
        };
        if &found != digest {
            return Err(StagingError::CodeChanged {
                path: code.path.clone(),
            });
        }
        // Azure ML makes ./outputs for the job's artifacts.
        std::fs::create_dir_all(host.join("outputs")).map_err(|source| {
            StagingError::OutputDir {
                name: "artifacts (./outputs)".into(),
                source,
            }
        })?;
        tracing::info!(job = %job_id, attempt, files, "code downloaded");
        spec.mounts.push((
            host.display().to_string(),
            CODE_IN_CONTAINER.to_owned(),
            false,
        ));
        spec.working_dir = Some(CODE_IN_CONTAINER.to_owned());
    }
    for output in &plan.outputs {
        let host = dir.join("outputs").join(&output.name);
        std::fs::create_dir_all(&host).map_err(|source| StagingError::OutputDir {
            name: output.name.clone(),
            source,
        })?;
        let inside = format!("{OUTPUTS_IN_CONTAINER}/{}", output.name);
        spec.mounts
            .push((host.display().to_string(), inside.clone(), false));
        spec.env
            .push((format!("AZURE_ML_OUTPUT_{}", output.name), inside));
    }
    let manifest = serde_json::to_vec(&plan.outputs).map_err(StagingError::EncodePlan)?;
    std::fs::write(dir.join("outputs.json"), manifest).map_err(StagingError::WritePlan)?;
    if let Some(artifacts) = &plan.artifacts {
        let manifest = serde_json::to_vec(artifacts).map_err(StagingError::EncodePlan)?;
        std::fs::write(dir.join(ARTIFACTS_PLAN), manifest).map_err(StagingError::WritePlan)?;
    }
    Ok(())
}

/// The artifacts' plan beside the outputs' (an attempt with code only).
const ARTIFACTS_PLAN: &str = "artifacts.json";

/// Uploads an attempt's outputs, and its artifacts (the code folder's
/// `outputs`), after it ended, whatever its exit code.
pub(super) async fn upload_outputs(
    staging: &Staging,
    job_id: &str,
    attempt: u32,
) -> Result<(), StagingError> {
    let dir = attempt_dir(&staging.work_dir, job_id, attempt);
    let Ok(manifest) = std::fs::read(dir.join("outputs.json")) else {
        return Ok(());
    };
    let mut outputs: Vec<(Transfer, PathBuf)> = serde_json::from_slice::<Vec<Transfer>>(&manifest)
        .map_err(StagingError::DecodePlan)?
        .into_iter()
        .map(|t| {
            let local = dir.join("outputs").join(&t.name);
            (t, local)
        })
        .collect();
    if let Ok(manifest) = std::fs::read(dir.join(ARTIFACTS_PLAN)) {
        let artifacts: Transfer =
            serde_json::from_slice(&manifest).map_err(StagingError::DecodePlan)?;
        outputs.push((artifacts, dir.join("code").join("outputs")));
    }
    if outputs.is_empty() {
        return Ok(());
    }
    let token = storage_token(staging, job_id, attempt)
        .await
        .map_err(StagingError::NoUploadToken)?;
    // Every output is tried: one that fails does not cost the others.
    let mut failed = Vec::new();
    for (output, local) in &outputs {
        match storage::upload(output, &token, staging.storage_ca.as_deref(), local).await {
            Ok(files) => {
                tracing::info!(job = %job_id, attempt, output = %output.name, files, "output uploaded");
            }
            Err(source) => failed.push(
                StagingError::Upload {
                    name: output.name.clone(),
                    source,
                }
                .to_string(),
            ),
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(StagingError::Uploads(failed.join("; "))),
    }
}

/// A token of the cluster's default identity for the attempt's transfers.
async fn storage_token(staging: &Staging, job_id: &str, attempt: u32) -> Result<String, Refusal> {
    staging
        .vending
        .storage_token(&AttemptIdentity {
            job_id: job_id.to_owned(),
            attempt,
        })
        .await
}
