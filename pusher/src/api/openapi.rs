//! The OpenAPI document of the HTTP API, generated with utoipa from the handlers' `#[utoipa::path]`
//! attributes (in `api/mod.rs`) and the schema types below; served at `GET /openapi.json` and
//! committed as `docs/openapi.json` (a unit test fails when the two drift; `UPDATE_OPENAPI=1`
//! rewrites the file).
//!
//! The handlers validate bodies by hand (from a JSON value, so every error names its field), so
//! the request and answer shapes are described here by small types that exist for the document
//! only; their fields follow `message.rs` and `api/mod.rs`.

#![allow(dead_code)] // The types below are never built: they describe JSON for the document.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A message to send (`POST /v1/messages`, an item of a batch). Unknown fields are refused.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// `template` (default), `subscribe` or `bizsend`.
    #[schema(nullable = false)]
    kind: Option<Kind>,
    /// The recipient's openid.
    #[schema(min_length = 1, max_length = 128)]
    touser: String,
    /// The template.
    #[schema(min_length = 1, max_length = 128)]
    template_id: String,
    /// Page opened on tap (template messages): an absolute http(s) URL.
    #[schema(max_length = 1024, nullable = false)]
    url: Option<String>,
    /// Mini Program opened on tap.
    #[schema(nullable = false)]
    miniprogram: Option<MiniProgram>,
    /// Mini Program page (subscribe messages and subscription notices).
    #[schema(max_length = 1024, nullable = false)]
    page: Option<String>,
    /// `developer`, `trial` or `formal`.
    #[schema(nullable = false)]
    miniprogram_state: Option<String>,
    /// Language, e.g. `zh_CN`.
    #[schema(nullable = false)]
    lang: Option<String>,
    /// The template's fields: `{"keyword1": {"value": "..."}}`.
    #[schema(value_type = Object, nullable = false, required = false)]
    data: Option<Value>,
    /// The `client_msg_id` (default: derived from the id).
    #[schema(nullable = false)]
    client_msg_id: Option<String>,
    /// Give up after this instant (RFC 3339).
    #[schema(format = DateTime, nullable = false)]
    expires_at: Option<String>,
    /// Where to POST the outcome; internal targets are refused unless `callbacks.allow` lists
    /// them.
    #[schema(max_length = 1024, nullable = false)]
    callback_url: Option<String>,
}

/// Which WeChat API a message goes to.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Kind {
    /// Official Account template message.
    Template,
    /// Mini Program subscribe message.
    Subscribe,
    /// Official Account subscription notice.
    Bizsend,
}

/// `miniprogram` of a template message.
#[derive(Debug, ToSchema)]
pub struct MiniProgram {
    /// The Mini Program's appid.
    appid: String,
    /// The page to open.
    #[schema(nullable = false)]
    pagepath: Option<String>,
}

/// `POST /v1/messages/batch`.
#[derive(Debug, ToSchema)]
pub struct BatchRequest {
    /// 1 to `api.maxBatch` messages.
    #[schema(min_items = 1)]
    messages: Vec<MessageRequest>,
}

/// A message was accepted (or, with a repeated `Idempotency-Key`, had been).
#[derive(Debug, ToSchema)]
pub struct Accepted {
    /// The message's id.
    id: String,
    /// Its status now.
    status: String,
}

/// The answer of a batch: one result per item, in order.
#[derive(Debug, ToSchema)]
pub struct BatchAnswer {
    /// Items accepted.
    accepted: u64,
    /// Items refused.
    rejected: u64,
    /// `{id, status}` or `{error}` per item.
    results: Vec<BatchItem>,
}

/// One item's result.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// Accepted.
    Accepted(Accepted),
    /// Refused.
    Refused(ItemError),
}

/// A refused batch item.
#[derive(Debug, ToSchema)]
pub struct ItemError {
    /// Why.
    error: ErrorDetail,
}

