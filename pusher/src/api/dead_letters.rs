//! The dead-letter routes: list them, and send one again.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::schema;
use super::shared::*;
use crate::store::Store;

use crate::error_code::ErrorCode;
use crate::message::{FieldError, MessageId};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadLetterQuery {
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

pub(super) fn page_limit(limit: Option<&str>) -> Result<usize, ApiError> {
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
        (status = 200, description = "a page of dead letters", body = schema::DeadLetterPage),
        (status = 400, description = "a malformed query, an unknown parameter or `limit` outside 1 to 1000 (`bad_query`)", body = schema::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 422, description = "`after` is not a message id", body = schema::ErrorBody),
        (status = 503, description = "overloaded or the store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn list_dead_letters<S: Store>(
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
        (status = 202, description = "queued again", body = schema::Accepted, headers(
            ("Location" = String, description = "`/v1/messages/{id}`"),
        )),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "no such message", body = schema::ErrorBody),
        (status = 409, description = "not a dead letter, or past its expiry", body = schema::ErrorBody),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn replay<S: Store>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let id = parse_id(&id)?;
    let record = state.store.replay(id).await?;
    tracing::info!(%id, replays = record.replays, "dead letter replayed");
    Ok(accepted(record.id, record.status.as_str(), false, &[]))
}
