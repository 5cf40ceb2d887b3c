//! Job inputs and outputs, code snapshots and artifacts in Azure Blob
//! Storage, through object_store, with a bearer token of the cluster's
//! default identity (never an account key). The agent downloads and uploads
//! a job's data with it; the control plane writes code snapshots and reads
//! outputs for `job download` with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use futures_util::StreamExt as _;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
pub use object_store::buffered::BufWriter;
use object_store::path::Path as BlobPath;
use object_store::{Certificate, ClientOptions, ObjectStore, ObjectStoreExt as _};
use tokio::io::AsyncWriteExt as _;

/// The storage audience tokens are asked for.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";

/// One input or output: a path (prefix) in a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub name: String,
    pub account_url: String,
    pub container: String,
    pub path: String,
}

/// Why a transfer failed; the text is what a job's failure reason shows.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The extra CA certificates (`--storage-ca-file`) are not usable.
    #[error("--storage-ca-file: {0}")]
    Ca(#[source] object_store::Error),
    /// The storage client could not be built for the transfer's account.
    #[error("{0}")]
    Client(#[source] object_store::Error),
    #[error("listing {path}: {source}")]
    List {
        path: String,
        source: object_store::Error,
    },
    #[error("reading {location}: {source}")]
    Read {
        location: BlobPath,
        source: object_store::Error,
    },
    /// A local directory or file could not be read or created.
    #[error("reading {}: {source}", path.display())]
    ReadLocal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    WriteLocal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    CreateDir(#[source] std::io::Error),
    #[error("{0}")]
    Relative(#[from] std::path::StripPrefixError),
    #[error("writing {location}: {source}")]
    Write {
        location: String,
        source: std::io::Error,
    },
    #[error("{path} holds more than {max} blobs: download part of it")]
    TooMany { path: String, max: usize },
    #[error("nothing found at {account_url}/{container}/{path}")]
    NothingFound {
        account_url: String,
        container: String,
        path: String,
    },
}

/// How a transfer's failure is best answered: the blob or container is not
/// there, the identity may not reach it, or something else (often passing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    NotFound,
    Denied,
    Other,
}

impl StorageError {
    pub fn kind(&self) -> FailureKind {
        let source = match self {
            StorageError::NothingFound { .. } => return FailureKind::NotFound,
            StorageError::List { source, .. } | StorageError::Read { source, .. } => source,
            StorageError::Client(source) => source,
            _ => return FailureKind::Other,
        };
        match source {
            object_store::Error::NotFound { .. } => FailureKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => FailureKind::Denied,
            _ => FailureKind::Other,
        }
    }
}

/// A blob's path as written, never percent-encoded: `données.py` and
/// `data[1].csv` keep their names. Only a name object_store cannot hold
/// (a control character) is encoded.
fn blob_path(location: &str) -> BlobPath {
    BlobPath::parse(location).unwrap_or_else(|_| BlobPath::from(location))
}

/// A writer that holds at most 4 MiB and two blocks in flight, whatever
/// the blob's size.
fn writer(store: Arc<dyn ObjectStore>, location: &str) -> BufWriter {
    BufWriter::with_capacity(store, blob_path(location), 4 * 1024 * 1024).with_max_concurrency(2)
}

fn client(t: &Transfer, token: &str, ca: Option<&[u8]>) -> Result<MicrosoftAzure, StorageError> {
    let mut options = ClientOptions::new();
    if let Some(pem) = ca {
        let cert = Certificate::from_pem(pem).map_err(StorageError::Ca)?;
        options = options.with_root_certificate(cert);
    }
    MicrosoftAzureBuilder::new()
        // Only used to sign with keys, which Strato never does.
        .with_account("strato")
        .with_endpoint(t.account_url.clone())
        .with_container_name(&t.container)
        .with_bearer_token_authorization(token)
        .with_client_options(options)
        .build()
        .map_err(StorageError::Client)
}

/// A listed blob's path below `prefix`, part by part (the blob's own name
/// when it is the prefix itself); `None` when it is not below it.
fn below(location: &BlobPath, prefix: &BlobPath) -> Option<Vec<String>> {
    let relative: Vec<String> = location
        .prefix_match(prefix)?
        .map(|p| p.as_ref().to_owned())
        .collect();
    Some(if relative.is_empty() {
        vec![location.filename().unwrap_or("blob").to_owned()]
    } else {
        relative
    })
}

/// Streams one blob to `file`, chunk by chunk: inputs may be larger than
/// memory.
async fn fetch(
    store: &MicrosoftAzure,
    location: &BlobPath,
    file: &Path,
) -> Result<(), StorageError> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(StorageError::CreateDir)?;
    }
    let reading = |source| StorageError::Read {
        location: location.clone(),
        source,
    };
    let writing = |source| StorageError::WriteLocal {
        path: file.to_owned(),
        source,
    };
    let mut chunks = store.get(location).await.map_err(reading)?.into_stream();
    let mut out = tokio::fs::File::create(file).await.map_err(writing)?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(reading)?;
        out.write_all(&chunk).await.map_err(writing)?;
    }
    out.flush().await.map_err(writing)
}

