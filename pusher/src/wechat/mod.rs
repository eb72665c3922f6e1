//! Everything that talks to the WeChat API: the pooled HTTP client with its four timeouts, the
//! access_token manager, errcode classification, and [`WeChatSender`], which performs one send
//! attempt of one message and says what should happen next ([`SendOutcome`]).
//!
//! The dispatcher (queue side) only ever calls [`WeChatSender::send`] and acts on the outcome.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::PusherConfig;
use crate::metrics::Metrics;

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
    /// `timeout_request`, `transport`, `http_5xx`, `errcode`, `token`, `circuit_open`, ...
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

/// Sends messages to WeChat for one channel. Cheap to share (`Arc`); safe to call from many
/// workers at once.
#[derive(Debug)]
pub struct WeChatSender {
    #[allow(dead_code)]
    metrics: Arc<Metrics>,
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

impl WeChatSender {
    /// Builds the sender from the config (HTTP client, token manager, breaker, rate limiter).
    pub fn new(config: &PusherConfig, metrics: Arc<Metrics>) -> Result<Self, SenderError> {
        let _ = config;
        Ok(Self { metrics })
    }

    /// Performs one attempt (with at most one token refresh inside it on 40001/40014/42001).
    pub async fn send(&self, request: SendRequest<'_>) -> SendOutcome {
        let _ = request;
        SendOutcome::Retry {
            error: SendError {
                kind: "unimplemented".into(),
                errcode: None,
                message: "the WeChat sender is not built yet".into(),
            },
            not_before: None,
        }
    }
}
