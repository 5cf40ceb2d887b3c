//! The Strato control plane: the gRPC API, the durable store, quotas, and
//! the HTTP side port.

pub mod api;
pub mod config;
pub mod http;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Settings;
use crate::store::{SqliteStore, Store};

/// Runs the control plane until `shutdown` resolves, then stops taking
/// requests, lets the ones in flight finish and closes the store.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = &settings.config;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create it", config.data_dir.display()))?;
    let store = Arc::new(SqliteStore::open(&config.data_dir).await.with_context(|| {
        format!(
            "--data-dir {}: cannot open the database",
            config.data_dir.display()
        )
    })?);
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("--grpc-listen {}: cannot listen", config.grpc_listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("--http-listen {}: cannot listen", config.http_listen))?;
    tracing::info!(
        grpc = %grpc.local_addr()?,
        http = %http.local_addr()?,
        data_dir = %config.data_dir.display(),
        region = %config.region,
        provider = ?config.provider,
        "strato-control listening"
    );

    let settings = Arc::new(settings);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let grpc_server = grpc_server(
        store.clone(),
        settings.clone(),
        grpc,
        stopped(stop_rx.clone()),
    );
    let http_server = http::serve(http, store.clone(), stopped(stop_rx.clone()));
    let (g, h) = tokio::join!(grpc_server, http_server);
    g.context("gRPC server")?;
    h.context("HTTP server")?;
    store.close().await;
    tracing::info!("strato-control stopped");
    Ok(())
}

async fn grpc_server<S: Store>(
    store: Arc<S>,
    settings: Arc<Settings>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use strato_proto::v1::compute_service_server::ComputeServiceServer;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ComputeServiceServer<api::ComputeApi<S>>>()
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
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ComputeServiceServer::new(api::ComputeApi::new(
            store, settings,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
