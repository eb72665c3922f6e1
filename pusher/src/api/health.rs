//! Health (`/healthz`, `/readyz`), the status with its reasons, the OpenAPI document and
//! the metrics scrape.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::schema;
use super::shared::*;
use crate::store::Store;
use std::sync::atomic::Ordering;

use crate::metrics::QueueState;

/// The one-word health states: all that an unauthenticated caller learns.
pub(super) fn health_word(status: StatusCode, word: &'static str) -> Response {
    (status, axum::Json(json!({ "status": word }))).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses(
        (status = 200, description = "alive: `ok`, or `on_hold` while sending is held (paused channel, open circuit); the reason is on `/v1/status`", body = schema::Health),
        (status = 503, description = "`unavailable`: the store has failed to heal (a restart may help)", body = schema::Health),
    ))]
pub(super) async fn healthz<S: Store>(State(state): State<Shared<S>>) -> Response {
    if !state.store.is_live() {
        return health_word(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    match state.dispatch.hold() {
        Some(_) => health_word(StatusCode::OK, "on_hold"),
        None => health_word(StatusCode::OK, "ok"),
    }
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "`ok`: takes messages", body = schema::Health),
        (status = 503, description = "`unavailable`: draining or the store is unavailable; the reason is on `/v1/status`", body = schema::Health),
    ))]
pub(super) async fn readyz<S: Store>(State(state): State<Shared<S>>) -> Response {
    if not_ready(&state).is_some() {
        return health_word(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    health_word(StatusCode::OK, "ok")
}

pub(super) fn not_ready<S: Store>(state: &ApiState<S>) -> Option<&'static str> {
    if state.draining.load(Ordering::Relaxed) {
        Some("draining")
    } else if !state.store.is_healthy() {
        Some("store unavailable")
    } else {
        None
    }
}

#[utoipa::path(get, path = "/v1/status", tag = "health",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the pusher's state with its reasons", body = schema::ServiceStatus),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody),
    ))]
pub(super) async fn status<S: Store>(State(state): State<Shared<S>>) -> Response {
    let hold = state.dispatch.hold();
    let live = state.store.is_live();
    let not_ready = not_ready(&state);
    axum::Json(json!({
        "status": if !live { "unavailable" } else if hold.is_some() { "on_hold" } else { "ok" },
        "live": live,
        "ready": not_ready.is_none(),
        "not_ready_reason": not_ready,
        "sending": if hold.is_some() { "on_hold" } else { "active" },
        "hold": hold,
        "templates": templates_status(&state.templates),
    }))
    .into_response()
}

pub(super) fn templates_status(registry: &crate::templates::Registry) -> Value {
    let cat = registry.catalogue();
    let fetched_at = (cat.fetched_ms > 0)
        .then(|| {
            jiff::Timestamp::from_millisecond(i64::try_from(cat.fetched_ms).unwrap_or(i64::MAX))
                .ok()
        })
        .flatten();
    json!({
        "validation": registry.validation(),
        "private": cat.private.as_ref().map(std::collections::HashMap::len),
        "subscribe": cat.subscribe.as_ref().map(std::collections::HashMap::len),
        "fetched_at": fetched_at,
    })
}

pub(super) async fn metrics<S: Store>(State(state): State<Shared<S>>) -> Response {
    let c = state.store.counts();
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    state.metrics.set_queue(QueueState::ready, gauge(c.ready));
    state
        .metrics
        .set_queue(QueueState::delayed, gauge(c.delayed));
    state
        .metrics
        .set_queue(QueueState::inflight, gauge(c.inflight));
    state.metrics.set_queue(QueueState::dead, gauge(c.dead));
    state.metrics.channel_hold_errcode.set(
        state
            .dispatch
            .hold()
            .and_then(|h| h.errcode)
            .unwrap_or_default(),
    );
    let now = crate::store::millis(jiff::Timestamp::now());
    let age_s = c
        .oldest_ready_ms
        .map_or(0, |due| now.saturating_sub(due) / 1000);
    state.metrics.oldest_ready_age.set(gauge(age_s));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
