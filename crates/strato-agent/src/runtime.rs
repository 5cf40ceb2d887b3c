//! The agent's container runtime: the [`ContainerRuntime`] trait the agent
//! drives its jobs through, and [`DockerRuntime`], its implementation on the
//! Docker engine API (bollard, over the engine's unix socket).
//!
//! Containers are found again by name (`strato-<job>-<attempt>-<node>`) and by the
//! `strato.*` labels, so an agent that restarts can pick up the containers it
//! started. They are never auto-removed: the agent removes a container only
//! after the control plane has stored its result.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum,
    EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc::Sender;

/// Label naming the node a container belongs to.
pub const LABEL_NODE: &str = "strato.node";
/// Label naming the cluster a container belongs to.
pub const LABEL_CLUSTER: &str = "strato.cluster";
/// Label naming the job a container runs.
pub const LABEL_JOB: &str = "strato.job";
/// Label naming the attempt of the job a container runs.
pub const LABEL_ATTEMPT: &str = "strato.attempt";
/// Label marking a network Strato created for a cluster's gangs.
pub const LABEL_NETWORK: &str = "strato.network";

/// The engine's socket when none is given.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Limit on the requests made while connecting (ping, version negotiation).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit on waiting for the engine's response headers to an ordinary request.
/// Long waits (`wait`, `logs`) answer with headers at once and stream after,
/// so this does not bound them; `stop` is given its grace on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What the agent asks the runtime to run for one job attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The container's name, e.g. `strato-<job>-<attempt>-<node>`; the key that makes
    /// [`ContainerRuntime::create_and_start`] idempotent.
    pub name: String,
    /// The image, which must already be on the node.
    pub image: String,
    /// The command, run as-is with no shell (Docker's `Cmd`); empty keeps the
    /// image's default.
    pub command: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// CPU limit in cores (Docker's `NanoCpus`).
    pub cpus: Option<f64>,
    /// Memory limit in bytes (Docker's `Memory`).
    pub memory_bytes: Option<u64>,
    /// Labels, normally the `LABEL_*` keys.
    pub labels: BTreeMap<String, String>,
    /// Host directories bound into the container: (host path, container
    /// path, read-only).
    pub mounts: Vec<(String, String, bool)>,
    /// The network: `None` for the engine's default bridge, `host` for the
    /// machine's own, or the name of a network the container joins under
    /// its `hostname` (other containers there reach it by that name).
    pub network: Option<String>,
    /// The container's hostname (and its alias on `network`).
    pub hostname: Option<String>,
}

/// What an exec in a container produces, in order; [`ExecEvent::Exit`]
/// comes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output(OutputStream, Vec<u8>),
    Exit(i64),
}

/// The events of an exec; see [`ContainerRuntime::exec`].
pub type ExecStreamBox =
    Pin<Box<dyn futures_util::Stream<Item = Result<ExecEvent, RuntimeError>> + Send>>;

/// A container the runtime found, as [`ContainerRuntime::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContainer {
    /// The engine's container id.
    pub id: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    /// All of the container's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the container is running now.
    pub running: bool,
    /// The exit code, once the container has run and exited; `None` while it
    /// runs or if it never started.
    pub exit_code: Option<i64>,
}

impl JobContainer {
    /// The job and attempt its labels name, if both are there.
    pub fn attempt(&self) -> Option<(&str, u32)> {
        let job = self.labels.get(LABEL_JOB)?;
        let attempt = self.labels.get(LABEL_ATTEMPT)?.parse().ok()?;
        Some((job.as_str(), attempt))
    }
}

/// Which of the container's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// The stream the line was written to.
    pub stream: OutputStream,
    /// The line, without its trailing newline (a `\r` before it is kept).
    pub line: String,
}

/// What can go wrong talking to the container engine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine does not answer at its socket.
    #[error(
        "docker engine not reachable at {endpoint}: {reason}; run `cargo xtask setup` to install and start it"
    )]
    Unreachable {
        /// The socket path tried.
        endpoint: String,
        /// Why the engine could not be reached.
        reason: String,
    },
    /// The image is not on this node (the agent never pulls).
    #[error(
        "image {0:?} is not on this node and no registry is configured; build or load it first (`cargo xtask setup` builds the test images)"
    )]
    ImageNotFound(String),
    /// Any other error from the engine.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// A container's output as a stream of lines; see [`ContainerRuntime::logs`].
