//! The account's templates, when the sandbox is given a catalogue (`--template-file`): the two
//! template-list APIs answer from it, sends are checked against it (unknown id → 40037, a
//! missing or empty keyword or a value that breaks its key type's rule → 47003), and one-time
//! subscribe templates need a user's consent per send (43101 without one).
//!
//! Without a catalogue the sandbox stays permissive: the list APIs answer empty lists and sends
//! are checked only as [`super::messages`] describes.

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::validate::{key_type, subscribe_value_ok};
use wxcrypto::errcode::WxCode;

/// Which list a template is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// An Official Account template message (`get_all_private_template`).
    #[default]
    Template,
    /// A subscribe message or subscription notice (`newtmpl/gettemplate`).
    Subscribe,
}

/// One template of the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDef {
    /// Its id.
    pub template_id: String,
    /// Which list it is on. Default `template`.
    #[serde(default)]
    pub kind: TemplateKind,
    /// Its title.
    #[serde(default)]
    pub title: String,
    /// Its keyword names, in order (`thing1`, `time2`, or `keyword1` in old templates).
    pub keywords: Vec<String>,
    /// A one-time subscription (WeChat's type 2): each send needs a consent. Default false (a
    /// long-term subscription, type 3). Subscribe templates only.
    #[serde(default)]
    pub one_time: bool,
    /// The approved values of `const` keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub const_values: BTreeMap<String, Vec<String>>,
}

/// Reads a catalogue: a JSON array of [`TemplateDef`].
pub fn parse_catalogue(text: &str) -> Result<Vec<TemplateDef>, serde_json::Error> {
    serde_json::from_str(text)
}

