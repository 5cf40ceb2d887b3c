//! Job states and what happens when an attempt ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::VmSize;
use crate::error::FieldError;

pub const MAX_RETRIES_LIMIT: u32 = 100;
pub const MAX_DISPLAY_NAME_LEN: usize = 256;

/// A validated job: what to run, where, with what limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub cluster: String,
    pub display_name: String,
    pub image: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// CPUs the container may use; 0 means no limit.
    pub cpu: f64,
    /// Memory limit in MiB; 0 means no limit.
    pub memory_mb: u64,
    pub max_retries: u32,
    /// Re-queues allowed after evictions, apart from `max_retries`.
    #[serde(default = "default_max_preemptions")]
    pub max_preemptions: u32,
    /// Downloaded before the job starts.
    #[serde(default)]
    pub inputs: Vec<DataBinding>,
    /// Uploaded after the job ends (by rank 0 only).
    #[serde(default)]
    pub outputs: Vec<DataBinding>,
    /// Nodes started together for the job (a gang).
    #[serde(default = "one")]
    pub node_count: u32,
    /// Processes per node.
    #[serde(default = "one")]
    pub process_count_per_node: u32,
    #[serde(default)]
    pub distribution: Distribution,
    /// Who the command runs as in the container (Docker's `NAME`, `UID`,
    /// `NAME:GROUP`, `UID:GID`); empty: the image's `USER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// When the node pulls the image.
    #[serde(default)]
    pub pull: PullPolicy,
    /// Azure ML's `experiment_name`, `description` and `tags`: kept and
    /// shown, not acted on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub experiment_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Azure ML's `limits.timeout`: an attempt running longer is canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Azure ML's `code`: a folder (uploaded with `UploadCode`) downloaded
    /// into the working directory the command starts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<DataBinding>,
    /// Where the working directory's `outputs` folder is uploaded after the
    /// job (Azure ML's artifacts); set with `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<DataBinding>,
}

/// The datastore that code snapshots, artifacts and outputs without a path
/// go to: the one registered under Azure ML's name for a workspace's
/// default datastore.
pub const DEFAULT_DATASTORE: &str = "workspaceblobstore";

/// Where an output without a path goes in the default datastore, as Azure
/// ML's default (`azureml/<job>/<output>/`).
pub fn default_output_path(job_id: &str, output: &str) -> String {
    format!("azureml/{job_id}/{output}")
}

/// Where a job's artifacts (its working directory's `outputs` folder) go
/// in the default datastore, as Azure ML keeps a run's outputs.
pub fn artifacts_path(job_id: &str) -> String {
    format!("ExperimentRun/dcid.{job_id}/outputs")
}

/// Where a code snapshot goes in the default datastore: a fresh folder
/// each time, so no upload can change another's code.
pub fn code_snapshot_path(snapshot_id: &str) -> String {
    format!("LocalUpload/{snapshot_id}")
}

/// Checks a file's path in a code folder as the client sends it: relative,
/// `/`-separated, with no empty, `.` or `..` part, no backslash or control
/// character, and at most `limits::MAX_CODE_PATH_BYTES` bytes.
pub fn check_code_path(path: &str) -> Result<(), FieldError> {
    let field = "path";
    if path.is_empty() {
        return Err(FieldError::new(
            field,
            "is required on a file's first chunk",
        ));
    }
    if path.len() > crate::limits::MAX_CODE_PATH_BYTES {
        return Err(FieldError::new(
            field,
            format!(
                "{} bytes; at most {}",
                path.len(),
                crate::limits::MAX_CODE_PATH_BYTES
            ),
        ));
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        || path.chars().any(|c| c == '\\' || c.is_control())
    {
        return Err(FieldError::new(
            field,
            format!(
                "{path:?}: must be relative, '/'-separated, with no empty, '.' or '..' part, backslash or control character"
            ),
        ));
    }
    Ok(())
}

/// The longest `limits.timeout`: 90 days.
pub const MAX_TIMEOUT_SECONDS: u64 = 90 * 24 * 3600;
/// The longest experiment name (Azure's rule: letters, digits, '_', '-').
pub const MAX_EXPERIMENT_NAME_LEN: usize = 255;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 5_000;
/// The most tags, and the longest tag key or value, in bytes.
pub const MAX_JOB_TAGS: usize = 50;
pub const MAX_JOB_TAG_BYTES: usize = 256;

/// Whether an attempt running since `running_since_ms` has outlived its
/// job's `limits.timeout` at `now_ms`.
pub fn past_timeout(timeout_seconds: u64, running_since_ms: i64, now_ms: i64) -> bool {
    let limit_ms = i64::try_from(timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    now_ms.saturating_sub(running_since_ms) >= limit_ms
}

/// Why a job over its `limits.timeout` was canceled.
pub fn timeout_reason(timeout_seconds: u64) -> String {
    format!("canceled: it ran past its limits.timeout of {timeout_seconds} s")
}

/// Checks `experiment_name`, `description`, `tags` and `limits.timeout`.
fn check_metadata(spec: &JobSpec) -> Result<(), FieldError> {
    let name_ok = spec.experiment_name.len() <= MAX_EXPERIMENT_NAME_LEN
        && spec
            .experiment_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(FieldError::new(
            "experiment_name",
            format!("must be at most {MAX_EXPERIMENT_NAME_LEN} letters, digits, '_' or '-'"),
        ));
    }
    if spec.description.len() > MAX_DESCRIPTION_BYTES {
        return Err(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    if spec.tags.len() > MAX_JOB_TAGS {
        return Err(FieldError::new(
            "tags",
            format!("has {} tags; at most {MAX_JOB_TAGS}", spec.tags.len()),
        ));
    }
    for (k, v) in &spec.tags {
        if k.is_empty() || k.len() > MAX_JOB_TAG_BYTES || v.len() > MAX_JOB_TAG_BYTES {
            return Err(FieldError::new(
                format!("tags[{:?}]", k.chars().take(64).collect::<String>()),
                format!(
                    "a key of 1 to {MAX_JOB_TAG_BYTES} bytes and a value of at most {MAX_JOB_TAG_BYTES}"
                ),
            ));
        }
    }
    if let Some(t) = spec.timeout_seconds
        && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
    {
        return Err(FieldError::new(
            "limits.timeout",
            format!("must be 1 to {MAX_TIMEOUT_SECONDS} seconds"),
        ));
    }
    Ok(())
}

/// When a node pulls a job's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Only when the node lacks it.
    #[default]
    IfNotPresent,
    /// Before every attempt (a moving tag such as `latest`).
    Always,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Always => "always",
        }
    }
}

