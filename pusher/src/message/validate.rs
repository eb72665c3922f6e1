//! A producer's request, validated strictly: every limit, and each error naming its field.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::json::{Json, Object};

use super::MessageKind;
use super::{Message, MiniProgram, TemplateData};
use crate::error_code::ErrorCode;

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

fn opt_str(obj: &Object<'_>, field: &str, max: usize) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => {
            if s.chars().count() > max {
                Err(FieldError::new(
                    ErrorCode::TooLong,
                    field,
                    format!("at most {max} characters"),
                ))
            } else {
                Ok(Some(s.to_string()))
            }
        }
        Some(_) => Err(FieldError::new(
            ErrorCode::InvalidField,
            field,
            "must be a string",
        )),
    }
}

fn required_str(obj: &Object<'_>, field: &str, max: usize) -> Result<String, FieldError> {
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
pub fn batch_items(value: Json<'_>, max: usize) -> Result<Vec<Json<'_>>, FieldError> {
    let Json::Object(mut obj) = value else {
        return Err(FieldError::new(
            ErrorCode::InvalidField,
            "",
            "the body must be {\"messages\": [...]}",
        ));
    };
    if let Some(unknown) = obj.first_unknown(|k| k == "messages") {
        return Err(FieldError::new(
            ErrorCode::UnknownField,
            unknown,
            "unknown field; expected messages",
        ));
    }
    let items = match obj.remove("messages") {
        Some(Json::Array(items)) => items,
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

/// [`parse_json_message`] of a `Value` tree (tests and tools).
pub fn parse_message(value: &Value) -> Result<Message, FieldError> {
    parse_json_message(&Json::from(value))
}

/// Validates one message body (already parsed as JSON) strictly: unknown fields, missing
/// `touser`/`template_id`, wrong types, over-long values and bad URLs are refused, naming the
/// field.
pub fn parse_json_message(value: &Json<'_>) -> Result<Message, FieldError> {
    let Json::Object(obj) = value else {
        return Err(FieldError::new(
            ErrorCode::InvalidField,
            "",
            "a message must be a JSON object",
        ));
    };
    if let Some(unknown) = obj.first_unknown(|k| FIELDS.contains(&k)) {
        return Err(FieldError::new(
            ErrorCode::UnknownField,
            unknown,
            format!("unknown field; expected one of: {}", FIELDS.join(", ")),
        ));
    }
    let kind = match obj.get("kind") {
        None | Some(Json::Null) => MessageKind::Template,
        Some(v) => serde_json::from_value(v.to_value()).map_err(|_| {
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
    let miniprogram = parse_miniprogram(obj.get("miniprogram"))?;
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
    let client_msg_id = parse_client_msg_id(obj)?;
    let expires_at = parse_expires_at(obj.get("expires_at"))?;
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

/// `miniprogram`: `{appid, pagepath}` or absent.
fn parse_miniprogram(value: Option<&Json<'_>>) -> Result<Option<MiniProgram>, FieldError> {
    Ok(match value {
        None | Some(Json::Null) => None,
        Some(Json::Object(mp)) => {
            if let Some(unknown) = mp.first_unknown(|k| matches!(k, "appid" | "pagepath")) {
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
    })
}

/// `client_msg_id`: absent, or a non-empty id without control characters.
fn parse_client_msg_id(obj: &Object<'_>) -> Result<Option<String>, FieldError> {
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
    Ok(client_msg_id)
}

/// `expires_at`: absent, or an RFC 3339 timestamp string.
fn parse_expires_at(value: Option<&Json<'_>>) -> Result<Option<Timestamp>, FieldError> {
    Ok(match value {
        None | Some(Json::Null) => None,
        Some(Json::Str(s)) => Some(s.parse::<Timestamp>().map_err(|_| {
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
    })
}

fn parse_data(value: Option<&Json<'_>>) -> Result<TemplateData, FieldError> {
    let obj = match value {
        None | Some(Json::Null) => return Ok(TemplateData::default()),
        Some(Json::Object(o)) => o,
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
    // In key order, as the first error found is the one answered.
    let members = obj.sorted();
    for &(key, item) in &members {
        let field = || format!("data.{key}");
        if key.is_empty() || key.chars().count() > MAX_DATA_KEY {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                field(),
                format!("keys must have 1 to {MAX_DATA_KEY} characters"),
            ));
        }
        let Json::Object(item) = item else {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                field(),
                "must be an object {\"value\": \"...\"}",
            ));
        };
        if let Some(unknown) = item.first_unknown(|k| matches!(k, "value" | "color")) {
            return Err(FieldError::new(
                ErrorCode::UnknownField,
                format!("data.{key}.{unknown}"),
                "unknown field; expected value, color",
            ));
        }
        match item.get("value") {
            Some(Json::Str(s)) if s.chars().count() <= MAX_DATA_VALUE => {}
            Some(Json::Str(_)) => {
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
            && !matches!(color, Json::Str(c) if c.len() <= 16)
        {
            return Err(FieldError::new(
                ErrorCode::InvalidField,
                format!("data.{key}.color"),
                "must be a short string such as #173177",
            ));
        }
    }
    Ok(TemplateData::from_object(obj))
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
