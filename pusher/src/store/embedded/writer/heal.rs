//! Healing after a failed write: redb wants the database reopened after an I/O error. The
//! writer fails groups at once while healing, and tries to reopen with backoff.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::policy::{HumanDuration, Retry};
use crate::resilience::backoff;
use crate::store::embedded::schema::{PROBE, load_index, open_db, storage};
use crate::store::embedded::shared::Shared;
use crate::store::{StoreError, millis};

/// The healer's state while the store cannot be written.
#[derive(Debug)]
pub(super) struct Healing {
    /// Healing attempts so far.
    pub(super) attempts: u32,
    /// When the next one is due.
    pub(super) next_at: Instant,
}

/// The wait before healing attempt `n + 1`: 100 ms doubling, at most 5 s, without jitter.
static HEAL_BACKOFF: LazyLock<Retry> = LazyLock::new(|| Retry {
    initial_backoff: HumanDuration::millis(100),
    max_backoff: HumanDuration::secs(5),
    multiplier: 2.0,
    jitter: 0.0,
    ..Retry::default()
});

/// The wait before healing attempt `n + 1` ([`HEAL_BACKOFF`]).
fn heal_backoff(n: u32) -> Duration {
    backoff::delay(&HEAL_BACKOFF, n.saturating_add(1), 0.0)
}

/// Writes the probe row: whether the database takes a write.
fn probe(shared: &Shared) -> Result<(), StoreError> {
    let txn = shared.begin_write()?;
    {
        let mut t = txn.open_table(PROBE).map_err(storage)?;
        t.insert(0, millis(Timestamp::now())).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Notes a failed write: the store is unhealthy and heals from now on.
pub(super) fn failed(shared: &Shared, e: &StoreError, healing: &mut Option<Healing>) {
    shared.healthy.store(false, Ordering::Relaxed);
    shared.failures.fetch_add(1, Ordering::Relaxed);
    shared
        .unhealthy_since
        .lock()
        .get_or_insert_with(Instant::now);
    if healing.is_none() {
        tracing::warn!(error = %e, "queue write failed: the store heals (reopens the database with backoff)");
        *healing = Some(Healing {
            attempts: 0,
            next_at: Instant::now() + heal_backoff(0),
        });
    }
}

/// Tries to heal when an attempt is due: reopens the database (redb wants that after an
/// I/O error), proves it takes a write, and reloads the in-memory schedule from it (leases
/// held now are kept). Returns whether the store is healthy.
pub(super) fn heal(shared: &Shared, healing: &mut Option<Healing>) -> bool {
    let Some(h) = healing.as_mut() else {
        return true;
    };
    if Instant::now() < h.next_at {
        return false;
    }
    h.attempts += 1;
    match reopen(shared) {
        Ok(()) => {
            tracing::info!(attempts = h.attempts, "queue healed: writes work again");
            *healing = None;
            shared.failures.store(0, Ordering::Relaxed);
            *shared.unhealthy_since.lock() = None;
            shared.healthy.store(true, Ordering::Relaxed);
            shared.work.notify_one();
            shared.callback_work.notify_one();
            true
        }
        Err(e) => {
            h.next_at = Instant::now() + heal_backoff(h.attempts);
            if let Some(held) = shared.logs.check("heal") {
                tracing::error!(error = %e, attempts = h.attempts, held_back = held, "queue still cannot be written");
            }
            false
        }
    }
}

pub(super) fn reopen(shared: &Shared) -> Result<(), StoreError> {
    // A database that survived the error takes the probe as it is; one that redb
    // poisoned (`PreviousIo`) must be closed and opened again.
    if probe(shared).is_ok() {
        return reload(shared);
    }
    {
        let mut db = shared.db.write();
        *db = None;
    }
    let db = open_db(&shared.file)?;
    *shared.db.write() = Some(db);
    probe(shared)?;
    reload(shared)
}

/// Rebuilds the in-memory schedule from the database (a failed commit may have been
/// durable after all), keeping the leases held now.
pub(in crate::store::embedded) fn reload(shared: &Shared) -> Result<(), StoreError> {
    let leased = shared.index.lock().leases();
    let fresh = {
        let db = shared.db.read();
        let db = db
            .as_ref()
            .ok_or_else(|| StoreError::Storage("the queue is closed".into()))?;
        load_index(db, shared.head, &leased)?
    };
    shared.index.lock().reload(fresh, &leased);
    Ok(())
}
