//! How many requests go to WeChat at once, and hedged sends: the I/O side of
//! [`crate::resilience::adaptive`] and [`crate::resilience::latency`].
//!
//! Every send request takes a slot of the concurrency gate (a semaphore whose size is the
//! adaptive limit, or `concurrency.maxInFlight` when `concurrency.adaptive` is off). Its answer
//! feeds the latency tracker and the limiter. A request that has not answered after
//! [`LatencyTracker::hedge_after`] (a multiple of the observed p99) gives its slot back (a
//! request stuck far beyond the observed latency stops counting against the limit) and, while
//! the hedge budget (5 % of sends) allows, a second request with the **same body** (so the
//! same `client_msg_id`, which WeChat de-duplicates) is sent; the first answer wins and the
//! other request is dropped. The response-header timeout is derived from the observed p99,
//! bounded by the configured one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::{HttpError, HttpResponse};
use crate::metrics::Metrics;
use crate::policy::Concurrency;
use crate::resilience::adaptive::{AdaptiveLimit, AdaptiveSettings, Sample};
use crate::resilience::lag::RuntimeLag;
use crate::resilience::latency::{HedgeBudget, LatencyTracker};

/// Long-run share of sends that may be hedged.
pub const HEDGE_SHARE: f64 = 0.05;
/// Hedges allowed at once when the budget is full.
pub const HEDGE_BURST: f64 = 10.0;

#[derive(Debug)]
struct Learnt {
    limiter: Option<AdaptiveLimit>,
    latency: LatencyTracker,
    budget: HedgeBudget,
    /// Permits to forget as they come back (the limit shrank below the permits in use).
    debt: u32,
    limit: u32,
}

/// The concurrency gate, latency tracker and hedge budget of one channel.
#[derive(Debug)]
pub struct Flow {
    permits: Arc<Semaphore>,
    learnt: Mutex<Learnt>,
    /// Requests holding a slot.
    counted: Arc<AtomicU32>,
    /// How late the runtime runs (probed only with the adaptive limit, while requests are in
    /// flight): the part of a latency that is our own CPU's, not WeChat's.
    lag: Option<Arc<RuntimeLag>>,
    metrics: Arc<Metrics>,
    hedging: bool,
    /// Cancelled when the pusher stops: requests still waiting for a slot are not sent.
    closing: tokio_util::sync::CancellationToken,
}

