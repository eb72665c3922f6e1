//! The pusher's HTTP API (docs/architecture.md, "The pusher's HTTP API"): accept messages, read their
//! status, inspect and replay dead letters, health, readiness and metrics.
//!
//! Checks run in a fixed order so each bad request gets one clear answer: bearer token (401) →
//! draining (503) → content type (415) → body size (413) → JSON syntax (400) → fields (422) →
//! queue room (429). A refused request writes nothing.

pub mod auth;
mod dead_letters;
mod error;
mod health;
mod messages;
pub mod openapi;
mod recall;
pub mod schema;
pub mod server;
mod shared;
mod subscriptions;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use auth::AuthToken;
pub use dead_letters::{DEFAULT_PAGE, MAX_PAGE, MIN_PAGE};
pub use error::ApiError;
pub use shared::ApiState;
use shared::Shared;
pub use subscriptions::MAX_CREDITS_PER_REQUEST;

use crate::store::Store;

/// The API router (everything but `/metrics` when it has its own listener); the `/v1` routes
/// count against `cap`.
pub fn router<S: Store + Clone>(
    state: Shared<S>,
    with_metrics: bool,
    cap: &server::RequestCap,
) -> Router {
    let v1 = Router::new()
        .route("/v1/messages", post(messages::post_message::<S>))
        .route("/v1/messages/batch", post(messages::post_batch::<S>))
        .route("/v1/messages/{id}", get(messages::get_message::<S>))
        .route(
            "/v1/messages/{id}/recall",
            post(recall::recall_message::<S>),
        )
        .route(
            "/v1/dead-letters",
            get(dead_letters::list_dead_letters::<S>),
        )
        .route(
            "/v1/dead-letters/{id}/retry",
            post(dead_letters::replay::<S>),
        )
        .route("/v1/status", get(health::status::<S>))
        .route(
            "/v1/subscriptions",
            post(subscriptions::add_subscription::<S>).get(subscriptions::get_subscription::<S>),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            shared::require_token::<S>,
        ));
    let v1 = server::limit_layer(v1, cap);
    let mut open = Router::new()
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(health::healthz::<S>))
        .route("/readyz", get(health::readyz::<S>));
    if with_metrics {
        open = open.route("/metrics", get(health::metrics::<S>));
    }
    v1.merge(open)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

/// The router for a separate `metricsListen`.
pub fn metrics_router<S: Store + Clone>(state: Shared<S>) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics::<S>))
        .with_state(state)
}
