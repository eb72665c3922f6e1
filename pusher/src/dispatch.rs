//! The dispatcher: a bounded pool of workers (`concurrency.maxInFlight`) that lease due
//! messages from the store, make one attempt each through [`WeChatSender::send`], and record
//! what happens next: delivered, a retry at a backoff time, the dead-letter set, or a requeue
//! without burning the retry budget (channel paused, circuit open).
//!
//! The decision is the pure function [`next_state`]; I/O stays in [`Dispatcher::run`].

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::{self, DEDUP_WINDOW};
use crate::message::{MessageRecord, Status};
use crate::metrics::{Metrics, Outcome};
use crate::policy::{AfterWindow, Retry};
use crate::ratelog::LogLimiter;
use crate::resilience::backoff;
use crate::send::ErrorKind;
use crate::store::{Leased, Store};
use crate::wechat::{SendError, SendOutcome, SendRequest, WeChatSender};
use wxcrypto::errcode::WxCode;

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

/// Whether an attempt's outcome is a sign that WeChat is unreachable or failing (what the
/// circuit breaker counts, or the breaker itself): the retry it schedules is pulled in when the
/// breaker closes again.
pub fn delayed_by_outage(outcome: &SendOutcome) -> bool {
    match outcome {
        SendOutcome::CircuitOpen { .. } => true,
        SendOutcome::Retry { error, .. } => {
            error.errcode == Some(WxCode::SystemBusy.code()) || error.kind.is_outage()
        }
        _ => false,
    }
}

/// The result of one attempt, for the store and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Next {
    /// The message's new state.
    pub record: MessageRecord,
    /// The final outcome, when the message reached one.
    pub completed: Option<Outcome>,
    /// Hold every send until then (channel paused or circuit open).
    pub hold_until: Option<Timestamp>,
}

