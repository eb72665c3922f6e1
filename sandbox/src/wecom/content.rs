//! Strict checks of a WeCom message's content object, one function per message type, each
//! answering WeCom's errcode and a hint that names the field. Shared by application messages
//! (`message/send`: text, textcard, markdown, news, template_card) and group robots
//! (`webhook/send`: text, markdown, news).

use serde_json::{Map, Value};
use wxcrypto::errcode::wecom::WeComCode;

/// A refused send: the errcode and the hint naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The errcode.
    pub code: WeComCode,
    /// The field or reason, for `errmsg`'s hint.
    pub hint: String,
}

impl Refusal {
    /// A refusal with this code and hint.
    pub fn new(code: WeComCode, hint: impl Into<String>) -> Self {
        Self {
            code,
            hint: hint.into(),
        }
    }
}

/// The message types of application messages.
pub const APP_TYPES: [&str; 5] = ["text", "textcard", "markdown", "news", "template_card"];
/// The message types of group robots.
pub const ROBOT_TYPES: [&str; 3] = ["text", "markdown", "news"];
/// Template card types.
pub const CARD_TYPES: [&str; 5] = [
    "text_notice",
    "news_notice",
    "button_interaction",
    "vote_interaction",
    "multiple_interaction",
];

/// Byte limits, per WeCom's documentation.
const TEXT_MAX: usize = 2048;
const APP_MARKDOWN_MAX: usize = 2048;
const ROBOT_MARKDOWN_MAX: usize = 4096;
const TITLE_MAX: usize = 128;
const DESCRIPTION_MAX: usize = 512;
const URL_MAX: usize = 2048;
const ARTICLES_MAX: usize = 8;
const TASK_ID_MAX: usize = 128;
const BUTTONS_MAX: usize = 6;

/// Which API a content object is for (they differ in limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `message/send`.
    App,
    /// `webhook/send`.
    Robot,
}

/// A string field: `None` when absent or null, an error when not a string.
fn string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, Refusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refusal::new(
            WeComCode::InvalidParameter,
            format!("{path}.{key} must be a string"),
        )),
    }
}

/// A required, non-empty string field of at most `max` bytes.
fn required(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    missing: WeComCode,
    max: usize,
) -> Result<(), Refusal> {
    match string(obj, key, path)? {
        None | Some("") => Err(Refusal::new(missing, format!("{path}.{key}"))),
        Some(s) if s.len() > max => Err(Refusal::new(
            WeComCode::ContentTooLong,
            format!("{path}.{key} is longer than {max} bytes"),
        )),
        Some(_) => Ok(()),
    }
}

/// An optional string field of at most `max` bytes.
fn optional(obj: &Map<String, Value>, key: &str, path: &str, max: usize) -> Result<(), Refusal> {
    match string(obj, key, path)? {
        Some(s) if s.len() > max => Err(Refusal::new(
            WeComCode::ContentTooLong,
            format!("{path}.{key} is longer than {max} bytes"),
        )),
        _ => Ok(()),
    }
}

fn object<'a>(
    value: Option<&'a Value>,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Refusal::new(
            WeComCode::InvalidParameter,
            format!("{path} must be an object"),
        )),
    }
}

/// Checks the content object of `msgtype` (the body's member of that name).
pub fn check(api: Api, msgtype: &str, content: Option<&Value>) -> Result<(), Refusal> {
    let known: &[&str] = match api {
        Api::App => &APP_TYPES,
        Api::Robot => &ROBOT_TYPES,
    };
    if !known.contains(&msgtype) {
        return Err(Refusal::new(
            WeComCode::InvalidMessageType,
            format!("msgtype {msgtype:?} is not one of {}", known.join(", ")),
        ));
    }
    let empty = Map::new();
    let obj = object(content, msgtype)?.unwrap_or(&empty);
    match msgtype {
        "text" => required(obj, "content", "text", WeComCode::EmptyContent, TEXT_MAX),
        "markdown" => {
            let max = match api {
                Api::App => APP_MARKDOWN_MAX,
                Api::Robot => ROBOT_MARKDOWN_MAX,
            };
            required(obj, "content", "markdown", WeComCode::EmptyContent, max)
        }
        "textcard" => textcard(obj),
        "news" => news(api, obj),
        _ => template_card(obj),
    }
}

fn textcard(obj: &Map<String, Value>) -> Result<(), Refusal> {
    required(obj, "title", "textcard", WeComCode::TitleMissing, TITLE_MAX)?;
    required(
        obj,
        "description",
        "textcard",
        WeComCode::DescriptionMissing,
        DESCRIPTION_MAX,
    )?;
    required(obj, "url", "textcard", WeComCode::UrlMissing, URL_MAX)?;
    match string(obj, "btntxt", "textcard")? {
        Some(b) if b.chars().count() > 4 => Err(Refusal::new(
            WeComCode::ContentTooLong,
            "textcard.btntxt is longer than 4 characters",
        )),
        _ => Ok(()),
    }
}

