//! The service's HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /healthz`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{Health, Metrics};

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` completes.
///
/// `/healthz` answers 200 `ok` while the service runs (or is starting), 503 with the reason when a flush
/// keeps failing, while stopping, or after a failure.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics_text)).route("/healthz", get(healthz)).with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.health() {
        Health::Running => (StatusCode::OK, "ok\n".to_owned()),
        Health::Starting => (StatusCode::OK, "starting\n".to_owned()),
        Health::Degraded(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("degraded: {why}\n")),
        Health::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned()),
        Health::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n")),
    }
}
