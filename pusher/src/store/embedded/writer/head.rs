//! Keeping the in-memory head of the schedule ([`crate::store::index`]) between groups: it is
//! trimmed, refilled from the durable `schedule` table when it runs low, and the entries beyond
//! its watermark that became due are counted. Only the writer does this: it is the one thread
//! that commits, so a read it makes between two groups sees every commit.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use jiff::Timestamp;

use super::heal::Healing;
use crate::store::embedded::schema::{SCHEDULE, storage};
use crate::store::embedded::shared::Shared;
use crate::store::index::Key;
use crate::store::{StoreError, millis};

/// Keeps the in-memory head of the schedule between groups: trims it when accepts made it
/// grow, refills it from the durable schedule when it runs low, and counts the entries
/// beyond the watermark that became due. Nothing while the store heals (the reload that
/// ends healing rebuilds it all).
pub(super) fn upkeep(shared: &Shared, healing: Option<&Healing>) {
    if healing.is_some() {
        return;
    }
    shared.index.lock().trim();
    let result = refill(shared).and_then(|()| count_due(shared, millis(Timestamp::now())));
    if let Err(e) = result
        && let Some(held) = shared.logs.check("schedule_read")
    {
        tracing::error!(error = %e, held_back = held, "cannot read the schedule; tried again later");
    }
}

/// Reads the entries after the watermark into the head when it runs low.
pub(super) fn refill(shared: &Shared) -> Result<(), StoreError> {
    shared.refill_asked.store(false, Ordering::Release);
    let Some((from, want)) = shared.index.lock().refill_wanted() else {
        return Ok(());
    };
    let txn = shared.begin_read()?;
    let table = txn.open_table(SCHEDULE).map_err(storage)?;
    let mut keys = Vec::with_capacity(want);
    let mut exhausted = true;
    for entry in table
        .range::<Key>((Bound::Excluded(from), Bound::Unbounded))
        .map_err(storage)?
    {
        if keys.len() == want {
            exhausted = false;
            break;
        }
        keys.push(entry.map_err(storage)?.0.value());
    }
    let loaded = shared.index.lock().refilled(from, &keys, exhausted);
    tracing::trace!(loaded, exhausted, "schedule head refilled");
    shared.work.notify_one();
    Ok(())
}

/// Counts the entries beyond the watermark that are due at `now_ms` (each is read once,
/// when it becomes due, in chunks so that the index is never locked for long).
pub(super) fn count_due(shared: &Shared, now_ms: u64) -> Result<(), StoreError> {
    const CHUNK: usize = 4096;
    let Some((mut after, to)) = shared.index.lock().count_wanted(now_ms) else {
        return Ok(());
    };
    let txn = shared.begin_read()?;
    let table = txn.open_table(SCHEDULE).map_err(storage)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    for entry in table
        .range::<Key>((Bound::Excluded(after), Bound::Included(to)))
        .map_err(storage)?
    {
        chunk.push(entry.map_err(storage)?.0.value());
        if let Some(&last) = chunk.last().filter(|_| chunk.len() == CHUNK) {
            shared.index.lock().counted(after, &chunk, None);
            after = last;
            chunk.clear();
        }
    }
    shared.index.lock().counted(after, &chunk, Some(to));
    Ok(())
}

/// Brings entries beyond the watermark named by a pull-in into memory (those still in the
/// durable schedule, at most [`crate::store::index::ADOPT_HEADS`] heads' worth); returns
/// how many.
pub(super) fn adopt(
    shared: &Shared,
    mut entries: Vec<Key>,
    to_ms: u64,
    healing: Option<&Healing>,
) -> Result<u64, StoreError> {
    if healing.is_some() {
        return Ok(0);
    }
    entries.truncate(shared.index.lock().max_adopt());
    let txn = shared.begin_read()?;
    let table = txn.open_table(SCHEDULE).map_err(storage)?;
    let mut found = Vec::with_capacity(entries.len());
    for key in entries {
        if table.get(key).map_err(storage)?.is_some() {
            found.push(key);
        }
    }
    let moved = shared.index.lock().adopt(&found, to_ms);
    if moved > 0 {
        shared.work.notify_waiters();
    }
    Ok(moved)
}
