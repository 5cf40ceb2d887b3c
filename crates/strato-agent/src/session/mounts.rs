//! An attempt's mounted data (`ro_mount`, `rw_mount`): each is an rclone
//! FUSE mount of a datastore path (rclone's `azureblob` backend), held by a
//! helper container of the mount image and bound into the job's container.
//!
//! Why a helper container and not a process of the agent: the mount must
//! be made in the engine's mount namespace, which the agent's systemd
//! sandbox does not share; the helper's mounts directory propagates back
//! to the host (`rshared`), so only the helper holds `CAP_SYS_ADMIN` and
//! `/dev/fuse`, never the agent or the job. Helpers outlive an agent
//! restart with the job they serve, and are stopped (SIGTERM, so rclone
//! unmounts) once it ends; a writable mount first uploads what the job
//! wrote. A helper whose job container is gone is torn down when the agent
//! opens its next session.
//!
//! rclone reads its credentials from the identity endpoint with the
//! attempt's secret (`IDENTITY_ENDPOINT` / `IDENTITY_HEADER`, the App
//! Service protocol, which the Azure SDK for Go that rclone uses speaks),
//! so the mount reads and writes with the cluster's default identity and
//! refreshes its token as a long job runs; the secret is refused once the
//! attempt ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use strato_core::naming::{
    LABEL_CONTROL_PLANE, LABEL_MOUNT_DIR, LABEL_MOUNT_NODE, LABEL_MOUNT_OF, LABEL_MOUNT_WRITABLE,
    LABEL_NODE,
};
use strato_proto::v1;
use strato_runtime::{ContainerRuntime, ContainerSpec, ExecEvent, JobContainer, RuntimeError};
use tokio::sync::mpsc;

use super::attempt::{ImagePull, Staging, get_image};
use super::staging::attempt_dir;
use crate::storage::Transfer;

/// The image mount helpers run: rclone's own (it has `rclone` on the path,
/// `fusermount3`, `umount` and CA certificates).
pub const DEFAULT_MOUNT_IMAGE: &str = "rclone/rclone:1.75.2";
/// The default bound of each mount's local cache on the node's disk.
pub const DEFAULT_MOUNT_CACHE_BYTES: u64 = 10_000_000_000;

/// Where a helper sees its mount directory (which propagates to the host).
const IN_HELPER: &str = "/mnt/strato";
/// Where a helper sees the storage CA (`--storage-ca-file`).
const CA_IN_HELPER: &str = "/etc/strato/storage-ca.pem";
/// rclone's remote control, inside the helper only (its own /tmp).
const RC_SOCKET: &str = "/tmp/strato-rclone-rc.sock";
/// How long rclone may take to mount.
const MOUNT_READY: Duration = Duration::from_secs(60);
/// How long a writable mount may take to upload what the job wrote, once
/// the job ended.
const FLUSH_LIMIT: Duration = Duration::from_secs(30 * 60);
/// How long a helper has to unmount after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The most characters of rclone's words in a failure reason.
const REASON_CHARS: usize = 600;

/// How this node mounts job data.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// The helper image (`--mount-image`).
    pub image: String,
    /// Each mount's local cache bound, in bytes (`--mount-cache-bytes`).
    pub cache_bytes: u64,
}

impl Default for MountSettings {
    fn default() -> Self {
        MountSettings {
            image: DEFAULT_MOUNT_IMAGE.to_owned(),
            cache_bytes: DEFAULT_MOUNT_CACHE_BYTES,
        }
    }
}

/// One input or output the job gets as a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMount {
    pub transfer: Transfer,
    /// An output (`AZURE_ML_OUTPUT_<name>`), else an input.
    pub output: bool,
    /// `rw_mount`; else `ro_mount`.
    pub writable: bool,
}

