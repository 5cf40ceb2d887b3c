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
//! | `/studio/...` | the web UI: see `studio` (a session from an API token; each action its use case's role) |

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;

use crate::app::{Access, Action, authorize_at};
use crate::plane::Plane;
use crate::store::Store;

pub use strato_runtime::https::{HttpsListener, MAX_HANDSHAKES, Peer};

/// The side port's TLS: the server certificate, and client certificates
/// verified against the control plane's CA when offered.
pub fn server_config(tls: &crate::tls::Tls) -> anyhow::Result<rustls::ServerConfig> {
    strato_runtime::https::server_config(&tls.server_cert_pem, &tls.server_key_pem, &tls.ca_pem)
        .map_err(anyhow::Error::from)
}

/// What the handlers share.
struct Side<S: Store> {
    plane: Arc<Plane<S>>,
    access: Arc<Access<S>>,
}

type Shared<S> = State<Arc<Side<S>>>;

pub async fn serve<S: Store>(
    listener: HttpsListener,
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
        .route(
            "/studio/",
            get(|| async { axum::response::Redirect::to("/studio/compute") }),
        )
        .nest(
            "/studio",
            crate::studio::router(plane.clone(), access.clone()),
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
    match peer.node() {
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