fn news(api: Api, obj: &Map<String, Value>) -> Result<(), Refusal> {
    let articles = match obj.get("articles") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(Refusal::new(
                WeComCode::InvalidArticleCount,
                "news.articles",
            ));
        }
        Some(_) => {
            return Err(Refusal::new(
                WeComCode::InvalidParameter,
                "news.articles must be an array",
            ));
        }
    };
    if articles.is_empty() || articles.len() > ARTICLES_MAX {
        return Err(Refusal::new(
            WeComCode::InvalidArticleCount,
            format!(
                "news.articles has {} articles, 1 to 8 allowed",
                articles.len()
            ),
        ));
    }
    for (i, a) in articles.iter().enumerate() {
        let path = format!("news.articles[{i}]");
        let empty = Map::new();
        let a = object(Some(a), &path)?.unwrap_or(&empty);
        required(a, "title", &path, WeComCode::TitleMissing, TITLE_MAX)?;
        optional(a, "description", &path, DESCRIPTION_MAX)?;
        optional(a, "picurl", &path, URL_MAX)?;
        // An application's article may open a mini program instead of a URL.
        let has_appid =
            api == Api::App && string(a, "appid", &path)?.is_some_and(|s| !s.is_empty());
        if has_appid {
            optional(a, "url", &path, URL_MAX)?;
        } else {
            required(a, "url", &path, WeComCode::UrlMissing, URL_MAX)?;
        }
    }
    Ok(())
}

fn template_card(obj: &Map<String, Value>) -> Result<(), Refusal> {
    let card_type = string(obj, "card_type", "template_card")?.unwrap_or_default();
    if !CARD_TYPES.contains(&card_type) {
        return Err(Refusal::new(
            WeComCode::InvalidCardType,
            format!("template_card.card_type {card_type:?}"),
        ));
    }
    let main_title = object(obj.get("main_title"), "template_card.main_title")?;
    let title = match main_title {
        Some(m) => string(m, "title", "template_card.main_title")?.unwrap_or_default(),
        None => "",
    };
    if title.len() > TITLE_MAX {
        return Err(Refusal::new(
            WeComCode::ContentTooLong,
            "template_card.main_title.title is longer than 128 bytes",
        ));
    }
    let interactive = card_type.ends_with("_interaction");
    if card_type == "text_notice" {
        let sub = string(obj, "sub_title_text", "template_card")?.unwrap_or_default();
        if title.is_empty() && sub.is_empty() {
            return Err(Refusal::new(
                WeComCode::TitleMissing,
                "template_card.main_title.title or template_card.sub_title_text",
            ));
        }
    } else if title.is_empty() {
        return Err(Refusal::new(
            WeComCode::TitleMissing,
            "template_card.main_title.title",
        ));
    }
    if !interactive {
        return card_action(obj);
    }
    let task_id = string(obj, "task_id", "template_card")?.unwrap_or_default();
    let task_ok = !task_id.is_empty()
        && task_id.len() <= TASK_ID_MAX
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@'));
    if !task_ok {
        return Err(Refusal::new(
            WeComCode::InvalidTaskId,
            "template_card.task_id",
        ));
    }
    if card_type == "button_interaction" {
        let buttons = match obj.get("button_list") {
            Some(Value::Array(b)) => b.as_slice(),
            _ => &[],
        };
        if buttons.is_empty() || buttons.len() > BUTTONS_MAX {
            return Err(Refusal::new(
                WeComCode::InvalidParameter,
                format!(
                    "template_card.button_list has {} buttons, 1 to 6 allowed",
                    buttons.len()
                ),
            ));
        }
        for (i, b) in buttons.iter().enumerate() {
            let path = format!("template_card.button_list[{i}]");
            let empty = Map::new();
            let b = object(Some(b), &path)?.unwrap_or(&empty);
            if string(b, "text", &path)?.is_none_or(str::is_empty) {
                return Err(Refusal::new(
                    WeComCode::InvalidButtonText,
                    format!("{path}.text"),
                ));
            }
            if string(b, "key", &path)?.is_none_or(str::is_empty) {
                return Err(Refusal::new(
                    WeComCode::InvalidParameter,
                    format!("{path}.key"),
                ));
            }
        }
    } else {
        let empty = Map::new();
        let submit =
            object(obj.get("submit_button"), "template_card.submit_button")?.unwrap_or(&empty);
        for key in ["text", "key"] {
            if string(submit, key, "template_card.submit_button")?.is_none_or(str::is_empty) {
                return Err(Refusal::new(
                    WeComCode::InvalidParameter,
                    format!("template_card.submit_button.{key}"),
                ));
            }
        }
    }
    Ok(())
}