impl DataMount {
    /// The job data's mode, if it is a mount.
    pub fn of(d: &v1::JobData, output: bool, transfer: Transfer) -> Option<DataMount> {
        use strato_core::job::{DataMode, DataSide};
        let side = if output {
            DataSide::Output
        } else {
            DataSide::Input
        };
        // The control plane checked the mode; anything else is copied.
        let writable = match DataMode::parse(side, "mode", &d.mode).ok()? {
            DataMode::Copy => return None,
            DataMode::RoMount => false,
            DataMode::RwMount => true,
        };
        Some(DataMount {
            transfer,
            output,
            writable,
        })
    }

    fn key(&self) -> String {
        let side = if self.output { "output" } else { "input" };
        format!("{side}-{}", self.transfer.name)
    }

    fn mode(&self) -> &'static str {
        if self.writable {
            "rw_mount"
        } else {
            "ro_mount"
        }
    }
}

/// Why an attempt's data could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The node cannot run a helper (no `/dev/fuse`, its work directory not
    /// on a shared mount, the image not pullable): the node's fault.
    #[error("cannot mount {name}: {source}")]
    Helper { name: String, source: RuntimeError },
    #[error("cannot prepare the mount of {name}: {source}")]
    Prepare {
        name: String,
        source: std::io::Error,
    },
    /// rclone did not mount (the datastore refused the identity, the
    /// container does not exist, ...): what it said.
    #[error("{mode} {name}: {why}")]
    NotMounted {
        mode: &'static str,
        name: String,
        why: String,
    },
}

impl MountError {
    /// Whether the node, not the job's data, is at fault.
    pub fn is_node_fault(&self) -> bool {
        !matches!(self, MountError::NotMounted { .. })
    }
}

/// Mounts the attempt's mounted data and binds each into the job's
/// container under the path its `AZURE_ML_INPUT_<name>` /
/// `AZURE_ML_OUTPUT_<name>` names. Helpers already there (an assignment
/// sent again) are used as they are.
#[allow(clippy::too_many_arguments)]
pub(super) async fn mount_data<R: ContainerRuntime>(
    runtime: &R,
    staging: &Staging,
    mounts: &[DataMount],
    spec: &mut ContainerSpec,
    job_id: &str,
    attempt: u32,
    tx: &mpsc::Sender<v1::AgentMessage>,
) -> Result<(), MountError> {
    let Some(first) = mounts.first() else {
        return Ok(());
    };
    let settings = &staging.mounts;
    // Held until the helpers exist, so another attempt's trim of the image
    // cache cannot remove it meanwhile.
    let _hold = staging.image_cache.hold(&settings.image);
    let image_pull = ImagePull {
        always: false,
        login: None,
        identity: None,
    };
    get_image(
        runtime,
        staging,
        &settings.image,
        image_pull,
        job_id,
        attempt,
        tx,
    )
    .await
    .map_err(|source| MountError::Helper {
        name: first.transfer.name.clone(),
        source,
    })?;
    let secret = spec
        .env
        .iter()
        .find(|(k, _)| k == "MSI_SECRET")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let dir = attempt_dir(&staging.work_dir, job_id, attempt).join("mounts");
    let prepare = |name: &str| {
        let name = name.to_owned();
        move |source| MountError::Prepare { name, source }
    };
    let ca = match &staging.storage_ca {
        Some(pem) => {
            let path = dir.join("storage-ca.pem");
            std::fs::create_dir_all(&dir).map_err(prepare(&first.transfer.name))?;
            std::fs::write(&path, pem).map_err(prepare(&first.transfer.name))?;
            Some(path)
        }
        None => None,
    };
    for m in mounts {
        let host = dir.join(m.key());
        std::fs::create_dir_all(host.join("data")).map_err(prepare(&m.transfer.name))?;
        std::fs::create_dir_all(host.join("cache")).map_err(prepare(&m.transfer.name))?;
        let helper = helper_spec(
            spec,
            m,
            &host,
            ca.as_deref(),
            settings,
            &staging.identity_endpoint,
            &secret,
        );
        // One left by an earlier try of this assignment is used if it still
        // serves its mount, else made anew.
        let earlier = runtime
            .list(LABEL_MOUNT_OF, &spec.name)
            .await
            .map_err(|source| MountError::Helper {
                name: m.transfer.name.clone(),
                source,
            })?
            .into_iter()
            .find(|h| h.name == helper.name);
        if let Some(h) = earlier
            && !(h.running && is_live_mount(&host.join("data")))
        {
            tear_down(runtime, &settings.image, &h).await;
        }
        let id = runtime
            .create_and_start(&helper)
            .await
            .map_err(|source| MountError::Helper {
                name: m.transfer.name.clone(),
                source,
            })?;
        wait_mounted(runtime, &spec.name, &id, &host.join("data"))
            .await
            .map_err(|why| MountError::NotMounted {
                mode: m.mode(),
                name: m.transfer.name.clone(),
                why,
            })?;
        tracing::info!(job = %job_id, attempt, name = %m.transfer.name, mode = m.mode(), "data mounted");
        let (inside, variable) = if m.output {
            (
                format!(
                    "{}/{}",
                    super::staging::OUTPUTS_IN_CONTAINER,
                    m.transfer.name
                ),
                format!("AZURE_ML_OUTPUT_{}", m.transfer.name),
            )
        } else {
            (
                format!(
                    "{}/{}",
                    super::staging::INPUTS_IN_CONTAINER,
                    m.transfer.name
                ),
                format!("AZURE_ML_INPUT_{}", m.transfer.name),
            )
        };
        spec.mounts.push((
            host.join("data").display().to_string(),
            inside.clone(),
            !m.writable,
        ));
        spec.env.push((variable, inside));
    }
    Ok(())
}

