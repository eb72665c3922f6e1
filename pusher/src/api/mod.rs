//! The pusher's HTTP API (docs/architecture.md, "The pusher's HTTP API"): accept messages, read their
//! status, inspect and replay dead letters, health, readiness and metrics.
//!
//! Checks run in a fixed order so each bad request gets one clear answer: bearer token (401) →
//! draining (503) → content type (415) → body size (413) → JSON syntax (400) → fields (422) →
//! queue room (429). A refused request writes nothing.

pub mod auth;
mod error;
pub mod json;
pub mod openapi;
mod recall;
pub mod server;

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

use crate::callbacks::target::TargetPolicy;
use crate::config::ApiLimits;
use crate::dispatch::DispatchState;
use crate::error_code::ErrorCode;
use crate::message::{
    FieldError, MAX_IDEMPOTENCY_KEY, Message, MessageId, MessageRecord, batch_items, request_digest,
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
    /// The channel's sending engine: its provider checks messages at accept, and recalls go
    /// through it.
    pub sender: Arc<crate::wechat::WeChatSender>,
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
        .route(
            "/v1/messages/{id}/recall",
            post(recall::recall_message::<S>),
        )
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
    let mut message = state.sender.provider().accept(&value)?;
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
        let parsed = match state.sender.provider().accept(item) {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    after: Option<String>,
    // Read as text so that a bad value gets this API's own answer, naming the bounds.
    limit: Option<String>,
}

/// Bounds of `limit` on `GET /v1/dead-letters` (outside them: 400 `bad_query`).
pub const MIN_PAGE: usize = 1;
/// See [`MIN_PAGE`].
pub const MAX_PAGE: usize = 1000;
/// `limit` when not given.
pub const DEFAULT_PAGE: usize = 100;

fn page_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = limit else {
        return Ok(DEFAULT_PAGE);
    };
    match text.parse::<usize>() {
        Ok(n) if (MIN_PAGE..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadQuery,
            format!("limit must be a whole number from {MIN_PAGE} to {MAX_PAGE}"),
        )
        .field("limit")),
    }
}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters",
    security(("bearer" = [])),
    params(
        ("after" = Option<String>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100; outside: 400 `bad_query`"),
    ),
    responses(
        (status = 200, description = "a page of dead letters", body = openapi::DeadLetterPage),
        (status = 400, description = "a malformed query, an unknown parameter or `limit` outside 1 to 1000 (`bad_query`)", body = openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 422, description = "`after` is not a message id", body = openapi::ErrorBody),
        (status = 503, description = "overloaded or the store is unavailable", body = openapi::ErrorBody),
    ))]
async fn list_dead_letters<S: Store>(
    State(state): State<Shared<S>>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadQuery, e.body_text()))?;
    let after = match q.after.as_deref() {
        Some(a) => Some(a.parse::<MessageId>().map_err(|_| {
            ApiError::from(FieldError {
                code: ErrorCode::InvalidField,
                message: "must be a message id".into(),
                field: "after".into(),
                rule: None,
            })
        })?),
        None => None,
    };
    let limit = page_limit(q.limit.as_deref())?;
    let page = state.store.dead_letters(after, limit).await?;
    let items: Vec<Value> = page.items.iter().map(status_doc).collect();
    Ok(axum::Json(json!({"items": items, "next": page.next})).into_response())
}

#[utoipa::path(post, path = "/v1/dead-letters/{id}/retry", tag = "dead letters",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the dead letter's id")),
    responses(
        (status = 202, description = "queued again", body = openapi::Accepted, headers(
            ("Location" = String, description = "`/v1/messages/{id}`"),
        )),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "no such message", body = openapi::ErrorBody),
        (status = 409, description = "not a dead letter, or past its expiry", body = openapi::ErrorBody),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = openapi::ErrorBody),
    ))]
async fn replay<S: Store>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let id = parse_id(&id)?;
    let record = state.store.replay(id).await?;
    tracing::info!(%id, replays = record.replays, "dead letter replayed");
    Ok(accepted(record.id, record.status.as_str(), false, &[]))
}

/// Most consents recorded by one request.
pub const MAX_CREDITS_PER_REQUEST: u64 = 100;

