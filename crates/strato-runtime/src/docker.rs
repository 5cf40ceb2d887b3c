//! [`ContainerRuntime`] on the Docker engine API (bollard, over the engine's unix socket).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum,
    DeviceMapping, DeviceRequest, EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc::Sender;

use crate::frames::{LineSplitter, payload, unix_seconds};
use crate::sandbox::{self, PAUSE_IMAGE, PAUSE_PROGRAM, SANDBOX_MEMORY_BYTES, Sandboxes};
use strato_core::naming::{LABEL_NODE, LABEL_SANDBOX, LABEL_SANDBOX_NODE, sandbox_name};

use crate::{
    ContainerDetails, ContainerRuntime, ContainerSpec, ContainerUsage, ExecEvent, ExecStreamBox,
    JobContainer, OutputLine, OutputStream, OutputStreamBox, PullFailure, PullProgress,
    RegistryLogin, RuntimeError, Terminal, TerminalSize,
};

/// The shell an interactive terminal starts: a login shell, bash where the
/// image has it.
const LOGIN_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// The engine's socket when none is given.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Limit on the requests made while connecting (ping, version negotiation).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit on waiting for the engine's response headers to an ordinary request.
/// Long waits (`wait`, `logs`) answer with headers at once and stream after,
/// so this does not bound them; `stop` is given its grace on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// [`ContainerRuntime`] on a Docker engine reached over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    /// Output attachments made before a start (`ContainerSpec::attach_output`),
    /// by container id, until `logs` takes them (or `remove` drops them).
    attached: std::sync::Arc<std::sync::Mutex<HashMap<String, Attached>>>,
    /// The network sandboxes kept for one node's jobs (`crate::sandbox`).
    sandboxes: std::sync::Arc<std::sync::Mutex<Sandboxes>>,
}

/// A sandbox taken for a start: held (not swept) until the start is done
/// or dropped; one that no container came to name is removed then.
struct Joining {
    runtime: DockerRuntime,
    id: String,
    /// A container was created in it (and names it), or it was removed.
    settled: bool,
}

impl Drop for Joining {
    fn drop(&mut self) {
        self.runtime.sandboxes().joining.remove(&self.id);
        // A start cut short (its task aborted) before a container named
        // it: nothing else would remove it before the next sweep.
        if !self.settled
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let (runtime, id) = (self.runtime.clone(), self.id.clone());
            handle.spawn(async move {
                let _ = runtime.force_remove(&id).await;
            });
        }
    }
}

/// The first line of a container's output, read from an attachment made
/// before its start by a task of its own (`first_line`): `None` if there
/// was none that both sources cut alike.
#[derive(Debug)]
struct Attached(tokio::sync::oneshot::Receiver<Option<OutputLine>>);

/// How long `logs` waits for the attachment's first line before reading the
/// engine's log alone (a job that prints later loses nothing by it).
const FIRST_LINE_WAIT: Duration = Duration::from_secs(2);

/// The most first lines kept for `logs` to take.
const MAX_ATTACHMENTS: usize = 1_024;

/// Reads an attachment until the first complete line of either stream and
/// lets it go. The reading never waits on anyone, so the attachment never
/// holds the container's output back; it ends at the first line, at the
/// container's end, or once a stream passed a line's bound without one.
/// The line counts only if the engine's log cuts it alike: ended by a
/// newline, within the bound, valid UTF-8.
async fn first_line(attached: bollard::container::AttachContainerResults) -> Option<OutputLine> {
    let bollard::container::AttachContainerResults { mut output, input } = attached;
    let mut pending: [Vec<u8>; 2] = Default::default();
    while let Some(Ok(frame)) = output.next().await {
        // A container without a TTY writes only these; anything else (a
        // connection cut mid-frame) is not output.
        let (stream, bytes) = match &frame {
            LogOutput::StdOut { message } => (OutputStream::Stdout, message),
            LogOutput::StdErr { message } => (OutputStream::Stderr, message),
            _ => continue,
        };
        let buffer = &mut pending[stream_index(stream)];
        let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
            buffer.extend_from_slice(bytes);
            if buffer.len() > strato_core::limits::MAX_LOG_LINE_BYTES {
                return None;
            }
            continue;
        };
        buffer.extend_from_slice(&bytes[..=newline]);
        drop(input);
        if buffer.len() > strato_core::limits::MAX_LOG_LINE_BYTES
            || std::str::from_utf8(buffer).is_err()
        {
            return None;
        }
        let mut lines = Vec::new();
        LineSplitter::default().push(stream, buffer, &mut lines);
        return if lines.len() == 1 { lines.pop() } else { None };
    }
    None
}

