//! WeCom messages as producers send them, checked strictly at accept: each error names its
//! field. An application message (`wecomApp`) names its recipients (`touser`, `toparty`,
//! `totag`) and is one of `text`, `textcard`, `markdown`, `news` and `template_card`; a group
//! robot's (`wecomRobot`) goes to the robot's group and is one of `text`, `markdown` and
//! `news`. What is kept is the body as WeCom takes it; the channel's `agentid` and the
//! duplicate-check interval are added to each attempt.
//!
//! Lengths follow WeCom's documented limits, counted in bytes of UTF-8 as WeCom counts them.

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::error_code::ErrorCode;
use crate::message::{FieldError, MAX_URL, Message, TemplateData};
use crate::send::MessageKind;

/// Which WeCom API the message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// An application's `message/send`: recipients by user, party and tag.
    App,
    /// A group robot's `webhook/send`: the robot's group.
    Robot,
}

/// Most users in one `touser` (WeCom's limit).
pub const MAX_USERS: usize = 1000;
/// Most parties or tags in one `toparty` / `totag`.
pub const MAX_PARTIES: usize = 100;
/// Most articles of a `news` message.
pub const MAX_ARTICLES: usize = 8;

const APP_TYPES: &[&str] = &["text", "textcard", "markdown", "news", "template_card"];
const ROBOT_TYPES: &[&str] = &["text", "markdown", "news"];
const CARD_TYPES: &[&str] = &[
    "text_notice",
    "news_notice",
    "button_interaction",
    "vote_interaction",
    "multiple_interaction",
];

fn err(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(code, field, message)
}

fn unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), FieldError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(err(
            ErrorCode::UnknownField,
            format!("{prefix}{k}"),
            format!("unknown field; expected one of: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A string field of at most `max_bytes` bytes; `required` refuses a missing or blank one.
fn text(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    max_bytes: usize,
    required: bool,
) -> Result<Option<String>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) if required => {
            Err(err(ErrorCode::MissingField, field, "is required"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if required && s.trim().is_empty() => {
            Err(err(ErrorCode::InvalidField, field, "must not be empty"))
        }
        Some(Value::String(s)) if s.len() > max_bytes => Err(err(
            ErrorCode::TooLong,
            field,
            format!("at most {max_bytes} bytes"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err(ErrorCode::InvalidField, field, "must be a string")),
    }
}

fn url(obj: &Map<String, Value>, key: &str, field: &str, required: bool) -> Result<(), FieldError> {
    if let Some(u) = text(obj, key, field, MAX_URL, required)? {
        match url::Url::parse(&u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {}
            _ => {
                return Err(err(
                    ErrorCode::InvalidField,
                    field,
                    "must be an absolute http(s) URL",
                ));
            }
        }
    }
    Ok(())
}

fn object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a Map<String, Value>, FieldError> {
    match obj.get(key) {
        Some(Value::Object(o)) => Ok(o),
        None | Some(Value::Null) => Err(err(ErrorCode::MissingField, field, "is required")),
        Some(_) => Err(err(ErrorCode::InvalidField, field, "must be an object")),
    }
}

/// `a|b|c`: at most `max` ids, none empty, no control characters or spaces.
fn id_list(obj: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, FieldError> {
    let Some(list) = text(obj, key, key, max * 65, false)? else {
        return Ok(None);
    };
    if list.is_empty() {
        return Ok(None);
    }
    let ids: Vec<&str> = list.split('|').collect();
    if ids.len() > max {
        return Err(err(
            ErrorCode::TooLong,
            key,
            format!("at most {max} ids, separated by |"),
        ));
    }
    if ids
        .iter()
        .any(|id| id.is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(err(
            ErrorCode::InvalidField,
            key,
            "ids separated by |, none empty, without spaces",
        ));
    }
    Ok(Some(list))
}

fn string_list(obj: &Map<String, Value>, key: &str, field: &str) -> Result<(), FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items))
            if items.len() <= MAX_USERS
                && items
                    .iter()
                    .all(|v| matches!(v, Value::String(s) if !s.is_empty() && s.len() <= 64)) =>
        {
            Ok(())
        }
        Some(_) => Err(err(
            ErrorCode::InvalidField,
            field,
            "must be an array of user ids (or \"@all\")",
        )),
    }
}

fn check_text(o: &Map<String, Value>, audience: Audience) -> Result<(), FieldError> {
    match audience {
        Audience::App => unknown(o, &["content"], "text.")?,
        Audience::Robot => unknown(
            o,
            &["content", "mentioned_list", "mentioned_mobile_list"],
            "text.",
        )?,
    }
    text(o, "content", "text.content", 2048, true)?;
    string_list(o, "mentioned_list", "text.mentioned_list")?;
    string_list(o, "mentioned_mobile_list", "text.mentioned_mobile_list")
}

fn check_markdown(o: &Map<String, Value>, audience: Audience) -> Result<(), FieldError> {
    unknown(o, &["content"], "markdown.")?;
    let max = match audience {
        Audience::App => 2048,
        Audience::Robot => 4096,
    };
    text(o, "content", "markdown.content", max, true).map(drop)
}

fn check_textcard(o: &Map<String, Value>) -> Result<(), FieldError> {
    unknown(o, &["title", "description", "url", "btntxt"], "textcard.")?;
    text(o, "title", "textcard.title", 128, true)?;
    text(o, "description", "textcard.description", 512, true)?;
    url(o, "url", "textcard.url", true)?;
    text(o, "btntxt", "textcard.btntxt", 12, false).map(drop)
}

fn check_news(o: &Map<String, Value>, audience: Audience) -> Result<(), FieldError> {
    unknown(o, &["articles"], "news.")?;
    let articles = match o.get("articles") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(err(ErrorCode::MissingField, "news.articles", "is required"));
        }
        Some(_) => {
            return Err(err(
                ErrorCode::InvalidField,
                "news.articles",
                "must be an array of articles",
            ));
        }
    };
    if articles.is_empty() || articles.len() > MAX_ARTICLES {
        return Err(err(
            ErrorCode::InvalidField,
            "news.articles",
            format!("must hold 1 to {MAX_ARTICLES} articles"),
        ));
    }
    let known: &[&str] = match audience {
        Audience::App => &["title", "description", "url", "picurl", "appid", "pagepath"],
        Audience::Robot => &["title", "description", "url", "picurl"],
    };
    for (i, article) in articles.iter().enumerate() {
        let at = format!("news.articles[{i}]");
        let Value::Object(a) = article else {
            return Err(err(ErrorCode::InvalidField, at, "must be an object"));
        };
        unknown(a, known, &format!("{at}."))?;
        text(a, "title", &format!("{at}.title"), 128, true)?;
        text(a, "description", &format!("{at}.description"), 512, false)?;
        // An article opens a page, or (applications only) a Mini Program page.
        let opens_mini_program = a.contains_key("appid");
        url(a, "url", &format!("{at}.url"), !opens_mini_program)?;
        url(a, "picurl", &format!("{at}.picurl"), false)?;
        text(a, "appid", &format!("{at}.appid"), 64, false)?;
        text(a, "pagepath", &format!("{at}.pagepath"), 1024, false)?;
    }
    Ok(())
}

