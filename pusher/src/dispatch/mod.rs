//! The dispatcher: a bounded pool of workers (`concurrency.maxInFlight`) that lease due
//! messages from the store, make one attempt each through [`WeChatSender::send`], and record
//! what happens next: delivered, a retry at a backoff time, the dead-letter set, or a requeue
//! without burning the retry budget (channel paused, circuit open).
//!
//! The decision is the pure function [`next_state`] (`next.rs`); a hold on sending and its
//! cause are `hold.rs`; the pool, its leases and its I/O stay here ([`Dispatcher::run`]).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use jiff::Timestamp;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock;
use crate::metrics::{Metrics, Outcome};
use crate::policy::Retry;
use crate::ratelog::LogLimiter;
use crate::send::ErrorKind;
use crate::store::{Leased, Store};
use crate::wechat::{SendOutcome, SendRequest, WeChatSender};

mod hold;
mod next;

pub use hold::{DispatchState, Hold, HoldCause};
use next::outcome_of;
pub use next::{Next, before_attempt, delayed_by_outage, next_state, next_state_of};

/// How long one lease call waits for work before looking at shutdown and pauses again.
const LEASE_WAIT: Duration = Duration::from_secs(1);
/// How often the dispatcher looks at a store that cannot be written (it leases nothing
/// meanwhile: an attempt whose outcome cannot be recorded would only be repeated).
const STORE_WAIT: Duration = Duration::from_millis(250);

/// Retries delayed by an outage remembered at most, to pull them in when the breaker closes.
const MAX_OUTAGE_DELAYED: usize = 200_000;
/// How long after the breaker closed the retries of attempts that were still in flight then
/// are pulled in as they are recorded, and how often.
const STRAGGLERS_FOR: Duration = Duration::from_secs(5);
const STRAGGLERS_EVERY: Duration = Duration::from_millis(100);
/// An attempt that ended: its lease's slot, the message's next state, and whether the outcome
/// was a sign of an outage ([`delayed_by_outage`]).
#[derive(Debug)]
struct Ended {
    slot: u64,
    next: Next,
    outage: bool,
}

/// Messages worked on at once, per slot of the concurrency limit (`maxInFlight`, or the
/// adaptive limit below it). The HTTP requests in flight are held to the limit by the sender's
/// gate; the pool is deeper so that the store's writes around a send (the "attempt started"
/// commit before it, the outcome after) overlap other messages' sends instead of idling the
/// gate.
pub const PIPELINE: usize = 4;

/// How long the dispatcher waits before looking again when its pool is as deep as the
/// concurrency limit allows.
const DEPTH_WAIT: Duration = Duration::from_millis(1);

/// Outcomes written in one store operation at most.
const MAX_OUTCOMES_PER_WRITE: usize = 4096;

/// The least time the outcomes of the last attempts get to be written at shutdown, even when
/// the drain's time ran out (the attempts were sent: an unwritten outcome means a second send
/// after the restart).
const LAST_WRITE_WAIT: Duration = Duration::from_millis(500);

/// The worker pool.
#[derive(Debug)]
pub struct Dispatcher<S> {
    store: S,
    sender: Arc<WeChatSender>,
    metrics: Arc<Metrics>,
    policy: Retry,
    workers: usize,
    state: Arc<DispatchState>,
    logs: LogLimiter,
    /// `(schedule slot, id)` of retries delayed by an outage ([`delayed_by_outage`]).
    outage_delayed: Mutex<Vec<(u64, crate::message::MessageId)>>,
    /// Attempts that ended, to the one task that writes their outcomes
    /// ([`Dispatcher::write_outcomes`]).
    ended: mpsc::UnboundedSender<Ended>,
    /// Its receiving end, taken by [`Dispatcher::run`].
    ended_rx: Mutex<Option<mpsc::UnboundedReceiver<Ended>>>,
}

impl<S: Store + Clone> Dispatcher<S> {
    /// A pool of `max_in_flight` × [`PIPELINE`] workers; at most `max_in_flight` of them send
    /// at once.
    pub fn new(
        store: S,
        sender: Arc<WeChatSender>,
        metrics: Arc<Metrics>,
        policy: Retry,
        max_in_flight: usize,
        state: Arc<DispatchState>,
    ) -> Self {
        let (ended, ended_rx) = mpsc::unbounded_channel();
        Self {
            store,
            sender,
            metrics,
            policy,
            workers: max_in_flight.max(1).saturating_mul(PIPELINE),
            state,
            logs: LogLimiter::default(),
            outage_delayed: Mutex::new(Vec::new()),
            ended,
            ended_rx: Mutex::new(Some(ended_rx)),
        }
    }

