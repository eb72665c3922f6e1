//! Freshness and replay checks of `/wechat/events` requests (pure: the caller passes the time).
//!
//! In plain mode WeChat's `signature` covers only `(token, timestamp, nonce)`, not the body, so
//! a captured `(timestamp, nonce, signature)` signs any body. Two rules close that:
//!
//! - **freshness**: a `timestamp` further than `events.maxClockSkew` from the pusher's clock is
//!   refused;
//! - **once only**: each `(timestamp, nonce)` is accepted once while it is fresh. An entry can
//!   be forgotten once its timestamp has left the window, because the freshness rule refuses it
//!   from then on; so the set never holds more than one window's requests, and it is capped at
//!   [`MAX_ENTRIES`] besides (beyond it requests get 503 and WeChat retries).
//!
//! A request whose processing fails (the store could not record it, 503) gives its entry back,
//! so that WeChat's retry of the same request is not taken for a replay.
//!
//! Safe mode (`encrypt_type=aes`) is the real protection: its `msg_signature` covers the
//! ciphertext too, so a body cannot be swapped at all. These rules still stop replays there.

use crate::metrics::EventResult;
use std::collections::BTreeSet;

/// Most `(timestamp, nonce)` pairs remembered at once.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest nonce accepted (WeChat's are short digit strings).
pub const MAX_NONCE: usize = 64;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The timestamp is missing, malformed or outside the window.
    Stale,
    /// The `(timestamp, nonce)` was accepted before.
    Replayed,
    /// The set is full of fresh entries (a flood): try again later.
    Full,
}

impl Refusal {
    /// The `result` label of `wxpush_events_total`.
    pub fn metric_label(self) -> EventResult {
        match self {
            Self::Stale => EventResult::Stale,
            Self::Replayed => EventResult::Replayed,
            Self::Full => EventResult::ReplayCacheFull,
        }
    }
}

/// The `(timestamp, nonce)` pairs seen within the window.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    skew_secs: i64,
    seen: BTreeSet<(i64, String)>,
}

/// A reserved pair, to give back with [`ReplayGuard::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved(i64, String);

impl ReplayGuard {
    /// A guard accepting timestamps within `skew_secs` of the clock.
    pub fn new(skew_secs: u64) -> Self {
        Self {
            skew_secs: i64::try_from(skew_secs).unwrap_or(i64::MAX),
            seen: BTreeSet::new(),
        }
    }

    /// Whether `timestamp` (Unix seconds, as sent) is within the window around `now`.
    pub fn fresh(&self, timestamp: &str, now: i64) -> Result<i64, Refusal> {
        let ts = timestamp
            .trim()
            .parse::<i64>()
            .map_err(|_| Refusal::Stale)?;
        if ts.abs_diff(now) > self.skew_secs.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        Ok(ts)
    }

    /// Checks freshness and novelty, and remembers the pair.
    pub fn check(&mut self, timestamp: &str, nonce: &str, now: i64) -> Result<Reserved, Refusal> {
        let ts = self.fresh(timestamp, now)?;
        if nonce.len() > MAX_NONCE {
            return Err(Refusal::Stale);
        }
        // Forget what the freshness rule refuses anyway.
        let horizon = now.saturating_sub(self.skew_secs);
        while let Some(first) = self.seen.first() {
            if first.0 >= horizon {
                break;
            }
            self.seen.pop_first();
        }
        let key = (ts, nonce.to_string());
        if self.seen.contains(&key) {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= MAX_ENTRIES {
            return Err(Refusal::Full);
        }
        self.seen.insert(key.clone());
        Ok(Reserved(key.0, key.1))
    }

    /// Forgets a pair whose request could not be processed (WeChat will retry it).
    pub fn release(&mut self, r: Reserved) {
        self.seen.remove(&(r.0, r.1));
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_867_200;

    #[test]
    fn stale_timestamps_are_refused() {
        let mut g = ReplayGuard::new(300);
        // The finding: a timestamp from 2001.
        assert_eq!(g.check("978307200", "1", NOW), Err(Refusal::Stale));
        assert_eq!(
            g.check(&(NOW - 301).to_string(), "1", NOW),
            Err(Refusal::Stale)
        );
        assert_eq!(
            g.check(&(NOW + 301).to_string(), "1", NOW),
            Err(Refusal::Stale)
        );
        assert_eq!(g.check("", "1", NOW), Err(Refusal::Stale));
        assert_eq!(g.check("12x", "1", NOW), Err(Refusal::Stale));
        assert!(g.check(&(NOW - 300).to_string(), "1", NOW).is_ok());
        assert!(g.check(&(NOW + 300).to_string(), "1", NOW).is_ok());
    }

    #[test]
    fn a_pair_is_accepted_once_and_released_on_failure() {
        let mut g = ReplayGuard::new(300);
        let ts = NOW.to_string();
        let r = g.check(&ts, "42", NOW).expect("first");
        assert_eq!(g.check(&ts, "42", NOW), Err(Refusal::Replayed));
        assert!(g.check(&ts, "43", NOW).is_ok(), "another nonce");
        g.release(r);
        assert!(
            g.check(&ts, "42", NOW).is_ok(),
            "given back after a failure"
        );
        assert_eq!(g.check(&ts, &"9".repeat(65), NOW), Err(Refusal::Stale));
    }

    #[test]
    fn entries_leave_with_the_window() {
        let mut g = ReplayGuard::new(300);
        for i in 0..1000 {
            g.check(&NOW.to_string(), &i.to_string(), NOW)
                .expect("fresh");
        }
        assert_eq!(g.len(), 1000);
        let later = NOW + 301;
        g.check(&later.to_string(), "x", later).expect("fresh");
        assert_eq!(g.len(), 1, "the old window was forgotten");
    }
}
