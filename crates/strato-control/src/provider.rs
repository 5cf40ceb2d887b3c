//! Node providers: where nodes come from.
//!
//! - `local`: each node is a `strato-agent` process on this machine, started
//!   with its join token in the environment and running jobs in the local
//!   Docker engine. Removing a node kills the process and removes every
//!   container labelled with the node, so no orphan keeps running.
//! - `none`: no nodes; a cluster that wants some says so.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Mutex;

use strato_agent::runtime::{ContainerRuntime, DockerRuntime, LABEL_NODE};

use crate::store::NodeRecord;

/// What a provider needs to start a node.
#[derive(Debug, Clone)]
pub struct NodeLaunch {
    pub node_id: String,
    pub cluster: String,
    /// Secret: handed to the node's agent only, never logged.
    pub join_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no node provider is configured (--provider none); nodes cannot be created")]
    NoProvider,
    #[error("{0}")]
    Failed(String),
}

pub enum Provider {
    None,
    Local(Box<LocalProvider>),
}

impl Provider {
    /// Starts a node; returns the process id when there is one.
    pub async fn create_node(&self, launch: &NodeLaunch) -> Result<Option<u32>, ProviderError> {
        match self {
            Provider::None => Err(ProviderError::NoProvider),
            Provider::Local(p) => p.create_node(launch).await.map(Some),
        }
    }

    /// Takes a node down: its process and its containers.
    pub async fn delete_node(&self, node: &NodeRecord) -> Result<(), ProviderError> {
        match self {
            Provider::None => Ok(()),
            Provider::Local(p) => p.delete_node(node).await,
        }
    }
}

pub struct LocalProvider {
    agent_binary: PathBuf,
    endpoint: String,
    nodes_dir: PathBuf,
    docker_socket: String,
    storage_ca_file: Option<PathBuf>,
    /// The control plane's HTTP address: it serves the nodes' Scheduled
    /// Events documents.
    control_http: String,
    /// Agent processes started by this control plane, by node id.
    children: Mutex<HashMap<String, u32>>,
    /// Held while a cluster's gang network is made: Docker does not refuse
    /// a second network of the same name created at the same moment.
    networks: tokio::sync::Mutex<()>,
}

impl LocalProvider {
    pub fn new(
        agent_binary: PathBuf,
        endpoint: String,
        nodes_dir: PathBuf,
        docker_socket: String,
        storage_ca_file: Option<PathBuf>,
        control_http: String,
    ) -> Self {
        LocalProvider {
            agent_binary,
            endpoint,
            nodes_dir,
            docker_socket,
            storage_ca_file,
            control_http,
            children: Mutex::new(HashMap::new()),
            networks: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory of a node: `agent.env` (how its agent was started) and
    /// `agent.log` (what it wrote).
    pub fn node_dir(&self, node_id: &str) -> PathBuf {
        self.nodes_dir.join(node_id)
    }

    async fn create_node(&self, launch: &NodeLaunch) -> Result<u32, ProviderError> {
        let fail = |what: &str, e: std::io::Error| ProviderError::Failed(format!("{what}: {e}"));
        {
            // The cluster's gang network exists before any of its agents
            // starts, so they never race to create it.
            let _one_at_a_time = self.networks.lock().await;
            let docker = DockerRuntime::connect(Some(&self.docker_socket))
                .await
                .map_err(|e| ProviderError::Failed(e.to_string()))?;
            docker
                .ensure_network(&strato_agent::gang::network_name(&launch.cluster))
                .await
                .map_err(|e| ProviderError::Failed(format!("gang network: {e}")))?;
        }
        let dir = self.node_dir(&launch.node_id);
        std::fs::create_dir_all(&dir).map_err(|e| fail("creating the node directory", e))?;
        let work_dir = dir.join("work").display().to_string();
        let events_url = format!(
            "{}/scheduledevents/{}?api-version=2020-07-01",
            self.control_http, launch.node_id
        );
        let ca = self
            .storage_ca_file
            .as_ref()
            .map(|p| p.display().to_string());
        let mut env = vec![
            ("STRATO_CONTROL_PLANE", self.endpoint.as_str()),
            ("STRATO_JOIN_TOKEN", launch.join_token.as_str()),
            ("STRATO_NODE_NAME", launch.node_id.as_str()),
            ("STRATO_DOCKER_SOCKET", self.docker_socket.as_str()),
            ("STRATO_WORK_DIR", work_dir.as_str()),
            // Several local agents share this machine: each takes a free port.
            ("STRATO_METRICS_LISTEN", "127.0.0.1:0"),
            ("STRATO_SCHEDULED_EVENTS_URL", events_url.as_str()),
            // Every node shares this machine's engine: a gang's containers
            // meet on a Docker network of their cluster.
            ("STRATO_GANG_NETWORK", "cluster"),
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
            .map_err(|e| fail("writing agent.env", e))?;
        for (k, v) in &env {
            writeln!(file, "{k}={v}").map_err(|e| fail("writing agent.env", e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(|e| fail("opening agent.log", e))?;
        let mut child = tokio::process::Command::new(&self.agent_binary)
            .envs(env.iter().copied())
            .arg("--node-name")
            .arg(&launch.node_id)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail("opening agent.log", e))?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the control plane
            // does not take the nodes down with it.
            .process_group(0)
            .spawn()
            .map_err(|e| fail(&format!("starting {}", self.agent_binary.display()), e))?;
        let pid = child
            .id()
            .ok_or_else(|| ProviderError::Failed("agent exited at once".into()))?;
        self.children
            .lock()
            .map_err(|_| ProviderError::Failed("provider state poisoned".into()))?
            .insert(launch.node_id.clone(), pid);
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

    async fn delete_node(&self, node: &NodeRecord) -> Result<(), ProviderError> {
        let known = self
            .children
            .lock()
            .map_err(|_| ProviderError::Failed("provider state poisoned".into()))?
            .remove(&node.node_id);
        if let Some(pid) = known.or(node.pid) {
            kill_agent(pid, &node.node_id);
        }
        // Remove the node's containers: a job must not outlive its node.
        match DockerRuntime::connect(Some(&self.docker_socket)).await {
            Ok(docker) => {
                let containers = docker
                    .list(LABEL_NODE, &node.node_id)
                    .await
                    .map_err(|e| ProviderError::Failed(e.to_string()))?;
                for c in containers {
                    docker
                        .remove(&c.id)
                        .await
                        .map_err(|e| ProviderError::Failed(e.to_string()))?;
                    tracing::info!(node = %node.node_id, container = %c.name, "removed the node's container");
                }
                let _one_at_a_time = self.networks.lock().await;
                remove_gang_network(&docker, &node.cluster).await;
            }
            Err(e) => return Err(ProviderError::Failed(e.to_string())),
        }
        let _ = std::fs::remove_dir_all(self.node_dir(&node.node_id));
        Ok(())
    }
}

/// Removes a cluster's gang network once no container uses it (the last
/// node's removal does; earlier attempts fail quietly).
async fn remove_gang_network(docker: &DockerRuntime, cluster: &str) {
    let name = strato_agent::gang::network_name(cluster);
    match docker.remove_network_if_unused(&name).await {
        Ok(true) => tracing::info!(network = %name, "removed the cluster's gang network"),
        Ok(false) => {}
        Err(e) => tracing::debug!(network = %name, error = %e, "gang network kept"),
    }
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