/// A refused batch: all items refused, or the body itself at fault.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum BatchRefused {
    /// Every item refused.
    Items(BatchAnswer),
    /// The body is wrong as a whole.
    Body(ErrorBody),
}

/// An error answer.
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, ToSchema)]
pub struct ErrorDetail {
    /// A snake_case code (`unauthorized`, `malformed_json`, `unknown_field`, ...).
    code: String,
    /// A sentence for people.
    message: String,
    /// The field at fault, as a path (at most 128 characters).
    #[schema(nullable = false)]
    field: Option<String>,
}

/// A message's status document.
#[derive(Debug, ToSchema)]
pub struct MessageStatus {
    /// The id.
    id: String,
    /// `queued`, `sending`, `retrying`, `delivered`, `confirmed`, `rejected_by_user`, `failed`,
    /// `expired` or `dead_lettered`.
    status: String,
    /// The `client_msg_id` every attempt carries.
    client_msg_id: String,
    /// Attempts made.
    attempts: u64,
    /// The last failed attempt.
    #[schema(value_type = Object, nullable = false, required = false)]
    last_error: Option<Value>,
    /// WeChat's msgid, once delivered.
    #[schema(nullable = false)]
    msgid: Option<i64>,
    /// When it was accepted.
    accepted_at: String,
    /// When the next attempt is due.
    #[schema(nullable = false)]
    next_attempt_at: Option<String>,
    /// When it reached its final state.
    #[schema(nullable = false)]
    finished_at: Option<String>,
    /// When the record last changed.
    updated_at: String,
    /// Whether it is a dead letter.
    dead_letter: bool,
    /// Replays from the dead letters.
    replays: u64,
    /// The `Idempotency-Key` it came with.
    #[schema(nullable = false)]
    idempotency_key: Option<String>,
    /// Delivery events recorded for it.
    #[schema(nullable = false)]
    events: Option<Vec<Value>>,
    /// The message as accepted.
    #[schema(value_type = Object)]
    message: Value,
}

/// A page of dead letters.
#[derive(Debug, ToSchema)]
pub struct DeadLetterPage {
    /// Status documents, oldest first.
    items: Vec<MessageStatus>,
    /// The id to pass as `after` for the next page; null on the last one.
    next: Option<String>,
}

/// `/healthz` and `/readyz`: one word, nothing more (they need no token).
#[derive(Debug, ToSchema)]
pub struct Health {
    /// `ok`, `on_hold` (`/healthz` only: sending is held) or `unavailable`.
    #[schema(pattern = "^(ok|on_hold|unavailable)$")]
    status: String,
}

/// `/v1/status`: the state with its reasons, for holders of the token.
#[derive(Debug, ToSchema)]
pub struct Status {
    /// As `/healthz`: `ok`, `on_hold` or `unavailable`.
    status: String,
    /// Whether the store heals (false: `/healthz` answers 503).
    live: bool,
    /// Whether the pusher takes messages (`/readyz`).
    ready: bool,
    /// Why not ready: `draining` or `store unavailable` (null when ready).
    not_ready_reason: Option<String>,
    /// `active`, or `on_hold` (paused channel, open circuit).
    sending: String,
    /// Why sending is held: `{until, reason}` with WeChat's errcode and errmsg (null while
    /// sending).
    #[schema(value_type = Option<Object>)]
    hold: Option<Value>,
}

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "wxpush pusher",
        description = "Accepts WeChat template messages, stores them durably and delivers them \
                       with retries. See docs/pusher.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::post_message,
        super::post_batch,
        super::get_message,
        super::list_dead_letters,
        super::replay,
        super::healthz,
        super::readyz,
        super::status,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `/openapi.json` serves and `docs/openapi.json` holds).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate's version would make the file drift on every release: the API has its own.
    doc.info.version = "v1".into();
    let mut text = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_json_in_docs_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let now = document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &now).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json drifted from the code: run `UPDATE_OPENAPI=1 cargo test -p \
             wxpush-pusher --lib openapi` and commit it"
        );
    }
}
