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
/// paths below it, sorted; symbolic links are left out, said on stderr.
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
    let mut files = Vec::new();
    let mut folders = vec![(code.to_owned(), String::new())];
    while let Some((dir, prefix)) = folders.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| fail(&dir, e))? {
            let entry = entry.map_err(|e| fail(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = format!("{prefix}{name}");
            let kind = entry.file_type().map_err(|e| fail(&entry.path(), e))?;
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
    files.sort();
    Ok(files)
}

/// Uploads `code` for a job on `cluster`; returns the datastore URI the
/// job names as its code.
pub async fn upload_code(
    client: &mut JobServiceClient<AuthedChannel>,
    cluster: &str,
    code: &Path,
) -> Result<String, Failure> {
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
    let cluster = cluster.to_owned();
    // Read while sending; a file that cannot be read ends the upload, and
    // the control plane refuses it as incomplete only if the stream broke,
    // so the reader's error is kept and reported first.
    let reader = tokio::spawn(async move {
        let mut first = true;
        for (relative, path, _) in files {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("code: {}: {e}", path.display()))?;
            let mut started = false;
            loop {
                let mut data = vec![0u8; MAX_CODE_CHUNK_BYTES];
                let n = file
                    .read(&mut data)
                    .await
                    .map_err(|e| format!("code: {}: {e}", path.display()))?;
                data.truncate(n);
                if n == 0 && started {
                    break;
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
                    return Ok(());
                }
                if n == 0 {
                    break;
                }
            }
        }
        Ok::<(), String>(())
    });
    let answer = client
        .upload_code(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    match reader.await {
        Ok(Err(e)) => return Err(Failure::refused(e)),
        Err(e) => return Err(Failure::refused(format!("code: reading the folder: {e}"))),
        Ok(Ok(())) => {}
    }
    let snapshot = answer?.into_inner();
    eprintln!(
        "Uploaded {} files ({} bytes) to {}",
        snapshot.files, snapshot.bytes, snapshot.uri
    );
    Ok(snapshot.uri)
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
    let mut wanted: Vec<String> = names.to_vec();
    if spec.artifacts.is_some() {
        wanted.insert(0, "artifacts".into());
    }
    for name in wanted {
        let target = if name == "artifacts" && spec.artifacts.is_some() {
            dir.join(&job.id).join("artifacts").join("outputs")
        } else {
            dir.join(&job.id).join("named-outputs").join(&name)
        };
        let mut stream = client
            .download_outputs(v1::DownloadOutputsRequest {
                job_id: job.id.clone(),
                name: name.clone(),
            })
            .await?
            .into_inner();
        let mut file: Option<(PathBuf, std::fs::File)> = None;
        let mut files = 0u32;
        let mut bytes = 0u64;
        while let Some(chunk) = stream.message().await? {
            if !chunk.path.is_empty() {
                // The path comes from the datastore: never outside the target.
                strato_core::job::check_code_path(&chunk.path)
                    .map_err(|e| Failure::refused(format!("output {name}: a blob's {e}")))?;
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
                    // O_NOFOLLOW: a link planted in DIR is not written through.
                    .custom_flags(0o400_000)
                    .open(&path)
                    .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
                file = Some((path, f));
                files += 1;
            }
            let Some((path, f)) = file.as_mut() else {
                return Err(Failure::refused(format!(
                    "output {name}: the control plane sent data before a file's name"
                )));
            };
            f.write_all(&chunk.data)
                .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
            bytes += chunk.data.len() as u64;
        }
        if files == 0 {
            eprintln!("{name}: nothing stored");
        } else {
            eprintln!(
                "{name}: {files} files ({bytes} bytes) written to {}",
                target.display()
            );
        }
    }
    Ok(())
}
