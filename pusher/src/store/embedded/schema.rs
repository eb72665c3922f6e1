//! The embedded store's tables in redb, how records are encoded in them, and reading them
//! back into the in-memory schedule when the database is opened.
//!
//! Tables: `messages` (id → the record as accepted, [`super::stored`]), `progress` (id → what changed since:
//! the "attempt started" mark, status, attempts, times, outcome; see [`super::progress`]),
//! `schedule` ((due ms, id) for pending messages, except fresh ones held in memory: see
//! [`UNSCHEDULED_FROM`]), `unscheduled_from` (the mark from which opening looks for them),
//! `finished` ((finished ms, id): no longer written; stores written before list their finished
//! messages there, and the retention sweep empties it), `dead` (dead-letter ids), `idempotency`
//! (key → id), `msgids` (WeChat msgid → id) and `awaiting_event` ((openid, delivered ms, id) of
//! delivered messages without an event), both only when the channel takes events,
//! `events_seen` ((openid, CreateTime, MsgID) → id),
//! `callbacks` ((due ms, callback id) → JSON [`PendingCallback`], written in the same
//! transaction as the state change that causes the callback), `credits` and `probe`.
//!
//! **Messages without a `schedule` entry.** While the whole schedule is in memory, an accepted
//! message gets no `schedule` entry (the writer's `MAX_UNSCHEDULED` at most, each for
//! `SPILL_AFTER_MS` at most): its first outcome writes one only if it is retried. Their ids
//! are made from the accept's millisecond, which is their slot. Each commit that moves it
//! writes the lowest id that may be pending without an entry (`unscheduled_from`); opening the
//! store, and healing, walk `messages` from there and give every pending one its entry
//! ([`schedule_unscheduled`]). A clean close writes them all and removes the mark, so the
//! versions before (which know no mark) read a cleanly closed store whole.

use std::path::Path;

use jiff::Timestamp;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::message::MessageRecord;
use crate::store::index::{IdMap, Index};
use crate::store::{StoreError, millis};

/// Message id → its record as accepted, written once ([`super::stored`]: binary; JSON in the
/// stores of the versions before, which still reads). Stores written before the `progress`
/// table existed also rewrote it with each change, which still reads.
pub(super) const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
/// Message id → its progress since the accept ([`super::progress`]), written by every change
/// after the accept (outcome, event, replay, recall) instead of a rewrite of the record.
pub(super) const PROGRESS: TableDefinition<u128, &[u8]> = TableDefinition::new("progress");
/// Message id → when its first attempt started (Unix nanoseconds): the "attempt started" mark
/// of the versions before the `progress` table took it. A store written by them may still
/// hold marks; opening it moves them into `progress` ([`move_start_marks`]).
pub(super) const STARTED: TableDefinition<u128, i128> = TableDefinition::new("started");
/// `(due ms, id)` of pending messages, except those accepted without one (see
/// [`UNSCHEDULED_FROM`]).
pub(super) const SCHEDULE: TableDefinition<(u64, u128), ()> = TableDefinition::new("schedule");
/// One row, [`MARK`]: the lowest id that may be pending without a `schedule` entry. Absent:
/// every pending message has its entry. Written in the commits that change it.
pub(super) const UNSCHEDULED_FROM: TableDefinition<u8, u128> =
    TableDefinition::new("unscheduled_from");
/// The key of the one row of [`UNSCHEDULED_FROM`].
pub(super) const MARK: u8 = 0;
/// `(finished ms, id)` of finished messages, as the versions before wrote it for the retention
/// sweep. The sweep now walks `progress` in id order instead (ids are ordered by accept
/// time), and removes what this table still lists.
pub(super) const FINISHED: TableDefinition<(u64, u128), ()> = TableDefinition::new("finished");
pub(super) const DEAD: TableDefinition<u128, ()> = TableDefinition::new("dead");
pub(super) const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency");
/// WeChat `msgid` → message id, written when a message is completed as `delivered` on a
/// channel that takes events (`EmbeddedOptions::event_indexes`).
pub(super) const MSGIDS: TableDefinition<i64, u128> = TableDefinition::new("msgids");
/// `(openid, delivered_ms, id)` of delivered messages with no event yet (the `MsgID` 0
/// fallback), on a channel that takes events.
pub(super) const AWAITING: TableDefinition<(&str, u64, u128), ()> =
    TableDefinition::new("awaiting_event");
/// `(openid, CreateTime, MsgID)` of recorded events → the message (de-duplication).
pub(super) const EVENTS_SEEN: TableDefinition<(&str, u64, i64), u128> =
    TableDefinition::new("events_seen");
/// `(due_ms, callback id)` → JSON [`PendingCallback`].
pub(super) const CALLBACKS: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("callbacks");
/// One-time subscription credits left, by (openid, template_id).
pub(super) const CREDITS: TableDefinition<(&str, &str), u64> = TableDefinition::new("credits");
/// One row written by the healer to prove that the database takes writes again.
pub(super) const PROBE: TableDefinition<u8, u64> = TableDefinition::new("probe");
/// redb's page cache. redb's default is 1 GiB, which a large backlog fills; the queue's
/// working set (the head of the schedule and the messages in flight) is far smaller.
pub(super) const CACHE_BYTES: usize = 16 * 1024 * 1024;

pub(super) fn storage<E: Into<redb::Error>>(e: E) -> StoreError {
    {
        let e = e.into();
        StoreError::storage(e.to_string(), e)
    }
}

