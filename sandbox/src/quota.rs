//! Lock-free call counters over calendar windows: WeChat's daily quotas reset at midnight
//! Beijing time (UTC+8), per-minute quotas at the start of each minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const BEIJING_OFFSET_SECS: u64 = 8 * 3600;

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The Beijing calendar day of a Unix time (changes at 16:00 UTC).
pub fn beijing_day(unix: u64) -> u64 {
    (unix + BEIJING_OFFSET_SECS) / 86_400
}

/// The minute of a Unix time.
pub fn minute(unix: u64) -> u64 {
    unix / 60
}

/// Counts calls within the current window and says whether a call fits the limit.
#[derive(Debug, Default)]
pub struct WindowCounter {
    window: AtomicU64,
    count: AtomicU64,
}

impl WindowCounter {
    /// Counts one call in `window`; true when it is within `limit` (`None` = unlimited).
    /// Refused calls count too, as WeChat counts every call against the quota.
    pub fn hit(&self, window: u64, limit: Option<u64>) -> bool {
        let seen = self.window.load(Ordering::Acquire);
        if seen != window
            && self
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.count.store(0, Ordering::Release);
        }
        let n = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        limit.is_none_or(|l| n <= l)
    }

    /// Calls counted in `window` so far.
    pub fn used(&self, window: u64) -> u64 {
        if self.window.load(Ordering::Acquire) == window {
            self.count.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Forgets every call.
    pub fn reset(&self) {
        self.window.store(0, Ordering::Release);
        self.count.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_window_and_resets_on_a_new_one() {
        let c = WindowCounter::default();
        assert!(c.hit(1, Some(2)));
        assert!(c.hit(1, Some(2)));
        assert!(!c.hit(1, Some(2)));
        assert_eq!(c.used(1), 3);
        assert!(c.hit(2, Some(2)));
        assert_eq!(c.used(2), 1);
        assert!(c.hit(2, None));
    }

    #[test]
    fn beijing_midnight_is_16h_utc() {
        // 2026-01-01T15:59:59Z and 16:00:00Z fall on different Beijing days.
        let before = 1_767_283_199;
        assert_ne!(beijing_day(before), beijing_day(before + 1));
        assert_eq!(beijing_day(before + 1), beijing_day(before + 86_400));
    }
}
