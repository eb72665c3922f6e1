//! The observed latency of WeChat's answers, and the three times derived from it: when to
//! hedge a send that has not answered ([`LatencyTracker::hedge_after`]), when a request stops
//! counting against the concurrency limit ([`LatencyTracker::stuck_after`]), and the
//! response-header timeout ([`LatencyTracker::header_timeout`], bounded by the configured
//! `timeouts.responseHeader`). Also the hedge budget ([`HedgeBudget`]). Pure: no clock, no
//! metrics; the engine (`wechat::sender`) records samples and acts.
//!
//! The tracker is a histogram of log-spaced buckets (about 19 % apart, 100 µs to ~100 s) whose
//! counts are halved every [`DECAY_EVERY`] samples, so it follows the recent past.

use std::time::Duration;

const BUCKETS: usize = 80;
/// Lower edge of the first bucket.
const BASE_US: f64 = 100.0;
/// Ratio between bucket edges.
const GROWTH: f64 = 1.19;
/// Counts are halved after this many samples.
pub const DECAY_EVERY: u64 = 2048;
/// Samples needed before quantiles are trusted (hedging and derived timeouts start then).
pub const MIN_SAMPLES: u64 = 200;

/// A hedge is sent after this multiple of the observed p99.
pub const HEDGE_P99_MULTIPLE: f64 = 3.0;
/// Earliest hedge.
pub const MIN_HEDGE_AFTER: Duration = Duration::from_millis(5);
/// The derived response-header timeout is this multiple of the observed p99...
pub const HEADER_P99_MULTIPLE: f64 = 20.0;
/// ...and never below this.
pub const MIN_HEADER_TIMEOUT: Duration = Duration::from_millis(250);

/// Recent latencies.
#[derive(Debug, Clone)]
pub struct LatencyTracker {
    counts: [u32; BUCKETS],
    total: u64,
    since_decay: u64,
    seen: u64,
}

impl Default for LatencyTracker {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            total: 0,
            since_decay: 0,
            seen: 0,
        }
    }
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= BASE_US {
        return 0;
    }
    let i = ((us / BASE_US).ln() / GROWTH.ln()).floor() as usize + 1;
    i.min(BUCKETS - 1)
}

/// The upper edge of bucket `i`.
fn upper_edge(i: usize) -> Duration {
    let exp = i32::try_from(i).unwrap_or(i32::MAX);
    Duration::from_secs_f64(BASE_US * GROWTH.powi(exp) / 1e6)
}

impl LatencyTracker {
    /// Records one answered request's latency.
    pub fn record(&mut self, latency: Duration) {
        self.counts[bucket_of(latency)] += 1;
        self.total += 1;
        self.seen += 1;
        self.since_decay += 1;
        if self.since_decay >= DECAY_EVERY {
            self.since_decay = 0;
            self.total = 0;
            for c in &mut self.counts {
                *c /= 2;
                self.total += u64::from(*c);
            }
        }
    }

    /// Samples recorded in all.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The `q` quantile (0..=1) of recent latencies (an upper bound, within one bucket), once
    /// [`MIN_SAMPLES`] were recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.seen < MIN_SAMPLES || self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut acc = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            acc += u64::from(*c);
            if acc >= rank {
                return Some(upper_edge(i));
            }
        }
        Some(upper_edge(BUCKETS - 1))
    }

    /// When a send that has not answered gets a hedge: [`HEDGE_P99_MULTIPLE`] × p99, at least
    /// [`MIN_HEDGE_AFTER`]; `None` before enough samples.
    pub fn hedge_after(&self) -> Option<Duration> {
        self.quantile(0.99)
            .map(|p99| p99.mul_f64(HEDGE_P99_MULTIPLE).max(MIN_HEDGE_AFTER))
    }

    /// When a request in flight stops counting against the concurrency limit: the same
    /// moment as a hedge (the hedge takes the slot over).
    pub fn stuck_after(&self) -> Option<Duration> {
        self.hedge_after()
    }

    /// The response-header timeout: [`HEADER_P99_MULTIPLE`] × p99, at least
    /// [`MIN_HEADER_TIMEOUT`], never more than `configured`; `configured` itself until enough
    /// samples were seen.
    pub fn header_timeout(&self, configured: Duration) -> Duration {
        match self.quantile(0.99) {
            Some(p99) => p99
                .mul_f64(HEADER_P99_MULTIPLE)
                .max(MIN_HEADER_TIMEOUT)
                .min(configured),
            None => configured,
        }
    }
}

