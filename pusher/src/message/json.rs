//! Strict JSON for request bodies, read into a light tree that borrows from the body.
//!
//! Written by hand for two reasons:
//!
//! - **Duplicate keys are refused.** serde_json has no switch for it: its `Value` keeps the last
//!   duplicate silently, so `{"touser": "a", "touser": "b"}` would be read differently by the
//!   pusher and by a proxy or validator in front of it that keeps the first. The visitor below
//!   refuses the second occurrence, naming the key.
//! - **No allocation per string that needs none.** The accept route reads every message of a
//!   batch into a tree only to check it and copy a few strings out. A `serde_json::Value`
//!   allocates each key and each string and builds a B-tree per object; [`Json`] borrows
//!   strings without escapes from the body and keeps an object's members in a `Vec` in the
//!   body's order. Building and dropping the `Value` tree was about a sixth of the CPU of a
//!   batch accept (docs/performance.md, "Tenth round").
//!
//! [`Json::to_value`] gives the `Value` tree where one is needed (the `Idempotency-Key` digest,
//! the WeCom providers' checks). Nesting is bounded by serde_json's own recursion limit (128).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Number, Value};

/// Longest key quoted in an error.
const QUOTED_KEY: usize = 64;
/// Members of an object up to which a duplicate is looked for by a scan; above, a hash set.
const SCAN_MEMBERS: usize = 16;

/// One JSON value of a request body; strings borrow from the body unless they hold escapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON object's members in the body's order, each key once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Object<'a> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Takes the value of `key` out.
    pub fn remove(&mut self, key: &str) -> Option<Json<'a>> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    /// The keys, in the body's order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// The first key in sorted order that `known` refuses (what a `serde_json::Map`, whose
    /// keys are sorted, finds first).
    pub fn first_unknown(&self, known: impl Fn(&str) -> bool) -> Option<&str> {
        self.keys().filter(|k| !known(k)).min()
    }

    /// The members, sorted by key (the order of a `serde_json::Map`).
    pub fn sorted(&self) -> Vec<(&str, &Json<'a>)> {
        let mut out: Vec<(&str, &Json<'a>)> = self.0.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Json<'_> {
    /// The same value as a `serde_json::Value` (keys sorted, as its map keeps them).
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::Str(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(o) => Value::Object(
                o.0.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// Serialises as a `serde_json::Value` of the same content does: object keys sorted, so the
/// text is canonical.
impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => s.collect_seq(items),
            Json::Object(o) => o.serialize(s),
        }
    }
}

impl Serialize for Object<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let members = self.sorted();
        let mut map = s.serialize_map(Some(members.len()))?;
        for (k, v) in members {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'a> From<&'a Value> for Json<'a> {
    /// A view of a `Value` tree (tests and tools; the accept route parses with
    /// [`parse_strict`]).
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::Str(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(o) => Json::Object(Object(
                o.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::from(v)))
                    .collect(),
            )),
        }
    }
}

/// Parses `bytes` as one JSON value, refusing duplicate object keys.
pub fn parse_strict(bytes: &[u8]) -> Result<Json<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Strict.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut out: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        // The keys, once there are more than a scan should look through.
        let mut seen: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            let duplicate = match &mut seen {
                Some(set) => !set.insert(key.clone()),
                None => out.iter().any(|(k, _)| *k == key),
            };
            if duplicate {
                let shown: String = key.chars().take(QUOTED_KEY).collect();
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{shown}`{}",
                    if shown.len() < key.len() { "…" } else { "" }
                )));
            }
            let v = map.next_value_seed(Strict)?;
            out.push((key, v));
            if seen.is_none() && out.len() > SCAN_MEMBERS {
                seen = Some(out.iter().map(|(k, _)| k.clone()).collect());
            }
        }
        Ok(Json::Object(Object(out)))
    }
}

/// An object's key, borrowed when it holds no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_json_keys_are_refused() {
        let err = parse_strict(br#"{"touser": "a", "touser": "b"}"#).expect_err("dup");
        assert!(err.to_string().contains("duplicate key `touser`"), "{err}");
        let err =
            parse_strict(br#"{"data": {"k": {"value": 1, "value": 2}}}"#).expect_err("nested dup");
        assert!(err.to_string().contains("duplicate key `value`"), "{err}");
        let long = format!(r#"{{"{k}": 1, "{k}": 2}}"#, k = "k".repeat(10_000));
        let err = parse_strict(long.as_bytes()).expect_err("long dup");
        assert!(err.to_string().len() < 200, "{err}");
        // An escaped spelling of the same key is the same key.
        let err = parse_strict(br#"{"touser": "a", "tous\u0065r": "b"}"#).expect_err("escaped");
        assert!(err.to_string().contains("duplicate key `touser`"), "{err}");
    }

    #[test]
    fn a_duplicate_past_the_scanned_members_is_refused() {
        let mut members: Vec<String> = (0..40).map(|i| format!(r#""k{i}": {i}"#)).collect();
        let ok = format!("{{{}}}", members.join(","));
        let Json::Object(o) = parse_strict(ok.as_bytes()).expect("valid") else {
            panic!("an object");
        };
        assert_eq!(o.len(), 40);
        members.push(r#""k3": 0"#.to_string());
        let dup = format!("{{{}}}", members.join(","));
        let err = parse_strict(dup.as_bytes()).expect_err("dup");
        assert!(err.to_string().contains("duplicate key `k3`"), "{err}");
    }

    #[test]
    fn builds_the_same_value_as_serde_json() {
        let text = br#"{"a": [1, -2, 3.5, true, null, "x\n\u00e9"], "b": {"c": {}}, "d": 18446744073709551615, "\u0041": "e"}"#;
        let strict = parse_strict(text).expect("valid").to_value();
        let loose: Value = serde_json::from_slice(text).expect("valid");
        assert_eq!(strict, loose);
        assert_eq!(Json::from(&loose).to_value(), loose);
        assert_eq!(
            serde_json::to_string(&parse_strict(text).expect("valid")).expect("serialises"),
            serde_json::to_string(&loose).expect("serialises"),
            "the same canonical text"
        );
        assert!(parse_strict(b"{} trailing").is_err());
        assert!(parse_strict(b"").is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            parse_strict(deep.as_bytes()).is_err(),
            "recursion limit kept"
        );
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_body() {
        let text = br#"{"plain": "abc", "escaped": "a\"b"}"#;
        let Json::Object(o) = parse_strict(text).expect("valid") else {
            panic!("an object");
        };
        assert!(matches!(
            o.get("plain"),
            Some(Json::Str(Cow::Borrowed("abc")))
        ));
        assert!(matches!(o.get("escaped"), Some(Json::Str(Cow::Owned(s))) if s == "a\"b"));
        assert_eq!(o.first_unknown(|k| k == "plain"), Some("escaped"));
        assert_eq!(
            o.sorted().iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["escaped", "plain"]
        );
    }
}
