//! The embedded durable queue on local disk, built on `redb` (copy-on-write B-trees with
//! checksummed commits: a commit either happened completely or not at all, also after
//! `kill -9` or a power cut).
//!
//! **Group commit.** One writer thread owns every write. Callers send it operations (accepts,
//! attempt outcomes, replays) through a channel; it takes whatever has queued up, applies it all
//! in one write transaction, commits once (one `fsync`), and only then answers the callers and
//! updates the in-memory schedule. So concurrent accepts share one sync, a 202 is only answered
//! after its commit, and memory never runs ahead of the disk.
//!
//! **Leases** live in memory (`super::index`): a leased message stays pending on disk until its
//! outcome is committed, so after a crash it is simply due again (and is re-sent with the same
//! `client_msg_id`, which WeChat de-duplicates). A message accepted while the whole schedule is
//! in memory gets no durable `schedule` entry at all (up to `writer::MAX_UNSCHEDULED`, for 10 s
//! at most): it is held in memory until its first outcome, and a restart finds it from a
//! durable mark (`schema.rs`).
//!
//! **A bounded schedule in memory.** Only the head of the schedule, the earliest-due entries
//! (about `super::index::HEAD`) up to a watermark, is held in memory; the rest stays in the
//! durable `schedule` table and is only counted. The writer thread refills the head from that
//! table when a lease finds it low (`writer/head.rs`). This is the queue's own
//! scheduling over redb, hand-written because its one invariant (every durable entry up to
//! the watermark is in memory, so none is stranded on disk) holds only if the thread that
//! commits is also the one that reads the table and moves the watermark.
//!
//! Its parts: `schema.rs` (the tables, reading the schedule back on open), `stored.rs` (the
//! record as accepted, in its binary form, encoded by the caller of an accept), `progress.rs`
//! (what changed in a record since its accept, written instead of the whole record),
//! `rollback.rs` (the binary records rewritten as JSON, for a rollback), `shared.rs` (what the
//! handles and the writer thread share), `budget.rs` (the disk budget), `writer/` (the one
//! writer thread), and this file: the store's handle, its reads and leases, and the [`Store`]
//! implementation.
//!
//! **Why one file of about 610 lines.** The [`Store`] implementation is one `impl` block: each
//! method hands an operation to the writer or reads through the shared state, and splitting the
//! block would scatter one trait's contract over files; the handle's own state (opening,
//! healing, the lease path) is what the rest holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use jiff::Timestamp;
use parking_lot::{Mutex, RwLock};
use redb::ReadableTable;
use tokio::sync::{Notify, oneshot};

mod budget;
pub use budget::DiskBudget;
mod credits;
mod progress;
mod reads;
mod rollback;
mod schema;
mod shared;
mod stored;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_formats;
mod writer;

use reads::{read_leased, read_record, wait_for_work};
use schema::{
    CALLBACKS, CREDITS, DEAD, MESSAGES, PROGRESS, load_index, open_db, record_with_progress,
    storage,
};
use shared::{Fresh, Shared};
use writer::{Op, Writer};

use super::index::{HEAD, IdMap};
use super::{
    AcceptItem, Accepted, CallbackKey, DeadLetterPage, Leased, PendingCallback, QueueCounts, Store,
    StoreError, each_failed, millis,
};
use super::{DeliveryEvent, EventOutcome};
use crate::message::{MessageId, MessageRecord, Status};
use crate::ratelog::LogLimiter;

/// Longest wait between looks at the callbacks table (new ones wake the worker at once).
const CALLBACK_POLL: Duration = Duration::from_millis(100);

/// Operations from producers (accepts, replays, events) waiting for the writer at most; beyond
/// it they are refused with [`StoreError::Busy`] (HTTP 503), so the writer's queue is bounded.
/// Completions and callback outcomes are bounded by their worker pools and always queue.
pub(crate) const MAX_QUEUED_OPS: usize = 16_384;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The folder holding the store file.
    pub path: PathBuf,
    /// Pending messages at most; beyond it accepts fail with [`StoreError::Full`].
    pub max_messages: u64,
    /// How long finished messages (and dead letters) are kept.
    pub retention: Duration,
    /// Whether the channel has a default callback URL (`callbacks.url`): then every final
    /// state gets a pending callback, else only messages with their own `callback_url`.
    pub default_callback: bool,
    /// How long healing may fail before [`Store::is_live`] says no (`unhealthyAfter`).
    pub unhealthy_after: Duration,
    /// The disk budget in bytes: accepts and replays get [`StoreError::OverBudget`] while the
    /// database holds this much (`None`: no budget).
    pub max_bytes: Option<u64>,
    /// Whether the channel takes delivery events (`events.token` is set). Only then does a
    /// delivered message get the events receiver's indexes (`msgids`, `awaiting_event`):
    /// without a token the receiver refuses every event, so nothing would read them.
    pub event_indexes: bool,
}