/// The helper that holds one mount of the job container `job`.
fn helper_spec(
    job: &ContainerSpec,
    m: &DataMount,
    host: &Path,
    ca: Option<&Path>,
    settings: &MountSettings,
    identity_endpoint: &str,
    secret: &str,
) -> ContainerSpec {
    let t = &m.transfer;
    let remote = format!(
        ":azureblob,env_auth=true,account={},endpoint={}:{}/{}",
        quote(&account_of(&t.account_url)),
        quote(&t.account_url),
        t.container,
        t.path
    );
    let mut command: Vec<String> = vec![
        "mount".into(),
        remote,
        format!("{IN_HELPER}/data"),
        // Jobs may run as any user.
        "--allow-other".into(),
        // Reads fetch the ranges asked for, kept on the node's disk
        // within the bound; writes go to the cache and up as files close.
        "--vfs-cache-mode".into(),
        "full".into(),
        "--vfs-cache-max-size".into(),
        format!("{}B", settings.cache_bytes),
        "--cache-dir".into(),
        format!("{IN_HELPER}/cache"),
        "--rc".into(),
        "--rc-no-auth".into(),
        "--rc-addr".into(),
        format!("unix://{RC_SOCKET}"),
        "--log-level".into(),
        "NOTICE".into(),
    ];
    if m.writable {
        command.extend(["--vfs-write-back".into(), "1s".into()]);
    } else {
        command.push("--read-only".into());
    }
    let mut mounts = vec![(host.display().to_string(), IN_HELPER.to_owned(), false)];
    if let Some(ca) = ca {
        command.extend(["--ca-cert".into(), CA_IN_HELPER.into()]);
        mounts.push((ca.display().to_string(), CA_IN_HELPER.to_owned(), true));
    }
    let mut labels = std::collections::BTreeMap::from([
        (LABEL_MOUNT_OF.to_owned(), job.name.clone()),
        (LABEL_MOUNT_DIR.to_owned(), host.display().to_string()),
        (LABEL_MOUNT_WRITABLE.to_owned(), m.writable.to_string()),
    ]);
    for (from, to) in [
        (LABEL_NODE, LABEL_MOUNT_NODE),
        (LABEL_CONTROL_PLANE, LABEL_CONTROL_PLANE),
    ] {
        if let Some(v) = job.labels.get(from) {
            labels.insert(to.to_owned(), v.clone());
        }
    }
    ContainerSpec {
        name: format!("{}-{}", job.name, m.key()),
        image: settings.image.clone(),
        entrypoint: Some(vec!["rclone".into()]),
        command,
        env: vec![
            (
                "IDENTITY_ENDPOINT".into(),
                format!("{identity_endpoint}/msi/token"),
            ),
            ("IDENTITY_HEADER".into(), secret.to_owned()),
        ],
        labels,
        mounts,
        // The storage endpoint as the node reaches it (the agent's own
        // transfers do the same), and the identity endpoint on the bridge.
        network: Some("host".into()),
        pids_limit: Some(strato_runtime::PIDS_LIMIT),
        fuse_mounts_at: Some(IN_HELPER.to_owned()),
        ..ContainerSpec::default()
    }
}

