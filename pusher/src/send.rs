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
use serde::Deserialize;

pub use crate::message::{ErrorKind, InvalidRecipients, MessageKind, Receipt, SendError};
use crate::message::{FieldError, Message};
use crate::policy::Retry;

/// One attempt to send: the JSON body exactly as WeChat takes it (`touser`, `template_id`,
/// `data`, ..., and the message's one `client_msg_id`, the same for every attempt).
#[derive(Debug, Clone, Copy)]
pub struct SendRequest<'a> {
    /// Which API.
    pub kind: MessageKind,
    /// The body, as JSON text ([`crate::message::Message::wechat_body`]).
    pub body: &'a serde_json::value::RawValue,
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
    fn accept(&self, value: &crate::message::Json<'_>) -> Result<Message, FieldError> {
        crate::message::parse_json_message(value)
    }
    /// Which WeChat template lists its messages are checked against at accept.
    fn template_lists(&self) -> TemplateLists {
        TemplateLists::PrivateAndSubscribe
    }
    /// How long after a message's first send the provider drops a re-send of it as a
    /// duplicate. The dispatcher re-sends an attempt that may have been delivered (a timeout,
    /// a crash mid-send) only inside it; past it the message ends `unknown_outcome` unless
    /// `retry.afterWindow` is `resend`. Zero for a provider with no de-duplication. The
    /// default is WeChat's `client_msg_id` window.
    fn dedup_window(&self, message: &Message) -> Duration {
        let _ = message;
        crate::clock::DEDUP_WINDOW
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

/// Why a sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The credentials could not be read.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
}
