//! `strato-agent`: the node agent, run by systemd on each node (or started
//! by the control plane's local provider). Checks its configuration, then
//! holds a session with the control plane until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use strato_agent::gang::{self, ExecRelay, GangConfig, GangNetwork, MachineInterface};
use strato_agent::identity::{self, Vending};
use strato_agent::session::{self, AgentConfig, IdentityContext, SessionError};
use strato_agent::telemetry::{self, AgentHealth, GpuSource, NvmlGpus};
use strato_runtime::{Clock, DockerRuntime, RuntimeError, SystemClock};
use tracing_subscriber::EnvFilter;

/// Strato node agent: enrols with the control plane using a join token, then
/// runs the jobs it is assigned in Docker containers and streams their
/// output back.
///
/// Exit status: 0 after SIGTERM or SIGINT (running containers are left
/// running and are taken back by the next start), 2 when the configuration
/// is bad or the control plane refuses the join token, 1 when the Docker
/// engine cannot be reached or the agent gave up on the control plane.
#[derive(Debug, Parser)]
#[command(name = "strato-agent", version, about, long_about)]
struct Config {
    /// The control plane's gRPC address (https://; http:// only with
    /// --insecure-plaintext). With replicas, their addresses separated by
    /// commas (at most 16): the agent holds its session with one, the one
    /// that answered last, and moves to the next when it stops answering.
    #[arg(
        long,
        env = "STRATO_CONTROL_PLANE",
        default_value = "https://127.0.0.1:7070"
    )]
    control_plane: String,

    /// A PEM file of the CA certificate the control plane's certificate
    /// chains to: its DATA_DIR/tls/ca.crt, which the local provider
    /// passes. Default: the system's roots.
    #[arg(long, visible_alias = "ca-file", env = "STRATO_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,

    /// Dial an http:// control plane without TLS: only for one started
    /// with --insecure-plaintext on this machine.
    #[arg(long, env = "STRATO_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,

    /// The join token the control plane handed out for this node (the
    /// local provider's), or an attached cluster's (`strato compute
    /// join-token create`). Prefer --join-token-file or the variable: a
    /// flag shows in the process list.
    #[arg(
        long,
        env = "STRATO_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "join_token_file"
    )]
    join_token: Option<String>,

    /// A file holding the join token (mode 0600 or stricter: a token
    /// others can read is refused). Used once: after joining, the agent
    /// proves who it is with its client certificate.
    #[arg(long, env = "STRATO_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,

    /// A name for this node in logs and the process list (the local
    /// provider passes the node id). Default: the host name.
    #[arg(long, env = "STRATO_NODE_NAME")]
    node_name: Option<String>,

    /// The Docker engine's socket.
    #[arg(
        long,
        env = "STRATO_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    docker_socket: String,

    /// Where the identity endpoint for job containers listens. Default: the
    /// Docker bridge's gateway address (where containers reach the host), on
    /// a free port.
    #[arg(long, env = "STRATO_IDENTITY_LISTEN")]
    identity_listen: Option<std::net::SocketAddr>,

    /// Where `/metrics` listens (Prometheus text format), over TLS with a
    /// serving certificate the control plane signs at enrolment for the
    /// host of --metrics-url (its node serving CA), answering only clients
    /// that present the control plane's scraper certificate
    /// (DATA_DIR/tls/scraper.crt). Plain HTTP only with
    /// --insecure-plaintext.
    #[arg(long, env = "STRATO_METRICS_LISTEN", default_value = "0.0.0.0:9110")]
    metrics_listen: std::net::SocketAddr,

    /// The address Prometheus reaches `/metrics` at, reported to the control
    /// plane: https://HOST:PORT/metrics (the serving certificate names
    /// HOST). Default: the bound address (127.0.0.1 for an unspecified one).
    #[arg(long, env = "STRATO_METRICS_URL")]
    metrics_url: Option<String>,

    /// Where SSH is served when the node's cluster enables it (an admin
    /// user with remote login; AmlCompute's port 50000 by default). Nothing
    /// listens otherwise.
    #[arg(long, env = "STRATO_SSH_LISTEN", default_value = "0.0.0.0:50000")]
    ssh_listen: std::net::SocketAddr,

    /// Whether an SSH command runs on the node itself when no job runs
    /// there (as this agent's user). The local provider turns it off: its
    /// nodes share the control plane's machine.
    #[arg(
        long,
        env = "STRATO_SSH_NODE_SHELL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    ssh_node_shell: bool,

    /// Where job inputs and outputs are staged on this node.
    #[arg(long, env = "STRATO_WORK_DIR", default_value = "/var/lib/strato-agent")]
    work_dir: std::path::PathBuf,

    /// A PEM file of extra CA certificates to trust for storage endpoints
    /// (e.g. Azurite's self-signed certificate).
    #[arg(long, env = "STRATO_STORAGE_CA_FILE")]
    storage_ca_file: Option<std::path::PathBuf>,

    /// The Scheduled Events endpoint polled about once a second for eviction
    /// notices (the local provider points it at the control plane).
    #[arg(
        long,
        env = "STRATO_SCHEDULED_EVENTS_URL",
        default_value = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"
    )]
    scheduled_events_url: String,

    /// How the containers of a multi-node job reach each other: `host` (the
    /// machine's network; one node per machine) or `cluster` (a Docker
    /// network per cluster on this engine, as the local provider uses).
    #[arg(long, env = "STRATO_GANG_NETWORK", value_enum, default_value = "host")]
    gang_network: GangNetwork,

    /// This machine's address as the other machines of its cluster reach it
    /// (with `--gang-network host`): multi-node jobs' MPI, NCCL and Gloo are
    /// told to use the interface that holds it, rather than a Docker bridge.
    /// Default: the address this machine reaches the control plane from.
    #[arg(long, env = "STRATO_NODE_ADDRESS", value_name = "IP")]
    node_address: Option<std::net::IpAddr>,

    /// The disk budget, in bytes, of the images this agent pulls: past it,
    /// the least recently used ones no container uses are removed after a
    /// pull. Images the agent did not pull are never touched.
    #[arg(
        long,
        env = "STRATO_IMAGE_CACHE_BYTES",
        value_name = "BYTES",
        default_value_t = strato_agent::image_cache::DEFAULT_IMAGE_CACHE_BYTES
    )]
    image_cache_bytes: u64,

    /// The image of the helper containers that hold jobs' mounted data
    /// (`ro_mount`, `rw_mount`): rclone's, or one with `rclone` (1.67 or
    /// later), `umount` and CA certificates on its path. Helpers run with
    /// `/dev/fuse` and CAP_SYS_ADMIN, on the host's network; the work
    /// directory must be on a shared mount (systemd's default).
    #[arg(
        long,
        env = "STRATO_MOUNT_IMAGE",
        value_name = "IMAGE",
        default_value = strato_agent::session::DEFAULT_MOUNT_IMAGE
    )]
    mount_image: String,

    /// The bound, in bytes, of each mount's local cache in the work
    /// directory (rclone's `--vfs-cache-max-size`; files open or not yet
    /// uploaded may go past it).
    #[arg(
        long,
        env = "STRATO_MOUNT_CACHE_BYTES",
        value_name = "BYTES",
        default_value_t = strato_agent::session::DEFAULT_MOUNT_CACHE_BYTES
    )]
    mount_cache_bytes: u64,

    /// The `strato-rsh` launcher mounted into multi-node jobs' containers.
    /// Default: `strato-rsh` beside this executable.
    #[arg(long, env = "STRATO_LAUNCHER")]
    launcher: Option<std::path::PathBuf>,

    /// The id of the control plane whose local provider started this agent
    /// (set by that provider). Job containers and gang networks carry it as
    /// the `strato.control-plane` label, so that control plane can remove
    /// what is left of nodes it no longer knows.
    #[arg(long, env = "STRATO_CONTROL_PLANE_ID")]
    control_plane_id: Option<String>,

    /// Give up after this many seconds without reaching the control plane:
    /// stop and remove this node's job containers and exit 1. The local
    /// provider sets it, so its agents do not outlive a control plane that
    /// is gone for good. Default: keep trying (systemd agents).
    #[arg(long, env = "STRATO_GIVE_UP_AFTER", value_name = "SECONDS")]
    give_up_after: Option<u64>,

    /// The most processes (threads included) in one job container; 0: no
    /// limit of Strato's. Ranks of one node share their container's limit.
    #[arg(long, env = "STRATO_JOB_PIDS_LIMIT", default_value_t = strato_runtime::PIDS_LIMIT)]
    job_pids_limit: i64,

    /// Let job processes gain privileges through setuid binaries (`sudo`);
    /// off by default (`no-new-privileges`).
    #[arg(long, env = "STRATO_ALLOW_NEW_PRIVILEGES")]
    allow_new_privileges: bool,

    /// Start every job on a network of its own, as `docker run` does,
    /// instead of in a network sandbox made ready before it (a pause
    /// container on the default bridge, `strato-sandbox-<node>-<n>`, one a
    /// job, which takes the engine's network set-up off the job's start;
    /// the job's hostname is then the sandbox's).
    #[arg(long, env = "STRATO_NO_NETWORK_SANDBOXES")]
    no_network_sandboxes: bool,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STRATO_LOG", default_value = "info")]
    log: String,
}

