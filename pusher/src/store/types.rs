//! The values that the store, the events receiver and the callback worker all speak of: a
//! delivery event and what recording it did, the transition rules of events, and pending
//! outcome callbacks with their JSON body.
//!
//! They live here, below all three, so that the store depends on neither the events receiver
//! nor the callback worker (both of which depend on the store), and so that every store
//! backend applies the very same rules. `crate::events` and `crate::callbacks` re-export them
//! under their old paths.

use jiff::Timestamp;
use serde::Serialize;

use super::millis;
use crate::message::{EventRecord, MAX_EVENTS_PER_MESSAGE, MessageId, MessageRecord, Status};
use crate::metrics::EventResult;
use crate::send::SendError;

/// The `Status` of a TEMPLATESENDJOBFINISH event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// `success`: the user received it.
    Success,
    /// `failed:user block`: the user refuses messages from the account.
    UserBlock,
    /// `failed: system failed` (sic, with the space): WeChat failed; the message stays
    /// `delivered`.
    SystemFailed,
    /// Any other text: recorded, never applied.
    Other,
}

impl EventStatus {
    /// Classifies WeChat's status text (tolerating spacing and case around the colon).
    pub fn parse(text: &str) -> Self {
        let norm: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "success" => Self::Success,
            "failed:userblock" => Self::UserBlock,
            "failed:systemfailed" => Self::SystemFailed,
            _ => Self::Other,
        }
    }

    /// The status a `delivered` message moves to, if any.
    pub fn target(self) -> Option<Status> {
        match self {
            Self::Success => Some(Status::Confirmed),
            Self::UserBlock => Some(Status::RejectedByUser),
            Self::SystemFailed | Self::Other => None,
        }
    }
}

/// One TEMPLATESENDJOBFINISH event, as the store receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    /// `FromUserName`: the openid the message went to.
    pub openid: String,
    /// `CreateTime` (Unix seconds).
    pub create_time: u64,
    /// `MsgID`; 0 when WeChat did not say (it may, when `client_msg_id` was set).
    pub msgid: i64,
    /// `Status` as sent.
    pub status: String,
    /// When the pusher received it.
    pub received_at: Timestamp,
}

impl DeliveryEvent {
    /// The classified status.
    pub fn kind(&self) -> EventStatus {
        EventStatus::parse(&self.status)
    }
}

/// How the store found the message an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// Through the msgid index.
    Msgid,
    /// `MsgID` was 0 or unknown: the most recent `delivered` message to that openid with no
    /// event yet (an approximation).
    OpenidFallback,
}

impl MatchedBy {
    /// The label stored on the message.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Msgid => "msgid",
            Self::OpenidFallback => "openid_fallback",
        }
    }
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// The message moved from `delivered` to `status`.
    Applied {
        /// The message.
        id: MessageId,
        /// Its new status (`confirmed` or `rejected_by_user`).
        status: Status,
    },
    /// The event was recorded on the message, whose status did not change (it was not
    /// `delivered`, or the event status maps to no transition, e.g. `failed: system failed`).
    Recorded {
        /// The message.
        id: MessageId,
        /// Its status (unchanged).
        status: Status,
    },
    /// The same event (openid, CreateTime, MsgID) was recorded before: nothing changed.
    Duplicate,
    /// No message matches (unknown msgid, and no delivered message to that openid awaits an
    /// event): nothing changed.
    Unmatched,
}

impl EventOutcome {
    /// The `result` label of `wxpush_events_total`.
    pub fn metric_label(&self) -> EventResult {
        match self {
            Self::Applied {
                status: Status::RejectedByUser,
                ..
            } => EventResult::RejectedByUser,
            Self::Applied { .. } => EventResult::Confirmed,
            Self::Recorded { .. } => EventResult::Recorded,
            Self::Duplicate => EventResult::Duplicate,
            Self::Unmatched => EventResult::Unmatched,
        }
    }
}