    /// The one writer of outcomes: every attempt that ended since its last write goes into
    /// the next one (one store operation and one answer, so about one batch per commit of the
    /// store), while the attempts go on. After `done`, writes what is left and returns.
    async fn write_outcomes(
        &self,
        mut rx: mpsc::UnboundedReceiver<Ended>,
        done: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                biased;
                e = rx.recv() => e,
                () = done.cancelled() => None,
            };
            let last = first.is_none();
            let mut ended: Vec<Ended> = first.into_iter().collect();
            while ended.len() < MAX_OUTCOMES_PER_WRITE {
                match rx.try_recv() {
                    Ok(e) => ended.push(e),
                    Err(_) => break,
                }
            }
            if !ended.is_empty() {
                self.record_outcomes(ended).await;
            } else if last {
                return;
            }
        }
    }

    /// Waits for the breaker to close again, then makes the retries an outage delayed due now
    /// (and lifts the breaker's hold), so the backlog leaves as soon as WeChat is back.
    async fn pull_in_when_closed(&self, stop: CancellationToken) {
        let mut closings = self.sender.circuit_closings();
        loop {
            tokio::select! {
                changed = closings.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            self.state.clear_circuit_hold();
            let entries = std::mem::take(&mut *self.outage_delayed.lock());
            if entries.is_empty() {
                continue;
            }
            match self.store.pull_in(entries, Timestamp::now()).await {
                Ok(moved) => tracing::info!(moved, "circuit closed: delayed retries pulled in"),
                Err(e) => tracing::warn!(error = %e, "cannot pull in delayed retries"),
            }
            // Attempts still in flight when it closed record their delays afterwards (with a
            // deep pool, hundreds of them): keep pulling those in for a while, unless the
            // channel is held again (the breaker opened again, or a pause).
            let until = tokio::time::Instant::now() + STRAGGLERS_FOR;
            while tokio::time::Instant::now() < until && self.state.hold().is_none() {
                tokio::select! {
                    () = tokio::time::sleep(STRAGGLERS_EVERY) => {}
                    () = stop.cancelled() => return,
                }
                let late = std::mem::take(&mut *self.outage_delayed.lock());
                if late.is_empty() {
                    continue;
                }
                if let Err(e) = self.store.pull_in(late, Timestamp::now()).await {
                    tracing::warn!(error = %e, "cannot pull in delayed retries");
                }
            }
        }
    }

    fn remember_outage_delay(&self, slot: u64, id: crate::message::MessageId) {
        let mut delayed = self.outage_delayed.lock();
        if delayed.len() >= MAX_OUTAGE_DELAYED {
            let now = crate::store::millis(Timestamp::now());
            delayed.retain(|(at, _)| *at > now);
        }
        if delayed.len() < MAX_OUTAGE_DELAYED {
            delayed.push((slot, id));
        }
    }

    /// Runs until `stop` is cancelled, then lets attempts in flight finish for at most
    /// `drain`; any still running are abandoned (their messages stay durable and are due again
    /// at the next start).
    pub async fn run(self, stop: CancellationToken, drain: Duration) {
        let permits = Arc::new(Semaphore::new(self.workers));
        let mut tasks = JoinSet::new();
        let this = Arc::new(self);
        let puller = tokio::spawn({
            let this = Arc::clone(&this);
            let stop = stop.clone();
            async move { this.pull_in_when_closed(stop).await }
        });
        let written = CancellationToken::new();
        let writer = this.ended_rx.lock().take().map(|rx| {
            let this = Arc::clone(&this);
            let done = written.clone();
            tokio::spawn(async move { this.write_outcomes(rx, done).await })
        });
        loop {
            while tasks.try_join_next().is_some() {}
            // `biased`: once `stop` is cancelled no new attempt starts, even when a permit or a
            // lease is ready at the same moment (an unbiased select picks at random, and a
            // drain then went on sending messages that should have waited for the next start).
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if let Some(hold) = this.state.hold() {
                let wait = hold
                    .until
                    .duration_since(Timestamp::now())
                    .unsigned_abs()
                    .min(Duration::from_secs(60));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
            if !this.store.is_healthy() {
                drop(permit);
                tokio::select! {
                    () = tokio::time::sleep(STORE_WAIT) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
            // The pool works on at most PIPELINE × the current concurrency limit: deep enough to
            // keep the gate busy, and no deeper, so that a low limit (WeChat away or slow) does
            // not hold thousands of leased messages in memory under a high ceiling.
            let depth = (this.sender.flow().limit() as usize)
                .saturating_mul(PIPELINE)
                .max(PIPELINE);
            let in_work = this.workers.saturating_sub(permits.available_permits() + 1);
            if in_work >= depth {
                drop(permit);
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(DEPTH_WAIT) => {}
                }
                continue;
            }
            let room = (permits.available_permits() + 1).min(depth - in_work);
            let leased = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                r = this.store.lease(room, LEASE_WAIT) => r,
            };
            let leased = match leased {
                Ok(l) => l,
                Err(e) => {
                    if let Some(held) = this.logs.check("lease") {
                        tracing::warn!(error = %e, held_back = held, "cannot lease messages");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = stop.cancelled() => break,
                    }
                    continue;
                }
            };
            let mut first = Some(permit);
            let mut batch = Vec::with_capacity(leased.len());
            for lease in leased {
                let permit = match first.take() {
                    Some(p) => p,
                    // Only this loop takes permits, so the ones counted above are still free
                    // and this does not wait.
                    None => match Arc::clone(&permits).acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                batch.push((lease, permit));
            }
            if !batch.is_empty() {
                tasks.spawn(Arc::clone(&this).attempt_batch(batch));
            }
        }
        puller.abort();
        // Leased messages still waiting for a slot of the gate are not sent: they stay due.
        this.sender.flow().close();
        tracing::info!(in_flight = tasks.len(), "dispatcher draining");
        let deadline = tokio::time::Instant::now() + drain;
        let drained = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "drain timeout: attempts still in flight are abandoned; their messages stay queued"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Every attempt has handed its outcome over by now: write what is left.
        written.cancel();
        if let Some(writer) = writer {
            let until = deadline.max(tokio::time::Instant::now() + LAST_WRITE_WAIT);
            if tokio::time::timeout_at(until, writer).await.is_err() {
                tracing::warn!(
                    "drain timeout: the last outcomes were not written; those messages stay queued"
                );
            }
        }
    }

    /// The attempts of one lease, in one task: the "attempt started" records of the messages
    /// about to be sent for the first time are written together (one commit and one answer
    /// for the lot, instead of one each), then the attempts run concurrently, and each hands
    /// its outcome to [`Dispatcher::write_outcomes`] as it ends. A message whose record could
    /// not be written is not sent (its lease went back, due after a delay).
    async fn attempt_batch(
        self: Arc<Self>,
        mut batch: Vec<(Leased, tokio::sync::OwnedSemaphorePermit)>,
    ) {
        let now = clock::now();
        let starting: Vec<usize> = batch
            .iter()
            .enumerate()
            .filter(|(_, (lease, _))| {
                lease.unrecorded.is_none()
                    && lease.record.first_attempt_at.is_none()
                    && lease.record.attempts == 0
                    && before_attempt(&lease.record, &self.policy, self.window(&lease.record), now)
                        .is_none()
            })
            .map(|(i, _)| i)
            .collect();
        let mut refused = vec![false; batch.len()];
        if !starting.is_empty() {
            for &i in &starting {
                let record = &mut batch[i].0.record;
                record.first_attempt_at = Some(now);
                record.budget_from = now;
                record.updated_at = now;
            }
            let answers = {
                let leases: Vec<&Leased> = starting.iter().map(|&i| &batch[i].0).collect();
                self.store.start_attempts(&leases, now).await
            };
            for (&i, answer) in starting.iter().zip(answers) {
                if let Err(e) = answer {
                    refused[i] = true;
                    if let Some(held) = self.logs.check("start_attempt") {
                        tracing::error!(id = %batch[i].0.record.id, error = %e, held_back = held, "cannot record an attempt's start; not sent");
                    }
                }
            }
        }
        let mut sending: FuturesUnordered<_> = batch
            .into_iter()
            .zip(refused)
            .filter(|(_, refused)| !refused)
            .map(|((lease, permit), _)| {
                let span = tracing::debug_span!("attempt", id = %lease.record.id);
                self.attempt(lease, permit, now).instrument(span)
            })
            .collect();
        while let Some(ended) = sending.next().await {
            // The writer of outcomes outlives every attempt batch (`run` stops it last).
            let _ = self.ended.send(ended);
        }
    }

    /// The provider's de-duplication window for `record`'s message.
    fn window(&self, record: &crate::message::MessageRecord) -> Duration {
        self.sender.provider().dedup_window(&record.message)
    }

    /// One attempt on a leased message, up to the decision on its next state (not yet
    /// written).
    async fn attempt(
        &self,
        mut lease: Leased,
        permit: tokio::sync::OwnedSemaphorePermit,
        now: Timestamp,
    ) -> Ended {
        let mut hold_reason = None;
        let mut outage = false;
        let known = lease.unrecorded.take();
        let next = match known.map(|r| *r) {
            // An earlier attempt's outcome could not be written: record it, do not send.
            Some(record) => {
                drop(permit);
                Next {
                    completed: record.status.is_final().then(|| outcome_of(record.status)),
                    record,
                    hold_until: None,
                }
            }
            None => {
                match before_attempt(&lease.record, &self.policy, self.window(&lease.record), now) {
                    Some(next) => {
                        drop(permit);
                        next
                    }
                    None => {
                        // A first attempt's "attempt started" record is durable by now (written by
                        // `attempt_batch`), so that a crash mid-attempt is recognised later.
                        let body = lease.record.message.send_body(&lease.record.client_msg_id);
                        // Boxed: the send's future is large, and the attempts of a lease are
                        // moved into a set of futures; this keeps each attempt small to move.
                        let outcome = Box::pin(self.sender.send(SendRequest {
                            kind: lease.record.message.kind,
                            body: &body,
                        }))
                        .await;
                        drop(permit);
                        tracing::debug!(outcome = ?outcome, "attempt finished");
                        hold_reason = match &outcome {
                            SendOutcome::Paused { error, .. } => {
                                Some((HoldCause::Paused, error.message.clone(), error.errcode))
                            }
                            SendOutcome::CircuitOpen { .. } => Some((
                                HoldCause::CircuitOpen,
                                "circuit breaker open".to_string(),
                                None,
                            )),
                            _ => None,
                        };
                        outage = delayed_by_outage(&outcome);
                        let window = self.window(&lease.record);
                        next_state_of(
                            lease.record,
                            outcome,
                            &self.policy,
                            window,
                            clock::now(),
                            rand::random::<f64>(),
                        )
                    }
                }
            }
        };
        if let Some((until, (cause, reason, errcode))) = next.hold_until.zip(hold_reason) {
            // A hold for the provider's own rate ceiling (a busy robot's next slot) is the
            // normal state of the channel, every few seconds: not worth a warning.
            let routine = next
                .record
                .last_error
                .as_ref()
                .is_some_and(|e| e.kind == ErrorKind::RateLimited);
            if self.state.set_hold(until, cause, reason.clone(), errcode) {
                if routine {
                    tracing::debug!(%until, %reason, "sending on hold for the next rate slot");
                } else {
                    tracing::warn!(%until, %reason, "sending on hold");
                }
            } else {
                tracing::debug!(%until, %reason, "sending still on hold");
            }
        }
        Ended {
            slot: lease.slot,
            next,
            outage,
        }
    }

    /// Writes the outcomes of attempts that ended, then counts them.
    async fn record_outcomes(&self, ended: Vec<Ended>) {
        let mut items = Vec::with_capacity(ended.len());
        let mut after = Vec::with_capacity(ended.len());
        for Ended { slot, next, outage } in ended {
            let completed = next.completed;
            let id = next.record.id;
            let delayed_until = next
                .record
                .next_attempt_at
                .filter(|_| outage && completed.is_none())
                .map(crate::store::due_millis);
            if let Some(outcome) = completed
                && outcome != Outcome::delivered
            {
                tracing::info!(
                    %id,
                    status = next.record.status.as_str(),
                    attempts = next.record.attempts,
                    error = ?next.record.last_error,
                    "message dead-lettered"
                );
            }
            let credit = (completed.is_some_and(|o| o != Outcome::delivered)
                && next.record.message.subscription_credit)
                .then(|| {
                    (
                        next.record.message.touser.clone(),
                        next.record.message.template_id.clone(),
                    )
                });
            after.push((
                id,
                completed,
                next.record.accepted_at,
                delayed_until,
                credit,
            ));
            items.push((slot, next.record));
        }
        let written = self.store.complete_many(items).await;
        for ((id, completed, accepted_at, delayed_until, credit), result) in
            after.into_iter().zip(written)
        {
            if result.is_ok()
                && let Some((openid, template_id)) = credit
            {
                // Never delivered: the user's consent was not used.
                if let Err(e) = self.store.add_credits(&openid, &template_id, 1).await {
                    tracing::warn!(%id, error = %e, "cannot give back a subscription credit");
                }
            }
            self.counted(id, completed, accepted_at, delayed_until, result);
        }
    }

    /// What follows an outcome's write: remembering a retry an outage delayed, the metrics,
    /// or a log line when it could not be written.
    fn counted(
        &self,
        id: crate::message::MessageId,
        completed: Option<Outcome>,
        accepted_at: Timestamp,
        delayed_until: Option<u64>,
        result: Result<(), crate::store::StoreError>,
    ) {
        match result {
            Ok(()) => {
                if let Some(slot) = delayed_until {
                    self.remember_outage_delay(slot, id);
                }
                if let Some(outcome) = completed {
                    self.metrics.complete(outcome);
                    if outcome == Outcome::delivered {
                        let latency = Timestamp::now()
                            .duration_since(accepted_at)
                            .unsigned_abs()
                            .as_secs_f64();
                        self.metrics.delivery_latency.observe(latency);
                    }
                }
            }
            Err(e) => {
                // The lease went back, due again only after a delay: the message is attempted
                // again (same client_msg_id) once the store takes writes.
                if let Some(held) = self.logs.check("complete") {
                    tracing::error!(%id, error = %e, held_back = held, "cannot record an attempt's outcome");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