/// Downloads every blob under the transfer's path into `dest`, keeping the
/// layout below the path; returns how many files.
pub async fn download(
    t: &Transfer,
    token: &str,
    ca: Option<&[u8]>,
    dest: &Path,
) -> Result<usize, StorageError> {
    let store = client(t, token, ca)?;
    let prefix = blob_path(&t.path);
    std::fs::create_dir_all(dest).map_err(StorageError::CreateDir)?;
    let mut listing = store.list(Some(&prefix));
    let mut count = 0;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| StorageError::List {
            path: t.path.clone(),
            source,
        })?;
        let Some(relative) = below(&meta.location, &prefix) else {
            continue;
        };
        let file: PathBuf = relative
            .iter()
            .fold(dest.to_owned(), |p, part| p.join(part));
        fetch(&store, &meta.location, &file).await?;
        count += 1;
    }
    // A path naming one blob (a uri_file): listing a prefix finds what is
    // under it, not the blob itself.
    if count == 0
        && let Ok(meta) = store.head(&prefix).await
    {
        let name = meta.location.filename().unwrap_or("blob").to_owned();
        fetch(&store, &meta.location, &dest.join(name)).await?;
        count = 1;
    }
    if count == 0 {
        return Err(StorageError::NothingFound {
            account_url: t.account_url.clone(),
            container: t.container.clone(),
            path: t.path.clone(),
        });
    }
    Ok(count)
}

/// A code folder's digest: SHA-256 over its files' paths (below the folder,
/// `/`-separated) and their contents' SHA-256, in path order. The control
/// plane computes it as the folder is uploaded; a node recomputes it over
/// what it downloaded and refuses a folder changed since.
pub fn snapshot_digest(files: &[(String, [u8; 32])]) -> String {
    let mut files: Vec<&(String, [u8; 32])> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut digest = Sha256::new();
    for (path, content) in files {
        digest.update(path.as_bytes());
        digest.update([0]);
        digest.update(content);
    }
    hex(&digest.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// [`snapshot_digest`] of the regular files under `dir` (links are left
/// out, as an upload leaves them out).
pub fn folder_digest(dir: &Path) -> std::io::Result<String> {
    let mut paths = Vec::new();
    collect(dir, &mut paths)?;
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let relative = path
            .strip_prefix(dir)
            .map_err(std::io::Error::other)?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let mut file = open_no_follow(&path)?;
        let mut digest = Sha256::new();
        std::io::copy(&mut file, &mut digest)?;
        files.push((relative, digest.finalize().into()));
    }
    Ok(snapshot_digest(&files))
}

/// A folder (the transfer's path) in a container, to write blobs under and
/// read them back, one at a time and streamed.
pub struct Folder {
    store: Arc<dyn ObjectStore>,
    transfer: Transfer,
}

/// One blob under a folder: its path below the folder (its own name when
/// the folder's path names the blob itself) and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub relative: String,
    pub size: u64,
    location: BlobPath,
}

impl Folder {
    pub fn open(t: &Transfer, token: &str, ca: Option<&[u8]>) -> Result<Folder, StorageError> {
        Ok(Folder {
            store: Arc::new(client(t, token, ca)?),
            transfer: t.clone(),
        })
    }

