//! The API's message types: what a producer sends (validated strictly, each error naming its
//! field), what the store keeps, and the status a producer reads back (docs/architecture.md, "A message's
//! life").

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error_code::ErrorCode;
use crate::send::{MessageKind, Receipt, SendError};

/// Longest `touser` (WeChat openids are 28 characters; leave room for other providers).
pub const MAX_TOUSER: usize = 128;
/// Longest `template_id`.
pub const MAX_TEMPLATE_ID: usize = 128;
/// Longest URL (`url`, `callback_url`).
pub const MAX_URL: usize = 2048;
/// Longest `client_msg_id`.
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Longest Mini Program appid.
pub const MAX_APPID: usize = 64;
/// Longest `miniprogram.pagepath` / `page`.
pub const MAX_PAGE: usize = 1024;
/// Most keys in `data`.
pub const MAX_DATA_KEYS: usize = 64;
/// Longest `data` key.
pub const MAX_DATA_KEY: usize = 64;
/// Longest `data.<key>.value` (WeChat trims values itself; this only stops abuse).
pub const MAX_DATA_VALUE: usize = 1024;
/// Longest `Idempotency-Key` header.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A message's id: a ULID, shown as its 26-character string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub ulid::Ulid);

impl MessageId {
    /// A new id, ordered by creation time.
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }

    /// The id as the store's key.
    pub fn as_u128(self) -> u128 {
        self.0.0
    }

    /// From the store's key.
    pub fn from_u128(v: u128) -> Self {
        Self(ulid::Ulid(v))
    }

    /// The `client_msg_id` used when the producer gave none: derived from the id, so it is
    /// stable across attempts and restarts.
    pub fn default_client_msg_id(self) -> String {
        format!("wxp-{}", self.0)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(Self)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

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

impl Message {
    /// The body handed to the channel's provider for each attempt: the WeCom body as accepted,
    /// or else [`Message::wechat_body`].
    pub fn send_body(&self, client_msg_id: &str) -> Box<RawValue> {
        match &self.wecom {
            Some(body) => body.0.clone(),
            None => self.wechat_body(client_msg_id),
        }
    }

    /// The JSON body WeChat takes, with the message's one `client_msg_id`, encoded once:
    /// the template fields are copied as the raw JSON text they are kept in, without building
    /// a tree of them.
    pub fn wechat_body(&self, client_msg_id: &str) -> Box<RawValue> {
        let body = WeChatBody {
            touser: &self.touser,
            template_id: &self.template_id,
            url: self.url.as_deref(),
            miniprogram: self.miniprogram.as_ref(),
            page: self.page.as_deref(),
            miniprogram_state: self.miniprogram_state.as_deref(),
            lang: self.lang.as_deref(),
            client_msg_id,
            data: &self.data.0,
        };
        // Strings, an object of strings and raw JSON text always encode.
        serde_json::value::to_raw_value(&body).unwrap_or_else(|_| TemplateData::default().0)
    }
}

/// The body of one send, borrowed from the message.
#[derive(Serialize)]
struct WeChatBody<'a> {
    touser: &'a str,
    template_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    miniprogram: Option<&'a MiniProgram>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    miniprogram_state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<&'a str>,
    client_msg_id: &'a str,
    data: &'a RawValue,
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

/// A request problem, naming the field (`{"error": {"code", "message", "field"}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// `missing_field`, `unknown_field`, `invalid_field`, `too_long`, `empty_batch`, ...
    pub code: ErrorCode,
    /// What is wrong, for people.
    pub message: String,
    /// The field, as a path (`data.keyword1.value`, `messages[3].touser`).
    pub field: String,
    /// The template rule broken (`too_long`, `missing_keyword`...), for `template_rule`
    /// errors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
}

impl FieldError {
    pub(crate) fn new(
        code: ErrorCode,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
            rule: None,
        }
    }

    /// The same error with `field` cut to [`MAX_ECHOED_FIELD`] characters and `message` to
    /// [`MAX_ECHOED_MESSAGE`] (an unknown key can be as long as the body), marked with `…`.
    pub fn bounded(mut self) -> Self {
        self.field = cut(&self.field, MAX_ECHOED_FIELD);
        self.message = cut(&self.message, MAX_ECHOED_MESSAGE);
        self
    }

    /// The same error inside a batch item (`messages[i].field`).
    pub fn in_item(mut self, index: usize) -> Self {
        self.field = if self.field.is_empty() {
            format!("messages[{index}]")
        } else {
            format!("messages[{index}].{}", self.field)
        };
        self
    }
}