fn add(now: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn finish(record: &mut MessageRecord, status: Status, now: Timestamp) -> Option<Outcome> {
    record.status = status;
    record.next_attempt_at = None;
    record.finished_at = Some(now);
    record.updated_at = now;
    record.dead_letter = !matches!(status, Status::Delivered);
    Some(outcome_of(status))
}

/// The metric outcome of a final status.
fn outcome_of(status: Status) -> Outcome {
    match status {
        Status::Delivered => Outcome::delivered,
        Status::Failed => Outcome::failed,
        Status::Expired => Outcome::expired,
        Status::UnknownOutcome => Outcome::unknown_outcome,
        _ => Outcome::dead_lettered,
    }
}

/// Whether a leased message must not be attempted at all (its `expires_at`, its `maxAge` or
/// its attempts are used up, or the outcome of its first attempt is unknown and too old to
/// re-send safely), and its final state if so.
///
/// `maxAge` only runs once a message's first attempt started (the "attempt started" record,
/// `first_attempt_at`, or an attempt recorded before that record existed): it exists to keep
/// every retry inside WeChat's 10-minute `client_msg_id` window, and a message that was never
/// sent (say, queued behind a paused channel) has no earlier attempt to collide with, so it is
/// kept.
///
/// A message whose first attempt started but was never recorded (`first_attempt_at` set,
/// `attempts` 0: the pusher stopped mid-attempt) may have been delivered. Within the
/// de-duplication window it is re-sent with the same `client_msg_id` (WeChat drops the copy);
/// beyond it, it ends `unknown_outcome` unless `retry.afterWindow` is `resend`.
pub fn before_attempt(record: &MessageRecord, policy: &Retry, now: Timestamp) -> Option<Next> {
    let started = record.attempts > 0 || record.first_attempt_at.is_some();
    let unknown = record.attempts == 0
        && record
            .first_attempt_at
            .is_some_and(|at| add(at, DEDUP_WINDOW) <= now);
    let status = if unknown && policy.after_window == AfterWindow::Park {
        Status::UnknownOutcome
    } else if record.message.expires_at.is_some_and(|e| e <= now)
        || (started && add(record.budget_from, policy.max_age.get()) <= now)
    {
        Status::Expired
    } else if record.attempts >= policy.max_attempts {
        Status::DeadLettered
    } else {
        return None;
    };
    // Cloned only for a message that ends here (the common case allocates nothing).
    let mut record = record.clone();
    if status == Status::UnknownOutcome {
        record.last_error = Some(SendError {
            kind: ErrorKind::UnknownOutcome,
            errcode: None,
            message: "the first attempt started but its outcome was never recorded (the pusher \
                      stopped), and WeChat's de-duplication window has passed: not re-sent"
                .into(),
        });
    }
    if record.last_error.is_none() && status == Status::Expired {
        record.last_error = Some(SendError {
            kind: ErrorKind::Expired,
            errcode: None,
            message: "expired before it could be sent".into(),
        });
    }
    let completed = finish(&mut record, status, now);
    Some(Next {
        record,
        completed,
        hold_until: None,
    })
}

/// The message's next state after an attempt ended with `outcome`. `unit` is a uniform random
/// number in `[0, 1)` for the backoff's jitter.
pub fn next_state(
    record: &MessageRecord,
    outcome: SendOutcome,
    policy: &Retry,
    now: Timestamp,
    unit: f64,
) -> Next {
    next_state_of(record.clone(), outcome, policy, now, unit)
}

/// [`next_state`] of a record the caller gives up (the dispatcher's: no copy of it is made).
pub fn next_state_of(
    mut record: MessageRecord,
    outcome: SendOutcome,
    policy: &Retry,
    now: Timestamp,
    unit: f64,
) -> Next {
    record.updated_at = now;
    let waiting = if record.attempts == 0 {
        Status::Queued
    } else {
        Status::Retrying
    };
    let mut hold_until = None;
    let completed = match outcome {
        SendOutcome::Delivered { msgid, receipt } => {
            record.attempts += 1;
            record.msgid = msgid;
            record.receipt = receipt;
            finish(&mut record, Status::Delivered, now)
        }
        SendOutcome::Permanent { error } => {
            record.attempts += 1;
            record.last_error = Some(error);
            finish(&mut record, Status::Failed, now)
        }
        SendOutcome::Retry { error, not_before } => {
            if record.attempts == 0 {
                // The first attempt with an unknown or transient outcome starts the budget
                // (from when it started, when that was recorded).
                record.budget_from = record.first_attempt_at.unwrap_or(now);
            }
            record.attempts += 1;
            record.last_error = Some(error);
            if record.attempts >= policy.max_attempts {
                finish(&mut record, Status::DeadLettered, now)
            } else {
                let delay = backoff::delay(policy, record.attempts, unit)
                    .max(not_before.unwrap_or_default());
                let at = add(now, delay);
                let deadline = add(record.budget_from, policy.max_age.get());
                if at >= deadline || record.message.expires_at.is_some_and(|e| at >= e) {
                    finish(&mut record, Status::Expired, now)
                } else {
                    record.status = Status::Retrying;
                    record.next_attempt_at = Some(at);
                    None
                }
            }
        }
        SendOutcome::Paused { error, until } => {
            let at = until
                .and_then(|u| Timestamp::try_from(u).ok())
                .filter(|&u| u > now)
                .unwrap_or_else(|| add(now, policy.throttled_backoff.get()));
            record.last_error = Some(error);
            record.status = waiting;
            record.next_attempt_at = Some(at);
            hold_until = Some(at);
            not_sent(&mut record);
            None
        }
        SendOutcome::CircuitOpen { retry_after } => {
            let at = add(now, retry_after.max(Duration::from_millis(10)));
            not_sent(&mut record);
            record.status = waiting;
            record.next_attempt_at = Some(at);
            hold_until = Some(at);
            None
        }
        SendOutcome::Stopping => {
            not_sent(&mut record);
            record.status = waiting;
            record.next_attempt_at = Some(now);
            None
        }
    };
    Next {
        record,
        completed,
        hold_until,
    }
}

/// An attempt that did not send (paused channel, open circuit, no token): when it was the
/// first, its "attempt started" record is void (the outcome is known: not sent).
fn not_sent(record: &mut MessageRecord) {
    if record.attempts == 0 {
        record.first_attempt_at = None;
    }
}

/// What put sending on hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldCause {
    /// The channel is paused: WeChat answered a configuration fault or a quota, or no token
    /// could be had.
    Paused,
    /// The circuit breaker is open; the hold ends when it closes.
    CircuitOpen,
}

/// Why sending is on hold, for `/v1/status`, `wxpush_channel_hold_errcode` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    /// Until when.
    pub until: Timestamp,
    /// What put it on hold.
    pub cause: HoldCause,
    /// What WeChat or the breaker said.
    pub reason: String,
    /// WeChat's errcode, when it caused the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
}

/// State the dispatcher shares with the API.
#[derive(Debug, Default)]
pub struct DispatchState {
    hold: Mutex<Option<Hold>>,
}

impl DispatchState {
    /// The current hold, if still in force.
    pub fn hold(&self) -> Option<Hold> {
        let hold = self.hold.lock();
        hold.as_ref()
            .filter(|h| h.until > Timestamp::now())
            .cloned()
    }

    /// Ends a hold set because the circuit breaker was open (it closed again).
    fn clear_circuit_hold(&self) {
        let mut hold = self.hold.lock();
        if hold
            .as_ref()
            .is_some_and(|h| h.cause == HoldCause::CircuitOpen)
        {
            *hold = None;
        }
    }

