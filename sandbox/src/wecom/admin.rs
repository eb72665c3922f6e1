//! The WeCom admin routes under `/__wecom`: the messages sent, callback verification, and
//! events (which also change the directory).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::events::WeComEvent;
use crate::state::Shared;

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

/// `GET /__wecom/messages`: every application message sent, oldest first.
pub(crate) async fn messages(State(state): State<Shared>) -> Json<Value> {
    Json(json!({"messages": state.wecom.sent.list()}))
}

/// `POST /__wecom/verify`: verifies the callback URL now, as WeCom does when it is saved.
pub(crate) async fn verify(State(state): State<Shared>) -> Response {
    match state.wecom.callback.verify().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

/// `POST /__wecom/events` `{"type": "delete_user", "user_id": "u1"}` (plus an optional
/// `agentid` to send it as): applies the event to the
/// directory, then sends it to the callback URL (when one is set) and answers its outcome.
pub(crate) async fn event(State(state): State<Shared>, body: Bytes) -> Response {
    let mut fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "the event must be a JSON object"),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let agentid = match fields.remove("agentid") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(a) => Some(a),
            None => return error(StatusCode::BAD_REQUEST, "agentid must be a number"),
        },
    };
    let event: WeComEvent = match serde_json::from_value(Value::Object(fields)) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    event.apply(&state.wecom.directory);
    match state.wecom.callback.send(&event, agentid).await {
        Ok(d) => Json(
            json!({"applied": true, "sent": true, "acknowledged": d.acknowledged,
                             "attempts": d.attempts}),
        )
        .into_response(),
        Err(super::events::CallbackUse::NoUrl) => {
            Json(json!({"applied": true, "sent": false})).into_response()
        }
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}
