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
pub mod json;
pub mod openapi;
pub mod server;
mod subscriptions;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use auth::AuthToken;
use dead_letters::*;
pub use dead_letters::{DEFAULT_PAGE, MAX_PAGE, MIN_PAGE};
pub use error::ApiError;
use health::*;
pub use subscriptions::MAX_CREDITS_PER_REQUEST;
use subscriptions::*;

use crate::callbacks::target::TargetPolicy;
use crate::config::ApiLimits;
use crate::dispatch::DispatchState;
use crate::error_code::ErrorCode;
use crate::message::{
    FieldError, MAX_IDEMPOTENCY_KEY, Message, MessageId, MessageRecord, batch_items, parse_message,
    request_digest,
};
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
    /// The dispatcher's hold (paused channel, open circuit): `on_hold` on `/healthz`, the
    /// reason on `/v1/status`.
    pub dispatch: Arc<DispatchState>,
    /// Where callbacks may go (`callbacks.allow`): `callback_url` is checked at accept.
    pub targets: Arc<TargetPolicy>,
    /// The account's templates: every message is checked against its own at accept.
    pub templates: Arc<crate::templates::Registry>,
}

type Shared<S> = Arc<ApiState<S>>;

/// The API router (everything but `/metrics` when it has its own listener); the `/v1` routes
/// count against `cap`.
pub fn router<S: Store + Clone>(
    state: Shared<S>,
    with_metrics: bool,
    cap: &server::RequestCap,
) -> Router {
    let v1 = Router::new()
        .route("/v1/messages", post(post_message::<S>))
        .route("/v1/messages/batch", post(post_batch::<S>))
        .route("/v1/messages/{id}", get(get_message::<S>))
        .route("/v1/dead-letters", get(list_dead_letters::<S>))
        .route("/v1/dead-letters/{id}/retry", post(replay::<S>))
        .route("/v1/status", get(status::<S>))
        .route(
            "/v1/subscriptions",
            post(add_subscription::<S>).get(get_subscription::<S>),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token::<S>,
        ));
    let v1 = server::limit_layer(v1, cap);
    let mut open = Router::new()
        .route("/openapi.json", get(openapi_json))
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
            ErrorCode::Unauthorized,
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
            ErrorCode::Draining,
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
            ErrorCode::UnsupportedMediaType,
            "send `Content-Type: application/json`",
        ));
    }
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
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
        } else if chain.contains("TimeoutError") || chain.contains("timeout") {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BodyTimeout,
                "the body did not arrive within api.bodyReadTimeout",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadBody,
                "cannot read the body",
            )
        }
    })?;
    json::from_slice_strict(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Refuses a `callback_url` aimed at an internal target (see [`crate::callbacks::target`]).
async fn check_callback(targets: &TargetPolicy, message: &Message) -> Result<(), FieldError> {
    let Some(url) = message.callback_url.as_deref() else {
        return Ok(());
    };
    targets.check_resolved(url).await.map_err(|e| FieldError {
        code: ErrorCode::ForbiddenTarget,
        message: e.to_string(),
        field: "callback_url".into(),
        rule: None,
    })
}

fn refusal<S>(state: &ApiState<S>, v: crate::templates::rules::Violation) -> FieldError {
    state.metrics.template_refusal(v.rule.label());
    FieldError {
        code: ErrorCode::TemplateRule,
        message: format!("{} (rule {})", v.message, v.rule.as_str()),
        field: v.field,
        rule: Some(v.rule.as_str()),
    }
}

/// Checks a message against its WeChat template (`templates.validation`), counting a refusal
/// by its rule; in strict mode a one-time subscribe template takes one of the user's credits
/// (`Ok(true)`: the caller gives it back if the message is not stored).
async fn check_template<S: Store>(
    state: &ApiState<S>,
    message: &mut Message,
) -> Result<bool, ApiError> {
    let decision = state
        .templates
        .check(message)
        .await
        .map_err(|v| ApiError::from(refusal(state, v)))?;
    if !decision.needs_credit {
        return Ok(false);
    }
    if !state
        .store
        .take_credit(&message.touser, &message.template_id)
        .await?
    {
        return Err(refusal(
            state,
            crate::templates::rules::Violation {
                field: "touser".into(),
                rule: crate::templates::rules::Rule::NoSubscriptionCredit,
                message: format!(
                    "{} has no subscription credit for the one-time template {}; record the \
                     user's consent with POST /v1/subscriptions first",
                    message.touser, message.template_id
                ),
            },
        )
        .into());
    }
    message.subscription_credit = true;
    Ok(true)
}

/// Gives back the credits taken for messages that were not stored after all.
async fn give_back_credits<S: Store>(state: &ApiState<S>, messages: &[&Message]) {
    for m in messages.iter().filter(|m| m.subscription_credit) {
        if let Err(e) = state.store.add_credits(&m.touser, &m.template_id, 1).await {
            tracing::warn!(error = %e, "cannot give back a subscription credit");
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::from(FieldError {
            code: ErrorCode::InvalidField,
            message: format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            field: "Idempotency-Key".into(),
            rule: None,
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

/// Set on an answer that repeats an earlier one (same `Idempotency-Key`, same body).
const REPLAYED: &str = "idempotent-replayed";

fn accepted(
    id: MessageId,
    status: &str,
    duplicate: bool,
    warnings: &[crate::message::TemplateNote],
) -> Response {
    let mut body = json!({"id": id, "status": status});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    let mut resp = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/messages/{id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    if duplicate {
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "repeats of the same key with the same body answer the first result; with another body they are refused (422 `idempotency_key_reused`)")),
    request_body(content = openapi::MessageRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "accepted (durably stored)", body = openapi::Accepted, headers(
            ("Location" = String, description = "`/v1/messages/{id}`: where to read its status"),
            ("Idempotent-Replayed" = String, description = "`true` when this repeats the answer to an earlier request with the same `Idempotency-Key` and body"),
        )),
        (status = 422, description = "a field is wrong (named in `field`), or the `Idempotency-Key` was used before with another body (`idempotency_key_reused`)", body = openapi::ErrorBody),
        (status = 400, description = "not JSON, or a duplicate key", body = openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "the body did not arrive in time", body = openapi::ErrorBody),
        (status = 413, description = "body over api.maxBodyBytes", body = openapi::ErrorBody),
        (status = 415, description = "not application/json", body = openapi::ErrorBody),
        (status = 429, description = "the queue is full", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    ))]
async fn post_message<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let key = idempotency_key(&headers)?;
    let value = read_json(&headers, body, &state.limits).await?;
    let request_digest = key.as_ref().map(|_| request_digest("/v1/messages", &value));
    let mut message = parse_message(&value)?;
    check_callback(&state.targets, &message).await?;
    check_template(&state, &mut message).await?;
    let warnings = message.template_notes.clone();
    let kept = message.clone();
    let stored = state
        .store
        .accept(vec![AcceptItem {
            message,
            idempotency_key: key,
            request_digest,
        }])
        .await;
    let mut results = match stored {
        Ok(r) => {
            if r.first().is_some_and(|a| a.duplicate) {
                // A repeat of a stored message: its credit was taken the first time.
                give_back_credits(&state, &[&kept]).await;
            }
            r
        }
        Err(e) => {
            give_back_credits(&state, &[&kept]).await;
            return Err(e.into());
        }
    };
    let Some(first) = results.pop() else {
        return Err(ApiError::internal("the store answered nothing"));
    };
    if !first.duplicate {
        state.metrics.accepted.inc();
    }
    Ok(accepted(
        first.id,
        first.status.as_str(),
        first.duplicate,
        &warnings,
    ))
}

#[utoipa::path(post, path = "/v1/messages/batch", tag = "messages",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "repeats of the same key with the same body answer the first result; with another body they are refused (422 `idempotency_key_reused`)")),
    request_body(content = openapi::BatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "at least one item accepted (no `Location`: each item has its id)", body = openapi::BatchAnswer, headers(
            ("Idempotent-Replayed" = String, description = "`true` when this repeats the answer to an earlier request with the same `Idempotency-Key` and body"),
        )),
        (status = 422, description = "every item refused, the body is wrong (`empty_batch`, `too_long`, ...), or the `Idempotency-Key` was used before with another body (`idempotency_key_reused`)", body = openapi::BatchRefused),
        (status = 400, description = "not JSON, or a duplicate key", body = openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "the body did not arrive in time", body = openapi::ErrorBody),
        (status = 413, description = "body over api.maxBodyBytes", body = openapi::ErrorBody),
        (status = 415, description = "not application/json", body = openapi::ErrorBody),
        (status = 429, description = "the queue is full", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    ))]
async fn post_batch<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let key = idempotency_key(&headers)?;
    let value = read_json(&headers, body, &state.limits).await?;
    // One digest for the whole body, kept with every item's key: any change refuses the batch.
    let digest = key
        .as_ref()
        .map(|_| request_digest("/v1/messages/batch", &value));
    let items = batch_items(value, state.limits.max_batch as usize)?;
    // Validate everything first; the valid ones go to the store in one durable write.
    let mut slots: Vec<Result<usize, FieldError>> = Vec::with_capacity(items.len());
    let mut to_store = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let parsed = match parse_message(item) {
            Ok(mut m) => match check_callback(&state.targets, &m).await {
                Ok(()) => match check_template(&state, &mut m).await {
                    Ok(_) => Ok(m),
                    Err(e) => match e.into_field_error() {
                        Ok(f) => Err(f),
                        Err(api) => {
                            let taken: Vec<&Message> =
                                to_store.iter().map(|i: &AcceptItem| &i.message).collect();
                            give_back_credits(&state, &taken).await;
                            return Err(api);
                        }
                    },
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match parsed {
            Ok(message) => {
                slots.push(Ok(to_store.len()));
                to_store.push(AcceptItem {
                    message,
                    idempotency_key: key.as_ref().map(|k| format!("{k}#{i}")),
                    request_digest: digest.clone(),
                });
            }
            Err(e) => slots.push(Err(e.in_item(i))),
        }
    }
    // The messages that took a credit, by their place in `to_store`.
    let kept: Vec<(usize, Message)> = to_store
        .iter()
        .enumerate()
        .filter(|(_, i)| i.message.subscription_credit)
        .map(|(j, i)| (j, i.message.clone()))
        .collect();
    let stored = if to_store.is_empty() {
        Vec::new()
    } else {
        match state.store.accept(to_store).await {
            Ok(s) => s,
            Err(e) => {
                give_back_credits(&state, &kept.iter().map(|(_, m)| m).collect::<Vec<_>>()).await;
                return Err(e.into());
            }
        }
    };
    // Repeats of stored messages (same Idempotency-Key): their credit was taken the first time.
    let repeated: Vec<&Message> = kept
        .iter()
        .filter(|(j, _)| stored.get(*j).is_some_and(|a| a.duplicate))
        .map(|(_, m)| m)
        .collect();
    give_back_credits(&state, &repeated).await;
    let fresh = stored.iter().filter(|a| !a.duplicate).count();
    state.metrics.accepted.inc_by(fresh as u64);
    let replayed = !stored.is_empty() && fresh == 0;
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
                json!({"error": e.bounded()})
            }
        })
        .collect();
    let status = if stored.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::ACCEPTED
    };
    let mut resp = (
        status,
        axum::Json(json!({
            "accepted": stored.len(),
            "rejected": rejected,
            "results": results,
        })),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn parse_id(id: &str) -> Result<MessageId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no message with id {id}")))
}

pub(crate) fn status_doc(record: &MessageRecord) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.remove("budget_from");
        o.remove("request_digest");
    }
    v
}

#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the message's id")),
    responses(
        (status = 200, description = "the status document", body = MessageRecord),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "no such message", body = openapi::ErrorBody),
        (status = 503, description = "overloaded or the store is unavailable", body = openapi::ErrorBody),
    ))]
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
