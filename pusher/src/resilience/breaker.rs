//! The circuit breaker in front of the WeChat API, as a pure state machine over the
//! [`CircuitBreaker`] policy. Time is passed in (`now`), so tests drive it with a fake clock.
//!
//! - **Closed**: every attempt is admitted; outcomes are counted in a sliding window of
//!   `window` (ten buckets). Once the window holds at least `minimumRequests` outcomes and the
//!   failed share reaches `failureRatio`, the breaker opens.
//! - **Open**: nothing is admitted for a while; callers learn when to come back. Each opening
//!   lasts `firstProbeAfter` while the breaker has been failing for less than `openDuration`
//!   (early probes: a backlog leaves as soon as WeChat is back), `openDuration` after that.
//! - **Half-open**: then `halfOpenProbes` attempts are let through. When all of them succeed
//!   the breaker closes (with an empty window, and the open period back to `firstProbeAfter`);
//!   any failure opens it again.
//!
//! What counts as a failure is the caller's choice; the sender counts transport errors,
//! timeouts, HTTP 5xx and errcode -1, never a permanent errcode (WeChat answered: it is up).
//! An admitted attempt that ends without reaching WeChat (e.g. no token) is recorded as
//! [`Outcome::Ignored`], which frees its probe slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::policy::CircuitBreaker;

const BUCKETS: usize = 10;

/// How an admitted attempt ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// WeChat answered (errcode 0 or any errcode other than -1).
    Success,
    /// Transport error, timeout, HTTP 5xx or errcode -1.
    Failure,
    /// The attempt never reached WeChat.
    Ignored,
}

/// Proof of admission; hand it back to [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    ok: u32,
    failed: u32,
}

/// The breaker's state machine.
#[derive(Debug, Clone)]
pub struct Breaker {
    enabled: bool,
    failure_ratio: f64,
    minimum_requests: u32,
    bucket_len: Duration,
    open_duration: Duration,
    first_probe_after: Duration,
    /// When the current episode (closed → open → … → closed) began.
    episode_start: Option<Instant>,
    probes: u32,
    state: State,
    /// Changes on every transition, so outcomes of attempts admitted before it are not
    /// mistaken for probes (or counted in a fresh window).
    generation: u64,
    epoch: Instant,
    buckets: [Bucket; BUCKETS],
}

impl Breaker {
    /// A closed breaker; `now` anchors its window.
    pub fn new(policy: &CircuitBreaker, now: Instant) -> Self {
        let bucket_len = (policy.window.get() / BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            enabled: policy.enabled,
            failure_ratio: policy.failure_ratio,
            minimum_requests: policy.minimum_requests.max(1),
            bucket_len,
            open_duration: policy.open_duration.get(),
            first_probe_after: policy
                .first_probe_after
                .get()
                .min(policy.open_duration.get()),
            episode_start: None,
            probes: policy.half_open_probes.max(1),
            state: State::Closed,
            generation: 0,
            epoch: now,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos() / self.bucket_len.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn window_totals(&self, now: Instant) -> (u32, u32) {
        let current = self.bucket_index(now);
        self.buckets
            .iter()
            .filter(|b| b.index + BUCKETS as u64 > current && b.index <= current)
            .fold((0, 0), |(ok, failed), b| (ok + b.ok, failed + b.failed))
    }

    fn transition(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
        if state == State::Closed {
            self.buckets = [Bucket::default(); BUCKETS];
            self.episode_start = None;
        }
    }

    /// Opens the breaker: for `firstProbeAfter` while the episode is younger than
    /// `openDuration` (probing early, so the backlog leaves as soon as WeChat is back), for
    /// `openDuration` after that (a long outage is probed less often).
    fn open(&mut self, now: Instant) {
        let start = *self.episode_start.get_or_insert(now);
        let period = if now.saturating_duration_since(start) < self.open_duration {
            self.first_probe_after
        } else {
            self.open_duration
        };
        self.transition(State::Open {
            until: now + period,
        });
    }

    /// Lets an attempt through, or says how long until one may be (`Err`).
    pub fn admit(&mut self, now: Instant) -> Result<Ticket, Duration> {
        if !self.enabled {
            return Ok(Ticket {
                generation: self.generation,
            });
        }
        if let State::Open { until } = self.state {
            if now < until {
                return Err(until - now);
            }
            self.transition(State::HalfOpen {
                admitted: 0,
                succeeded: 0,
            });
        }
        if let State::HalfOpen {
            admitted,
            succeeded,
        } = self.state
        {
            if admitted >= self.probes {
                // Probes are out; their outcome decides. Come back shortly.
                return Err(self.first_probe_after.min(Duration::from_millis(100)));
            }
            self.state = State::HalfOpen {
                admitted: admitted + 1,
                succeeded,
            };
        }
        Ok(Ticket {
            generation: self.generation,
        })
    }

    /// Records how an admitted attempt ended.
    pub fn record(&mut self, ticket: Ticket, outcome: Outcome, now: Instant) {
        if !self.enabled || ticket.generation != self.generation {
            return;
        }
        match self.state {
            State::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let index = self.bucket_index(now);
                let slot = &mut self.buckets[(index % BUCKETS as u64) as usize];
                if slot.index != index {
                    *slot = Bucket {
                        index,
                        ok: 0,
                        failed: 0,
                    };
                }
                match outcome {
                    Outcome::Success => slot.ok += 1,
                    _ => slot.failed += 1,
                }
                let (ok, failed) = self.window_totals(now);
                let total = ok + failed;
                if total >= self.minimum_requests
                    && f64::from(failed) >= self.failure_ratio * f64::from(total)
                {
                    self.open(now);
                }
            }
            State::HalfOpen {
                admitted,
                succeeded,
            } => match outcome {
                Outcome::Failure => self.open(now),
                Outcome::Ignored => {
                    self.state = State::HalfOpen {
                        admitted: admitted.saturating_sub(1),
                        succeeded,
                    };
                }
                Outcome::Success => {
                    if succeeded + 1 >= self.probes {
                        self.transition(State::Closed);
                    } else {
                        self.state = State::HalfOpen {
                            admitted,
                            succeeded: succeeded + 1,
                        };
                    }
                }
            },
            State::Open { .. } => {}
        }
    }

    /// The state as of `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// While open, how long until probes are let through.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }
}

/// Circuit breaker states, the values of `wxpush_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Sending normally.
    Closed = 0,
    /// Letting probes through.
    HalfOpen = 1,
    /// Not sending.
    Open = 2,
}