pub type OutputStreamBox =
    Pin<Box<dyn futures_util::Stream<Item = Result<OutputLine, RuntimeError>> + Send>>;

/// The side-effect boundary between the agent and the container engine.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Ok if the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Ok if the image is present locally; ImageNotFound otherwise (no pulls: no registry is configured).
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts the container. Idempotent: if a container with spec.name exists, starts it if it is not running and has never run, and returns its id, so a retried assignment never starts a second container.
    fn create_and_start(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// stdout and stderr from the container's start, split into lines (buffer partial lines per stream; flush a final unterminated line), following until the container exits.
    fn logs(&self, id: &str) -> OutputStreamBox;

    /// Waits for the container to exit and returns its exit code (non-zero codes are Ok too).
    fn wait(&self, id: &str) -> impl Future<Output = Result<i64, RuntimeError>> + Send;

    /// SIGTERM, then SIGKILL after `grace` (docker stop with a timeout). Ok if already stopped or gone.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes the container (force). Ok if already gone.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Every container, running or not, whose label `key` equals `value`.
    fn list(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<JobContainer>, RuntimeError>> + Send;

    /// Sends a signal (e.g. `SIGTERM`) to a running container's main process.
    fn signal(
        &self,
        id: &str,
        signal: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// A running container's usage: CPU seconds used, memory used and its
    /// limit (0 for none), in bytes.
    fn stats(&self, id: &str) -> impl Future<Output = Result<ContainerUsage, RuntimeError>> + Send;

    /// Creates the user-defined bridge network `name` if it does not exist.
    fn ensure_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Runs `/bin/sh -c command` in a running container, as a remote shell
    /// would, and streams its output and then its exit code. No stdin.
    fn exec(&self, container: &str, command: &str) -> ExecStreamBox;

    /// A container's environment and its address on its network (none
    /// while it does not run).
    fn details(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerDetails, RuntimeError>> + Send;
}

/// A running container's resource usage.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ContainerUsage {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
}

/// What the agent reads back from a container it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerDetails {
    pub env: Vec<(String, String)>,
    pub ip: Option<std::net::IpAddr>,
}

/// [`ContainerRuntime`] on a Docker engine reached over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
}