    /// Extends the hold; true when sending was not on hold before (worth a log line).
    fn set_hold(
        &self,
        until: Timestamp,
        cause: HoldCause,
        reason: String,
        errcode: Option<i64>,
    ) -> bool {
        let now = Timestamp::now();
        let mut hold = self.hold.lock();
        let fresh = hold.as_ref().is_none_or(|h| h.until <= now);
        if hold.as_ref().is_none_or(|h| h.until < until) {
            *hold = Some(Hold {
                until,
                cause,
                reason,
                errcode,
            });
        }
        fresh
    }
}

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
        Self {
            store,
            sender,
            metrics,
            policy,
            workers: max_in_flight.max(1).saturating_mul(PIPELINE),
            state,
            logs: LogLimiter::default(),
            outage_delayed: Mutex::new(Vec::new()),
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
        let drained =
            tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "drain timeout: attempts still in flight are abandoned; their messages stay queued"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// The attempts of one lease, in one task: the "attempt started" records of the messages
    /// about to be sent for the first time are written together (one commit and one answer
    /// for the lot, instead of one each), then the attempts run concurrently. A message whose
    /// record could not be written is not sent (its lease went back, due after a delay).
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
                    && before_attempt(&lease.record, &self.policy, now).is_none()
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
        // The outcomes of the attempts that ended together are written together: one store
        // operation and one answer for them (`Store::complete_many`), while the other attempts
        // go on.
        let mut writing = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(first) = sending.next() => {
                    let mut ended = vec![first];
                    while let Some(Some(more)) = sending.next().now_or_never() {
                        ended.push(more);
                    }
                    writing.push(self.record_outcomes(ended));
                }
                Some(()) = writing.next() => {}
                else => break,
            }
        }
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
            None => match before_attempt(&lease.record, &self.policy, now) {
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
                    next_state_of(
                        lease.record,
                        outcome,
                        &self.policy,
                        clock::now(),
                        rand::random::<f64>(),
                    )
                }
            },
        };
        if let Some((until, (cause, reason, errcode))) = next.hold_until.zip(hold_reason) {
            if self.state.set_hold(until, cause, reason.clone(), errcode) {
                tracing::warn!(%until, %reason, "sending on hold");
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
mod tests {
    use super::*;
    use crate::message::{MessageId, parse_message};
    use crate::policy::HumanDuration;
    use std::time::SystemTime;

    fn record(now: Timestamp) -> MessageRecord {
        let msg =
            parse_message(&serde_json::json!({"touser": "o", "template_id": "T"})).expect("valid");
        MessageRecord::new(MessageId::new(), msg, None, now)
    }

    fn err(kind: ErrorKind) -> SendError {
        SendError::new(kind, kind.as_str())
    }

    /// A retryable outcome with no extra delay.
    fn retry(kind: ErrorKind) -> SendOutcome {
        SendOutcome::Retry {
            error: err(kind),
            not_before: None,
        }
    }

    fn policy() -> Retry {
        Retry {
            max_attempts: 3,
            initial_backoff: HumanDuration::millis(100),
            max_backoff: HumanDuration::secs(1),
            jitter: 0.0,
            max_age: HumanDuration::secs(60),
            ..Retry::default()
        }
    }

    #[test]
    fn outcomes_map_to_states() {
        let now = Timestamp::now();
        let r = record(now);
        let p = policy();
        let n = next_state(
            &r,
            SendOutcome::Delivered {
                msgid: Some(7),
                receipt: None,
            },
            &p,
            now,
            0.0,
        );
        assert_eq!(
            (n.record.status, n.record.msgid, n.completed),
            (Status::Delivered, Some(7), Some(Outcome::delivered))
        );
        assert!(!n.record.dead_letter);

        let n = next_state(
            &r,
            SendOutcome::Permanent {
                error: err(ErrorKind::Errcode),
            },
            &p,
            now,
            0.0,
        );
        assert_eq!(
            (n.record.status, n.record.dead_letter, n.completed),
            (Status::Failed, true, Some(Outcome::failed))
        );

        let n = next_state(&r, retry(ErrorKind::TimeoutRequest), &p, now, 0.0);
        assert_eq!((n.record.status, n.record.attempts), (Status::Retrying, 1));
        assert_eq!(
            n.record.next_attempt_at,
            Some(add(now, Duration::from_millis(100)))
        );
        assert_eq!(n.record.client_msg_id, r.client_msg_id);

        let n2 = next_state(
            &n.record,
            SendOutcome::Retry {
                error: err(ErrorKind::Errcode),
                not_before: Some(Duration::from_secs(5)),
            },
            &p,
            now,
            0.0,
        );
        assert_eq!(
            n2.record.next_attempt_at,
            Some(add(now, Duration::from_secs(5)))
        );
        let n3 = next_state(&n2.record, retry(ErrorKind::Errcode), &p, now, 0.0);
        assert_eq!(
            (n3.record.status, n3.completed),
            (Status::DeadLettered, Some(Outcome::dead_lettered))
        );
    }

    #[test]
    fn pauses_and_open_circuits_keep_the_budget() {
        let now = Timestamp::now();
        let r = record(now);
        let p = policy();
        let until = SystemTime::from(add(now, Duration::from_secs(30)));
        let n = next_state(
            &r,
            SendOutcome::Paused {
                error: err(ErrorKind::Errcode),
                until: Some(until),
            },
            &p,
            now,
            0.0,
        );
        assert_eq!((n.record.status, n.record.attempts), (Status::Queued, 0));
        assert_eq!(n.hold_until, Some(add(now, Duration::from_secs(30))));
        let n = next_state(
            &r,
            SendOutcome::CircuitOpen {
                retry_after: Duration::from_secs(2),
            },
            &p,
            now,
            0.0,
        );
        assert_eq!(n.record.attempts, 0);
        assert_eq!(
            n.record.next_attempt_at,
            Some(add(now, Duration::from_secs(2)))
        );
        assert!(n.completed.is_none());
    }

    #[test]
    fn budgets_expire_messages() {
        let now = Timestamp::now();
        let p = policy();
        let mut r = record(now);
        assert!(before_attempt(&r, &p, now).is_none());
        let later = add(now, Duration::from_secs(61));
        // Never attempted (e.g. queued behind a paused channel): maxAge has not started.
        assert!(before_attempt(&r, &p, later).is_none());
        // The first retryable attempt starts it.
        let n = next_state(&r, retry(ErrorKind::TimeoutRequest), &p, later, 0.0);
        assert_eq!((n.record.budget_from, n.record.attempts), (later, 1));
        r = n.record;
        assert!(before_attempt(&r, &p, add(later, Duration::from_secs(59))).is_none());
        let n = before_attempt(&r, &p, add(later, Duration::from_secs(61))).expect("too old");
        assert_eq!(n.record.status, Status::Expired);
        r.attempts = 0;
        r.budget_from = now;
        r.message.expires_at = Some(add(now, Duration::from_millis(50)));
        let n = next_state(&r, retry(ErrorKind::TimeoutRequest), &p, now, 0.0);
        assert_eq!(
            (n.record.status, n.completed),
            (Status::Expired, Some(Outcome::expired))
        );
    }

    #[test]
    fn an_unknown_first_attempt_is_parked_beyond_the_window_and_resent_within() {
        let now = Timestamp::now();
        let p = policy();
        let mut r = record(now);
        r.first_attempt_at = Some(now);
        r.budget_from = now;
        // Within the window (and maxAge): re-sent, same client_msg_id.
        assert!(before_attempt(&r, &p, add(now, Duration::from_secs(30))).is_none());
        // Beyond it: parked, whatever maxAge says.
        let later = add(now, DEDUP_WINDOW + Duration::from_secs(1));
        let n = before_attempt(&r, &p, later).expect("parked");
        assert_eq!(
            (n.record.status, n.record.dead_letter, n.completed),
            (Status::UnknownOutcome, true, Some(Outcome::unknown_outcome))
        );
        assert_eq!(
            n.record.last_error.map(|e| e.kind),
            Some(ErrorKind::UnknownOutcome)
        );
        // At-least-once: not parked; maxAge still bounds it.
        let resend = Retry {
            after_window: AfterWindow::Resend,
            max_age: HumanDuration::mins(20),
            ..p
        };
        assert!(before_attempt(&r, &resend, later).is_none());
        // A recorded outcome is not unknown.
        r.attempts = 1;
        let n = before_attempt(&r, &p, later).expect("too old");
        assert_eq!(n.record.status, Status::Expired);
    }

    #[test]
    fn max_age_runs_from_the_recorded_start_of_the_first_attempt() {
        let now = Timestamp::now();
        let p = policy();
        let mut r = record(now);
        r.first_attempt_at = Some(now);
        r.budget_from = now;
        let n = before_attempt(&r, &p, add(now, Duration::from_secs(61))).expect("expired");
        assert_eq!(n.record.status, Status::Expired);
        let n = next_state(
            &r,
            retry(ErrorKind::TimeoutRequest),
            &p,
            add(now, Duration::from_secs(5)),
            0.0,
        );
        assert_eq!(n.record.budget_from, now);
    }

    #[test]
    fn an_attempt_that_did_not_send_voids_the_started_record() {
        let now = Timestamp::now();
        let mut r = record(now);
        r.first_attempt_at = Some(now);
        let n = next_state(
            &r,
            SendOutcome::CircuitOpen {
                retry_after: Duration::from_secs(1),
            },
            &policy(),
            now,
            0.0,
        );
        assert_eq!((n.record.first_attempt_at, n.record.attempts), (None, 0));
    }
}
