//! The wall clock of the dispatcher's decisions (`maxAge`, the de-duplication window).
//!
//! In debug builds (the tests' builds) the environment variable `WXPUSH_CLOCK_OFFSET` (a
//! humantime duration such as `11m`, optionally prefixed with `-`) moves this clock, so that an
//! end-to-end test can restart a pusher "later" without waiting. Release builds ignore it.

use std::sync::OnceLock;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// WeChat's `client_msg_id` de-duplication window: within it, a re-send with the same
/// `client_msg_id` is not delivered twice.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

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

/// Parses `[-]DURATION` (humantime).
fn parse_offset(text: &str) -> Option<SignedDuration> {
    let text = text.trim();
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let d = SignedDuration::try_from(humantime::parse_duration(rest).ok()?).ok()?;
    Some(if neg { -d } else { d })
}

/// Now, as the dispatcher sees it.
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
        assert_eq!(parse_offset("-5s"), Some(SignedDuration::from_secs(-5)));
        assert_eq!(parse_offset("soon"), None);
    }
}
