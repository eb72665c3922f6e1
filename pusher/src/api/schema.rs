//! The shapes of the API's requests and small answers, for the OpenAPI document only: the
//! handlers validate bodies by hand (from a JSON value, so every error names its field), so
//! these types are never built; `openapi.rs`'s tests check them against the code's limits.

#![allow(dead_code)] // The types below are never built: they describe JSON for the document.

use serde_json::Value;
use utoipa::ToSchema;

use crate::error_code::ErrorCode;
use crate::message::{MessageRecord, MiniProgram, Status};
use crate::send::MessageKind;

/// A message to send (`POST /v1/messages`, an item of a batch). Unknown fields are refused.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// `template` (default), `subscribe` or `bizsend`.
    #[schema(nullable = false)]
    kind: Option<MessageKind>,
    /// The recipient's openid.
    #[schema(min_length = 1, max_length = 128)]
    touser: String,
    /// The template.
    #[schema(min_length = 1, max_length = 128)]
    template_id: String,
    /// Page opened on tap (template messages): an absolute http(s) URL.
    #[schema(max_length = 2048, nullable = false)]
    url: Option<String>,
    /// Mini Program opened on tap.
    #[schema(nullable = false)]
    miniprogram: Option<MiniProgram>,
    /// Mini Program page (subscribe messages and subscription notices).
    #[schema(max_length = 1024, nullable = false)]
    page: Option<String>,
    /// `developer`, `trial` or `formal`.
    #[schema(nullable = false)]
    miniprogram_state: Option<MiniProgramState>,
    /// Language, e.g. `zh_CN`.
    #[schema(max_length = 16, nullable = false)]
    lang: Option<String>,
    /// The template's fields: `{"keyword1": {"value": "..."}}`.
    #[schema(value_type = Object, nullable = false, required = false)]
    data: Option<Value>,
    /// The `client_msg_id` (default: derived from the id).
    #[schema(min_length = 1, max_length = 64, nullable = false)]
    client_msg_id: Option<String>,
    /// Give up after this instant (RFC 3339).
    #[schema(format = DateTime, nullable = false)]
    expires_at: Option<String>,
    /// Where to POST the outcome; internal targets are refused unless `callbacks.allow` lists
    /// them.
    #[schema(max_length = 2048, nullable = false)]
    callback_url: Option<String>,
}

/// `POST /v1/subscriptions`: a user's consent to a one-time subscribe template.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// The user's openid.
    #[schema(min_length = 1, max_length = 128)]
    openid: String,
    /// The one-time subscribe template the user accepted.
    #[schema(min_length = 1, max_length = 128)]
    template_id: String,
    /// Consents given at once (default 1).
    #[schema(minimum = 1, maximum = 100, nullable = false)]
    count: Option<u32>,
}

/// The credits of one user for one template.
#[derive(Debug, ToSchema)]
pub struct Credits {
    /// The user's openid.
    openid: String,
    /// The template.
    template_id: String,
    /// One-time sends left.
    credits: u64,
}

/// `miniprogram_state` of a subscribe message.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum MiniProgramState {
    /// The developer version.
    Developer,
    /// The trial version.
    Trial,
    /// The released version.
    Formal,
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
    status: Status,
    /// What the template check found: fields WeChat ignores, values cut (`truncate`). Absent
    /// when nothing.
    #[schema(nullable = false)]
    warnings: Option<Vec<crate::message::TemplateNote>>,
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
    /// What kind of error.
    code: ErrorCode,
    /// A sentence for people.
    message: String,
    /// The field at fault, as a path (at most 128 characters).
    #[schema(nullable = false)]
    field: Option<String>,
    /// The template rule broken (`template_rule` errors only): `unknown_template`,
    /// `missing_keyword`, `unknown_keyword`, `empty_value`, `too_long`, `bad_characters`,
    /// `bad_format`, `not_allowed_value`, `line_break`, `control_character`,
    /// `no_subscription_credit`.
    #[schema(nullable = false)]
    rule: Option<String>,
}

/// A page of dead letters.
#[derive(Debug, ToSchema)]
pub struct DeadLetterPage {
    /// Status documents, oldest first.
    items: Vec<MessageRecord>,
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
pub struct ServiceStatus {
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
    /// Why sending is held: `{until, cause, reason}` (`cause`: `paused` or `circuit_open`) with
    /// WeChat's errcode and errmsg (null while sending).
    #[schema(value_type = Option<Object>)]
    hold: Option<Value>,
    /// The template registry: `validation` (`auto`, `strict`, `truncate`, `off`), the number of
    /// templates cached per list (`private`, `subscribe`; null while never read) and
    /// `fetched_at` (null before the first fetch).
    #[schema(value_type = Object)]
    templates: Value,
}
