//! The subscription routes: record a user's consents (one-time credits) and read them back.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::schema;
use super::shared::*;
use crate::store::Store;

use crate::error_code::ErrorCode;
use crate::message::FieldError;

/// Most consents recorded by one request.
pub const MAX_CREDITS_PER_REQUEST: u64 = 100;

pub(super) fn credit_key(
    obj: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<String, ApiError> {
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
    request_body(content = schema::SubscriptionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "recorded; the user's credits for the template now", body = schema::Credits),
        (status = 400, description = "not JSON", body = schema::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 413, description = "body over api.maxBodyBytes", body = schema::ErrorBody),
        (status = 415, description = "not application/json", body = schema::ErrorBody),
        (status = 422, description = "a field is wrong (named in `field`)", body = schema::ErrorBody),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn add_subscription<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let bytes = read_body(&headers, body, &state.limits).await?;
    let value = parse_json(&bytes)?.to_value();
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
pub(super) struct CreditQuery {
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
        (status = 200, description = "the user's credits for the template", body = schema::Credits),
        (status = 400, description = "a malformed query or an unknown parameter (`bad_query`)", body = schema::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 503, description = "overloaded or the store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn get_subscription<S: Store>(
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
