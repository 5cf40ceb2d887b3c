//! Job inputs and outputs in Azure Blob Storage, through object_store, with
//! a bearer token of the cluster's default identity (never an account key).

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path as BlobPath;
use object_store::{Certificate, ClientOptions, ObjectStore as _, ObjectStoreExt as _, PutPayload};

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

fn client(t: &Transfer, token: &str, ca: Option<&[u8]>) -> Result<MicrosoftAzure, String> {
    let mut options = ClientOptions::new();
    if let Some(pem) = ca {
        let cert = Certificate::from_pem(pem).map_err(|e| format!("--storage-ca-file: {e}"))?;
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
        .map_err(|e| e.to_string())
}

/// Downloads every blob under the transfer's path into `dest`, keeping the
/// layout below the path; returns how many files.
pub async fn download(
    t: &Transfer,
    token: &str,
    ca: Option<&[u8]>,
    dest: &Path,
) -> Result<usize, String> {
    let store = client(t, token, ca)?;
    let prefix = BlobPath::from(t.path.as_str());
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let mut listing = store.list(Some(&prefix));
    let mut count = 0;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| format!("listing {}: {e}", t.path))?;
        let relative: Vec<String> = match meta.location.prefix_match(&prefix) {
            Some(parts) => parts.map(|p| p.as_ref().to_owned()).collect(),
            None => continue,
        };
        // A path naming one blob downloads it under its own name.
        let relative = if relative.is_empty() {
            vec![meta.location.filename().unwrap_or("blob").to_owned()]
        } else {
            relative
        };
        let file: PathBuf = relative
            .iter()
            .fold(dest.to_owned(), |p, part| p.join(part));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let bytes = store
            .get(&meta.location)
            .await
            .map_err(|e| format!("reading {}: {e}", meta.location))?
            .bytes()
            .await
            .map_err(|e| format!("reading {}: {e}", meta.location))?;
        std::fs::write(&file, &bytes).map_err(|e| format!("writing {}: {e}", file.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "nothing found at {}/{}/{}",
            t.account_url, t.container, t.path
        ));
    }
    Ok(count)
}

/// Uploads every file under `src` to the transfer's path; returns how many.
pub async fn upload(
    t: &Transfer,
    token: &str,
    ca: Option<&[u8]>,
    src: &Path,
) -> Result<usize, String> {
    let store = client(t, token, ca)?;
    let mut files = Vec::new();
    collect(src, &mut files).map_err(|e| format!("reading {}: {e}", src.display()))?;
    for file in &files {
        let relative = file.strip_prefix(src).map_err(|e| e.to_string())?;
        let mut location = t.path.trim_end_matches('/').to_owned();
        for part in relative.components() {
            location.push('/');
            location.push_str(&part.as_os_str().to_string_lossy());
        }
        let data = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        store
            .put(&BlobPath::from(location.as_str()), PutPayload::from(data))
            .await
            .map_err(|e| format!("writing {location}: {e}"))?;
    }
    Ok(files.len())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}
