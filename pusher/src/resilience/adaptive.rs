//! Adaptive concurrency: how many HTTP requests to WeChat may be in flight at once, learnt from
//! the answers' latency and errors (`concurrency.adaptive`, on by default; `maxInFlight` is the
//! ceiling). A pure decision in the style of TCP Vegas and Netflix's gradient limiters: time
//! is passed in, so tests drive it with plain values.
//!
//! Samples are gathered in windows (at least [`AdaptiveSettings::window`] long and
//! [`AdaptiveSettings::min_samples`] samples). At the end of each window the window's
//! **lowest** latency is compared with the **floor**, the lowest such value of the last
//! [`FLOOR_WINDOWS`] windows. The lowest latency of a window rises only when every request
//! waits (the upstream queues them), not when some are slowed down by a busy machine, so noise
//! on the pusher's own host does not shrink the limit. Only healthy answers count for a
//! window's lowest latency (failed ones, such as a refused connection, come back fast and
//! would drag the floor down). At the end of a window:
//!
//! | window | new limit |
//! |---|---|
//! | more than [`AdaptiveSettings::max_error_share`] of the samples failed (timeout, transport, 5xx) | × [`AdaptiveSettings::backoff`] |
//! | lowest ≤ floor × [`AdaptiveSettings::grow_below`] and the limit was used | × 2 until the first back-off (slow start), then + max(1, limit / 8): growing while latency stays near its floor |
//! | lowest > floor × [`AdaptiveSettings::shrink_above`], and still so net of our own lag (below) | × max(0.5, floor × `grow_below` / net lowest): backing off in proportion to the queueing |
//! | lowest > floor × `shrink_above`, but not net of our own lag | unchanged, and slow start goes on |
//! | lowest > floor × `shrink_above`, but no answer to a request sent after the last latency cut, or those answers are not | unchanged: the last cut has not shown yet |
//! | lowest between floor × `grow_below` and × `shrink_above`, after slow start | + [`PROBE_STEP`] of the limit, kept while the latency does not follow (below) |
//! | otherwise | unchanged |
//!
//! **Our own lag.** An answer's latency is also the time it waited for the pusher's own CPU: a
//! pusher that accepts a burst of messages on the same cores reads every answer late, and the
//! window's lowest latency rises with no queue upstream. At 100 ± 50 ms the first windows of a
//! 30,000-message benchmark run rise above 1.5 × the floor while the pusher accepts the
//! messages; a back-off there ends slow start, and the limit then climbs by eighths. Part of
//! that rise is the pusher's own lag (9 to 43 ms in the traces of docs/performance.md, "Eighth
//! round"); the rest comes from outside the pusher's runtime and still backs off. So each
//! healthy answer also comes with the runtime's lag when its request was sent plus the lag
//! when the answer was read ([`crate::resilience::lag`]: how late a probe timer runs; the
//! request is written and the answer read by tasks that wait as long for a worker), and the
//! window keeps a second
//! lowest, of the latencies less that lag. A rise that disappears net of the lag is ours: the
//! window holds the limit, neither growing (a busy pusher gains nothing from more requests)
//! nor ending slow start. A rise that remains net of the lag is the upstream's and is cut by its
//! net size. The lag only ever excuses a back-off: it never makes the limit grow, the floor is
//! taken from the latencies as measured (a fast answer read late cannot drag it down), and the
//! error share cuts the limit whatever the lag. An upstream that queues raises the latency of
//! every answer by far more than the pusher's lag, so overload still backs off.
//!
//! **Probing in the band.** A window whose lowest latency sits between the two thresholds
//! used to hold the limit. But latency can rise for a while for reasons that have nothing to
//! do with how many requests are in flight: in the benchmark at 50 ± 25 ms, the stand-in
//! WeChat shares the two cores with a pusher that accepts 30,000 messages, and its answers
//! came 1.3 × the floor late until the accepting was over. A cut made at the start of that
//! rise then held the limit at 792 instead of 1,024 for 0.9 s, with the latency just as high
//! at 792 (docs/performance.md, "Eleventh round"). So, after slow start, a window in the band
//! grows the limit by [`PROBE_STEP`] and remembers the window's lowest latency. The answers
//! to requests sent after the growth tell whether it cost anything: when their lowest is
//! within half the step of the one before (the latency did not follow the limit: the rise
//! was not a queue of ours), the next band window grows again; when it followed, the growth
//! is undone and no probe is made for [`PROBE_REST`] band windows. An upstream that queues
//! raises its latency in proportion to the requests beyond its capacity (an eighth more
//! requests, an eighth more latency), so the probe is undone there, and the limit still
//! settles near the capacity.
//!
//! **One cut per round trip.** A cut shows only in the answers to requests sent after it: the
//! others queued under the old limit. So after a latency cut, the next cut looks only at the
//! answers to requests sent after it (each answer's send time is its arrival less its
//! latency), and a window without such answers holds. Before, one queue at 100 ± 50 ms was cut
//! in five windows in a row, from 1,024 to 56, before the first cut could show, and the climb
//! back by eighths took over a second (docs/performance.md, "Eighth round"). The error-share cut
//! is not paced this way.
//!
//! Slow start, as in TCP: a fresh pusher doubles its limit each healthy window, so a short
//! burst is not spent climbing from `initial` one eighth at a time; the first window that
//! backs off (latency or errors) ends it for good. It starts at 64, the old fixed default:
//! from 16, the four more doublings to 1,024 took about 0.2 s of a 3.5 s burst at 100 ms, spent
//! at a fraction of the rate (a simulation of the limit at 100 ± 50 ms: 0.86 × a fixed 1,024's
//! rate from 16, 0.91 × from 64; against an upstream that serves 32 at once, the same rate from
//! either start).
//!
//! After errors, slow start again, as TCP does after a timeout: the first window that cuts
//! the limit for errors remembers where to come back to, one cut below the limit before the
//! errors. When answers are healthy again the limit doubles each window up to that mark, then
//! grows by eighths. Errors that last without opening the breaker (more than a quarter but
//! less than half of the answers failing, for seconds) cut the limit window after window down
//! to `min_limit`; without the mark, the limit took some 30 windows (1.5 s at 50 ms) to climb
//! back from there, with it about 7. A window that backs off for latency forgets the mark. A
//! single cut for errors (an overloaded upstream) lands on the mark itself, so the limit goes
//! on by eighths as before.
//!
//! **An outage.** When WeChat goes away, the requests in flight fail, and the windows cut the
//! limit for errors until the circuit breaker opens (from about 500 to 44–82 in the benchmark's
//! outage). Then no request is sent, and the limit used to wait there: the backlog left, once
//! WeChat was back, at a limit of 50–130 while it needed several hundred. An outage
//! (connections refused, timeouts, 5xx on every request) says nothing about how many requests
//! WeChat takes once it is back. So the breaker's opening ([`AdaptiveLimit::breaker_opened`])
//! puts the limit back to where it was before the outage: the highest limit of the last
//! [`RECALL_WINDOWS`] windows, or before the first cut of the run of error cuts that led to the
//! opening, whichever is higher. The last windows count whatever cut them: at an outage's
//! start, on a busy machine, latency cut the limit as often as errors did (in one run from 73
//! to 4 in a second, with no error cut). Failures of requests sent before the opening (in
//! flight as WeChat went away) are not counted any more; failures of requests sent after it
//! (a failed probe) still cut. Once the breaker closes, the limit grows from there by eighths,
//! and latency may cut it as always: if the upstream cannot take the old limit any more, the
//! first round trips show it. The first window after the close often rose above the floor in
//! the benchmark (its answers come on new connections, with the whole backlog pulled in at
//! once): the first latency cut after an opening keeps the limit from before the outage as
//! the mark, so the next healthy windows double back to it; a second cut forgets it.
//!
//! The limit stays within `[min_limit, max_limit]`. Requests stuck far beyond the observed
//! latency stop counting against the limit: the caller releases their slot after
//! [`crate::resilience::latency::LatencyTracker::stuck_after`] and records no sample for them.