/// The process's exit status: [`StartError::exit`] is the one place an
/// error picks it. The same codes are documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Stopped by SIGTERM or SIGINT; job containers keep running.
    Ok = 0,
    /// The Docker engine cannot be reached, a port cannot be served, or the
    /// agent gave up on the control plane: the machine, not the flags.
    Failure = 1,
    /// The configuration is bad, or the control plane refused the join
    /// token: starting again unchanged will not help.
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Flags that name something unusable; found before any port is bound.
#[derive(Debug, thiserror::Error)]
enum ConfigError {
    #[error("--join-token (STRATO_JOIN_TOKEN) is empty")]
    EmptyJoinToken,
    #[error("--join-token-file {}: {why}", path.display())]
    JoinTokenFile { path: PathBuf, why: String },
    #[error("--control-plane {url:?}: {why}")]
    ControlPlane { url: String, why: String },
    #[error("--control-plane-ca {}: {source}", .path.display())]
    ControlPlaneCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the launcher {} is missing; build it (`cargo build --bins`) or set --launcher",
        .0.as_ref().map_or_else(|| "strato-rsh".to_owned(), |p| p.display().to_string())
    )]
    Launcher(Option<PathBuf>),
    #[error("--storage-ca-file {}: {source}", path.display())]
    StorageCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--work-dir {}: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    MetricsUrl(strato_core::error::FieldError),
}