impl DockerRuntime {
    /// Removes a network Strato created; `Ok(false)` when it does not
    /// exist, an error while containers still use it.
    pub async fn remove_network_if_unused(&self, name: &str) -> Result<bool, RuntimeError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The address of the default bridge network's gateway: where job
    /// containers reach services on this host (172.17.0.1 by default).
    pub async fn bridge_gateway(&self) -> Result<std::net::IpAddr, RuntimeError> {
        let network = self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await?;
        let gateway = network
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.gateway)
            .and_then(|g| g.parse().ok());
        Ok(gateway.unwrap_or(std::net::IpAddr::from([172, 17, 0, 1])))
    }

    /// `socket`: a unix socket path, default /var/run/docker.sock. Fails with Unreachable (naming the socket) if the engine does not answer a ping.
    ///
    /// Negotiates the API version down to the engine's, so older engines
    /// (API 1.41, Docker 20.10) work.
    pub async fn connect(socket: Option<&str>) -> Result<Self, RuntimeError> {
        let endpoint = socket.unwrap_or(DEFAULT_SOCKET).to_owned();
        let unreachable = |reason: String| RuntimeError::Unreachable {
            endpoint: endpoint.clone(),
            reason,
        };
        let docker = Docker::connect_with_socket(
            &endpoint,
            CONNECT_TIMEOUT.as_secs(),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The negotiated version is shared by every clone of this client.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(format!("negotiating the API version: {e}")))?
            .with_timeout(REQUEST_TIMEOUT);
        tracing::debug!(%endpoint, version = ?docker.client_version(), "connected to the docker engine");
        Ok(Self { docker, endpoint })
    }

    /// Inspects the container named `name` and starts it if it has never
    /// run; returns its id.
    async fn adopt_existing(&self, name: &str) -> Result<String, RuntimeError> {
        let found = self.docker.inspect_container(name, None).await?;
        let id = found.id.unwrap_or_else(|| name.to_owned());
        let status = found.state.and_then(|s| s.status);
        if status == Some(ContainerStateStatusEnum::CREATED) {
            tracing::debug!(%name, %id, "container exists but never ran: starting it");
            // A concurrent start makes this answer 304, which is success.
            self.docker.start_container(&id, None).await?;
        } else {
            tracing::debug!(%name, %id, ?status, "container already exists: not starting it again");
        }
        Ok(id)
    }

    /// Completes a list entry: the summary has no exit code, so containers
    /// that are not running are inspected. `None` if the container went away
    /// in between.
    async fn job_container(
        &self,
        summary: ContainerSummary,
    ) -> Result<Option<JobContainer>, RuntimeError> {
        let Some(id) = summary.id else {
            return Ok(None);
        };
        let name = summary
            .names
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default();
        let labels = summary.labels.unwrap_or_default().into_iter().collect();
        let (running, exit_code) = if summary.state == Some(ContainerSummaryStateEnum::RUNNING) {
            (true, None)
        } else {
            let inspected = match self.docker.inspect_container(&id, None).await {
                Ok(inspected) => inspected,
                Err(e) if status_of(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let state = inspected.state.unwrap_or_default();
            let running = state.running.unwrap_or(false);
            let exited = matches!(
                state.status,
                Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
            );
            let exit_code = if !running && exited {
                state.exit_code
            } else {
                None
            };
            (running, exit_code)
        };
        Ok(Some(JobContainer {
            id,
            name,
            labels,
            running,
            exit_code,
        }))
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(|e| RuntimeError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ImageNotFound(image.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self
            .docker
            .create_container(Some(options), create_body(spec))
            .await
        {
            Ok(created) => {
                for warning in &created.warnings {
                    tracing::warn!(name = %spec.name, %warning, "docker warned on create");
                }
                self.docker.start_container(&created.id, None).await?;
                Ok(created.id)
            }
            // 409: a container with this name exists (a retried assignment).
            Err(e) if status_of(&e) == Some(409) => self.adopt_existing(&spec.name).await,
            // 404: the image is missing (create never pulls).
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ImageNotFound(spec.image.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn logs(&self, id: &str) -> OutputStreamBox {
        // The pump runs inside the returned stream (no task is spawned): it is
        // polled whenever the stream is, and dropped with it.
        let (tx, mut rx) = tokio::sync::mpsc::channel(LOG_CHANNEL_CAPACITY);
        let lines = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let pump = futures_util::stream::once(pump_logs(self.docker.clone(), id.to_owned(), tx))
            .filter_map(|()| async { None });
        Box::pin(futures_util::stream::select(lines, pump))
    }

    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        Ok(wait_for_exit(&self.docker, id).await?)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // Docker takes whole seconds; round up so the grace is never cut short.
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(secs).unwrap_or(i32::MAX))
            .build();
        // The engine answers only once the container has stopped, so the
        // request may take the whole grace period and then the kill.
        let docker = self
            .docker
            .clone()
            .with_timeout(REQUEST_TIMEOUT.saturating_add(Duration::from_secs(secs)));
        match docker.stop_container(id, Some(options)).await {
            // 304 (already stopped) is success in bollard; 404 is gone.
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // `v`: anonymous volumes go with the container, as with `docker run --rm`.
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::KillContainerOptionsBuilder::new()
            .signal(signal)
            .build();
        self.docker.kill_container(id, Some(options)).await?;
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<ContainerUsage, RuntimeError> {
        use futures_util::StreamExt as _;
        let options = bollard::query_parameters::StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stream = self.docker.stats(id, Some(options));
        let Some(sample) = stream.next().await else {
            return Ok(ContainerUsage::default());
        };
        let sample = sample?;
        let cpu_ns = sample
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = sample.memory_stats;
        // The engine reports the host's memory as the limit of an unlimited
        // container; the container's own limit is in its config.
        let limit = self
            .docker
            .inspect_container(id, None)
            .await?
            .host_config
            .and_then(|h| h.memory)
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0);
        Ok(ContainerUsage {
            cpu_seconds: cpu_ns as f64 / 1e9,
            memory_bytes: memory.as_ref().and_then(|m| m.usage).unwrap_or(0),
            memory_limit_bytes: limit,
        })
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(
                LABEL_NETWORK.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another agent of the cluster.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn exec(&self, container: &str, command: &str) -> ExecStreamBox {
        let docker = self.docker.clone();
        let container = container.to_owned();
        let command = command.to_owned();
        let events = async_stream(move |tx| async move {
            let config = bollard::models::ExecConfig {
                cmd: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), command]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                attach_stdin: Some(false),
                tty: Some(false),
                ..Default::default()
            };
            let created = docker.create_exec(&container, config).await?;
            let started = docker
                .start_exec(
                    &created.id,
                    Some(bollard::exec::StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                )
                .await?;
            if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
                while let Some(item) = output.next().await {
                    let event = match item? {
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            ExecEvent::Output(OutputStream::Stdout, message.to_vec())
                        }
                        LogOutput::StdErr { message } => {
                            ExecEvent::Output(OutputStream::Stderr, message.to_vec())
                        }
                        LogOutput::StdIn { .. } => continue,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            let code = docker
                .inspect_exec(&created.id)
                .await?
                .exit_code
                .unwrap_or(-1);
            let _ = tx.send(Ok(ExecEvent::Exit(code))).await;
            Ok(())
        });
        Box::pin(events)
    }

    async fn details(&self, id: &str) -> Result<ContainerDetails, RuntimeError> {
        let c = self.docker.inspect_container(id, None).await?;
        let env = c
            .config
            .and_then(|cfg| cfg.env)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let ip = c.network_settings.and_then(|n| {
            let from_networks = n.networks.and_then(|nets| {
                nets.into_values()
                    .filter_map(|e| e.ip_address)
                    .find(|ip| !ip.is_empty())
            });
            from_networks.and_then(|ip| ip.parse().ok())
        });
        Ok(ContainerDetails { env, ip })
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<JobContainer>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self.docker.list_containers(Some(options)).await?;
        let mut found = Vec::with_capacity(summaries.len());
        for summary in summaries {
            if let Some(container) = self.job_container(summary).await? {
                found.push(container);
            }
        }
        Ok(found)
    }
}

/// A stream of what `produce` sends; an error it returns ends the stream
/// with that error.
fn async_stream<T, F, Fut>(
    produce: F,
) -> impl futures_util::Stream<Item = Result<T, RuntimeError>> + Send
where
    T: Send + 'static,
    F: FnOnce(Sender<Result<T, RuntimeError>>) -> Fut,
    Fut: Future<Output = Result<(), DockerError>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let errors = tx.clone();
    let work = produce(tx);
    let pump = futures_util::stream::once(async move {
        if let Err(e) = work.await {
            let _ = errors.send(Err(e.into())).await;
        }
    })
    .filter_map(|()| async { None });
    let items = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    futures_util::stream::select(items, pump)
}

/// The engine's request body for `spec`.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let host_config = HostConfig {
        // The agent removes containers itself, after the result is stored.
        auto_remove: Some(false),
        nano_cpus: spec.cpus.map(|cpus| (cpus * 1e9).round() as i64),
        memory: spec
            .memory_bytes
            .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
        // Without NET_RAW a job cannot forge another container's address
        // (the identity endpoint knows IMDS callers by address).
        cap_drop: Some(vec!["NET_RAW".to_owned()]),
        binds: (!spec.mounts.is_empty()).then(|| {
            spec.mounts
                .iter()
                .map(|(host, container, read_only)| {
                    format!(
                        "{host}:{container}:{}",
                        if *read_only { "ro" } else { "rw" }
                    )
                })
                .collect()
        }),
        network_mode: spec.network.clone(),
        ..HostConfig::default()
    };
    let networking_config = match (&spec.network, &spec.hostname) {
        (Some(network), Some(hostname)) if network != "host" => Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings {
                    aliases: Some(vec![hostname.clone()]),
                    ..EndpointSettings::default()
                },
            )])),
        }),
        _ => None,
    };
    ContainerCreateBody {
        hostname: spec
            .hostname
            .clone()
            .filter(|_| spec.network.as_deref() != Some("host")),
        networking_config,
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        // No TTY, so stdout and stderr stay apart; no stdin.
        tty: Some(false),
        open_stdin: Some(false),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

/// The HTTP status of an error the engine answered with.
fn status_of(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Waits until the container is not running and returns its exit code.
async fn wait_for_exit(docker: &Docker, id: &str) -> Result<i64, DockerError> {
    let options = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let mut responses = docker.wait_container(id, Some(options));
    match responses.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard turns a non-zero exit into this error; it is a result.
        Some(Err(DockerError::DockerContainerWaitError { code, error })) => {
            if !error.is_empty() {
                tracing::debug!(%id, code, %error, "docker reported an error with the exit code");
            }
            Ok(code)
        }
        Some(Err(e)) => Err(e),
        None => Err(DockerError::IOError {
            err: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the wait for container {id} ended without an exit status"),
            ),
        }),
    }
}

