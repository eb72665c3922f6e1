//! The message routes: accept one, accept a batch, read one's status.

use crate::error_code::ErrorCode;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::schema;
use super::shared::*;

use crate::message::{FieldError, Message, MessageRecord, batch_items, request_digest};
use crate::store::{AcceptItem, Store};

#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "repeats of the same key with the same body answer the first result; with another body they are refused (422 `idempotency_key_reused`)")),
    request_body(content = schema::MessageBody, content_type = "application/json"),
    responses(
        (status = 202, description = "accepted (durably stored)", body = schema::Accepted, headers(
            ("Location" = String, description = "`/v1/messages/{id}`: where to read its status"),
            ("Idempotent-Replayed" = String, description = "`true` when this repeats the answer to an earlier request with the same `Idempotency-Key` and body"),
        )),
        (status = 422, description = "a field is wrong (named in `field`), or the `Idempotency-Key` was used before with another body (`idempotency_key_reused`)", body = schema::ErrorBody),
        (status = 400, description = "not JSON, or a duplicate key", body = schema::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "the body did not arrive in time", body = schema::ErrorBody),
        (status = 413, description = "body over api.maxBodyBytes", body = schema::ErrorBody),
        (status = 415, description = "not application/json", body = schema::ErrorBody),
        (status = 429, description = "the queue is full", body = schema::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = schema::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    ))]
pub(super) async fn post_message<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(&headers, body, &state.limits).await?;
    let value = parse_json(&bytes)?;
    let request_digest = key
        .as_ref()
        .map(|_| request_digest("/v1/messages", &value.to_value()));
    let mut message = state.sender.provider().accept(&value)?;
    drop(value);
    check_callback(&state.targets, &message).await?;
    check_template(&state, &mut message).await?;
    let warnings = message.template_notes.clone();
    // Kept to give a subscription credit back (only a message that took one).
    let kept: Vec<Message> = message
        .subscription_credit
        .then(|| message.clone())
        .into_iter()
        .collect();
    let kept: Vec<&Message> = kept.iter().collect();
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
                give_back_credits(&state, &kept).await;
            }
            r
        }
        Err(e) => {
            give_back_credits(&state, &kept).await;
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
    request_body(content = schema::BatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "at least one item accepted (no `Location`: each item has its id)", body = schema::BatchAnswer, headers(
            ("Idempotent-Replayed" = String, description = "`true` when this repeats the answer to an earlier request with the same `Idempotency-Key` and body"),
        )),
        (status = 422, description = "every item refused, the body is wrong (`empty_batch`, `too_long`, ...), or the `Idempotency-Key` was used before with another body (`idempotency_key_reused`)", body = schema::BatchRefused),
        (status = 400, description = "not JSON, or a duplicate key", body = schema::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "the body did not arrive in time", body = schema::ErrorBody),
        (status = 413, description = "body over api.maxBodyBytes", body = schema::ErrorBody),
        (status = 415, description = "not application/json", body = schema::ErrorBody),
        (status = 429, description = "the queue is full", body = schema::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "draining, overloaded or the store is unavailable", body = schema::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    ))]
pub(super) async fn post_batch<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(&headers, body, &state.limits).await?;
    let value = parse_json(&bytes)?;
    // One digest for the whole body, kept with every item's key: any change refuses the batch.
    let digest = key
        .as_ref()
        .map(|_| request_digest("/v1/messages/batch", &value.to_value()));
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
    let results: Vec<ItemAnswer> = slots
        .into_iter()
        .map(|slot| match slot {
            Ok(j) => match stored.get(j) {
                Some(a) => ItemAnswer::Accepted {
                    id: a.id,
                    status: a.status.as_str(),
                },
                None => ItemAnswer::Refused {
                    error: FieldError::new(ErrorCode::Internal, "", "missing result"),
                },
            },
            Err(e) => {
                rejected += 1;
                ItemAnswer::Refused { error: e.bounded() }
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
        axum::Json(BatchAnswer {
            accepted: stored.len(),
            rejected,
            results,
        }),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The answer to a batch (`schema::BatchAnswer` documents it), written without a JSON tree
/// per item; fields in the order a sorted map would give them.
#[derive(serde::Serialize)]
struct BatchAnswer {
    accepted: usize,
    rejected: usize,
    results: Vec<ItemAnswer>,
}

/// One item of a [`BatchAnswer`].
#[derive(serde::Serialize)]
#[serde(untagged)]
enum ItemAnswer {
    Accepted {
        id: crate::message::MessageId,
        status: &'static str,
    },
    Refused {
        error: FieldError,
    },
}

#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the message's id")),
    responses(
        (status = 200, description = "the status document", body = MessageRecord),
        (status = 401, description = "missing or wrong bearer token", body = schema::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "no such message", body = schema::ErrorBody),
        (status = 503, description = "overloaded or the store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn get_message<S: Store>(
    State(state): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.store.get(id).await? {
        Some(record) => Ok(axum::Json(status_doc(&record)).into_response()),
        None => Err(ApiError::not_found(format!("no message with id {id}"))),
    }
}