fn credit_key(obj: &serde_json::Map<String, Value>, field: &str) -> Result<String, ApiError> {
    let bad = |code, message: &str| {
        ApiError::from(FieldError {
            code,
            message: message.into(),
            field: field.into(),
            rule: None,
        })
    };
    match obj.get(field) {
        Some(Value::String(s))
            if !s.trim().is_empty()
                && s.chars().count() <= crate::store::MAX_CREDIT_KEY
                && !s.chars().any(char::is_control) =>
        {
            Ok(s.clone())
        }
        Some(_) => Err(bad(
            ErrorCode::InvalidField,
            "must be 1 to 128 characters without control characters",
        )),
        None => Err(bad(ErrorCode::MissingField, "is required")),
    }
}

#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions",
    security(("bearer" = [])),
    request_body(content = openapi::SubscriptionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "recorded; the user's credits for the template now", body = openapi::Credits),
        (status = 400, description = "not JSON", body = openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 413, description = "body over api.maxBodyBytes", body = openapi::ErrorBody),
        (status = 415, description = "not application/json", body = openapi::ErrorBody),
        (status = 422, description = "a field is wrong (named in `field`)", body = openapi::ErrorBody),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = openapi::ErrorBody),
    ))]
async fn add_subscription<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let value = read_json(&headers, body, &state.limits).await?;
    let Value::Object(obj) = value else {
        return Err(ApiError::from(FieldError {
            code: ErrorCode::InvalidField,
            message: "the body must be {\"openid\", \"template_id\", \"count\"}".into(),
            field: String::new(),
            rule: None,
        }));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "openid" | "template_id" | "count"))
    {
        return Err(ApiError::from(FieldError {
            code: ErrorCode::UnknownField,
            message: "unknown field; expected openid, template_id, count".into(),
            field: unknown.clone(),
            rule: None,
        }));
    }
    let openid = credit_key(&obj, "openid")?;
    let template_id = credit_key(&obj, "template_id")?;
    let count = match obj.get("count") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_CREDITS_PER_REQUEST).contains(n))
            .ok_or_else(|| {
                ApiError::from(FieldError {
                    code: ErrorCode::InvalidField,
                    message: format!("must be a whole number from 1 to {MAX_CREDITS_PER_REQUEST}"),
                    field: "count".into(),
                    rule: None,
                })
            })?,
    };
    let credits = state
        .store
        .add_credits(&openid, &template_id, count)
        .await?;
    Ok(
        axum::Json(json!({"openid": openid, "template_id": template_id, "credits": credits}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditQuery {
    openid: String,
    template_id: String,
}

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions",
    security(("bearer" = [])),
    params(
        ("openid" = String, Query, description = "the user's openid"),
        ("template_id" = String, Query, description = "the template"),
    ),
    responses(
        (status = 200, description = "the user's credits for the template", body = openapi::Credits),
        (status = 400, description = "a malformed query or an unknown parameter (`bad_query`)", body = openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 503, description = "overloaded or the store is unavailable", body = openapi::ErrorBody),
    ))]
async fn get_subscription<S: Store>(
    State(state): State<Shared<S>>,
    query: Result<Query<CreditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadQuery, e.body_text()))?;
    let credits = state.store.credits(&q.openid, &q.template_id).await?;
    Ok(
        axum::Json(json!({"openid": q.openid, "template_id": q.template_id, "credits": credits}))
            .into_response(),
    )
}

/// The one-word health states: all that an unauthenticated caller learns.
fn health_word(status: StatusCode, word: &'static str) -> Response {
    (status, axum::Json(json!({ "status": word }))).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses(
        (status = 200, description = "alive: `ok`, or `on_hold` while sending is held (paused channel, open circuit); the reason is on `/v1/status`", body = openapi::Health),
        (status = 503, description = "`unavailable`: the store has failed to heal (a restart may help)", body = openapi::Health),
    ))]
async fn healthz<S: Store>(State(state): State<Shared<S>>) -> Response {
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
        (status = 200, description = "`ok`: takes messages", body = openapi::Health),
        (status = 503, description = "`unavailable`: draining or the store is unavailable; the reason is on `/v1/status`", body = openapi::Health),
    ))]
async fn readyz<S: Store>(State(state): State<Shared<S>>) -> Response {
    if not_ready(&state).is_some() {
        return health_word(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    health_word(StatusCode::OK, "ok")
}

fn not_ready<S: Store>(state: &ApiState<S>) -> Option<&'static str> {
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
        (status = 200, description = "the pusher's state with its reasons", body = openapi::ServiceStatus),
        (status = 401, description = "missing or wrong bearer token", body = openapi::ErrorBody),
    ))]
async fn status<S: Store>(State(state): State<Shared<S>>) -> Response {
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

fn templates_status(registry: &crate::templates::Registry) -> Value {
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

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
        .into_response()
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
