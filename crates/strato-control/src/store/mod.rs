//! The control plane's durable state, behind one interface.
//!
//! **Architecture invariant:** every mutation is one transaction, and a
//! caller is answered only after it committed. A quota check and the
//! allocation it guards happen in the same write transaction, so two
//! concurrent requests cannot both take the last cores.

mod sqlite;

use std::future::Future;

use strato_core::SpecError;
use strato_core::node::NodeState;
use strato_core::quota::{QuotaError, QuotaLimits, QuotaUsage};
use strato_core::spec::ClusterSpec;

pub use sqlite::SqliteStore;

/// A cluster as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRecord {
    pub spec: ClusterSpec,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    /// When `min_nodes` or `max_nodes` last changed, or the creation time.
    pub scale_changed_at: i64,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    pub cluster: String,
    pub state: NodeState,
    pub private_ip: String,
    pub port: u16,
    pub run_id: Option<String>,
    pub reason: String,
    pub state_since: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster {0:?} not found")]
    ClusterNotFound(String),
    #[error("a cluster named {0:?} already exists")]
    ClusterExists(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
}

/// Computes a cluster's new spec from its current one; runs inside the
/// update's transaction.
pub type SpecUpdate = Box<dyn FnOnce(&ClusterSpec) -> Result<ClusterSpec, SpecError> + Send>;

/// Where clusters and nodes live. `now` is passed in (milliseconds since the
/// epoch) so that the store reads no clock.
pub trait Store: Send + Sync + 'static {
    /// Stores a new cluster if its name is free and its `min_nodes` fit the
    /// quota of its location; otherwise stores nothing.
    fn create_cluster(
        &self,
        spec: ClusterSpec,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    fn get_cluster(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    fn list_clusters(&self) -> impl Future<Output = Result<Vec<ClusterRecord>, StoreError>> + Send;

    /// Replaces a cluster's spec with `update(current)` if the result fits
    /// the quota; otherwise changes nothing.
    fn update_cluster(
        &self,
        name: &str,
        update: SpecUpdate,
        limits: &QuotaLimits,
        now: i64,
    ) -> impl Future<Output = Result<ClusterRecord, StoreError>> + Send;

    /// Deletes a cluster and its node records.
    fn delete_cluster(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn list_nodes(
        &self,
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;

    /// What the clusters of a location hold against the quota.
    fn usage(&self, location: &str) -> impl Future<Output = Result<QuotaUsage, StoreError>> + Send;

    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