use std::time::{Duration, Instant};

/// Windows whose lowest mean is the latency floor.
pub const FLOOR_WINDOWS: usize = 64;

/// Windows whose highest limit the circuit breaker's opening brings back (about a second at
/// 50 ms a window): the limit from before the cuts at an outage's start.
pub const RECALL_WINDOWS: usize = 16;

/// A probe in the band grows the limit by this share of it.
pub const PROBE_STEP: f64 = 0.125;

/// Windows in the band without a probe after one whose growth the latency followed.
pub const PROBE_REST: u32 = 8;

/// A growth made in the band (see the module's doc), waiting for the answers to requests sent
/// after it.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// When the limit grew.
    at: Instant,
    /// The limit before.
    before: f64,
    /// The lowest latency before.
    base: Duration,
}

/// How one sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// WeChat answered (any errcode but -1).
    Ok,
    /// Timeout, transport error, HTTP 5xx or errcode -1: a sign of overload.
    Failed,
}

/// The limiter's tuning. [`Default`] is what the pusher uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSettings {
    /// The lowest limit.
    pub min_limit: u32,
    /// The ceiling (`concurrency.maxInFlight`).
    pub max_limit: u32,
    /// The limit to start from (clamped to the ceiling).
    pub initial: u32,
    /// Shortest window.
    pub window: Duration,
    /// Fewest samples in a window.
    pub min_samples: u32,
    /// Grow while the window's lowest latency is at most floor × this.
    pub grow_below: f64,
    /// Shrink when the window's lowest latency is above floor × this.
    pub shrink_above: f64,
    /// Share of failed samples in a window above which the limit is cut.
    pub max_error_share: f64,
    /// The cut after too many failures.
    pub backoff: f64,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        Self {
            min_limit: 2,
            max_limit: 1024,
            initial: 64,
            window: Duration::from_millis(50),
            min_samples: 16,
            grow_below: 1.2,
            shrink_above: 1.5,
            max_error_share: 0.25,
            backoff: 0.7,
        }
    }
}