/// The hedge budget: a token bucket filled by sends, `HedgeBudget::share` of a token each,
/// emptied by hedges, one token each, holding at most `HedgeBudget::burst`.
#[derive(Debug, Clone)]
pub struct HedgeBudget {
    share: f64,
    burst: f64,
    tokens: f64,
}

impl HedgeBudget {
    /// A full bucket: at most `share` of sends hedged in the long run, `burst` at once.
    pub fn new(share: f64, burst: f64) -> Self {
        Self {
            share,
            burst,
            tokens: burst,
        }
    }

    /// One send went out.
    pub fn on_send(&mut self) {
        self.tokens = (self.tokens + self.share).min(self.burst);
    }

    /// Takes a token for a hedge; false when the budget is spent.
    pub fn try_hedge(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(latency: Duration, n: u64) -> LatencyTracker {
        let mut t = LatencyTracker::default();
        for _ in 0..n {
            t.record(latency);
        }
        t
    }

    #[test]
    fn quantiles_need_samples_and_land_within_a_bucket() {
        let t = fed(Duration::from_millis(2), MIN_SAMPLES - 1);
        assert_eq!(t.quantile(0.99), None);
        let t = fed(Duration::from_millis(2), MIN_SAMPLES);
        let p99 = t.quantile(0.99).expect("enough samples");
        assert!(
            (Duration::from_millis(2)..Duration::from_micros(2400)).contains(&p99),
            "{p99:?}"
        );
        // 2 % slow answers move p99, not p50.
        let mut t = fed(Duration::from_millis(2), 980);
        for _ in 0..20 {
            t.record(Duration::from_millis(50));
        }
        assert!(t.quantile(0.5).expect("p50") < Duration::from_millis(3));
        assert!(t.quantile(0.99).expect("p99") >= Duration::from_millis(50));
    }

    #[test]
    fn the_header_timeout_follows_observed_latency_within_its_bounds() {
        let configured = Duration::from_secs(5);
        let ms = Duration::from_millis;
        // (observed latency, expected timeout range)
        let table = [
            // Too few samples: the configured timeout.
            (None, configured..=configured),
            // Fast answers: the lower bound.
            (Some(ms(2)), MIN_HEADER_TIMEOUT..=MIN_HEADER_TIMEOUT),
            // 50 ms answers: 20 × p99, about 1 s.
            (Some(ms(50)), ms(1000)..=ms(1200)),
            // 100 ms: about 2 s.
            (Some(ms(100)), ms(2000)..=ms(2400)),
            // Slow answers: capped by the configured timeout.
            (Some(ms(800)), configured..=configured),
        ];
        for (latency, range) in table {
            let t = match latency {
                Some(l) => fed(l, 1000),
                None => fed(ms(2), 10),
            };
            let got = t.header_timeout(configured);
            assert!(
                range.contains(&got),
                "{latency:?} → {got:?}, want {range:?}"
            );
        }
        // It follows a change: after a slow-down the decayed history gives way.
        let mut t = fed(ms(2), 1000);
        assert_eq!(t.header_timeout(configured), MIN_HEADER_TIMEOUT);
        for _ in 0..3 * DECAY_EVERY {
            t.record(ms(100));
        }
        assert!(t.header_timeout(configured) >= ms(2000));
        // p99 forgets the slow past once it is under 1 % of the decayed counts.
        for _ in 0..8 * DECAY_EVERY {
            t.record(ms(2));
        }
        assert_eq!(t.header_timeout(configured), MIN_HEADER_TIMEOUT);
    }

    #[test]
    fn hedges_wait_for_a_multiple_of_p99() {
        assert_eq!(fed(Duration::from_millis(2), 10).hedge_after(), None);
        assert_eq!(
            fed(Duration::from_micros(200), 1000).hedge_after(),
            Some(MIN_HEDGE_AFTER)
        );
        let after = fed(Duration::from_millis(10), 1000)
            .hedge_after()
            .expect("hedge");
        assert!(
            (Duration::from_millis(30)..Duration::from_millis(36)).contains(&after),
            "{after:?}"
        );
    }

    #[test]
    fn the_hedge_budget_caps_hedges_at_a_share_of_sends() {
        let mut b = HedgeBudget::new(0.05, 2.0);
        assert!(b.try_hedge() && b.try_hedge());
        assert!(!b.try_hedge());
        let mut hedges = 0;
        for _ in 0..1000 {
            b.on_send();
            if b.try_hedge() {
                hedges += 1;
            }
        }
        assert!((49..=51).contains(&hedges), "{hedges}");
    }
}
