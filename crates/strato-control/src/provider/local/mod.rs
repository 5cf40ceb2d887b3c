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
use strato_core::naming::{
    self, LABEL_CONTROL_PLANE, LABEL_MOUNT_NODE, LABEL_NETWORK, LABEL_NODE, LABEL_SANDBOX_NODE,
};
use strato_runtime::{ContainerRuntime, DockerRuntime};

mod processes;

use processes::AgentMatch;

use super::{Capabilities, Holdings, NodeLaunch, NodeProvider, ProvidedNode, ProviderError};

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
    /// The CA certificate agents trust for the control plane
    /// (`DATA_DIR/tls/ca.crt`); `None`: the control plane serves
    /// plaintext (`--insecure-plaintext`) and so do its agents.
    pub control_plane_ca: Option<PathBuf>,
    /// Seconds an agent keeps trying to reach this control plane before it
    /// removes its containers and exits (`STRATO_GIVE_UP_AFTER`); `None`:
    /// forever.
    pub agent_give_up_after: Option<u64>,
}

pub struct LocalProvider {
    settings: LocalSettings,
    agents: AgentMatch,
    /// Agent processes started by this control plane, by node id.
    children: Mutex<HashMap<String, u32>>,
    /// Held while a cluster's gang network is made: Docker does not refuse
    /// a second network of the same name created at the same moment.
    networks: tokio::sync::Mutex<()>,
    docker: tokio::sync::OnceCell<DockerRuntime>,
}

impl LocalProvider {
    pub fn new(settings: LocalSettings) -> Self {
        LocalProvider {
            agents: AgentMatch::new(&settings.agent_binary, settings.control_plane_id.clone()),
            settings,
            children: Mutex::new(HashMap::new()),
            networks: tokio::sync::Mutex::new(()),
            docker: tokio::sync::OnceCell::new(),
        }
    }

    /// The directory of a node: `agent.env` (how its agent was started) and
    /// `agent.log` (what it wrote).
    pub fn node_dir(&self, node_id: &str) -> PathBuf {
        self.settings.nodes_dir.join(node_id)
    }

    /// The engine, connected (ping and version negotiation) once and
    /// shared by every call after; a failed connect is tried again next time.
    async fn docker(&self) -> Result<&DockerRuntime, ProviderError> {
        Ok(self
            .docker
            .get_or_try_init(|| DockerRuntime::connect(Some(&self.settings.docker_socket)))
            .await?)
    }