/// The adaptive limit.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    settings: AdaptiveSettings,
    limit: f64,
    window_start: Option<Instant>,
    samples: u32,
    failed: u32,
    lowest: Duration,
    /// The window's lowest latency less the runtime's lag when each request was sent and its
    /// answer read.
    lowest_net: Duration,
    /// The same two lowests, of the answers to requests sent after the last latency cut.
    fresh_lowest: Duration,
    fresh_net: Duration,
    /// When the limit was last cut for latency.
    cut_at: Option<Instant>,
    /// A growth in the band waiting to show, and the lowest latency of the answers to requests
    /// sent after it (this window).
    probe: Option<Probe>,
    probe_lowest: Duration,
    /// Band windows left before the next probe.
    probe_rest: u32,
    /// Windows whose rise the runtime's lag explained (held instead of cut).
    excused: u64,
    /// Most requests in flight during the window (was the limit used?).
    peak_in_flight: u32,
    /// Lowest latencies of the last windows.
    means: [Duration; FLOOR_WINDOWS],
    filled: usize,
    next: usize,
    /// Doubling while no window has backed off yet.
    slow_start: bool,
    /// Where to double back up to after windows cut the limit for errors (0: none).
    recover_to: f64,
    /// The limit before the first of those cuts (0: none): where the breaker's opening puts
    /// the limit back.
    before_errors: f64,
    /// When the circuit breaker last opened: failures of requests sent before it are not
    /// counted (they were in flight when WeChat went away).
    opened_at: Option<Instant>,
    /// Set by the breaker's opening: the next latency cut keeps the mark to double back to.
    outage_mark: bool,
    /// The limit in force during each of the last windows.
    recent: [f64; RECALL_WINDOWS],
    recent_next: usize,
}

