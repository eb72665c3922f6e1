//! Rate-limited logging: one line per kind of error per interval, with the count of those
//! not logged since. A fault that repeats thousands of times a second (a full disk, a store
//! that cannot commit) then costs one log line per interval instead of filling the disk with
//! logs. The limiter decides; the caller logs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The default interval between two lines of one kind.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Remembers, per kind, when a line was last let through and how many were held back since.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LOG_EVERY)
    }
}

impl LogLimiter {
    /// A limiter letting one line per kind through every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line of `kind` may be logged at `now`: `Some(n)` with the `n` lines of that
    /// kind held back since the last one, or `None` (hold this one back and count it).
    pub fn check_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        match kinds.get_mut(kind) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }

    /// [`LogLimiter::check_at`] now.
    pub fn check(&self, kind: &'static str) -> Option<u64> {
        self.check_at(kind, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_a_count() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.check_at("commit", t), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.check_at("commit", t + Duration::from_millis(i)), None);
        }
        assert_eq!(l.check_at("lease", t), Some(0), "kinds are separate");
        assert_eq!(
            l.check_at("commit", t + Duration::from_secs(10)),
            Some(1000)
        );
        assert_eq!(l.check_at("commit", t + Duration::from_secs(11)), None);
    }
}
