//! One write transaction: its open tables, and what its group of operations has decided so
//! far.

use std::sync::Arc;

use jiff::Timestamp;
use redb::{Table, WriteTransaction};

use crate::message::MessageRecord;
use crate::store::embedded::progress;
use crate::store::embedded::schema::{
    AWAITING, CALLBACKS, DEAD, EVENTS_SEEN, FINISHED, IDEMPOTENCY, MESSAGES, MSGIDS, PROGRESS,
    SCHEDULE, record_with_progress, storage,
};
use crate::store::embedded::shared::Shared;
use crate::store::{PendingCallback, StoreError};

/// The tables of one write transaction.
pub(super) struct Tables<'t> {
    pub(super) messages: Table<'t, u128, &'static [u8]>,
    pub(super) progress: Table<'t, u128, &'static [u8]>,
    pub(super) schedule: Table<'t, (u64, u128), ()>,
    pub(super) finished: Table<'t, (u64, u128), ()>,
    pub(super) dead: Table<'t, u128, ()>,
    pub(super) idem: Table<'t, &'static str, u128>,
    pub(super) msgids: Table<'t, i64, u128>,
    pub(super) awaiting: Table<'t, (&'static str, u64, u128), ()>,
    pub(super) seen: Table<'t, (&'static str, u64, i64), u128>,
    pub(super) cbs: Table<'t, (u64, u128), &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MESSAGES).map_err(storage)?,
            progress: txn.open_table(PROGRESS).map_err(storage)?,
            schedule: txn.open_table(SCHEDULE).map_err(storage)?,
            finished: txn.open_table(FINISHED).map_err(storage)?,
            dead: txn.open_table(DEAD).map_err(storage)?,
            idem: txn.open_table(IDEMPOTENCY).map_err(storage)?,
            msgids: txn.open_table(MSGIDS).map_err(storage)?,
            awaiting: txn.open_table(AWAITING).map_err(storage)?,
            seen: txn.open_table(EVENTS_SEEN).map_err(storage)?,
            cbs: txn.open_table(CALLBACKS).map_err(storage)?,
        })
    }

    pub(super) fn record(&self, id: u128) -> Result<Option<MessageRecord>, StoreError> {
        record_with_progress(&self.messages, &self.progress, id)
    }

    /// Writes a new record in its stored form (at accept; [`crate::store::embedded::stored`]).
    pub(super) fn put_stored(&mut self, id: u128, bytes: &[u8]) -> Result<(), StoreError> {
        self.messages.insert(id, bytes).map_err(storage)?;
        Ok(())
    }

    /// Writes what changed in a stored record since its accept: its progress.
    pub(super) fn put_progress(&mut self, record: &MessageRecord) -> Result<(), StoreError> {
        self.put_progress_bytes(record.id.as_u128(), &progress::encode(record)?)
    }

    /// Writes a progress encoded before ([`progress::encode`]).
    pub(super) fn put_progress_bytes(&mut self, id: u128, bytes: &[u8]) -> Result<(), StoreError> {
        self.progress.insert(id, bytes).map_err(storage)?;
        Ok(())
    }

    /// Writes a pending callback about `record` when it has somewhere to go; returns whether.
    pub(super) fn add_callback(
        &mut self,
        default_callback: bool,
        record: &MessageRecord,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        if !(default_callback || record.message.callback_url.is_some()) {
            return Ok(false);
        }
        let cb = PendingCallback::new(record, now);
        self.cbs
            .insert((cb.key.due_ms, cb.key.id), encode_cb(&cb)?.as_slice())
            .map_err(storage)?;
        Ok(true)
    }
}

pub(super) fn encode_cb(cb: &PendingCallback) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(cb).map_err(|e| StoreError::storage(format!("encode callback: {e}"), e))
}

/// What a group has decided so far.
#[derive(Debug)]
pub(super) struct Group {
    /// Pending messages at most (`maxMessages`).
    pub(super) max_messages: u64,
    /// Whether every final state gets a callback (a default callback URL is set).
    pub(super) default_callback: bool,
    /// Whether delivered messages get the events receiver's indexes (`events.token` is set).
    pub(super) event_indexes: bool,
    pub(super) now: Timestamp,
    pub(super) now_ms: u64,
    /// Pending messages, counting this group's accepts, replays and final states.
    pub(super) pending: u64,
    /// Whether a callback was written (the callback worker is woken after the commit).
    pub(super) callbacks_added: bool,
    /// `(used, max)` when the disk budget is spent: new messages are refused.
    pub(super) over_budget: Option<(u64, u64)>,
    /// How many more accepted messages may go without a `schedule` entry in this group (0
    /// while entries wait on disk beyond the in-memory head: see `MAX_UNSCHEDULED`).
    pub(super) unscheduled_room: usize,
    /// The lowest id this group accepted without a `schedule` entry.
    pub(super) unscheduled_min: Option<u128>,
    /// Messages without a `schedule` entry that this group finished, rescheduled (with an
    /// entry) or spilled: they leave the in-memory set after the commit.
    pub(super) unscheduled_ended: Vec<u128>,
    /// The store's shared state (the in-memory schedule says which messages have no entry).
    pub(super) shared: Arc<Shared>,
}

impl Group {
    /// Whether the pending message `id` has no `schedule` entry.
    pub(super) fn is_unscheduled(&self, id: u128) -> bool {
        self.shared.index.lock().is_unscheduled(id)
    }
}