/// A slot of the gate, held by one request. Dropped unreleased (a hedge that lost the race
/// is dropped with its future), it hands its permit back; a pending debt is paid by the next
/// release.
#[derive(Debug)]
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    counted: Arc<AtomicU32>,
    started: Instant,
    in_flight: u32,
    /// The runtime's lag when the slot was taken: the request is written by a task that waits
    /// as long for a worker ([`RuntimeLag`]).
    lag_at_send: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.counted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Flow {
    /// A gate for `concurrency`: adaptive (starting low, `maxInFlight` the ceiling) or fixed.
    pub fn new(concurrency: &Concurrency, metrics: Arc<Metrics>) -> Self {
        let max = concurrency.max_in_flight.max(1);
        let limiter = concurrency.adaptive.then(|| {
            AdaptiveLimit::new(AdaptiveSettings {
                max_limit: max,
                ..AdaptiveSettings::default()
            })
        });
        let limit = limiter.as_ref().map_or(max, AdaptiveLimit::limit);
        metrics.concurrency_limit.set(i64::from(limit));
        let counted = Arc::new(AtomicU32::new(0));
        let lag = limiter.is_some().then(|| {
            let lag = Arc::new(RuntimeLag::default());
            RuntimeLag::spawn(&lag, Arc::clone(&counted));
            lag
        });
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            learnt: Mutex::new(Learnt {
                limiter,
                latency: LatencyTracker::default(),
                budget: HedgeBudget::new(HEDGE_SHARE, HEDGE_BURST),
                debt: 0,
                limit,
            }),
            counted,
            lag,
            metrics,
            hedging: true,
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The same without hedges (for tests that count attempts).
    pub fn without_hedging(mut self) -> Self {
        self.hedging = false;
        self
    }

    /// Starts no more requests: those waiting for a slot end with [`HttpError::Stopping`],
    /// those under way go on. Called when the pusher stops.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.learnt.lock().limit
    }

    /// The response-header timeout to use now: derived from the observed latency, never
    /// above `configured`.
    pub fn header_timeout(&self, configured: Duration) -> Duration {
        self.learnt.lock().latency.header_timeout(configured)
    }

    async fn acquire(&self) -> Slot {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        let in_flight = self.counted.fetch_add(1, Ordering::AcqRel) + 1;
        let started = Instant::now();
        Slot {
            permit,
            counted: Arc::clone(&self.counted),
            started,
            in_flight,
            lag_at_send: self.lag.as_ref().map_or(Duration::ZERO, |l| l.at(started)),
        }
    }

    /// Gives a slot back without a sample (a stuck request, or one that lost to its hedge).
    fn release(&self, slot: &mut Slot) {
        if let Some(permit) = slot.permit.take() {
            self.counted.fetch_sub(1, Ordering::AcqRel);
            let mut learnt = self.learnt.lock();
            if learnt.debt > 0 {
                learnt.debt -= 1;
                permit.forget();
            }
        }
    }

    /// Records a request's answer and gives its slot back.
    fn finish(&self, mut slot: Slot, result: &Result<HttpResponse, HttpError>) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(slot.started);
        // Both ends of the latency wait for our own CPU: the request's write when it was sent,
        // the answer's read now.
        let own_lag = slot.lag_at_send + self.lag.as_ref().map_or(Duration::ZERO, |l| l.at(now));
        let counted = slot.permit.is_some();
        self.release(&mut slot);
        let sample = match result {
            Ok(r) if r.status < 500 => Sample::Ok,
            // Refused or unresolvable: WeChat is away, not overloaded (the breaker deals with
            // it); cutting the limit would only slow the recovery down.
            Err(e) if e.never_sent() => return,
            _ => Sample::Failed,
        };
        let mut learnt = self.learnt.lock();
        if result.is_ok() {
            learnt.latency.record(latency);
        }
        if !counted {
            return;
        }
        let Some(limiter) = learnt.limiter.as_mut() else {
            return;
        };
        if let Some(new) = limiter.record(now, latency, sample, slot.in_flight, own_lag) {
            self.resize(learnt, new);
        }
    }

    /// The circuit breaker opened: the adaptive limit goes back to where it was before the
    /// errors that led to it ([`AdaptiveLimit::breaker_opened`]).
    pub fn breaker_opened(&self) {
        let mut learnt = self.learnt.lock();
        let Some(limiter) = learnt.limiter.as_mut() else {
            return;
        };
        if let Some(new) = limiter.breaker_opened(Instant::now()) {
            self.resize(learnt, new);
        }
    }

    /// Sets the gate's size to `new`: permits added, or forgotten as they come back.
    fn resize(&self, mut learnt: parking_lot::MutexGuard<'_, Learnt>, new: u32) {
        let old = learnt.limit;
        learnt.limit = new;
        if new > old {
            let mut grow = new - old;
            let paid = grow.min(learnt.debt);
            learnt.debt -= paid;
            grow -= paid;
            self.permits.add_permits(grow as usize);
        } else {
            let shrink = old - new;
            let forgotten =
                u32::try_from(self.permits.forget_permits(shrink as usize)).unwrap_or(0);
            learnt.debt += shrink.saturating_sub(forgotten);
        }
        drop(learnt);
        self.metrics.concurrency_limit.set(i64::from(new));
    }

    /// Sends one request through the gate, hedging it when it is slow. `call` performs the
    /// request with the response-header timeout it is given; it is called a second time, with
    /// the same body, for a hedge. Returns the winning answer and whether a hedge was sent.
    pub async fn send<F, Fut>(
        &self,
        configured_header_timeout: Duration,
        call: F,
    ) -> (Result<HttpResponse, HttpError>, bool)
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Result<HttpResponse, HttpError>>,
    {
        let (header_timeout, hedge_after) = {
            let mut learnt = self.learnt.lock();
            learnt.budget.on_send();
            (
                learnt.latency.header_timeout(configured_header_timeout),
                learnt.latency.hedge_after().filter(|_| self.hedging),
            )
        };
        let mut first_slot = tokio::select! {
            biased;
            () = self.closing.cancelled() => return (Err(HttpError::Stopping), false),
            slot = self.acquire() => slot,
        };
        let first = call(header_timeout);
        tokio::pin!(first);
        let Some(after) = hedge_after else {
            let result = first.await;
            self.finish(first_slot, &result);
            return (result, false);
        };
        tokio::select! {
            biased;
            result = &mut first => {
                self.finish(first_slot, &result);
                return (result, false);
            }
            () = tokio::time::sleep(after) => {}
        }
        // Stuck far beyond the observed latency: stop counting it against the limit.
        self.release(&mut first_slot);
        if !self.learnt.lock().budget.try_hedge() {
            let result = first.await;
            self.finish(first_slot, &result);
            return (result, false);
        }
        self.metrics.hedged_sends.inc();
        let second = async {
            let slot = self.acquire().await;
            let result = call(header_timeout).await;
            (slot, result)
        };
        tokio::pin!(second);
        tokio::select! {
            result = &mut first => {
                if result.is_ok() {
                    self.finish(first_slot, &result);
                    return (result, true);
                }
                let (slot, second_result) = second.await;
                self.finish(slot, &second_result);
                self.finish(first_slot, &result);
                (second_result, true)
            }
            (slot, second_result) = &mut second => {
                if second_result.is_ok() {
                    self.finish(slot, &second_result);
                    return (second_result, true);
                }
                self.finish(slot, &second_result);
                let result = first.await;
                self.finish(first_slot, &result);
                (result, true)
            }
        }
    }
}
