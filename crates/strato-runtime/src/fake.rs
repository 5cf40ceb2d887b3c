//! `FakeRuntime`: an in-memory container engine, for tests that drive the
//! agent (or many agents) without Docker. It keeps the contract of
//! [`ContainerRuntime`]: create-and-start is idempotent by name, logs follow
//! until the container exits, `wait` returns its exit code, a stopped or
//! SIGTERMed container exits 143 and a SIGKILLed one 137, and containers stay
//! until removed. A test plays the job's part: it prints lines into a
//! container and makes it exit ([`FakeRuntime::print`], [`FakeRuntime::exit`]).
//!
//! Not for production: it runs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;

use crate::{
    ContainerDetails, ContainerRuntime, ContainerSpec, ContainerUsage, ExecEvent, ExecStreamBox,
    JobContainer, OutputLine, OutputStream, OutputStreamBox, PullProgress, RegistryLogin,
    RuntimeError, Terminal, TerminalSize,
};

/// Exit code of a process ended by SIGTERM, as a shell reports it.
pub const EXIT_SIGTERM: i64 = 143;
/// Exit code of a process ended by SIGKILL.
pub const EXIT_SIGKILL: i64 = 137;

/// One container of the fake engine.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    pub id: String,
    /// What it was created with.
    pub spec: ContainerSpec,
    /// Its output so far, in order.
    pub output: Vec<OutputLine>,
    /// Set once it has exited.
    pub exit_code: Option<i64>,
    /// The signals sent to it, in order (`stop` counts as `SIGTERM`).
    pub signals: Vec<String>,
    /// The commands run in it with `exec`.
    pub execs: Vec<String>,
}

impl FakeContainer {
    /// Whether it runs now (created containers start at once).
    pub fn running(&self) -> bool {
        self.exit_code.is_none()
    }

    fn summary(&self) -> JobContainer {
        JobContainer {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            labels: self.spec.labels.clone(),
            running: self.running(),
            exit_code: self.exit_code,
        }
    }
}

#[derive(Debug, Default)]
struct Engine {
    next_id: u64,
    /// By id.
    containers: BTreeMap<String, FakeContainer>,
    /// Networks by name, with their labels.
    networks: BTreeMap<String, BTreeMap<String, String>>,
    missing_images: BTreeSet<String>,
    unreachable: bool,
    /// Whether it hands GPUs to containers (as the NVIDIA runtime would).
    gpu_support: bool,
}

impl Engine {
    /// The id of the container called `key` (an id or a name, as Docker
    /// accepts either).
    fn id_of(&self, key: &str) -> Option<String> {
        if self.containers.contains_key(key) {
            return Some(key.to_owned());
        }
        self.containers
            .values()
            .find(|c| c.spec.name == key)
            .map(|c| c.id.clone())
    }

    fn container(&mut self, key: &str) -> Result<&mut FakeContainer, RuntimeError> {
        let id = self.id_of(key).ok_or_else(|| no_such_container(key))?;
        self.containers
            .get_mut(&id)
            .ok_or_else(|| no_such_container(key))
    }
}

fn no_such_container(key: &str) -> RuntimeError {
    RuntimeError::NoSuchContainer(key.to_owned())
}

