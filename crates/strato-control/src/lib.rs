//! The Strato control plane: the use cases (`app`) behind the gRPC API
//! (`grpc`, `agents`), the durable store, quotas, the reconcile loop, node
//! providers and the HTTP side port.

pub mod agents;
pub mod app;
pub mod config;
pub mod courier;
pub mod data_dir;
pub mod federation;
pub mod grpc;
pub mod http;
pub mod leadership;
pub mod metrics;
pub mod oidc;
pub mod plane;
pub mod power;
pub mod provider;
pub mod reconcile;
pub mod reports;
pub mod secrets;
pub mod store;
pub mod studio;
pub mod tls;
pub mod tokens;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::{ProviderKind, Settings};
use crate::plane::{Events, Plane, Sessions};
use crate::provider::{LocalProvider, LocalSettings, NoProvider, NodeProvider};
use crate::store::{SqlStore, Store};

/// Runs the control plane until `shutdown` resolves, then stops taking
/// requests, lets the ones in flight finish and closes the store. Nodes
/// (agent processes) keep running: a restarted control plane takes them
/// back.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = &settings.config;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create it", config.data_dir.display()))?;
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("--grpc-listen {}: cannot listen", config.grpc_listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("--http-listen {}: cannot listen", config.http_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let http_base = http.local_addr()?;
    let control_plane_id = data_dir::control_plane_id(&config.data_dir)?;
    let provider: Box<dyn NodeProvider> = match config.provider {
        ProviderKind::None => Box::new(NoProvider),
        ProviderKind::Local => {
            let agent_binary = match &config.agent_binary {
                Some(p) => p.clone(),
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("strato-agent"),
            };
            anyhow::ensure!(
                agent_binary.exists(),
                "--agent-binary {}: not found; build it (`cargo build --bins`) or point --agent-binary at it",
                agent_binary.display()
            );
            let endpoint = config
                .agent_endpoint
                .clone()
                .unwrap_or_else(|| config.grpc_url(grpc_addr));
            Box::new(LocalProvider::new(LocalSettings {
                agent_binary,
                endpoint,
                nodes_dir: PathBuf::from(&config.data_dir).join("nodes"),
                docker_socket: config.docker_socket.clone(),
                storage_ca_file: config.storage_ca_file.clone(),
                control_http: config.http_url(http_base),
                control_plane_id,
                control_plane_ca: (!config.insecure_plaintext)
                    .then(|| tls::Tls::ca_path(&config.data_dir)),
                agent_give_up_after: (config.local_agent_give_up_after > 0)
                    .then_some(config.local_agent_give_up_after),
            }))
        }
    };
    let parts = Parts {
        grpc,
        http,
        provider,
        clock: Arc::new(strato_runtime::SystemClock),
        ready: None,
    };
    serve(settings, parts, shutdown).await
}

/// What [`serve`] runs on: the bound listeners, the node provider and the
/// clock. [`run`] makes them from the configuration; tests and simulations
/// give their own (an in-process provider, a manual clock).
pub struct Parts {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub provider: Box<dyn NodeProvider>,
    pub clock: Arc<dyn strato_runtime::Clock>,
    /// Told once the store is open, the CA made and admin.conf written:
    /// from then on clients can connect with admin.conf.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Serves the control plane on `parts` until `shutdown` resolves, then
/// stops taking requests, lets the ones in flight finish and closes the
/// store.
pub async fn serve(
    settings: Settings,
    parts: Parts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Parts {
        grpc,
        http,
        provider,
        clock,
        ready,
    } = parts;
    let config = &settings.config;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create it", config.data_dir.display()))?;
    data_dir::keep_private(&config.data_dir, config.database_url.is_none());
    let replica = leadership::replica_id();
    let store = match &config.database_url {
        None => SqlStore::open(&config.data_dir).await.with_context(|| {
            format!(
                "--data-dir {}: cannot open the database",
                config.data_dir.display()
            )
        })?,
        Some(url) => SqlStore::connect_postgres_as(
            url.expose(),
            config.database_max_connections,
            Some(&replica),
        )
        .await
        .context("--database-url: cannot open the database")?,
    }
    .with_log_budget(strato_core::limits::LogBudget {
        lines: config.max_log_lines_per_attempt,
        bytes: config.max_log_bytes_per_attempt,
    });
    let grpc_addr = grpc.local_addr()?;
    tracing::info!(
        replica = %replica,
        grpc = %grpc_addr,
        http = %http.local_addr()?,
        data_dir = %config.data_dir.display(),
        database = ?store.dialect(),
        region = %config.region,
        provider = provider.kind(),
        "strato-control listening"
    );

    let http_addr = http.local_addr()?;
    let issuer = settings.config.issuer(http_addr);
    let tenant = settings.config.tenant(&issuer);
    let tokens = tokens::TokenIssuer::load_or_create(&settings.config.data_dir, issuer, tenant)
        .context("the token signing key")?
        .with_lifetime(i64::from(settings.config.token_lifetime));
    tracing::info!(issuer = %tokens.issuer(), "token issuer ready");
    let federation = match settings.config.federation()? {
        None => None,
        Some(f) => {
            tracing::info!(tenant = %f.tenant_id, authority = %f.authority_host, identities = f.client_ids.len(), "federating to Entra ID");
            Some(federation::Federation::new(f).context("federation")?)
        }
    };
    let oidc = match (&settings.config.oidc_issuer, &settings.config.oidc_audience) {
        (Some(issuer), Some(audience)) => {
            let ca_pem = match &settings.config.oidc_ca_file {
                None => None,
                Some(path) => Some(std::fs::read(path).with_context(|| {
                    format!("--oidc-ca-file {}: cannot read it", path.display())
                })?),
            };
            let verifier = oidc::OidcVerifier::new(oidc::OidcConfig {
                issuer: issuer.clone(),
                audience: audience.clone(),
                ca_pem,
            })?;
            // Best effort: an issuer down at start is asked again with the
            // first token.
            if let Err(e) = verifier.refresh().await {
                tracing::warn!(error = %e, "the OIDC issuer's keys; tried again with the first token");
            }
            Some(Arc::new(verifier))
        }
        _ => None,
    };
    let tls = if settings.config.insecure_plaintext {
        tracing::warn!(grpc = %grpc_addr, "serving gRPC WITHOUT TLS (--insecure-plaintext): tokens cross the loopback in clear");
        None
    } else {
        let names =
            tls::subject_alt_names(&[grpc_addr.ip(), http_addr.ip()], &settings.config.tls_sans);
        let given = (settings.config.tls_cert.as_deref()).zip(settings.config.tls_key.as_deref());
        Some(
            tls::Tls::load_or_create(
                &settings.config.data_dir,
                &names,
                given,
                settings.config.node_certificate_lifetime,
            )
            .context("TLS")?,
        )
    };
    // The CA signs node certificates for as long as the control plane runs.
    let settings_data_dir = settings.config.data_dir.clone();
    let tls = tls.map(Arc::new);
    let storage_ca = match &settings.config.storage_ca_file {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("--storage-ca-file {}", path.display()))?,
        ),
        None => None,
    };
    let settings_rate = (settings.config.submit_rate, settings.config.submit_burst);
    let followers_per_caller = settings.config.max_followers_per_caller;
    let plane = Arc::new(Plane {
        replica,
        reports: reports::ReportWriter::start(store.clone()),
        logs: reports::LogWriter::start(store.clone()),
        store,
        tokens,
        federation,
        http_base: settings.config.http_url(http_addr),
        settings,
        provider,
        clock,
        sessions: Sessions::default(),
        execs: Default::default(),
        scheduled_events: plane::ScheduledEvents::default(),
        counters: metrics::Counters::default(),
        events: Events::default(),
        submits: plane::SubmitLimits::new(settings_rate.0, settings_rate.1),
        followers: Arc::new(plane::Followers::new(followers_per_caller)),
        tls: tls.clone(),
        oidc,
        secrets: secrets::SecretBox::load_or_create(&settings_data_dir)
            .context("the secrets key")?,
        storage_ca,
        scale_events: plane::ScaleEvents::default(),
    });
    let access = Arc::new(app::Access::new(plane.clone()));
    // What can fail before anything is started.
    let http_tls = match &plane.tls {
        Some(tls) => Some(Arc::new(strato_runtime::https::ServerTls::fixed(
            http::server_config(tls).context("the HTTP port's TLS")?,
        ))),
        None => None,
    };
    let http_listener = http::HttpsListener::new(http, http_tls).context("the HTTP port")?;
    write_admin_conf(&plane.settings.config, &access, tls.as_deref(), grpc_addr).await?;
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    {
        // Agents' session streams end at shutdown; the agents keep their
        // containers and reconnect to the next start.
        let (plane, stop) = (plane.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move {
            stop.await;
            plane.sessions.close_all();
        });
    }
    // The lease, and the reconcile loop while this replica holds it.
    let (lease_tx, lease_rx) = tokio::sync::watch::channel(None);
    let ttl = match plane.settings.config.database_url {
        Some(_) => leadership::LEASE_TTL,
        None => leadership::SINGLE_PROCESS_LEASE_TTL,
    };
    // Given up only once the reconcile loop has finished its pass.
    let (release_lease, lease_released) = tokio::sync::oneshot::channel::<()>();
    let lease = tokio::spawn(leadership::hold_lease(
        plane.store.clone(),
        plane.replica.clone(),
        ttl,
        lease_tx,
        async move {
            let _ = lease_released.await;
        },
    ));
    let reconciler = tokio::spawn(leadership::reconcile_while_leading(
        plane.clone(),
        lease_rx,
        stop_rx.clone(),
    ));
    tokio::spawn(courier::run(plane.clone(), stopped(stop_rx.clone())));
    if let Some(url) = &plane.settings.config.database_url {
        tokio::spawn(courier::listen(
            plane.clone(),
            url.expose().to_owned(),
            stopped(stop_rx.clone()),
        ));
    }
    let heartbeats = tokio::spawn(write_heartbeats(plane.clone(), stopped(stop_rx.clone())));
    // Client certificates are optional at the handshake (users bring
    // bearer tokens); the agent services require a node's.
    let server_tls = tls.map(|tls| {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &tls.server_cert_pem,
                &tls.server_key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&tls.ca_pem))
            .client_auth_optional(true)
    });
    let grpc_server = grpc_server(
        plane.clone(),
        access.clone(),
        server_tls,
        grpc,
        stopped(stop_rx.clone()),
    );
    let http_server = http::serve(
        http_listener,
        plane.clone(),
        access.clone(),
        stopped(stop_rx.clone()),
    );
    // A server that fails stops everything else as a shutdown does, so the
    // final writes below are made before its error is returned.
    let (g, h) = tokio::join!(
        stops_all_on_error(grpc_server, &stop_tx),
        stops_all_on_error(http_server, &stop_tx)
    );
    let _ = reconciler.await;
    let _ = release_lease.send(());
    let _ = lease.await;
    let _ = heartbeats.await;
    // Its agents' sessions ended with it: no node counts as held here.
    if let Err(e) = plane.store.sessions_ended(&plane.sessions_prefix()).await {
        tracing::warn!(error = %e, "cannot record that this replica's sessions ended");
    }
    plane.store.close().await;
    g.context("gRPC server")?;
    h.context("HTTP server")?;
    tracing::info!("strato-control stopped");
    Ok(())
}

