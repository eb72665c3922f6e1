//! The retention sweep: finished messages older than the retention are removed, with their
//! indexes and idempotency keys, a batch per commit.
//!
//! Message ids are ULIDs, ordered by their accept time, and a message finishes after its
//! accept. So only ids accepted before the cutoff can have finished before it: the sweep walks
//! `progress` in id order up to there, and removes the messages whose progress is final with
//! a finish time before the cutoff. It skips the others (pending, or finished later), and a
//! cursor kept between sweeps lets it pass over many of them without reading them every time.
//! Stores written before this walk listed finished messages in `finished`, which is still
//! swept until it is empty.

use std::time::Duration;

use jiff::Timestamp;
use redb::ReadableTable;

use super::heal::{self, Healing};
use super::txn::Tables;
use crate::message::Status;
use crate::store::embedded::progress;
use crate::store::embedded::schema::{record_with_progress, storage};
use crate::store::embedded::shared::Shared;
use crate::store::{StoreError, millis};

/// Most finished messages removed by one retention sweep (keeps each sweep's commit small).
pub(super) const SWEEP_BATCH: usize = 5000;

/// Most `progress` entries one sweep reads.
const SWEEP_READS: usize = 4 * SWEEP_BATCH;

/// Removes finished messages older than the retention, with their idempotency keys; returns
/// how many. `cursor` is the id the walk of `progress` goes on from (0: from the start).
pub(super) fn sweep(
    shared: &Shared,
    retention: Duration,
    cursor: &mut u128,
    healing: &mut Option<Healing>,
) -> usize {
    let cutoff = millis(Timestamp::now())
        .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    let mut next = *cursor;
    let result = (|| -> Result<Swept, StoreError> {
        let txn = shared.begin_write()?;
        let swept = {
            let mut t = Tables::open(&txn)?;
            sweep_before(&mut t, cutoff, &mut next)?
        };
        if swept.removed > 0 {
            txn.commit().map_err(storage)?;
        }
        Ok(swept)
    })();
    match result {
        Ok(Swept { removed: 0, .. }) => {
            *cursor = next;
            0
        }
        Ok(Swept { removed, dead }) => {
            *cursor = next;
            let mut index = shared.index.lock();
            index.dead = index.dead.saturating_sub(dead);
            tracing::debug!(removed, "retention sweep");
            removed
        }
        Err(e) => {
            // Nothing was removed: walk again from the start.
            *cursor = 0;
            if let Some(held) = shared.logs.check("sweep") {
                tracing::warn!(error = %e, held_back = held, "retention sweep failed");
            }
            heal::failed(shared, &e, healing);
            0
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    /// Messages.
    pub(super) removed: usize,
    /// Dead letters among them.
    pub(super) dead: u64,
}

/// Removes up to [`SWEEP_BATCH`] messages finished before `cutoff` (ms) with everything that
/// points at them: first those listed in `finished` (stores written before the walk of
/// `progress`), then those found walking `progress` from `cursor`, which is moved to where
/// the walk stopped (0 when it reached the cutoff).
pub(super) fn sweep_before(
    t: &mut Tables<'_>,
    cutoff: u64,
    cursor: &mut u128,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    let listed: Vec<(u64, u128)> = t
        .finished
        .range(..(cutoff, 0))
        .map_err(storage)?
        .take(SWEEP_BATCH)
        .map(|e| e.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    for (at, id) in listed {
        t.finished.remove((at, id)).map_err(storage)?;
        remove(t, id, &mut swept)?;
    }
    let room = SWEEP_BATCH - swept.removed;
    // The first id accepted at the cutoff: a ULID starts with its time in milliseconds.
    let end = u128::from(cutoff) << 80;
    let mut found = Vec::new();
    let mut stopped_at = 0;
    if room > 0 && *cursor < end {
        for (read, entry) in t.progress.range(*cursor..end).map_err(storage)?.enumerate() {
            let (id, bytes) = entry.map_err(storage)?;
            let id = id.value();
            if read == SWEEP_READS || found.len() == room {
                stopped_at = id;
                break;
            }
            // An entry that does not decode is left alone: never remove what cannot be read.
            if let Ok(Some(at)) = progress::finished_at(bytes.value())
                && millis(at) < cutoff
            {
                found.push(id);
            }
        }
    } else if room == 0 {
        stopped_at = *cursor;
    }
    *cursor = stopped_at;
    for id in found {
        remove(t, id, &mut swept)?;
    }
    Ok(swept)
}

/// Removes message `id`: its record, its progress, and everything that points at it.
fn remove(t: &mut Tables<'_>, id: u128, swept: &mut Swept) -> Result<(), StoreError> {
    if t.dead.remove(id).map_err(storage)?.is_some() {
        swept.dead += 1;
    }
    let record = record_with_progress(&t.messages, &t.progress, id);
    t.messages.remove(id).map_err(storage)?;
    t.progress.remove(id).map_err(storage)?;
    if let Ok(Some(r)) = record {
        if let Some(k) = &r.idempotency_key {
            t.idem.remove(k.as_str()).map_err(storage)?;
        }
        let openid = r.message.touser.as_str();
        if let Some(f) = r.finished_at {
            let at = millis(f);
            // Listed by the versions before the walk of `progress`.
            t.finished.remove((at, id)).map_err(storage)?;
            if r.status == Status::Delivered && r.events.is_empty() {
                t.awaiting.remove((openid, at, id)).map_err(storage)?;
            }
        }
        if let Some(m) = r.msgid {
            t.msgids.remove(m).map_err(storage)?;
        }
        for e in &r.events {
            t.seen
                .remove((openid, e.create_time, e.msgid))
                .map_err(storage)?;
        }
    }
    swept.removed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use serde_json::json;

    use super::*;
    use crate::message::{MessageId, MessageRecord, parse_message};
    use crate::store::embedded::schema::{PROGRESS, load_index};
    use crate::store::index::IdMap;

    /// A message accepted at `accepted_ms` whose progress is `status`.
    fn entry(accepted_ms: u64, n: u128, status: Status) -> (u128, Vec<u8>) {
        let id = (u128::from(accepted_ms) << 80) | n;
        let m = parse_message(&json!({"touser": "o", "template_id": "T"})).expect("valid");
        let at =
            Timestamp::from_millisecond(i64::try_from(accepted_ms).expect("fits")).expect("a time");
        let mut r = MessageRecord::new(MessageId::from_u128(id), m, None, at);
        r.status = status;
        r.first_attempt_at = Some(at);
        if status.is_final() {
            r.finished_at = Some(at + SignedDuration::from_secs(1));
            r.next_attempt_at = None;
        }
        (id, progress::encode(&r).expect("encodes"))
    }

    /// More pending entries than one sweep reads come before finished ones: the first sweep
    /// stops where it stopped reading, the next goes on from there and removes the finished
    /// ones, and the walk starts again from the first id. Pending entries stay.
    #[test]
    fn the_walk_passes_over_pending_messages_in_steps_and_keeps_them() {
        let file = std::env::temp_dir().join(format!("wxpush-sweep-{}", ulid::Ulid::new()));
        let db = crate::store::embedded::schema::open_db(&file).expect("opens");
        load_index(&db, 8, &IdMap::default()).expect("creates the tables");
        let old = millis(Timestamp::now()) - 3_600_000;
        let pending = SWEEP_READS + 10;
        let txn = db.begin_write().expect("writes");
        {
            let mut t = txn.open_table(PROGRESS).expect("table");
            let entries = (0..pending)
                .map(|n| entry(old, n as u128, Status::Retrying))
                .chain((0..5).map(|n| entry(old + 1, n, Status::Delivered)));
            for (id, bytes) in entries {
                t.insert(id, bytes.as_slice()).expect("puts");
            }
        }
        txn.commit().expect("commits");
        let cutoff = millis(Timestamp::now());
        let mut cursor = 0;
        let sweep_once = |cursor: &mut u128| {
            let txn = db.begin_write().expect("writes");
            let swept = {
                let mut t = Tables::open(&txn).expect("tables");
                sweep_before(&mut t, cutoff, cursor).expect("sweeps")
            };
            txn.commit().expect("commits");
            swept
        };
        assert_eq!(sweep_once(&mut cursor).removed, 0);
        assert_eq!(cursor, (u128::from(old) << 80) | SWEEP_READS as u128);
        assert_eq!(sweep_once(&mut cursor).removed, 5);
        assert_eq!(cursor, 0, "the walk reached the cutoff");
        let left = {
            use redb::ReadableTableMetadata;
            let txn = db.begin_read().expect("reads");
            txn.open_table(PROGRESS).expect("table").len().expect("len")
        };
        assert_eq!(left, pending as u64);
        drop(db);
        let _ = std::fs::remove_file(&file);
    }
}