/// The longest `user` a job may name.
pub const MAX_USER_LEN: usize = 64;

/// A container user as Docker takes it: a name or id, optionally `:` a
/// group name or id; letters, digits, `_`, `.`, `-`.
pub fn check_user(user: &str) -> Result<(), FieldError> {
    if user.is_empty() {
        return Ok(());
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    let ok = user.len() <= MAX_USER_LEN
        && match user.split_once(':') {
            Some((u, g)) => part_ok(u) && part_ok(g),
            None => part_ok(user),
        };
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "user",
            format!(
                "must be NAME, UID, NAME:GROUP or UID:GID (letters, digits, '_', '.', '-'; at most {MAX_USER_LEN} characters)"
            ),
        ))
    }
}

fn one() -> u32 {
    1
}

/// How the nodes of a job are wired and its processes launched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Every node runs the command once.
    #[default]
    None,
    /// `mpirun` in rank 0's container with a hostfile of every node.
    Mpi,
    /// Every node runs the command with the PyTorch rendezvous variables.
    Pytorch,
}

impl Distribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::None => "none",
            Distribution::Mpi => "mpi",
            Distribution::Pytorch => "pytorch",
        }
    }

    /// What an unspecified distribution means: MPI as soon as there is more
    /// than one process, else none.
    pub fn default_for(node_count: u32, process_count_per_node: u32) -> Distribution {
        if node_count > 1 || process_count_per_node > 1 {
            Distribution::Mpi
        } else {
            Distribution::None
        }
    }
}

/// Most processes per node a job may ask for.
pub const MAX_PROCESSES_PER_NODE: u32 = 1024;

/// The port rank 0 listens on for PyTorch's rendezvous (Azure ML's).
pub const MASTER_PORT: u16 = 6105;

/// What a job's gang needs from its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GangLimits {
    pub max_nodes: u32,
    pub inter_node_communication: bool,
}

/// Default re-queues after evictions.
pub const DEFAULT_MAX_PREEMPTIONS: u32 = 3;

fn default_max_preemptions() -> u32 {
    DEFAULT_MAX_PREEMPTIONS
}

/// A job input or output: a path in a datastore, resolved to its account
/// and container when the job is submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataBinding {
    pub name: String,
    pub datastore: String,
    pub path: String,
    pub account_url: String,
    pub container: String,
    /// How the node gives the data to the job.
    #[serde(default, skip_serializing_if = "DataMode::is_copy")]
    pub mode: DataMode,
    /// A code folder's digest (`strato_storage::snapshot_digest`), which
    /// every node checks what it downloaded against; empty for data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

/// Whether `digest` is a code folder's digest as `UploadCode` returns it:
/// 64 lowercase hex digits (SHA-256).
pub fn check_code_digest(digest: &str) -> Result<(), FieldError> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(FieldError::new(
            "code.digest",
            "is required with code: the digest UploadCode returned (64 lowercase hex digits)",
        ))
    }
}

/// Which side of a job data is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSide {
    Input,
    Output,
}

impl DataSide {
    /// The spec's field: `inputs` or `outputs`.
    pub fn field(self) -> &'static str {
        match self {
            DataSide::Input => "inputs",
            DataSide::Output => "outputs",
        }
    }

    /// The modes this side takes, as Azure ML spells them.
    pub fn modes(self) -> &'static str {
        match self {
            DataSide::Input => "download, ro_mount, rw_mount",
            DataSide::Output => "upload, rw_mount",
        }
    }
}

