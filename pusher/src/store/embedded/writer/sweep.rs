//! The retention sweep: finished messages older than the retention are removed, with their
//! indexes and idempotency keys, a batch per commit.

use std::time::Duration;

use jiff::Timestamp;
use redb::ReadableTable;

use super::heal::{self, Healing};
use super::txn::Tables;
use crate::message::Status;
use crate::store::embedded::schema::{record_with_progress, storage};
use crate::store::embedded::shared::Shared;
use crate::store::{StoreError, millis};

/// Removes finished messages older than the retention, with their idempotency keys;
/// returns how many.
/// Most finished messages removed by one retention sweep (keeps each sweep's commit small).
pub(super) const SWEEP_BATCH: usize = 5000;

pub(super) fn sweep(shared: &Shared, retention: Duration, healing: &mut Option<Healing>) -> usize {
    let cutoff = millis(Timestamp::now())
        .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    let result = (|| -> Result<(usize, u64), StoreError> {
        let txn = shared.begin_write()?;
        let swept = {
            let mut t = Tables::open(&txn)?;
            sweep_before(&mut t, cutoff)?
        };
        if swept.0 > 0 {
            txn.commit().map_err(storage)?;
        }
        Ok(swept)
    })();
    match result {
        Ok((0, _)) => 0,
        Ok((removed, dead_removed)) => {
            let mut index = shared.index.lock();
            index.dead = index.dead.saturating_sub(dead_removed);
            tracing::debug!(removed, "retention sweep");
            removed
        }
        Err(e) => {
            if let Some(held) = shared.logs.check("sweep") {
                tracing::warn!(error = %e, held_back = held, "retention sweep failed");
            }
            heal::failed(shared, &e, healing);
            0
        }
    }
}

/// Removes up to [`SWEEP_BATCH`] messages finished before `cutoff` (ms) with everything that
/// points at them; returns `(removed, dead letters among them)`.
pub(super) fn sweep_before(t: &mut Tables<'_>, cutoff: u64) -> Result<(usize, u64), StoreError> {
    let mut removed = 0;
    let mut dead_removed = 0;
    let old: Vec<(u64, u128)> = t
        .finished
        .range(..(cutoff, 0))
        .map_err(storage)?
        .take(SWEEP_BATCH)
        .map(|e| e.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    for (at, id) in old {
        t.finished.remove((at, id)).map_err(storage)?;
        if t.dead.remove(id).map_err(storage)?.is_some() {
            dead_removed += 1;
        }
        let record = record_with_progress(&t.messages, &t.progress, id);
        t.messages.remove(id).map_err(storage)?;
        t.progress.remove(id).map_err(storage)?;
        if let Ok(Some(r)) = record {
            if let Some(k) = &r.idempotency_key {
                t.idem.remove(k.as_str()).map_err(storage)?;
            }
            if let Some(m) = r.msgid {
                t.msgids.remove(m).map_err(storage)?;
            }
            let openid = r.message.touser.as_str();
            if r.status == Status::Delivered && r.events.is_empty() {
                let at = millis(r.finished_at.unwrap_or_default());
                t.awaiting.remove((openid, at, id)).map_err(storage)?;
            }
            for e in &r.events {
                t.seen
                    .remove((openid, e.create_time, e.msgid))
                    .map_err(storage)?;
            }
        }
        removed += 1;
    }
    Ok((removed, dead_removed))
}
