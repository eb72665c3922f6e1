//! Gradual closing of the pooled connections the load no longer needs (issue 20).
//!
//! Each connection times its own idleness (`client.rs`, `IdleWatch`). Once it has been unused
//! long enough it asks the channel's [`Closer`] whether it may close. The closer says yes only
//! when both hold:
//!
//! - more connections are open than the most requests in flight at once over the last
//!   `pool.idleTimeout` (and than the requests in flight now): the pool never shrinks below what
//!   the recent load needed;
//! - a token of a bucket filled at `pool.closesPerSecond` (holding one token) is free: in any
//!   window of `w` seconds at most `1 + w × closesPerSecond` connections close.
//!
//! A connection told to wait asks again later: at its next token (plus a random spread, so the
//! waiting connections do not all wake at once), or after `idleTimeout` when the pool is at its
//! floor. The pool reuses the most recently used idle connection first, so when the load falls
//! the connections it no longer needs are the ones that sit unused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use tokio::time::Instant;

/// What a connection that has been idle long enough should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Close now: the closer has already taken it off the live count.
    Close,
    /// Stay open; ask again at this instant.
    AskAt(Instant),
}

/// The pool-wide side of gradual closing: the recent peak of requests in flight and the token
/// bucket of closes.
#[derive(Debug)]
pub(crate) struct Closer {
    /// `pool.idleTimeout`: how long a connection stays unused before it asks, and the window
    /// of the recent peak.
    idle_after: Duration,
    /// One token per this long (1 / `pool.closesPerSecond`).
    interval: Duration,
    /// Most requests in flight at once in the current window (raised by every request).
    window_peak: AtomicUsize,
    state: Mutex<State>,
    /// Connections closed by this pacing (`wxpush_wechat_connections_closed_total{reason="idle"}`).
    closed_idle: Counter,
}

#[derive(Debug)]
struct State {
    /// When the next token is free (the bucket holds one).
    next_token: Instant,
    /// Start of the current peak window.
    window_start: Instant,
    /// Most requests in flight at once in the window before.
    previous_peak: usize,
}

impl Closer {
    pub(crate) fn new(idle_after: Duration, closes_per_second: u32, closed_idle: Counter) -> Self {
        let now = Instant::now();
        Self {
            idle_after,
            interval: Duration::from_secs(1) / closes_per_second.max(1),
            window_peak: AtomicUsize::new(0),
            state: Mutex::new(State {
                next_token: now,
                window_start: now,
                previous_peak: 0,
            }),
            closed_idle,
        }
    }

    /// Notes `in_flight` requests under way at once (called as each request starts).
    pub(crate) fn saw_in_flight(&self, in_flight: usize) {
        self.window_peak.fetch_max(in_flight, Ordering::Relaxed);
    }

    /// A connection unused for at least [`Self::idle_after`] asks whether it may close. `live`
    /// counts the open connections (this one included): on [`Verdict::Close`] it has been
    /// lowered by one for it, so two connections asking at once never both take the last
    /// surplus. `in_flight` is the number of requests under way now.
    pub(crate) fn ask(&self, now: Instant, live: &AtomicUsize, in_flight: usize) -> Verdict {
        let mut state = self.state.lock();
        if now.saturating_duration_since(state.window_start) >= self.idle_after {
            state.previous_peak = self.window_peak.swap(in_flight, Ordering::Relaxed);
            state.window_start = now;
        }
        let keep = state
            .previous_peak
            .max(self.window_peak.load(Ordering::Relaxed))
            .max(in_flight);
        if live.load(Ordering::Acquire) <= keep {
            return Verdict::AskAt(now + self.idle_after);
        }
        if state.next_token > now {
            let spread = self.idle_after.min(Duration::from_secs(10));
            let jitter = rand::rng().random_range(Duration::ZERO..=spread);
            return Verdict::AskAt(state.next_token + jitter);
        }
        let taken = live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n > keep).then(|| n - 1)
        });
        if taken.is_err() {
            return Verdict::AskAt(now + self.idle_after);
        }
        state.next_token = now + self.interval;
        self.closed_idle.inc();
        Verdict::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` idle connections ask over and over, each when told, while `load` requests are
    /// under way all along; returns the instants of the closes, and checks the live count
    /// never falls below the load.
    async fn drive(closer: &Closer, live: &AtomicUsize, n: usize, load: usize) -> Vec<Instant> {
        let start = Instant::now();
        let mut asks: Vec<Instant> = vec![start; n];
        let mut closes = Vec::new();
        // Bounded: every round advances time to the earliest ask.
        for _ in 0..100_000 {
            let Some((i, &at)) = asks.iter().enumerate().min_by_key(|(_, at)| **at) else {
                break;
            };
            if at > start + Duration::from_secs(600) {
                break;
            }
            tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
            closer.saw_in_flight(load);
            match closer.ask(Instant::now(), live, load) {
                Verdict::Close => {
                    closes.push(Instant::now());
                    asks.swap_remove(i);
                }
                Verdict::AskAt(next) => {
                    assert!(next > Instant::now(), "an ask is always for later");
                    asks[i] = next;
                }
            }
            assert!(live.load(Ordering::Acquire) >= load);
        }
        closes
    }

    #[tokio::test(start_paused = true)]
    async fn closes_are_paced_by_the_bucket() {
        let counter = Counter::default();
        let closer = Closer::new(Duration::from_secs(1), 5, counter.clone());
        let live = AtomicUsize::new(100);
        let closes = drive(&closer, &live, 100, 0).await;
        assert_eq!(
            closes.len(),
            100,
            "with no load left, every connection closes"
        );
        assert_eq!(counter.get(), 100);
        assert_eq!(live.load(Ordering::Acquire), 0);
        // In any window of one second at most 1 + 5 closes.
        for (i, first) in closes.iter().enumerate() {
            let within = closes[i..]
                .iter()
                .take_while(|t| **t < *first + Duration::from_secs(1))
                .count();
            assert!(within <= 6, "{within} closes within a second");
        }
        let took = *closes.last().expect("closes") - *closes.first().expect("closes");
        assert!(
            took >= Duration::from_millis(99 * 200),
            "100 closes at 5/s span at least 19.8 s, not {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_recent_peak_is_kept() {
        let closer = Closer::new(Duration::from_secs(2), 1000, Counter::default());
        let live = AtomicUsize::new(50);
        closer.saw_in_flight(30);
        // The peak of 30 holds for this window and the next (up to two idle periods), then
        // the load of 0 lets the rest go.
        let early = Instant::now();
        assert_eq!(
            closer.ask(early, &live, 0),
            Verdict::Close,
            "above the peak a connection may close"
        );
        live.store(30, Ordering::Release);
        assert!(matches!(closer.ask(early, &live, 0), Verdict::AskAt(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            matches!(closer.ask(Instant::now(), &live, 0), Verdict::AskAt(_)),
            "the window before still saw 30 in flight"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(closer.ask(Instant::now(), &live, 0), Verdict::Close);
        // Requests under way now are always covered.
        live.store(10, Ordering::Release);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            closer.ask(Instant::now(), &live, 10),
            Verdict::AskAt(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_floor_stops_the_closes() {
        let closer = Closer::new(Duration::from_millis(500), 100, Counter::default());
        let live = AtomicUsize::new(40);
        // A steady 12 requests in flight: 12 connections stay.
        let closes = drive(&closer, &live, 40, 12).await;
        assert_eq!(closes.len(), 28);
        assert_eq!(live.load(Ordering::Acquire), 12);
    }
}