/// How a node gives a job its data, as Azure ML's `mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataMode {
    /// Copied: an input downloaded before the job starts, an output
    /// uploaded after it ends.
    #[default]
    Copy,
    /// A read-only FUSE mount of the path, read on demand.
    RoMount,
    /// A read-write FUSE mount: what the job writes is uploaded as it
    /// closes each file, and before the attempt ends.
    RwMount,
}

impl DataMode {
    pub fn is_copy(&self) -> bool {
        *self == DataMode::Copy
    }

    pub fn is_mount(self) -> bool {
        !self.is_copy()
    }

    /// Azure ML's word for the mode on `side`.
    pub fn as_str(self, side: DataSide) -> &'static str {
        match (self, side) {
            (DataMode::Copy, DataSide::Input) => "download",
            (DataMode::Copy, DataSide::Output) => "upload",
            (DataMode::RoMount, _) => "ro_mount",
            (DataMode::RwMount, _) => "rw_mount",
        }
    }

    /// A mode as asked for on `side` (empty: copy); `field` names the
    /// entry's mode in errors.
    pub fn parse(side: DataSide, field: &str, mode: &str) -> Result<DataMode, FieldError> {
        let parsed = match (side, mode) {
            (_, "") | (DataSide::Input, "download") | (DataSide::Output, "upload") => {
                DataMode::Copy
            }
            (_, "rw_mount") => DataMode::RwMount,
            (DataSide::Input, "ro_mount") => DataMode::RoMount,
            (DataSide::Output, "ro_mount") => {
                return Err(FieldError::new(
                    field,
                    "an output cannot be mounted read-only: use upload or rw_mount",
                ));
            }
            (DataSide::Output, "download") => {
                return Err(FieldError::new(
                    field,
                    "download is for inputs: outputs take upload or rw_mount",
                ));
            }
            (DataSide::Input, "upload") => {
                return Err(FieldError::new(
                    field,
                    "upload is for outputs: inputs take download, ro_mount or rw_mount",
                ));
            }
            (side, other) => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{other:?} is not a mode {} take: one of {}",
                        side.field(),
                        side.modes()
                    ),
                ));
            }
        };
        Ok(parsed)
    }
}

/// Splits `azureml://datastores/<datastore>/paths/<path>`.
pub fn parse_data_uri(field: &str, uri: &str) -> Result<(String, String), FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!("{uri:?} must be azureml://datastores/<datastore>/paths/<path>"),
        )
    };
    let rest = uri.strip_prefix("azureml://datastores/").ok_or_else(bad)?;
    let (datastore, path) = rest.split_once("/paths/").ok_or_else(bad)?;
    let path = path.trim_matches('/');
    if datastore.is_empty() || path.is_empty() || path.split('/').any(|p| p == ".." || p == ".") {
        return Err(bad());
    }
    Ok((datastore.to_owned(), path.to_owned()))
}

/// Datastore names: 1 to 255 lowercase letters, digits and '_', starting
/// with a letter.
pub fn validate_datastore(
    name: &str,
    account_url: &str,
    container: &str,
) -> Result<(), FieldError> {
    let name_ok = (1..=255).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(FieldError::new(
            "name",
            "must be 1 to 255 lowercase letters, digits and '_', starting with a letter",
        ));
    }
    if !account_url.starts_with("https://") || account_url.len() <= "https://".len() {
        return Err(FieldError::new(
            "account_url",
            "must be the account's blob endpoint over https, e.g. https://acct.blob.core.windows.net",
        ));
    }
    let container_ok = (3..=63).contains(&container.len())
        && container
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !container.starts_with('-')
        && !container.contains("--");
    if !container_ok {
        return Err(FieldError::new(
            "container",
            "must be 3 to 63 lowercase letters, digits and single '-', not starting with '-'",
        ));
    }
    Ok(())
}

/// The first field of `spec` (as `command[2]` or `environment.KEY`) whose
/// text holds a NUL character, if any.
fn field_with_nul(spec: &JobSpec) -> Option<String> {
    fn walk(value: &serde_json::Value, path: String) -> Option<String> {
        match value {
            serde_json::Value::String(s) => s.contains('\0').then_some(path),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, format!("{path}[{i}]"))),
            serde_json::Value::Object(fields) => fields.iter().find_map(|(k, v)| {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains('\0') {
                    return Some(at);
                }
                walk(v, at)
            }),
            _ => None,
        }
    }
    walk(&serde_json::to_value(spec).ok()?, String::new())
}