/// The embedded store. Cheap to clone; all clones share one writer.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
}

impl EmbeddedStore {
    /// The disk budget, when there is one: a handle that does not keep the store open.
    pub fn disk_budget(&self) -> Option<DiskBudget> {
        self.shared.budget.clone().map(budget::DiskBudget)
    }

    /// Opens (or creates) the store in `options.path` and starts its writer thread. Every
    /// message that was leased when the process last stopped is due again.
    pub fn open(options: &EmbeddedOptions) -> Result<Self, StoreError> {
        Self::open_with_head(options, HEAD, writer::MAX_UNSCHEDULED)
    }

    /// [`EmbeddedStore::open`] with an in-memory head of `head` entries, and at most
    /// `max_unscheduled` messages pending without a `schedule` entry (0: none, every accept
    /// writes its entry).
    pub(crate) fn open_with_head(
        options: &EmbeddedOptions,
        head: usize,
        max_unscheduled: usize,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&options.path).map_err(|e| {
            StoreError::storage(format!("cannot create {}: {e}", options.path.display()), e)
        })?;
        let file = options.path.join("wxpush-queue.redb");
        let db = open_db(&file)?;
        let index = load_index(&db, head, &IdMap::default())?;
        tracing::info!(
            path = %file.display(),
            pending = index.pending(),
            in_memory = index.held(),
            dead = index.dead,
            "embedded queue opened"
        );
        let shared = Arc::new(Shared {
            budget: options.max_bytes.map(|b| Arc::new(budget::Budget::new(b))),
            file,
            db: RwLock::new(Some(db)),
            index: Mutex::new(index),
            head,
            refill_asked: AtomicBool::new(false),
            work: Notify::new(),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            unhealthy_since: Mutex::new(None),
            unhealthy_after: options.unhealthy_after,
            failures: AtomicU32::new(0),
            queued: AtomicUsize::new(0),
            logs: LogLimiter::default(),
            unrecorded: Mutex::new(IdMap::default()),
            fresh: Mutex::new(Fresh::default()),
            callbacks_leased: Mutex::new(std::collections::HashSet::new()),
            callback_work: Notify::new(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            max_messages: options.max_messages,
            retention: options.retention,
            default_callback: options.default_callback,
            event_indexes: options.event_indexes,
            max_unscheduled,
        };
        std::thread::Builder::new()
            .name("wxpush-store-writer".into())
            .spawn(move || {
                let closed = writer.run(&rx);
                // Release the database before saying so, so that it can be opened again.
                drop(writer);
                if let Some(reply) = closed {
                    let _ = reply.send(());
                }
            })
            .map_err(|e| StoreError::storage(format!("cannot start the writer thread: {e}"), e))?;
        Ok(Self { shared, tx })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.tx.send(op).map_err(|_| StoreError::Closed)
    }

    /// Sends a producer's operation, unless [`MAX_QUEUED_OPS`] are already waiting or the
    /// store is healing (then it fails at once: a 503 without touching the disk).
    fn send_bounded(&self, op: Op) -> Result<(), StoreError> {
        if !self.shared.healthy.load(Ordering::Relaxed) {
            return Err(StoreError::Storage(
                "the queue cannot be written now (healing after a storage error)".into(),
            ));
        }
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_OPS {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Busy);
        }
        self.send(op).inspect_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::storage(format!("read task failed: {e}"), e))?
    }

    /// The store file's folder.
    pub fn file_in(path: &Path) -> PathBuf {
        path.join("wxpush-queue.redb")
    }
}

impl Store for EmbeddedStore {
    async fn add_credits(
        &self,
        openid: &str,
        template_id: &str,
        count: u64,
    ) -> Result<u64, StoreError> {
        self.change_credits(openid, template_id, move |n| Some(n.saturating_add(count)))
            .await
            .map(|(n, _)| n)
    }