/// Longest field name echoed in an error answer.
pub const MAX_ECHOED_FIELD: usize = 128;
/// Longest error message echoed in an error answer.
pub const MAX_ECHOED_MESSAGE: usize = 512;

/// `s` cut to `max` characters, with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

const FIELDS: &[&str] = &[
    "kind",
    "touser",
    "template_id",
    "url",
    "miniprogram",
    "page",
    "miniprogram_state",
    "lang",
    "data",
    "client_msg_id",
    "expires_at",
    "callback_url",
];

fn opt_str(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                Err(FieldError::new(
                    ErrorCode::TooLong,
                    field,
                    format!("at most {max} characters"),
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(FieldError::new(
            ErrorCode::InvalidField,
            field,
            "must be a string",
        )),
    }
}

fn required_str(obj: &Map<String, Value>, field: &str, max: usize) -> Result<String, FieldError> {
    match opt_str(obj, field, max)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(FieldError::new(
            ErrorCode::InvalidField,
            field,
            "must not be empty",
        )),
        None => Err(FieldError::new(
            ErrorCode::MissingField,
            field,
            "is required",
        )),
    }
}

fn check_url(field: &str, value: &str) -> Result<(), FieldError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(FieldError::new(
            ErrorCode::InvalidField,
            field,
            "must be an absolute http(s) URL",
        )),
    }
}

fn no_control(field: &str, value: &str) -> Result<(), FieldError> {
    if value.chars().any(char::is_control) {
        Err(FieldError::new(
            ErrorCode::InvalidField,
            field,
            "must not contain control characters",
        ))
    } else {
        Ok(())
    }
}

/// The items of a batch body `{"messages": [...]}`: an object with that one key holding 1 to
/// `max` items (each still to be checked with [`parse_message`]).
pub fn batch_items(value: Value, max: usize) -> Result<Vec<Value>, FieldError> {
    let Value::Object(mut obj) = value else {
        return Err(FieldError::new(
            ErrorCode::InvalidField,
            "",
            "the body must be {\"messages\": [...]}",
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "messages") {
        return Err(FieldError::new(
            ErrorCode::UnknownField,
            unknown.clone(),
            "unknown field; expected messages",
        ));
    }
    let items = match obj.remove("messages") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                "messages",
                "must be an array of messages",
            ));
        }
        None => {
            return Err(FieldError::new(
                ErrorCode::MissingField,
                "messages",
                "is required",
            ));
        }
    };
    if items.is_empty() {
        return Err(FieldError::new(
            ErrorCode::EmptyBatch,
            "messages",
            format!("must hold 1 to {max} messages; it is empty"),
        ));
    }
    if items.len() > max {
        return Err(FieldError::new(
            ErrorCode::TooLong,
            "messages",
            format!("must hold 1 to {max} messages (api.maxBatch)"),
        ));
    }
    Ok(items)
}