/// Called with the breaker's state before and after each admission or record, so that the
/// caller can keep its gauge (`wxpush_circuit_state`) and count openings: the breaker itself
/// records no metrics.
pub type StateObserver = Arc<dyn Fn(CircuitState, CircuitState) + Send + Sync>;

/// A breaker shared by all workers; it reports its state to an observer.
pub struct SharedBreaker {
    inner: Arc<Mutex<Breaker>>,
    observe: StateObserver,
}

/// An admitted attempt. Record its outcome with [`Permit::record`]; dropping it records
/// [`Outcome::Ignored`], so an early return never strands a probe slot.
pub struct Permit {
    ticket: Option<Ticket>,
    inner: Arc<Mutex<Breaker>>,
    observe: StateObserver,
}

impl std::fmt::Debug for SharedBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl SharedBreaker {
    /// A closed breaker for this policy.
    pub fn new(policy: &CircuitBreaker, observe: StateObserver) -> Self {
        observe(CircuitState::Closed, CircuitState::Closed);
        Self {
            inner: Arc::new(Mutex::new(Breaker::new(policy, Instant::now()))),
            observe,
        }
    }

    /// Admits an attempt, or says how long until the breaker lets one through.
    pub fn admit(&self) -> Result<Permit, Duration> {
        let now = Instant::now();
        let (before, admitted, state) = {
            let mut b = self.inner.lock();
            let before = b.state(now);
            (before, b.admit(now), b.state(now))
        };
        (self.observe)(before, state);
        admitted.map(|ticket| Permit {
            ticket: Some(ticket),
            inner: Arc::clone(&self.inner),
            observe: Arc::clone(&self.observe),
        })
    }

    /// The state now.
    pub fn state(&self) -> CircuitState {
        self.inner.lock().state(Instant::now())
    }

    /// While open, how long until probes are let through.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.lock().retry_after(Instant::now())
    }
}

impl Permit {
    /// Records how the attempt ended.
    pub fn record(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            let now = Instant::now();
            let (before, state) = {
                let mut b = self.inner.lock();
                let before = b.state(now);
                b.record(ticket, outcome, now);
                (before, b.state(now))
            };
            (self.observe)(before, state);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish(Outcome::Ignored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HumanDuration;

    fn policy() -> CircuitBreaker {
        CircuitBreaker {
            enabled: true,
            failure_ratio: 0.5,
            minimum_requests: 4,
            window: HumanDuration::secs(10),
            open_duration: HumanDuration::secs(5),
            first_probe_after: HumanDuration::secs(5),
            half_open_probes: 2,
        }
    }

    fn run(b: &mut Breaker, now: Instant, outcome: Outcome) {
        let t = b.admit(now).expect("admitted");
        b.record(t, outcome, now);
    }

    #[test]
    fn stays_closed_below_minimum_requests_and_ratio() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&policy(), t0);
        for _ in 0..3 {
            run(&mut b, t0, Outcome::Failure);
        }
        assert_eq!(b.state(t0), CircuitState::Closed, "3 < minimumRequests");
        let mut b = Breaker::new(&policy(), t0);
        for o in [
            Outcome::Success,
            Outcome::Success,
            Outcome::Success,
            Outcome::Failure,
        ] {
            run(&mut b, t0, o);
        }
        assert_eq!(b.state(t0), CircuitState::Closed, "25% < 50%");
        run(&mut b, t0, Outcome::Failure);
        assert_eq!(b.state(t0), CircuitState::Closed, "40% < 50%");
        run(&mut b, t0, Outcome::Failure);
        assert_eq!(b.state(t0), CircuitState::Open, "50% opens");
    }

