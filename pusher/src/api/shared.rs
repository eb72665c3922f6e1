//! What the handlers share: the state, the bearer-token check, and the checks every accept
//! runs (draining, body, callback target, template, Idempotency-Key), in the order the
//! module's doc gives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::AuthToken;
use super::error::ApiError;

use crate::callbacks::target::TargetPolicy;
use crate::config::ApiLimits;
use crate::dispatch::DispatchState;
use crate::error_code::ErrorCode;
use crate::message::{
    FieldError, Json, MAX_IDEMPOTENCY_KEY, Message, MessageId, MessageRecord, parse_strict,
};
use crate::metrics::Metrics;
use crate::store::Store;

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

pub(super) type Shared<S> = Arc<ApiState<S>>;

pub(super) async fn require_token<S: Store>(
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

pub(super) fn check_accepting<S>(state: &ApiState<S>) -> Result<(), ApiError> {
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

/// Checks the content type and size, then reads the body (parse it with [`parse_json`]).
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &ApiLimits,
) -> Result<axum::body::Bytes, ApiError> {
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
    Ok(bytes)
}

/// Parses a body read by [`read_body`] as strict JSON (a duplicate key is refused), borrowing
/// its strings.
pub(super) fn parse_json(bytes: &[u8]) -> Result<Json<'_>, ApiError> {
    parse_strict(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Refuses a `callback_url` aimed at an internal target (see [`crate::callbacks::target`]).
pub(super) async fn check_callback(
    targets: &TargetPolicy,
    message: &Message,
) -> Result<(), FieldError> {
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

pub(super) fn refusal<S>(state: &ApiState<S>, v: crate::templates::rules::Violation) -> FieldError {
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
pub(super) async fn check_template<S: Store>(
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
pub(super) async fn give_back_credits<S: Store>(state: &ApiState<S>, messages: &[&Message]) {
    for m in messages.iter().filter(|m| m.subscription_credit) {
        if let Err(e) = state.store.add_credits(&m.touser, &m.template_id, 1).await {
            tracing::warn!(error = %e, "cannot give back a subscription credit");
        }
    }
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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
pub(super) const REPLAYED: &str = "idempotent-replayed";

pub(super) fn accepted(
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

pub(super) fn parse_id(id: &str) -> Result<MessageId, ApiError> {
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
