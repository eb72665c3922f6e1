//! What the embedded store's handles and its writer thread share: the database, the
//! in-memory schedule, health, and the records kept for their first lease.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadTransaction, WriteTransaction};
use tokio::sync::Notify;

use super::budget::Budget;
use super::schema::storage;
use crate::message::MessageRecord;
use crate::policy::{HumanDuration, Retry};
use crate::ratelog::LogLimiter;
use crate::resilience::backoff;
use crate::store::index::{IdMap, Index};
use crate::store::{StoreError, millis};

/// Memory for accepted records kept for their first lease (see `Shared::fresh`), at most, by
/// [`Fresh::size`]; beyond it a lease reads them from disk. A message's template data can be
/// tens of kilobytes, so the bound is in bytes, not records.
pub(super) const FRESH_BYTES: usize = 4 << 20;

/// The wait of a lease given back after a failed write: 1 s, doubling with every failed group
/// in a row, at most 30 s, without jitter (one writer, nothing to spread).
static GIVE_BACK_BACKOFF: LazyLock<Retry> = LazyLock::new(|| Retry {
    initial_backoff: HumanDuration::secs(1),
    max_backoff: HumanDuration::secs(30),
    multiplier: 2.0,
    jitter: 0.0,
    ..Retry::default()
});

/// What the store and its handles share.
#[derive(Debug)]
pub(super) struct Shared {
    /// The database file.
    pub(super) file: PathBuf,
    /// The disk budget (`queue.embedded.maxBytes`), when there is one.
    pub(super) budget: Option<Arc<Budget>>,
    /// The database; `None` only while the healer reopens it.
    pub(super) db: RwLock<Option<Database>>,
    pub(super) index: Mutex<Index>,
    /// The size of the in-memory head of the schedule ([`HEAD`]; smaller in tests).
    pub(super) head: usize,
    /// Whether a lease asked the writer to refill the head (and it has not yet).
    pub(super) refill_asked: AtomicBool,
    pub(super) work: Notify,
    pub(super) healthy: AtomicBool,
    pub(super) closed: AtomicBool,
    /// Since when writes have been failing (`None` while healthy).
    pub(super) unhealthy_since: Mutex<Option<Instant>>,
    /// See [`EmbeddedOptions::unhealthy_after`].
    pub(super) unhealthy_after: Duration,
    /// Failed write groups in a row: how long a lease given back after a failed write waits.
    pub(super) failures: AtomicU32,
    /// Producer operations waiting for the writer (see [`MAX_QUEUED_OPS`]).
    pub(super) queued: AtomicUsize,
    /// Rate limit of the store's error lines.
    pub(super) logs: LogLimiter,
    /// Outcomes of attempts whose write failed, by message: handed out with the message's
    /// next lease so that the outcome is recorded rather than the message sent again.
    pub(super) unrecorded: Mutex<IdMap<MessageRecord>>,
    /// Records of accepted messages not yet leased, as committed (at most [`FRESH`]): their
    /// first lease takes them from here instead of reading and decoding them again. Nothing
    /// writes a queued message that was never leased, so these stay what the disk holds.
    pub(super) fresh: Mutex<Fresh>,
    /// Callback ids leased to the callback worker.
    pub(super) callbacks_leased: Mutex<std::collections::HashSet<u128>>,
    /// Woken when callbacks were added.
    pub(super) callback_work: Notify,
}

/// Records of accepted messages awaiting their first lease, and about how much memory they
/// hold.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    pub(super) records: IdMap<MessageRecord>,
    pub(super) bytes: usize,
}

impl Fresh {
    /// About what a record holds in memory: its strings and template data, plus the struct.
    pub(super) fn size(record: &MessageRecord) -> usize {
        let m = &record.message;
        std::mem::size_of::<MessageRecord>()
            + record.client_msg_id.len()
            + record.idempotency_key.as_ref().map_or(0, String::len)
            + m.touser.len()
            + m.template_id.len()
            + m.data.as_str().len()
            + [
                &m.url,
                &m.page,
                &m.miniprogram_state,
                &m.lang,
                &m.client_msg_id,
                &m.callback_url,
            ]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + m.miniprogram.as_ref().map_or(0, |p| {
                p.appid.len() + p.pagepath.as_ref().map_or(0, String::len)
            })
    }

    pub(super) fn take(&mut self, id: u128) -> Option<MessageRecord> {
        let record = self.records.remove(&id)?;
        self.bytes = self.bytes.saturating_sub(Self::size(&record));
        Some(record)
    }
}

impl Shared {
    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        let db = self.db.read();
        let db = db
            .as_ref()
            .ok_or_else(|| StoreError::Storage("the queue is being reopened".into()))?;
        db.begin_read().map_err(storage)
    }

    pub(super) fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let db = self.db.read();
        let db = db
            .as_ref()
            .ok_or_else(|| StoreError::Storage("the queue is being reopened".into()))?;
        db.begin_write().map_err(storage)
    }

    /// How long a lease given back after a failed write waits before it is due again
    /// ([`GIVE_BACK_BACKOFF`], by the failed groups in a row).
    pub(super) fn give_back_delay(&self) -> Duration {
        let failed = self.failures.load(Ordering::Relaxed);
        backoff::delay(&GIVE_BACK_BACKOFF, failed.saturating_add(1), 0.0)
    }

    /// Keeps just committed records for their first lease, while there is room.
    pub(super) fn keep_fresh(&self, records: Vec<MessageRecord>) {
        let mut fresh = self.fresh.lock();
        for record in records {
            let size = Fresh::size(&record);
            if fresh.bytes + size > FRESH_BYTES {
                break;
            }
            fresh.bytes += size;
            fresh.records.insert(record.id.as_u128(), record);
        }
    }

    /// Gives a lease back, due again only after [`Shared::give_back_delay`].
    pub(super) fn give_back(&self, id: u128) {
        let at = millis(Timestamp::now())
            .saturating_add(u64::try_from(self.give_back_delay().as_millis()).unwrap_or(0));
        self.index.lock().unlease_after(id, at);
    }
}
