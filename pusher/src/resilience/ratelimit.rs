//! Rate limiting towards WeChat: a token bucket (`rateLimit.perSecond` / `burst`, from the
//! `governor` crate) and the local daily quota counter (`rateLimit.dailyQuota`), which resets
//! at midnight Beijing time (UTC+8) as WeChat's own quota does.
//!
//! When the pods of a channel share their rate (`wechat::limits`, through `coord`), the bucket
//! becomes GCRA ([`Gcra`], decided here, run in a Redis script or in memory) and the daily quota
//! is one counter per Beijing day; a 45009 seen by one pod holds all of them until midnight.
//!
//! Calendar arithmetic is pure ([`beijing_day`], [`next_beijing_midnight`]) so it can be
//! table-tested without waiting for midnight.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota};
use parking_lot::Mutex;

use crate::policy::RateLimit;
use crate::send::RateCeiling;

pub use crate::calendar::{beijing_day, next_beijing_midnight};

/// The local daily quota: sends counted per Beijing day. Pure state; the caller passes the
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyCounter {
    quota: u64,
    day: u64,
    used: u64,
    /// WeChat itself said the quota is spent (45009) on this day, whatever we counted.
    exhausted_day: Option<u64>,
}

impl DailyCounter {
    /// A counter allowing `quota` sends a day; `0` means no local limit (a 45009 from WeChat
    /// still parks the channel until midnight).
    pub fn new(quota: u64) -> Self {
        Self {
            quota,
            day: 0,
            used: 0,
            exhausted_day: None,
        }
    }

    fn roll(&mut self, now: SystemTime) -> u64 {
        let day = beijing_day(now);
        if day != self.day {
            self.day = day;
            self.used = 0;
        }
        day
    }

    /// Reserves one send. `Err(midnight)` when today's quota is spent.
    pub fn try_take(&mut self, now: SystemTime) -> Result<(), SystemTime> {
        let day = self.roll(now);
        if self.exhausted_day == Some(day) || (self.quota > 0 && self.used >= self.quota) {
            return Err(next_beijing_midnight(now));
        }
        self.used += 1;
        Ok(())
    }

    /// Gives back a reservation for a send WeChat did not count (it answered an errcode, or the
    /// connection never opened).
    pub fn give_back(&mut self, now: SystemTime) {
        self.roll(now);
        self.used = self.used.saturating_sub(1);
    }

    /// Records WeChat's 45009: nothing more today. Returns when the quota resets.
    pub fn exhaust(&mut self, now: SystemTime) -> SystemTime {
        self.exhausted_day = Some(self.roll(now));
        next_beijing_midnight(now)
    }

    /// If today's quota is spent, when it resets.
    pub fn exhausted_until(&self, now: SystemTime) -> Option<SystemTime> {
        let day = beijing_day(now);
        let counted = day == self.day && self.quota > 0 && self.used >= self.quota;
        (counted || self.exhausted_day == Some(day)).then(|| next_beijing_midnight(now))
    }

    /// Sends counted today.
    pub fn used(&self, now: SystemTime) -> u64 {
        if beijing_day(now) == self.day {
            self.used
        } else {
            0
        }
    }
}

/// The shared limiter's rule (GCRA, the generic cell rate algorithm), in microseconds: a send
/// is due at the theoretical arrival time `tat`, and may go up to `tolerance` earlier (the
/// burst). Pure: the caller keeps `tat` and passes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between two sends at the sustained rate.
    pub interval_us: u64,
    /// How much earlier than its due time a send may go.
    pub tolerance_us: u64,
}

impl Gcra {
    /// The rule for `per_second` sends a second with bursts of `burst` (zeros count as 1).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = 1_000_000 / u64::from(per_second.max(1));
        Self {
            interval_us: interval.max(1),
            tolerance_us: interval * u64::from(burst.max(1).saturating_sub(1)),
        }
    }

    /// One send every `interval`, with no burst (a provider's ceiling, [`ceiling_cell`]).
    pub fn spaced(interval: Duration) -> Self {
        Self {
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            tolerance_us: 0,
        }
    }

    /// Reserves the next send at `now` given the stored `tat`: `Some((wait, new_tat))`, or
    /// `None` when the wait would be longer than `longest` (nothing is reserved then).
    pub fn reserve(&self, now: u64, tat: u64, longest: u64) -> Option<(u64, u64)> {
        let tat = tat.max(now);
        let wait = tat.saturating_sub(self.tolerance_us).saturating_sub(now);
        (wait <= longest).then(|| (wait, tat.saturating_add(self.interval_us)))
    }
}