impl TemplateDef {
    /// The template's `content`, as WeChat's lists show it: one `{{key.DATA}}` per line.
    pub fn content(&self) -> String {
        self.keywords
            .iter()
            .map(|k| format!("{k}:{{{{{k}.DATA}}}}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The longest value of an untyped key (`keyword1`) of a template message: WeChat cuts longer
/// ones since May 2023.
pub const TEMPLATE_VALUE_MAX: usize = 20;

/// Keys WeChat ignores in template messages since May 2023.
fn ignored(key: &str) -> bool {
    matches!(key, "first" | "remark")
}

/// Whether `key` names a type with a rule (`thing3`), rather than an old `keyword3`.
fn typed(key: &str) -> bool {
    matches!(
        key_type(key),
        "thing"
            | "number"
            | "letter"
            | "symbol"
            | "character_string"
            | "time"
            | "date"
            | "amount"
            | "phone_number"
            | "car_number"
            | "name"
            | "phrase"
            | "const"
    )
}

/// Checks `data` (key → value) against `def` (47003 when it breaks a rule); `Ok` holds the values as delivered (untyped
/// template values cut to [`TEMPLATE_VALUE_MAX`] with line breaks removed, `first` and `remark`
/// dropped).
pub fn check(
    def: &TemplateDef,
    data: &HashMap<&str, &str>,
) -> Result<BTreeMap<String, String>, WxCode> {
    let mut out = BTreeMap::new();
    for key in &def.keywords {
        if def.kind == TemplateKind::Template && ignored(key) {
            continue;
        }
        let value = data.get(key.as_str()).copied().unwrap_or_default();
        if value.trim().is_empty() {
            return Err(WxCode::ArgumentInvalid);
        }
        if typed(key) {
            if value.chars().any(char::is_control) || !subscribe_value_ok(key_type(key), value) {
                return Err(WxCode::ArgumentInvalid);
            }
            if key_type(key) == "const"
                && let Some(allowed) = def.const_values.get(key)
                && !allowed.iter().any(|a| a == value)
            {
                return Err(WxCode::ArgumentInvalid);
            }
            out.insert(key.clone(), value.to_string());
        } else if def.kind == TemplateKind::Subscribe {
            if value.chars().any(char::is_control) {
                return Err(WxCode::ArgumentInvalid);
            }
            out.insert(key.clone(), value.to_string());
        } else {
            let cleaned: String = value
                .chars()
                .filter(|c| !c.is_control())
                .take(TEMPLATE_VALUE_MAX)
                .collect();
            out.insert(key.clone(), cleaned);
        }
    }
    Ok(out)
}

/// A delivered message as the sandbox recorded it (`GET /__deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `template`, `subscribe` or `bizsend`.
    pub api: String,
    /// The recipient.
    pub touser: String,
    /// The template.
    pub template_id: String,
    /// The values as delivered.
    pub data: BTreeMap<String, String>,
}

/// How many deliveries `GET /__deliveries` keeps (the newest).
pub const KEPT_DELIVERIES: usize = 1000;

/// The catalogue and what goes with it: consents to one-time templates and the recent
/// deliveries.
#[derive(Debug, Default)]
pub struct Templates {
    defs: Option<HashMap<String, TemplateDef>>,
    consents: Mutex<HashMap<(String, String), u64>>,
    deliveries: Mutex<VecDeque<Delivery>>,
}

impl Templates {
    /// The catalogue, if one is configured.
    pub fn new(defs: Option<&[TemplateDef]>) -> Self {
        Self {
            defs: defs.map(|d| {
                d.iter()
                    .map(|t| (t.template_id.clone(), t.clone()))
                    .collect()
            }),
            ..Self::default()
        }
    }

    /// Whether a catalogue is configured.
    pub fn configured(&self) -> bool {
        self.defs.is_some()
    }

    /// The templates on one list, sorted by id.
    pub fn list(&self, kind: TemplateKind) -> Vec<&TemplateDef> {
        let mut v: Vec<&TemplateDef> = self
            .defs
            .iter()
            .flat_map(HashMap::values)
            .filter(|t| t.kind == kind)
            .collect();
        v.sort_by(|a, b| a.template_id.cmp(&b.template_id));
        v
    }

    /// The template `id` on list `kind`: `None` = no catalogue, `Some(None)` = not on it.
    pub fn get(&self, kind: TemplateKind, id: &str) -> Option<Option<&TemplateDef>> {
        self.defs
            .as_ref()
            .map(|d| d.get(id).filter(|t| t.kind == kind))
    }

    /// Adds `count` consents of `openid` to `template_id`; returns the new balance.
    pub fn add_consent(&self, openid: &str, template_id: &str, count: u64) -> u64 {
        let mut c = self.consents.lock();
        let n = c
            .entry((openid.to_string(), template_id.to_string()))
            .or_default();
        *n = n.saturating_add(count);
        *n
    }

    /// Consents of `openid` to `template_id` left.
    pub fn consents(&self, openid: &str, template_id: &str) -> u64 {
        self.consents
            .lock()
            .get(&(openid.to_string(), template_id.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Spends one consent; false when there is none.
    pub fn spend_consent(&self, openid: &str, template_id: &str) -> bool {
        let mut c = self.consents.lock();
        match c.get_mut(&(openid.to_string(), template_id.to_string())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Records a delivery (only with a catalogue), keeping the newest [`KEPT_DELIVERIES`].
    pub fn record(&self, delivery: Delivery) {
        let mut d = self.deliveries.lock();
        if d.len() >= KEPT_DELIVERIES {
            d.pop_front();
        }
        d.push_back(delivery);
    }

    /// The recorded deliveries, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().iter().cloned().collect()
    }

    /// Forgets consents and deliveries.
    pub fn reset(&self) {
        self.consents.lock().clear();
        self.deliveries.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: TemplateKind, keys: &[&str]) -> TemplateDef {
        TemplateDef {
            template_id: "T".into(),
            kind,
            title: String::new(),
            keywords: keys.iter().map(|k| k.to_string()).collect(),
            one_time: false,
            const_values: [("const3".to_string(), vec!["已发货".to_string()])].into(),
        }
    }

    #[test]
    fn keywords_and_values() {
        let t = def(TemplateKind::Template, &["first", "thing1", "keyword2"]);
        let ok: HashMap<&str, &str> = [("thing1", "书"), ("keyword2", "a\nb")].into();
        let out = check(&t, &ok).expect("valid");
        assert_eq!(out["keyword2"], "ab");
        assert!(!out.contains_key("first"));
        let long = "一".repeat(25);
        let cut: HashMap<&str, &str> = [("thing1", "书"), ("keyword2", long.as_str())].into();
        assert_eq!(
            check(&t, &cut).expect("cut")["keyword2"].chars().count(),
            20
        );
        let missing: HashMap<&str, &str> = [("thing1", "书")].into();
        assert!(check(&t, &missing).is_err());
        let newline: HashMap<&str, &str> = [("thing1", "a\nb"), ("keyword2", "x")].into();
        assert!(check(&t, &newline).is_err());
        let c = def(TemplateKind::Subscribe, &["const3"]);
        assert!(check(&c, &[("const3", "已发货")].into()).is_ok());
        assert!(check(&c, &[("const3", "别的")].into()).is_err());
        let s = def(TemplateKind::Subscribe, &["character_string1"]);
        assert!(check(&s, &[("character_string1", "订单")].into()).is_err());
    }

    #[test]
    fn content_lists_every_keyword() {
        let t = def(TemplateKind::Template, &["thing1", "time2"]);
        assert_eq!(t.content(), "thing1:{{thing1.DATA}}\ntime2:{{time2.DATA}}");
    }

    #[test]
    fn consents_are_spent_one_by_one() {
        let t = Templates::new(None);
        assert!(!t.spend_consent("u", "T"));
        assert_eq!(t.add_consent("u", "T", 2), 2);
        assert!(t.spend_consent("u", "T") && t.spend_consent("u", "T"));
        assert!(!t.spend_consent("u", "T"));
    }
}
