//! WeChat's rules for template data, as pure functions: the type a key's name gives it
//! (`thing2` is a `thing`), each type's length and character rules, and the check of a
//! message's `data` against one template. No I/O; the registry (`super::registry`) supplies the
//! templates and the API decides what to answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::TemplateNote;

/// Which list of the account a template belongs to (also the metrics' `list` label).
pub use crate::metrics::TemplateList as List;

impl List {
    /// The list a message of `kind` is checked against.
    pub fn of(kind: crate::send::MessageKind) -> Self {
        match kind {
            crate::send::MessageKind::Template => Self::Private,
            _ => Self::Subscribe,
        }
    }
}

/// One template of the account, as its list API gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// The template's id.
    pub id: String,
    /// Its keyword names in order (`thing1`, `time2`; `first`, `keyword1`, `remark` in old
    /// templates).
    pub keywords: Vec<String>,
    /// A one-time subscribe template (WeChat's type 2): each send needs the user's consent.
    #[serde(default)]
    pub one_time: bool,
    /// Approved values of `const` keys, where the list gave them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub const_values: BTreeMap<String, Vec<String>>,
}

/// A rule a message can break; also the `rule` label of `wxpush_template_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The `template_id` is not on the account's list.
    UnknownTemplate,
    /// A keyword of the template is not in `data`.
    MissingKeyword,
    /// A key of `data` is not a keyword of the template.
    UnknownKeyword,
    /// A value is empty.
    EmptyValue,
    /// A value is longer than its type allows.
    TooLong,
    /// A value holds characters its type does not allow.
    BadCharacters,
    /// A value does not have its type's format (time, date, amount, number).
    BadFormat,
    /// A `const` value is not one of the approved values.
    NotAllowedValue,
    /// A value holds a line break.
    LineBreak,
    /// A value holds another control character.
    ControlCharacter,
    /// A one-time subscribe template without a subscription credit for the user.
    NoSubscriptionCredit,
}

impl Rule {
    /// Every rule, in the order above.
    pub const ALL: [Self; 11] = [
        Self::UnknownTemplate,
        Self::MissingKeyword,
        Self::UnknownKeyword,
        Self::EmptyValue,
        Self::TooLong,
        Self::BadCharacters,
        Self::BadFormat,
        Self::NotAllowedValue,
        Self::LineBreak,
        Self::ControlCharacter,
        Self::NoSubscriptionCredit,
    ];

    /// The metric label.
    pub fn label(self) -> crate::metrics::TemplateRuleLabel {
        use crate::metrics::TemplateRuleLabel as L;
        match self {
            Self::UnknownTemplate => L::unknown_template,
            Self::MissingKeyword => L::missing_keyword,
            Self::UnknownKeyword => L::unknown_keyword,
            Self::EmptyValue => L::empty_value,
            Self::TooLong => L::too_long,
            Self::BadCharacters => L::bad_characters,
            Self::BadFormat => L::bad_format,
            Self::NotAllowedValue => L::not_allowed_value,
            Self::LineBreak => L::line_break,
            Self::ControlCharacter => L::control_character,
            Self::NoSubscriptionCredit => L::no_subscription_credit,
        }
    }

    /// The snake_case name (error answers, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownTemplate => "unknown_template",
            Self::MissingKeyword => "missing_keyword",
            Self::UnknownKeyword => "unknown_keyword",
            Self::EmptyValue => "empty_value",
            Self::TooLong => "too_long",
            Self::BadCharacters => "bad_characters",
            Self::BadFormat => "bad_format",
            Self::NotAllowedValue => "not_allowed_value",
            Self::LineBreak => "line_break",
            Self::ControlCharacter => "control_character",
            Self::NoSubscriptionCredit => "no_subscription_credit",
        }
    }
}

/// A broken rule, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `template_id`, or `data.<key>`.
    pub field: String,
    /// Which rule.
    pub rule: Rule,
    /// What is wrong, for people.
    pub message: String,
}

/// A key's type, from its name: the leading letters and underscores (`character_string2` →
/// `character_string`).
pub fn key_type(key: &str) -> &str {
    let end = key.find(|c: char| c.is_ascii_digit()).unwrap_or(key.len());
    &key[..end]
}

/// The longest value of an old-style key (`keyword1`) and of a key of unknown type in a
/// template message: 20 characters since May 2023.
pub const TEMPLATE_VALUE_MAX: usize = 20;

/// Keys WeChat ignores in template messages since May 2023.
pub fn ignored_key(key: &str) -> bool {
    matches!(key, "first" | "remark")
}

