//! The HTTP listener: Prometheus metrics and health, for operators and their monitoring.
//!
//! Handlers read snapshots and never hold a lock across an await.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::router::RouterHandle;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// Counters.
    pub metrics: Metrics,
    /// The serving state.
    pub router: RouterHandle,
}

/// The routes.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Arc::new(state))
}

async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    match state.router.serving_upstream() {
        Some(upstream) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok", "upstream": &*upstream})),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                serde_json::json!({"status": "unavailable", "reason": "no upstream connected with a job"}),
            ),
        ),
    }
}

/// Serves the API on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, state: ApiState, cancel: CancellationToken) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(listen = ?local, "api listening");
    let result = axum::serve(listener, routes(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "api server failed");
    }
}
