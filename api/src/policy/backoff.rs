//! The one exponential backoff curve of the project: the pusher's retries, its store healing,
//! its event matching and the operator's requeues all use it, each with its own numbers.

use std::time::Duration;

use super::Retry;

/// An exponential curve with a cap and an optional share of jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The growth per failure (`2.0` doubles).
    pub multiplier: f64,
    /// The share of a delay that randomness may take off (0 = none, 1 = all of it).
    pub jitter: f64,
}

impl Backoff {
    /// A curve that doubles from `initial` up to `max`, without jitter.
    pub const fn doubling(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    /// The delay after `failures` failures (≥ 1; 0 is taken as 1). `unit` is a uniform random
    /// number in `[0, 1)` from the caller (ignored without jitter), so the curve stays a pure
    /// function.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * unit.clamp(0.0, 1.0));
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

impl From<&Retry> for Backoff {
    fn from(policy: &Retry) -> Self {
        Self {
            initial: policy.initial_backoff.get(),
            max: policy.max_backoff.get(),
            multiplier: policy.multiplier,
            jitter: policy.jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_caps_and_treats_zero_as_one() {
        let b = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));
        let table = [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (6, 3200),
            (7, 5000),
            (u32::MAX, 5000),
        ];
        for (n, ms) in table {
            assert_eq!(b.delay(n, 0.9), Duration::from_millis(ms), "failures {n}");
        }
    }
}
