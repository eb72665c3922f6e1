//! A message's next state after an attempt, or before one (budgets, the de-duplication
//! window): pure functions of the record, the outcome, the policy and the time.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::message::{MessageRecord, Status};
use crate::metrics::Outcome;
use crate::policy::{AfterWindow, Retry};
use crate::resilience::backoff;
use crate::send::ErrorKind;
use crate::wechat::{SendError, SendOutcome};
use wxcrypto::errcode::WxCode;

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

pub(super) fn add(now: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

pub(super) fn finish(
    record: &mut MessageRecord,
    status: Status,
    now: Timestamp,
) -> Option<Outcome> {
    record.status = status;
    record.next_attempt_at = None;
    record.finished_at = Some(now);
    record.updated_at = now;
    record.dead_letter = !matches!(status, Status::Delivered);
    Some(outcome_of(status))
}

/// The metric outcome of a final status.
pub(super) fn outcome_of(status: Status) -> Outcome {
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
/// provider's de-duplication window (`window`, from `Sender::dedup_window`) it is re-sent
/// with the same `client_msg_id` (WeChat drops the copy); beyond it, it ends
/// `unknown_outcome` unless `retry.afterWindow` is `resend`. A provider with no
/// de-duplication (a WeCom robot) has a window of zero: such a message is never re-sent.
pub fn before_attempt(
    record: &MessageRecord,
    policy: &Retry,
    window: Duration,
    now: Timestamp,
) -> Option<Next> {
    let started = record.attempts > 0 || record.first_attempt_at.is_some();
    // Strictly past the window: a start recorded at `now` is the attempt about to be made
    // (the dispatcher records it, then checks again with the same `now`), not an earlier one.
    let unknown = record.attempts == 0
        && record
            .first_attempt_at
            .is_some_and(|at| add(at, window) < now);
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
                      stopped), and the provider's de-duplication window has passed: not \
                      re-sent"
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

/// The message's next state after an attempt ended with `outcome`. `window` is the provider's
/// de-duplication window (`Sender::dedup_window`): a retry of an attempt that may have been
/// delivered (`maybe_delivered`) is only made inside it, counted from the first attempt;
/// past it the message ends `unknown_outcome` unless `retry.afterWindow` is `resend`. `unit`
/// is a uniform random number in `[0, 1)` for the backoff's jitter.
pub fn next_state(
    record: &MessageRecord,
    outcome: SendOutcome,
    policy: &Retry,
    window: Duration,
    now: Timestamp,
    unit: f64,
) -> Next {
    next_state_of(record.clone(), outcome, policy, window, now, unit)
}

/// [`next_state`] of a record the caller gives up (the dispatcher's: no copy of it is made).
pub fn next_state_of(
    mut record: MessageRecord,
    outcome: SendOutcome,
    policy: &Retry,
    window: Duration,
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
        SendOutcome::Retry {
            error,
            not_before,
            maybe_delivered,
        } => {
            if record.attempts == 0 {
                // The first attempt with an unknown or transient outcome starts the budget
                // (from when it started, when that was recorded).
                record.budget_from = record.first_attempt_at.unwrap_or(now);
            }
            record.attempts += 1;
            // Past the provider's de-duplication window (counted from the first send), a
            // re-send of an attempt that may have been delivered could be a second message.
            let window_end =
                (maybe_delivered && policy.after_window == AfterWindow::Park).then(|| {
                    add(
                        record.first_attempt_at.unwrap_or(record.budget_from),
                        window,
                    )
                });
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
                } else if window_end.is_some_and(|end| at >= end) {
                    record.last_error = record.last_error.as_ref().map(past_window);
                    finish(&mut record, Status::UnknownOutcome, now)
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

/// The error of a message not re-sent because its last attempt may have been delivered and a
/// re-send would fall outside the provider's de-duplication window.
fn past_window(error: &SendError) -> SendError {
    SendError {
        kind: ErrorKind::UnknownOutcome,
        errcode: error.errcode,
        message: format!(
            "{} ({}): the provider may have taken the message, and a re-send would fall \
             outside its de-duplication window: not re-sent",
            error.message, error.kind
        ),
    }
}

/// An attempt that did not send (paused channel, open circuit, no token): when it was the
/// first, its "attempt started" record is void (the outcome is known: not sent).
pub(super) fn not_sent(record: &mut MessageRecord) {
    if record.attempts == 0 {
        record.first_attempt_at = None;
    }
}