    async fn credits(&self, openid: &str, template_id: &str) -> Result<u64, StoreError> {
        let (openid, template_id) = (openid.to_string(), template_id.to_string());
        self.read(move |shared| {
            let txn = shared.begin_read()?;
            let table = match txn.open_table(CREDITS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(storage(e)),
            };
            Ok(table
                .get((openid.as_str(), template_id.as_str()))
                .map_err(storage)?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    async fn take_credit(&self, openid: &str, template_id: &str) -> Result<bool, StoreError> {
        self.change_credits(openid, template_id, |n| n.checked_sub(1))
            .await
            .map(|(_, taken)| taken)
    }

    async fn accept(&self, items: Vec<AcceptItem>) -> Result<Vec<Accepted>, StoreError> {
        // The records are encoded here, on the caller's thread, so that the one writer only
        // sets their accept time and inserts them.
        let items = items
            .into_iter()
            .map(|item| stored::encode(&item).map(|bytes| (item, bytes)))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = oneshot::channel();
        self.send_bounded(Op::Accept { items, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Leased>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a wake-up between the look and the wait
            // is not lost.
            let notified = self.shared.work.notified();
            let now_ms = millis(Timestamp::now());
            let (taken, next, low) = {
                let mut index = self.shared.index.lock();
                let taken = index.take_due(now_ms, max);
                (taken, index.next_due(), index.refill_wanted().is_some())
            };
            if low && !self.shared.refill_asked.swap(true, Ordering::AcqRel) {
                // The writer refills the head from disk and wakes this loop.
                let _ = self.send(Op::Refill);
            }
            if !taken.is_empty() {
                // First leases of fresh messages come from memory; the rest from disk.
                let mut out = Vec::with_capacity(taken.len());
                let mut rest = Vec::new();
                {
                    let mut fresh = self.shared.fresh.lock();
                    for (slot, id) in taken {
                        match fresh.take(id) {
                            Some(record) => out.push(Leased {
                                record,
                                slot,
                                unrecorded: None,
                            }),
                            None => rest.push((slot, id)),
                        }
                    }
                }
                if !rest.is_empty() {
                    out.extend(
                        self.read(move |shared| Ok(read_leased(shared, rest)))
                            .await?,
                    );
                }
                return Ok(out);
            }
            if !wait_for_work(notified, deadline, deadline, next, now_ms).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn complete(&self, slot: u64, record: MessageRecord) -> Result<(), StoreError> {
        // When the write fails, the writer gives the lease back (due after a delay) and keeps
        // the record for its next lease, so that this outcome is recorded instead of sent
        // again. A closed store keeps nothing: the process is stopping.
        let (reply, rx) = oneshot::channel();
        let id = record.id.as_u128();
        match self.send(Op::Complete {
            slot,
            record: Box::new(record),
            reply,
        }) {
            Err(e) => {
                self.shared.give_back(id);
                Err(e)
            }
            Ok(()) => rx.await.map_err(|_| StoreError::Closed).and_then(|r| r),
        }
    }

    async fn start_attempt(&self, leased: &Leased, at: Timestamp) -> Result<(), StoreError> {
        let mut started = self.start_attempts(&[leased], at).await;
        started.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// One writer operation for the lot: each message's progress with its start, encoded here
    /// from the record its lease holds (nothing else writes a leased record), not a rewrite of
    /// the record. All or nothing: on failure every lease goes back, due after a delay.
    async fn start_attempts(
        &self,
        leased: &[&Leased],
        at: Timestamp,
    ) -> Vec<Result<(), StoreError>> {
        let n = leased.len();
        let encode = |l: &&Leased| progress::encode_started(&l.record, at);
        let items = match leased.iter().map(encode).collect::<Result<Vec<_>, _>>() {
            Ok(bytes) => leased.iter().map(|l| l.record.id.as_u128()).zip(bytes),
            Err(e) => {
                for l in leased {
                    self.shared.give_back(l.record.id.as_u128());
                }
                return each_failed(n, e);
            }
        };
        let items: Vec<(u128, Vec<u8>)> = items.collect();
        let (reply, rx) = oneshot::channel();
        let ids: Vec<u128> = items.iter().map(|(id, _)| *id).collect();
        let result = match self.send(Op::StartAttempts { items, reply }) {
            Err(e) => {
                for id in ids {
                    self.shared.give_back(id);
                }
                Err(e)
            }
            Ok(()) => rx.await.map_err(|_| StoreError::Closed).and_then(|r| r),
        };
        match result {
            Ok(()) => (0..n).map(|_| Ok(())).collect(),
            Err(e) => each_failed(n, e),
        }
    }

    /// One writer operation with one answer for the lot; like [`Store::complete`], a write
    /// that fails gives the leases back and keeps the outcomes for their next leases.
    async fn complete_many(&self, items: Vec<(u64, MessageRecord)>) -> Vec<Result<(), StoreError>> {
        let n = items.len();
        let ids: Vec<u128> = items.iter().map(|(_, r)| r.id.as_u128()).collect();
        let items = items
            .into_iter()
            .map(|(slot, record)| (slot, Box::new(record)))
            .collect();
        let (reply, rx) = oneshot::channel();
        match self.send(Op::CompleteMany { items, reply }) {
            Err(e) => {
                for id in ids {
                    self.shared.give_back(id);
                }
                each_failed(n, e)
            }
            Ok(()) => match rx.await {
                Ok(Ok(answers)) => answers,
                Ok(Err(e)) => each_failed(n, e),
                Err(_) => each_failed(n, StoreError::Closed),
            },
        }
    }

    async fn get(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.read(move |shared| {
            let mut record = read_record(shared, id.as_u128())?;
            if let Some(r) = record.as_mut()
                && shared.index.lock().is_leased(id.as_u128())
            {
                r.status = Status::Sending;
            }
            Ok(record)
        })
        .await
    }

    async fn dead_letters(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        self.read(move |shared| {
            let txn = shared.begin_read()?;
            let dead = txn.open_table(DEAD).map_err(storage)?;
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            let progress = txn.open_table(PROGRESS).map_err(storage)?;
            let start = after.map_or(0, |a| a.as_u128().saturating_add(1));
            let mut items = Vec::new();
            let mut more = false;
            for entry in dead.range(start..).map_err(storage)? {
                let (key, _) = entry.map_err(storage)?;
                if items.len() == limit {
                    more = true;
                    break;
                }
                if let Some(r) = record_with_progress(&messages, &progress, key.value())? {
                    items.push(r);
                }
            }
            let next = if more {
                items.last().map(|r: &MessageRecord| r.id)
            } else {
                None
            };
            Ok(DeadLetterPage { items, next })
        })
        .await
    }

    async fn replay(&self, id: MessageId) -> Result<MessageRecord, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send_bounded(Op::Replay { id, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_recall(&self, id: MessageId, at: Timestamp) -> Result<Timestamp, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send_bounded(Op::Recall { id, at, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_event(
        &self,
        event: DeliveryEvent,
        fallback: bool,
    ) -> Result<EventOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send_bounded(Op::Event {
            event: Box::new(event),
            fallback,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn lease_callbacks(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PendingCallback>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.shared.callback_work.notified();
            let now_ms = millis(Timestamp::now());
            let (due, next) = self
                .read(move |shared| {
                    // Take the lease set before the snapshot: the writer drops a lease only
                    // after its commit, so a snapshot older than that commit still sees the
                    // callback leased and skips it (no double send).
                    let mut leased = shared.callbacks_leased.lock();
                    let txn = shared.begin_read()?;
                    let table = txn.open_table(CALLBACKS).map_err(storage)?;
                    let mut out = Vec::new();
                    let mut next = None;
                    for entry in table.iter().map_err(storage)? {
                        let (k, v) = entry.map_err(storage)?;
                        let (due_ms, id) = k.value();
                        if leased.contains(&id) {
                            continue;
                        }
                        if due_ms > now_ms || out.len() == max {
                            next = Some(due_ms);
                            break;
                        }
                        match serde_json::from_slice::<PendingCallback>(v.value()) {
                            Ok(mut cb) => {
                                cb.key = CallbackKey { due_ms, id };
                                leased.insert(id);
                                out.push(cb);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "undecodable pending callback skipped");
                            }
                        }
                    }
                    Ok((out, next))
                })
                .await?;
            if !due.is_empty() {
                return Ok(due);
            }
            let poll = tokio::time::Instant::now() + CALLBACK_POLL;
            if !wait_for_work(notified, deadline, poll, next, now_ms).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn finish_callback(
        &self,
        key: CallbackKey,
        next: Option<(Timestamp, u32)>,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.send(Op::FinishCallback { key, next, reply }) {
            self.shared.callbacks_leased.lock().remove(&key.id);
            return Err(e);
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn pull_in(
        &self,
        entries: Vec<(u64, MessageId)>,
        to: Timestamp,
    ) -> Result<u64, StoreError> {
        let entries: Vec<(u64, u128)> = entries
            .into_iter()
            .map(|(slot, id)| (slot, id.as_u128()))
            .collect();
        let to_ms = millis(to);
        let (mut moved, beyond) = self.shared.index.lock().pull_in(&entries, to_ms);
        if moved > 0 {
            self.shared.work.notify_waiters();
        }
        if !beyond.is_empty() {
            // Not in memory: the writer checks them against the durable schedule.
            let (reply, rx) = oneshot::channel();
            self.send(Op::PullIn {
                entries: beyond,
                to_ms,
                reply,
            })?;
            moved += rx.await.map_err(|_| StoreError::Closed)??;
        }
        Ok(moved)
    }

    fn counts(&self) -> QueueCounts {
        let index = self.shared.index.lock();
        let now = millis(Timestamp::now());
        let (ready, delayed, inflight) = index.counts(now);
        QueueCounts {
            ready,
            delayed,
            inflight,
            dead: index.dead,
            oldest_ready_ms: index.oldest_due(now),
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed) && !self.shared.closed.load(Ordering::Relaxed)
    }

    fn is_live(&self) -> bool {
        self.shared
            .unhealthy_since
            .lock()
            .is_none_or(|since| since.elapsed() < self.shared.unhealthy_after)
    }

    async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Op::Close { reply }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }
}