    #[test]
    fn full_cycle_open_half_open_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&policy(), t0);
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Failure);
        }
        assert_eq!(b.state(t0), CircuitState::Open);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(t1), Err(Duration::from_secs(3)));
        assert_eq!(b.retry_after(t1), Some(Duration::from_secs(3)));
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t2), CircuitState::HalfOpen);
        let p1 = b.admit(t2).expect("probe 1");
        let p2 = b.admit(t2).expect("probe 2");
        assert!(b.admit(t2).is_err(), "only halfOpenProbes probes");
        b.record(p1, Outcome::Success, t2);
        assert_eq!(b.state(t2), CircuitState::HalfOpen);
        b.record(p2, Outcome::Success, t2);
        assert_eq!(b.state(t2), CircuitState::Closed);
        // A fresh window: three failures are below minimumRequests again.
        for _ in 0..3 {
            run(&mut b, t2, Outcome::Failure);
        }
        assert_eq!(b.state(t2), CircuitState::Closed);
    }

    #[test]
    fn probes_start_early_and_slow_down_in_a_long_outage() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            &CircuitBreaker {
                first_probe_after: HumanDuration::millis(500),
                ..policy()
            },
            t0,
        );
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Failure);
        }
        // How long the breaker stays open after each failed round of probes: every 500 ms
        // during the first openDuration (5 s) of the episode, every 5 s after that.
        let mut now = t0;
        for expected in [500; 10].into_iter().chain([5000, 5000]) {
            assert_eq!(b.retry_after(now), Some(Duration::from_millis(expected)));
            now += Duration::from_millis(expected);
            let probe = b.admit(now).expect("probe");
            b.record(probe, Outcome::Failure, now);
        }
        // WeChat is back: the probes succeed, the breaker closes, and the next opening starts
        // early again.
        now += Duration::from_secs(5);
        for _ in 0..2 {
            run(&mut b, now, Outcome::Success);
        }
        assert_eq!(b.state(now), CircuitState::Closed);
        for _ in 0..4 {
            run(&mut b, now, Outcome::Failure);
        }
        assert_eq!(b.retry_after(now), Some(Duration::from_millis(500)));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&policy(), t0);
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Failure);
        }
        let t1 = t0 + Duration::from_secs(6);
        let p1 = b.admit(t1).expect("probe");
        let p2 = b.admit(t1).expect("probe");
        b.record(p1, Outcome::Failure, t1);
        assert_eq!(b.state(t1), CircuitState::Open);
        assert_eq!(b.retry_after(t1), Some(Duration::from_secs(5)));
        // The other probe's late success belongs to an older generation: ignored.
        b.record(p2, Outcome::Success, t1);
        assert_eq!(b.state(t1), CircuitState::Open);
    }

    #[test]
    fn ignored_probes_free_their_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&policy(), t0);
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Failure);
        }
        let t1 = t0 + Duration::from_secs(5);
        let p1 = b.admit(t1).expect("probe");
        let _p2 = b.admit(t1).expect("probe");
        assert!(b.admit(t1).is_err());
        b.record(p1, Outcome::Ignored, t1);
        assert!(b.admit(t1).is_ok(), "slot freed");
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&policy(), t0);
        for _ in 0..3 {
            run(&mut b, t0, Outcome::Failure);
        }
        // 11 s later the window (10 s) no longer holds them.
        let t1 = t0 + Duration::from_secs(11);
        run(&mut b, t1, Outcome::Failure);
        assert_eq!(b.state(t1), CircuitState::Closed);
        // Within the window they add up.
        let t2 = t1 + Duration::from_secs(3);
        for _ in 0..3 {
            run(&mut b, t2, Outcome::Failure);
        }
        assert_eq!(b.state(t2), CircuitState::Open);
    }

    #[test]
    fn disabled_breaker_admits_everything() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            &CircuitBreaker {
                enabled: false,
                ..policy()
            },
            t0,
        );
        for _ in 0..100 {
            run(&mut b, t0, Outcome::Failure);
        }
        assert_eq!(b.state(t0), CircuitState::Closed);
    }

    #[test]
    fn shared_breaker_keeps_the_gauge_and_drop_means_ignored() {
        let metrics = Arc::new(crate::metrics::Metrics::new("t"));
        let gauge = Arc::clone(&metrics);
        let shared = SharedBreaker::new(
            &CircuitBreaker {
                minimum_requests: 1,
                half_open_probes: 1,
                open_duration: HumanDuration::millis(1),
                ..policy()
            },
            Arc::new(move |_, state| gauge.set_circuit(state)),
        );
        shared.admit().expect("closed").record(Outcome::Failure);
        assert!(
            metrics
                .encode()
                .contains("wxpush_circuit_state{channel=\"t\"} 2")
        );
        std::thread::sleep(Duration::from_millis(5));
        let probe = shared.admit().expect("half-open probe");
        assert!(shared.admit().is_err(), "the one probe is out");
        drop(probe);
        shared.admit().expect("slot freed").record(Outcome::Success);
        assert_eq!(shared.state(), CircuitState::Closed);
        assert!(
            metrics
                .encode()
                .contains("wxpush_circuit_state{channel=\"t\"} 0")
        );
    }
}
