//! Node providers: where nodes come from, behind one trait.
//!
//! - [`local::LocalProvider`]: each node is a `strato-agent` process on this
//!   machine, running jobs in the local Docker engine.
//! - [`NoProvider`] (`--provider none`): no nodes; a cluster that wants some
//!   says so.
//!
//! The reconcile loop and the API know only [`NodeProvider`]: what a
//! provider can do is create a node, take one down, list what it holds, and
//! remove what a cluster left behind. The next providers (machines that
//! join, a simulated fleet) are one more implementation each.

pub mod local;

use std::collections::BTreeSet;

use futures_util::future::BoxFuture;

pub use local::{LocalProvider, LocalSettings};

/// What a provider needs to start a node.
#[derive(Debug, Clone)]
pub struct NodeLaunch {
    pub node_id: String,
    pub cluster: String,
    /// Secret: handed to the node's agent only, never logged.
    pub join_token: String,
}

/// A node as a provider knows it: enough to take it down.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProvidedNode {
    pub node_id: String,
    /// The agent's process, for a provider that starts one.
    pub pid: Option<u32>,
}

impl From<&crate::store::NodeRecord> for ProvidedNode {
    fn from(node: &crate::store::NodeRecord) -> Self {
        ProvidedNode {
            node_id: node.node_id.clone(),
            pid: node.pid,
        }
    }
}

/// What a provider holds, as it lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Nodes with anything left of them (a process, a container, a
    /// directory).
    pub nodes: Vec<ProvidedNode>,
    /// Clusters with resources of their own (a gang network).
    pub clusters: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no node provider is configured (--provider none); nodes cannot be created")]
    NoProvider,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the container engine: {0}")]
    Runtime(#[from] strato_runtime::RuntimeError),
    #[error("the agent process exited at once")]
    AgentExited,
}

impl ProviderError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProviderError {
        let what = what.into();
        move |source| ProviderError::Io { what, source }
    }
}

/// What a provider can do, for the loop and the API to ask instead of
/// asking which provider it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It creates nodes when the scale decision asks for them.
    pub creates_nodes: bool,
    /// Its nodes poll this control plane's Scheduled Events, so
    /// `SimulateEviction` can deliver a real notice to them.
    pub simulated_evictions: bool,
}

/// Where nodes come from.
pub trait NodeProvider: Send + Sync + 'static {
    /// Its name in logs (`local`, `none`, ...).
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Starts a node whose agent enrols with `launch.join_token`; returns
    /// the agent's process id when the provider starts a process here.
    fn create_node<'a>(
        &'a self,
        launch: &'a NodeLaunch,
    ) -> BoxFuture<'a, Result<Option<u32>, ProviderError>>;

    /// Takes a node down with everything it runs. Ok if it is gone already.
    fn delete_node<'a>(
        &'a self,
        node: &'a ProvidedNode,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// Makes what a multi-node job of `cluster` needs before its nodes
    /// start their containers (for nodes sharing one engine: the network
    /// they meet on). Called for every gang assignment; idempotent.
    /// By default there is nothing to make (nodes with engines of their
    /// own).
    fn prepare_gang<'a>(&'a self, _cluster: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// Removes what a cluster holds beyond its nodes, once it has none.
    /// By default a cluster holds nothing of its own.
    fn delete_cluster<'a>(&'a self, _cluster: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// Everything this provider holds now.
    fn holdings(&self) -> BoxFuture<'_, Result<Holdings, ProviderError>>;
}

/// `--provider none`: creates nothing, holds nothing.
#[derive(Debug, Default)]
pub struct NoProvider;

impl NodeProvider for NoProvider {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            creates_nodes: false,
            simulated_evictions: false,
        }
    }

    fn create_node<'a>(
        &'a self,
        _launch: &'a NodeLaunch,
    ) -> BoxFuture<'a, Result<Option<u32>, ProviderError>> {
        Box::pin(async { Err(ProviderError::NoProvider) })
    }

    fn delete_node<'a>(
        &'a self,
        _node: &'a ProvidedNode,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn holdings(&self) -> BoxFuture<'_, Result<Holdings, ProviderError>> {
        Box::pin(async { Ok(Holdings::default()) })
    }
}

/// Takes down what the provider holds of nodes and clusters the store does
/// not know (left by a control plane that stopped before they were gone,
/// or by a crash between the two). Best effort: one failure does not stop
/// the rest. Returns what was removed and what could not be, for the log.
pub async fn remove_orphans(
    provider: &dyn NodeProvider,
    known_clusters: &BTreeSet<String>,
    known_nodes: &BTreeSet<String>,
) -> Result<(Vec<String>, Vec<String>), ProviderError> {
    let holdings = provider.holdings().await?;
    let orphans = strato_core::node::orphans(
        known_clusters,
        known_nodes,
        holdings.nodes.iter().map(|n| n.node_id.as_str()),
        holdings.clusters.iter().map(String::as_str),
    );
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for node in holdings
        .nodes
        .iter()
        .filter(|n| orphans.nodes.contains(&n.node_id))
    {
        match provider.delete_node(node).await {
            Ok(()) => removed.push(format!("node {}", node.node_id)),
            Err(e) => failed.push(format!("node {}: {e}", node.node_id)),
        }
    }
    for cluster in &orphans.clusters {
        match provider.delete_cluster(cluster).await {
            Ok(()) => removed.push(format!("cluster {cluster}'s network")),
            Err(e) => failed.push(format!("cluster {cluster}'s network: {e}")),
        }
    }
    Ok((removed, failed))
}
