//! Exponential backoff with jitter, as a pure function of the retry policy.

use std::time::Duration;

use crate::policy::Retry;

/// Delay before attempt `attempt + 1`, given that `attempt` attempts (≥ 1) have failed.
/// `unit` is a uniform random number in `[0, 1)` supplied by the caller, so the function stays
/// pure and testable.
pub fn delay(policy: &Retry, attempt: u32, unit: f64) -> Duration {
    let base = policy.initial_backoff.get().as_secs_f64()
        * policy.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
    let capped = base.min(policy.max_backoff.get().as_secs_f64());
    let jittered = capped * (1.0 - policy.jitter * unit.clamp(0.0, 1.0));
    Duration::from_secs_f64(jittered.max(0.0))
}
