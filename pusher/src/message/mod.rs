//! The API's message types (docs/architecture.md, "A message's life"), one job a file:
//!
//! - this file: the model of an accepted message ([`Message`] and its parts);
//! - `id`: the message's id, [`MessageId`];
//! - `json`: a request body read strictly into a light tree that borrows from it ([`Json`]);
//! - `validate`: a producer's request checked strictly, each error naming its field
//!   ([`parse_message`]), and the limits;
//! - `wire`: the body of a send as WeChat takes it ([`Message::wechat_body`]);
//! - `record`: what the store keeps ([`MessageRecord`]) and the status a producer reads back.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub mod attempt;
pub mod id;
pub mod json;
pub mod record;
pub mod validate;
mod wire;

pub use attempt::{ErrorKind, InvalidRecipients, MessageKind, Receipt, SendError};
pub use id::MessageId;
pub use json::{Json, parse_strict};
pub use record::*;
pub use validate::*;

/// `miniprogram` of a template message: open a Mini Program page instead of `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MiniProgram {
    /// The Mini Program's appid.
    #[schema(min_length = 1, max_length = 64)]
    pub appid: String,
    /// The page to open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub pagepath: Option<String>,
}

/// A validated message, as accepted from a producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// Which WeChat API it goes to.
    pub kind: MessageKind,
    /// The recipient's openid.
    pub touser: String,
    /// The template.
    pub template_id: String,
    /// Page opened on tap (template messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Mini Program opened on tap (wins over `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram: Option<MiniProgram>,
    /// Mini Program page (subscribe messages and subscription notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// `developer`, `trial` or `formal` (subscribe messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<String>,
    /// Language (subscribe messages), e.g. `zh_CN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// The template's fields: `{"keyword1": {"value": "..."}}`.
    #[schema(value_type = Object)]
    pub data: TemplateData,
    /// The producer's `client_msg_id`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// Give up after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Where to POST the final outcome (overrides the channel's callback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// What the check against the account's template found at accept: fields WeChat ignores
    /// (warnings) and, with `templates.validation: truncate`, the values that were cut. Set by
    /// the pusher, never by the producer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_notes: Vec<TemplateNote>,
    /// A one-time subscription credit of `touser` was taken for it at accept (strict mode); it
    /// is given back if the message ends without being delivered. Set by the pusher.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subscription_credit: bool,
    /// A WeCom message (`wecomApp`, `wecomRobot` channels): the body as WeCom takes it,
    /// checked at accept, without the channel's `agentid` and duplicate-check fields, which are
    /// added to each attempt. `touser` then holds WeCom's `touser` (empty when the message goes
    /// to parties or tags only, or to a robot's group) and `template_id` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub wecom: Option<TemplateData>,
}

/// One finding of the template check on an accepted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateNote {
    /// The field, as a path (`data.thing2`, `data.keyword1.color`).
    pub field: String,
    /// The rule (`too_long`, `line_break`, `control_character`, `ignored_field`).
    pub rule: String,
    /// `warning` (sent as given; WeChat ignores it), `cut` (cut to the limit) or `cleaned`
    /// (line breaks and control characters replaced or removed).
    pub action: String,
    /// What was found or done, for people.
    pub message: String,
}

/// A message's template fields (`data`), validated on accept and from then on kept as the
/// compact JSON text of the object: the store writes and reads it as it is and the send body
/// embeds it, so no message builds a tree of its fields after it was accepted (the hot path's
/// largest cost once was decoding, cloning and re-encoding those trees, docs/performance.md).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TemplateData(Box<RawValue>);

impl TemplateData {
    /// The fields of a validated object.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        // A map of JSON values always encodes.
        Self(serde_json::value::to_raw_value(map).unwrap_or_else(|_| Self::default().0))
    }

    /// The fields of a validated object read from a request body (the same text as
    /// [`TemplateData::from_map`] gives for the same fields).
    pub fn from_object(object: &json::Object<'_>) -> Self {
        // An object of JSON values always encodes.
        Self(serde_json::value::to_raw_value(object).unwrap_or_else(|_| Self::default().0))
    }

    /// The JSON text of the object.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The fields as a JSON tree (tests and tools; the hot path never builds one).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl Default for TemplateData {
    fn default() -> Self {
        Self(RawValue::from_string("{}".to_string()).expect("an empty object is JSON"))
    }
}

impl PartialEq for TemplateData {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl fmt::Debug for TemplateData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

#[cfg(test)]
mod tests;