/// A template card: its `card_type` and the fields every card shares are checked; the
/// layout's other parts are objects or arrays passed on as given.
fn check_template_card(o: &Map<String, Value>) -> Result<(), FieldError> {
    let card_type = text(o, "card_type", "template_card.card_type", 32, true)?.unwrap_or_default();
    if !CARD_TYPES.contains(&card_type.as_str()) {
        return Err(err(
            ErrorCode::InvalidField,
            "template_card.card_type",
            format!("must be one of: {}", CARD_TYPES.join(", ")),
        ));
    }
    unknown(
        o,
        &[
            "card_type",
            "source",
            "action_menu",
            "task_id",
            "main_title",
            "quote_area",
            "emphasis_content",
            "sub_title_text",
            "horizontal_content_list",
            "jump_list",
            "card_action",
            "card_image",
            "image_text_area",
            "vertical_content_list",
            "button_selection",
            "button_list",
            "checkbox",
            "select_list",
            "submit_button",
        ],
        "template_card.",
    )?;
    let main = object(o, "main_title", "template_card.main_title")?;
    unknown(main, &["title", "desc"], "template_card.main_title.")?;
    text(main, "title", "template_card.main_title.title", 128, true)?;
    text(main, "desc", "template_card.main_title.desc", 512, false)?;
    text(
        o,
        "sub_title_text",
        "template_card.sub_title_text",
        512,
        false,
    )?;
    let interactive = card_type.ends_with("_interaction");
    let task = text(o, "task_id", "template_card.task_id", 128, interactive)?;
    if let Some(task) = task
        && !task
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@'))
    {
        return Err(err(
            ErrorCode::InvalidField,
            "template_card.task_id",
            "letters, digits, _, - and @ only",
        ));
    }
    for (key, value) in o {
        if matches!(key.as_str(), "card_type" | "task_id" | "sub_title_text") {
            continue;
        }
        if !matches!(value, Value::Object(_) | Value::Array(_)) {
            return Err(err(
                ErrorCode::InvalidField,
                format!("template_card.{key}"),
                "must be an object or an array",
            ));
        }
    }
    Ok(())
}

/// The message types and the top-level fields a message for `audience` may carry.
fn allowed_fields(audience: Audience) -> (&'static [&'static str], &'static [&'static str]) {
    match audience {
        Audience::App => (
            APP_TYPES,
            &[
                "touser",
                "toparty",
                "totag",
                "msgtype",
                "text",
                "textcard",
                "markdown",
                "news",
                "template_card",
                "safe",
                "duplicate_check",
                "expires_at",
                "callback_url",
            ],
        ),
        Audience::Robot => (
            ROBOT_TYPES,
            &[
                "msgtype",
                "text",
                "markdown",
                "news",
                "expires_at",
                "callback_url",
            ],
        ),
    }
}