/// Produces the lines of [`ContainerRuntime::logs`] into `tx`; returns early
/// if the receiver is dropped.
///
/// Following the log is not enough on its own: the engine may end a follow
/// when the container exits before it has sent everything the container
/// wrote (moby/moby#43860; on Docker 20.10 the unterminated last line is
/// often lost, and sometimes hundreds of lines). So the follow asks for
/// timestamps, remembers the last frame it delivered, and once the container
/// has stopped reads the log again from shortly before that frame, passing on
/// only what comes after it.
async fn pump_logs(docker: Docker, id: String, tx: Sender<Result<OutputLine, RuntimeError>>) {
    let mut pump = LogPump {
        lines: LineSplitter::default(),
        tx,
    };
    let result = async {
        let mut last = None;
        let mut frames = read_log(&docker, &id, true, 0);
        while let Some(frame) = frames.next().await {
            let frame = frame?;
            if let Some((stream, bytes)) = classify(&frame) {
                if !pump.push(stream, payload(bytes)).await {
                    return Ok(());
                }
                last = Some(frame);
            }
        }
        drop(frames);
        pump.catch_up(&docker, &id, last).await
    }
    .await;
    let _ = pump.finish(result).await;
}

/// Seconds read again before the last delivered frame's second when catching
/// up, against timestamps of the two streams being slightly out of order.
const CATCH_UP_MARGIN_SECS: i64 = 5;
/// Lines buffered between the log pump and the stream's reader.
const LOG_CHANNEL_CAPACITY: usize = 256;

