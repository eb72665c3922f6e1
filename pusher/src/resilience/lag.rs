//! How late the pusher's own async runtime runs: the part of an answer's latency spent waiting
//! for our CPU, not for WeChat. [`crate::resilience::adaptive`] uses it to tell a busy pusher
//! from a queueing upstream.
//!
//! A probe task sleeps [`PROBE_EVERY`] at a time and notes how late each wake-up came. When the
//! runtime's workers are busy (accepting a burst of messages on the same cores, say), a timer
//! and a socket that became readable wait alike for a worker to poll the driver and run them,
//! so the probe's delay is the delay with which answers are read (and, at a send, with which
//! the request is written). [`RuntimeLag::at`] gives the
//! lag at an instant: the last probe's delay, or, when the pending probe is already overdue, how
//! overdue it is (a probe that waits 30 ms reports only when it finally runs). The timer's tick
//! ([`TIMER_TICK`]) is taken off every figure, so an idle runtime reads zero and the lag is never
//! overstated by the timer's rounding.
//!
//! The probe runs only while requests are in flight (it reads the caller's count of them); an
//! idle pusher's probe wakes every [`IDLE_EVERY`]. The probe ends when the [`RuntimeLag`] is
//! dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the probe wakes while requests are in flight.
pub const PROBE_EVERY: Duration = Duration::from_millis(2);
/// How often an idle probe looks whether requests are in flight again.
pub const IDLE_EVERY: Duration = Duration::from_millis(100);
/// The timer's resolution: a wake-up up to this late is on time.
pub const TIMER_TICK: Duration = Duration::from_millis(1);

/// The runtime's lag, shared by the probe task and its readers.
#[derive(Debug)]
pub struct RuntimeLag {
    base: Instant,
    /// The last probe's delay, in µs (the tick taken off).
    last_us: AtomicU64,
    /// When the pending probe is due, in µs after `base`; 0 when none is pending.
    due_us: AtomicU64,
}

impl Default for RuntimeLag {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl RuntimeLag {
    /// A lag of zero, with instants counted from `base`.
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            last_us: AtomicU64::new(0),
            due_us: AtomicU64::new(0),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    /// Starts the probe on the current tokio runtime (none outside one); it runs while
    /// `in_flight` is above zero, and ends once `lag` is dropped.
    pub fn spawn(lag: &Arc<Self>, in_flight: Arc<AtomicU32>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(probe(Arc::downgrade(lag), in_flight));
    }

    /// A probe due at `due` starts waiting.
    pub fn waiting(&self, due: Instant) {
        self.due_us
            .store(self.micros(due).max(1), Ordering::Relaxed);
    }

    /// The probe due at `due` ran at `ran`.
    pub fn woke(&self, due: Instant, ran: Instant) {
        let late = ran
            .saturating_duration_since(due)
            .saturating_sub(TIMER_TICK);
        let late = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.last_us.store(late, Ordering::Relaxed);
        self.due_us.store(0, Ordering::Relaxed);
    }

    /// The runtime's lag at `at`: the last probe's delay, or how overdue the pending probe is,
    /// whichever is larger.
    pub fn at(&self, at: Instant) -> Duration {
        let last = self.last_us.load(Ordering::Relaxed);
        let due = self.due_us.load(Ordering::Relaxed);
        let overdue = if due == 0 {
            0
        } else {
            let tick = u64::try_from(TIMER_TICK.as_micros()).unwrap_or(0);
            self.micros(at).saturating_sub(due).saturating_sub(tick)
        };
        Duration::from_micros(last.max(overdue))
    }
}

async fn probe(lag: Weak<RuntimeLag>, in_flight: Arc<AtomicU32>) {
    loop {
        let Some(shared) = lag.upgrade() else {
            return;
        };
        if in_flight.load(Ordering::Relaxed) == 0 {
            shared.last_us.store(0, Ordering::Relaxed);
            drop(shared);
            tokio::time::sleep(IDLE_EVERY).await;
            continue;
        }
        let due = Instant::now() + PROBE_EVERY;
        shared.waiting(due);
        drop(shared);
        tokio::time::sleep_until(due.into()).await;
        let ran = Instant::now();
        let Some(shared) = lag.upgrade() else {
            return;
        };
        shared.woke(due, ran);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_last_delay_or_the_pending_probes_overdue_time() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        let lag = RuntimeLag::new(base);
        assert_eq!(lag.at(base + ms(50)), Duration::ZERO);
        // On time (within the timer's tick): no lag.
        lag.woke(base + ms(2), base + ms(2) + Duration::from_micros(900));
        assert_eq!(lag.at(base + ms(3)), Duration::ZERO);
        // A probe 20 ms late: 19 ms once the tick is taken off.
        lag.woke(base + ms(4), base + ms(24));
        assert_eq!(lag.at(base + ms(24)), ms(19));
        // The next probe, due at 26 ms, has not run at 40 ms: overdue by 14 ms less the tick,
        // and the last delay (19 ms) is larger.
        lag.waiting(base + ms(26));
        assert_eq!(lag.at(base + ms(40)), ms(19));
        // At 60 ms it is 33 ms overdue (less the tick).
        assert_eq!(lag.at(base + ms(60)), ms(33));
        // It ran on time after all: the lag is back to zero.
        lag.woke(base + ms(26), base + ms(26));
        assert_eq!(lag.at(base + ms(61)), Duration::ZERO);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_shows_its_lag() {
        let lag = Arc::new(RuntimeLag::default());
        RuntimeLag::spawn(&lag, Arc::new(AtomicU32::new(1)));
        // Let the probe start waiting, then hold the only thread for 30 ms.
        tokio::time::sleep(Duration::from_millis(5)).await;
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            lag.at(Instant::now()) >= Duration::from_millis(20),
            "{:?}",
            lag.at(Instant::now())
        );
        // Once the runtime runs freely again, the probe's next wake-ups are on time (bounded).
        let mut free = false;
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if lag.at(Instant::now()) < Duration::from_millis(10) {
                free = true;
                break;
            }
        }
        assert!(free, "{:?}", lag.at(Instant::now()));
    }
}