fn is_han(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{f900}'..='\u{faff}' | '\u{20000}'..='\u{2ebef}')
}

fn is_date_time_char(c: char) -> bool {
    c.is_ascii_digit() || " :-/.~年月日时分秒".contains(c)
}

/// The length limit of a type (characters), and whether `value` (free of control
/// characters) has the type's characters and format.
fn type_rule(kind: &str, list: List, value: &str) -> (usize, Result<(), (Rule, &'static str)>) {
    let all = |f: fn(char) -> bool| value.chars().all(f);
    let chars = |ok: bool, what: &'static str| {
        if ok {
            Ok(())
        } else {
            Err((Rule::BadCharacters, what))
        }
    };
    let format = |ok: bool, what: &'static str| {
        if ok {
            Ok(())
        } else {
            Err((Rule::BadFormat, what))
        }
    };
    match kind {
        "thing" => (20, Ok(())),
        "character_string" => (
            32,
            chars(
                all(|c| c.is_ascii_graphic()),
                "character_string takes letters, digits and symbols only",
            ),
        ),
        "phone_number" => (
            17,
            chars(
                all(|c| c.is_ascii_digit() || "+-() ".contains(c)),
                "phone_number takes digits, +, -, ( ) and spaces only",
            ),
        ),
        "car_number" => (8, Ok(())),
        "const" => (20, Ok(())),
        "phrase" => (
            5,
            chars(all(is_han), "phrase takes Chinese characters only"),
        ),
        "number" => (
            32,
            format(
                all(|c| c.is_ascii_digit() || c == '.')
                    && value.matches('.').count() <= 1
                    && value.chars().any(|c| c.is_ascii_digit()),
                "number takes digits with at most one decimal point",
            ),
        ),
        "letter" => (
            32,
            chars(
                all(|c| c.is_ascii_alphabetic()),
                "letter takes letters only",
            ),
        ),
        "symbol" => (
            5,
            chars(
                all(|c| c.is_ascii_punctuation()),
                "symbol takes symbols only",
            ),
        ),
        "name" => (if value.is_ascii() { 20 } else { 10 }, Ok(())),
        "time" | "date" => (
            64,
            format(
                all(is_date_time_char) && value.chars().any(|c| c.is_ascii_digit()),
                "time and date take a date or time such as 2026-12-07 10:00 or 2026年12月7日",
            ),
        ),
        "amount" => (
            16,
            format(
                amount_ok(value),
                "amount takes one currency sign and up to 10 digits, such as ¥12.50 or 12.50元",
            ),
        ),
        _ if list == List::Private => (TEMPLATE_VALUE_MAX, Ok(())),
        // A subscribe key of a type not known here: only the control characters are checked.
        _ => (usize::MAX, Ok(())),
    }
}

/// One optional currency sign, up to 10 digits with an optional decimal part, an optional
/// trailing 元.
fn amount_ok(value: &str) -> bool {
    let v = value.strip_suffix('元').unwrap_or(value);
    let v = v.strip_prefix(['¥', '￥', '$', '€', '£']).unwrap_or(v);
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    !whole.is_empty()
        && whole.len() <= 10
        && whole.chars().all(|c| c.is_ascii_digit())
        && frac.chars().all(|c| c.is_ascii_digit())
}

/// How to treat a value that is only too long or holds line breaks or control characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Refuse it.
    Refuse,
    /// Cut and clean it, and say so in a note.
    Truncate,
}

/// What a message passed with: its data, when a value was cut, and the notes for its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    /// The data with cut values, when any was cut.
    pub data: Option<Map<String, Value>>,
    /// Warnings and what was cut.
    pub notes: Vec<TemplateNote>,
}

fn note(field: String, rule: &str, action: &str, message: String) -> TemplateNote {
    TemplateNote {
        field,
        rule: rule.to_string(),
        action: action.to_string(),
        message,
    }
}