/// A value in rclone's connection string, quoted.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The storage account of an account URL: the last path segment of a
/// path-style URL (`https://127.0.0.1:10000/devstoreaccount1`), else the
/// first label of the host (`https://acct.blob.core.windows.net`).
fn account_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    match path.trim_matches('/').rsplit('/').next() {
        Some(last) if !last.is_empty() => last.to_owned(),
        _ => host.split('.').next().unwrap_or(host).to_owned(),
    }
}

/// Whether `path` is a mount point that answers (a FUSE mount whose
/// process died does not).
fn is_live_mount(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev(),
        _ => false,
    }
}

/// Whether `path` is a mount point (or a mount whose server is gone).
pub(super) fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev(),
        // ENOTCONN: a FUSE mount whose process died.
        (Err(e), _) => e.raw_os_error() == Some(107),
        _ => false,
    }
}

/// Waits until the helper's mount is there; else what rclone said.
async fn wait_mounted<R: ContainerRuntime>(
    runtime: &R,
    job: &str,
    helper: &str,
    data: &Path,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + MOUNT_READY;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if is_live_mount(data) {
            return Ok(());
        }
        let running = match runtime.list(LABEL_MOUNT_OF, job).await {
            Ok(helpers) => helpers.iter().any(|h| h.id == helper && h.running),
            Err(e) => return Err(format!("cannot see the mount helper: {e}")),
        };
        if !running {
            return Err(last_words(runtime, helper).await);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = runtime.stop(helper, STOP_GRACE).await;
            return Err(format!(
                "not mounted within {}s: {}",
                MOUNT_READY.as_secs(),
                last_words(runtime, helper).await
            ));
        }
    }
}

/// The end of what a helper wrote: why rclone gave up.
async fn last_words<R: ContainerRuntime>(runtime: &R, helper: &str) -> String {
    let mut lines: std::collections::VecDeque<String> = Default::default();
    let mut logs = runtime.logs(helper);
    let read = async {
        while let Some(Ok(l)) = logs.next().await {
            if lines.len() == 4 {
                lines.pop_front();
            }
            lines.push_back(l.line);
        }
    };
    // A helper that still runs (a mount that is slow) keeps its log open.
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    let words: Vec<String> = lines
        .into_iter()
        .filter(|l| !l.contains("Config file"))
        .collect();
    let said = words.join(" / ");
    if said.is_empty() {
        "rclone said nothing".to_owned()
    } else {
        said.chars().take(REASON_CHARS).collect()
    }
}

