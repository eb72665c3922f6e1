//! Everything that talks to the WeChat API: the pooled HTTP client with its four timeouts, the
//! access_token manager, errcode classification, and [`WeChatSender`], which performs one send
//! attempt of one message and says what should happen next ([`SendOutcome`]).
//!
//! The dispatcher (queue side) only ever calls [`WeChatSender::send`] and acts on the outcome;
//! the API reads [`WeChatSender::health`] for `/readyz` and status.
//!
//! Modules, one job each: [`client`] (pooled HTTP client, the four timeouts, caching DNS),
//! [`token`] (access_token manager), [`errcode`] (pure classification of WeChat's answers),
//! [`sender`] (composition with the breaker and rate limiter of [`crate::resilience`]).
//! `docs/wechat-client.md` tells the whole story.

pub mod client;
pub mod errcode;
pub mod sender;
pub mod token;

pub use sender::WeChatSender;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Which WeChat send API a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
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
    /// The body.
    pub body: &'a serde_json::Value,
}

/// What went wrong in an attempt, in a form fit for status, logs and metrics (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendError {
    /// Short machine-readable kind: `timeout_connect`, `timeout_tls`, `timeout_response_header`,
    /// `timeout_request`, `transport` (DNS, refused, reset, TLS errors), `http_5xx`,
    /// `http_status` (another non-200), `bad_response` (200 without JSON), `errcode` (WeChat
    /// answered one; see `errcode`), `token` (no valid access_token), `throttled` (45011
    /// slow-down), `rate_limited`, `quota` (daily quota), `body`, `circuit_open`.
    pub kind: String,
    /// WeChat's errcode, when it answered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    /// A sentence for people.
    pub message: String,
}

/// What the dispatcher should do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// WeChat accepted it (errcode 0).
    Delivered {
        /// WeChat's `msgid`, when given.
        msgid: Option<i64>,
    },
    /// Outcome unknown or transient: retry with the same `client_msg_id` after the policy's
    /// backoff, or not before `not_before` when WeChat asked for a longer pause (45011, 43117).
    Retry {
        /// Why.
        error: SendError,
        /// Minimum delay before the next attempt, if longer than the usual backoff.
        not_before: Option<Duration>,
    },
    /// A permanent failure (40003, 43004, 47003, ...): dead-letter it, do not retry.
    Permanent {
        /// Why.
        error: SendError,
    },
    /// The channel cannot send at all (configuration fault such as 40013/40125/40164/48001, or
    /// the daily quota 45009): keep the message, do not count this against its retry budget,
    /// try again at `until` (or after a pause when unknown).
    Paused {
        /// Why.
        error: SendError,
        /// When sending may resume.
        until: Option<SystemTime>,
    },
    /// Not attempted: the circuit breaker is open. Not counted against the retry budget.
    CircuitOpen {
        /// When the breaker will let a probe through.
        retry_after: Duration,
    },
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

/// Whether the channel can send, for `/readyz`, status and alerts. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelHealth {
    /// access_token fetching: paused on a configuration fault (40013, 40125, 40164, bad
    /// credentials) or a token quota while no valid token is cached.
    pub token: Health,
    /// Sending: paused after 48001 or 45009 on a send, or when `rateLimit.dailyQuota` is spent.
    pub sending: Health,
    /// The circuit breaker.
    pub circuit: Circuit,
}

impl ChannelHealth {
    /// Whether sends can go out now (the breaker aside, which heals itself).
    pub fn can_send(&self) -> bool {
        self.token == Health::Ok && self.sending == Health::Ok
    }
}

/// One part of [`ChannelHealth`]. Serialised as `{"state": "ok"}` or
/// `{"state": "paused", "reason": {...}, "until": "2026-11-28T16:00:00Z"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Working.
    Ok,
    /// Paused.
    Paused {
        /// Why.
        reason: SendError,
        /// When it will be tried again (a probe), if known.
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<jiff::Timestamp>,
    },
}

impl Health {
    fn paused(reason: SendError, until: Option<SystemTime>) -> Self {
        Self::Paused {
            reason,
            until: until.and_then(|t| jiff::Timestamp::try_from(t).ok()),
        }
    }
}

/// The breaker's state, as `wxpush_circuit_state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// Sending normally.
    Closed,
    /// Letting probes through.
    HalfOpen,
    /// Not sending.
    Open,
}
