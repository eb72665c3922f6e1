//! The vocabulary of one send attempt, and [`Sender`], the trait a provider implements.
//!
//! This module sits below everything that sends: the message model names a [`MessageKind`], the
//! dispatcher hands a [`SendRequest`] to the channel's engine (`wechat::WeChatSender`), and the
//! engine asks the channel's [`Sender`] — one per kind the `provider` field names, in
//! `providers/` — what to call and what the answer means. The engine owns everything providers
//! share (pooled HTTP client, access_token manager, breaker, rate limit, quota); a provider owns
//! only its wire protocol: token scope, request building and errcode classification.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::{FieldError, Message};
use crate::policy::Retry;

/// Which WeChat send API a message goes to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// `POST /cgi-bin/message/template/send` (Official Account template message). The default.
    #[default]
    Template,
    /// `POST /cgi-bin/message/subscribe/send` (Mini Program subscribe message).
    Subscribe,
    /// `POST /cgi-bin/message/subscribe/bizsend` (Official Account subscription notice).
    Bizsend,
}

impl MessageKind {
    /// The API path, without the access_token query.
    pub fn path(self) -> &'static str {
        match self {
            Self::Template => "/cgi-bin/message/template/send",
            Self::Subscribe => "/cgi-bin/message/subscribe/send",
            Self::Bizsend => "/cgi-bin/message/subscribe/bizsend",
        }
    }
}

/// One attempt to send: the JSON body exactly as WeChat takes it (`touser`, `template_id`,
/// `data`, ..., and the message's one `client_msg_id`, the same for every attempt).
#[derive(Debug, Clone, Copy)]
pub struct SendRequest<'a> {
    /// Which API.
    pub kind: MessageKind,
    /// The body, as JSON text ([`crate::message::Message::wechat_body`]).
    pub body: &'a serde_json::value::RawValue,
}

/// What went wrong in an attempt, in a form fit for status, logs and metrics (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = LastError)]
pub struct SendError {
    /// What kind of failure it was.
    pub kind: ErrorKind,
    /// WeChat's errcode, when it answered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    /// A sentence for people.
    pub message: String,
}

impl SendError {
    /// An error of `kind` with no errcode.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            errcode: None,
            message: message.into(),
        }
    }
}