/// Why the agent stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(std::io::Error),
    #[error(transparent)]
    Docker(RuntimeError),
    #[error("cannot find the Docker bridge's address: {0}; set --identity-listen")]
    Bridge(RuntimeError),
    #[error("--identity-listen {addr}: {source}")]
    IdentityListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The metrics address cannot be bound (in use, or not this machine's).
    #[error("--metrics-listen {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--metrics-listen: {0}")]
    MetricsAddress(std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl StartError {
    /// The documented exit status for this error.
    fn exit(&self) -> Exit {
        match self {
            StartError::Config(_) | StartError::MetricsListen { .. } => Exit::Usage,
            StartError::Session(e) if e.is_fatal() => Exit::Usage,
            StartError::AsyncRuntime(_)
            | StartError::Docker(_)
            | StartError::Bridge(_)
            | StartError::IdentityListen { .. }
            | StartError::MetricsAddress(_)
            | StartError::Session(_) => Exit::Failure,
        }
    }
}

/// The most control-plane addresses `--control-plane` takes.
const MAX_CONTROL_PLANES: usize = 16;

/// What the configuration names, read and checked.
struct Checked {
    join_token: String,
    launcher: PathBuf,
    storage_ca: Option<Vec<u8>>,
    /// The control-plane replicas, each with its TLS settings.
    replicas: Vec<session::Replica>,
    transport: session::Transport,
}

/// Validates the configuration before anything starts or is bound.
fn check(config: &Config) -> Result<Checked, ConfigError> {
    let join_token = match (&config.join_token, &config.join_token_file) {
        (_, Some(path)) => read_join_token(path)?,
        (Some(token), None) if !token.trim().is_empty() => token.trim().to_owned(),
        _ => return Err(ConfigError::EmptyJoinToken),
    };
    let bad = |why: String| ConfigError::ControlPlane {
        url: config.control_plane.clone(),
        why,
    };
    let urls: Vec<&str> = config
        .control_plane
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() || urls.len() > MAX_CONTROL_PLANES {
        return Err(bad(format!(
            "give 1 to {MAX_CONTROL_PLANES} addresses, separated by commas"
        )));
    }
    let (transport, ca) = if config.insecure_plaintext {
        (session::Transport::Plaintext, None)
    } else {
        let ca = match &config.control_plane_ca {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                ConfigError::ControlPlaneCa {
                    path: path.clone(),
                    source,
                }
            })?),
        };
        (session::Transport::Tls { ca_pem: ca.clone() }, ca)
    };
    let mut replicas = Vec::with_capacity(urls.len());
    for url in urls {
        let endpoint = if config.insecure_plaintext {
            strato_proto::client::insecure_endpoint(url)
        } else {
            strato_proto::client::endpoint(url, ca.as_deref())
        }
        .map_err(|e| bad(format!("{url}: {e}")))?;
        replicas.push(session::Replica {
            url: url.to_owned(),
            endpoint,
        });
    }
    if let Some(url) = &config.metrics_url {
        let endpoint = strato_core::certificate::metrics_endpoint("--metrics-url", url)
            .map_err(ConfigError::MetricsUrl)?;
        if endpoint.https == config.insecure_plaintext {
            return Err(ConfigError::MetricsUrl(
                strato_core::error::FieldError::new(
                    "--metrics-url",
                    if config.insecure_plaintext {
                        "must start with http:// under --insecure-plaintext (no certificates)"
                    } else {
                        "must start with https://: /metrics speaks TLS"
                    },
                ),
            ));
        }
    }
    let launcher = match config.launcher.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("strato-rsh")))
    }) {
        Some(path) if path.is_file() => path,
        other => return Err(ConfigError::Launcher(other)),
    };
    let storage_ca = match &config.storage_ca_file {
        None => None,
        Some(path) => Some(
            std::fs::read(path).map_err(|source| ConfigError::StorageCa {
                path: path.clone(),
                source,
            })?,
        ),
    };
    std::fs::create_dir_all(&config.work_dir).map_err(|source| ConfigError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    Ok(Checked {
        join_token,
        launcher,
        storage_ca,
        replicas,
        transport,
    })
}

