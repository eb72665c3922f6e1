//! Strict JSON for request bodies: a [`Value`] like `serde_json::from_slice` builds, except that
//! an object with the same key twice is an error naming the key.
//!
//! Written by hand because serde_json has no switch for it: its `Value` map keeps the last
//! duplicate silently, so `{"touser": "a", "touser": "b"}` would be read differently by the
//! pusher and by a proxy or validator in front of it that keeps the first. The visitor below
//! builds the same `Value` and refuses the second occurrence. Nesting is bounded by
//! serde_json's own recursion limit (128), as before.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest key quoted in an error.
const QUOTED_KEY: usize = 64;

/// Parses `bytes` as one JSON value, refusing duplicate object keys.
pub fn from_slice_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(QUOTED_KEY).collect();
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{shown}`{}",
                    if shown.len() < key.len() { "…" } else { "" }
                )));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_json_keys_are_refused() {
        let err = from_slice_strict(br#"{"touser": "a", "touser": "b"}"#).expect_err("dup");
        assert!(err.to_string().contains("duplicate key `touser`"), "{err}");
        let err = from_slice_strict(br#"{"data": {"k": {"value": 1, "value": 2}}}"#)
            .expect_err("nested dup");
        assert!(err.to_string().contains("duplicate key `value`"), "{err}");
        let long = format!(r#"{{"{k}": 1, "{k}": 2}}"#, k = "k".repeat(10_000));
        let err = from_slice_strict(long.as_bytes()).expect_err("long dup");
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn builds_the_same_value_as_serde_json() {
        let text =
            br#"{"a": [1, -2, 3.5, true, null, "x"], "b": {"c": {}}, "d": 18446744073709551615}"#;
        let strict = from_slice_strict(text).expect("valid");
        let loose: Value = serde_json::from_slice(text).expect("valid");
        assert_eq!(strict, loose);
        assert!(from_slice_strict(b"{} trailing").is_err());
        assert!(from_slice_strict(b"").is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            from_slice_strict(deep.as_bytes()).is_err(),
            "recursion limit kept"
        );
    }
}
