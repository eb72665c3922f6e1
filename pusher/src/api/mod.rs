//! The pusher's HTTP API (docs/architecture.md, "The pusher's HTTP API"): accept messages, read their
//! status, inspect and replay dead letters, health, readiness and metrics.
//!
//! Checks run in a fixed order so each bad request gets one clear answer: bearer token (401) →
//! draining (503) → content type (415) → body size (413) → JSON syntax (400) → fields (422) →
//! queue room (429). A refused request writes nothing.

pub mod auth;
mod error;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub use auth::AuthToken;
pub use error::ApiError;

use crate::config::ApiLimits;
use crate::dispatch::DispatchState;
use crate::message::{FieldError, MAX_IDEMPOTENCY_KEY, MessageId, MessageRecord, parse_message};
use crate::metrics::{Metrics, QueueState};
use crate::store::{AcceptItem, Store};

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState<S> {
    /// The queue.
    pub store: S,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The producers' token.
    pub auth: AuthToken,
    /// Body and batch limits.
    pub limits: ApiLimits,
    /// Set on SIGTERM: not ready, no new messages.
    pub draining: Arc<AtomicBool>,
    /// The dispatcher's hold (paused channel, open circuit), shown by `/healthz`.
    pub dispatch: Arc<DispatchState>,
}

type Shared<S> = Arc<ApiState<S>>;

/// The API router (everything but `/metrics` when it has its own listener).
pub fn router<S: Store + Clone>(state: Shared<S>, with_metrics: bool) -> Router {
    let v1 = Router::new()
        .route("/v1/messages", post(post_message::<S>))
        .route("/v1/messages/batch", post(post_batch::<S>))
        .route("/v1/messages/{id}", get(get_message::<S>))
        .route("/v1/dead-letters", get(list_dead_letters::<S>))
        .route("/v1/dead-letters/{id}/retry", post(replay::<S>))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token::<S>,
        ));
    let mut open = Router::new()
        .route("/healthz", get(healthz::<S>))
        .route("/readyz", get(readyz::<S>));
    if with_metrics {
        open = open.route("/metrics", get(metrics::<S>));
    }
    v1.merge(open)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

/// The router for a separate `metricsListen`.
pub fn metrics_router<S: Store + Clone>(state: Shared<S>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .with_state(state)
}

async fn require_token<S: Store>(
    State(state): State<Shared<S>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if state.auth.check(header) {
        next.run(req).await
    } else {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        resp
    }
}

fn check_accepting<S>(state: &ApiState<S>) -> Result<(), ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the pusher is shutting down; send to another replica or retry shortly",
        )
        .retry_after(1))
    } else {
        Ok(())
    }
}

