//! Reads outside the writer: a record, and the records of the leases just taken from the
//! in-memory schedule; and the wait of the lease loops for new work.

use std::time::Duration;

use super::schema::{MESSAGES, PROGRESS, record_with_progress, storage};
use super::shared::Shared;
use crate::message::{MessageId, MessageRecord};
use crate::store::{Leased, StoreError};

/// A record as stored, with its progress (and "attempt started" mark) applied.
pub(super) fn read_record(shared: &Shared, id: u128) -> Result<Option<MessageRecord>, StoreError> {
    let txn = shared.begin_read()?;
    let messages = txn.open_table(MESSAGES).map_err(storage)?;
    let progress = txn.open_table(PROGRESS).map_err(storage)?;
    record_with_progress(&messages, &progress, id)
}

/// Reads the records of the ids just taken from the schedule. Never strands a lease: an id
/// whose record cannot be read (a read error, an undecodable record) is given back with a
/// delay and the others are still returned; when the read cannot even start, all are given
/// back.
pub(super) fn read_leased(shared: &Shared, taken: Vec<(u64, u128)>) -> Vec<Leased> {
    let tables = shared.begin_read().and_then(|txn| {
        Ok((
            txn.open_table(MESSAGES).map_err(storage)?,
            txn.open_table(PROGRESS).map_err(storage)?,
        ))
    });
    let (table, progress) = match tables {
        Ok(t) => t,
        Err(e) => {
            if let Some(held) = shared.logs.check("lease_read") {
                tracing::error!(error = %e, held_back = held, "cannot read leased messages");
            }
            for (_, id) in taken {
                shared.give_back(id);
            }
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(taken.len());
    for (slot, id) in taken {
        let record = record_with_progress(&table, &progress, id)
            .and_then(|r| r.ok_or(StoreError::NotFound(MessageId::from_u128(id))));
        match record {
            Ok(record) if !record.status.is_final() => {
                let unrecorded = shared.unrecorded.lock().remove(&id).map(Box::new);
                out.push(Leased {
                    record,
                    slot,
                    unrecorded,
                });
            }
            Ok(_) | Err(StoreError::NotFound(_)) => {
                // Not pending any more: drop the stale schedule entry.
                tracing::warn!(id = %MessageId::from_u128(id), "stale schedule entry");
                shared.index.lock().release(id, None);
            }
            Err(e) => {
                if let Some(held) = shared.logs.check("lease_record") {
                    tracing::error!(
                        id = %MessageId::from_u128(id),
                        error = %e,
                        held_back = held,
                        "cannot read a leased message; it is tried again later"
                    );
                }
                shared.give_back(id);
            }
        }
    }
    out
}

/// The wait of the two lease loops: until `notified` fires (new work), the next scheduled entry
/// is due (`next_ms`, in store milliseconds, read at `now_ms`), `wake` passes, or `deadline`
/// passes. Returns `false`, without waiting, once the deadline has passed.
pub(super) async fn wait_for_work(
    notified: impl std::future::Future<Output = ()>,
    deadline: tokio::time::Instant,
    wake: tokio::time::Instant,
    next_ms: Option<u64>,
    now_ms: u64,
) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    let mut until = deadline.min(wake);
    if let Some(next) = next_ms {
        let in_ms = next.saturating_sub(now_ms).max(1);
        until = until.min(now + Duration::from_millis(in_ms));
    }
    tokio::select! {
        () = notified => {}
        () = tokio::time::sleep_until(until) => {}
    }
    true
}