/// Unmounts the data of the job container `job`. With `flush`, each
/// writable mount first uploads what the job wrote; what could not be
/// uploaded is the error.
pub(super) async fn unmount_data<R: ContainerRuntime>(
    runtime: &R,
    image: &str,
    job: &str,
    flush: bool,
) -> Result<(), String> {
    let helpers = match runtime.list(LABEL_MOUNT_OF, job).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(container = %job, error = %e, "cannot list the mount helpers");
            return Err(format!("cannot list the mounts: {e}"));
        }
    };
    // Every writable mount uploads at once, within one deadline.
    let deadline = tokio::time::Instant::now() + FLUSH_LIMIT;
    let flushes = helpers
        .iter()
        .filter(|h| {
            flush
                && h.labels
                    .get(LABEL_MOUNT_WRITABLE)
                    .is_some_and(|w| w == "true")
        })
        .map(|h| async move {
            if !h.running {
                // rclone does not upload on exit: what it had not uploaded
                // stays in its cache, not in the datastore.
                return Err(format!(
                    "{}: its mount helper had stopped, so files written last may be missing",
                    h.name
                ));
            }
            wait_uploaded(runtime, &h.id, deadline)
                .await
                .map_err(|why| format!("{}: {why}", h.name))
        });
    let unflushed: Vec<String> = futures_util::future::join_all(flushes)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    for h in &helpers {
        tear_down(runtime, image, h).await;
    }
    if unflushed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "what the job wrote to a rw_mount was not all uploaded: {}",
            unflushed.join("; ")
        ))
    }
}

/// Stops a helper (rclone unmounts on SIGTERM) and removes it; a mount
/// left behind (a helper that was killed) is unmounted by a short-lived
/// container of the same image.
pub(super) async fn tear_down<R: ContainerRuntime>(
    runtime: &R,
    image: &str,
    helper: &JobContainer,
) {
    if let Err(e) = runtime.stop(&helper.id, STOP_GRACE).await {
        tracing::warn!(container = %helper.name, error = %e, "cannot stop the mount helper");
    }
    if let Err(e) = runtime.remove(&helper.id).await {
        tracing::warn!(container = %helper.name, error = %e, "cannot remove the mount helper");
    }
    let Some(dir) = helper.labels.get(LABEL_MOUNT_DIR).map(PathBuf::from) else {
        return;
    };
    if !is_mounted(&dir.join("data")) {
        return;
    }
    tracing::warn!(container = %helper.name, dir = %dir.display(), "the mount outlived its helper: unmounting it");
    let name = format!("{}-unmount", helper.name);
    let mut labels = helper.labels.clone();
    labels.remove(LABEL_MOUNT_OF);
    let unmount = ContainerSpec {
        name: name.clone(),
        image: image.to_owned(),
        entrypoint: Some(vec!["umount".into()]),
        command: vec!["-l".into(), format!("{IN_HELPER}/data")],
        labels,
        mounts: vec![(dir.display().to_string(), IN_HELPER.to_owned(), false)],
        network: Some("none".into()),
        pids_limit: Some(strato_runtime::PIDS_LIMIT),
        fuse_mounts_at: Some(IN_HELPER.to_owned()),
        ..ContainerSpec::default()
    };
    // One left by an earlier teardown would be adopted, not run again.
    let _ = runtime.remove(&name).await;
    match runtime.create_and_start(&unmount).await {
        Ok(id) => {
            let _ = runtime.wait(&id).await;
            let _ = runtime.remove(&id).await;
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount what a mount helper left")
        }
    }
}

