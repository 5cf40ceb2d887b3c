//! A job as a caller submits it, before its cluster and datastores are
//! looked up: what a `JobSpec` is made from. Unset wire fields stay unset
//! here; the defaults are applied when the spec is made.

use std::collections::BTreeMap;

use crate::job::Distribution;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRequest {
    pub cluster: String,
    pub display_name: String,
    pub image: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub cpu: f64,
    pub memory_mb: u64,
    pub gpus: u32,
    /// 0 means one.
    pub node_count: u32,
    /// 0 means one.
    pub process_count_per_node: u32,
    /// `None`: chosen from the node and process counts.
    pub distribution: Option<Distribution>,
    pub max_retries: u32,
    /// `None`: `job::DEFAULT_MAX_PREEMPTIONS`.
    pub max_preemptions: Option<u32>,
    pub inputs: Vec<DataRequest>,
    pub outputs: Vec<DataRequest>,
    /// Who the command runs as; empty: the image's user.
    pub user: String,
    pub pull: crate::job::PullPolicy,
    pub experiment_name: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub timeout_seconds: Option<u64>,
    /// A code folder in a datastore
    /// (`azureml://datastores/<datastore>/paths/<path>`); empty: none.
    pub code: String,
    /// The code folder's digest, as `UploadCode` returned it.
    pub code_digest: String,
}

/// A job input or output as asked for: a datastore URI, not yet resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataRequest {
    pub name: String,
    /// `azureml://datastores/<datastore>/paths/<path>`.
    pub uri: String,
    /// Empty, or the one mode the binding supports.
    pub mode: String,
}
