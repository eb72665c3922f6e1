//! The operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Start-up checks passed (API server reachable, CRD installed).
    pub ready: Arc<AtomicBool>,
    /// This replica leads (or leader election is off).
    pub leader: Arc<AtomicBool>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
}

/// The router.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if !h.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    }
    // A standby replica is ready too: it is healthy and waits for the Lease.
    if h.leader.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: leader\n")
    } else {
        (StatusCode::OK, "ready: standby\n")
    }
}
