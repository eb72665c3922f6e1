//! WeChat's server-URL callback: TEMPLATESENDJOBFINISH delivery events (docs/architecture.md, "A message's
//! life"; docs/wechat-api.md, "Delivery event").
//!
//! - [`parse_xml`]: the event XML (plain mode, or the decrypted safe-mode payload).
//! - [`DeliveryEvent`] / [`EventStatus`]: one TEMPLATESENDJOBFINISH event.
//! - [`apply_event`]: the transition rules — only a `delivered` message moves (`success` →
//!   `confirmed`, `failed:user block` → `rejected_by_user`); every event is recorded on the
//!   message either way.
//! - [`http`]: the `GET,POST /wechat/events` handlers (signatures, safe mode, answers).
//!
//! The store finds the message and de-duplicates ([`crate::store::Store::record_event`]).

pub mod http;

use jiff::Timestamp;
use serde::Deserialize;

use crate::message::{EventRecord, MAX_EVENTS_PER_MESSAGE, MessageId, MessageRecord, Status};

/// The event name of a template delivery report.
pub const TEMPLATE_EVENT: &str = "TEMPLATESENDJOBFINISH";

/// The fields of a server-URL XML body that the pusher reads (every one optional: WeChat sends
/// other messages and events to the same URL). Unknown elements are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ServerXml {
    /// The account (`gh_...`).
    #[serde(rename = "ToUserName", default)]
    pub to_user_name: Option<String>,
    /// The user's openid.
    #[serde(rename = "FromUserName", default)]
    pub from_user_name: Option<String>,
    /// Unix seconds.
    #[serde(rename = "CreateTime", default)]
    pub create_time: Option<String>,
    /// `event` for events.
    #[serde(rename = "MsgType", default)]
    pub msg_type: Option<String>,
    /// The event name, e.g. `TEMPLATESENDJOBFINISH`.
    #[serde(rename = "Event", default)]
    pub event: Option<String>,
    /// WeChat's msgid (`MsgID` in delivery events, `MsgId` in user messages).
    #[serde(rename = "MsgID", alias = "MsgId", default)]
    pub msg_id: Option<String>,
    /// The delivery status text.
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    /// The safe-mode ciphertext (base64).
    #[serde(rename = "Encrypt", default)]
    pub encrypt: Option<String>,
}

/// Why an event body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The body is not well-formed XML of the expected shape.
    #[error("malformed XML: {0}")]
    Xml(String),
    /// A TEMPLATESENDJOBFINISH event lacks a field or has a malformed one.
    #[error("event field {0} is missing or malformed")]
    Field(&'static str),
}

/// Parses a server-URL XML body (`<xml>...</xml>`, CDATA or plain text values).
pub fn parse_xml(body: &[u8]) -> Result<ServerXml, EventError> {
    let text = std::str::from_utf8(body).map_err(|_| EventError::Xml("not UTF-8".into()))?;
    quick_xml::de::from_str(text).map_err(|e| EventError::Xml(e.to_string()))
}

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
    /// Builds the event from parsed XML, which must be a TEMPLATESENDJOBFINISH event.
    pub fn from_xml(xml: &ServerXml, received_at: Timestamp) -> Result<Self, EventError> {
        let openid = xml
            .from_user_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(EventError::Field("FromUserName"))?;
        let create_time = xml
            .create_time
            .as_deref()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(EventError::Field("CreateTime"))?;
        let msgid = match xml.msg_id.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(s) => s.parse::<i64>().map_err(|_| EventError::Field("MsgID"))?,
        };
        let status = xml.status.as_deref().ok_or(EventError::Field("Status"))?;
        Ok(Self {
            openid: openid.to_string(),
            create_time,
            msgid,
            status: status.to_string(),
            received_at,
        })
    }

    /// The classified status.
    pub fn kind(&self) -> EventStatus {
        EventStatus::parse(&self.status)
    }
}

/// Whether the XML is a TEMPLATESENDJOBFINISH event (anything else is acknowledged and ignored).
pub fn is_template_event(xml: &ServerXml) -> bool {
    xml.msg_type.as_deref().map(str::trim) == Some("event")
        && xml.event.as_deref().map(str::trim) == Some(TEMPLATE_EVENT)
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
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Applied {
                status: Status::RejectedByUser,
                ..
            } => "rejected_by_user",
            Self::Applied { .. } => "confirmed",
            Self::Recorded { .. } => "recorded",
            Self::Duplicate => "duplicate",
            Self::Unmatched => "unmatched",
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

#[cfg(test)]
mod tests;
