//! `strato-agent`: the node agent, run by systemd on each node (or started
//! by the control plane's local provider). Checks its configuration, then
//! holds a session with the control plane until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use strato_agent::gang::{self, ExecRelay, GangConfig, GangNetwork};
use strato_agent::identity::{self, Vending};
use strato_agent::session::{self, AgentConfig, IdentityContext, SessionError};
use strato_agent::telemetry::{self, AgentHealth, GpuSource, NvmlGpus};
use strato_runtime::DockerRuntime;
use tracing_subscriber::EnvFilter;

/// Strato node agent: enrols with the control plane using a join token, then
/// runs the jobs it is assigned in Docker containers and streams their
/// output back.
///
/// Exit status: 0 after SIGTERM or SIGINT (running containers are left
/// running and are taken back by the next start), 2 when the configuration
/// is bad or the control plane refuses the join token, 1 when the Docker
/// engine cannot be reached.
#[derive(Debug, Parser)]
#[command(name = "strato-agent", version, about, long_about)]
struct Config {
    /// The control plane's gRPC address.
    #[arg(
        long,
        env = "STRATO_CONTROL_PLANE",
        default_value = "http://127.0.0.1:7070"
    )]
    control_plane: String,

    /// The join token the control plane handed out for this node. Prefer
    /// the variable: a flag shows in the process list.
    #[arg(long, env = "STRATO_JOIN_TOKEN", hide_env_values = true)]
    join_token: String,

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

    /// Where `/metrics` listens (Prometheus text format).
    #[arg(long, env = "STRATO_METRICS_LISTEN", default_value = "0.0.0.0:9110")]
    metrics_listen: std::net::SocketAddr,

    /// The address Prometheus reaches `/metrics` at, reported to the control
    /// plane. Default: http:// + the bound address (127.0.0.1 for an
    /// unspecified one) + /metrics.
    #[arg(long, env = "STRATO_METRICS_URL")]
    metrics_url: Option<String>,

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

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STRATO_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let config = Config::parse();
    if config.join_token.trim().is_empty() {
        eprintln!("strato-agent: --join-token (STRATO_JOIN_TOKEN) is empty");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let docker = match DockerRuntime::connect(Some(&config.docker_socket)).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("strato-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = match config.identity_listen {
        Some(a) => a,
        None => match docker.bridge_gateway().await {
            Ok(ip) => std::net::SocketAddr::new(ip, 0),
            Err(e) => {
                eprintln!(
                    "strato-agent: cannot find the Docker bridge's address: {e}; set --identity-listen"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let vending = Arc::new(Vending::default());
    let launcher = match config.launcher.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("strato-rsh")))
    }) {
        Some(path) if path.is_file() => path,
        other => {
            eprintln!(
                "strato-agent: the launcher {} is missing; build it (`cargo build --bins`) or set --launcher",
                other.map_or_else(|| "strato-rsh".to_owned(), |p| p.display().to_string())
            );
            return ExitCode::from(2);
        }
    };
    let relay = Arc::new(ExecRelay::new(vending.clone()));
    let endpoint = match identity::serve(vending.clone(), gang::routes(relay.clone()), listen).await
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("strato-agent: --identity-listen {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let storage_ca = match &config.storage_ca_file {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                eprintln!("strato-agent: --storage-ca-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    if let Err(e) = std::fs::create_dir_all(&config.work_dir) {
        eprintln!(
            "strato-agent: --work-dir {}: {e}",
            config.work_dir.display()
        );
        return ExitCode::from(2);
    }
    let gpus: Arc<dyn GpuSource> = Arc::from(NvmlGpus::detect());
    let health = Arc::new(AgentHealth::default());
    let hostname_for_metrics = config.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    });
    let metrics = match tokio::net::TcpListener::bind(config.metrics_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "strato-agent: --metrics-listen {}: {e}",
                config.metrics_listen
            );
            return ExitCode::from(2);
        }
    };
    let metrics_url = match (&config.metrics_url, metrics.local_addr()) {
        (Some(url), _) => url.clone(),
        (None, Ok(addr)) => {
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            format!(
                "http://{}/metrics",
                std::net::SocketAddr::new(ip, addr.port())
            )
        }
        (None, Err(e)) => {
            eprintln!("strato-agent: --metrics-listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let (gpus, health, work_dir) = (gpus.clone(), health.clone(), config.work_dir.clone());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (gpus, health, work_dir, host) = (
                    gpus.clone(),
                    health.clone(),
                    work_dir.clone(),
                    hostname_for_metrics.clone(),
                );
                async move {
                    let text = tokio::task::spawn_blocking(move || {
                        telemetry::render(&host, &work_dir, gpus.as_ref(), &health)
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
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, app).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    tracing::info!(%metrics_url, "metrics endpoint listening");
    let identity = Arc::new(IdentityContext {
        vending,
        health,
        gpus,
        metrics_url,
        endpoint,
        work_dir: config.work_dir.clone(),
        storage_ca,
        scheduled_events_url: config.scheduled_events_url.clone(),
        relay,
        gang: GangConfig {
            network: config.gang_network,
            launcher,
        },
    });
    let hostname = config.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    });
    let agent = AgentConfig {
        control_plane: config.control_plane,
        join_token: config.join_token,
        hostname,
        control_plane_id: config.control_plane_id,
        give_up_after: config.give_up_after.map(std::time::Duration::from_secs),
    };
    tokio::select! {
        result = session::run(agent, docker, identity) => match result {
            Err(SessionError::Refused(why)) => {
                tracing::error!("refused: {why}");
                eprintln!("strato-agent: the control plane refused this agent: {why}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("strato-agent: {e}");
                ExitCode::FAILURE
            }
            Ok(()) => ExitCode::SUCCESS,
        },
        () = shutdown_signal() => {
            tracing::info!("stopping; job containers keep running and are taken back at the next start");
            ExitCode::SUCCESS
        }
    }
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