/// Checks a job against the rules, against the size of the cluster's nodes
/// (`size`) and against what its cluster allows a gang (`gang`).
pub fn validate_job(spec: &JobSpec, size: &VmSize, gang: GangLimits) -> Result<(), FieldError> {
    if spec.cluster.is_empty() {
        return Err(FieldError::new("cluster", "is required"));
    }
    if spec.command.is_empty() || spec.command[0].is_empty() {
        return Err(FieldError::new(
            "command",
            "is required: the program and its arguments",
        ));
    }
    crate::limits::check_job_size(&spec.image, spec.environment.iter(), &spec.command)?;
    if let Some(field) = field_with_nul(spec) {
        // No process can be given it (argv and the environment end strings
        // at NUL), and PostgreSQL's text refuses it.
        return Err(FieldError::new(field, "must not contain a NUL character"));
    }
    check_user(&spec.user)?;
    check_metadata(spec)?;
    if spec.display_name.chars().count() > MAX_DISPLAY_NAME_LEN {
        return Err(FieldError::new(
            "display_name",
            format!("must be at most {MAX_DISPLAY_NAME_LEN} characters"),
        ));
    }
    for key in spec.environment.keys() {
        let upper = key.to_ascii_uppercase();
        let reserved = ["MSI_", "IDENTITY_", "AZURE_ML_", "STRATO_"]
            .iter()
            .any(|p| upper.starts_with(p))
            || [
                "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                "DEFAULT_IDENTITY_CLIENT_ID",
                "AZURE_CLIENT_ID",
            ]
            .contains(&upper.as_str())
            || (spec.distribution != Distribution::None
                && GANG_VARIABLES.contains(&upper.as_str()));
        if reserved {
            return Err(FieldError::new(
                format!("environment[{key:?}]"),
                "is set by Strato (for every job: MSI_*, IDENTITY_*, AZURE_ML_*, STRATO_*, AZURE_CLIENT_ID, DEFAULT_IDENTITY_CLIENT_ID, AZURE_POD_IDENTITY_AUTHORITY_HOST; for mpi and pytorch jobs also AZ_BATCH_*, MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, RANK, LOCAL_RANK, OMPI_ALLOW_RUN_AS_ROOT*)",
            ));
        }
        let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(FieldError::new(
                format!("environment[{key:?}]"),
                "a variable name is letters, digits and '_', not starting with a digit",
            ));
        }
    }
    if !(spec.cpu >= 0.0 && spec.cpu <= f64::from(size.vcpus)) {
        return Err(FieldError::new(
            "resources.cpu",
            format!(
                "must be between 0 and {} (the vCPUs of a {} node)",
                size.vcpus, size.name
            ),
        ));
    }
    let node_mb = u64::from(size.memory_gib) * 1024;
    if spec.memory_mb > node_mb {
        return Err(FieldError::new(
            "resources.memory_mb",
            format!(
                "must be at most {node_mb} (the memory of a {} node)",
                size.name
            ),
        ));
    }
    if spec.memory_mb != 0 && spec.memory_mb < 6 {
        return Err(FieldError::new(
            "resources.memory_mb",
            "must be 0 (no limit) or at least 6",
        ));
    }
    if spec.node_count == 0 || spec.node_count > gang.max_nodes.max(1) {
        return Err(FieldError::new(
            "node_count",
            format!(
                "must be between 1 and the cluster's max_nodes ({})",
                gang.max_nodes
            ),
        ));
    }
    if spec.node_count > 1 && !gang.inter_node_communication {
        return Err(FieldError::new(
            "node_count",
            "must be 1 on a cluster with inter-node communication off (multi-node jobs need it on)",
        ));
    }
    if spec.process_count_per_node == 0 || spec.process_count_per_node > MAX_PROCESSES_PER_NODE {
        return Err(FieldError::new(
            "process_count_per_node",
            format!("must be between 1 and {MAX_PROCESSES_PER_NODE}"),
        ));
    }
    if spec.distribution == Distribution::None && spec.process_count_per_node > 1 {
        return Err(FieldError::new(
            "process_count_per_node",
            "must be 1 with distribution none (use mpi or pytorch to start several processes)",
        ));
    }
    for (kind, list) in [("inputs", &spec.inputs), ("outputs", &spec.outputs)] {
        for (i, d) in list.iter().enumerate() {
            let ok = !d.name.is_empty()
                && d.name.len() <= 64
                && d.name.starts_with(|c: char| c.is_ascii_alphabetic())
                && d.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(FieldError::new(
                    format!("{kind}[{i}].name"),
                    "must be 1 to 64 letters, digits and '_', starting with a letter",
                ));
            }
            if list[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&d.name))
            {
                return Err(FieldError::new(
                    format!("{kind}[{i}].name"),
                    format!("{:?} is used twice", d.name),
                ));
            }
        }
    }
    if spec.max_retries > MAX_RETRIES_LIMIT {
        return Err(FieldError::new(
            "max_retries",
            format!("must be at most {MAX_RETRIES_LIMIT}"),
        ));
    }
    if spec.max_preemptions > MAX_RETRIES_LIMIT {
        return Err(FieldError::new(
            "max_preemptions",
            format!("must be at most {MAX_RETRIES_LIMIT}"),
        ));
    }
    Ok(())
}