/// Checks `data` against `template` (on `list`): every keyword present and non-empty, no other
/// key, each value within its type's rules. `first`, `remark` and `color` in template messages
/// pass with a warning (WeChat ignores them).
pub fn check(
    template: &Template,
    list: List,
    data: &Map<String, Value>,
    fix: Fix,
) -> Result<Checked, Violation> {
    let mut out = Checked::default();
    // The data with cut values: copied only when a value is cut (most messages pass as sent).
    let mut fixed: Option<Map<String, Value>> = None;
    for key in data.keys() {
        let field = format!("data.{key}");
        if list == List::Private && ignored_key(key) {
            out.notes.push(note(
                field,
                "ignored_field",
                "warning",
                format!("WeChat no longer shows `{key}` in template messages (since May 2023)"),
            ));
            continue;
        }
        if !template.keywords.iter().any(|k| k == key) {
            return Err(Violation {
                field,
                rule: Rule::UnknownKeyword,
                message: format!(
                    "`{key}` is not a keyword of template {}; its keywords: {}",
                    template.id,
                    template.keywords.join(", ")
                ),
            });
        }
        if data[key].get("color").is_some() && list == List::Private {
            out.notes.push(note(
                format!("{field}.color"),
                "ignored_field",
                "warning",
                "WeChat no longer shows colours in template messages (since May 2023)".into(),
            ));
        }
    }
    for key in &template.keywords {
        if list == List::Private && ignored_key(key) {
            continue;
        }
        let field = format!("data.{key}");
        let Some(value) = data
            .get(key)
            .and_then(|item| item.get("value"))
            .and_then(Value::as_str)
        else {
            return Err(Violation {
                field,
                rule: Rule::MissingKeyword,
                message: format!("template {} needs `{key}`", template.id),
            });
        };
        if let Some(cut) = check_value(template, list, key, value, fix, &field, &mut out.notes)? {
            let fixed = fixed.get_or_insert_with(|| data.clone());
            if let Some(Value::Object(item)) = fixed.get_mut(key) {
                item.insert("value".into(), Value::String(cut));
            }
        }
    }
    out.data = fixed;
    Ok(out)
}

/// Checks one value; `Ok(Some(v))` when it was cut or cleaned to `v`.
fn check_value(
    template: &Template,
    list: List,
    key: &str,
    value: &str,
    fix: Fix,
    field: &str,
    notes: &mut Vec<TemplateNote>,
) -> Result<Option<String>, Violation> {
    let refuse = |rule: Rule, message: String| Violation {
        field: field.to_string(),
        rule,
        message,
    };
    let mut v = value.to_string();
    let mut changed = false;
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        let rule = if matches!(c, '\n' | '\r') {
            Rule::LineBreak
        } else {
            Rule::ControlCharacter
        };
        if fix == Fix::Refuse {
            return Err(refuse(
                rule,
                format!(
                    "`{key}` must be one line without control characters (found U+{:04X})",
                    c as u32
                ),
            ));
        }
        v = v
            .chars()
            .map(|c| {
                if matches!(c, '\n' | '\r' | '\t') {
                    ' '
                } else {
                    c
                }
            })
            .filter(|c| !c.is_control())
            .collect();
        notes.push(note(
            field.to_string(),
            rule.as_str(),
            "cleaned",
            "line breaks and control characters replaced or removed".into(),
        ));
        changed = true;
    }
    if v.trim().is_empty() {
        return Err(refuse(
            Rule::EmptyValue,
            format!("`{key}` must not be empty"),
        ));
    }
    let kind = key_type(key);
    let (max, rule) = type_rule(kind, list, &v);
    if let Err((rule, what)) = rule {
        return Err(refuse(rule, what.to_string()));
    }
    let len = v.chars().count();
    if len > max {
        let label = if matches!(
            kind,
            "thing"
                | "character_string"
                | "phone_number"
                | "car_number"
                | "const"
                | "phrase"
                | "number"
                | "letter"
                | "symbol"
                | "name"
                | "time"
                | "date"
                | "amount"
        ) {
            kind
        } else {
            "a template message value"
        };
        if fix == Fix::Refuse {
            return Err(refuse(
                Rule::TooLong,
                format!("{label} takes at most {max} characters; this value has {len}"),
            ));
        }
        v = v.chars().take(max).collect();
        notes.push(note(
            field.to_string(),
            Rule::TooLong.as_str(),
            "cut",
            format!("cut from {len} to {max} characters ({label})"),
        ));
        changed = true;
    }
    if kind == "const"
        && let Some(allowed) = template.const_values.get(key)
        && !allowed.contains(&v)
    {
        return Err(refuse(
            Rule::NotAllowedValue,
            format!("`{key}` takes one of: {}", allowed.join(", ")),
        ));
    }
    Ok(changed.then_some(v))
}

/// The keyword names in a template's `content` (`{{thing1.DATA}}` → `thing1`), in order,
/// each once.
pub fn keywords_of(content: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("{{") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find("}}") else { break };
        let inner = rest[..end].trim();
        if let Some(name) = inner.strip_suffix(".DATA")
            && !name.is_empty()
            && !out.iter().any(|k| k == name)
        {
            out.push(name.to_string());
        }
        rest = &rest[end + 2..];
    }
    out
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