/// The join token in `path`, which no one but its owner may read.
fn read_join_token(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bad = |why: String| ConfigError::JoinTokenFile {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "others can read it (mode {mode:03o}); `chmod 600` it"
        )));
    }
    if meta.len() > 4096 {
        return Err(bad("over 4 KiB: not a join token".into()));
    }
    let token = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token.to_owned())
}

fn main() -> ExitCode {
    // The one crypto provider of the build, for every TLS client that does
    // not name one (the registry login's HTTP client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::parse();
    let exit = match start(config) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!(error = %e, "stopping");
            eprintln!("strato-agent: {e}");
            e.exit()
        }
    };
    exit.into()
}

fn start(config: Config) -> Result<(), StartError> {
    let checked = check(&config)?;
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: not into the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Runtime::new()
        .map_err(StartError::AsyncRuntime)?
        .block_on(run(config, checked))
}

/// This node's name: `--node-name`, else the host name.
/// The local address this machine reaches `authority` (HOST:PORT) from, as
/// the kernel routes it (an unconnected UDP socket: nothing is sent).
/// IPv4 first: Open MPI builds without IPv6 take IPv4 subnets only.
async fn route_to(authority: &str) -> std::io::Result<std::net::IpAddr> {
    let mut targets: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host(authority).await?.collect();
    targets.sort_by_key(|t| !t.is_ipv4());
    let target = targets
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("the name has no address"))?;
    let unspecified: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(unspecified)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// With the host network: the interface that holds `--node-address`, else
