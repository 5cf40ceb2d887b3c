//! The HTTP side port: `/healthz` (the process answers), `/readyz` (the
//! store answers too), the OIDC discovery document and JWKS that verify
//! issued tokens, `/metrics`, and each local node's Scheduled Events.
//!
//! It speaks TLS with the gRPC port's certificate (plaintext only under
//! `--insecure-plaintext`), and asks for a client certificate that it
//! verifies against the control plane's CA without requiring one.
//!
//! | path | who |
//! | --- | --- |
//! | `/healthz`, `/readyz` | anyone |
//! | `/.well-known/openid-configuration`, `/jwks` | anyone: public keys, for whoever verifies issued tokens |
//! | `/metrics` | a bearer token allowed `metrics/read` at `/` (Reader and up) |
//! | `/scheduledevents/{node}` | that node's agent: its client certificate, and `Metadata: true` as IMDS asks |

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

use crate::app::{Access, Action, authorize_at};
use crate::plane::Plane;
use crate::store::Store;

/// TLS handshakes in progress at once; connections past it are closed.
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The node its client certificate names (verified against the CA).
    pub node: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// A connection, TLS or not.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// The side port's listener: accepts TCP connections, does their TLS
/// handshakes concurrently (at most [`MAX_HANDSHAKES`], each within 5 s),
/// and hands on those that succeed with the node their certificate names.
pub struct HttpListener {
    accepted: mpsc::Receiver<(Box<dyn Connection>, Peer)>,
    local: SocketAddr,
}

impl HttpListener {
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<HttpListener> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel::<(Box<dyn Connection>, Peer)>(64);
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, addr) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    // The server stopped.
                    () = tx.closed() => break,
                };
                let Some(tls) = tls.clone() else {
                    let peer = Peer { addr, node: None };
                    if tx.send((Box::new(tcp), peer)).await.is_err() {
                        break;
                    }
                    continue;
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(%addr, "too many TLS handshakes at once: connection closed");
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let node = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| crate::tls::node_of(cert));
                            let _ = tx.send((Box::new(stream), Peer { addr, node })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(HttpListener { accepted, local })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Box<dyn Connection>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor ended: no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            node: None,
        })
    }
}

/// The side port's TLS: the server certificate, and client certificates
/// verified against the control plane's CA when offered.
pub fn server_config(tls: &crate::tls::Tls) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots
            .add(ca.context("the CA certificate")?)
            .context("the CA certificate")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("the client certificate verifier")?;
    let chain = CertificateDer::pem_slice_iter(tls.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the server certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(tls.server_key_pem.as_bytes()).context("the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the server certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What the handlers share.
struct Side<S: Store> {
    plane: Arc<Plane<S>>,
    access: Arc<Access<S>>,
}

type Shared<S> = State<Arc<Side<S>>>;

pub async fn serve<S: Store>(
    listener: HttpListener,
    plane: Arc<Plane<S>>,
    access: Arc<Access<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/.well-known/openid-configuration", get(discovery::<S>))
        .route("/jwks", get(jwks::<S>))
        .route("/metrics", get(metrics::<S>))
        .route(
            "/scheduledevents/{node}",
            get(scheduled_events::<S>).post(start_events::<S>),
        )
        .with_state(Arc::new(Side { plane, access }));
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A refused request: its status and why, answered as `{"error": why}`.
struct Refusal(StatusCode, String);

impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, message.into())
}

/// Who may scrape: a bearer token allowed `metrics/read` at `/`.
async fn may_scrape<S: Store>(side: &Side<S>, headers: &HeaderMap) -> Result<(), Refusal> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let caller = side
        .access
        .authenticate(bearer)
        .await
        .map_err(|e| refused(StatusCode::UNAUTHORIZED, e.to_string()))?;
    authorize_at(
        &caller,
        Action::ReadMetrics,
        &strato_core::access::Scope::All,
    )
    .map_err(|e| refused(StatusCode::FORBIDDEN, e.to_string()))
}

/// Only node `node`'s own agent (its client certificate) may see or
/// acknowledge its events, and, as IMDS asks, with `Metadata: true`.
fn node_itself<S: Store>(
    side: &Side<S>,
    peer: &Peer,
    node: &str,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "Bad request. Required metadata header not specified",
        ));
    }
    if side.plane.tls.is_none() {
        // --insecure-plaintext: no certificates to check.
        return Ok(());
    }
    match &peer.node {
        Some(certified) if certified == node => Ok(()),
        Some(certified) => Err(refused(
            StatusCode::FORBIDDEN,
            format!("the client certificate names node {certified}, not {node}"),
        )),
        None => Err(refused(
            StatusCode::UNAUTHORIZED,
            "the node's client certificate is required",
        )),
    }
}

async fn readyz<S: Store>(State(side): Shared<S>) -> (StatusCode, String) {
    match side.plane.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
    }
}

async fn discovery<S: Store>(State(side): Shared<S>) -> axum::Json<serde_json::Value> {
    axum::Json(side.plane.tokens.discovery(&side.plane.http_base))
}

async fn metrics<S: Store>(State(side): Shared<S>, headers: HeaderMap) -> Response {
    if let Err(refusal) = may_scrape(&side, &headers).await {
        return refusal.into_response();
    }
    match crate::metrics::render(&side.plane).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                strato_core::exposition::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}

/// The Scheduled Events document of a local node (IMDS's format).
async fn scheduled_events<S: Store>(
    State(side): Shared<S>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    axum::extract::Path(node): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = node_itself(&side, &peer, &node, &headers) {
        return refusal.into_response();
    }
    axum::Json(side.plane.scheduled_events.document(&node)).into_response()
}

#[derive(serde::Deserialize)]
struct StartRequests {
    #[serde(rename = "StartRequests", default)]
    start_requests: Vec<StartRequest>,
}

#[derive(serde::Deserialize)]
struct StartRequest {
    #[serde(rename = "EventId")]
    event_id: String,
}

async fn start_events<S: Store>(
    State(side): Shared<S>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    axum::extract::Path(node): axum::extract::Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<StartRequests>,
) -> Response {
    if let Err(refusal) = node_itself(&side, &peer, &node, &headers) {
        return refusal.into_response();
    }
    let ids: Vec<String> = body
        .start_requests
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    side.plane.scheduled_events.start(&node, &ids);
    StatusCode::OK.into_response()
}

async fn jwks<S: Store>(State(side): Shared<S>) -> axum::Json<serde_json::Value> {
    axum::Json(side.plane.tokens.jwks())
}
