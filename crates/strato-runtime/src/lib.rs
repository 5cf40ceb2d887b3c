//! The container runtime: the [`ContainerRuntime`] trait that the agent
//! drives its jobs through and the local provider cleans up with,
//! [`DockerRuntime`], its implementation on the Docker engine API (bollard,
//! over the engine's unix socket), and, with the `fake` feature,
//! [`fake::FakeRuntime`], an in-memory engine for tests. Beside it the other
//! boundaries both binaries share: the [`Clock`], [`write_private`]
//! for their keys and secrets, and [`https`], the TLS listener of their
//! side ports.
//!
//! Containers are found again by name (`strato-<job>-<attempt>-<node>`) and by the
//! `strato.*` labels, so an agent that restarts can pick up the containers it
//! started. They are never auto-removed: the agent removes a container only
//! after the control plane has stored its result.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

mod clock;
mod docker;
#[cfg(feature = "fake")]
pub mod fake;
mod files;
mod frames;
pub mod https;
mod sandbox;

#[cfg(feature = "fake")]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use docker::{DockerRuntime, PIDS_LIMIT};
pub use files::{remove_tree_on_one_filesystem, write_private};
pub use sandbox::PAUSE_IMAGE;
pub use strato_core::naming::{
    LABEL_ATTEMPT, LABEL_CLUSTER, LABEL_CONTROL_PLANE, LABEL_JOB, LABEL_NETWORK, LABEL_NODE,
    LABEL_SANDBOX, LABEL_SANDBOX_NODE,
};

/// What the agent asks the runtime to run for one job attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// The container's name, e.g. `strato-<job>-<attempt>-<node>`; the key that makes
    /// [`ContainerRuntime::create_and_start`] idempotent.
    pub name: String,
    /// The image, which must already be on the node.
    pub image: String,
    /// The command, run as-is with no shell (Docker's `Cmd`); empty keeps the
    /// image's default.
    pub command: Vec<String>,
    /// The program the command is given to (Docker's `Entrypoint`); `None`
    /// keeps the image's.
    pub entrypoint: Option<Vec<String>>,
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
    /// The most processes (threads included) in the container; `None`: no
    /// limit of its own.
    pub pids_limit: Option<i64>,
    /// Whether its processes may gain privileges (setuid binaries such as
    /// `sudo`); off for job containers unless the agent allows it.
    pub new_privileges: bool,
    /// Who its command runs as (`NAME`, `UID`, `UID:GID`); `None`: the
    /// image's `USER`.
    pub user: Option<String>,
    /// The node's GPUs it gets, by UUID, through the engine's NVIDIA device
    /// driver (a device request, as `docker run --gpus`); empty: none.
    pub gpus: Vec<String>,
    /// For the agent's mount helpers only, never a job: the container may
    /// mount FUSE filesystems (it gets `/dev/fuse` and `CAP_SYS_ADMIN`,
    /// unconfined by AppArmor), and what it mounts under this container path,
    /// which must be the target of one of `mounts`, appears on the host
    /// (`rshared` propagation; the host path must be on a shared mount).
    pub fuse_mounts_at: Option<String>,
    /// The directory the command starts in (Docker's `WorkingDir`); `None`:
    /// the image's `WORKDIR`.
    pub working_dir: Option<String>,
    /// Attach to the container's output before it starts, so that its first
    /// line reaches [`ContainerRuntime::logs`] without waiting for the engine
    /// (which answers a logs request only once it has handled the exit of a
    /// container that ends at once); the rest still comes from the engine's
    /// log. A task reads the attachment up to the first line and lets it go,
    /// so it never holds the container's output back. For job containers,
    /// whose `logs` are read at once.
    pub attach_output: bool,
    /// The container may join a network sandbox made ready before it
    /// (see [`ContainerRuntime::prepare_networks`]) instead of waiting for
    /// a network of its own on the default bridge; only with `network`
    /// `None`. For job containers, whose start their user waits for.
    pub prepared_network: bool,
}

/// What an exec in a container produces, in order; [`ExecEvent::Exit`]
/// comes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output(OutputStream, Vec<u8>),
    Exit(i64),
}

/// How to log in to a registry for a pull.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// HOST[:PORT].
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"(redacted)")
            .finish()
    }
}