    /// A writer of the blob at `relative` (`/`-separated, already checked):
    /// a put for a small blob, a multipart upload for a large one. Call
    /// `shutdown` to finish it, `abort` to drop what was written.
    pub fn create(&self, relative: &str) -> BufWriter {
        let location = format!("{}/{relative}", self.transfer.path.trim_end_matches('/'));
        writer(self.store.clone(), &location)
    }

    /// Every blob under the folder, with its path below it; more than
    /// `max` is refused.
    pub async fn list(&self, max: usize) -> Result<Vec<Entry>, StorageError> {
        let prefix = blob_path(&self.transfer.path);
        let mut listing = self.store.list(Some(&prefix));
        let mut entries = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|source| StorageError::List {
                path: self.transfer.path.clone(),
                source,
            })?;
            let Some(relative) = below(&meta.location, &prefix) else {
                continue;
            };
            let relative = relative.join("/");
            if entries.len() == max {
                return Err(StorageError::TooMany {
                    path: self.transfer.path.clone(),
                    max,
                });
            }
            entries.push(Entry {
                relative,
                size: meta.size,
                location: meta.location,
            });
        }
        Ok(entries)
    }

    /// The bytes of a listed blob, as a stream of chunks.
    pub async fn read(
        &self,
        entry: &Entry,
    ) -> Result<
        impl futures_util::Stream<Item = Result<bytes::Bytes, StorageError>> + use<>,
        StorageError,
    > {
        let location = entry.location.clone();
        let reading = move |source| StorageError::Read {
            location: location.clone(),
            source,
        };
        let stream = self
            .store
            .get(&entry.location)
            .await
            .map_err(reading.clone())?
            .into_stream();
        Ok(stream.map(move |chunk| chunk.map_err(reading.clone())))
    }
}

/// Uploads every file under `src` to the transfer's path; returns how many.
pub async fn upload(
    t: &Transfer,
    token: &str,
    ca: Option<&[u8]>,
    src: &Path,
) -> Result<usize, StorageError> {
    let store: Arc<dyn ObjectStore> = Arc::new(client(t, token, ca)?);
    let mut files = Vec::new();
    collect(src, &mut files).map_err(|source| StorageError::ReadLocal {
        path: src.to_owned(),
        source,
    })?;
    for file in &files {
        let relative = file.strip_prefix(src)?;
        let mut location = t.path.trim_end_matches('/').to_owned();
        for part in relative.components() {
            location.push('/');
            location.push_str(&part.as_os_str().to_string_lossy());
        }
        // Read through a handle opened without following a final link, and
        // streamed: one put for a small file, a multipart upload (blocks)
        // for a large one, never the whole file in memory.
        let source = open_no_follow(file).map_err(|source| StorageError::ReadLocal {
            path: file.clone(),
            source,
        })?;
        let mut source = tokio::fs::File::from_std(source);
        let mut sink = writer(store.clone(), &location);
        if let Err(e) = tokio::io::copy(&mut source, &mut sink).await {
            let _ = sink.abort().await;
            return Err(StorageError::Write {
                location,
                source: e,
            });
        }
        if let Err(source) = sink.shutdown().await {
            return Err(StorageError::Write { location, source });
        }
    }
    Ok(files.len())
}

/// Regular files under `dir`. Symbolic links are skipped, never followed:
/// the job wrote this directory, and a link could point at any file of the
/// host (the upload runs after the container exited, so nothing changes the
/// tree meanwhile).
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            tracing::warn!(path = %entry.path().display(), "output holds a symbolic link: not uploaded");
        } else if kind.is_dir() {
            collect(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_never_follow_symbolic_links() {
        let dir = tempfile_dir();
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("sub")).expect("dirs");
        std::fs::write(out.join("a.txt"), "a").expect("file");
        std::fs::write(out.join("sub/b.txt"), "b").expect("file");
        let secret = dir.join("host-secret");
        std::fs::write(&secret, "do not upload").expect("secret");
        std::os::unix::fs::symlink(&secret, out.join("link")).expect("link");
        std::os::unix::fs::symlink("/", out.join("root")).expect("dir link");
        let mut files = Vec::new();
        collect(&out, &mut files).expect("collect");
        files.sort();
        assert_eq!(files, vec![out.join("a.txt"), out.join("sub/b.txt")]);
        assert!(
            open_no_follow(&out.join("link")).is_err(),
            "a link is never read through"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("strato-storage-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