/// The in-memory engine; clones share it.
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    engine: Arc<Mutex<Engine>>,
    /// Bumped on every change, so that waiters (logs, wait) wake.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            engine: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the engine one with (or without) the NVIDIA container runtime.
    pub fn set_gpu_support(&self, supported: bool) {
        self.engine().gpu_support = supported;
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A test that panicked while holding the lock has failed already;
        // the state is still readable.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the engine and wakes everyone waiting on it.
    fn change<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let out = f(&mut self.engine());
        self.changes.send_modify(|n| *n += 1);
        out
    }

    /// Every container, in the order they were created.
    pub fn containers(&self) -> Vec<FakeContainer> {
        let mut all: Vec<_> = self.engine().containers.values().cloned().collect();
        all.sort_by_key(|c| c.id[5..].parse::<u64>().unwrap_or(u64::MAX));
        all
    }

    /// The container called `key` (id or name), if it exists.
    pub fn container(&self, key: &str) -> Option<FakeContainer> {
        let engine = self.engine();
        let id = engine.id_of(key)?;
        engine.containers.get(&id).cloned()
    }

    /// The networks that exist now.
    pub fn networks(&self) -> BTreeSet<String> {
        self.engine().networks.keys().cloned().collect()
    }

    /// Makes `image` missing from the engine (every image is present
    /// otherwise).
    pub fn remove_image(&self, image: &str) {
        self.change(|e| e.missing_images.insert(image.to_owned()));
    }

    /// Makes the engine stop (or start again) answering.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.change(|e| e.unreachable = unreachable);
    }

    /// The job in container `key` prints `line` on `stream`.
    pub fn print(&self, key: &str, stream: OutputStream, line: &str) -> Result<(), RuntimeError> {
        self.change(|e| {
            let c = e.container(key)?;
            if c.running() {
                c.output.push(OutputLine {
                    stream,
                    line: line.to_owned(),
                });
            }
            Ok(())
        })
    }

    /// The job in container `key` exits with `code` (no-op once exited).
    pub fn exit(&self, key: &str, code: i64) -> Result<(), RuntimeError> {
        self.change(|e| {
            let c = e.container(key)?;
            c.exit_code.get_or_insert(code);
            Ok(())
        })
    }

    /// A receiver that changes on every change of the engine.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until `condition` holds for the engine's containers, up to
    /// `patience` (a bound for a broken test, not a pace): the condition is
    /// checked on every change, never on a timer.
    pub async fn wait_until(
        &self,
        patience: Duration,
        mut condition: impl FnMut(&[FakeContainer]) -> bool,
    ) -> Result<Vec<FakeContainer>, Vec<FakeContainer>> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let now = self.containers();
            if condition(&now) {
                return Ok(now);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(self.containers()),
            }
        }
    }

    fn check_reachable(&self) -> Result<(), RuntimeError> {
        if self.engine().unreachable {
            return Err(RuntimeError::Unreachable {
                endpoint: "fake".into(),
                reason: "the fake engine was made unreachable".into(),
            });
        }
        Ok(())
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.check_reachable()
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.check_reachable()?;
        if self.engine().missing_images.contains(image) {
            return Err(RuntimeError::ImageNotFound(image.to_owned()));
        }
        Ok(())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.ensure_image(&spec.image).await?;
        self.change(|e| {
            if let Some(id) = e.id_of(&spec.name) {
                return Ok(id);
            }
            // As Docker: a container joins only a network that exists.
            if let Some(network) = spec.network.as_deref().filter(|n| *n != "host")
                && !e.networks.contains_key(network)
            {
                return Err(RuntimeError::NoSuchNetwork(network.to_owned()));
            }
            e.next_id += 1;
            let id = format!("fake-{}", e.next_id);
            e.containers.insert(
                id.clone(),
                FakeContainer {
                    id: id.clone(),
                    spec: spec.clone(),
                    output: Vec::new(),
                    exit_code: None,
                    signals: Vec::new(),
                    execs: Vec::new(),
                },
            );
            Ok(id)
        })
    }

    fn logs(&self, id: &str) -> OutputStreamBox {
        let this = self.clone();
        let changes = self.changes.subscribe();
        let key = id.to_owned();
        futures_util::stream::unfold(
            (this, changes, key, 0usize),
            |(this, mut changes, key, next)| async move {
                loop {
                    let (line, exited) = match this.container(&key) {
                        None => (None, true),
                        Some(c) => (c.output.get(next).cloned(), !c.running()),
                    };
                    if let Some(line) = line {
                        return Some((Ok(line), (this, changes, key, next + 1)));
                    }
                    if exited || changes.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
        .boxed()
    }

    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        let mut changes = self.changes.subscribe();
        loop {
            match self.container(id) {
                None => return Err(no_such_container(id)),
                Some(c) => {
                    if let Some(code) = c.exit_code {
                        return Ok(code);
                    }
                }
            }
            if changes.changed().await.is_err() {
                return Err(no_such_container(id));
            }
        }
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.signal(id, "SIGTERM").await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.change(|e| {
            if let Some(id) = e.id_of(id) {
                e.containers.remove(&id);
            }
        });
        Ok(())
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<JobContainer>, RuntimeError> {
        self.check_reachable()?;
        Ok(self
            .containers()
            .iter()
            .filter(|c| c.spec.labels.get(key).map(String::as_str) == Some(value))
            .map(FakeContainer::summary)
            .collect())
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.change(|e| {
            let Ok(c) = e.container(id) else {
                return Ok(()); // gone: nothing to signal, as `stop` allows
            };
            c.signals.push(signal.to_owned());
            if c.running() {
                match signal {
                    "SIGTERM" | "TERM" => c.exit_code = Some(EXIT_SIGTERM),
                    "SIGKILL" | "KILL" => c.exit_code = Some(EXIT_SIGKILL),
                    _ => {}
                }
            }
            Ok(())
        })
    }

    async fn stats(&self, id: &str) -> Result<ContainerUsage, RuntimeError> {
        let c = self.container(id).ok_or_else(|| no_such_container(id))?;
        Ok(ContainerUsage {
            cpu_seconds: 0.0,
            memory_bytes: 0,
            memory_limit_bytes: c.spec.memory_bytes.unwrap_or(0),
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.check_reachable()?;
        self.change(|e| {
            e.networks
                .entry(name.to_owned())
                .or_insert_with(|| labels.clone());
        });
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<bool, RuntimeError> {
        self.check_reachable()?;
        self.change(|e| {
            let in_use = e
                .containers
                .values()
                .any(|c| c.running() && c.spec.network.as_deref() == Some(name));
            if in_use {
                return Err(RuntimeError::NetworkInUse(name.to_owned()));
            }
            Ok(e.networks.remove(name).is_some())
        })
    }

    async fn list_networks(&self, key: &str, value: &str) -> Result<Vec<String>, RuntimeError> {
        self.check_reachable()?;
        Ok(self
            .engine()
            .networks
            .iter()
            .filter(|(_, labels)| labels.get(key).map(String::as_str) == Some(value))
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn exec(&self, container: &str, command: &str) -> ExecStreamBox {
        let ran = self.change(|e| {
            let c = e.container(container)?;
            if !c.running() {
                return Err(no_such_container(container));
            }
            c.execs.push(command.to_owned());
            Ok(())
        });
        let events = match ran {
            Ok(()) => vec![Ok(ExecEvent::Exit(0))],
            Err(e) => vec![Err(e)],
        };
        futures_util::stream::iter(events).boxed()
    }

    /// A pull makes a missing image present, in one step of progress.
    async fn pull(
        &self,
        image: &str,
        _login: Option<RegistryLogin>,
        mut progress: Box<dyn FnMut(PullProgress) + Send>,
    ) -> Result<(), RuntimeError> {
        self.change(|e| e.missing_images.remove(image));
        progress(PullProgress {
            done_bytes: 1,
            total_bytes: 1,
        });
        Ok(())
    }

    /// Every present image is a megabyte.
    async fn image_bytes(&self, image: &str) -> Result<Option<u64>, RuntimeError> {
        Ok((!self.engine().missing_images.contains(image)).then_some(1 << 20))
    }

    /// Removing an image makes it missing.
    async fn remove_image(&self, image: &str) -> Result<bool, RuntimeError> {
        Ok(self.change(|e| e.missing_images.insert(image.to_owned())))
    }

    async fn gpu_support(&self) -> Result<bool, RuntimeError> {
        Ok(self.engine().gpu_support)
    }

    /// A terminal that shows what is typed into it (a loopback), in a
    /// running container; its exit code is 0.
    async fn terminal(
        &self,
        container: &str,
        command: Option<&str>,
        _env: Vec<String>,
        _size: TerminalSize,
    ) -> Result<Terminal, RuntimeError> {
        self.change(|e| {
            let c = e.container(container)?;
            if !c.running() {
                return Err(no_such_container(container));
            }
            c.execs.push(command.unwrap_or("(login shell)").to_owned());
            Ok(())
        })?;
        let (input, output) = tokio::io::duplex(4096);
        let output = chunks(output);
        Ok(Terminal {
            id: format!("fake-terminal-{container}"),
            output,
            input: Box::pin(input),
        })
    }

    async fn resize_terminal(&self, _id: &str, _size: TerminalSize) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn end_terminal(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn terminal_exit(&self, _id: &str) -> Result<Option<i64>, RuntimeError> {
        Ok(Some(0))
    }

    async fn details(&self, id: &str) -> Result<ContainerDetails, RuntimeError> {
        let c = self.container(id).ok_or_else(|| no_such_container(id))?;
        Ok(ContainerDetails {
            env: c.spec.env.clone(),
            ip: c
                .running()
                .then_some(std::net::IpAddr::from([127, 0, 0, 1])),
        })
    }
}

/// What is read from `reader`, as a stream of chunks, until it ends.
fn chunks(
    reader: tokio::io::DuplexStream,
) -> Pin<Box<dyn futures_util::Stream<Item = Result<Vec<u8>, RuntimeError>> + Send>> {
    Box::pin(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 4096];
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), reader))
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "strato-test/busybox:latest".into(),
            command: vec!["true".into()],
            env: vec![("A".into(), "1".into())],
            cpus: None,
            memory_bytes: Some(1 << 20),
            labels: [("strato.job".to_owned(), "j".to_owned())].into(),
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

    #[tokio::test]
    async fn create_is_idempotent_and_logs_follow_until_exit() {
        let rt = FakeRuntime::new();
        let id = rt.create_and_start(&spec("c1")).await.expect("create");
        assert_eq!(rt.create_and_start(&spec("c1")).await.expect("again"), id);
        assert_eq!(rt.containers().len(), 1);
        let mut logs = rt.logs(&id);
        rt.print("c1", OutputStream::Stdout, "hello")
            .expect("print");
        let first = logs.next().await.expect("a line").expect("ok");
        assert_eq!(first.line, "hello");
        rt.print("c1", OutputStream::Stderr, "bye").expect("print");
        rt.exit("c1", 3).expect("exit");
        assert_eq!(
            logs.next().await.expect("a line").expect("ok").line,
            "bye",
            "lines printed before the exit still come"
        );
        assert!(logs.next().await.is_none(), "logs end with the container");
        assert_eq!(rt.wait(&id).await.expect("wait"), 3);
        let listed = rt.list("strato.job", "j").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].exit_code, Some(3));
        rt.remove(&id).await.expect("remove");
        assert!(rt.containers().is_empty());
    }

    #[tokio::test]
    async fn stop_and_kill_end_the_job_like_signals() {
        let rt = FakeRuntime::new();
        rt.create_and_start(&spec("a")).await.expect("create");
        rt.create_and_start(&spec("b")).await.expect("create");
        rt.stop("a", Duration::from_secs(1)).await.expect("stop");
        rt.signal("b", "SIGKILL").await.expect("kill");
        assert_eq!(rt.wait("a").await.expect("wait"), EXIT_SIGTERM);
        assert_eq!(rt.wait("b").await.expect("wait"), EXIT_SIGKILL);
        assert_eq!(rt.container("a").expect("a").signals, ["SIGTERM"]);
    }

    #[tokio::test]
    async fn a_container_joins_only_a_network_that_exists() {
        let rt = FakeRuntime::new();
        let on_net = ContainerSpec {
            network: Some("strato-c".into()),
            ..spec("n")
        };
        assert!(matches!(
            rt.create_and_start(&on_net).await,
            Err(RuntimeError::NoSuchNetwork(_))
        ));
        rt.ensure_network("strato-c", &BTreeMap::new())
            .await
            .expect("network");
        rt.create_and_start(&on_net).await.expect("now it joins");
        assert!(matches!(
            rt.remove_network("strato-c").await,
            Err(RuntimeError::NetworkInUse(_))
        ));
        rt.exit("n", 0).expect("exit");
        assert_eq!(rt.remove_network("strato-c").await.ok(), Some(true));
    }

    #[tokio::test]
    async fn missing_images_and_an_unreachable_engine_fail_as_docker_would() {
        let rt = FakeRuntime::new();
        rt.remove_image("strato-test/busybox:latest");
        assert!(matches!(
            rt.create_and_start(&spec("x")).await,
            Err(RuntimeError::ImageNotFound(_))
        ));
        rt.set_unreachable(true);
        assert!(matches!(
            rt.ping().await,
            Err(RuntimeError::Unreachable { .. })
        ));
    }

    #[tokio::test]
    async fn wait_until_sees_a_change_made_later() {
        let rt = FakeRuntime::new();
        let waiter = {
            let rt = rt.clone();
            tokio::spawn(async move {
                rt.wait_until(Duration::from_secs(30), |c| c.len() == 1)
                    .await
                    .map(|c| c.len())
            })
        };
        rt.create_and_start(&spec("later")).await.expect("create");
        assert_eq!(waiter.await.expect("join"), Ok(1));
    }
}
