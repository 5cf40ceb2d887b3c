//! A job's files through the control plane: the code folder uploaded
//! before `job create` submits (the control plane writes it to the default
//! datastore with the cluster's identity), and outputs and artifacts
//! downloaded by `job download`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use strato_core::limits::{MAX_CODE_BYTES, MAX_CODE_CHUNK_BYTES, MAX_CODE_FILES};
use strato_proto::client::AuthedChannel;
use strato_proto::v1::{self, job_service_client::JobServiceClient};
use tokio::io::AsyncReadExt as _;

use crate::Failure;

/// The files of a code folder (or the one file `code` names), with their
/// paths below it, sorted; what its `.amlignore` (else `.gitignore`) names
/// and symbolic links are left out, said on stderr.
fn code_files(code: &Path) -> Result<Vec<(String, PathBuf, u64)>, Failure> {
    let fail =
        |p: &Path, e: std::io::Error| Failure::refused(format!("code: {}: {e}", p.display()));
    let meta = std::fs::metadata(code).map_err(|e| fail(code, e))?;
    if meta.is_file() {
        let name = code
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "code".into());
        return Ok(vec![(name, code.to_owned(), meta.len())]);
    }
    let ignore = crate::ignore_file::Ignore::of_folder(code)
        .map_err(|e| Failure::usage(format!("code: {e}")))?;
    let mut left_out = 0usize;
    let mut files = Vec::new();
    let mut folders = vec![(code.to_owned(), String::new())];
    while let Some((dir, prefix)) = folders.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| fail(&dir, e))? {
            let entry = entry.map_err(|e| fail(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = format!("{prefix}{name}");
            let kind = entry.file_type().map_err(|e| fail(&entry.path(), e))?;
            if ignore.ignores(&relative, kind.is_dir()) {
                left_out += 1;
                continue;
            }
            if kind.is_dir() {
                folders.push((entry.path(), format!("{relative}/")));
            } else if kind.is_file() {
                let size = entry.metadata().map_err(|e| fail(&entry.path(), e))?.len();
                files.push((relative, entry.path(), size));
            } else {
                eprintln!("code: {relative}: not a regular file or folder; left out");
            }
            if files.len() > MAX_CODE_FILES as usize {
                return Err(Failure::usage(format!(
                    "code: {} holds more than {MAX_CODE_FILES} files, Azure ML's snapshot limit: leave build outputs and data out of the code folder",
                    code.display()
                )));
            }
        }
    }
    if let Some(source) = &ignore.source {
        eprintln!("code: {left_out} files and folders left out as {source} says");
    }
    files.sort();
    Ok(files)
}