/// The kind of a [`SendError`], as the API and the stored record spell it (`snake_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The TCP connection was not established in `timeouts.connect`.
    TimeoutConnect,
    /// The TLS handshake did not finish in `timeouts.tls`.
    TimeoutTls,
    /// No response header came in `timeouts.responseHeader`.
    TimeoutResponseHeader,
    /// The whole request did not finish in `timeouts.request`.
    TimeoutRequest,
    /// DNS, a refused or reset connection, a TLS error.
    Transport,
    /// WeChat (or a proxy) answered 5xx: the outcome is unknown.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// Another non-200 status.
    HttpStatus,
    /// A 200 whose body is not WeChat's JSON.
    BadResponse,
    /// WeChat answered an errcode (see `errcode`).
    Errcode,
    /// No valid access_token could be had.
    Token,
    /// WeChat asked to slow down (45011).
    Throttled,
    /// The channel's own rate limit had no permit.
    RateLimited,
    /// The daily quota is spent.
    Quota,
    /// The body could not be built.
    Body,
    /// The circuit breaker was open.
    CircuitOpen,
    /// The provider cannot send this message at all.
    Provider,
    /// The message outlived its `ttl` before it was sent.
    Expired,
    /// An attempt was in flight when its pusher stopped, past WeChat's de-duplication window.
    UnknownOutcome,
    /// A kind this version does not know (written by a newer pusher); kept readable.
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TimeoutConnect => "timeout_connect",
            Self::TimeoutTls => "timeout_tls",
            Self::TimeoutResponseHeader => "timeout_response_header",
            Self::TimeoutRequest => "timeout_request",
            Self::Transport => "transport",
            Self::Http5xx => "http_5xx",
            Self::HttpStatus => "http_status",
            Self::BadResponse => "bad_response",
            Self::Errcode => "errcode",
            Self::Token => "token",
            Self::Throttled => "throttled",
            Self::RateLimited => "rate_limited",
            Self::Quota => "quota",
            Self::Body => "body",
            Self::CircuitOpen => "circuit_open",
            Self::Provider => "provider",
            Self::Expired => "expired",
            Self::UnknownOutcome => "unknown_outcome",
            Self::Other => "other",
        }
    }

    /// Whether the failure says WeChat is unreachable or failing (what the breaker counts): a
    /// timeout, a transport error, a 5xx, or a 200 that is not WeChat's JSON.
    pub const fn is_outage(self) -> bool {
        matches!(
            self,
            Self::Transport
                | Self::TimeoutConnect
                | Self::TimeoutTls
                | Self::TimeoutResponseHeader
                | Self::TimeoutRequest
                | Self::Http5xx
                | Self::BadResponse
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after a send answered with an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAction {
    /// errcode 0: delivered.
    Delivered,
    /// Retry with the policy's backoff, or not before `not_before` when set.
    Retry {
        /// A minimum delay WeChat asked for (45011, 43117).
        not_before: Option<Duration>,
    },
    /// The access_token was refused (40001, 40014, 42001): invalidate that token, refresh once,
    /// retry once.
    RefreshToken,
    /// The message can never be sent as it is.
    Permanent {
        /// Whether it points at a channel-wide problem an operator should look at (40037).
        alert: bool,
    },
    /// The channel cannot send: configuration fault (48001, 40013, 40125, 40164; `until` is
    /// `None`, probe later) or the daily quota (45009; `until` = next midnight Beijing time).
    Pause {
        /// When sending may resume, when known.
        until: Option<SystemTime>,
    },
    /// 45011: the account's per-minute quota. Slow the whole channel down for `for_at_least`.
    Throttle {
        /// How long.
        for_at_least: Duration,
    },
}

/// Which access_token a provider's sends carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// The account's token for its appid, from WeChat's `stable_token` (or classic `token`)
    /// API, as `token.api` chooses. Official Accounts and Mini Programs both use it.
    WeChatApp,
    /// A WeCom token of one (corp, application secret), from `gettoken`.
    WeComApp,
    /// No token: the request carries the channel's webhook key (`?key=`), as a WeCom group
    /// robot's does.
    WebhookKey,
}

impl TokenScope {
    /// The query parameter the token (or key) is sent in.
    pub fn query_param(self) -> &'static str {
        match self {
            Self::WeChatApp | Self::WeComApp => "access_token",
            Self::WebhookKey => "key",
        }
    }
}

/// A 200 answer as a provider read it: the errcode, what it means, and what it says beyond
/// that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The errcode (0 when the answer had none).
    pub errcode: i64,
    /// The errmsg.
    pub errmsg: String,
    /// WeChat's numeric `msgid`, when given.
    pub msgid: Option<i64>,
    /// The rest: a text message id, recipients the provider could not reach.
    pub receipt: Option<Receipt>,
}

/// What a delivery answer said beyond "sent": the provider's own message id when it is text
/// (WeCom's, which a recall needs), and the recipients it could not reach. Kept in the
/// message's status and sent in its callback.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The provider's message id (WeCom's `msgid`), the handle of a recall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_msgid: Option<String>,
    /// Recipients the provider called invalid. They were not reached and are never retried.
    #[serde(default, skip_serializing_if = "InvalidRecipients::is_empty")]
    pub invalid: InvalidRecipients,
    /// When the message was recalled (`POST /v1/messages/{id}/recall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub recalled_at: Option<jiff::Timestamp>,
}

/// The recipients of a partly delivered message that were not reached (WeCom's errcode 0 with
/// `invaliduser`, `invalidparty`, `invalidtag`, `unlicenseduser`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidRecipients {
    /// User ids that do not exist or are out of the application's visible range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Party (department) ids that are invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parties: Vec<String>,
    /// Tag ids that are invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Users without a licence for the application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlicensed_users: Vec<String>,
}

