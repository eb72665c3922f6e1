//! The wall clock of the times the operator writes into its Lease (`acquireTime`,
//! `renewTime`).
//!
//! In debug builds (the tests' builds) the environment variable `WXPUSH_CLOCK_OFFSET` (a
//! duration such as `30s`, optionally prefixed with `-`) moves this clock, so that an end-to-end
//! test can run two operators whose clocks disagree. Release builds ignore it, as the pusher's
//! clock does. Leader election never compares these times with a local clock (`leader.rs`).

use std::str::FromStr;
use std::sync::OnceLock;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use wxpush_api::policy::HumanDuration;

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

/// Parses `[-]DURATION` (`30s`, `-1m`).
fn parse_offset(text: &str) -> Option<SignedDuration> {
    let text = text.trim();
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let d = SignedDuration::try_from(HumanDuration::from_str(rest).ok()?.get()).ok()?;
    Some(if neg { -d } else { d })
}

/// Now, as the operator writes it.
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
        assert_eq!(parse_offset("30s"), Some(SignedDuration::from_secs(30)));
        assert_eq!(parse_offset("-1m"), Some(SignedDuration::from_secs(-60)));
        assert_eq!(parse_offset("soon"), None);
    }
}
