//! What each operation writes, over the open tables of the group's transaction ([`Tables`])
//! and what the group has decided so far ([`Group`]). Each answers with a [`Step`]: done (with
//! the change to the in-memory schedule and the value for the caller) or refused (a business
//! refusal such as [`StoreError::Full`], answered at once, writing nothing).

use std::time::Duration;

use jiff::Timestamp;
use redb::ReadableTable;

use super::reply::{Change, Step};
use super::txn::{Group, Tables, encode_cb};
use crate::message::{MessageId, MessageRecord, Status};
use crate::store::embedded::progress;
use crate::store::embedded::schema::{storage, unscheduled_slot};
use crate::store::embedded::stored;
use crate::store::{
    AcceptItem, Accepted, CallbackKey, DeliveryEvent, EventOutcome, MatchedBy, PendingCallback,
    StoreError, apply_event, digests_match, millis, reset_for_replay, wants_callback,
};

/// [`complete`], with the record going to whichever change rolls the lease back
/// (the done step's, or the returned undo), to be kept for the next lease.
pub(super) fn complete_one(
    t: &mut Tables<'_>,
    g: &mut Group,
    slot: u64,
    record: Box<MessageRecord>,
) -> (Result<Step<()>, StoreError>, Change) {
    let mut step = complete(t, g, slot, &record);
    match &mut step {
        Ok(Step::Done(Change::Released { outcome, .. }, ())) => {
            *outcome = Some(record);
            // Written: there is nothing to undo before the commit.
            (step, Change::None)
        }
        _ => (step, Change::released(record)),
    }
}

/// Accepts a request's messages, all or nothing.
pub(super) fn accept(
    t: &mut Tables<'_>,
    g: &mut Group,
    items: Vec<(AcceptItem, Vec<u8>)>,
) -> Result<Step<Vec<Accepted>>, StoreError> {
    // First pass, read only: resolve idempotency keys and check room, so that a refused
    // request writes nothing.
    let mut results = Vec::with_capacity(items.len());
    let mut fresh = Vec::new();
    for (item, bytes) in items {
        let seen = match &item.idempotency_key {
            Some(k) => match t.idem.get(k.as_str()) {
                Ok(v) => v.map(|v| v.value()),
                // A read that fails refuses this request only, not the whole group.
                Err(e) => return Ok(Step::Refused(storage(e))),
            },
            None => None,
        };
        match seen {
            Some(first) => {
                // An unreadable first record still answers the duplicate with its id.
                let record = t.record(first).ok().flatten();
                if let Some(r) = &record
                    && !digests_match(r.request_digest.as_deref(), item.request_digest.as_deref())
                {
                    return Ok(Step::Refused(StoreError::KeyReused(
                        item.idempotency_key.unwrap_or_default(),
                    )));
                }
                let status = record.map_or(Status::Queued, |r| r.status);
                results.push(Accepted {
                    id: MessageId::from_u128(first),
                    status,
                    duplicate: true,
                });
            }
            None => {
                // The id is made from the group's time, so that its time part is the
                // message's slot ([`unscheduled_slot`]).
                let id = MessageId::made_at(g.now_ms);
                let mut record = MessageRecord::new(id, item.message, item.idempotency_key, g.now);
                if record.idempotency_key.is_some() {
                    record.request_digest = item.request_digest;
                }
                results.push(Accepted {
                    id: record.id,
                    status: Status::Queued,
                    duplicate: false,
                });
                fresh.push((record, bytes));
            }
        }
    }
    let adding = fresh.len() as u64;
    if let Some((used, max)) = g.over_budget.filter(|_| adding > 0) {
        return Ok(Step::Refused(StoreError::OverBudget { used, max }));
    }
    if g.pending + adding > g.max_messages {
        return Ok(Step::Refused(StoreError::Full {
            pending: g.pending,
            max: g.max_messages,
            retry_after: Duration::from_secs(1),
        }));
    }
    g.pending += adding;
    // While the whole schedule is in memory, a fresh message needs no `schedule` entry: it
    // is due now, held in memory until its first outcome, and a restart finds it from the
    // mark (`schema.rs`). Most are finished by their first outcome, which then removes
    // nothing from `schedule`.
    let unscheduled = g.unscheduled_room >= fresh.len();
    let mut ids = Vec::with_capacity(fresh.len());
    let mut records = Vec::with_capacity(fresh.len());
    for (record, mut bytes) in fresh {
        let id = record.id.as_u128();
        stored::set_accepted_at(&mut bytes, g.now);
        t.put_stored(id, &bytes)?;
        if unscheduled {
            debug_assert_eq!(unscheduled_slot(id), g.now_ms);
            g.unscheduled_min = Some(g.unscheduled_min.map_or(id, |m| m.min(id)));
        } else {
            t.schedule.insert((g.now_ms, id), ()).map_err(storage)?;
        }
        if let Some(k) = &record.idempotency_key {
            t.idem.insert(k.as_str(), id).map_err(storage)?;
        }
        ids.push(id);
        records.push(record);
    }
    if unscheduled {
        g.unscheduled_room -= records.len();
    }
    Ok(Step::Done(
        Change::Scheduled {
            ids,
            due: g.now_ms,
            records,
            unscheduled,
        },
        results,
    ))
}