/// Waits until a writable mount has uploaded every file the job closed:
/// nothing queued or uploading in `SETTLED` readings a second apart (the
/// kernel tells rclone that the job's files are closed only after the job
/// exited, and rclone queues each for upload a second after that).
async fn wait_uploaded<R: ContainerRuntime>(
    runtime: &R,
    helper: &str,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    const SETTLED: u32 = 3;
    let mut quiet = 0;
    loop {
        let last = match pending_uploads(runtime, helper).await {
            Ok(Pending { files: 0, .. }) => {
                quiet += 1;
                if quiet >= SETTLED {
                    return Ok(());
                }
                "settling".to_owned()
            }
            Ok(p) => {
                quiet = 0;
                if p.out_of_space {
                    return Err(format!(
                        "the node's disk is full with {} files still to upload",
                        p.files
                    ));
                }
                format!(
                    "{} files still to upload ({} failed so far)",
                    p.files, p.errored
                )
            }
            Err(e) => {
                quiet = 0;
                e
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("after {}s, {last}", FLUSH_LIMIT.as_secs()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a writable mount has yet to upload.
struct Pending {
    files: u64,
    errored: u64,
    out_of_space: bool,
}

/// Files a writable mount has yet to upload, from rclone's remote control
/// (one exec, at most 30 seconds).
async fn pending_uploads<R: ContainerRuntime>(
    runtime: &R,
    helper: &str,
) -> Result<Pending, String> {
    let mut out = Vec::new();
    let mut code = None;
    let mut exec = runtime.exec(
        helper,
        &format!("rclone rc --unix-socket {RC_SOCKET} vfs/stats"),
    );
    let read = async {
        while let Some(event) = exec.next().await {
            match event.map_err(|e| e.to_string())? {
                ExecEvent::Output(strato_runtime::OutputStream::Stdout, bytes) => {
                    if out.len() < 64 * 1024 {
                        out.extend_from_slice(&bytes);
                    }
                }
                ExecEvent::Output(..) => {}
                ExecEvent::Exit(c) => code = Some(c),
            }
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| "rclone's remote control did not answer within 30s".to_owned())??;
    if code != Some(0) {
        return Err(format!("rclone's remote control answered {code:?}"));
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| format!("rclone's vfs/stats: {e}"))?;
    let cache = &stats["diskCache"];
    Ok(Pending {
        files: cache["uploadsQueued"].as_u64().unwrap_or(0)
            + cache["uploadsInProgress"].as_u64().unwrap_or(0),
        errored: cache["erroredFiles"].as_u64().unwrap_or(0),
        out_of_space: cache["outOfSpace"].as_bool().unwrap_or(false),
    })
}

/// Tears down the helpers of this node whose job container is gone (the
/// agent stopped while it prepared or ended an attempt).
pub(super) async fn sweep<R: ContainerRuntime>(
    runtime: &R,
    image: &str,
    node_id: &str,
    jobs: &std::collections::HashSet<String>,
) {
    let Ok(helpers) = runtime.list(LABEL_MOUNT_NODE, node_id).await else {
        return;
    };
    for h in helpers {
        let of = h.labels.get(LABEL_MOUNT_OF);
        if of.is_some_and(|job| !jobs.contains(job)) {
            tracing::info!(container = %h.name, "a mount helper without its job: torn down");
            tear_down(runtime, image, &h).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(writable: bool) -> DataMount {
        DataMount {
            transfer: Transfer {
                name: "raw".into(),
                account_url: "https://127.0.0.1:10000/devstoreaccount1".into(),
                container: "data".into(),
                path: "in/x".into(),
            },
            output: writable,
            writable,
        }
    }

    fn job() -> ContainerSpec {
        let mut spec = super::super::attempt::container_spec(
            "node-1",
            "c",
            "job-1",
            2,
            &v1::JobSpec::default(),
        );
        spec.labels.insert(LABEL_CONTROL_PLANE.into(), "cp".into());
        spec
    }

    /// After an agent crash, a helper whose job container is gone is torn
    /// down when the next session opens; one whose job is there is kept,
    /// as are other nodes' helpers.
    #[tokio::test]
    async fn the_sweep_stops_only_helpers_whose_job_is_gone() {
        let runtime = strato_runtime::fake::FakeRuntime::new();
        let settings = MountSettings::default();
        let mut helpers = Vec::new();
        for (job_id, node) in [
            ("job-1", "node-1"),
            ("job-2", "node-1"),
            ("job-3", "node-2"),
        ] {
            let mut job = super::super::attempt::container_spec(
                node,
                "c",
                job_id,
                1,
                &v1::JobSpec::default(),
            );
            job.image = "busybox".into();
            let helper = helper_spec(
                &job,
                &mount(false),
                Path::new("/nonexistent/m"),
                None,
                &settings,
                "http://e",
                "s",
            );
            runtime.create_and_start(&helper).await.expect("helper");
            if job_id == "job-2" {
                runtime.create_and_start(&job).await.expect("job");
            }
            helpers.push(helper.name);
        }
        let jobs: std::collections::HashSet<String> = runtime
            .list(LABEL_NODE, "node-1")
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.name)
            .collect();
        sweep(&runtime, &settings.image, "node-1", &jobs).await;
        let left: Vec<String> = [("node-1"), ("node-2")]
            .into_iter()
            .map(|n| runtime.list(LABEL_MOUNT_NODE, n))
            .collect::<futures_util::future::JoinAll<_>>()
            .await
            .into_iter()
            .flat_map(|l| l.expect("list"))
            .map(|c| c.name)
            .collect();
        assert_eq!(left, [helpers[1].clone(), helpers[2].clone()]);
    }

    #[test]
    fn accounts_come_from_path_style_and_host_style_urls() {
        assert_eq!(
            account_of("https://127.0.0.1:10000/devstoreaccount1"),
            "devstoreaccount1"
        );
        assert_eq!(account_of("https://acct.blob.core.windows.net"), "acct");
        assert_eq!(account_of("https://acct.blob.core.windows.net/"), "acct");
    }

    /// A read-only mount is read-only in rclone; a writable one uploads
    /// soon after each close; both are bounded on disk, reach storage with
    /// the attempt's secret only, and carry the labels that find them again.
    #[test]
    fn a_helper_mounts_with_the_attempts_secret_and_a_bounded_cache() {
        let settings = MountSettings {
            image: "rclone:test".into(),
            cache_bytes: 5_000_000,
        };
        let ro = helper_spec(
            &job(),
            &mount(false),
            Path::new("/w/strato-job-1-2/mounts/input-raw"),
            Some(Path::new("/w/ca.pem")),
            &settings,
            "http://172.17.0.1:4000",
            "s3cret",
        );
        assert_eq!(ro.name, "strato-job-1-2-node-1-input-raw");
        assert_eq!(ro.fuse_mounts_at.as_deref(), Some(IN_HELPER));
        assert_eq!(ro.network.as_deref(), Some("host"));
        assert_eq!(
            ro.command[1],
            ":azureblob,env_auth=true,account='devstoreaccount1',endpoint='https://127.0.0.1:10000/devstoreaccount1':data/in/x"
        );
        let args = ro.command.join(" ");
        assert!(args.contains("--read-only"), "{args}");
        assert!(args.contains("--vfs-cache-max-size 5000000B"), "{args}");
        assert!(
            args.contains("--ca-cert /etc/strato/storage-ca.pem"),
            "{args}"
        );
        assert!(!args.contains("s3cret"), "the secret is not an argument");
        assert!(
            ro.env
                .contains(&("IDENTITY_HEADER".to_owned(), "s3cret".to_owned()))
        );
        assert_eq!(ro.labels[LABEL_MOUNT_NODE], "node-1");
        assert_eq!(ro.labels[LABEL_MOUNT_OF], "strato-job-1-2-node-1");
        assert_eq!(ro.labels[LABEL_CONTROL_PLANE], "cp");
        assert!(!ro.labels.contains_key(LABEL_NODE), "a helper is not a job");
        let rw = helper_spec(
            &job(),
            &mount(true),
            Path::new("/w/m"),
            None,
            &settings,
            "http://172.17.0.1:4000",
            "s",
        );
        let args = rw.command.join(" ");
        assert!(!args.contains("--read-only"), "{args}");
        assert!(args.contains("--vfs-write-back 1s"), "{args}");
        assert!(!args.contains("--ca-cert"), "{args}");
        assert_eq!(rw.labels[LABEL_MOUNT_WRITABLE], "true");
    }
}