/// Set by Strato on every node of a distributed job.
pub const GANG_VARIABLES: [&str; 11] = [
    "AZ_BATCH_HOST_LIST",
    "AZ_BATCH_MASTER_NODE",
    "AZ_BATCHAI_MPI_MASTER_NODE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "NODE_RANK",
    "RANK",
    "LOCAL_RANK",
    "OMPI_ALLOW_RUN_AS_ROOT",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Preparing,
    Running,
    Completed,
    Failed,
    Canceled,
    Preempted,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Preparing,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Canceled,
        JobState::Preempted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Preparing => "preparing",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::Preempted => "preempted",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|j| j.as_str() == s)
    }

    /// Completed, failed and canceled jobs never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Canceled
        )
    }

    /// The job holds a node.
    pub fn on_node(self) -> bool {
        matches!(self, JobState::Preparing | JobState::Running)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The container exited with this code.
    Exited(i64),
    /// The node was lost (no heartbeat, removed) while the attempt ran.
    NodeLost,
    /// The job was canceled.
    Canceled,
    /// The attempt could not start (e.g. the image is missing): retrying
    /// will not help.
    CannotStart,
    /// The node was evicted (low priority).
    Preempted,
    /// An operator took the node away and asked for the job to run again
    /// (`compute detach --requeue`): neither a failure nor a preemption.
    Requeued,
}

/// What the job does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Final state.
    Finish(JobState),
    /// Back to the queue as the next attempt.
    Retry,
}

/// Decides what follows an attempt. `failures` counts failed attempts
/// before this one; a job is retried while failures stay within
/// `max_retries`.
pub fn after_attempt(
    end: &AttemptEnd,
    failures: u32,
    max_retries: u32,
    preemptions: u32,
    max_preemptions: u32,
) -> NextStep {
    match end {
        AttemptEnd::Preempted => {
            if preemptions < max_preemptions {
                NextStep::Retry
            } else {
                NextStep::Finish(JobState::Failed)
            }
        }
        AttemptEnd::Exited(0) => NextStep::Finish(JobState::Completed),
        AttemptEnd::Requeued => NextStep::Retry,
        AttemptEnd::Canceled => NextStep::Finish(JobState::Canceled),
        AttemptEnd::CannotStart => NextStep::Finish(JobState::Failed),
        AttemptEnd::Exited(_) | AttemptEnd::NodeLost => {
            if failures < max_retries {
                NextStep::Retry
            } else {
                NextStep::Finish(JobState::Failed)
            }
        }
    }
}

/// How a container's end counts given its node: on an evicted node a
/// non-zero exit (the notice's SIGTERM) is the eviction, not the job's
/// failure.
pub fn end_on_node(end: AttemptEnd, node_evicted: bool) -> AttemptEnd {
    match end {
        AttemptEnd::Exited(code) if code != 0 && node_evicted => AttemptEnd::Preempted,
        other => other,
    }
}

/// What one rank's end means for its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GangStep {
    /// The attempt goes on: other ranks still run.
    Wait,
    /// The attempt ends as a whole, for this reason.
    End(AttemptEnd, String),
}

