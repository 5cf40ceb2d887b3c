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

async fn jwks<S: Store>(State(plane): State<Arc<Plane<S>>>) -> axum::Json<serde_json::Value> {
    axum::Json(plane.tokens.jwks())
}
