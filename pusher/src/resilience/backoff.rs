//! The retry policy's backoff: the project's one curve (`policy::Backoff`), with the policy's
//! numbers.

use std::time::Duration;

pub use crate::policy::Backoff;
use crate::policy::Retry;

/// Delay before attempt `attempt + 1`, given that `attempt` attempts (≥ 1) have failed.
/// `unit` is a uniform random number in `[0, 1)` supplied by the caller, so the function stays
/// pure and testable.
pub fn delay(policy: &Retry, attempt: u32, unit: f64) -> Duration {
    Backoff::from(policy).delay(attempt, unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HumanDuration;

    fn policy(jitter: f64) -> Retry {
        Retry {
            initial_backoff: HumanDuration::millis(200),
            max_backoff: HumanDuration::secs(30),
            multiplier: 2.0,
            jitter,
            ..Retry::default()
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let p = policy(0.0);
        let table = [
            (0, 200), // attempt 0 is treated as the first failure
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1600),
            (8, 25_600),
            (9, 30_000), // 51.2 s capped at maxBackoff
            (64, 30_000),
            (u32::MAX, 30_000),
        ];
        for (attempt, ms) in table {
            assert_eq!(
                delay(&p, attempt, 0.7),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn jitter_takes_a_share_of_the_delay() {
        let p = policy(0.5);
        let table = [
            (0.0, 800),   // no randomness drawn: the full delay
            (0.5, 600),   // a quarter off
            (0.999, 400), // at most half off
            (7.0, 400),   // out-of-range units are clamped
            (-1.0, 800),
        ];
        for (unit, ms) in table {
            let d = delay(&p, 3, unit);
            let want = Duration::from_millis(ms);
            assert!(
                d.abs_diff(want) <= Duration::from_millis(1),
                "unit {unit}: {d:?} vs {want:?}"
            );
        }
        let full = policy(1.0);
        assert!(delay(&full, 3, 0.999_999) < Duration::from_millis(1));
    }

    #[test]
    fn multiplier_one_is_constant() {
        let p = Retry {
            multiplier: 1.0,
            ..policy(0.0)
        };
        for attempt in 1..10 {
            assert_eq!(delay(&p, attempt, 0.3), Duration::from_millis(200));
        }
    }
}