/// How far a pull is: bytes downloaded of the layers whose size is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

impl PullProgress {
    /// `41% (1.2 of 2.9 GB)`, or `starting` before any size is known.
    pub fn describe(&self) -> String {
        if self.total_bytes == 0 {
            return "starting".to_owned();
        }
        let done = self.done_bytes.min(self.total_bytes);
        let percent = done * 100 / self.total_bytes;
        let (unit, div) = if self.total_bytes >= 1_000_000_000 {
            ("GB", 1e9)
        } else {
            ("MB", 1e6)
        };
        format!(
            "{percent}% ({:.1} of {:.1} {unit})",
            done as f64 / div,
            self.total_bytes as f64 / div
        )
    }
}

/// Why a registry refused a pull, as Docker's message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// No credentials, or the wrong ones.
    Unauthorized,
    /// No such repository or tag.
    NotFound,
    /// The registry could not be reached (DNS, connection, TLS, timeout).
    Unreachable,
    Other,
}

impl PullFailure {
    /// Reads Docker's error message.
    pub fn of(message: &str) -> PullFailure {
        let m = message.to_ascii_lowercase();
        // The network's words, checked as Go's errors print them (never a
        // bare "tls", which repository names may hold).
        let network = m.contains("connection refused")
            || m.contains("no such host")
            || m.contains("i/o timeout")
            || m.contains("x509:")
            || m.contains("tls: ")
            || m.contains("tls handshake")
            || m.contains("network is unreachable")
            || m.contains("no route to host")
            || m.contains("context deadline exceeded");
        if m.contains("unauthorized")
            || m.contains("authentication required")
            || m.contains("access denied")
            || m.contains("denied:")
            || m.contains("no basic auth credentials")
        {
            PullFailure::Unauthorized
        } else if m.contains("manifest unknown")
            || m.contains("name unknown")
            || (!network && (m.contains("not found") || m.contains("does not exist")))
        {
            PullFailure::NotFound
        } else if network {
            PullFailure::Unreachable
        } else {
            PullFailure::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullFailure::Unauthorized => "unauthorized",
            PullFailure::NotFound => "not found",
            PullFailure::Unreachable => "unreachable",
            PullFailure::Other => "failed",
        }
    }
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub columns: u16,
    pub rows: u16,
}

impl Default for TerminalSize {
    /// 80 by 24, the size terminals start with.
    fn default() -> Self {
        TerminalSize {
            columns: 80,
            rows: 24,
        }
    }
}

/// An interactive terminal in a container (an exec with a TTY); see
/// [`ContainerRuntime::terminal`].
pub struct Terminal {
    /// The engine's id of the exec: for resizing it and its exit code.
    pub id: String,
    /// What the terminal shows, until its command ends.
    pub output: Pin<Box<dyn futures_util::Stream<Item = Result<Vec<u8>, RuntimeError>> + Send>>,
    /// What is typed into it; dropping it closes the terminal's input.
    pub input: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
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
    /// A container was to join a network that does not exist.
    #[error("network {0:?} not found")]
    NoSuchNetwork(String),
    /// Containers still use the network.
    #[error("network {0:?} is in use")]
    NetworkInUse(String),
    /// The registry refused the pull, or could not be reached.
    #[error("pulling {image}: {} ({message})", failure.as_str())]
    Pull {
        image: String,
        failure: PullFailure,
        message: String,
    },
    /// No container of this id or name exists.
    #[error("no container {0:?}")]
    NoSuchContainer(String),
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