/// Validates one message body (already parsed as JSON) strictly: unknown fields, missing
/// `touser`/`template_id`, wrong types, over-long values and bad URLs are refused, naming the
/// field.
pub fn parse_message(value: &Value) -> Result<Message, FieldError> {
    let Value::Object(obj) = value else {
        return Err(FieldError::new(
            ErrorCode::InvalidField,
            "",
            "a message must be a JSON object",
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(FieldError::new(
            ErrorCode::UnknownField,
            unknown.clone(),
            format!("unknown field; expected one of: {}", FIELDS.join(", ")),
        ));
    }
    let kind = match obj.get("kind") {
        None | Some(Value::Null) => MessageKind::Template,
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            FieldError::new(
                ErrorCode::InvalidField,
                "kind",
                "must be one of template, subscribe, bizsend",
            )
        })?,
    };
    let touser = required_str(obj, "touser", MAX_TOUSER)?;
    no_control("touser", &touser)?;
    let template_id = required_str(obj, "template_id", MAX_TEMPLATE_ID)?;
    no_control("template_id", &template_id)?;
    let url = opt_str(obj, "url", MAX_URL)?;
    if let Some(u) = &url {
        check_url("url", u)?;
    }
    let miniprogram = match obj.get("miniprogram") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mp)) => {
            if let Some(unknown) = mp
                .keys()
                .find(|k| !matches!(k.as_str(), "appid" | "pagepath"))
            {
                return Err(FieldError::new(
                    ErrorCode::UnknownField,
                    format!("miniprogram.{unknown}"),
                    "unknown field; expected appid, pagepath",
                ));
            }
            let appid = required_str(mp, "appid", MAX_APPID)
                .map_err(|e| FieldError::new(e.code, "miniprogram.appid", e.message))?;
            let pagepath = opt_str(mp, "pagepath", MAX_PAGE)
                .map_err(|e| FieldError::new(e.code, "miniprogram.pagepath", e.message))?;
            Some(MiniProgram { appid, pagepath })
        }
        Some(_) => {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                "miniprogram",
                "must be an object {appid, pagepath}",
            ));
        }
    };
    let page = opt_str(obj, "page", MAX_PAGE)?;
    let miniprogram_state = opt_str(obj, "miniprogram_state", 16)?;
    if let Some(s) = &miniprogram_state
        && !matches!(s.as_str(), "developer" | "trial" | "formal")
    {
        return Err(FieldError::new(
            ErrorCode::InvalidField,
            "miniprogram_state",
            "must be one of developer, trial, formal",
        ));
    }
    let lang = opt_str(obj, "lang", 16)?;
    let data = parse_data(obj.get("data"))?;
    let client_msg_id = opt_str(obj, "client_msg_id", MAX_CLIENT_MSG_ID)?;
    if let Some(c) = &client_msg_id {
        if c.is_empty() {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                "client_msg_id",
                "must not be empty",
            ));
        }
        no_control("client_msg_id", c)?;
    }
    let expires_at = match obj.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<Timestamp>().map_err(|_| {
            FieldError::new(
                ErrorCode::InvalidField,
                "expires_at",
                "must be an RFC 3339 timestamp such as 2026-11-28T12:00:00Z",
            )
        })?),
        Some(_) => {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                "expires_at",
                "must be an RFC 3339 timestamp string",
            ));
        }
    };
    let callback_url = opt_str(obj, "callback_url", MAX_URL)?;
    if let Some(u) = &callback_url {
        check_url("callback_url", u)?;
    }
    Ok(Message {
        kind,
        touser,
        template_id,
        url,
        miniprogram,
        page,
        miniprogram_state,
        lang,
        data,
        client_msg_id,
        expires_at,
        callback_url,
        template_notes: Vec::new(),
        subscription_credit: false,
        wecom: None,
    })
}

fn parse_data(value: Option<&Value>) -> Result<TemplateData, FieldError> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(TemplateData::default()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                "data",
                "must be an object of {\"key\": {\"value\": \"...\"}}",
            ));
        }
    };
    if obj.len() > MAX_DATA_KEYS {
        return Err(FieldError::new(
            ErrorCode::TooLong,
            "data",
            format!("at most {MAX_DATA_KEYS} keys"),
        ));
    }
    for (key, item) in obj {
        let field = || format!("data.{key}");
        if key.is_empty() || key.chars().count() > MAX_DATA_KEY {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                field(),
                format!("keys must have 1 to {MAX_DATA_KEY} characters"),
            ));
        }
        let Value::Object(item) = item else {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                field(),
                "must be an object {\"value\": \"...\"}",
            ));
        };
        if let Some(unknown) = item
            .keys()
            .find(|k| !matches!(k.as_str(), "value" | "color"))
        {
            return Err(FieldError::new(
                ErrorCode::UnknownField,
                format!("data.{key}.{unknown}"),
                "unknown field; expected value, color",
            ));
        }
        match item.get("value") {
            Some(Value::String(s)) if s.chars().count() <= MAX_DATA_VALUE => {}
            Some(Value::String(_)) => {
                return Err(FieldError::new(
                    ErrorCode::TooLong,
                    format!("data.{key}.value"),
                    format!("at most {MAX_DATA_VALUE} characters"),
                ));
            }
            Some(_) => {
                return Err(FieldError::new(
                    ErrorCode::InvalidField,
                    format!("data.{key}.value"),
                    "must be a string",
                ));
            }
            None => {
                return Err(FieldError::new(
                    ErrorCode::MissingField,
                    format!("data.{key}.value"),
                    "is required",
                ));
            }
        }
        if let Some(color) = item.get("color")
            && !matches!(color, Value::String(c) if c.len() <= 16)
        {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                format!("data.{key}.color"),
                "must be a short string such as #173177",
            ));
        }
    }
    Ok(TemplateData::from_map(obj))
}

