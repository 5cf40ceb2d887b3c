//! A job's data through the control plane: code folders written to the
//! default datastore (`job create --file` with `code:`) and outputs read
//! back (`job download`), both with the default identity of the job's
//! cluster, whose token never leaves the control plane.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use strato_core::FieldError;
use strato_core::job::{self, DataBinding};
use strato_core::limits::{MAX_CODE_BYTES, MAX_CODE_CHUNK_BYTES, MAX_CODE_FILES};
use strato_storage::{Folder, STORAGE_RESOURCE, Transfer};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Action, AppError, Caller, Jobs, Precondition, authorize, required};
use crate::store::{ClusterRecord, Store};

/// How long an upload may wait for its client's next chunk.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// How long one upload may take in all (300 MB at under 100 kB/s is over).
pub const UPLOAD_DEADLINE: Duration = Duration::from_secs(3600);
/// The most blobs one output's download lists.
pub const MAX_DOWNLOAD_BLOBS: usize = 100_000;

/// Part of a code folder as a client sends it: the first names the
/// cluster, one with a path starts that file, data is appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodePart {
    pub cluster: String,
    pub path: String,
    pub data: Vec<u8>,
}

/// Where an uploaded code folder is, for a job's `code`, and its digest
/// (`strato_storage::snapshot_digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSnapshot {
    pub uri: String,
    pub files: u32,
    pub bytes: u64,
    pub digest: String,
}

/// Part of an output's file: one with a path starts that file. `output` is
/// the output's name, empty for the artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPart {
    pub output: String,
    pub path: String,
    pub data: Vec<u8>,
}

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<OutputPart, AppError>> + Send>>;

/// A transfer's failure as the caller can act on it: a container or path
/// that is not there, an identity without the role, or storage to try
/// again.
fn storage_failed(e: strato_storage::StorageError) -> AppError {
    use strato_storage::FailureKind;
    let message = format!("storage: {e}");
    match e.kind() {
        FailureKind::NotFound => AppError::FailedPrecondition(Precondition::Storage(message)),
        FailureKind::Denied => AppError::PermissionDenied(format!(
            "{message} (the cluster's identity needs Storage Blob Data Contributor on the datastore)"
        )),
        FailureKind::Other => AppError::Unavailable(message),
    }
}

/// A write's failure (object_store's writer says only an I/O error).
fn write_failed(name: &str, e: std::io::Error) -> AppError {
    AppError::Unavailable(format!("storage: writing {name}: {e}"))
}

impl<S: Store> Jobs<S> {
    /// A token of the cluster's default identity for storage, or why not.
    async fn storage_token(&self, cluster: &ClusterRecord, what: &str) -> Result<String, AppError> {
        let identity =
            strato_core::identity::default_identity(&cluster.identities).ok_or_else(|| {
                tracing::debug!(cluster = %cluster.spec.name, what, "no default identity");
                AppError::FailedPrecondition(Precondition::NoIdentity {
                    cluster: cluster.spec.name.clone(),
                })
            })?;
        Ok(self
            .plane
            .identity_token(&cluster.spec.name, identity, STORAGE_RESOURCE)
            .await?
            .access_token)
    }

