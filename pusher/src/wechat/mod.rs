//! Everything that talks to the WeChat API: the pooled HTTP client with its four timeouts, the
//! access_token manager, and [`WeChatSender`], the engine that performs one send attempt of one
//! message through the channel's provider and says what should happen next ([`SendOutcome`]).
//! Below it: `send` (the attempt's vocabulary), `providers` (wire protocols, errcode table),
//! `resilience` (pure decisions) and `metrics`; above it: `dispatch` and `wiring`.
//!
//! The dispatcher (queue side) only ever calls [`WeChatSender::send`] and acts on the outcome;
//! the API reads [`WeChatSender::health`] for `/readyz` and status.
//!
//! Modules, one job each: [`client`] (pooled HTTP client, the four timeouts, caching DNS),
//! [`flow`] (the adaptive concurrency gate, hedged sends, the derived response-header timeout),
//! [`token`] (access_token manager), [`verify`] (`check-config --online`'s token request), [`sender`] (the engine: one attempt through the channel's
//! provider — `crate::providers`, which also holds the errcode table — with the breaker and
//! rate limiter of [`crate::resilience`]).
//! `docs/wechat-client.md` tells the whole story.

pub mod client;
pub mod flow;
mod idle;
pub mod limits;
pub mod sender;
pub mod token;
pub mod verify;

pub use crate::send::{MessageKind, SendError, SendRequest};
pub use sender::WeChatSender;

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// What the dispatcher should do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// WeChat accepted it (errcode 0).
    Delivered {
        /// WeChat's `msgid`, when given.
        msgid: Option<i64>,
        /// What else the answer said (WeCom: its msgid, recipients it could not reach).
        receipt: Option<crate::send::Receipt>,
    },
    /// Outcome unknown or transient: retry with the same `client_msg_id` after the policy's
    /// backoff, or not before `not_before` when WeChat asked for a longer pause (45011, 43117).
    Retry {
        /// Why.
        error: SendError,
        /// Minimum delay before the next attempt, if longer than the usual backoff.
        not_before: Option<Duration>,
        /// The request may have reached the provider with no answer saying what became of it
        /// (a timeout after the connection was set up, a broken connection, a 5xx, a body that
        /// is not the provider's): a re-send is safe only inside the provider's
        /// de-duplication window (`Sender::dedup_window`).
        maybe_delivered: bool,
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
    /// Not attempted: the pusher began stopping while the request waited for a slot of the
    /// concurrency gate. Not counted; due again at once (at the next start, or on another pod).
    Stopping,
}

pub use crate::send::SenderError;

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