/// Records an attempt's outcome: the message leaves the schedule slot it was leased from
/// and is rescheduled, or finished (with its indexes and callback).
pub(super) fn complete(
    t: &mut Tables<'_>,
    g: &mut Group,
    slot: u64,
    record: &MessageRecord,
) -> Result<Step<()>, StoreError> {
    let id = record.id.as_u128();
    // Everything that can fail for this operation alone fails before the first write.
    let encoded = match progress::encode(record) {
        Ok(b) => b,
        Err(e) => return Ok(Step::Refused(e)),
    };
    let due = if record.status.is_final() {
        g.pending = g.pending.saturating_sub(1);
        None
    } else {
        Some(crate::store::due_millis(
            record.next_attempt_at.unwrap_or(g.now),
        ))
    };
    if g.is_unscheduled(id) {
        // It has no entry to remove; from now on it is final or listed like any other.
        g.unscheduled_ended.push(id);
    } else {
        t.schedule.remove((slot, id)).map_err(storage)?;
    }
    // A finished message needs no entry for retention: the sweep walks `progress`.
    match due {
        None => {
            if record.dead_letter {
                t.dead.insert(id, ()).map_err(storage)?;
            }
        }
        Some(at) => {
            t.schedule.insert((at, id), ()).map_err(storage)?;
        }
    }
    if g.event_indexes && record.status == Status::Delivered {
        let at = millis(record.finished_at.unwrap_or(g.now));
        t.awaiting
            .insert((record.message.touser.as_str(), at, id), ())
            .map_err(storage)?;
        if let Some(m) = record.msgid.filter(|&m| m != 0) {
            t.msgids.insert(m, id).map_err(storage)?;
        }
    }
    if wants_callback(record.status) {
        g.callbacks_added |= t.add_callback(g.default_callback, record, g.now)?;
    }
    // Over the "attempt started" mark, whose time the record carries.
    t.put_progress_bytes(id, &encoded)?;
    Ok(Step::Done(
        Change::Released {
            id,
            due,
            dead: record.dead_letter,
            outcome: None,
        },
        (),
    ))
}

/// Records a delivery event (see [`crate::store::Store::record_event`]).
pub(super) fn record_event(
    t: &mut Tables<'_>,
    g: &mut Group,
    event: &DeliveryEvent,
    fallback: bool,
) -> Result<Step<EventOutcome>, StoreError> {
    let key = (event.openid.as_str(), event.create_time, event.msgid);
    let found = match find_event_target(t, event, fallback) {
        Ok(f) => f,
        // Reads failed: this event only is refused (WeChat posts it again).
        Err(e) => return Ok(Step::Refused(e)),
    };
    let (mut record, by) = match found {
        EventTarget::Seen => return Ok(Step::Done(Change::None, EventOutcome::Duplicate)),
        EventTarget::None => return Ok(Step::Done(Change::None, EventOutcome::Unmatched)),
        EventTarget::Found(record, by) => (*record, by),
    };
    let id = record.id.as_u128();
    let had_events = !record.events.is_empty();
    let outcome = apply_event(&mut record, event, by);
    if outcome != EventOutcome::Duplicate {
        if !had_events {
            let at = millis(record.finished_at.unwrap_or(g.now));
            t.awaiting
                .remove((record.message.touser.as_str(), at, id))
                .map_err(storage)?;
        }
        t.seen.insert(key, id).map_err(storage)?;
        t.put_progress(&record)?;
        if matches!(outcome, EventOutcome::Applied { .. }) {
            g.callbacks_added |= t.add_callback(g.default_callback, &record, g.now)?;
        }
    }
    Ok(Step::Done(Change::None, outcome))
}

