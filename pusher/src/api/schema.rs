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

/// The body of `POST /v1/messages` (and an item of a batch): the shape the channel's
/// `provider` takes. A WeChat channel takes [`MessageRequest`], a `wecomApp` channel
/// [`WeComAppMessage`], a `wecomRobot` channel [`WeComRobotMessage`]; any other shape is
/// refused with 422 naming the field.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum MessageBody {
    /// A WeChat template, subscribe or bizsend message.
    WeChat(MessageRequest),
    /// A WeCom application message.
    WeComApp(WeComAppMessage),
    /// A WeCom group robot message.
    WeComRobot(WeComRobotMessage),
}

/// WeCom message types of an application.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeComAppType {
    /// Plain text (`text.content`, at most 2,048 bytes).
    Text,
    /// A card with a link (`textcard.title`, `description`, `url`, optional `btntxt`).
    Textcard,
    /// Markdown (`markdown.content`, at most 2,048 bytes).
    Markdown,
    /// 1 to 8 articles (`news.articles[]`, each with `title` and `url`).
    News,
    /// A template card (`template_card.card_type` and its fields).
    TemplateCard,
}

/// WeCom message types of a group robot.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeComRobotType {
    /// Plain text (`text.content`).
    Text,
    /// Markdown (`markdown.content`, at most 4,096 bytes).
    Markdown,
    /// 1 to 8 articles (`news.articles[]`, each with `title` and `url`).
    News,
}

/// A `wecomApp` channel's message: WeCom's `message/send` body without `agentid` (the channel
/// adds it). At least one of `touser`, `toparty` and `totag`; exactly the content object the
/// `msgtype` names. Unknown fields are refused.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeComAppMessage {
    /// User ids joined by `|` (at most 1,000), or `@all`.
    #[schema(min_length = 1, nullable = false)]
    touser: Option<String>,
    /// Party ids joined by `|` (at most 100).
    #[schema(min_length = 1, nullable = false)]
    toparty: Option<String>,
    /// Tag ids joined by `|` (at most 100).
    #[schema(min_length = 1, nullable = false)]
    totag: Option<String>,
    /// The message type.
    msgtype: WeComAppType,
    /// `{"content": "..."}` (`msgtype` `text`).
    #[schema(value_type = Object, nullable = false, required = false)]
    text: Option<Value>,
    /// `{"title", "description", "url", "btntxt"}` (`msgtype` `textcard`).
    #[schema(value_type = Object, nullable = false, required = false)]
    textcard: Option<Value>,
    /// `{"content": "..."}` (`msgtype` `markdown`).
    #[schema(value_type = Object, nullable = false, required = false)]
    markdown: Option<Value>,
    /// `{"articles": [{"title", "url", "description", "picurl"}]}` (`msgtype` `news`).
    #[schema(value_type = Object, nullable = false, required = false)]
    news: Option<Value>,
    /// WeCom's template card (`msgtype` `template_card`).
    #[schema(value_type = Object, nullable = false, required = false)]
    template_card: Option<Value>,
    /// 1: confidential (not for `markdown` or `template_card`).
    #[schema(minimum = 0, maximum = 1, nullable = false)]
    safe: Option<u8>,
    /// WeCom's duplicate check (default true): a retry after an unknown outcome is not shown
    /// twice within 30 minutes. Off, the message is never re-sent after an unknown outcome.
    #[schema(nullable = false)]
    duplicate_check: Option<bool>,
    /// Give up after this instant (RFC 3339).
    #[schema(format = DateTime, nullable = false)]
    expires_at: Option<String>,
    /// Where to POST the outcome.
    #[schema(max_length = 2048, nullable = false)]
    callback_url: Option<String>,
}

/// A `wecomRobot` channel's message: the robot's webhook body (it has no recipients: it posts
/// into its group). Unknown fields are refused.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeComRobotMessage {
    /// The message type.
    msgtype: WeComRobotType,
    /// `{"content": "...", "mentioned_list": [...]}` (`msgtype` `text`).
    #[schema(value_type = Object, nullable = false, required = false)]
    text: Option<Value>,
    /// `{"content": "..."}` (`msgtype` `markdown`).
    #[schema(value_type = Object, nullable = false, required = false)]
    markdown: Option<Value>,
    /// `{"articles": [...]}` (`msgtype` `news`).
    #[schema(value_type = Object, nullable = false, required = false)]
    news: Option<Value>,
    /// Give up after this instant (RFC 3339).
    #[schema(format = DateTime, nullable = false)]
    expires_at: Option<String>,
    /// Where to POST the outcome.
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
    messages: Vec<MessageBody>,
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
