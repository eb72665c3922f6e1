//! WeChat's server-URL callback: TEMPLATESENDJOBFINISH delivery events (docs/architecture.md, "A message's
//! life"; docs/wechat-api.md, "Delivery event").
//!
//! - [`parse_xml`]: the event XML (plain mode, or the decrypted safe-mode payload).
//! - [`DeliveryEvent`] / [`EventStatus`]: one TEMPLATESENDJOBFINISH event.
//! - [`apply_event`]: the transition rules — only a `delivered` message moves (`success` →
//!   `confirmed`, `failed:user block` → `rejected_by_user`); every event is recorded on the
//!   message either way.
//! - [`http`]: the `GET,POST /wechat/events` handlers (signatures, safe mode, answers).
//! - [`replay`]: the freshness window on `timestamp` and the once-only `(timestamp, nonce)` rule.
//! - [`wecom`]: WeCom's change events (recipients that became unreachable) on the same URL.
//!
//! The store finds the message and de-duplicates ([`crate::store::Store::record_event`]).

pub mod http;
pub mod replay;
pub mod wecom;

use jiff::Timestamp;
use serde::Deserialize;

pub use crate::store::types::{DeliveryEvent, EventOutcome, EventStatus, MatchedBy, apply_event};

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
    /// The delivery status text (WeChat), or a WeCom user's status number (`update_user`).
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    /// WeCom's contact change (`delete_user`, `update_user`, `delete_party`, ...).
    #[serde(rename = "ChangeType", default)]
    pub change_type: Option<String>,
    /// WeCom's user id in a contact change.
    #[serde(rename = "UserID", default)]
    pub user_id: Option<String>,
    /// WeCom's new user id, when an `update_user` changed it.
    #[serde(rename = "NewUserID", default)]
    pub new_user_id: Option<String>,
    /// WeCom's party id in a party change.
    #[serde(rename = "Id", default)]
    pub party_id: Option<String>,
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
}

/// Whether the XML is a TEMPLATESENDJOBFINISH event (anything else is acknowledged and ignored).
pub fn is_template_event(xml: &ServerXml) -> bool {
    xml.msg_type.as_deref().map(str::trim) == Some("event")
        && xml.event.as_deref().map(str::trim) == Some(TEMPLATE_EVENT)
}

#[cfg(test)]
mod tests;