/// The record of `id` with its progress laid over it, read from the tables of any
/// transaction.
pub(super) fn record_with_progress(
    messages: &impl ReadableTable<u128, &'static [u8]>,
    progress: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> Result<Option<MessageRecord>, StoreError> {
    let Some(mut record) = messages
        .get(id)
        .map_err(storage)?
        .map(|v| super::stored::decode(id, v.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    if let Some(p) = progress.get(id).map_err(storage)? {
        super::progress::apply(&mut record, p.value())?;
    }
    Ok(Some(record))
}

/// Moves the "attempt started" marks that a store written before the `progress` table holds
/// into `progress` (the time, as such a store read it, for a record that does not carry an
/// earlier one), so that reads need only `messages` and `progress`.
fn move_start_marks(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut started = txn.open_table(STARTED).map_err(storage)?;
    if started.is_empty().map_err(storage)? {
        return Ok(());
    }
    let messages = txn.open_table(MESSAGES).map_err(storage)?;
    let mut progress = txn.open_table(PROGRESS).map_err(storage)?;
    let marks: Vec<(u128, i128)> = started
        .iter()
        .map_err(storage)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value())))
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    for (id, ns) in marks {
        started.remove(id).map_err(storage)?;
        let (Some(record), Ok(at)) = (
            record_with_progress(&messages, &progress, id)?,
            Timestamp::from_nanosecond(ns),
        ) else {
            continue;
        };
        let bytes = super::progress::encode_started(&record, at)?;
        progress.insert(id, bytes.as_slice()).map_err(storage)?;
    }
    Ok(())
}

/// Gives every message pending without a `schedule` entry its entry, at its accept
/// millisecond (the time part of its id: such ids are made from the accept time, which is
/// also their slot in memory), and removes the mark. Walks `messages` from the mark only:
/// a message there is pending when its progress is absent or not final, and has no entry
/// when the schedule does not list its id (replays and retries are listed at other times).
fn schedule_unscheduled(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut marks = txn.open_table(UNSCHEDULED_FROM).map_err(storage)?;
    let Some(from) = marks.get(MARK).map_err(storage)?.map(|v| v.value()) else {
        return Ok(());
    };
    let messages = txn.open_table(MESSAGES).map_err(storage)?;
    let progress = txn.open_table(PROGRESS).map_err(storage)?;
    let mut pending: IdMap<()> = IdMap::default();
    for entry in messages.range(from..).map_err(storage)? {
        let id = entry.map_err(storage)?.0.value();
        let done = match progress.get(id).map_err(storage)? {
            Some(p) => super::progress::finished_at(p.value())?.is_some(),
            None => false,
        };
        if !done {
            pending.insert(id, ());
        }
    }
    let mut schedule = txn.open_table(SCHEDULE).map_err(storage)?;
    if !pending.is_empty() {
        for entry in schedule.iter().map_err(storage)? {
            pending.remove(&entry.map_err(storage)?.0.value().1);
        }
    }
    let found = pending.len();
    for id in pending.into_keys() {
        schedule_at_slot(&mut schedule, id)?;
    }
    marks.remove(MARK).map_err(storage)?;
    tracing::info!(found, "pending messages without a schedule entry listed");
    Ok(())
}

/// The slot of a message accepted without a `schedule` entry: the millisecond its id was
/// made from (the accept time).
pub(super) fn unscheduled_slot(id: u128) -> u64 {
    ulid::Ulid(id).timestamp_ms()
}

/// Lists `id`, pending without a `schedule` entry, at its slot ([`unscheduled_slot`]).
pub(super) fn schedule_at_slot(
    schedule: &mut redb::Table<'_, (u64, u128), ()>,
    id: u128,
) -> Result<(), StoreError> {
    schedule
        .insert((unscheduled_slot(id), id), ())
        .map(drop)
        .map_err(storage)
}

/// Opens (or creates) the database file with the store's cache size.
pub(super) fn open_db(file: &Path) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(file)
        .map_err(storage)
}

/// Creates the tables when missing, and reads the schedule: its first `head` entries (not
/// leased by this process: `leased`) into memory, the others counted ([`Index::load`]).
pub(super) fn load_index(
    db: &Database,
    head: usize,
    leased: &IdMap<u64>,
) -> Result<Index, StoreError> {
    // Create the tables on first open, so that readers never meet a missing table.
    let txn = db.begin_write().map_err(storage)?;
    {
        txn.open_table(MESSAGES).map_err(storage)?;
        txn.open_table(PROGRESS).map_err(storage)?;
        txn.open_table(SCHEDULE).map_err(storage)?;
        txn.open_table(FINISHED).map_err(storage)?;
        txn.open_table(DEAD).map_err(storage)?;
        txn.open_table(IDEMPOTENCY).map_err(storage)?;
        txn.open_table(MSGIDS).map_err(storage)?;
        txn.open_table(AWAITING).map_err(storage)?;
        txn.open_table(EVENTS_SEEN).map_err(storage)?;
        txn.open_table(CALLBACKS).map_err(storage)?;
        txn.open_table(PROBE).map_err(storage)?;
        txn.open_table(UNSCHEDULED_FROM).map_err(storage)?;
    }
    move_start_marks(&txn)?;
    schedule_unscheduled(&txn)?;
    txn.commit().map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let schedule = txn.open_table(SCHEDULE).map_err(storage)?;
    let mut failed = None;
    let entries = schedule
        .iter()
        .map_err(storage)?
        .map_while(|entry| match entry {
            Ok((key, _)) => Some(key.value()),
            Err(e) => {
                failed = Some(storage(e));
                None
            }
        });
    let mut index = Index::load(head, entries, leased, millis(Timestamp::now()));
    if let Some(e) = failed {
        return Err(e);
    }
    index.dead = txn
        .open_table(DEAD)
        .map_err(storage)?
        .len()
        .map_err(storage)?;
    Ok(index)
}
