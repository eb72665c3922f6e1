//! The wall clock that the pusher's dispatcher decides by (`maxAge`, WeChat's de-duplication
//! window) and that the operator writes into its Lease (`acquireTime`, `renewTime`).
//!
//! In debug builds (the tests' builds) the environment variable `WXPUSH_CLOCK_OFFSET` (a
//! duration such as `11m` or `30s`, optionally prefixed with `-`) moves this clock, so that an
//! end-to-end test can restart a pusher "later" without waiting, or run two operators whose
//! clocks disagree. Release builds ignore it.

use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp};

fn offset() -> SignedDuration {
    static OFFSET: OnceLock<SignedDuration> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return SignedDuration::ZERO;
        }
        std::env::var("WXPUSH_CLOCK_OFFSET")
            .ok()
            .and_then(|v| parse_offset(&v))
            .unwrap_or(SignedDuration::ZERO)
    })
}

/// Parses `[-]DURATION` (`11m`, `-5s`).
fn parse_offset(text: &str) -> Option<SignedDuration> {
    let text = text.trim();
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let d =
        SignedDuration::try_from(rest.parse::<crate::policy::HumanDuration>().ok()?.get()).ok()?;
    Some(if neg { -d } else { d })
}

/// Now, moved by `WXPUSH_CLOCK_OFFSET` in debug builds.
pub fn now() -> Timestamp {
    let off = offset();
    if off.is_zero() {
        return Timestamp::now();
    }
    Timestamp::now()
        .checked_add(off)
        .unwrap_or_else(|_| Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("11m"), Some(SignedDuration::from_secs(660)));
        assert_eq!(parse_offset("30s"), Some(SignedDuration::from_secs(30)));
        assert_eq!(parse_offset("-5s"), Some(SignedDuration::from_secs(-5)));
        assert_eq!(parse_offset("soon"), None);
    }
}