/// `card_action`: type 1 opens `url`, type 2 opens the mini program `appid`.
fn card_action(obj: &Map<String, Value>) -> Result<(), Refusal> {
    let path = "template_card.card_action";
    let Some(action) = object(obj.get("card_action"), path)? else {
        return Err(Refusal::new(WeComCode::InvalidCardAction, path));
    };
    let field = match action.get("type").and_then(Value::as_i64) {
        Some(1) => "url",
        Some(2) => "appid",
        _ => {
            return Err(Refusal::new(
                WeComCode::InvalidCardAction,
                format!("{path}.type"),
            ));
        }
    };
    if string(action, field, path)?.is_none_or(str::is_empty) {
        return Err(Refusal::new(
            WeComCode::InvalidCardAction,
            format!("{path}.{field}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[allow(clippy::needless_pass_by_value)]
    fn code(api: Api, msgtype: &str, content: Value) -> WeComCode {
        match check(api, msgtype, Some(&content)) {
            Ok(()) => WeComCode::Ok,
            Err(r) => r.code,
        }
    }

    #[test]
    fn text_and_markdown() {
        use WeComCode::*;
        assert_eq!(code(Api::App, "text", json!({"content": "hi"})), Ok);
        assert_eq!(code(Api::App, "text", json!({})), EmptyContent);
        assert_eq!(code(Api::App, "text", json!({"content": ""})), EmptyContent);
        assert_eq!(
            code(Api::App, "text", json!({"content": 5})),
            InvalidParameter
        );
        assert_eq!(
            code(Api::App, "text", json!({"content": "x".repeat(2049)})),
            ContentTooLong
        );
        assert_eq!(
            code(Api::App, "markdown", json!({"content": "x".repeat(3000)})),
            ContentTooLong
        );
        assert_eq!(
            code(Api::Robot, "markdown", json!({"content": "x".repeat(3000)})),
            Ok
        );
        assert_eq!(code(Api::App, "voice", json!({})), InvalidMessageType);
        assert_eq!(code(Api::Robot, "textcard", json!({})), InvalidMessageType);
        assert_eq!(
            check(Api::App, "text", None).map_err(|r| r.code),
            Err(EmptyContent)
        );
    }

    #[test]
    fn textcard_and_news() {
        use WeComCode::*;
        let card = json!({"title": "t", "description": "d", "url": "https://x"});
        assert_eq!(code(Api::App, "textcard", card.clone()), Ok);
        assert_eq!(
            code(
                Api::App,
                "textcard",
                json!({"description": "d", "url": "u"})
            ),
            TitleMissing
        );
        assert_eq!(
            code(Api::App, "textcard", json!({"title": "t", "url": "u"})),
            DescriptionMissing
        );
        assert_eq!(
            code(
                Api::App,
                "textcard",
                json!({"title": "t", "description": "d"})
            ),
            UrlMissing
        );
        let mut long = card;
        long["btntxt"] = json!("更多详情看看");
        assert_eq!(code(Api::App, "textcard", long), ContentTooLong);
        let article = json!({"title": "t", "url": "https://x"});
        assert_eq!(code(Api::App, "news", json!({"articles": [article]})), Ok);
        assert_eq!(
            code(Api::App, "news", json!({"articles": []})),
            InvalidArticleCount
        );
        assert_eq!(
            code(Api::App, "news", json!({"articles": vec![article; 9]})),
            InvalidArticleCount
        );
        assert_eq!(
            code(Api::App, "news", json!({"articles": [{"url": "u"}]})),
            TitleMissing
        );
        assert_eq!(
            code(Api::App, "news", json!({"articles": [{"title": "t"}]})),
            UrlMissing
        );
        assert_eq!(
            code(
                Api::App,
                "news",
                json!({"articles": [{"title": "t", "appid": "wx1"}]})
            ),
            Ok
        );
        assert_eq!(
            code(
                Api::Robot,
                "news",
                json!({"articles": [{"title": "t", "appid": "wx1"}]})
            ),
            UrlMissing
        );
    }

    #[test]
    fn template_cards() {
        use WeComCode::*;
        let notice = json!({"card_type": "text_notice", "main_title": {"title": "t"},
                            "card_action": {"type": 1, "url": "https://x"}});
        assert_eq!(code(Api::App, "template_card", notice.clone()), Ok);
        assert_eq!(
            code(Api::App, "template_card", json!({"card_type": "poster"})),
            InvalidCardType
        );
        let mut no_action = notice.clone();
        no_action.as_object_mut().map(|m| m.remove("card_action"));
        assert_eq!(
            code(Api::App, "template_card", no_action),
            InvalidCardAction
        );
        let mut bad_action = notice;
        bad_action["card_action"] = json!({"type": 2});
        assert_eq!(
            code(Api::App, "template_card", bad_action),
            InvalidCardAction
        );
        let buttons = json!({"card_type": "button_interaction", "main_title": {"title": "t"},
                             "task_id": "task-1", "button_list": [{"text": "OK", "key": "ok"}]});
        assert_eq!(code(Api::App, "template_card", buttons.clone()), Ok);
        let mut bad_task = buttons.clone();
        bad_task["task_id"] = json!("has space");
        assert_eq!(code(Api::App, "template_card", bad_task), InvalidTaskId);
        let mut bad_button = buttons;
        bad_button["button_list"] = json!([{"key": "ok"}]);
        assert_eq!(
            code(Api::App, "template_card", bad_button),
            InvalidButtonText
        );
        let vote = json!({"card_type": "vote_interaction", "main_title": {"title": "t"},
                          "task_id": "t2", "submit_button": {"text": "Go"}});
        assert_eq!(code(Api::App, "template_card", vote), InvalidParameter);
    }
}