/// the one this machine reaches the control plane through (the kernel's
/// route, asked with an unconnected UDP socket: nothing is sent).
async fn gang_interface(config: &Config) -> Option<MachineInterface> {
    if config.gang_network != GangNetwork::Host {
        return None;
    }
    let address = match config.node_address {
        Some(address) => address,
        None => {
            let first = config
                .control_plane
                .split(',')
                .next()
                .unwrap_or_default()
                .trim();
            let authority = first
                .split_once("://")
                .map_or(first, |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            match route_to(&authority).await {
                Ok(address) => address,
                Err(e) => {
                    tracing::warn!(
                        control_plane = %authority, error = %e,
                        "cannot tell this machine's address: multi-node jobs' MPI and NCCL \
                         choose their own interface (set --node-address)"
                    );
                    return None;
                }
            }
        }
    };
    let networks = match sysinfo::Networks::new_with_refreshed_list() {
        Ok(networks) => networks,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this machine's interfaces");
            return None;
        }
    };
    let interfaces = networks.iter().flat_map(|(name, data)| {
        data.ip_networks()
            .iter()
            .map(|n| (name.to_string_lossy().into_owned(), n.addr, n.prefix))
            .collect::<Vec<_>>()
    });
    let found = MachineInterface::holding(address, interfaces);
    match &found {
        Some(i) => tracing::info!(
            interface = %i.name,
            subnet = %i.subnet,
            "multi-node jobs use this machine's interface"
        ),
        None => tracing::warn!(
            %address,
            "no interface holds this machine's address: multi-node jobs' MPI and NCCL choose \
             their own (set --node-address)"
        ),
    }
    found
}

fn node_name(config: &Config) -> Option<String> {
    config.node_name.clone().or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
    })
}

