//! `local`: each node is a `strato-agent` process on this machine, started
//! with its join token in the environment and running jobs in the local
//! Docker engine. Removing a node kills the process and removes every
//! container labelled with the node, so no orphan keeps running.
//!
//! Everything it makes carries this control plane's id: its agents'
//! environment (`STRATO_CONTROL_PLANE_ID`), their containers and the gang
//! networks (the `strato.control-plane` label). That is how
//! [`NodeProvider::holdings`] finds what is left of nodes and clusters the
//! store no longer knows, while other control planes on the same engine keep
//! theirs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use strato_core::naming::{self, LABEL_CONTROL_PLANE, LABEL_NETWORK, LABEL_NODE};
use strato_runtime::{ContainerRuntime, DockerRuntime};

use super::{Capabilities, Holdings, NodeLaunch, NodeProvider, ProvidedNode, ProviderError};

/// How long a local agent keeps trying to reach its control plane before it
/// removes its containers and exits (`STRATO_GIVE_UP_AFTER`): long enough
/// for a restart, short enough that agents of a control plane gone for good
/// do not linger.
pub const AGENT_GIVE_UP_AFTER_SECONDS: u64 = 300;

/// How the local provider starts its agents.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub agent_binary: PathBuf,
    /// The control plane's gRPC address, as the agents dial it.
    pub endpoint: String,
    /// `DATA_DIR/nodes`: a directory per node.
    pub nodes_dir: PathBuf,
    pub docker_socket: String,
    pub storage_ca_file: Option<PathBuf>,
    /// The control plane's HTTP address: it serves the nodes' Scheduled
    /// Events documents.
    pub control_http: String,
    /// This control plane's id, on everything the provider makes.
    pub control_plane_id: String,
}

pub struct LocalProvider {
    settings: LocalSettings,
    /// Agent processes started by this control plane, by node id.
    children: Mutex<HashMap<String, u32>>,
    /// Held while a cluster's gang network is made: Docker does not refuse
    /// a second network of the same name created at the same moment.
    networks: tokio::sync::Mutex<()>,
}

impl LocalProvider {
    pub fn new(settings: LocalSettings) -> Self {
        LocalProvider {
            settings,
            children: Mutex::new(HashMap::new()),
            networks: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory of a node: `agent.env` (how its agent was started) and
    /// `agent.log` (what it wrote).
    pub fn node_dir(&self, node_id: &str) -> PathBuf {
        self.settings.nodes_dir.join(node_id)
    }

    async fn docker(&self) -> Result<DockerRuntime, ProviderError> {
        Ok(DockerRuntime::connect(Some(&self.settings.docker_socket)).await?)
    }

    /// The labels of what this provider makes for `cluster`.
    fn network_labels(&self, cluster: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NETWORK.to_owned(), cluster.to_owned()),
            (
                LABEL_CONTROL_PLANE.to_owned(),
                self.settings.control_plane_id.clone(),
            ),
        ])
    }

    async fn start_node(&self, launch: &NodeLaunch) -> Result<u32, ProviderError> {
        let dir = self.node_dir(&launch.node_id);
        std::fs::create_dir_all(&dir).map_err(ProviderError::io("creating the node directory"))?;
        let work_dir = dir.join("work").display().to_string();
        let events_url = format!(
            "{}/scheduledevents/{}?api-version=2020-07-01",
            self.settings.control_http, launch.node_id
        );
        let ca = self
            .settings
            .storage_ca_file
            .as_ref()
            .map(|p| p.display().to_string());
        let give_up = AGENT_GIVE_UP_AFTER_SECONDS.to_string();
        let mut env = vec![
            ("STRATO_CONTROL_PLANE", self.settings.endpoint.as_str()),
            ("STRATO_JOIN_TOKEN", launch.join_token.as_str()),
            ("STRATO_NODE_NAME", launch.node_id.as_str()),
            ("STRATO_DOCKER_SOCKET", self.settings.docker_socket.as_str()),
            ("STRATO_WORK_DIR", work_dir.as_str()),
            // Several local agents share this machine: each takes a free port.
            ("STRATO_METRICS_LISTEN", "127.0.0.1:0"),
            ("STRATO_SCHEDULED_EVENTS_URL", events_url.as_str()),
            // Every node shares this machine's engine: a gang's containers
            // meet on a Docker network of their cluster.
            ("STRATO_GANG_NETWORK", "cluster"),
            (
                "STRATO_CONTROL_PLANE_ID",
                self.settings.control_plane_id.as_str(),
            ),
            ("STRATO_GIVE_UP_AFTER", give_up.as_str()),
        ];
        if let Some(ca) = &ca {
            env.push(("STRATO_STORAGE_CA_FILE", ca.as_str()));
        }
        // Like a systemd EnvironmentFile: readable by the owner only, since
        // it holds the join token.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("agent.env"))
            .map_err(ProviderError::io("writing agent.env"))?;
        for (k, v) in &env {
            writeln!(file, "{k}={v}").map_err(ProviderError::io("writing agent.env"))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(ProviderError::io("opening agent.log"))?;
        let mut child = tokio::process::Command::new(&self.settings.agent_binary)
            .envs(env.iter().copied())
            .arg("--node-name")
            .arg(&launch.node_id)
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(ProviderError::io("opening agent.log"))?,
            )
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the control plane
            // does not take the nodes down with it.
            .process_group(0)
            .spawn()
            .map_err(ProviderError::io(format!(
                "starting {}",
                self.settings.agent_binary.display()
            )))?;
        let pid = child.id().ok_or(ProviderError::AgentExited)?;
        self.children().insert(launch.node_id.clone(), pid);
        let node_id = launch.node_id.clone();
        // Reap the process when it exits, so it leaves no zombie.
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::info!(node = %node_id, %status, "agent process exited"),
                Err(e) => {
                    tracing::warn!(node = %node_id, error = %e, "waiting for the agent process")
                }
            }
        });
        tracing::info!(node = %launch.node_id, cluster = %launch.cluster, pid, "agent process started");
        Ok(pid)
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // The map stays consistent whatever panicked while holding it.
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn stop_node(&self, node: &ProvidedNode) -> Result<(), ProviderError> {
        let known = self.children().remove(&node.node_id);
        for pid in known.into_iter().chain(node.pid) {
            kill_agent(pid, &node.node_id);
        }
        // Remove the node's containers: a job must not outlive its node.
        let docker = self.docker().await?;
        for c in docker.list(LABEL_NODE, &node.node_id).await? {
            docker.remove(&c.id).await?;
            tracing::info!(node = %node.node_id, container = %c.name, "removed the node's container");
        }
        if let Some(cluster) = &node.cluster {
            let _one_at_a_time = self.networks.lock().await;
            remove_gang_network(&docker, cluster).await;
        }
        let _ = std::fs::remove_dir_all(self.node_dir(&node.node_id));
        Ok(())
    }

    /// Nodes with anything left here: a directory, an agent process or a
    /// container of this control plane; clusters with a gang network of it.
    async fn list_holdings(&self) -> Result<Holdings, ProviderError> {
        let mut nodes: BTreeMap<String, ProvidedNode> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&self.settings.nodes_dir) {
            for e in entries.flatten() {
                let node_id = e.file_name().to_string_lossy().into_owned();
                node_of(&mut nodes, &node_id);
            }
        }
        for (pid, node_id) in agents_of(&self.settings.control_plane_id) {
            node_of(&mut nodes, &node_id).pid = Some(pid);
        }
        let docker = self.docker().await?;
        for c in docker
            .list(LABEL_CONTROL_PLANE, &self.settings.control_plane_id)
            .await?
        {
            if let Some(node_id) = c.labels.get(LABEL_NODE) {
                let node = node_of(&mut nodes, node_id);
                if node.cluster.is_none() {
                    node.cluster = c.labels.get(naming::LABEL_CLUSTER).cloned();
                }
            }
        }
        let clusters: BTreeSet<String> = docker
            .list_networks(LABEL_CONTROL_PLANE, &self.settings.control_plane_id)
            .await?
            .iter()
            .filter_map(|n| naming::cluster_of_network(n))
            .map(str::to_owned)
            .collect();
        Ok(Holdings {
            nodes: nodes.into_values().collect(),
            clusters,
        })
    }
}