    /// Ok if the image is present locally; ImageNotFound otherwise.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Pulls `image` from its registry, logging in with `login` when given,
    /// and calls `progress` as layers come in. A refusal is
    /// [`RuntimeError::Pull`], saying why (unauthorized, not found,
    /// unreachable) in the registry's words.
    fn pull(
        &self,
        image: &str,
        login: Option<RegistryLogin>,
        progress: Box<dyn FnMut(PullProgress) + Send>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

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

    /// Removes the container (force), and the network sandbox it joined if
    /// any. Ok if already gone.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// With `keep_ready`, keeps a network sandbox ready for the next
    /// container of `node` that may join one
    /// ([`ContainerSpec::prepared_network`]), labelled with `labels`, and
    /// makes the next whenever one is taken. The first call (each call
    /// without `keep_ready`) removes the node's sandboxes that no container
    /// uses (left by an agent before this one). Engines without sandboxes
    /// do nothing.
    fn prepare_networks(
        &self,
        node: &str,
        labels: BTreeMap<String, String>,
        keep_ready: bool,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (node, labels, keep_ready);
        async { Ok(()) }
    }

    /// Removes the sandbox kept ready and makes no more (an agent that
    /// stops or gives up).
    fn release_networks(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

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

    /// Creates the user-defined bridge network `name`, with `labels`, if it
    /// does not exist.
    fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes network `name`; `Ok(false)` when it does not exist, an error
    /// while containers still use it.
    fn remove_network(&self, name: &str)
    -> impl Future<Output = Result<bool, RuntimeError>> + Send;

    /// The names of the networks whose label `key` equals `value`.
    fn list_networks(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// Runs `/bin/sh -c command` in a running container, as a remote shell
    /// would, and streams its output and then its exit code. No stdin.
    fn exec(&self, container: &str, command: &str) -> ExecStreamBox;

    /// An image's size on disk; `None` when the engine does not have it.
    fn image_bytes(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<u64>, RuntimeError>> + Send;

    /// Removes an image no container uses; false when a container uses it
    /// (the engine refuses) or it is not there.
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send;

    /// Whether the engine can hand NVIDIA GPUs to containers: it has the
    /// NVIDIA container runtime, or the hook its built-in NVIDIA device
    /// driver runs.
    fn gpu_support(&self) -> impl Future<Output = Result<bool, RuntimeError>> + Send;

    /// Starts an interactive terminal in a running container: `command`
    /// with `/bin/sh -c`, or a login shell (bash where the image has it),
    /// on a TTY of `size`, with `env` (`KEY=VALUE`) added.
    fn terminal(
        &self,
        container: &str,
        command: Option<&str>,
        env: Vec<String>,
        size: TerminalSize,
    ) -> impl Future<Output = Result<Terminal, RuntimeError>> + Send;

    /// Resizes a terminal [`ContainerRuntime::terminal`] started.
    fn resize_terminal(
        &self,
        id: &str,
        size: TerminalSize,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Hangs a terminal up, as a closed SSH connection does: its processes
    /// get SIGHUP, and SIGKILL two seconds later. Best effort: nothing
    /// happens where its processes cannot be found.
    fn end_terminal(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// A terminal's exit code, once its command ended.
    fn terminal_exit(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<i64>, RuntimeError>> + Send;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_as_a_percentage_of_megabytes_or_gigabytes() {
        assert_eq!(PullProgress::default().describe(), "starting");
        let p = PullProgress {
            done_bytes: 1_200_000_000,
            total_bytes: 2_900_000_000,
        };
        assert_eq!(p.describe(), "41% (1.2 of 2.9 GB)");
        let small = PullProgress {
            done_bytes: 3_000_000,
            total_bytes: 12_000_000,
        };
        assert_eq!(small.describe(), "25% (3.0 of 12.0 MB)");
    }

    #[test]
    fn a_refused_pull_says_why_in_three_words() {
        for (message, failure) in [
            (
                "Head \"https://r/v2/x/manifests/1\": unauthorized: authentication required",
                PullFailure::Unauthorized,
            ),
            (
                "pull access denied for x, repository does not exist or may require 'docker login'",
                PullFailure::Unauthorized,
            ),
            (
                "Head \"https://r/v2/x/manifests/1\": no basic auth credentials",
                PullFailure::Unauthorized,
            ),
            (
                "manifest for r/x:2 not found: manifest unknown",
                PullFailure::NotFound,
            ),
            (
                "Get \"https://r:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
                PullFailure::Unreachable,
            ),
            (
                "Get \"https://r/v2/\": x509: certificate signed by unknown authority",
                PullFailure::Unreachable,
            ),
            ("pulling mytls-proxy:1: something else", PullFailure::Other),
            (
                "Get \"https://r/v2/\": dial tcp: lookup r on 10.0.0.2:53: no such host",
                PullFailure::Unreachable,
            ),
        ] {
            assert_eq!(PullFailure::of(message), failure, "{message}");
        }
    }
}
