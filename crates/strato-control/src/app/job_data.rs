//! A job's data through the control plane: code folders written to the
//! default datastore (`job create --file` with `code:`) and outputs read
//! back (`job download`), both with the default identity of the job's
//! cluster, whose token never leaves the control plane.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use strato_core::FieldError;
use strato_core::job::{self, DataBinding};
use strato_core::limits::{MAX_CODE_BYTES, MAX_CODE_CHUNK_BYTES, MAX_CODE_FILES};
use strato_storage::{Folder, STORAGE_RESOURCE, Transfer};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Action, AppError, Caller, Jobs, authorize, required};
use crate::store::{ClusterRecord, Store};

/// How long an upload may wait for its client's next chunk.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Part of a code folder as a client sends it: the first names the
/// cluster, one with a path starts that file, data is appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodePart {
    pub cluster: String,
    pub path: String,
    pub data: Vec<u8>,
}

/// Where an uploaded code folder is, for a job's `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSnapshot {
    pub uri: String,
    pub files: u32,
    pub bytes: u64,
}

/// Part of an output's file: one with a path starts that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPart {
    pub output: String,
    pub path: String,
    pub data: Vec<u8>,
}

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<OutputPart, AppError>> + Send>>;

fn storage_failed(e: impl std::fmt::Display) -> AppError {
    AppError::Unavailable(format!("storage: {e}"))
}

impl<S: Store> Jobs<S> {
    /// A token of the cluster's default identity for storage, or why not.
    async fn storage_token(&self, cluster: &ClusterRecord, what: &str) -> Result<String, AppError> {
        let identity = strato_core::identity::default_identity(&cluster.identities).ok_or_else(
            || {
                AppError::InvalidArgument(FieldError::new(
                    "cluster",
                    format!(
                        "{what} with the default managed identity of cluster {}, which has none: assign one with `strato compute identity assign -n {} '[system]'`",
                        cluster.spec.name, cluster.spec.name
                    ),
                ))
            },
        )?;
        Ok(self
            .plane
            .identity_token(&cluster.spec.name, identity, STORAGE_RESOURCE)
            .await?
            .access_token)
    }

    /// Writes a code folder, part by part, to a new folder of the default
    /// datastore. Bounded: `MAX_CODE_BYTES`, `MAX_CODE_FILES`, chunks of
    /// `MAX_CODE_CHUNK_BYTES`, `UPLOAD_IDLE` between chunks. A refused or
    /// broken upload leaves its partial folder, which no job names.
    pub async fn upload_code<P>(&self, caller: &Caller, parts: P) -> Result<CodeSnapshot, AppError>
    where
        P: Stream<Item = Result<CodePart, AppError>> + Send,
    {
        let mut parts = std::pin::pin!(parts);
        let next = async |parts: &mut Pin<&mut P>| -> Result<Option<CodePart>, AppError> {
            match tokio::time::timeout(UPLOAD_IDLE, parts.next()).await {
                Ok(part) => part.transpose(),
                Err(_) => Err(AppError::InvalidArgument(FieldError::new(
                    "data",
                    format!(
                        "no chunk came for {} s: an upload must keep sending",
                        UPLOAD_IDLE.as_secs()
                    ),
                ))),
            }
        };
        let first = next(&mut parts)
            .await?
            .ok_or_else(|| FieldError::new("cluster", "is required in the first chunk"))?;
        required("cluster", &first.cluster)?;
        authorize(caller, Action::SubmitJob, Some(&first.cluster))?;
        if let Err(retry_after_ms) = self
            .plane
            .submits
            .take(caller.principal(), self.plane.clock.now_ms())
        {
            let (rate, burst) = self.plane.submits.limits();
            return Err(AppError::RateLimited {
                caller: caller.principal().to_owned(),
                rate,
                burst,
                retry_after_ms,
            });
        }
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
        let mut bytes = 0u64;
        let mut writer: Option<(String, strato_storage::BufWriter)> = None;
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
                    if let Some((name, mut w)) = writer.take() {
                        w.shutdown().await.map_err(|e| storage_failed(format!("{name}: {e}")))?;
                    }
                    writer = Some((p.path.clone(), folder.create(&p.path)));
                }
                if !p.data.is_empty() {
                    let Some((name, w)) = writer.as_mut() else {
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
                    w.write_all(&p.data)
                        .await
                        .map_err(|e| storage_failed(format!("{name}: {e}")))?;
                }
                part = next(&mut parts).await?;
            }
            if let Some((name, mut w)) = writer.take() {
                w.shutdown().await.map_err(|e| storage_failed(format!("{name}: {e}")))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            if let Some((_, mut w)) = writer.take() {
                let _ = w.abort().await;
            }
            return Err(e);
        }
        if seen.is_empty() {
            return Err(FieldError::new("path", "the code folder has no file").into());
        }
        tracing::info!(
            cluster = %cluster.spec.name, by = %caller.principal(), path = %path,
            files = seen.len(), bytes, "code folder uploaded"
        );
        Ok(CodeSnapshot {
            uri: format!("azureml://datastores/{}/paths/{path}", store.name),
            files: seen.len() as u32,
            bytes,
        })
    }

    /// Streams the files of a job's outputs and artifacts (`name`: one of
    /// them; empty: all), read with its cluster's default identity.
    pub async fn download_outputs(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
    ) -> Result<OutputStream, AppError> {
        required("job_id", id)?;
        let record = self.plane.store.get_job(id).await?;
        authorize(caller, Action::ReadOutputs, Some(&record.spec.cluster))?;
        let all: Vec<DataBinding> = record
            .spec
            .outputs
            .iter()
            .chain(record.spec.artifacts.iter())
            .cloned()
            .collect();
        let chosen: Vec<DataBinding> = all
            .iter()
            .filter(|d| name.is_empty() || d.name == name)
            .cloned()
            .collect();
        if chosen.is_empty() && !name.is_empty() {
            let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
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
        let cluster = self.plane.store.get_cluster(&record.spec.cluster).await?;
        let token = if chosen.is_empty() {
            String::new()
        } else {
            self.storage_token(&cluster, "outputs are read").await?
        };
        let ca = self.plane.storage_ca.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            for d in chosen {
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
                let entries = match folder.list().await {
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
                            output: d.name.clone(),
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