/// This pod's rate limiter: the token bucket plus the daily counter.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: DefaultDirectRateLimiter,
    /// The bucket's spacing at its sustained rate.
    interval: Duration,
    /// A provider's ceiling, when one holds the rate down.
    ceiling: Option<Duration>,
    daily: Mutex<DailyCounter>,
}

/// The spacing that keeps every window of `ceiling.window` at `ceiling.max` sends or fewer:
/// with sends spaced `window / max` apart and no burst, any window holds at most `max`.
pub fn ceiling_cell(ceiling: RateCeiling) -> Duration {
    ceiling.window / ceiling.max.max(1)
}

impl RateLimiter {
    /// Builds the limiter from the policy (zero rates are treated as 1; the config validation
    /// refuses them anyway).
    pub fn new(policy: &RateLimit) -> Self {
        let per_second = NonZeroU32::new(policy.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            bucket: DefaultDirectRateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ),
            interval: Duration::from_secs(1) / per_second.get(),
            ceiling: None,
            daily: Mutex::new(DailyCounter::new(policy.daily_quota)),
        }
    }

    /// Holds the rate under a provider's ceiling (a WeCom robot's 20 a minute) as well: sends
    /// are spaced [`ceiling_cell`] apart, without a burst, when that is slower than the policy.
    #[must_use]
    pub fn with_ceiling(mut self, ceiling: Option<RateCeiling>) -> Self {
        if let Some(ceiling) = ceiling {
            let cell = ceiling_cell(ceiling).max(self.interval);
            self.interval = cell;
            self.ceiling = Some(cell);
            if let Some(quota) = Quota::with_period(cell) {
                self.bucket = DefaultDirectRateLimiter::direct(quota.allow_burst(NonZeroU32::MIN));
            }
        }
        self
    }

    /// The spacing of sends at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The rule the pods share: the policy's rate and burst, or a provider's ceiling.
    pub fn shared_rule(&self, policy: &RateLimit) -> Gcra {
        match self.ceiling {
            Some(cell) => Gcra::spaced(cell),
            None => Gcra::new(policy.per_second, policy.burst),
        }
    }

    /// Waits for a send permit from the token bucket, at most `max_wait`. `false` when the
    /// wait ran out.
    pub async fn acquire(&self, max_wait: Duration) -> bool {
        if self.bucket.check().is_ok() {
            return true;
        }
        tokio::time::timeout(max_wait, self.bucket.until_ready())
            .await
            .is_ok()
    }

    /// Reserves one send from today's quota; `Err(midnight)` when it is spent.
    pub fn take_daily(&self, now: SystemTime) -> Result<(), SystemTime> {
        self.daily.lock().try_take(now)
    }

    /// Returns a reservation WeChat did not count.
    pub fn give_back_daily(&self, now: SystemTime) {
        self.daily.lock().give_back(now);
    }

    /// WeChat answered 45009: park until midnight Beijing time, which is returned.
    pub fn exhaust_daily(&self, now: SystemTime) -> SystemTime {
        self.daily.lock().exhaust(now)
    }

    /// When today's quota resets, if it is spent.
    pub fn daily_exhausted_until(&self, now: SystemTime) -> Option<SystemTime> {
        self.daily.lock().exhausted_until(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn beijing_midnight_table() {
        // 2026-11-28T00:00:00Z = 1795824000, i.e. 08:00 in Beijing.
        let utc_midnight = 1_795_824_000;
        let cases = [
            // (now, next Beijing midnight as unix seconds)
            // 08:00 Beijing → next midnight is 16:00Z the same UTC day.
            (utc_midnight, utc_midnight + 16 * 3600),
            // 15:59:59Z = 23:59:59 Beijing → one second later.
            (utc_midnight + 16 * 3600 - 1, utc_midnight + 16 * 3600),
            // exactly midnight Beijing (16:00Z) → the following one, a day later.
            (utc_midnight + 16 * 3600, utc_midnight + 40 * 3600),
            // 23:00Z the day before = 07:00 Beijing the same Beijing day as utc_midnight.
            (utc_midnight - 3600, utc_midnight + 16 * 3600),
            // the epoch itself: 08:00 Beijing on 1970-01-01.
            (0, 16 * 3600),
        ];
        for (now, want) in cases {
            assert_eq!(next_beijing_midnight(at(now)), at(want), "now = {now}");
            assert!(next_beijing_midnight(at(now)) > at(now));
        }
        assert_eq!(
            beijing_day(at(utc_midnight + 16 * 3600 - 1)) + 1,
            beijing_day(at(utc_midnight + 16 * 3600))
        );
    }

    #[test]
    fn daily_counter_resets_at_beijing_midnight() {
        let midnight = 1_795_881_600; // 2026-11-28T16:00:00Z = 2026-11-29 00:00 Beijing
        let mut c = DailyCounter::new(2);
        let before = at(midnight - 10);
        assert_eq!(c.try_take(before), Ok(()));
        assert_eq!(c.try_take(before), Ok(()));
        assert_eq!(c.try_take(before), Err(at(midnight)));
        assert_eq!(c.exhausted_until(before), Some(at(midnight)));
        c.give_back(before);
        assert_eq!(c.used(before), 1);
        assert_eq!(c.try_take(before), Ok(()));
        let after = at(midnight);
        assert_eq!(c.exhausted_until(after), None);
        assert_eq!(c.try_take(after), Ok(()));
        assert_eq!(c.used(after), 1);
    }

    #[test]
    fn wechat_45009_parks_even_without_a_local_quota() {
        let mut c = DailyCounter::new(0);
        let now = at(1_795_824_000);
        for _ in 0..1000 {
            assert_eq!(c.try_take(now), Ok(()));
        }
        let until = c.exhaust(now);
        assert_eq!(c.try_take(now), Err(until));
        assert_eq!(c.try_take(until), Ok(()));
    }

    #[test]
    fn a_ceiling_keeps_every_window_at_its_maximum() {
        let ceiling = RateCeiling {
            max: 20,
            window: Duration::from_secs(61),
        };
        let cell = ceiling_cell(ceiling);
        assert_eq!(cell, Duration::from_millis(3050));
        // Sends spaced `cell` apart from t = 0: the most that fit in any 60 s window.
        let in_window = (Duration::from_secs(60).as_millis() / cell.as_millis()) + 1;
        assert!(in_window <= 20, "{in_window}");
        let policy = RateLimit {
            per_second: 100,
            burst: 100,
            daily_quota: 0,
        };
        let limiter = RateLimiter::new(&policy).with_ceiling(Some(ceiling));
        assert_eq!(limiter.interval(), cell);
        let rule = limiter.shared_rule(&policy);
        assert_eq!((rule.interval_us, rule.tolerance_us), (3_050_000, 0));
        assert_eq!(
            RateLimiter::new(&policy).shared_rule(&policy),
            Gcra::new(100, 100)
        );
    }

    #[test]
    fn gcra_reserves_in_order_and_refuses_past_the_longest_wait() {
        // 10 a second (100 ms apart), bursts of 3 (200 ms early).
        let g = Gcra::new(10, 3);
        assert_eq!((g.interval_us, g.tolerance_us), (100_000, 200_000));
        let now = 1_000_000;
        // An empty limiter (tat in the past): go now, due again one interval later.
        assert_eq!(g.reserve(now, 0, 0), Some((0, now + 100_000)));
        // The burst: three sends go at once.
        assert_eq!(g.reserve(now, now + 100_000, 0), Some((0, now + 200_000)));
        assert_eq!(g.reserve(now, now + 200_000, 0), Some((0, now + 300_000)));
        // The fourth waits one interval, and is refused when that is too long.
        assert_eq!(g.reserve(now, now + 300_000, 99_999), None);
        assert_eq!(
            g.reserve(now, now + 300_000, 100_000),
            Some((100_000, now + 400_000))
        );
        // Zero rates count as one a second.
        assert_eq!(Gcra::new(0, 0), Gcra::new(1, 1));
    }

    #[tokio::test]
    async fn bucket_allows_the_burst_then_paces() {
        let limiter = RateLimiter::new(&RateLimit {
            per_second: 10,
            burst: 3,
            daily_quota: 0,
        });
        for _ in 0..3 {
            assert!(limiter.acquire(Duration::ZERO).await, "burst");
        }
        assert!(
            !limiter.acquire(Duration::from_millis(5)).await,
            "bucket empty"
        );
        let start = std::time::Instant::now();
        assert!(limiter.acquire(Duration::from_secs(1)).await);
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
    }
}