fn node_of<'a>(
    nodes: &'a mut BTreeMap<String, ProvidedNode>,
    node_id: &str,
) -> &'a mut ProvidedNode {
    nodes
        .entry(node_id.to_owned())
        .or_insert_with(|| ProvidedNode {
            node_id: node_id.to_owned(),
            cluster: None,
            pid: None,
        })
}

impl NodeProvider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            creates_nodes: true,
            simulated_evictions: true,
        }
    }

    fn create_node<'a>(
        &'a self,
        launch: &'a NodeLaunch,
    ) -> BoxFuture<'a, Result<Option<u32>, ProviderError>> {
        Box::pin(async move { self.start_node(launch).await.map(Some) })
    }

    fn delete_node<'a>(
        &'a self,
        node: &'a ProvidedNode,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.stop_node(node))
    }

    fn prepare_gang<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            // One at a time: Docker accepts two networks of one name created
            // at the same moment.
            let _one_at_a_time = self.networks.lock().await;
            self.docker()
                .await?
                .ensure_network(
                    &naming::network_name(cluster),
                    &self.network_labels(cluster),
                )
                .await?;
            Ok(())
        })
    }

    fn delete_cluster<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let docker = self.docker().await?;
            let _one_at_a_time = self.networks.lock().await;
            remove_gang_network(&docker, cluster).await;
            Ok(())
        })
    }

    fn holdings(&self) -> BoxFuture<'_, Result<Holdings, ProviderError>> {
        Box::pin(self.list_holdings())
    }
}

/// Removes a cluster's gang network once no container uses it (the last
/// node's removal does; earlier attempts fail quietly).
async fn remove_gang_network(docker: &DockerRuntime, cluster: &str) {
    let name = naming::network_name(cluster);
    match docker.remove_network(&name).await {
        Ok(true) => tracing::info!(network = %name, "removed the cluster's gang network"),
        Ok(false) => {}
        Err(e) => tracing::debug!(network = %name, error = %e, "gang network kept"),
    }
}

/// The agent processes on this machine that a local provider of control
/// plane `control_plane_id` started, as (pid, node id), read from their
/// environment.
fn agents_of(control_plane_id: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mine = format!("STRATO_CONTROL_PLANE_ID={control_plane_id}");
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            if !vars.contains(&mine.as_bytes()) {
                return None;
            }
            let node = vars
                .iter()
                .find_map(|v| v.strip_prefix(b"STRATO_NODE_NAME=".as_slice()))?;
            Some((pid, String::from_utf8_lossy(node).into_owned()))
        })
        .collect()
}

/// SIGKILLs the agent process `pid`, if it is still the agent of `node_id`
/// (a pid may have been reused since).
fn kill_agent(pid: u32, node_id: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_agent = String::from_utf8_lossy(&cmdline).contains(node_id);
    if !is_agent {
        return;
    }
    match std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
    {
        Ok(s) if s.success() => tracing::info!(node = %node_id, pid, "agent process killed"),
        Ok(s) => tracing::warn!(node = %node_id, pid, %s, "kill failed"),
        Err(e) => tracing::warn!(node = %node_id, pid, error = %e, "kill failed"),
    }
}