impl AdaptiveLimit {
    /// A limiter starting at `settings.initial`.
    pub fn new(settings: AdaptiveSettings) -> Self {
        let max = settings.max_limit.max(1);
        let min = settings.min_limit.clamp(1, max);
        let settings = AdaptiveSettings {
            min_limit: min,
            max_limit: max,
            ..settings
        };
        Self {
            limit: f64::from(settings.initial.clamp(min, max)),
            settings,
            window_start: None,
            samples: 0,
            failed: 0,
            lowest: Duration::MAX,
            lowest_net: Duration::MAX,
            fresh_lowest: Duration::MAX,
            fresh_net: Duration::MAX,
            cut_at: None,
            probe: None,
            probe_lowest: Duration::MAX,
            probe_rest: 0,
            excused: 0,
            peak_in_flight: 0,
            means: [Duration::ZERO; FLOOR_WINDOWS],
            filled: 0,
            next: 0,
            slow_start: true,
            recover_to: 0.0,
            before_errors: 0.0,
            opened_at: None,
            outage_mark: false,
            recent: [0.0; RECALL_WINDOWS],
            recent_next: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        // The limit is kept within [min, max], both u32.
        self.limit.round().clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// The latency floor (lowest latency of the recent windows), once a window has closed.
    pub fn floor(&self) -> Option<Duration> {
        self.means[..self.filled].iter().min().copied()
    }

    /// Windows so far whose rise in latency the pusher's own lag explained.
    pub fn excused(&self) -> u64 {
        self.excused
    }

    /// Records one answered request: its latency, how it ended, how many requests were in
    /// flight when it was sent, and the runtime's lag when it was sent plus when its answer was
    /// read ([`crate::resilience::lag`]). Returns the new limit when the window closed and it
    /// changed.
    pub fn record(
        &mut self,
        now: Instant,
        latency: Duration,
        sample: Sample,
        in_flight: u32,
        own_lag: Duration,
    ) -> Option<u32> {
        let sent = now.checked_sub(latency);
        if sample == Sample::Failed
            && let (Some(opened), Some(sent)) = (self.opened_at, sent)
            && sent < opened
        {
            // In flight when the breaker opened: the outage it belongs to is known already.
            return None;
        }
        let start = *self.window_start.get_or_insert(now);
        self.samples += 1;
        // Failed answers (connection refused, errcode -1) come back fast and would drag the
        // floor down: only healthy answers count for the window's lowest latency.
        if sample == Sample::Failed {
            self.failed += 1;
        } else {
            self.lowest = self.lowest.min(latency);
            self.lowest_net = self.lowest_net.min(latency.saturating_sub(own_lag));
            if self
                .cut_at
                .is_none_or(|cut| sent.is_none_or(|sent| sent >= cut))
            {
                self.fresh_lowest = self.fresh_lowest.min(latency);
                self.fresh_net = self.fresh_net.min(latency.saturating_sub(own_lag));
            }
            if let (Some(probe), Some(sent)) = (self.probe, sent)
                && sent >= probe.at
            {
                self.probe_lowest = self.probe_lowest.min(latency);
            }
        }
        self.peak_in_flight = self.peak_in_flight.max(in_flight);
        if self.samples < self.settings.min_samples
            || now.saturating_duration_since(start) < self.settings.window
        {
            return None;
        }
        let before = self.limit();
        self.close_window(now);
        self.window_start = Some(now);
        let after = self.limit();
        (after != before).then_some(after)
    }

    /// The circuit breaker opened at `now`: WeChat is away (refused connections, timeouts or
    /// 5xx on every request). That says nothing about how many requests it takes once it is
    /// back, so the limit goes back to where it was before the run of error cuts that led to
    /// the opening, and failures of requests sent before `now` are not counted any more.
    /// Returns the new limit when it changed.
    pub fn breaker_opened(&mut self, now: Instant) -> Option<u32> {
        let before = self.limit();
        self.opened_at = Some(now);
        let recalled = self
            .recent
            .iter()
            .copied()
            .fold(self.before_errors, f64::max);
        self.limit = self.limit.max(recalled);
        // The mark to double back to: growth from here (by eighths) forgets it, the first
        // latency cut after the opening keeps it, and a new run of error cuts (after a failed
        // probe) starts from here.
        self.recover_to = self.limit;
        self.before_errors = self.limit;
        self.outage_mark = true;
        self.probe = None;
        // Recalled once: a later opening recalls the windows after this one.
        self.recent = [0.0; RECALL_WINDOWS];
        // The window under way mixes answers from before the opening: start a fresh one.
        self.window_start = None;
        self.clear_window();
        self.clamp();
        let after = self.limit();
        (after != before).then_some(after)
    }

    fn close_window(&mut self, now: Instant) {
        let s = self.settings;
        self.recent[self.recent_next] = self.limit;
        self.recent_next = (self.recent_next + 1) % RECALL_WINDOWS;
        let mean = self.lowest;
        let net = self.lowest_net;
        let (fresh, fresh_net) = (self.fresh_lowest, self.fresh_net);
        let probed = self.probe_lowest;
        let error_share = f64::from(self.failed) / f64::from(self.samples.max(1));
        let used = f64::from(self.peak_in_flight) >= self.limit * 0.5;
        self.clear_window();
        if error_share > s.max_error_share {
            // The first cut of a run of them remembers where the limit was, and where to come
            // back to.
            if self.recover_to == 0.0 {
                self.before_errors = self.limit;
                self.recover_to = self.limit * s.backoff;
            }
            self.limit *= s.backoff;
            self.slow_start = false;
            self.probe = None;
        } else if mean != Duration::MAX {
            // Only windows of mostly healthy answers set the floor, from their healthy answers.
            self.means[self.next] = mean;
            self.next = (self.next + 1) % FLOOR_WINDOWS;
            self.filled = (self.filled + 1).min(FLOOR_WINDOWS);
            let floor = self.floor().unwrap_or(mean).as_secs_f64().max(1e-6);
            let ratio = mean.as_secs_f64() / floor;
            tracing::trace!(
                limit = self.limit,
                floor,
                lowest = mean.as_secs_f64(),
                net = net.as_secs_f64(),
                used,
                slow_start = self.slow_start,
                "adaptive window"
            );
            if ratio <= s.grow_below {
                self.probe = None;
                self.probe_rest = 0;
                if used {
                    if self.slow_start {
                        self.limit *= 2.0;
                    } else if self.limit < self.recover_to {
                        self.limit = (self.limit * 2.0).min(self.recover_to);
                    } else {
                        self.recover_to = 0.0;
                        self.before_errors = 0.0;
                        self.outage_mark = false;
                        self.limit += (self.limit / 8.0).max(1.0);
                    }
                }
            } else if ratio > s.shrink_above && fresh != Duration::MAX {
                // Only answers to requests sent after the last cut show whether it was enough:
                // the others queued under the old limit. Without them the window holds.
                let fresh_ratio = fresh.as_secs_f64() / floor;
                // The part of the rise our own lag does not explain.
                let net_ratio = fresh_net.as_secs_f64() / floor;
                if fresh_ratio <= s.shrink_above {
                    // The last cut is showing: wait for the queue to drain.
                } else if net_ratio > s.shrink_above {
                    self.limit *= (s.grow_below / net_ratio).max(0.5);
                    self.slow_start = false;
                    if self.outage_mark {
                        // The first answers after an outage come on new connections, with
                        // the backlog pulled in at once: one such cut does not lose the limit
                        // from before the outage, the next healthy windows double back to it.
                        self.outage_mark = false;
                    } else {
                        self.recover_to = 0.0;
                        self.before_errors = 0.0;
                    }
                    self.cut_at = Some(now);
                    self.probe = None;
                } else {
                    self.excused += 1;
                    tracing::debug!(
                        ratio,
                        net_ratio,
                        limit = self.limit,
                        "latency rise explained by the runtime's own lag: limit held"
                    );
                }
            } else if ratio <= s.shrink_above && used && !self.slow_start {
                self.probe_in_band(now, mean, probed);
            }
        }
        self.clamp();
    }

    /// A window in the band (latency above `grow_below`, not above `shrink_above` × the
    /// floor), after slow start: grows the limit by [`PROBE_STEP`] and keeps the growth while
    /// the latency does not follow it (see the module's doc).
    fn probe_in_band(&mut self, now: Instant, lowest: Duration, probed: Duration) {
        match self.probe {
            // The growth has not shown yet: no answer to a request sent after it.
            Some(_) if probed == Duration::MAX => {}
            Some(probe) => {
                let followed =
                    probed.as_secs_f64() > probe.base.as_secs_f64() * (1.0 + PROBE_STEP / 2.0);
                if followed {
                    self.limit = probe.before;
                    self.probe = None;
                    self.probe_rest = PROBE_REST;
                } else {
                    self.grow_probe(now, probed);
                }
            }
            None if self.probe_rest > 0 => self.probe_rest -= 1,
            None => self.grow_probe(now, lowest),
        }
    }

    fn grow_probe(&mut self, now: Instant, base: Duration) {
        if self.limit >= f64::from(self.settings.max_limit) {
            self.probe = None;
            return;
        }
        self.probe = Some(Probe {
            at: now,
            before: self.limit,
            base,
        });
        self.limit += (self.limit * PROBE_STEP).max(1.0);
    }

    /// Empties the figures gathered over a window.
    fn clear_window(&mut self) {
        self.samples = 0;
        self.failed = 0;
        self.lowest = Duration::MAX;
        self.lowest_net = Duration::MAX;
        self.fresh_lowest = Duration::MAX;
        self.fresh_net = Duration::MAX;
        self.probe_lowest = Duration::MAX;
        self.peak_in_flight = 0;
    }

    /// Keeps the limit within `[min_limit, max_limit]`.
    fn clamp(&mut self) {
        let s = self.settings;
        self.limit = self
            .limit
            .clamp(f64::from(s.min_limit), f64::from(s.max_limit));
    }
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