/// The engine's log of `id` from `since` (unix seconds, 0: the start), with a
/// timestamp before every frame.
fn read_log(
    docker: &Docker,
    id: &str,
    follow: bool,
    since: i32,
) -> BoxStream<'static, Result<LogOutput, DockerError>> {
    let options = LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since)
        .build();
    docker.logs(id, Some(options)).boxed()
}

struct LogPump {
    lines: LineSplitter,
    tx: Sender<Result<OutputLine, RuntimeError>>,
}

impl LogPump {
    /// Splits `bytes` into lines and sends the complete ones; false if the
    /// receiver is gone.
    async fn push(&mut self, stream: OutputStream, bytes: &[u8]) -> bool {
        let mut complete = Vec::new();
        self.lines.push(stream, bytes, &mut complete);
        self.send_all(complete).await
    }

    async fn send_all(&mut self, lines: Vec<OutputLine>) -> bool {
        for line in lines {
            if self.tx.send(Ok(line)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Once the container has stopped, passes on what the engine wrote after
    /// `last` (the last frame the follow delivered) but the follow missed.
    async fn catch_up(
        &mut self,
        docker: &Docker,
        id: &str,
        last: Option<LogOutput>,
    ) -> Result<(), DockerError> {
        match wait_for_exit(docker, id).await {
            Ok(_) => {}
            // Removed meanwhile: there is no log left to read.
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(e),
        }
        let since = last
            .as_ref()
            .and_then(|frame| unix_seconds(frame.as_ref()))
            .and_then(|secs| i32::try_from(secs - CATCH_UP_MARGIN_SECS).ok())
            .unwrap_or(0)
            .max(0);
        // From shortly before the last frame; if that frame is not found
        // there (a clock step, say), from the start.
        for since in [since, 0] {
            let mut found = last.is_none();
            let mut frames = read_log(docker, id, false, since);
            while let Some(frame) = frames.next().await {
                let frame = frame?;
                let Some((stream, bytes)) = classify(&frame) else {
                    continue;
                };
                if found {
                    if !self.push(stream, payload(bytes)).await {
                        return Ok(());
                    }
                } else if last.as_ref() == Some(&frame) {
                    found = true;
                }
            }
            if found {
                return Ok(());
            }
            if since == 0 {
                break;
            }
        }
        tracing::warn!(%id, "the container's log no longer holds the last line followed; output written after it may be missing");
        Ok(())
    }

    /// Flushes the unterminated last lines, then sends the error if any.
    async fn finish(mut self, result: Result<(), DockerError>) -> bool {
        let mut rest = Vec::new();
        self.lines.flush(&mut rest);
        if !self.send_all(rest).await {
            return false;
        }
        match result {
            Ok(()) => true,
            Err(e) => self.tx.send(Err(e.into())).await.is_ok(),
        }
    }
}

/// The stream a frame belongs to, and its bytes; `None` for frames that are
/// no output (stdin).
fn classify(frame: &LogOutput) -> Option<(OutputStream, &[u8])> {
    match frame {
        LogOutput::StdErr { message } => Some((OutputStream::Stderr, message)),
        // Stdout, or raw output (TTY containers, which the runtime does not
        // create): both are the container's standard output.
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            Some((OutputStream::Stdout, message))
        }
        LogOutput::StdIn { .. } => None,
    }
}

/// A frame's output, after the timestamp and space the engine puts first.
fn payload(frame: &[u8]) -> &[u8] {
    frame
        .iter()
        .position(|&b| b == b' ')
        .map_or(frame, |space| &frame[space + 1..])
}

/// The unix time, in whole seconds, of the RFC 3339 UTC timestamp that starts
/// `frame` (`2026-11-23T12:00:38.158405088Z ...`).
fn unix_seconds(frame: &[u8]) -> Option<i64> {
    let stamp = std::str::from_utf8(frame.get(..19)?).ok()?;
    let field = |at: usize, len: usize| stamp.get(at..at + len)?.parse::<i64>().ok();
    let (year, month, day) = (field(0, 4)?, field(5, 2)?, field(8, 2)?);
    let (hour, minute, second) = (field(11, 2)?, field(14, 2)?, field(17, 2)?);
    if !(1..=12).contains(&month) || stamp.as_bytes()[10] != b'T' {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    // days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Splits output into lines per stream: bytes are buffered until a newline,
/// so a line split over frames (or a UTF-8 character split over frames)
/// comes out whole.
#[derive(Default)]
struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes` of `stream`, appending the lines they complete to `out`.
    fn push(&mut self, stream: OutputStream, bytes: &[u8], out: &mut Vec<OutputLine>) {
        let buffer = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            buffer.extend_from_slice(&rest[..newline]);
            rest = &rest[newline + 1..];
            out.push(OutputLine {
                stream,
                line: String::from_utf8_lossy(buffer).into_owned(),
            });
            buffer.clear();
        }
        buffer.extend_from_slice(rest);
    }

    /// Appends the unterminated last line of each stream, if any, to `out`.
    fn flush(&mut self, out: &mut Vec<OutputLine>) {
        for (stream, buffer) in [
            (OutputStream::Stdout, &mut self.stdout),
            (OutputStream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                out.push(OutputLine {
                    stream,
                    line: String::from_utf8_lossy(buffer).into_owned(),
                });
                buffer.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[(OutputStream, &[u8])]) -> Vec<(OutputStream, String)> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for (stream, bytes) in chunks {
            splitter.push(*stream, bytes, &mut out);
        }
        splitter.flush(&mut out);
        out.into_iter().map(|l| (l.stream, l.line)).collect()
    }

    #[test]
    fn lines_are_reassembled_per_stream_and_the_tail_is_flushed() {
        use OutputStream::{Stderr, Stdout};
        let got = split(&[
            (Stdout, b"a1\na"),
            (Stderr, b"e1"),
            (Stdout, b"2\n\nb"),
            (Stderr, b"\ne2\r\n"),
            (Stdout, b"3"),
        ]);
        assert_eq!(
            got,
            vec![
                (Stdout, "a1".to_owned()),
                (Stdout, "a2".to_owned()),
                (Stdout, String::new()),
                (Stderr, "e1".to_owned()),
                (Stderr, "e2\r".to_owned()),
                (Stdout, "b3".to_owned()),
            ]
        );
    }

    #[test]
    fn a_character_split_over_frames_comes_out_whole() {
        let bytes = "é\n".as_bytes();
        let got = split(&[
            (OutputStream::Stdout, &bytes[..1]),
            (OutputStream::Stdout, &bytes[1..]),
        ]);
        assert_eq!(got, vec![(OutputStream::Stdout, "é".to_owned())]);
    }

    #[test]
    fn the_timestamp_is_cut_from_a_frame_and_read() {
        let frame = b"2026-11-23T12:00:38.158405088Z hello world\n";
        assert_eq!(payload(frame), b"hello world\n");
        assert_eq!(payload(b"2026-11-23T12:00:38.158405088Z "), b"");
        assert_eq!(unix_seconds(frame), Some(1_795_435_238));
        assert_eq!(unix_seconds(b"1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(unix_seconds(b"2000-02-29T23:59:59Z"), Some(951_868_799));
        assert_eq!(unix_seconds(b"not a timestamp at all"), None);
        assert_eq!(unix_seconds(b"short"), None);
    }
}