/// Applies an event to a message record: the transition rules. A `delivered` message moves to
/// `confirmed` (`success`) or `rejected_by_user` (`failed:user block`); any other state, or any
/// other event status (`failed: system failed`), leaves the status as it is. The event is
/// recorded on the message in every case (the oldest dropped beyond
/// [`MAX_EVENTS_PER_MESSAGE`]). An event already on the message (same CreateTime and MsgID) is a
/// [`EventOutcome::Duplicate`] and changes nothing.
pub fn apply_event(
    record: &mut MessageRecord,
    event: &DeliveryEvent,
    matched_by: MatchedBy,
) -> EventOutcome {
    if record
        .events
        .iter()
        .any(|e| e.create_time == event.create_time && e.msgid == event.msgid)
    {
        return EventOutcome::Duplicate;
    }
    let target = event
        .kind()
        .target()
        .filter(|_| record.status == Status::Delivered);
    if let Some(status) = target {
        record.status = status;
    }
    if record.events.len() >= MAX_EVENTS_PER_MESSAGE {
        record.events.remove(0);
    }
    record.events.push(EventRecord {
        status: event.status.clone(),
        msgid: event.msgid,
        create_time: event.create_time,
        received_at: event.received_at,
        matched_by: matched_by.as_str().to_string(),
        applied: target.is_some(),
    });
    record.updated_at = event.received_at;
    match target {
        Some(status) => EventOutcome::Applied {
            id: record.id,
            status,
        },
        None => EventOutcome::Recorded {
            id: record.id,
            status: record.status,
        },
    }
}

/// The JSON body of a callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackPayload<'a> {
    /// The message id.
    pub id: String,
    /// The status reached (`delivered`, `failed`, `expired`, `dead_lettered`, `confirmed`,
    /// `rejected_by_user`).
    pub status: Status,
    /// The `client_msg_id` every attempt carried.
    pub client_msg_id: &'a str,
    /// The recipient's openid.
    pub touser: &'a str,
    /// WeChat's msgid, once delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<i64>,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<&'a SendError>,
    /// What the delivery answer said beyond "sent": WeCom's msgid and the recipients it could
    /// not reach (a partial failure), when it said anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<&'a crate::send::Receipt>,
    /// When the message was accepted.
    pub accepted_at: Timestamp,
    /// When it reached this status.
    pub finished_at: Timestamp,
}

impl<'a> CallbackPayload<'a> {
    /// The payload for `record` as it stands (`finished_at` is `now` when the record has none,
    /// and the event time is `now` for confirmed / rejected messages).
    pub fn of(record: &'a MessageRecord, now: Timestamp) -> Self {
        let finished_at = match record.status {
            Status::Confirmed | Status::RejectedByUser => now,
            _ => record.finished_at.unwrap_or(now),
        };
        Self {
            id: record.id.to_string(),
            status: record.status,
            client_msg_id: &record.client_msg_id,
            touser: &record.message.touser,
            msgid: record.msgid,
            attempts: record.attempts,
            last_error: record.last_error.as_ref(),
            receipt: record.receipt.as_ref(),
            accepted_at: record.accepted_at,
            finished_at,
        }
    }

    /// The JSON body.
    pub fn to_body(&self) -> String {
        // Serializing plain strings, numbers and timestamps cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Whether a record in `status` gets a callback.
pub fn wants_callback(status: Status) -> bool {
    status.is_final()
}

/// Where a pending callback sits: its due time and its own id (one message can have several
/// callbacks, e.g. `delivered` then `confirmed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallbackKey {
    /// When the next attempt is due, in Unix milliseconds.
    pub due_ms: u64,
    /// The callback's id (a ULID).
    pub id: u128,
}

/// A pending outcome callback (see [`crate::callbacks`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingCallback {
    /// Where it sits (not stored in the value).
    #[serde(skip, default = "no_key")]
    pub key: CallbackKey,
    /// The message it is about.
    pub message: u128,
    /// The message's own `callback_url`; `None` means the channel's `callbacks.url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The JSON body, fixed when the state changed.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it was created (`callbacks.retry.maxAge` counts from here).
    pub created_at: Timestamp,
}

fn no_key() -> CallbackKey {
    CallbackKey { due_ms: 0, id: 0 }
}

impl PendingCallback {
    /// A new callback about `record` as it stands, due now.
    pub fn new(record: &MessageRecord, now: Timestamp) -> Self {
        Self {
            key: CallbackKey {
                due_ms: millis(now),
                id: ulid::Ulid::new().0,
            },
            message: record.id.as_u128(),
            url: record.message.callback_url.clone(),
            body: CallbackPayload::of(record, now).to_body(),
            attempts: 0,
            created_at: now,
        }
    }

    /// The message's id.
    pub fn message_id(&self) -> MessageId {
        MessageId::from_u128(self.message)
    }
}