/// The digest an `Idempotency-Key` is stored with: SHA-256, in hex, of the route and the
/// request body as canonical JSON (object keys sorted, no white space), so that the same request
/// sent again with other spacing or key order still matches.
pub fn request_digest(route: &str, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update(b"\n");
    // A `serde_json::Map` keeps its keys sorted (no `preserve_order`), so this is canonical.
    h.update(serde_json::to_vec(body).unwrap_or_default());
    hex::encode(h.finalize())
}

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
    /// [`request_digest`]): a later request with the key and another digest is refused. Records
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
    /// not reach), and a recall.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok() -> Value {
        json!({"touser": "o1", "template_id": "T", "data": {"k": {"value": "v"}}})
    }

    #[test]
    fn minimal_message_parses_with_template_default() {
        let m = parse_message(&ok()).expect("valid");
        assert_eq!(m.kind, MessageKind::Template);
        let body: Value = serde_json::from_str(m.wechat_body("c1").get()).expect("json");
        assert_eq!(body["client_msg_id"], "c1");
        assert_eq!(body["data"]["k"]["value"], "v");
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            (json!({"template_id": "T"}), "missing_field", "touser"),
            (json!({"touser": "o"}), "missing_field", "template_id"),
            (
                json!({"touser": "o", "template_id": "T", "colour": 1}),
                "unknown_field",
                "colour",
            ),
            (
                json!({"touser": "x".repeat(MAX_TOUSER + 1), "template_id": "T"}),
                "too_long",
                "touser",
            ),
            (
                json!({"touser": "o", "template_id": "T", "url": "ftp://x"}),
                "invalid_field",
                "url",
            ),
            (
                json!({"touser": "o", "template_id": "T", "callback_url": "not a url"}),
                "invalid_field",
                "callback_url",
            ),
            (
                json!({"touser": "o", "template_id": "T", "data": {"k": {"value": 3}}}),
                "invalid_field",
                "data.k.value",
            ),
            (
                json!({"touser": "o", "template_id": "T", "data": {"k": {"valu": "x"}}}),
                "unknown_field",
                "data.k.valu",
            ),
            (
                json!({"touser": "o", "template_id": "T", "miniprogram": {"pagepath": "p"}}),
                "missing_field",
                "miniprogram.appid",
            ),
            (
                json!({"touser": "o", "template_id": "T", "expires_at": "tomorrow"}),
                "invalid_field",
                "expires_at",
            ),
            (
                json!({"touser": "o", "template_id": "T", "kind": "sms"}),
                "invalid_field",
                "kind",
            ),
            (
                json!({"touser": "o", "template_id": "T", "client_msg_id": "x".repeat(65)}),
                "too_long",
                "client_msg_id",
            ),
        ];
        for (body, code, field) in cases {
            let err = parse_message(&body).expect_err("invalid");
            assert_eq!(
                (err.code.as_str(), err.field.as_str()),
                (code, field),
                "{body}"
            );
        }
        let err = parse_message(&json!({"template_id": "T"}))
            .expect_err("invalid")
            .in_item(3);
        assert_eq!(err.field, "messages[3].touser");
    }

    #[test]
    fn default_client_msg_id_comes_from_the_id() {
        let id = MessageId::new();
        let rec = MessageRecord::new(
            id,
            parse_message(&ok()).expect("valid"),
            None,
            Timestamp::now(),
        );
        assert_eq!(rec.client_msg_id, id.default_client_msg_id());
        assert!(rec.client_msg_id.len() <= MAX_CLIENT_MSG_ID);
        let parsed: MessageId = id.to_string().parse().expect("round trip");
        assert_eq!(parsed, id);
    }
}
