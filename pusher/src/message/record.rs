//! What the store keeps of a message, and the status a producer reads back.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Message, MessageId};
use super::{Receipt, SendError};

/// Where a message is in its life (docs/architecture.md, "A message's life").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, waiting for its first attempt.
    Queued,
    /// Leased to a worker; an attempt is under way.
    Sending,
    /// An attempt failed; the next one is scheduled.
    Retrying,
    /// WeChat answered errcode 0 and a `msgid`.
    Delivered,
    /// The TEMPLATESENDJOBFINISH event reported success.
    Confirmed,
    /// The TEMPLATESENDJOBFINISH event reported the user blocked it.
    RejectedByUser,
    /// A permanent errcode (e.g. 43004); kept in the dead-letter set.
    Failed,
    /// `expires_at` or `retry.maxAge` passed; kept in the dead-letter set.
    Expired,
    /// The retry budget (`retry.maxAttempts`) ran out; kept in the dead-letter set.
    DeadLettered,
    /// Its first attempt started (and may have reached WeChat) but the pusher stopped before
    /// recording the outcome, and it was found again only after WeChat's 10-minute
    /// de-duplication window: re-sending could deliver it twice, so it is not re-sent
    /// (`retry.afterWindow: park`). Kept in the dead-letter set; replay it to send it anyway.
    UnknownOutcome,
}

impl Status {
    /// Whether the message has reached a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Sending | Self::Retrying)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Confirmed => "confirmed",
            Self::RejectedByUser => "rejected_by_user",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::DeadLettered => "dead_lettered",
            Self::UnknownOutcome => "unknown_outcome",
        }
    }
}

/// Everything the store keeps about one message; also the status document of
/// `GET /v1/messages/{id}` (with `status` `sending` while leased).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = MessageStatus)]
pub struct MessageRecord {
    /// The id.
    #[schema(value_type = String)]
    pub id: MessageId,
    /// Where it is in its life.
    pub status: Status,
    /// The one `client_msg_id` every attempt carries.
    pub client_msg_id: String,
    /// Attempts made so far (those that reached WeChat or might have).
    pub attempts: u32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SendError>,
    /// WeChat's `msgid`, once delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgid: Option<i64>,
    /// When it was accepted (answered 202).
    #[schema(value_type = String, format = DateTime)]
    pub accepted_at: Timestamp,
    /// When its `retry.maxAge` budget started: the end of its first attempt that did not settle
    /// it (before that, acceptance or the last replay; the budget does not run until then).
    #[schema(ignore)]
    pub budget_from: Timestamp,
    /// When its first attempt started: written durably before the first send ("attempt
    /// started" record). Set while `attempts` is 0, it means the outcome of that attempt is
    /// unknown (the pusher stopped before recording it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_attempt_at: Option<Timestamp>,
    /// When the next attempt is due (queued and retrying messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Timestamp>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// When the record last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Whether it sits in the dead-letter set (and can be replayed).
    #[serde(default)]
    pub dead_letter: bool,
    /// How many times it was replayed from the dead letters.
    #[serde(default)]
    pub replays: u32,
    /// The producer's `Idempotency-Key`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the request that carried `idempotency_key` (see
    /// [`super::request_digest`]): a later request with the key and another digest is refused. Records
    /// stored before digests were kept have none and match any request. Not shown in the status
    /// document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub request_digest: Option<String>,
    /// TEMPLATESENDJOBFINISH events recorded for it (oldest first, at most
    /// [`MAX_EVENTS_PER_MESSAGE`]), whether or not they changed its status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRecord>,
    /// What the delivery answer said beyond "sent" (WeCom: its msgid, the recipients it could
    /// not reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// The message itself.
    pub message: Message,
}

/// Most events kept on one message (WeChat sends one per delivery; more means a mismatch).
pub const MAX_EVENTS_PER_MESSAGE: usize = 8;

/// A TEMPLATESENDJOBFINISH event as recorded on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// WeChat's `Status` text as sent (`success`, `failed:user block`, `failed: system failed`).
    pub status: String,
    /// WeChat's `MsgID` (0 when WeChat did not say).
    pub msgid: i64,
    /// WeChat's `CreateTime` (Unix seconds).
    pub create_time: u64,
    /// When the pusher received it.
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
    /// `msgid` when found through the msgid index, `openid_fallback` when `MsgID` was 0 or
    /// unknown and the most recent delivered message to that openid was taken.
    pub matched_by: String,
    /// Whether it changed the message's status.
    pub applied: bool,
}

impl MessageRecord {
    /// A freshly accepted message.
    pub fn new(
        id: MessageId,
        message: Message,
        idempotency_key: Option<String>,
        now: Timestamp,
    ) -> Self {
        let client_msg_id = message
            .client_msg_id
            .clone()
            .unwrap_or_else(|| id.default_client_msg_id());
        Self {
            id,
            status: Status::Queued,
            client_msg_id,
            attempts: 0,
            last_error: None,
            msgid: None,
            accepted_at: now,
            budget_from: now,
            first_attempt_at: None,
            next_attempt_at: Some(now),
            finished_at: None,
            updated_at: now,
            dead_letter: false,
            replays: 0,
            idempotency_key,
            request_digest: None,
            events: Vec::new(),
            receipt: None,
            message,
        }
    }
}