async fn run(config: Config, checked: Checked) -> Result<(), StartError> {
    let Checked {
        join_token,
        launcher,
        storage_ca,
        replicas,
        transport,
    } = checked;
    let docker = Arc::new(
        DockerRuntime::connect(Some(&config.docker_socket))
            .await
            .map_err(StartError::Docker)?,
    );
    let listen = match config.identity_listen {
        Some(a) => a,
        None => SocketAddr::new(
            docker.bridge_gateway().await.map_err(StartError::Bridge)?,
            0,
        ),
    };
    // The one place the agent's time comes from.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let vending = Arc::new(Vending::new(clock.clone()));
    let relay = Arc::new(ExecRelay::new(vending.clone()));
    let endpoint = identity::serve(vending.clone(), gang::routes(relay.clone()), listen)
        .await
        .map_err(|source| StartError::IdentityListen {
            addr: listen,
            source,
        })?;
    let gpus: Arc<dyn GpuSource> = Arc::from(NvmlGpus::detect());
    let health = Arc::new(AgentHealth::default());
    let metrics = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| StartError::MetricsListen {
            addr: config.metrics_listen,
            source,
        })?;
    let metrics_url = match &config.metrics_url {
        Some(url) => url.clone(),
        None => {
            let addr = metrics.local_addr().map_err(StartError::MetricsAddress)?;
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            let scheme = if config.insecure_plaintext {
                "http"
            } else {
                "https"
            };
            format!("{scheme}://{}/metrics", SocketAddr::new(ip, addr.port()))
        }
    };
    let metrics_tls = Arc::new(strato_runtime::https::ServerTls::default());
    serve_metrics(
        metrics,
        (!config.insecure_plaintext).then(|| metrics_tls.clone()),
        gpus.clone(),
        health.clone(),
        config.work_dir.clone(),
        node_name(&config).unwrap_or_default(),
        clock.clone(),
    );
    tracing::info!(%metrics_url, "metrics endpoint listening");
    let interface = gang_interface(&config).await;
    let image_cache = Arc::new(strato_agent::image_cache::ImageCache::open(
        &config.work_dir,
        config.image_cache_bytes,
    ));
    let identity = Arc::new(IdentityContext {
        image_cache,
        mounts: Arc::new(strato_agent::session::MountSettings {
            image: config.mount_image.clone(),
            cache_bytes: config.mount_cache_bytes,
        }),
        vending,
        health,
        gpus,
        metrics_url,
        metrics_tls,
        ssh: Arc::default(),
        endpoint,
        work_dir: config.work_dir.clone(),
        storage_ca,
        scheduled_events_url: config.scheduled_events_url.clone(),
        relay,
        gang: GangConfig {
            network: config.gang_network,
            launcher,
            control_plane_id: config.control_plane_id.clone(),
            interface,
        },
        clock,
    });
    let hostname = node_name(&config).unwrap_or_else(|| "unknown".into());
    let agent = AgentConfig {
        control_plane: config.control_plane,
        replicas,
        preferred: Arc::default(),
        transport,
        join_token,
        hostname,
        control_plane_id: config.control_plane_id,
        give_up_after: config.give_up_after.map(std::time::Duration::from_secs),
        job_pids_limit: (config.job_pids_limit > 0).then_some(config.job_pids_limit),
        allow_new_privileges: config.allow_new_privileges,
        network_sandboxes: !config.no_network_sandboxes,
        ssh_listen: Some(config.ssh_listen),
        ssh_node_shell: config.ssh_node_shell,
    };
    let result = tokio::select! {
        result = session::run(agent, docker.clone(), identity) => result.map_err(StartError::from),
        () = shutdown_signal() => {
            tracing::info!("stopping; job containers keep running and are taken back at the next start");
            Ok(())
        }
    };
    // The network kept ready for the next job is not left behind.
    strato_runtime::ContainerRuntime::release_networks(docker.as_ref()).await;
    result
}