impl DockerRuntime {
    fn sandboxes(&self) -> std::sync::MutexGuard<'_, Sandboxes> {
        self.sandboxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the sandbox kept ready, if there is one (held as joining until
    /// the guard goes), and starts making the next.
    fn take_sandbox(&self) -> Option<Joining> {
        let spare = {
            let mut sandboxes = self.sandboxes();
            let spare = sandboxes.spare.take();
            if let Some(id) = &spare {
                sandboxes.joining.insert(id.clone());
            }
            spare
        };
        self.make_sandbox_later();
        spare.map(|id| Joining {
            runtime: self.clone(),
            id,
            settled: false,
        })
    }

    /// Starts making a sandbox to keep ready, unless one is ready or being
    /// made or none is wanted. One that cannot be made is logged; the next
    /// job starts on a network of its own and tries again.
    fn make_sandbox_later(&self) {
        let (name, labels, image, generation) = {
            let mut sandboxes = self.sandboxes();
            let (Some((node, labels)), Some(image)) =
                (sandboxes.owner.clone(), sandboxes.image.clone())
            else {
                return;
            };
            if sandboxes.spare.is_some() || sandboxes.making.is_some() {
                return;
            }
            sandboxes.next += 1;
            let name = sandbox_name(&node, sandboxes.next);
            sandboxes.making = Some(name.clone());
            (name, labels, image, sandboxes.generation)
        };
        let runtime = self.clone();
        tokio::spawn(async move {
            let made = runtime.make_sandbox(&name, labels, &image).await;
            let unwanted = {
                let mut sandboxes = runtime.sandboxes();
                sandboxes.making = None;
                match made {
                    // Kept only for the owner it was made for.
                    Ok(id) if sandboxes.generation == generation => {
                        sandboxes.spare = Some(id);
                        None
                    }
                    Ok(id) => Some(id),
                    Err(e) => {
                        if matches!(e, RuntimeError::ImageNotFound(_)) {
                            // Pruned: checked and imported again at the
                            // next make.
                            sandboxes.image = None;
                        }
                        tracing::warn!(sandbox = %name, error = %e, "cannot make a network sandbox; the next job starts on a network of its own");
                        None
                    }
                }
            };
            if let Some(id) = unwanted {
                let _ = runtime.force_remove(&id).await;
                // One for the owner now, if any.
                runtime.make_sandbox_later();
            }
            if runtime.sandboxes().image.is_none() {
                let _ = runtime.pause_image().await;
            }
        });
    }

    /// Creates and starts a sandbox of `image` (the pause image's id): the
    /// pause program on the default bridge, as nobody, with nothing to
    /// spare.
    async fn make_sandbox(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        image: &str,
    ) -> Result<String, RuntimeError> {
        let spec = ContainerSpec {
            name: name.to_owned(),
            image: image.to_owned(),
            entrypoint: Some(vec![PAUSE_PROGRAM.to_owned()]),
            user: Some("65534:65534".to_owned()),
            memory_bytes: Some(SANDBOX_MEMORY_BYTES),
            pids_limit: Some(1),
            labels,
            ..ContainerSpec::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = match self
            .docker
            .create_container(Some(options), create_body(&spec))
            .await
        {
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::ImageNotFound(PAUSE_IMAGE.to_owned()));
            }
            created => created?,
        };
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.force_remove(&created.id).await;
            return Err(e.into());
        }
        Ok(created.id)
    }

    /// The id of the pause image: the image its tag names when that is
    /// the one this runtime writes (its one layer, by digest, and its
    /// program), else after loading it (`docker load`, which tags it
    /// again). Sandboxes are made from the id, never the tag, so a job's
    /// pull of the same name later changes nothing.
    async fn pause_image(&self) -> Result<String, RuntimeError> {
        if let Some(id) = self.sandboxes().image.clone() {
            return Ok(id);
        }
        let layer = sandbox::pause_layer_digest();
        let ours = |image: &bollard::models::ImageInspect| {
            let layers = image.root_fs.as_ref().and_then(|r| r.layers.as_deref());
            let entrypoint = image.config.as_ref().and_then(|c| c.entrypoint.as_deref());
            layers == Some(std::slice::from_ref(&layer))
                && entrypoint == Some(&[PAUSE_PROGRAM.to_owned()][..])
        };
        let image = match self.docker.inspect_image(PAUSE_IMAGE).await {
            Ok(image) if ours(&image) => image,
            Err(e) if status_of(&e) != Some(404) => return Err(e.into()),
            _ => {
                let options = bollard::query_parameters::ImportImageOptionsBuilder::new()
                    .quiet(true)
                    .build();
                let archive = bollard::body_full(sandbox::pause_archive().into());
                let mut stream = self.docker.import_image(options, archive, None);
                while let Some(item) = stream.next().await {
                    if let Some(error) = item?.error_detail.and_then(|d| d.message) {
                        return Err(DockerError::DockerStreamError { error }.into());
                    }
                }
                let image = self.docker.inspect_image(PAUSE_IMAGE).await?;
                if !ours(&image) {
                    return Err(DockerError::DockerStreamError {
                        error: format!("{PAUSE_IMAGE} names another image than the one loaded"),
                    }
                    .into());
                }
                image
            }
        };
        let id = image
            .id
            .ok_or_else(|| RuntimeError::ImageNotFound(PAUSE_IMAGE.to_owned()))?;
        self.sandboxes().image = Some(id.clone());
        Ok(id)
    }

    /// Removes the node's sandboxes that nothing holds: no container names
    /// it (`LABEL_SANDBOX`), and it is not the spare, being made or being
    /// joined. What this runtime holds is read after the sandboxes are
    /// listed and before the containers are, so a sandbox taken in between
    /// is either still joining or named by a container listed.
    async fn sweep_sandboxes(&self, node: &str) -> Result<(), RuntimeError> {
        let found = self.list(LABEL_SANDBOX_NODE, node).await?;
        if found.is_empty() {
            return Ok(());
        }
        let (mut held, making) = {
            let sandboxes = self.sandboxes();
            let held: std::collections::HashSet<String> = sandboxes
                .joining
                .iter()
                .chain(&sandboxes.spare)
                .cloned()
                .collect();
            (held, sandboxes.making.clone())
        };
        held.extend(
            self.list(LABEL_NODE, node)
                .await?
                .into_iter()
                .filter_map(|c| c.labels.get(LABEL_SANDBOX).cloned()),
        );
        for left in sandbox::unheld(&found, &held, making.as_deref()) {
            tracing::debug!(sandbox = %left.name, "removing a sandbox nothing holds");
            self.force_remove(&left.id).await?;
        }
        Ok(())
    }

    /// Whether the engine's machine runs the pause program.
    async fn engine_runs_pause(&self) -> Result<bool, RuntimeError> {
        let info = self.docker.info().await?;
        Ok(info.architecture.as_deref() == Some(sandbox::PAUSE_ARCHITECTURE))
    }

    /// Creates and starts `spec` in the sandbox `sandbox`'s network. `None`
    /// if that failed in a way a network of its own may not (the sandbox
    /// is gone): nothing of the try is left. The sandbox goes unless the
    /// container holds it.
    async fn start_in_sandbox(
        &self,
        spec: &ContainerSpec,
        mut joining: Joining,
    ) -> Option<Result<String, RuntimeError>> {
        let sandbox = joining.id.clone();
        let mut joined = spec.clone();
        joined.network = Some(format!("container:{sandbox}"));
        joined
            .labels
            .insert(LABEL_SANDBOX.to_owned(), sandbox.clone());
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self
            .docker
            .create_container(Some(options), create_body(&joined))
            .await
        {
            Ok(created) => {
                joining.settled = true;
                for warning in &created.warnings {
                    tracing::warn!(name = %spec.name, %warning, "docker warned on create");
                }
                if spec.attach_output {
                    self.attach(&created.id).await;
                }
                match self.docker.start_container(&created.id, None).await {
                    Ok(()) => Some(Ok(created.id)),
                    Err(e) => {
                        tracing::debug!(name = %spec.name, %sandbox, error = %e, "cannot start in the sandbox; starting on a network of its own");
                        self.attachments().remove(&created.id);
                        let _ = self.force_remove(&created.id).await;
                        let _ = self.force_remove(&sandbox).await;
                        None
                    }
                }
            }
            // A retried assignment: the container exists, on whatever
            // network its first try gave it.
            Err(e) if status_of(&e) == Some(409) => {
                joining.settled = true;
                let _ = self.force_remove(&sandbox).await;
                Some(self.adopt_existing(&spec.name).await)
            }
            Err(e) => {
                tracing::debug!(name = %spec.name, %sandbox, error = %e, "cannot create in the sandbox; creating on a network of its own");
                joining.settled = true;
                let _ = self.force_remove(&sandbox).await;
                None
            }
        }
    }

    /// Removes a container (force); Ok if it is gone or going.
    async fn force_remove(&self, id: &str) -> Result<(), RuntimeError> {
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

    fn attachments(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.attached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attaches to a created container's output, kept for its `logs`; on
    /// failure the output comes from the engine's log alone, as without.
    async fn attach(&self, id: &str) {
        let options = bollard::query_parameters::AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        match self.docker.attach_container(id, Some(options)).await {
            Ok(attached) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let _ = tx.send(first_line(attached).await);
                });
                let mut attachments = self.attachments();
                // Those whose logs were never read (a start that failed, a
                // follow that was abandoned) are few and small; past a bound
                // they go, and their containers' logs come from the log.
                if attachments.len() >= MAX_ATTACHMENTS {
                    attachments.clear();
                }
                attachments.insert(id.to_owned(), Attached(rx));
            }
            Err(e) => tracing::debug!(%id, error = %e, "attaching before the start"),
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
        Ok(Self {
            docker,
            endpoint,
            attached: std::sync::Arc::default(),
            sandboxes: std::sync::Arc::default(),
        })
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

    async fn pull(
        &self,
        image: &str,
        login: Option<RegistryLogin>,
        mut progress: Box<dyn FnMut(PullProgress) + Send>,
    ) -> Result<(), RuntimeError> {
        let (name, tag) = split_reference(image);
        let options = bollard::query_parameters::CreateImageOptions {
            from_image: Some(name.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let credentials = login.map(|l| bollard::auth::DockerCredentials {
            username: Some(l.username),
            password: Some(l.password),
            serveraddress: Some(l.server),
            ..Default::default()
        });
        let refused = |message: String| RuntimeError::Pull {
            image: image.to_owned(),
            failure: PullFailure::of(&message),
            message,
        };
        // Bytes per layer, as the engine reports each one.
        let mut layers: HashMap<String, (u64, u64)> = HashMap::new();
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(DockerError::DockerStreamError { error }) => return Err(refused(error)),
                Err(DockerError::DockerResponseServerError { message, .. }) => {
                    return Err(refused(message));
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(refused(error));
            }
            let (Some(id), Some(detail)) = (info.id, info.progress_detail) else {
                continue;
            };
            let downloading = info.status.as_deref() == Some("Downloading");
            let entry = layers.entry(id).or_default();
            match (detail.total, detail.current) {
                (Some(total), Some(current)) if downloading && total > 0 => {
                    *entry = (
                        u64::try_from(current).unwrap_or(0),
                        u64::try_from(total).unwrap_or(0),
                    );
                }
                _ if info.status.as_deref() == Some("Download complete") => entry.0 = entry.1,
                _ => continue,
            }
            progress(PullProgress {
                done_bytes: layers.values().map(|l| l.0).sum(),
                total_bytes: layers.values().map(|l| l.1).sum(),
            });
        }
        // The engine may answer with a stream that ends without the image.
        match self.ensure_image(image).await {
            Err(RuntimeError::ImageNotFound(_)) => Err(refused(format!("{image} was not pulled"))),
            other => other,
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        if spec.prepared_network
            && spec.network.is_none()
            && let Some(sandbox) = self.take_sandbox()
            && let Some(started) = self.start_in_sandbox(spec, sandbox).await
        {
            return started;
        }
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
                if spec.attach_output {
                    self.attach(&created.id).await;
                }
                if let Err(e) = self.docker.start_container(&created.id, None).await {
                    self.attachments().remove(&created.id);
                    return Err(e.into());
                }
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
        let attached = self.attachments().remove(id);
        let pump =
            futures_util::stream::once(pump_logs(self.docker.clone(), id.to_owned(), attached, tx))
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
        self.attachments().remove(id);
        // The sandbox it joined goes after it.
        let sandbox = match self.docker.inspect_container(id, None).await {
            Ok(found) => found
                .config
                .and_then(|c| c.labels)
                .and_then(|mut labels| labels.remove(LABEL_SANDBOX)),
            Err(_) => None,
        };
        self.force_remove(id).await?;
        if let Some(sandbox) = sandbox {
            self.force_remove(&sandbox).await?;
        }
        Ok(())
    }

    async fn prepare_networks(
        &self,
        node: &str,
        labels: BTreeMap<String, String>,
        keep_ready: bool,
    ) -> Result<(), RuntimeError> {
        let keep_ready = keep_ready && {
            let runs = self.engine_runs_pause().await?;
            if !runs {
                tracing::info!(
                    "the engine's machine is not x86-64: jobs start on networks of their own"
                );
            }
            runs
        };
        let replaced = {
            let mut sandboxes = self.sandboxes();
            let same = sandboxes
                .owner
                .as_ref()
                .is_some_and(|(owner, _)| owner == node);
            if same && keep_ready {
                None
            } else {
                // Another node's, or none wanted: what was kept goes.
                sandboxes.generation += 1;
                sandboxes.owner = keep_ready.then(|| (node.to_owned(), labels));
                sandboxes.next = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                sandboxes.spare.take()
            }
        };
        if let Some(spare) = replaced {
            self.force_remove(&spare).await?;
        }
        // Those an agent before this one left, or that a start cut short
        // left: what a container still holds stays, with it.
        self.sweep_sandboxes(node).await?;
        if keep_ready {
            self.pause_image().await?;
            self.make_sandbox_later();
        }
        Ok(())
    }

    async fn release_networks(&self) {
        let (node, spare) = {
            let mut sandboxes = self.sandboxes();
            sandboxes.generation += 1;
            let node = sandboxes.owner.take().map(|(node, _)| node);
            (node, sandboxes.spare.take())
        };
        if let Some(spare) = spare
            && let Err(e) = self.force_remove(&spare).await
        {
            tracing::warn!(sandbox = %spare, error = %e, "cannot remove the network sandbox");
        }
        if let Some(node) = node
            && let Err(e) = self.sweep_sandboxes(&node).await
        {
            tracing::warn!(%node, error = %e, "cannot remove the network sandboxes nothing holds");
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

    async fn remove_network(&self, name: &str) -> Result<bool, RuntimeError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_networks(&self, key: &str, value: &str) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])]);
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let networks = self.docker.list_networks(Some(options)).await?;
        Ok(networks.into_iter().filter_map(|n| n.name).collect())
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(labels.clone().into_iter().collect()),
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

    async fn image_bytes(&self, image: &str) -> Result<Option<u64>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(Some(
                found.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            )),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_image(&self, image: &str) -> Result<bool, RuntimeError> {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => Ok(true),
            // In use by a container (409), or gone already (404).
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn gpu_support(&self) -> Result<bool, RuntimeError> {
        let info = self.docker.info().await?;
        let runtime = info
            .runtimes
            .is_some_and(|r| r.keys().any(|name| name.starts_with("nvidia")));
        Ok(runtime || on_path(NVIDIA_HOOK))
    }

    async fn terminal(
        &self,
        container: &str,
        command: Option<&str>,
        env: Vec<String>,
        size: TerminalSize,
    ) -> Result<Terminal, RuntimeError> {
        let cmd = match command {
            Some(command) => vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()],
            None => vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                LOGIN_SHELL.to_owned(),
            ],
        };
        let config = bollard::models::ExecConfig {
            cmd: Some(cmd),
            env: Some(env),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(true),
            console_size: Some(vec![usize::from(size.rows), usize::from(size.columns)]),
            ..Default::default()
        };
        let created = self.docker.create_exec(container, config).await?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty: true,
                    output_capacity: None,
                }),
            )
            .await?;
        let bollard::exec::StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::NoSuchContainer(container.to_owned()));
        };
        let output = output.filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdIn { .. }) => None,
                Ok(
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message },
                ) => Some(Ok(message.to_vec())),
                Err(e) => Some(Err(RuntimeError::from(e))),
            }
        });
        Ok(Terminal {
            id: created.id,
            output: Box::pin(output),
            input,
        })
    }

    async fn resize_terminal(&self, id: &str, size: TerminalSize) -> Result<(), RuntimeError> {
        self.docker
            .resize_exec(
                id,
                bollard::query_parameters::ResizeExecOptions {
                    h: i32::from(size.rows),
                    w: i32::from(size.columns),
                },
            )
            .await?;
        Ok(())
    }

    async fn end_terminal(&self, id: &str) -> Result<(), RuntimeError> {
        let exec = self.docker.inspect_exec(id).await?;
        let (Some(true), Some(pid), Some(container)) = (exec.running, exec.pid, exec.container_id)
        else {
            return Ok(());
        };
        // The terminal's process as the container numbers it (the last of
        // NSpid): it leads its session and process group there.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let Some(inner) = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last())
            .and_then(|id| id.parse::<u32>().ok())
        else {
            return Ok(());
        };
        let config = bollard::models::ExecConfig {
            cmd: Some(vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!(
                    "kill -HUP -- -{inner} 2>/dev/null; sleep 2; kill -KILL -- -{inner} 2>/dev/null"
                ),
            ]),
            user: Some("0".to_owned()),
            ..Default::default()
        };
        let created = self.docker.create_exec(&container, config).await?;
        self.docker
            .start_exec(
                &created.id,
                Some(bollard::exec::StartExecOptions {
                    detach: true,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await?;
        Ok(())
    }

    async fn terminal_exit(&self, id: &str) -> Result<Option<i64>, RuntimeError> {
        let exec = self.docker.inspect_exec(id).await?;
        Ok(if exec.running == Some(true) {
            None
        } else {
            exec.exit_code
        })
    }

    async fn details(&self, id: &str) -> Result<ContainerDetails, RuntimeError> {
        let c = self.docker.inspect_container(id, None).await?;
        let env = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.env.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        // A container in a sandbox's network has the sandbox's address.
        let sandbox = c
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            .and_then(|mode| mode.strip_prefix("container:"))
            .map(str::to_owned);
        let ip = match sandbox {
            // Gone (its job's network with it): no address, the rest stands.
            Some(sandbox) => match self.docker.inspect_container(&sandbox, None).await {
                Ok(sandbox) => address(sandbox),
                Err(e) => {
                    tracing::debug!(%id, %sandbox, error = %e, "reading the sandbox's address");
                    None
                }
            },
            None => address(c),
        };
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

/// A container's address on the first network that gave it one.
fn address(c: bollard::models::ContainerInspectResponse) -> Option<std::net::IpAddr> {
    c.network_settings
        .and_then(|n| n.networks)
        .and_then(|nets| {
            nets.into_values()
                .filter_map(|e| e.ip_address)
                .find(|ip| !ip.is_empty())
        })
        .and_then(|ip| ip.parse().ok())
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

/// An image reference as the engine's pull takes it: the name, and the tag
/// or digest (`latest` when there is neither).
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// What Docker's built-in NVIDIA device driver runs to hand GPUs over
/// (from nvidia-container-toolkit).
const NVIDIA_HOOK: &str = "nvidia-container-runtime-hook";

/// Whether an executable `name` is on this process's PATH (the engine's
/// usually matches it on a machine set up with packages).
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// The agent's default limit on processes (threads included) in one job
/// container (`--job-pids-limit`).
pub const PIDS_LIMIT: i64 = 4_096;
/// Docker's smallest CPU limit, 0.01 CPU.
const MIN_NANO_CPUS: i64 = 10_000_000;

/// The engine's request body for `spec`.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let host_config = HostConfig {
        // The agent removes containers itself, after the result is stored.
        auto_remove: Some(false),
        // Docker's smallest CPU limit is 0.01: a smaller one must not round
        // to 0, which means no limit.
        nano_cpus: spec
            .cpus
            .filter(|cpus| *cpus > 0.0)
            .map(|cpus| ((cpus * 1e9).round() as i64).max(MIN_NANO_CPUS)),
        // No setuid binary gives a job more than it started with, and a
        // fork bomb stops at the pids limit.
        security_opt: {
            let mut opts = Vec::new();
            if !spec.new_privileges {
                opts.push("no-new-privileges".to_owned());
            }
            if spec.fuse_mounts_at.is_some() {
                // Docker's AppArmor profile forbids mount(2) even with the
                // capability.
                opts.push("apparmor=unconfined".to_owned());
            }
            (!opts.is_empty()).then_some(opts)
        },
        cap_add: spec
            .fuse_mounts_at
            .as_ref()
            .map(|_| vec!["SYS_ADMIN".to_owned()]),
        devices: spec.fuse_mounts_at.as_ref().map(|_| {
            vec![DeviceMapping {
                path_on_host: Some("/dev/fuse".to_owned()),
                path_in_container: Some("/dev/fuse".to_owned()),
                cgroup_permissions: Some("rwm".to_owned()),
            }]
        }),
        pids_limit: spec.pids_limit,
        memory: spec
            .memory_bytes
            .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
        // Without NET_RAW a job cannot forge another container's address
        // (the identity endpoint knows IMDS callers by address). A mount
        // helper keeps nothing but the capability to mount.
        cap_drop: Some(vec![if spec.fuse_mounts_at.is_some() {
            "ALL".to_owned()
        } else {
            "NET_RAW".to_owned()
        }]),
        binds: (!spec.mounts.is_empty()).then(|| {
            spec.mounts
                .iter()
                .map(|(host, container, read_only)| {
                    let access = if *read_only { "ro" } else { "rw" };
                    if spec.fuse_mounts_at.as_deref() == Some(container.as_str()) {
                        format!("{host}:{container}:{access},rshared")
                    } else {
                        format!("{host}:{container}:{access}")
                    }
                })
                .collect()
        }),
        network_mode: spec.network.clone(),
        // The GPUs, as `docker run --gpus device=UUID,...` asks for them.
        device_requests: (!spec.gpus.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                device_ids: Some(spec.gpus.clone()),
                capabilities: Some(vec![vec!["gpu".to_owned()]]),
                ..DeviceRequest::default()
            }]
        }),
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
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        entrypoint: spec.entrypoint.clone(),
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
async fn pump_logs(
    docker: Docker,
    id: String,
    attached: Option<Attached>,
    tx: Sender<Result<OutputLine, RuntimeError>>,
) {
    let mut pump = LogPump {
        lines: LineSplitter::default(),
        tx,
        skip: [0, 0],
    };
    if let Some(Attached(first)) = attached
        && let Ok(Ok(Some(line))) = tokio::time::timeout(FIRST_LINE_WAIT, first).await
    {
        // The engine's log has it too: read from the start, passing over it.
        pump.skip[stream_index(line.stream)] = 1;
        if pump.tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
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
    /// Complete lines (stdout, stderr) still to pass over: sent already
    /// from the attachment.
    skip: [u64; 2],
}

fn stream_index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
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
            let skip = &mut self.skip[stream_index(line.stream)];
            if *skip > 0 {
                *skip -= 1;
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            image: "img".into(),
            command: Vec::new(),
            env: Vec::new(),
            cpus: None,
            memory_bytes: None,
            labels: BTreeMap::new(),
            mounts: Vec::new(),
            network: None,
            hostname: None,
            pids_limit: None,
            new_privileges: false,
            user: None,
            gpus: Vec::new(),
            entrypoint: None,
            fuse_mounts_at: None,
            working_dir: None,
            attach_output: false,
            prepared_network: false,
        }
    }

    /// A mount helper gets FUSE and the capability to mount, and its mounts
    /// directory propagates to the host; a job container gets neither.
    #[test]
    fn only_a_mount_helper_may_mount_fuse_and_share_its_mounts() {
        let job = create_body(&ContainerSpec {
            mounts: vec![("/w/a".into(), "/mnt/a".into(), false)],
            ..spec()
        })
        .host_config
        .expect("host config");
        assert_eq!(job.cap_add, None);
        assert_eq!(job.devices, None);
        assert_eq!(job.binds, Some(vec!["/w/a:/mnt/a:rw".to_owned()]));
        assert_eq!(job.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        let helper = create_body(&ContainerSpec {
            mounts: vec![
                ("/w/m".into(), "/mnt/strato".into(), false),
                ("/ca.pem".into(), "/ca.pem".into(), true),
            ],
            fuse_mounts_at: Some("/mnt/strato".into()),
            working_dir: None,
            attach_output: false,
            prepared_network: false,
            entrypoint: Some(vec!["rclone".into()]),
            ..spec()
        });
        assert_eq!(helper.entrypoint, Some(vec!["rclone".to_owned()]));
        let host = helper.host_config.expect("host config");
        assert_eq!(host.cap_add, Some(vec!["SYS_ADMIN".to_owned()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.devices
                .and_then(|d| d.into_iter().next()?.path_on_host),
            Some("/dev/fuse".to_owned())
        );
        assert_eq!(
            host.binds,
            Some(vec![
                "/w/m:/mnt/strato:rw,rshared".to_owned(),
                "/ca.pem:/ca.pem:ro".to_owned()
            ])
        );
        assert!(
            host.security_opt
                .is_some_and(|o| o.contains(&"apparmor=unconfined".to_owned()))
        );
    }

    #[test]
    fn a_reference_splits_into_name_and_tag_or_digest() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_reference("127.0.0.1:5000/team/train:v2"),
            ("127.0.0.1:5000/team/train", "v2")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/train"),
            ("127.0.0.1:5000/train", "latest")
        );
        assert_eq!(
            split_reference("acr.io/x@sha256:abcd"),
            ("acr.io/x", "sha256:abcd")
        );
    }

    /// GPUs are asked for as `docker run --gpus device=UUID,...` does: one
    /// request to the NVIDIA driver, by UUID, with the `gpu` capability;
    /// none without GPUs.
    #[test]
    fn gpus_become_one_device_request_to_the_nvidia_driver() {
        let none = create_body(&spec()).host_config.expect("host config");
        assert_eq!(none.device_requests, None);
        let body = create_body(&ContainerSpec {
            gpus: vec!["GPU-a".into(), "GPU-b".into()],
            ..spec()
        });
        let requests = body
            .host_config
            .and_then(|h| h.device_requests)
            .expect("device requests");
        assert_eq!(
            requests,
            [DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(vec!["GPU-a".into(), "GPU-b".into()]),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..DeviceRequest::default()
            }]
        );
    }
}