/// The `msgtype`, one of `types`, and no content object of another type beside it.
fn message_type(obj: &Map<String, Value>, types: &[&str]) -> Result<String, FieldError> {
    let msgtype = text(obj, "msgtype", "msgtype", 32, true)?.unwrap_or_default();
    if !types.contains(&msgtype.as_str()) {
        return Err(err(
            ErrorCode::InvalidField,
            "msgtype",
            format!("must be one of: {}", types.join(", ")),
        ));
    }
    if let Some(other) = types
        .iter()
        .find(|t| **t != msgtype && obj.contains_key(**t))
    {
        return Err(err(
            ErrorCode::UnknownField,
            *other,
            format!("a {msgtype} message takes no {other} object"),
        ));
    }
    Ok(msgtype)
}

/// Checks the content object of a `msgtype` message.
fn check_content(
    msgtype: &str,
    content: &Map<String, Value>,
    audience: Audience,
) -> Result<(), FieldError> {
    match msgtype {
        "text" => check_text(content, audience),
        "markdown" => check_markdown(content, audience),
        "textcard" => check_textcard(content),
        "news" => check_news(content, audience),
        _ => check_template_card(content),
    }
}

/// An application message's recipients, `safe` and `duplicate_check`, written into `body`.
/// Returns the `touser` list (empty when the message names only parties or tags).
fn app_fields(
    obj: &Map<String, Value>,
    msgtype: &str,
    body: &mut Map<String, Value>,
) -> Result<String, FieldError> {
    let users = id_list(obj, "touser", MAX_USERS)?;
    let parties = id_list(obj, "toparty", MAX_PARTIES)?;
    let tags = id_list(obj, "totag", MAX_PARTIES)?;
    if users.is_none() && parties.is_none() && tags.is_none() {
        return Err(err(
            ErrorCode::MissingField,
            "touser",
            "name at least one recipient: touser, toparty or totag",
        ));
    }
    for (key, list) in [("touser", &users), ("toparty", &parties), ("totag", &tags)] {
        if let Some(list) = list {
            body.insert(key.into(), Value::String(list.clone()));
        }
    }
    match obj.get("safe") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => {
            if msgtype == "markdown" || msgtype == "template_card" {
                return Err(err(
                    ErrorCode::InvalidField,
                    "safe",
                    format!("a {msgtype} message cannot be confidential"),
                ));
            }
            body.insert("safe".into(), Value::Number(n.clone()));
        }
        Some(_) => return Err(err(ErrorCode::InvalidField, "safe", "must be 0 or 1")),
    }
    let check = match obj.get("duplicate_check") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(err(
                ErrorCode::InvalidField,
                "duplicate_check",
                "must be true or false",
            ));
        }
    };
    body.insert(
        "enable_duplicate_check".into(),
        Value::from(u8::from(check)),
    );
    Ok(users.unwrap_or_default())
}

/// The optional `expires_at`, an RFC 3339 timestamp.
fn expires_at(obj: &Map<String, Value>) -> Result<Option<Timestamp>, FieldError> {
    match obj.get("expires_at") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse::<Timestamp>().map(Some).map_err(|_| {
            err(
                ErrorCode::InvalidField,
                "expires_at",
                "must be an RFC 3339 timestamp such as 2026-11-28T12:00:00Z",
            )
        }),
        Some(_) => Err(err(
            ErrorCode::InvalidField,
            "expires_at",
            "must be an RFC 3339 timestamp string",
        )),
    }
}

/// Checks a WeCom message for `audience` and returns it as the pusher keeps it.
pub fn parse(value: &Value, audience: Audience) -> Result<Message, FieldError> {
    let Value::Object(obj) = value else {
        return Err(err(
            ErrorCode::InvalidField,
            "",
            "a message must be a JSON object",
        ));
    };
    let (types, top) = allowed_fields(audience);
    unknown(obj, top, "")?;
    let msgtype = message_type(obj, types)?;
    let content = object(obj, &msgtype, &msgtype)?;
    check_content(&msgtype, content, audience)?;
    let mut body = Map::new();
    let touser = match audience {
        Audience::App => app_fields(obj, &msgtype, &mut body)?,
        Audience::Robot => String::new(),
    };
    body.insert("msgtype".into(), Value::String(msgtype.clone()));
    body.insert(msgtype.clone(), Value::Object(content.clone()));
    let expires_at = expires_at(obj)?;
    url(obj, "callback_url", "callback_url", false)?;
    let callback_url = text(obj, "callback_url", "callback_url", MAX_URL, false)?;
    Ok(Message {
        kind: MessageKind::Template,
        touser,
        template_id: String::new(),
        url: None,
        miniprogram: None,
        page: None,
        miniprogram_state: None,
        lang: None,
        data: TemplateData::default(),
        client_msg_id: None,
        expires_at,
        callback_url,
        template_notes: Vec::new(),
        subscription_credit: false,
        wecom: Some(TemplateData::from_map(&body)),
    })
}

#[cfg(test)]
#[path = "wecom_message_tests.rs"]
mod tests;
