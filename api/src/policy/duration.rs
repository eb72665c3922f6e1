//! Human-readable durations (`"250ms"`, `"5s"`, `"1h30m"`) for config files and the CRD.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The accepted syntax: one or more `<integer><unit>` with units `ns`, `us`, `ms`, `s`, `m`, `h`.
///
/// It is the common subset of humantime (what the pusher parses) and Go's `time.ParseDuration`
/// (what Kubernetes' CEL `duration()` parses), so the CRD's cross-field rules can compare values.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ns|us|ms|s|m|h))+$";

/// A duration written as a human string, e.g. `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected e.g. \"250ms\", \"5s\", \"1h30m\" (units ns, us, ms, s, m, h)"
)]
pub struct DurationError {
    input: String,
}

impl HumanDuration {
    /// `secs` seconds.
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// `ms` milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// `m` minutes.
    pub const fn mins(m: u64) -> Self {
        Self(Duration::from_secs(m * 60))
    }

    /// `h` hours.
    pub const fn hours(h: u64) -> Self {
        Self(Duration::from_secs(h * 3600))
    }

    /// `us` microseconds.
    pub const fn micros(us: u64) -> Self {
        Self(Duration::from_micros(us))
    }

    /// The standard-library value.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError {
            input: s.to_string(),
        };
        // humantime alone would also take spaces, "days" and fractions; CEL's duration() would not.
        let valid = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric())
            && s.as_bytes()[0].is_ascii_digit()
            && !s.ends_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(err());
        }
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            let after = &rest[digits..];
            let unit_len = after
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(after.len());
            if !matches!(&after[..unit_len], "ns" | "us" | "ms" | "s" | "m" | "h") || digits == 0 {
                return Err(err());
            }
            rest = &after[unit_len..];
        }
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|_| err())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
            if h > 0 {
                write!(f, "{h}h")?;
            }
            if m > 0 {
                write!(f, "{m}m")?;
            }
            if s > 0 {
                write!(f, "{s}s")?;
            }
            Ok(())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else if d.subsec_nanos().is_multiple_of(1_000) {
            write!(f, "{}us", d.as_micros())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for (text, dur) in [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("9m", Duration::from_secs(540)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m30s", Duration::from_secs(90)),
        ] {
            let parsed: HumanDuration = text.parse().expect(text);
            assert_eq!(parsed.0, dur, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_cel_would_not_parse() {
        for bad in [
            "",
            "5",
            "s",
            "1 s",
            "1.5s",
            "2d",
            "5 seconds",
            "-1s",
            "1x",
            "ms5",
        ] {
            assert!(
                bad.parse::<HumanDuration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn pattern_matches_what_the_parser_accepts() {
        assert_eq!(DURATION_PATTERN, r"^([0-9]+(ns|us|ms|s|m|h))+$");
        assert!(serde_json::from_str::<HumanDuration>("\"10s\"").is_ok());
        let err = serde_json::from_str::<HumanDuration>("\"10\"").expect_err("no unit");
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