/// Takes down what the provider holds of nodes and clusters the store does
/// not know: left when this control plane stopped before they were gone.
/// Best effort: a failure is logged and the next start tries again.
pub(crate) async fn remove_orphans<S: Store>(store: &S, provider: &dyn NodeProvider) {
    let known = async {
        let clusters = store.list_clusters().await?;
        let nodes = store.all_nodes().await?;
        Ok::<_, crate::store::StoreError>((
            clusters.into_iter().map(|c| c.spec.name).collect(),
            nodes.into_iter().map(|n| n.node_id).collect(),
        ))
    };
    let (clusters, nodes) = match known.await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the store to look for orphans");
            return;
        }
    };
    match provider::remove_orphans(provider, &clusters, &nodes).await {
        Ok((removed, failed)) => {
            if !removed.is_empty() {
                tracing::info!(?removed, "removed what unknown nodes and clusters left");
            }
            if !failed.is_empty() {
                tracing::warn!(
                    ?failed,
                    "could not remove what unknown nodes and clusters left; the next start tries again"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing what the provider holds"),
    }
}

/// Resolves on the first SIGTERM or SIGINT: what `strato-control` (and the
/// simulated control plane) stop on.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// `server`'s end; an error also tells everything else to stop.
async fn stops_all_on_error<T, E>(
    server: impl Future<Output = Result<T, E>>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<T, E> {
    let result = server.await;
    if result.is_err() {
        let _ = stop.send(true);
    }
    result
}

/// Writes the heartbeats this replica received (kept in memory by the
/// store) every `health::heartbeats_written_every_ms`, and once more at `stop`:
/// the leader, which may be another replica, judges nodes by what is
/// written. A failure is logged, and they are tried again.
async fn write_heartbeats<S: Store>(plane: Arc<Plane<S>>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let every = strato_core::node::health::heartbeats_written_every_ms(
        plane.settings.config.node_heartbeat_timeout,
    );
    let mut written_at = plane.clock.now_ms();
    loop {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
        };
        if stopping || plane.clock.now_ms() - written_at >= every {
            match plane.store.persist_heartbeats().await {
                Ok(n) => {
                    written_at = plane.clock.now_ms();
                    tracing::debug!(nodes = n, "heartbeats written");
                }
                Err(e) => tracing::error!(error = %e, "writing heartbeats failed; trying again"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// At first start (no `DATA_DIR/admin.conf`), makes the bootstrap Owner
/// token and writes admin.conf: the endpoint, the CA and that token, like
/// a kubeconfig. Deleting admin.conf and restarting makes a new token (the
/// old one stops working).
async fn write_admin_conf<S: Store>(
    settings: &config::Config,
    access: &app::Access<S>,
    tls: Option<&tls::Tls>,
    grpc_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let path = data_dir::admin_conf(&settings.data_dir);
    if path.exists() {
        return Ok(());
    }
    let made = access
        .bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("making the bootstrap token")?;
    let config = strato_core::client_config::ClientConfig {
        endpoint: Some(settings.grpc_url(grpc_addr)),
        ca_certificate: tls.filter(|t| t.serves_own_ca).map(|t| t.ca_pem.clone()),
        token: Some(made.secret),
    };
    data_dir::write_private(&path, config.render().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "wrote the Owner's client configuration (use: strato --config {})", path.display());
    Ok(())
}

/// The gRPC server's HTTP/2 flow-control windows.
const GRPC_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
const GRPC_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

async fn grpc_server<S: Store>(
    plane: Arc<Plane<S>>,
    access: Arc<app::Access<S>>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use strato_proto::v1::access_service_server::AccessServiceServer;
    use strato_proto::v1::agent_service_server::AgentServiceServer;
    use strato_proto::v1::compute_service_server::ComputeServiceServer;
    use strato_proto::v1::datastore_service_server::DatastoreServiceServer;
    use strato_proto::v1::identity_service_server::IdentityServiceServer;
    use strato_proto::v1::job_service_server::JobServiceServer;
    use strato_proto::v1::registry_service_server::RegistryServiceServer;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ComputeServiceServer<grpc::ComputeApi<S>>>()
        .await;
    health_reporter
        .set_serving::<JobServiceServer<grpc::JobApi<S>>>()
        .await;
    health_reporter
        .set_serving::<AgentServiceServer<agents::AgentApi<S>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strato_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strato_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    // Windows large enough that an agent streaming output fast is not held
    // back, and that HTTP/2's budget of small DATA frames (half the
    // connection window) is not spent by output arriving faster than the
    // store takes it.
    let mut builder = tonic::transport::Server::builder()
        .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
        .initial_stream_window_size(Some(GRPC_STREAM_WINDOW));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("the TLS settings")?;
    }
    builder
        .layer(metrics::GrpcMetricsLayer {
            stats: plane.counters.grpc.clone(),
        })
        .layer(grpc::auth::AuthLayer {
            access: access.clone(),
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ComputeServiceServer::new(grpc::ComputeApi::new(
            plane.clone(),
        )))
        .add_service(JobServiceServer::new(grpc::JobApi::new(plane.clone())))
        .add_service(DatastoreServiceServer::new(grpc::DatastoreApi::new(
            plane.clone(),
        )))
        .add_service(RegistryServiceServer::new(grpc::RegistryApi::new(
            plane.clone(),
        )))
        .add_service(AgentServiceServer::new(agents::AgentApi::new(
            plane.clone(),
        )))
        .add_service(IdentityServiceServer::new(grpc::IdentityApi::new(plane)))
        .add_service(AccessServiceServer::new(grpc::AccessApi::new(access)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