/// Decides what a rank's end means for its attempt (the gang rule): a rank
/// that fails, is lost or is evicted ends the whole attempt and the reason
/// names it; under `mpi` the attempt ends with rank 0 (`mpirun`), and a
/// worker ending first is a failure; otherwise the attempt completes once
/// every rank exited 0. `others_done` says whether every other rank has
/// already exited 0.
pub fn after_rank(
    distribution: Distribution,
    node_count: u32,
    rank: u32,
    node_id: &str,
    end: AttemptEnd,
    reason: &str,
    others_done: bool,
) -> GangStep {
    if node_count <= 1 {
        return GangStep::End(end, reason.to_owned());
    }
    let who = format!("rank {rank} (node {node_id})");
    let with = |what: String| {
        if reason.is_empty() {
            what
        } else {
            format!("{what}: {reason}")
        }
    };
    match end {
        AttemptEnd::Exited(0) if distribution == Distribution::Mpi && rank == 0 => GangStep::End(
            AttemptEnd::Exited(0),
            with("mpirun on rank 0 exited 0".into()),
        ),
        AttemptEnd::Exited(0) if distribution == Distribution::Mpi => GangStep::End(
            AttemptEnd::Exited(1),
            with(format!("{who} left the gang while mpirun ran")),
        ),
        AttemptEnd::Exited(0) if others_done => {
            GangStep::End(AttemptEnd::Exited(0), "every rank exited 0".to_owned())
        }
        AttemptEnd::Exited(0) => GangStep::Wait,
        AttemptEnd::Exited(code) => GangStep::End(
            AttemptEnd::Exited(code),
            with(format!("{who} exited {code}")),
        ),
        AttemptEnd::NodeLost => {
            GangStep::End(AttemptEnd::NodeLost, with(format!("{who} was lost")))
        }
        AttemptEnd::Preempted => {
            GangStep::End(AttemptEnd::Preempted, with(format!("{who} was evicted")))
        }
        AttemptEnd::Requeued => {
            GangStep::End(AttemptEnd::Requeued, with(format!("{who} was detached")))
        }
        AttemptEnd::CannotStart => GangStep::End(
            AttemptEnd::CannotStart,
            with(format!("{who} could not start")),
        ),
        AttemptEnd::Canceled => {
            GangStep::End(AttemptEnd::Canceled, with(format!("{who} was canceled")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_counts_from_the_running_attempt() {
        assert!(!past_timeout(60, 1_000, 60_999));
        assert!(past_timeout(60, 1_000, 61_000));
        assert!(!past_timeout(u64::MAX, 0, i64::MAX - 1), "no overflow");
        assert_eq!(
            timeout_reason(60),
            "canceled: it ran past its limits.timeout of 60 s"
        );
    }

    #[test]
    fn data_modes_are_azure_mls_words_per_side() {
        use DataSide::{Input, Output};
        let ok = |side, m| DataMode::parse(side, "inputs[0].mode", m).expect(m);
        assert_eq!(ok(Input, ""), DataMode::Copy);
        assert_eq!(ok(Input, "download"), DataMode::Copy);
        assert_eq!(ok(Input, "ro_mount"), DataMode::RoMount);
        assert_eq!(ok(Input, "rw_mount"), DataMode::RwMount);
        assert_eq!(ok(Output, ""), DataMode::Copy);
        assert_eq!(ok(Output, "upload"), DataMode::Copy);
        assert_eq!(ok(Output, "rw_mount"), DataMode::RwMount);
        for (side, bad, says) in [
            (Output, "ro_mount", "read-only"),
            (Output, "download", "download is for inputs"),
            (Input, "upload", "upload is for outputs"),
            (Input, "RO_MOUNT", "one of download, ro_mount, rw_mount"),
            (Output, "direct", "one of upload, rw_mount"),
        ] {
            let e = DataMode::parse(side, "x[1].mode", bad).expect_err(bad);
            assert_eq!(e.field, "x[1].mode");
            assert!(e.rule.contains(says), "{bad}: {}", e.rule);
        }
        for m in [DataMode::Copy, DataMode::RoMount, DataMode::RwMount] {
            for side in [Input, Output] {
                if let Ok(back) = DataMode::parse(side, "f", m.as_str(side)) {
                    assert_eq!(back, m);
                }
            }
        }
        // Specs stored before modes existed read as copies.
        let old: DataBinding = serde_json::from_str(
            r#"{"name":"raw","datastore":"lake","path":"in","account_url":"u","container":"c"}"#,
        )
        .expect("old binding");
        assert_eq!(old.mode, DataMode::Copy);
        let mounted = DataBinding {
            mode: DataMode::RoMount,
            ..old
        };
        let json = serde_json::to_string(&mounted).expect("json");
        assert!(json.contains(r#""mode":"ro_mount""#), "{json}");
    }

    #[test]
    fn exit_codes_and_retries() {
        let a = |end, failures, max| after_attempt(&end, failures, max, 0, 3);
        assert_eq!(
            a(AttemptEnd::Exited(0), 0, 0),
            NextStep::Finish(JobState::Completed)
        );
        assert_eq!(
            a(AttemptEnd::Exited(3), 0, 0),
            NextStep::Finish(JobState::Failed)
        );
        assert_eq!(a(AttemptEnd::Exited(3), 0, 1), NextStep::Retry);
        assert_eq!(
            a(AttemptEnd::NodeLost, 1, 1),
            NextStep::Finish(JobState::Failed)
        );
        assert_eq!(a(AttemptEnd::NodeLost, 0, 2), NextStep::Retry);
        assert_eq!(
            a(AttemptEnd::Requeued, 0, 0),
            NextStep::Retry,
            "a detached node's job runs again whatever its retries"
        );
        assert_eq!(
            a(AttemptEnd::CannotStart, 0, 5),
            NextStep::Finish(JobState::Failed)
        );
        assert_eq!(
            a(AttemptEnd::Canceled, 0, 5),
            NextStep::Finish(JobState::Canceled)
        );
        // Evictions do not spend failure retries, and have their own limit.
        assert_eq!(
            after_attempt(&AttemptEnd::Preempted, 0, 0, 0, 3),
            NextStep::Retry
        );
        assert_eq!(
            after_attempt(&AttemptEnd::Preempted, 5, 0, 2, 3),
            NextStep::Retry
        );
        assert_eq!(
            after_attempt(&AttemptEnd::Preempted, 0, 9, 3, 3),
            NextStep::Finish(JobState::Failed)
        );
    }

    fn job() -> JobSpec {
        JobSpec {
            cluster: "cpu".into(),
            display_name: String::new(),
            image: "busybox".into(),
            command: vec!["echo".into(), "hi".into()],
            environment: BTreeMap::new(),
            cpu: 1.0,
            memory_mb: 256,
            max_retries: 0,
            max_preemptions: DEFAULT_MAX_PREEMPTIONS,
            inputs: Vec::new(),
            outputs: Vec::new(),
            node_count: 1,
            process_count_per_node: 1,
            distribution: Distribution::None,
            user: String::new(),
            pull: PullPolicy::IfNotPresent,
            experiment_name: String::new(),
            description: String::new(),
            tags: BTreeMap::new(),
            timeout_seconds: None,
            code: None,
            artifacts: None,
        }
    }

    #[test]
    fn a_nul_character_anywhere_is_refused_naming_the_field() {
        let size = crate::catalog::lookup("Standard_D2_v2").expect("size");
        let gang = GangLimits {
            max_nodes: 1,
            inter_node_communication: true,
        };
        for (bad, field) in [
            (
                JobSpec {
                    command: vec!["echo".into(), "a\0b".into()],
                    ..job()
                },
                "command[1]",
            ),
            (
                JobSpec {
                    environment: BTreeMap::from([("K".into(), "v\0".into())]),
                    ..job()
                },
                "environment.K",
            ),
            (
                JobSpec {
                    tags: BTreeMap::from([("t".into(), "\0".into())]),
                    ..job()
                },
                "tags.t",
            ),
            (
                JobSpec {
                    description: "x\0".into(),
                    ..job()
                },
                "description",
            ),
        ] {
            let e = validate_job(&bad, size, gang).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains("NUL"), "{e}");
        }
    }

    #[test]
    fn job_metadata_and_timeouts_are_bounded() {
        let size = crate::catalog::lookup("Standard_D2_v2").expect("size");
        let gang = GangLimits {
            max_nodes: 1,
            inter_node_communication: true,
        };
        let ok = JobSpec {
            experiment_name: "exp_1-a".into(),
            timeout_seconds: Some(60),
            tags: BTreeMap::from([("team".into(), "ml".into())]),
            ..job()
        };
        assert!(validate_job(&ok, size, gang).is_ok());
        for (bad, field) in [
            (
                JobSpec {
                    experiment_name: "has space".into(),
                    ..job()
                },
                "experiment_name",
            ),
            (
                JobSpec {
                    timeout_seconds: Some(0),
                    ..job()
                },
                "limits.timeout",
            ),
            (
                JobSpec {
                    timeout_seconds: Some(MAX_TIMEOUT_SECONDS + 1),
                    ..job()
                },
                "limits.timeout",
            ),
            (
                JobSpec {
                    description: "x".repeat(MAX_DESCRIPTION_BYTES + 1),
                    ..job()
                },
                "description",
            ),
            (
                JobSpec {
                    tags: (0..=MAX_JOB_TAGS)
                        .map(|i| (i.to_string(), String::new()))
                        .collect(),
                    ..job()
                },
                "tags",
            ),
        ] {
            assert_eq!(
                validate_job(&bad, size, gang).expect_err(field).field,
                field
            );
        }
    }

    #[test]
    fn container_users_are_names_or_ids_with_an_optional_group() {
        for good in [
            "",
            "1000",
            "1000:1000",
            "azureuser",
            "ml_user:ml-group",
            "a.b",
        ] {
            assert!(check_user(good).is_ok(), "{good:?}");
        }
        for bad in [
            "root ",
            ":1000",
            "1000:",
            "a:b:c",
            "-u",
            "x;rm",
            &"u".repeat(65),
        ] {
            let e = check_user(bad).expect_err(bad);
            assert_eq!(e.field, "user");
        }
    }

    #[test]
    fn job_rules_name_their_field() {
        let size = crate::catalog::lookup("Standard_D2_v2").expect("size");
        let gang = GangLimits {
            max_nodes: 4,
            inter_node_communication: true,
        };
        assert!(validate_job(&job(), size, gang).is_ok());
        type Change = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|j| j.image = String::new()), "image"),
            (Box::new(|j| j.command.clear()), "command"),
            (Box::new(|j| j.cpu = 3.0), "resources.cpu"),
            (Box::new(|j| j.cpu = f64::NAN), "resources.cpu"),
            (Box::new(|j| j.memory_mb = 8 * 1024), "resources.memory_mb"),
            (
                Box::new(|j| {
                    j.environment.insert("1X".into(), String::new());
                }),
                "environment[\"1X\"]",
            ),
            (Box::new(|j| j.node_count = 5), "node_count"),
            (Box::new(|j| j.node_count = 0), "node_count"),
            (
                Box::new(|j| j.process_count_per_node = 0),
                "process_count_per_node",
            ),
            (
                Box::new(|j| j.process_count_per_node = 2),
                "process_count_per_node",
            ),
            (
                Box::new(|j| {
                    j.distribution = Distribution::Mpi;
                    j.environment.insert("NODE_RANK".into(), String::new());
                }),
                "environment[\"NODE_RANK\"]",
            ),
            (
                Box::new(|j| {
                    j.environment.insert("MSI_SECRET".into(), String::new());
                }),
                "environment[\"MSI_SECRET\"]",
            ),
            (Box::new(|j| j.max_retries = 1000), "max_retries"),
            (
                Box::new(|j| j.max_preemptions = u32::MAX),
                "max_preemptions",
            ),
        ];
        for (change, field) in cases {
            let mut j = job();
            change(&mut j);
            assert_eq!(validate_job(&j, size, gang).expect_err(field).field, field);
        }
        // A gang fits max_nodes, and needs inter-node communication.
        let mut gang_job = job();
        gang_job.node_count = 4;
        gang_job.process_count_per_node = 2;
        gang_job.distribution = Distribution::Mpi;
        assert!(validate_job(&gang_job, size, gang).is_ok());
        let off = GangLimits {
            inter_node_communication: false,
            ..gang
        };
        let e = validate_job(&gang_job, size, off).expect_err("inter-node off");
        assert_eq!(e.field, "node_count");
        assert!(e.to_string().contains("inter-node communication"), "{e}");
        // Without a distribution, NODE_RANK is the job's own business.
        let mut plain = job();
        plain.environment.insert("NODE_RANK".into(), "x".into());
        assert!(validate_job(&plain, size, gang).is_ok());
    }

    #[test]
    fn one_rank_ends_the_gang_and_is_named() {
        let step = |d, rank, end, others_done| after_rank(d, 2, rank, "n1", end, "", others_done);
        // mpirun on rank 0 decides; a worker leaving first is a failure.
        assert_eq!(
            step(Distribution::Mpi, 0, AttemptEnd::Exited(0), false),
            GangStep::End(AttemptEnd::Exited(0), "mpirun on rank 0 exited 0".into())
        );
        let GangStep::End(AttemptEnd::Exited(1), why) =
            step(Distribution::Mpi, 1, AttemptEnd::Exited(0), false)
        else {
            panic!("a worker leaving early fails the gang")
        };
        assert!(why.contains("rank 1 (node n1)"), "{why}");
        // Otherwise every rank must exit 0.
        assert_eq!(
            step(Distribution::Pytorch, 1, AttemptEnd::Exited(0), false),
            GangStep::Wait
        );
        assert!(matches!(
            step(Distribution::Pytorch, 1, AttemptEnd::Exited(0), true),
            GangStep::End(AttemptEnd::Exited(0), _)
        ));
        let GangStep::End(AttemptEnd::Exited(137), why) =
            step(Distribution::Pytorch, 1, AttemptEnd::Exited(137), true)
        else {
            panic!("a failed rank fails the gang")
        };
        assert_eq!(why, "rank 1 (node n1) exited 137");
        assert!(matches!(
            after_rank(Distribution::Mpi, 2, 1, "n1", AttemptEnd::NodeLost, "no heartbeat", false),
            GangStep::End(AttemptEnd::NodeLost, w) if w == "rank 1 (node n1) was lost: no heartbeat"
        ));
        // A single node is the attempt.
        assert_eq!(
            after_rank(
                Distribution::None,
                1,
                0,
                "n",
                AttemptEnd::Exited(3),
                "x",
                false
            ),
            GangStep::End(AttemptEnd::Exited(3), "x".into())
        );
    }

    #[test]
    fn a_failure_on_an_evicted_node_is_the_eviction() {
        assert_eq!(
            end_on_node(AttemptEnd::Exited(143), true),
            AttemptEnd::Preempted
        );
        assert_eq!(
            end_on_node(AttemptEnd::Exited(0), true),
            AttemptEnd::Exited(0)
        );
        assert_eq!(
            end_on_node(AttemptEnd::Exited(143), false),
            AttemptEnd::Exited(143)
        );
    }

    #[test]
    fn distribution_defaults_to_mpi_beyond_one_process() {
        assert_eq!(Distribution::default_for(1, 1), Distribution::None);
        assert_eq!(Distribution::default_for(2, 1), Distribution::Mpi);
        assert_eq!(Distribution::default_for(1, 4), Distribution::Mpi);
    }

    #[test]
    fn code_paths_stay_inside_their_folder() {
        for ok in ["a.py", "src/lib/x.py", ".amlignore", "a b/c..d"] {
            assert!(check_code_path(ok).is_ok(), "{ok}");
        }
        let long = "a/".repeat(600);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "a\\b",
            "a\nb",
            long.as_str(),
        ] {
            assert_eq!(
                check_code_path(bad).expect_err(bad).field,
                "path",
                "{bad:?}"
            );
        }
        assert_eq!(default_output_path("job-1", "model"), "azureml/job-1/model");
        assert_eq!(artifacts_path("job-1"), "ExperimentRun/dcid.job-1/outputs");
    }

    #[test]
    fn data_uris_and_datastores() {
        assert_eq!(
            parse_data_uri(
                "inputs[0].uri",
                "azureml://datastores/raw/paths/images/train/"
            )
            .expect("ok"),
            ("raw".to_owned(), "images/train".to_owned())
        );
        for bad in [
            "https://x",
            "azureml://datastores/raw",
            "azureml://datastores//paths/x",
            "azureml://datastores/raw/paths/../x",
        ] {
            assert_eq!(parse_data_uri("f", bad).expect_err(bad).field, "f");
        }
        assert!(
            validate_datastore(
                "raw_data",
                "https://127.0.0.1:10000/devstoreaccount1",
                "data"
            )
            .is_ok()
        );
        assert_eq!(
            validate_datastore("Raw", "https://a", "data")
                .expect_err("name")
                .field,
            "name"
        );
        assert_eq!(
            validate_datastore("raw", "http://a", "data")
                .expect_err("url")
                .field,
            "account_url"
        );
        assert_eq!(
            validate_datastore("raw", "https://a", "D")
                .expect_err("container")
                .field,
            "container"
        );
    }

    #[test]
    fn states_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert!(JobState::Canceled.is_final() && !JobState::Preempted.is_final());
    }
}