/// Uploads `code` for a job on `cluster`; returns what the job names as its
/// code: where it is and its digest.
pub async fn upload_code(
    client: &mut JobServiceClient<AuthedChannel>,
    cluster: &str,
    code: &Path,
) -> Result<v1::JobData, Failure> {
    let files = code_files(code)?;
    let total: u64 = files.iter().map(|(_, _, size)| size).sum();
    if total > MAX_CODE_BYTES {
        return Err(Failure::usage(format!(
            "code: {} holds {total} bytes; at most {MAX_CODE_BYTES} (Azure ML's snapshot limit): leave data out of the code folder",
            code.display()
        )));
    }
    if files.is_empty() {
        return Err(Failure::usage(format!(
            "code: {}: the folder has no file",
            code.display()
        )));
    }
    for (relative, _, _) in &files {
        strato_core::job::check_code_path(relative)
            .map_err(|e| Failure::usage(format!("code: {e}")))?;
    }
    eprintln!(
        "Uploading {} ({} files, {:.1} MB)...",
        code.display(),
        files.len(),
        total as f64 / 1e6
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::CodeChunk>(4);
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let mut failed_tx = Some(failed_tx);
    let cluster = cluster.to_owned();
    // Read while sending. A file that cannot be read must not end the
    // stream as if it were complete: the reader says why and keeps the
    // stream open, and the call is dropped, which the server sees as a
    // broken upload.
    let reader = tokio::spawn(async move {
        let mut first = true;
        for (relative, path, _) in files {
            let read = async {
                let mut file = tokio::fs::File::open(&path).await?;
                let mut started = false;
                loop {
                    let mut data = vec![0u8; MAX_CODE_CHUNK_BYTES];
                    let n = file.read(&mut data).await?;
                    data.truncate(n);
                    if n == 0 && started {
                        return Ok(true);
                    }
                    let chunk = v1::CodeChunk {
                        cluster: if first {
                            cluster.clone()
                        } else {
                            String::new()
                        },
                        path: if started {
                            String::new()
                        } else {
                            relative.clone()
                        },
                        data,
                    };
                    first = false;
                    started = true;
                    if tx.send(chunk).await.is_err() {
                        return Ok(false);
                    }
                    if n == 0 {
                        return Ok(true);
                    }
                }
            };
            match read.await {
                Ok(true) => {}
                // The call ended (the server answered): nothing more to send.
                Ok(false) => return,
                Err(e) => {
                    let e: std::io::Error = e;
                    if let Some(failed) = failed_tx.take() {
                        let _ = failed.send(format!("code: {}: {e}", path.display()));
                    }
                    std::future::pending::<()>().await;
                }
            }
        }
    });
    let call = client.upload_code(tokio_stream::wrappers::ReceiverStream::new(rx));
    let answer = tokio::select! {
        answer = call => answer,
        Ok(why) = failed_rx => {
            reader.abort();
            return Err(Failure::refused(why));
        }
    };
    reader.abort();
    let snapshot = answer?.into_inner();
    eprintln!(
        "Uploaded {} files ({} bytes) to {}",
        snapshot.files, snapshot.bytes, snapshot.uri
    );
    Ok(v1::JobData {
        name: "code".into(),
        uri: snapshot.uri,
        digest: snapshot.digest,
        ..Default::default()
    })
}

/// Downloads a job's artifacts (to `DIR/ID/artifacts/outputs`) and the
/// named outputs asked for (to `DIR/ID/named-outputs/NAME`), as `az ml job
/// download` lays them out. Files are readable by their owner only.
pub async fn download_outputs(
    client: &mut JobServiceClient<AuthedChannel>,
    job: &v1::Job,
    dir: &Path,
    names: &[String],
) -> Result<(), Failure> {
    let spec = job.spec.clone().unwrap_or_default();
    // (The output's name, "" for the artifacts.)
    let mut wanted: Vec<String> = names.to_vec();
    if spec.artifacts.is_some() {
        wanted.insert(0, String::new());
    }
    for name in wanted {
        let (target, label) = if name.is_empty() {
            (
                dir.join(&job.id).join("artifacts").join("outputs"),
                "artifacts".to_owned(),
            )
        } else {
            (
                dir.join(&job.id).join("named-outputs").join(&name),
                format!("output {name}"),
            )
        };
        let mut stream = client
            .download_outputs(v1::DownloadOutputsRequest {
                job_id: job.id.clone(),
                name: name.clone(),
                artifacts: name.is_empty(),
            })
            .await?
            .into_inner();
        let mut file: Option<(PathBuf, std::fs::File)> = None;
        let mut files = 0u32;
        let mut bytes = 0u64;
        // Parts of a blob whose name cannot be a file here are skipped.
        let mut skipping = false;
        while let Some(chunk) = stream.message().await? {
            if chunk.output != name {
                return Err(Failure::refused(format!(
                    "{label}: the control plane sent parts of {:?}",
                    chunk.output
                )));
            }
            if !chunk.path.is_empty() {
                // The path comes from the datastore: never outside the target.
                if let Err(e) = strato_core::job::check_code_path(&chunk.path) {
                    eprintln!("{label}: a blob's {e}; not written");
                    skipping = true;
                    file = None;
                    continue;
                }
                skipping = false;
                let path = target.join(&chunk.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Failure::refused(format!("{}: {e}", parent.display())))?;
                }
                use std::os::unix::fs::OpenOptionsExt as _;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    // A link planted in DIR is not written through.
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
                    .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
                // An older file of the same name keeps its mode otherwise.
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
                file = Some((path, f));
                files += 1;
            }
            if skipping {
                continue;
            }
            let Some((path, f)) = file.as_mut() else {
                return Err(Failure::refused(format!(
                    "{label}: the control plane sent data before a file's name"
                )));
            };
            f.write_all(&chunk.data)
                .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
            bytes += chunk.data.len() as u64;
        }
        if files == 0 {
            eprintln!("{label}: nothing stored");
        } else {
            eprintln!(
                "{label}: {files} files ({bytes} bytes) written to {}",
                target.display()
            );
        }
    }
    Ok(())
}