    /// The gang network of `cluster`: this control plane's alone.
    fn network_name(&self, cluster: &str) -> String {
        naming::network_name(Some(&self.settings.control_plane_id), cluster)
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
        let give_up = self
            .settings
            .agent_give_up_after
            .map(|s| s.to_string())
            .unwrap_or_default();
        // SSH (served only if the cluster enables it): a free loopback port
        // of its own, as several local agents share this machine.
        let ssh_listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(ProviderError::io("finding a port for the node's SSH"))?
            .to_string();
        let mut env = vec![
            ("STRATO_SSH_LISTEN", ssh_listen.as_str()),
            // Its "node" is this machine: SSH reaches only job containers.
            ("STRATO_SSH_NODE_SHELL", "false"),
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
        ];
        if !give_up.is_empty() {
            env.push(("STRATO_GIVE_UP_AFTER", give_up.as_str()));
        }
        if let Some(ca) = &ca {
            env.push(("STRATO_STORAGE_CA_FILE", ca.as_str()));
        }
        let control_ca = self
            .settings
            .control_plane_ca
            .as_ref()
            .map(|p| p.display().to_string());
        match &control_ca {
            Some(ca) => env.push(("STRATO_CONTROL_PLANE_CA", ca.as_str())),
            None => env.push(("STRATO_INSECURE_PLAINTEXT", "true")),
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
            // The control plane's database password stays with it.
            .env_remove("STRATO_DATABASE_URL")
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
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
        if !naming::is_node_id(&node.node_id) {
            // Not one this control plane made: nothing here to take down.
            tracing::warn!(node = %node.node_id, "not a node id; nothing removed");
            return Ok(());
        }
        let known = self.children().remove(&node.node_id);
        for pid in known.into_iter().chain(node.pid) {
            self.agents.kill(pid, &node.node_id).await;
        }
        // Remove the node's containers: a job must not outlive its node.
        // Only this control plane's (or those of agents older than the
        // label).
        let docker = self.docker().await?;
        for c in docker.list(LABEL_NODE, &node.node_id).await? {
            let owner = c.labels.get(LABEL_CONTROL_PLANE);
            if owner.is_some_and(|o| *o != self.settings.control_plane_id) {
                continue;
            }
            docker.remove(&c.id).await?;
            tracing::info!(node = %node.node_id, container = %c.name, "removed the node's container");
        }
        // The network kept ready for its next job (removing a job's
        // container above removed the sandbox it joined).
        for c in docker.list(LABEL_SANDBOX_NODE, &node.node_id).await? {
            let owner = c.labels.get(LABEL_CONTROL_PLANE);
            if owner.is_some_and(|o| *o != self.settings.control_plane_id) {
                continue;
            }
            docker.remove(&c.id).await?;
        }
        // Then the jobs' mount helpers: stopped, not killed, so that they
        // unmount.
        for c in docker.list(LABEL_MOUNT_NODE, &node.node_id).await? {
            let owner = c.labels.get(LABEL_CONTROL_PLANE);
            if owner.is_some_and(|o| *o != self.settings.control_plane_id) {
                continue;
            }
            if let Err(e) = docker.stop(&c.id, std::time::Duration::from_secs(10)).await {
                tracing::warn!(node = %node.node_id, container = %c.name, error = %e, "cannot stop the mount helper");
            }
            if let Err(e) = docker.remove(&c.id).await {
                tracing::warn!(node = %node.node_id, container = %c.name, error = %e, "cannot remove the mount helper");
            }
        }
        // Never through a mount that is left (a rw_mount would lose data).
        strato_runtime::remove_tree_on_one_filesystem(&self.node_dir(&node.node_id));
        Ok(())
    }

    /// Nodes with anything left here: a directory, an agent process or a
    /// container of this control plane; clusters with a gang network of it.
    async fn list_holdings(&self) -> Result<Holdings, ProviderError> {
        let mut nodes: BTreeMap<String, ProvidedNode> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&self.settings.nodes_dir) {
            for e in entries.flatten() {
                let node_id = e.file_name().to_string_lossy().into_owned();
                if naming::is_node_id(&node_id) {
                    node_of(&mut nodes, &node_id);
                }
            }
        }
        // Reading every process's /proc entries blocks.
        let agents = self.agents.clone();
        let processes = tokio::task::spawn_blocking(move || agents.all())
            .await
            .unwrap_or_default();
        for (pid, node_id) in processes {
            node_of(&mut nodes, &node_id).pid = Some(pid);
        }
        let docker = self.docker().await?;
        for c in docker
            .list(LABEL_CONTROL_PLANE, &self.settings.control_plane_id)
            .await?
        {
            let node = c
                .labels
                .get(LABEL_NODE)
                .or(c.labels.get(LABEL_SANDBOX_NODE));
            if let Some(node_id) = node.filter(|n| naming::is_node_id(n)) {
                node_of(&mut nodes, node_id);
            }
        }
        let clusters: BTreeSet<String> = docker
            .list_networks(LABEL_CONTROL_PLANE, &self.settings.control_plane_id)
            .await?
            .iter()
            .filter_map(|n| naming::cluster_of_network(&self.settings.control_plane_id, n))
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
                .ensure_network(&self.network_name(cluster), &self.network_labels(cluster))
                .await?;
            Ok(())
        })
    }

    fn delete_cluster<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let docker = self.docker().await?;
            let _one_at_a_time = self.networks.lock().await;
            let name = self.network_name(cluster);
            if docker.remove_network(&name).await? {
                tracing::info!(network = %name, "removed the cluster's gang network");
            }
            Ok(())
        })
    }

    fn holdings(&self) -> BoxFuture<'_, Result<Holdings, ProviderError>> {
        Box::pin(self.list_holdings())
    }
}