/// Moves a dead letter back to the queue with a fresh retry budget.
pub(super) fn replay(
    t: &mut Tables<'_>,
    g: &mut Group,
    id: MessageId,
) -> Result<Step<MessageRecord>, StoreError> {
    let key = id.as_u128();
    let found = match t.record(key) {
        Ok(r) => r,
        Err(e) => return Ok(Step::Refused(e)),
    };
    let mut record = match found {
        None => return Ok(Step::Refused(StoreError::NotFound(id))),
        Some(r) if !r.dead_letter => return Ok(Step::Refused(StoreError::NotDeadLetter(id))),
        Some(r) => r,
    };
    if let Some(exp) = record.message.expires_at
        && exp <= g.now
    {
        return Ok(Step::Refused(StoreError::PastExpiry(id, exp)));
    }
    if let Some((used, max)) = g.over_budget {
        return Ok(Step::Refused(StoreError::OverBudget { used, max }));
    }
    if g.pending + 1 > g.max_messages {
        return Ok(Step::Refused(StoreError::Full {
            pending: g.pending,
            max: g.max_messages,
            retry_after: Duration::from_secs(1),
        }));
    }
    g.pending += 1;
    if let Some(f) = record.finished_at {
        // Listed there by the versions before the sweep walked `progress`.
        t.finished.remove((millis(f), key)).map_err(storage)?;
    }
    t.dead.remove(key).map_err(storage)?;
    reset_for_replay(&mut record, g.now);
    t.put_progress(&record)?;
    t.schedule.insert((g.now_ms, key), ()).map_err(storage)?;
    Ok(Step::Done(
        Change::Replayed {
            id: key,
            due: g.now_ms,
        },
        record,
    ))
}

/// Keeps a recall's time in the message's receipt (the first recall's, when there was one).
pub(super) fn record_recall(
    t: &mut Tables<'_>,
    id: MessageId,
    at: Timestamp,
) -> Result<Step<Timestamp>, StoreError> {
    let mut record = match t.record(id.as_u128()) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(Step::Refused(StoreError::NotFound(id))),
        Err(e) => return Ok(Step::Refused(e)),
    };
    let receipt = record.receipt.get_or_insert_default();
    if let Some(first) = receipt.recalled_at {
        return Ok(Step::Done(Change::None, first));
    }
    receipt.recalled_at = Some(at);
    t.put_progress(&record)?;
    Ok(Step::Done(Change::None, at))
}

/// What a delivery event points at.
enum EventTarget {
    /// The event was recorded before.
    Seen,
    /// No message.
    None,
    /// The message, and how it was found.
    Found(Box<MessageRecord>, MatchedBy),
}

/// The read phase of [`record_event`]: nothing is written here.
fn find_event_target(
    t: &Tables<'_>,
    event: &DeliveryEvent,
    fallback: bool,
) -> Result<EventTarget, StoreError> {
    let key = (event.openid.as_str(), event.create_time, event.msgid);
    if t.seen.get(key).map_err(storage)?.is_some() {
        return Ok(EventTarget::Seen);
    }
    let mut found = None;
    if event.msgid != 0
        && let Some(v) = t.msgids.get(event.msgid).map_err(storage)?
    {
        found = Some((v.value(), MatchedBy::Msgid));
    }
    if found.is_none() && fallback {
        let openid = event.openid.as_str();
        let last = t
            .awaiting
            .range((openid, 0, 0)..=(openid, u64::MAX, u128::MAX))
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?
            .map(|(k, _)| k.value().2);
        found = last.map(|id| (id, MatchedBy::OpenidFallback));
    }
    Ok(match found {
        Some((id, by)) => match t.record(id)? {
            Some(r) => EventTarget::Found(Box::new(r), by),
            None => EventTarget::None,
        },
        None => EventTarget::None,
    })
}

/// Writes "attempt started" marks (`first_attempt_at` and the start of the `maxAge` budget):
/// the progress of each message with its start, encoded by the caller from the record its
/// lease holds (nothing else writes a leased record). No read; the leases are kept.
pub(super) fn start_attempts(
    t: &mut Tables<'_>,
    items: Vec<(u128, Vec<u8>)>,
) -> Result<Step<()>, StoreError> {
    let mut ids = Vec::with_capacity(items.len());
    for (id, progress) in items {
        t.put_progress_bytes(id, &progress)?;
        ids.push(id);
    }
    Ok(Step::Done(Change::Started { ids }, ()))
}

/// Ends a callback's lease: removes it, or moves it to its next due time.
pub(super) fn finish_callback(
    t: &mut Tables<'_>,
    key: CallbackKey,
    next: Option<(Timestamp, u32)>,
) -> Result<Step<()>, StoreError> {
    // An undecodable callback is dropped rather than failing the group.
    let moved = match next {
        Some((at, attempts)) => t
            .cbs
            .get((key.due_ms, key.id))
            .map_err(storage)?
            .and_then(|v| serde_json::from_slice::<PendingCallback>(v.value()).ok())
            .map(|mut cb| {
                cb.attempts = attempts;
                (at, cb)
            }),
        None => None,
    };
    t.cbs.remove((key.due_ms, key.id)).map_err(storage)?;
    if let Some((at, cb)) = moved {
        t.cbs
            .insert((millis(at), key.id), encode_cb(&cb)?.as_slice())
            .map_err(storage)?;
    }
    Ok(Step::Done(Change::CallbackDone { id: key.id }, ()))
}