/// Serves `/metrics` on `listener` in the background: over `tls` to
/// scrapers only (`strato_core::certificate::may_scrape_agent`), or in
/// plain HTTP to anyone without it (--insecure-plaintext).
fn serve_metrics(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<strato_runtime::https::ServerTls>>,
    gpus: Arc<dyn GpuSource>,
    health: Arc<AgentHealth>,
    work_dir: PathBuf,
    host: String,
    clock: Arc<dyn Clock>,
) {
    use axum::extract::ConnectInfo;
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use strato_core::certificate::{ScrapeRefusal, may_scrape_agent};
    use strato_runtime::https::{HttpsListener, Peer};
    let tls_on = tls.is_some();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |ConnectInfo(peer): ConnectInfo<Peer>| {
            let (gpus, health, work_dir, host, clock) = (
                gpus.clone(),
                health.clone(),
                work_dir.clone(),
                host.clone(),
                clock.clone(),
            );
            async move {
                if tls_on && let Err(refusal) = may_scrape_agent(peer.holder.as_ref()) {
                    let status = match refusal {
                        ScrapeRefusal::NoCertificate => StatusCode::UNAUTHORIZED,
                        ScrapeRefusal::NotAScraper => StatusCode::FORBIDDEN,
                    };
                    return (status, format!("{refusal}\n")).into_response();
                }
                let text = tokio::task::spawn_blocking(move || {
                    telemetry::render(&host, &work_dir, gpus.as_ref(), &health, clock.as_ref())
                })
                .await
                .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        strato_core::exposition::CONTENT_TYPE,
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    let listener = match HttpsListener::new(listener, tls) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "metrics endpoint cannot start");
            return;
        }
    };
    tokio::spawn(async move {
        if let Err(e) =
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
        {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A good configuration, built as the flags would.
    fn config() -> Config {
        let work_dir =
            std::env::temp_dir().join(format!("strato-agent-main-{}", std::process::id()));
        let launcher = std::env::current_exe().expect("test binary");
        Config::try_parse_from([
            "strato-agent".to_owned(),
            "--join-token=token".to_owned(),
            format!("--work-dir={}", work_dir.display()),
            format!("--launcher={}", launcher.display()),
        ])
        .expect("flags")
    }

    #[test]
    fn bad_configuration_is_found_before_anything_starts_and_exits_2() {
        assert!(check(&config()).is_ok());
        type Change = fn(&mut Config);
        let cases: [(Change, &str); 7] = [
            (
                |c| c.join_token = Some(" ".into()),
                "--join-token (STRATO_JOIN_TOKEN) is empty",
            ),
            (
                |c| c.join_token_file = Some("/nonexistent/join-token".into()),
                "--join-token-file /nonexistent/join-token",
            ),
            (
                |c| c.control_plane = "not a url".into(),
                "--control-plane \"not a url\"",
            ),
            (
                |c| c.launcher = Some("/nonexistent/strato-rsh".into()),
                "the launcher /nonexistent/strato-rsh is missing",
            ),
            (
                |c| c.storage_ca_file = Some("/nonexistent/ca.pem".into()),
                "--storage-ca-file /nonexistent/ca.pem",
            ),
            (
                |c| c.metrics_url = Some("http://10.0.0.4:9110/metrics".into()),
                "--metrics-url: must start with https://",
            ),
            (
                |c| c.metrics_url = Some("https://10.0.0.4/metrics".into()),
                "--metrics-url: must name the port",
            ),
        ];
        for (change, says) in cases {
            let mut bad = config();
            change(&mut bad);
            let e = StartError::from(check(&bad).err().expect(says));
            assert!(e.to_string().starts_with(says), "{e}");
            assert_eq!(e.exit(), Exit::Usage, "{e}");
        }
        std::fs::remove_dir_all(&config().work_dir).ok();
    }

    #[test]
    fn a_join_token_file_must_be_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("strato-agent-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("join-token");
        std::fs::write(&file, "strato_secret\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut c = config();
        // A work directory of its own: the other tests use config()'s.
        c.work_dir = dir.join("work");
        c.join_token = None;
        c.join_token_file = Some(file.clone());
        let e = check(&c).err().expect("readable by others");
        assert!(
            e.to_string().contains("others can read it (mode 644)"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(check(&c).expect("private").join_token, "strato_secret");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_refused_join_token_exits_2_and_giving_up_exits_1() {
        let refused = StartError::from(SessionError::Refused("unknown join token".into()));
        assert_eq!(refused.exit(), Exit::Usage);
        assert_eq!(
            refused.to_string(),
            "the control plane refused this agent: unknown join token"
        );
        let gave_up = StartError::from(SessionError::GaveUp {
            waited: std::time::Duration::from_secs(60),
            last_error: Box::new(SessionError::BadSessionToken),
        });
        assert_eq!(gave_up.exit(), Exit::Failure);
        assert_eq!(ExitCode::from(Exit::Usage), ExitCode::from(2));
        assert_eq!(ExitCode::from(Exit::Ok), ExitCode::SUCCESS);
    }
}