/// Checks the content type and size, then parses JSON.
async fn read_json(headers: &HeaderMap, body: Body, limits: &ApiLimits) -> Result<Value, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send `Content-Type: application/json`",
        ));
    }
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {limit} bytes (api.maxBodyBytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let chain = format!("{e} {:?}", std::error::Error::source(&e));
        if chain.contains("length limit") {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", "cannot read the body")
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::from(FieldError {
            code: "invalid_field",
            message: format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            field: "Idempotency-Key".into(),
        })
    };
    let key = value.to_str().map_err(|_| bad())?.trim();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

fn accepted(id: MessageId, status: &str, duplicate: bool) -> Response {
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": id, "status": status})),
    )
        .into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/messages/{id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    if duplicate {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

async fn post_message<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let key = idempotency_key(&headers)?;
    let value = read_json(&headers, body, &state.limits).await?;
    let message = parse_message(&value)?;
    let mut results = state
        .store
        .accept(vec![AcceptItem {
            message,
            idempotency_key: key,
        }])
        .await?;
    let Some(first) = results.pop() else {
        return Err(ApiError::internal("the store answered nothing"));
    };
    if !first.duplicate {
        state.metrics.accepted.inc();
    }
    Ok(accepted(first.id, first.status.as_str(), first.duplicate))
}

async fn post_batch<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let key = idempotency_key(&headers)?;
    let value = read_json(&headers, body, &state.limits).await?;
    let Value::Object(mut obj) = value else {
        return Err(FieldError {
            code: "invalid_field",
            message: "the body must be {\"messages\": [...]}".into(),
            field: String::new(),
        }
        .into());
    };
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "messages") {
        return Err(FieldError {
            code: "unknown_field",
            message: "unknown field; expected messages".into(),
            field: unknown.clone(),
        }
        .into());
    }
    let items = match obj.remove("messages") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(FieldError {
                code: "invalid_field",
                message: "must be an array of messages".into(),
                field: "messages".into(),
            }
            .into());
        }
        None => {
            return Err(FieldError {
                code: "missing_field",
                message: "is required".into(),
                field: "messages".into(),
            }
            .into());
        }
    };
    let max = state.limits.max_batch as usize;
    if items.is_empty() || items.len() > max {
        return Err(FieldError {
            code: "too_long",
            message: format!("must hold 1 to {max} messages (api.maxBatch)"),
            field: "messages".into(),
        }
        .into());
    }
    // Validate everything first; the valid ones go to the store in one durable write.
    let mut slots: Vec<Result<usize, FieldError>> = Vec::with_capacity(items.len());
    let mut to_store = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_message(item) {
            Ok(message) => {
                slots.push(Ok(to_store.len()));
                to_store.push(AcceptItem {
                    message,
                    idempotency_key: key.as_ref().map(|k| format!("{k}#{i}")),
                });
            }
            Err(e) => slots.push(Err(e.in_item(i))),
        }
    }
    let stored = if to_store.is_empty() {
        Vec::new()
    } else {
        state.store.accept(to_store).await?
    };
    let fresh = stored.iter().filter(|a| !a.duplicate).count();
    state.metrics.accepted.inc_by(fresh as u64);
    let mut rejected = 0;
    let results: Vec<Value> = slots
        .into_iter()
        .map(|slot| match slot {
            Ok(j) => match stored.get(j) {
                Some(a) => json!({"id": a.id, "status": a.status.as_str()}),
                None => json!({"error": {"code": "internal", "message": "missing result"}}),
            },
            Err(e) => {
                rejected += 1;
                json!({"error": e})
            }
        })
        .collect();
    let status = if stored.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        axum::Json(json!({
            "accepted": stored.len(),
            "rejected": rejected,
            "results": results,
        })),
    )
        .into_response())
}

fn parse_id(id: &str) -> Result<MessageId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no message with id {id}")))
}

fn status_doc(record: &MessageRecord) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.remove("budget_from");
    }
    v
}

async fn get_message<S: Store>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.store.get(id).await? {
        Some(record) => Ok(axum::Json(status_doc(&record)).into_response()),
        None => Err(ApiError::not_found(format!("no message with id {id}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_dead_letters<S: Store>(
    State(state): State<Shared<S>>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let after = match q.after.as_deref() {
        Some(a) => Some(a.parse::<MessageId>().map_err(|_| {
            ApiError::from(FieldError {
                code: "invalid_field",
                message: "must be a message id".into(),
                field: "after".into(),
            })
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = state.store.dead_letters(after, limit).await?;
    let items: Vec<Value> = page.items.iter().map(status_doc).collect();
    Ok(axum::Json(json!({"items": items, "next": page.next})).into_response())
}

async fn replay<S: Store>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let id = parse_id(&id)?;
    let record = state.store.replay(id).await?;
    tracing::info!(%id, replays = record.replays, "dead letter replayed");
    Ok(accepted(record.id, record.status.as_str(), false))
}

async fn healthz<S: Store>(State(state): State<Shared<S>>) -> Response {
    let hold = state.dispatch.hold();
    if !state.store.is_live() {
        // The store has failed to heal for longer than `unhealthyAfter`: a restart may help.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "store_unhealthy",
                "reason": "the queue has not taken a write for longer than queue.embedded.unhealthyAfter",
            })),
        )
            .into_response();
    }
    axum::Json(json!({
        "status": "ok",
        "sending": if hold.is_some() { "on_hold" } else { "active" },
        "hold": hold,
    }))
    .into_response()
}

async fn readyz<S: Store>(State(state): State<Shared<S>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reason": "draining"})),
        )
            .into_response();
    }
    if !state.store.is_healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reason": "store unavailable"})),
        )
            .into_response();
    }
    axum::Json(json!({"ready": true})).into_response()
}

async fn metrics<S: Store>(State(state): State<Shared<S>>) -> Response {
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
