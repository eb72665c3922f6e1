//! Unit tests of the dispatcher's decisions: outcomes to states, budgets, holds and the de-duplication window.

use super::next::*;
use super::*;
use crate::clock::DEDUP_WINDOW;
use crate::message::{MessageId, parse_message};
use crate::message::{MessageRecord, Status};
use crate::policy::AfterWindow;
use crate::policy::HumanDuration;
use crate::send::{ErrorKind, SendError};
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
        maybe_delivered: kind.is_outage()
            && !matches!(kind, ErrorKind::TimeoutConnect | ErrorKind::TimeoutTls),
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
        DEDUP_WINDOW,
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
        DEDUP_WINDOW,
        now,
        0.0,
    );
    assert_eq!(
        (n.record.status, n.record.dead_letter, n.completed),
        (Status::Failed, true, Some(Outcome::failed))
    );

    let n = next_state(
        &r,
        retry(ErrorKind::TimeoutRequest),
        &p,
        DEDUP_WINDOW,
        now,
        0.0,
    );
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
            maybe_delivered: false,
        },
        &p,
        DEDUP_WINDOW,
        now,
        0.0,
    );
    assert_eq!(
        n2.record.next_attempt_at,
        Some(add(now, Duration::from_secs(5)))
    );
    let n3 = next_state(
        &n2.record,
        retry(ErrorKind::Errcode),
        &p,
        DEDUP_WINDOW,
        now,
        0.0,
    );
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
        DEDUP_WINDOW,
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
        DEDUP_WINDOW,
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
    assert!(before_attempt(&r, &p, DEDUP_WINDOW, now).is_none());
    let later = add(now, Duration::from_secs(61));
    // Never attempted (e.g. queued behind a paused channel): maxAge has not started.
    assert!(before_attempt(&r, &p, DEDUP_WINDOW, later).is_none());
    // The first retryable attempt starts it.
    let n = next_state(
        &r,
        retry(ErrorKind::TimeoutRequest),
        &p,
        DEDUP_WINDOW,
        later,
        0.0,
    );
    assert_eq!((n.record.budget_from, n.record.attempts), (later, 1));
    r = n.record;
    assert!(before_attempt(&r, &p, DEDUP_WINDOW, add(later, Duration::from_secs(59))).is_none());
    let n =
        before_attempt(&r, &p, DEDUP_WINDOW, add(later, Duration::from_secs(61))).expect("too old");
    assert_eq!(n.record.status, Status::Expired);
    r.attempts = 0;
    r.budget_from = now;
    r.message.expires_at = Some(add(now, Duration::from_millis(50)));
    let n = next_state(
        &r,
        retry(ErrorKind::TimeoutRequest),
        &p,
        DEDUP_WINDOW,
        now,
        0.0,
    );
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
    assert!(before_attempt(&r, &p, DEDUP_WINDOW, add(now, Duration::from_secs(30))).is_none());
    // Beyond it: parked, whatever maxAge says.
    let later = add(now, DEDUP_WINDOW + Duration::from_secs(1));
    let n = before_attempt(&r, &p, DEDUP_WINDOW, later).expect("parked");
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
    assert!(before_attempt(&r, &resend, DEDUP_WINDOW, later).is_none());
    // A recorded outcome is not unknown.
    r.attempts = 1;
    let n = before_attempt(&r, &p, DEDUP_WINDOW, later).expect("too old");
    assert_eq!(n.record.status, Status::Expired);
}

#[test]
fn max_age_runs_from_the_recorded_start_of_the_first_attempt() {
    let now = Timestamp::now();
    let p = policy();
    let mut r = record(now);
    r.first_attempt_at = Some(now);
    r.budget_from = now;
    let n =
        before_attempt(&r, &p, DEDUP_WINDOW, add(now, Duration::from_secs(61))).expect("expired");
    assert_eq!(n.record.status, Status::Expired);
    let n = next_state(
        &r,
        retry(ErrorKind::TimeoutRequest),
        &p,
        DEDUP_WINDOW,
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
        DEDUP_WINDOW,
        now,
        0.0,
    );
    assert_eq!((n.record.first_attempt_at, n.record.attempts), (None, 0));
}

#[test]
fn a_maybe_delivered_attempt_is_not_resent_past_a_zero_window() {
    let now = Timestamp::now();
    let p = policy();
    let mut r = record(now);
    r.first_attempt_at = Some(now);
    let after = |outcome, policy: &Retry, window| next_state(&r, outcome, policy, window, now, 0.0);
    // A provider with no de-duplication: a timeout ends the message, reported as unknown.
    let n = after(retry(ErrorKind::TimeoutRequest), &p, Duration::ZERO);
    assert_eq!(
        (n.record.status, n.record.dead_letter, n.completed),
        (Status::UnknownOutcome, true, Some(Outcome::unknown_outcome))
    );
    let e = n.record.last_error.expect("an error");
    assert_eq!(e.kind, ErrorKind::UnknownOutcome);
    assert!(e.message.contains("timeout_request"), "{}", e.message);
    // A request that certainly never left is retried.
    let n = after(retry(ErrorKind::TimeoutConnect), &p, Duration::ZERO);
    assert_eq!(n.record.status, Status::Retrying);
    let refused = SendOutcome::Retry {
        error: err(ErrorKind::Transport),
        not_before: None,
        maybe_delivered: false,
    };
    let n = after(refused, &p, Duration::ZERO);
    assert_eq!(n.record.status, Status::Retrying);
    // At-least-once: the channel asked for re-sends.
    let resend = Retry {
        after_window: AfterWindow::Resend,
        ..p
    };
    let n = after(retry(ErrorKind::TimeoutRequest), &resend, Duration::ZERO);
    assert_eq!(n.record.status, Status::Retrying);
    // With a window, a retry inside it is made.
    let n = after(retry(ErrorKind::TimeoutRequest), &p, DEDUP_WINDOW);
    assert_eq!(n.record.status, Status::Retrying);
    // The attempt being started now is made; after a crash mid-send it is not re-sent at all
    // with a zero window.
    assert!(before_attempt(&r, &p, Duration::ZERO, now).is_none());
    let later = add(now, Duration::from_millis(1));
    let n = before_attempt(&r, &p, Duration::ZERO, later).expect("parked");
    assert_eq!(n.record.status, Status::UnknownOutcome);
}
