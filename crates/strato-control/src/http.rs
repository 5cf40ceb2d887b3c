//! The HTTP side port: `/healthz` (the process answers), `/readyz` (the
//! store answers too), and the OIDC discovery document and JWKS that verify
//! issued tokens.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::plane::Plane;
use crate::store::Store;

pub async fn serve<S: Store>(
    listener: TcpListener,
    plane: Arc<Plane<S>>,
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
        .with_state(plane);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn readyz<S: Store>(State(plane): State<Arc<Plane<S>>>) -> (StatusCode, String) {
    match plane.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
    }
}

async fn discovery<S: Store>(State(plane): State<Arc<Plane<S>>>) -> axum::Json<serde_json::Value> {
    axum::Json(plane.tokens.discovery(&plane.http_base))
}

async fn metrics<S: Store>(State(plane): State<Arc<Plane<S>>>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match crate::metrics::render(&plane).await {
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

/// The Scheduled Events document of a local node (IMDS's format; the
/// `Metadata: true` header is required, as IMDS does).
async fn scheduled_events<S: Store>(
    State(plane): State<Arc<Plane<S>>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                serde_json::json!({"error": "Bad request. Required metadata header not specified"}),
            ),
        )
            .into_response();
    }
    axum::Json(plane.scheduled_events.document(&node)).into_response()
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
    State(plane): State<Arc<Plane<S>>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    axum::Json(body): axum::Json<StartRequests>,
) -> StatusCode {
    let ids: Vec<String> = body
        .start_requests
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    plane.scheduled_events.start(&node, &ids);
    StatusCode::OK
}

async fn jwks<S: Store>(State(plane): State<Arc<Plane<S>>>) -> axum::Json<serde_json::Value> {
    axum::Json(plane.tokens.jwks())
}