    /// Writes a code folder, part by part, to a new folder of the default
    /// datastore, and returns its digest. Bounded: `MAX_CODE_BYTES`,
    /// `MAX_CODE_FILES`, chunks of `MAX_CODE_CHUNK_BYTES`, `UPLOAD_IDLE`
    /// between chunks, `UPLOAD_DEADLINE` in all, and the caller's open
    /// long-lived calls (`--max-followers-per-caller`). A refused or broken
    /// upload leaves its partial folder, which no job names.
    pub async fn upload_code<P>(&self, caller: &Caller, parts: P) -> Result<CodeSnapshot, AppError>
    where
        P: Stream<Item = Result<CodePart, AppError>> + Send,
    {
        let deadline = tokio::time::Instant::now() + UPLOAD_DEADLINE;
        let mut parts = std::pin::pin!(parts);
        let next = async |parts: &mut Pin<&mut P>| -> Result<Option<CodePart>, AppError> {
            let wait = tokio::time::Instant::now() + UPLOAD_IDLE;
            match tokio::time::timeout_at(wait.min(deadline), parts.next()).await {
                Ok(part) => part.transpose(),
                Err(_) => Err(AppError::InvalidArgument(FieldError::new(
                    "data",
                    format!(
                        "an upload sends a chunk at least every {} s and ends within {} s",
                        UPLOAD_IDLE.as_secs(),
                        UPLOAD_DEADLINE.as_secs()
                    ),
                ))),
            }
        };
        let first = next(&mut parts)
            .await?
            .ok_or_else(|| FieldError::new("cluster", "is required in the first chunk"))?;
        required("cluster", &first.cluster)?;
        authorize(caller, Action::SubmitJob, Some(&first.cluster))?;
        let _slot = self.follower_slot(caller)?;
        let cluster = self.plane.store.get_cluster(&first.cluster).await?;
        let store = self.default_datastore("a code folder".into()).await?;
        let token = self
            .storage_token(&cluster, "a code folder is written")
            .await?;
        let snapshot = uuid::Uuid::new_v4().simple().to_string();
        let path = job::code_snapshot_path(&snapshot);
        let folder = Folder::open(
            &Transfer {
                name: "code".into(),
                account_url: store.account_url.clone(),
                container: store.container.clone(),
                path: path.clone(),
            },
            &token,
            self.plane.storage_ca.as_deref(),
        )
        .map_err(storage_failed)?;
        let mut seen = HashSet::new();
        let mut hashed: Vec<(String, [u8; 32])> = Vec::new();
        let mut bytes = 0u64;
        let mut writer: Option<(String, strato_storage::BufWriter, Sha256)> = None;
        let mut part = Some(first);
        let outcome: Result<(), AppError> = async {
            while let Some(p) = part.take() {
                if !p.cluster.is_empty() && p.cluster != cluster.spec.name {
                    return Err(FieldError::new(
                        "cluster",
                        format!(
                            "{:?}: an upload is for one cluster ({})",
                            p.cluster, cluster.spec.name
                        ),
                    )
                    .into());
                }
                if p.data.len() > MAX_CODE_CHUNK_BYTES {
                    return Err(FieldError::new(
                        "data",
                        format!("{} bytes in one chunk; at most {MAX_CODE_CHUNK_BYTES}", p.data.len()),
                    )
                    .into());
                }
                if !p.path.is_empty() {
                    job::check_code_path(&p.path)?;
                    if !seen.insert(p.path.clone()) {
                        return Err(FieldError::new(
                            "path",
                            format!("{:?} was sent twice", p.path),
                        )
                        .into());
                    }
                    if seen.len() > MAX_CODE_FILES as usize {
                        return Err(FieldError::new(
                            "path",
                            format!("a code folder holds at most {MAX_CODE_FILES} files (Azure ML's snapshot limit)"),
                        )
                        .into());
                    }
                    if let Some((name, mut w, digest)) = writer.take() {
                        w.shutdown().await.map_err(|e| write_failed(&name, e))?;
                        hashed.push((name, digest.finalize().into()));
                    }
                    writer = Some((p.path.clone(), folder.create(&p.path), Sha256::new()));
                }
                if !p.data.is_empty() {
                    let Some((name, w, digest)) = writer.as_mut() else {
                        return Err(FieldError::new("path", "the first chunk with data must name its file").into());
                    };
                    bytes += p.data.len() as u64;
                    if bytes > MAX_CODE_BYTES {
                        return Err(FieldError::new(
                            "data",
                            format!("a code folder holds at most {MAX_CODE_BYTES} bytes (Azure ML's snapshot limit)"),
                        )
                        .into());
                    }
                    digest.update(&p.data);
                    w.write_all(&p.data).await.map_err(|e| write_failed(name, e))?;
                }
                part = next(&mut parts).await?;
            }
            if let Some((name, mut w, digest)) = writer.take() {
                w.shutdown().await.map_err(|e| write_failed(&name, e))?;
                hashed.push((name, digest.finalize().into()));
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            if let Some((_, mut w, _)) = writer.take() {
                let _ = w.abort().await;
            }
            return Err(e);
        }
        if hashed.is_empty() {
            return Err(FieldError::new("path", "the code folder has no file").into());
        }
        let digest = strato_storage::snapshot_digest(&hashed);
        tracing::info!(
            cluster = %cluster.spec.name, by = %caller.principal(), path = %path,
            files = hashed.len(), bytes, digest = %digest, "code folder uploaded"
        );
        Ok(CodeSnapshot {
            uri: format!("azureml://datastores/{}/paths/{path}", store.name),
            files: hashed.len() as u32,
            bytes,
            digest,
        })
    }

    /// Streams the files of a job's outputs and artifacts, read with its
    /// cluster's default identity: the output `name` and, with `artifacts`,
    /// the artifacts; neither: all of them. Counts as one of the caller's
    /// long-lived calls while it streams.
    pub async fn download_outputs(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        artifacts: bool,
    ) -> Result<OutputStream, AppError> {
        required("job_id", id)?;
        let record = self.plane.store.get_job(id).await?;
        authorize(caller, Action::ReadOutputs, Some(&record.spec.cluster))?;
        let every = name.is_empty() && !artifacts;
        // (The output's name, or "" for the artifacts, and where it is.)
        let mut chosen: Vec<(String, DataBinding)> = record
            .spec
            .outputs
            .iter()
            .filter(|d| every || d.name == name)
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        if (every || artifacts)
            && let Some(a) = &record.spec.artifacts
        {
            chosen.push((String::new(), a.clone()));
        }
        if !name.is_empty() && !record.spec.outputs.iter().any(|d| d.name == name) {
            let names: Vec<&str> = record
                .spec
                .outputs
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            return Err(FieldError::new(
                "name",
                format!(
                    "job {id} has no output {name:?}; it has: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            )
            .into());
        }
        let slot = self.follower_slot(caller)?;
        let cluster = self.plane.store.get_cluster(&record.spec.cluster).await?;
        let token = if chosen.is_empty() {
            String::new()
        } else {
            self.storage_token(&cluster, "outputs are read").await?
        };
        let ca = self.plane.storage_ca.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let _slot = slot;
            for (output, d) in chosen {
                let folder = match Folder::open(
                    &Transfer {
                        name: d.name.clone(),
                        account_url: d.account_url.clone(),
                        container: d.container.clone(),
                        path: d.path.clone(),
                    },
                    &token,
                    ca.as_deref(),
                ) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(storage_failed(e))).await;
                        return;
                    }
                };
                let entries = match folder.list(MAX_DOWNLOAD_BLOBS).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        let _ = tx.send(Err(storage_failed(e))).await;
                        return;
                    }
                };
                for entry in entries {
                    let mut chunks = match folder.read(&entry).await {
                        Ok(c) => Box::pin(c),
                        Err(e) => {
                            let _ = tx.send(Err(storage_failed(e))).await;
                            return;
                        }
                    };
                    // An empty file is one part with its path and no data.
                    let mut path = Some(entry.relative.clone());
                    let mut pending = bytes::Bytes::new();
                    loop {
                        if pending.is_empty() {
                            match chunks.next().await {
                                Some(Ok(data)) if data.is_empty() => continue,
                                Some(Ok(data)) => pending = data,
                                Some(Err(e)) => {
                                    let _ = tx.send(Err(storage_failed(e))).await;
                                    return;
                                }
                                None if path.is_none() => break,
                                None => {}
                            }
                        }
                        let data = pending.split_to(pending.len().min(MAX_CODE_CHUNK_BYTES));
                        let part = OutputPart {
                            output: output.clone(),
                            path: path.take().unwrap_or_default(),
                            data: data.to_vec(),
                        };
                        let last = part.data.is_empty();
                        if tx.send(Ok(part)).await.is_err() {
                            return;
                        }
                        if last {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
