//! `POST /v1/messages/{id}/recall`: takes a delivered message back from its recipients, where
//! the channel's provider can (WeCom applications: `message/recall`, within 24 hours of the
//! send). Every refusal says why: the provider cannot recall, the message was not delivered (or
//! has no provider message id), or the window has passed.
//!
//! A recall WeCom took is kept in the message's record (`receipt.recalled_at`, through
//! [`Store::record_recall`]), so `GET /v1/messages/{id}` shows it. Asking again answers 200
//! with the first recall's time, without calling WeCom again. When WeCom refuses, its answer
//! is passed on (a 502 `recall_failed` with its errcode) and nothing is recorded.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};

use super::error::ApiError;
use super::schema::ErrorBody;
use super::shared::{Shared, parse_id};
use crate::error_code::ErrorCode;
use crate::message::Status;
use crate::store::Store;

/// The answer to a recall.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Recalled {
    /// The message id.
    pub id: String,
    /// The provider's message id that was recalled.
    pub provider_msgid: String,
    /// When the message was recalled: the first recall's time when it was recalled before.
    #[schema(value_type = String, format = DateTime)]
    pub recalled_at: Timestamp,
}

fn recalled(id: crate::message::MessageId, provider_msgid: String, at: Timestamp) -> Response {
    axum::Json(Recalled {
        id: id.to_string(),
        provider_msgid,
        recalled_at: at,
    })
    .into_response()
}

fn refuse(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::NotRecallable, message)
}

#[utoipa::path(post, path = "/v1/messages/{id}/recall", tag = "messages",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the message's id")),
    responses(
        (status = 200, description = "recalled (now, or before: then with the first recall's time, and WeCom is not asked again)", body = Recalled),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "no such message", body = ErrorBody),
        (status = 409, description = "`not_recallable`: the provider cannot recall, the message was not delivered, or its recall window has passed", body = ErrorBody),
        (status = 502, description = "`recall_failed`: the provider refused the recall or could not be reached", body = ErrorBody),
        (status = 503, description = "overloaded or the store is unavailable", body = ErrorBody),
    ))]
pub(super) async fn recall_message<S: Store>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Some(record) = state.store.get(id).await? else {
        return Err(ApiError::not_found(format!("no message with id {id}")));
    };
    let provider = state.sender.provider();
    let msgid = record
        .receipt
        .as_ref()
        .and_then(|r| r.provider_msgid.clone());
    let delivered = matches!(record.status, Status::Delivered | Status::Confirmed);
    let Some(msgid) = msgid.filter(|_| delivered) else {
        return Err(refuse(format!(
            "message {id} is {}: only a delivered message with the provider's msgid can be \
             recalled",
            record.status.as_str()
        )));
    };
    if let Some(at) = record.receipt.as_ref().and_then(|r| r.recalled_at) {
        return Ok(recalled(id, msgid, at));
    }
    let Some((outgoing, window)) = provider.recall(&msgid) else {
        return Err(refuse(format!(
            "a {} channel cannot recall messages",
            provider.name()
        )));
    };
    let sent_at = record.finished_at.unwrap_or(record.updated_at);
    let now = Timestamp::now();
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
    if sent_at.checked_add(window).is_ok_and(|end| end <= now) {
        return Err(refuse(format!(
            "message {id} was delivered at {sent_at}: past the {}-hour recall window",
            window.as_hours()
        )));
    }
    match state.sender.recall(outgoing).await {
        Ok(()) => {
            tracing::info!(%id, "message recalled");
            // WeCom took it back. Should the record not be written (the store answers 503),
            // a later recall asks WeCom again.
            let at = state.store.record_recall(id, now).await?;
            Ok(recalled(id, msgid, at))
        }
        Err(error) => {
            tracing::warn!(%id, errcode = error.errcode, "recall refused: {}", error.message);
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::RecallFailed,
                format!("the provider refused the recall: {}", error.message),
            ))
        }
    }
}