impl InvalidRecipients {
    /// Whether every recipient was reached.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.parties.is_empty()
            && self.tags.is_empty()
            && self.unlicensed_users.is_empty()
    }
}

/// The most sends a provider takes in any window of `window`, enforced before sending (a WeCom
/// group robot: 20 a minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCeiling {
    /// Most sends in one window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

/// Which of WeChat's template lists a provider's messages are checked against at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateLists {
    /// None: the provider has no WeChat templates.
    None,
    /// The subscribe templates only (Mini Programs).
    Subscribe,
    /// The private (template message) list and the subscribe templates (Official Accounts).
    PrivateAndSubscribe,
}

/// The HTTP request of one attempt, as a provider builds it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Path of the send API, without the access_token query.
    pub path: &'static str,
    /// The JSON body.
    pub body: Bytes,
}

/// A provider's wire protocol. The engine calls it once per attempt; it has no I/O.
///
/// Adding a provider takes one module implementing this trait and one arm in
/// `providers::sender_for` for its `provider` enum variant; the dispatcher, store, engine and
/// API stay as they are (`tests/tests/provider_plugin.rs` plugs in a provider of its own).
/// The provided methods describe a WeChat provider; another overrides what differs.
pub trait Sender: Send + Sync + std::fmt::Debug + 'static {
    /// The provider's name, as the `provider` field spells it.
    fn name(&self) -> &'static str;
    /// Which access_token the sends need.
    fn token_scope(&self) -> TokenScope;
    /// The request for one attempt of `request`, or why this provider cannot send it at all
    /// (a permanent failure of the message).
    fn build(&self, request: SendRequest<'_>) -> Result<Outgoing, SendError>;
    /// What an answer with `errcode` means for the message and the channel. `now` fixes time
    /// dependent answers (the daily quota resets at midnight, Beijing time).
    fn classify(&self, errcode: i64, now: SystemTime, retry: &Retry) -> SendAction;
    /// Reads the whole body of a 200 answer; `None` when it is not the provider's JSON.
    /// The default reads WeChat's `{errcode, errmsg, msgid}`.
    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        #[derive(Deserialize)]
        struct WeChat {
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
            msgid: Option<i64>,
        }
        let a: WeChat = serde_json::from_slice(body).ok()?;
        Some(Answer {
            errcode: a.errcode,
            errmsg: a.errmsg,
            msgid: a.msgid,
            receipt: None,
        })
    }
    /// Checks a producer's message strictly at accept, each error naming its field. The
    /// default takes WeChat's template and subscribe messages.
    fn accept(&self, value: &serde_json::Value) -> Result<Message, FieldError> {
        crate::message::parse_message(value)
    }
    /// Which WeChat template lists its messages are checked against at accept.
    fn template_lists(&self) -> TemplateLists {
        TemplateLists::PrivateAndSubscribe
    }
    /// A hard ceiling on the send rate, enforced before sending, on top of `rateLimit`.
    fn rate_ceiling(&self) -> Option<RateCeiling> {
        None
    }
    /// The request that recalls a sent message by the provider's message id, and how long
    /// after the send a recall is allowed; `None` when the provider cannot recall.
    fn recall(&self, provider_msgid: &str) -> Option<(Outgoing, Duration)> {
        let _ = provider_msgid;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_serialize_as_they_are_named_and_unknown_ones_stay_readable() {
        for kind in [
            ErrorKind::Http5xx,
            ErrorKind::TimeoutResponseHeader,
            ErrorKind::UnknownOutcome,
        ] {
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(
                serde_json::from_str::<ErrorKind>(&json).expect("parse"),
                kind
            );
        }
        let newer: ErrorKind = serde_json::from_str("\"some_future_kind\"").expect("parse");
        assert_eq!(newer, ErrorKind::Other);
    }
}
