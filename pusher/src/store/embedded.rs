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
//! **Leases** live in memory ([`super::index`]): a leased message stays in the durable schedule
//! until its outcome is committed, so after a crash it is simply due again (and is re-sent with
//! the same `client_msg_id`, which WeChat de-duplicates).
//!
//! Tables: `messages` (id → JSON record), `schedule` ((due ms, id) for pending messages),
//! `finished` ((finished ms, id), for retention), `dead` (dead-letter ids), `idempotency`
//! (key → id), `msgids` (WeChat msgid → id), `awaiting_event` ((openid, delivered ms, id) of
//! delivered messages without an event), `events_seen` ((openid, CreateTime, MsgID) → id),
//! `callbacks` ((due ms, callback id) → JSON [`PendingCallback`], written in the same
//! transaction as the state change that causes the callback).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parking_lot::Mutex;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{Notify, oneshot};

use super::index::Index;
use super::{
    AcceptItem, Accepted, CallbackKey, DeadLetterPage, Leased, PendingCallback, QueueCounts, Store,
    StoreError, millis,
};
use super::{DeliveryEvent, EventOutcome, MatchedBy, apply_event};
use crate::message::{MessageId, MessageRecord, Status};

const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
const SCHEDULE: TableDefinition<(u64, u128), ()> = TableDefinition::new("schedule");
const FINISHED: TableDefinition<(u64, u128), ()> = TableDefinition::new("finished");
const DEAD: TableDefinition<u128, ()> = TableDefinition::new("dead");
const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency");
/// WeChat `msgid` → message id, written when a message is completed as `delivered`.
const MSGIDS: TableDefinition<i64, u128> = TableDefinition::new("msgids");
/// `(openid, delivered_ms, id)` of delivered messages with no event yet (the `MsgID` 0
/// fallback).
const AWAITING: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("awaiting_event");
/// `(openid, CreateTime, MsgID)` of recorded events → the message (de-duplication).
const EVENTS_SEEN: TableDefinition<(&str, u64, i64), u128> = TableDefinition::new("events_seen");
/// `(due_ms, callback id)` → JSON [`PendingCallback`].
const CALLBACKS: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("callbacks");
/// Longest wait between looks at the callbacks table (new ones wake the worker at once).
const CALLBACK_POLL: Duration = Duration::from_millis(100);

/// Most operations applied in one commit.
const MAX_GROUP: usize = 8192;
/// Most finished messages removed by one retention sweep (keeps each sweep's commit small).
const SWEEP_BATCH: usize = 5000;

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
}

fn storage<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Storage(e.into().to_string())
}

fn encode(record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Storage(format!("encode record: {e}")))
}

/// Writes a pending callback about `record` when it has somewhere to go; returns whether.
fn add_callback(
    cbs: &mut redb::Table<(u64, u128), &[u8]>,
    default_callback: bool,
    record: &MessageRecord,
    now: Timestamp,
) -> Result<bool, StoreError> {
    if !(default_callback || record.message.callback_url.is_some()) {
        return Ok(false);
    }
    let cb = PendingCallback::new(record, now);
    cbs.insert((cb.key.due_ms, cb.key.id), encode_cb(&cb)?.as_slice())
        .map_err(storage)?;
    Ok(true)
}

fn encode_cb(cb: &PendingCallback) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(cb).map_err(|e| StoreError::Storage(format!("encode callback: {e}")))
}

fn decode(bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("decode record: {e}")))
}

/// What the store and its handles share.
#[derive(Debug)]
struct Shared {
    db: Database,
    index: Mutex<Index>,
    work: Notify,
    healthy: AtomicBool,
    closed: AtomicBool,
    /// Callback ids leased to the callback worker.
    callbacks_leased: Mutex<std::collections::HashSet<u128>>,
    /// Woken when callbacks were added.
    callback_work: Notify,
}

/// The embedded store. Cheap to clone; all clones share one writer.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
}

#[derive(Debug)]
enum Op {
    Accept {
        items: Vec<AcceptItem>,
        reply: oneshot::Sender<Result<Vec<Accepted>, StoreError>>,
    },
    Complete {
        slot: u64,
        record: Box<MessageRecord>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Replay {
        id: MessageId,
        reply: oneshot::Sender<Result<MessageRecord, StoreError>>,
    },
    Event {
        event: Box<DeliveryEvent>,
        fallback: bool,
        reply: oneshot::Sender<Result<EventOutcome, StoreError>>,
    },
    FinishCallback {
        key: CallbackKey,
        next: Option<(Timestamp, u32)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// What to do once a group's commit succeeded.
#[derive(Debug)]
enum Effect {
    Accepted {
        new: Vec<u128>,
        due: u64,
        results: Vec<Accepted>,
        reply: oneshot::Sender<Result<Vec<Accepted>, StoreError>>,
    },
    Completed {
        id: u128,
        due: Option<u64>,
        dead: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Replayed {
        record: Box<MessageRecord>,
        due: u64,
        reply: oneshot::Sender<Result<MessageRecord, StoreError>>,
    },
    Evented {
        outcome: EventOutcome,
        reply: oneshot::Sender<Result<EventOutcome, StoreError>>,
    },
    CallbackFinished {
        id: u128,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Effect {
    fn fail(self, shared: &Shared, err: &str) {
        let e = || StoreError::Storage(err.to_string());
        match self {
            Self::Accepted { reply, .. } => {
                let _ = reply.send(Err(e()));
            }
            Self::Completed { id, reply, .. } => {
                shared.index.lock().unlease(id);
                let _ = reply.send(Err(e()));
            }
            Self::Replayed { reply, .. } => {
                let _ = reply.send(Err(e()));
            }
            Self::Evented { reply, .. } => {
                let _ = reply.send(Err(e()));
            }
            Self::CallbackFinished { id, reply } => {
                shared.callbacks_leased.lock().remove(&id);
                let _ = reply.send(Err(e()));
            }
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `options.path` and starts its writer thread. Every
    /// message that was leased when the process last stopped is due again.
    pub fn open(options: &EmbeddedOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&options.path).map_err(|e| {
            StoreError::Storage(format!("cannot create {}: {e}", options.path.display()))
        })?;
        let file = options.path.join("wxpush-queue.redb");
        let db = Database::create(&file).map_err(storage)?;
        let index = load_index(&db)?;
        tracing::info!(
            path = %file.display(),
            pending = index.pending(),
            dead = index.dead,
            "embedded queue opened"
        );
        let shared = Arc::new(Shared {
            db,
            index: Mutex::new(index),
            work: Notify::new(),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            callbacks_leased: Mutex::new(std::collections::HashSet::new()),
            callback_work: Notify::new(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            max_messages: options.max_messages,
            retention: options.retention,
            default_callback: options.default_callback,
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
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { shared, tx })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.tx.send(op).map_err(|_| StoreError::Closed)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?
    }

    /// The store file's folder.
    pub fn file_in(path: &Path) -> PathBuf {
        path.join("wxpush-queue.redb")
    }
}

fn load_index(db: &Database) -> Result<Index, StoreError> {
    // Create the tables on first open, so that readers never meet a missing table.
    let txn = db.begin_write().map_err(storage)?;
    {
        txn.open_table(MESSAGES).map_err(storage)?;
        txn.open_table(SCHEDULE).map_err(storage)?;
        txn.open_table(FINISHED).map_err(storage)?;
        txn.open_table(DEAD).map_err(storage)?;
        txn.open_table(IDEMPOTENCY).map_err(storage)?;
        txn.open_table(MSGIDS).map_err(storage)?;
        txn.open_table(AWAITING).map_err(storage)?;
        txn.open_table(EVENTS_SEEN).map_err(storage)?;
        txn.open_table(CALLBACKS).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let mut index = Index::default();
    let schedule = txn.open_table(SCHEDULE).map_err(storage)?;
    for entry in schedule.iter().map_err(storage)? {
        let (key, _) = entry.map_err(storage)?;
        let (due, id) = key.value();
        index.schedule(due, id);
    }
    index.dead = txn
        .open_table(DEAD)
        .map_err(storage)?
        .len()
        .map_err(storage)?;
    Ok(index)
}

fn read_record(shared: &Shared, id: u128) -> Result<Option<MessageRecord>, StoreError> {
    let txn = shared.db.begin_read().map_err(storage)?;
    let table = txn.open_table(MESSAGES).map_err(storage)?;
    let got = table.get(id).map_err(storage)?;
    got.map(|v| decode(v.value())).transpose()
}

/// The wait of the two lease loops: until `notified` fires (new work), the next scheduled entry
/// is due (`next_ms`, in store milliseconds, read at `now_ms`), `wake` passes, or `deadline`
/// passes. Returns `false`, without waiting, once the deadline has passed.
async fn wait_for_work(
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

impl Store for EmbeddedStore {
    async fn accept(&self, items: Vec<AcceptItem>) -> Result<Vec<Accepted>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Accept { items, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Leased>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a wake-up between the look and the wait
            // is not lost.
            let notified = self.shared.work.notified();
            let now_ms = millis(Timestamp::now());
            let (taken, next) = {
                let mut index = self.shared.index.lock();
                let taken = index.take_due(now_ms, max);
                (taken, index.next_due())
            };
            if !taken.is_empty() {
                return self
                    .read(move |shared| {
                        let txn = shared.db.begin_read().map_err(storage)?;
                        let table = txn.open_table(MESSAGES).map_err(storage)?;
                        let mut out = Vec::with_capacity(taken.len());
                        for (slot, id) in taken {
                            let record = match table.get(id) {
                                Ok(Some(v)) => decode(v.value()),
                                Ok(None) => Err(StoreError::NotFound(MessageId::from_u128(id))),
                                Err(e) => Err(storage(e)),
                            };
                            match record {
                                Ok(record) if !record.status.is_final() => {
                                    out.push(Leased { record, slot });
                                }
                                Ok(_) | Err(StoreError::NotFound(_)) => {
                                    // Not pending any more: drop the stale schedule entry.
                                    tracing::warn!(id = %MessageId::from_u128(id), "stale schedule entry");
                                    shared.index.lock().release(id, None);
                                }
                                Err(e) => {
                                    shared.index.lock().unlease(id);
                                    return Err(e);
                                }
                            }
                        }
                        Ok(out)
                    })
                    .await;
            }
            if !wait_for_work(notified, deadline, deadline, next, now_ms).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn complete(&self, slot: u64, record: MessageRecord) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let id = record.id.as_u128();
        if let Err(e) = self.send(Op::Complete {
            slot,
            record: Box::new(record),
            reply,
        }) {
            self.shared.index.lock().unlease(id);
            return Err(e);
        }
        rx.await.map_err(|_| StoreError::Closed)?
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
            let txn = shared.db.begin_read().map_err(storage)?;
            let dead = txn.open_table(DEAD).map_err(storage)?;
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            let start = after.map_or(0, |a| a.as_u128().saturating_add(1));
            let mut items = Vec::new();
            let mut more = false;
            for entry in dead.range(start..).map_err(storage)? {
                let (key, _) = entry.map_err(storage)?;
                if items.len() == limit {
                    more = true;
                    break;
                }
                if let Some(v) = messages.get(key.value()).map_err(storage)? {
                    items.push(decode(v.value())?);
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
        self.send(Op::Replay { id, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_event(
        &self,
        event: DeliveryEvent,
        fallback: bool,
    ) -> Result<EventOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Event {
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
                    let txn = shared.db.begin_read().map_err(storage)?;
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

    fn counts(&self) -> QueueCounts {
        let index = self.shared.index.lock();
        let (ready, delayed, inflight) = index.counts(millis(Timestamp::now()));
        QueueCounts {
            ready,
            delayed,
            inflight,
            dead: index.dead,
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed) && !self.shared.closed.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Op::Close { reply }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }
}

/// The one writer.
#[derive(Debug)]
struct Writer {
    shared: Arc<Shared>,
    max_messages: u64,
    retention: Duration,
    default_callback: bool,
}

impl Writer {
    /// Serves operations until closed (answered with the returned sender) or disconnected.
    fn run(&self, rx: &mpsc::Receiver<Op>) -> Option<oneshot::Sender<()>> {
        let sweep_every =
            (self.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        // When a sweep hit its batch limit, the next one is due at once (after the operations
        // waiting by then), so that removal keeps up with any inflow without long commits.
        let mut next_sweep = Instant::now() + sweep_every;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    next_sweep = self.sweep_and_schedule(sweep_every);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            };
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut close = None;
            ops.retain_mut(|op| {
                if let Op::Close { reply } = op {
                    let (dummy, _) = oneshot::channel();
                    close = Some(std::mem::replace(reply, dummy));
                    false
                } else {
                    true
                }
            });
            if !ops.is_empty() {
                self.apply(ops);
            }
            if let Some(reply) = close {
                self.shared.closed.store(true, Ordering::Release);
                // Anything sent after the close but before the flag was seen is answered too.
                let rest: Vec<Op> = rx.try_iter().collect();
                if !rest.is_empty() {
                    self.apply(rest);
                }
                tracing::info!("embedded queue closed");
                return Some(reply);
            }
            if Instant::now() >= next_sweep {
                next_sweep = self.sweep_and_schedule(sweep_every);
            }
        }
    }

    /// Applies a group of operations in one transaction and commits once.
    fn apply(&self, ops: Vec<Op>) {
        let mut ops: std::collections::VecDeque<Op> = ops.into();
        let group = ops.len();
        let started = Instant::now();
        let now = Timestamp::now();
        let now_ms = millis(now);
        let mut effects = Vec::with_capacity(ops.len());
        let mut pending = self.shared.index.lock().pending();
        let mut callbacks_added = false;
        let result = (|| -> Result<(), StoreError> {
            let txn = self.shared.db.begin_write().map_err(storage)?;
            {
                let mut messages = txn.open_table(MESSAGES).map_err(storage)?;
                let mut schedule = txn.open_table(SCHEDULE).map_err(storage)?;
                let mut finished = txn.open_table(FINISHED).map_err(storage)?;
                let mut dead = txn.open_table(DEAD).map_err(storage)?;
                let mut idem = txn.open_table(IDEMPOTENCY).map_err(storage)?;
                let mut msgids = txn.open_table(MSGIDS).map_err(storage)?;
                let mut awaiting = txn.open_table(AWAITING).map_err(storage)?;
                let mut seen = txn.open_table(EVENTS_SEEN).map_err(storage)?;
                let mut cbs = txn.open_table(CALLBACKS).map_err(storage)?;
                let default_callback = self.default_callback;
                while let Some(op) = ops.pop_front() {
                    match op {
                        Op::Accept { items, reply } => {
                            // First pass, read only: resolve idempotency keys and check room,
                            // so that a refused request writes nothing.
                            let mut results = Vec::with_capacity(items.len());
                            let mut fresh = Vec::new();
                            for item in items {
                                let seen = match &item.idempotency_key {
                                    Some(k) => {
                                        idem.get(k.as_str()).map_err(storage)?.map(|v| v.value())
                                    }
                                    None => None,
                                };
                                match seen {
                                    Some(first) => {
                                        let status = messages
                                            .get(first)
                                            .map_err(storage)?
                                            .map(|v| decode(v.value()))
                                            .transpose()?
                                            .map_or(Status::Queued, |r| r.status);
                                        results.push(Accepted {
                                            id: MessageId::from_u128(first),
                                            status,
                                            duplicate: true,
                                        });
                                    }
                                    None => {
                                        let record = MessageRecord::new(
                                            MessageId::new(),
                                            item.message,
                                            item.idempotency_key,
                                            now,
                                        );
                                        results.push(Accepted {
                                            id: record.id,
                                            status: Status::Queued,
                                            duplicate: false,
                                        });
                                        fresh.push(record);
                                    }
                                }
                            }
                            let adding = fresh.len() as u64;
                            if pending + adding > self.max_messages {
                                let _ = reply.send(Err(StoreError::Full {
                                    pending,
                                    max: self.max_messages,
                                    retry_after: Duration::from_secs(1),
                                }));
                                continue;
                            }
                            pending += adding;
                            let mut new = Vec::with_capacity(fresh.len());
                            for record in &fresh {
                                let id = record.id.as_u128();
                                messages
                                    .insert(id, encode(record)?.as_slice())
                                    .map_err(storage)?;
                                schedule.insert((now_ms, id), ()).map_err(storage)?;
                                if let Some(k) = &record.idempotency_key {
                                    idem.insert(k.as_str(), id).map_err(storage)?;
                                }
                                new.push(id);
                            }
                            effects.push(Effect::Accepted {
                                new,
                                due: now_ms,
                                results,
                                reply,
                            });
                        }
                        Op::Complete {
                            slot,
                            record,
                            reply,
                        } => {
                            let id = record.id.as_u128();
                            let due = if record.status.is_final() {
                                pending = pending.saturating_sub(1);
                                None
                            } else {
                                Some(millis(record.next_attempt_at.unwrap_or(now)))
                            };
                            // The effect first: if a write below fails, the lease goes back.
                            effects.push(Effect::Completed {
                                id,
                                due,
                                dead: record.dead_letter,
                                reply,
                            });
                            schedule.remove((slot, id)).map_err(storage)?;
                            match due {
                                None => {
                                    let at = millis(record.finished_at.unwrap_or(now));
                                    finished.insert((at, id), ()).map_err(storage)?;
                                    if record.dead_letter {
                                        dead.insert(id, ()).map_err(storage)?;
                                    }
                                }
                                Some(at) => {
                                    schedule.insert((at, id), ()).map_err(storage)?;
                                }
                            }
                            if record.status == Status::Delivered {
                                let at = millis(record.finished_at.unwrap_or(now));
                                awaiting
                                    .insert((record.message.touser.as_str(), at, id), ())
                                    .map_err(storage)?;
                                if let Some(m) = record.msgid.filter(|&m| m != 0) {
                                    msgids.insert(m, id).map_err(storage)?;
                                }
                            }
                            if super::wants_callback(record.status) {
                                callbacks_added |=
                                    add_callback(&mut cbs, default_callback, &record, now)?;
                            }
                            messages
                                .insert(id, encode(&record)?.as_slice())
                                .map_err(storage)?;
                        }
                        Op::Event {
                            event,
                            fallback,
                            reply,
                        } => {
                            let key = (event.openid.as_str(), event.create_time, event.msgid);
                            if seen.get(key).map_err(storage)?.is_some() {
                                effects.push(Effect::Evented {
                                    outcome: EventOutcome::Duplicate,
                                    reply,
                                });
                                continue;
                            }
                            let mut found = None;
                            if event.msgid != 0
                                && let Some(v) = msgids.get(event.msgid).map_err(storage)?
                            {
                                found = Some((v.value(), MatchedBy::Msgid));
                            }
                            if found.is_none() && fallback {
                                let openid = event.openid.as_str();
                                let last = awaiting
                                    .range((openid, 0, 0)..=(openid, u64::MAX, u128::MAX))
                                    .map_err(storage)?
                                    .next_back()
                                    .transpose()
                                    .map_err(storage)?
                                    .map(|(k, _)| k.value().2);
                                found = last.map(|id| (id, MatchedBy::OpenidFallback));
                            }
                            let record = match found {
                                Some((id, by)) => messages
                                    .get(id)
                                    .map_err(storage)?
                                    .map(|v| decode(v.value()))
                                    .transpose()?
                                    .map(|r| (r, by)),
                                None => None,
                            };
                            let Some((mut record, by)) = record else {
                                effects.push(Effect::Evented {
                                    outcome: EventOutcome::Unmatched,
                                    reply,
                                });
                                continue;
                            };
                            let id = record.id.as_u128();
                            let had_events = !record.events.is_empty();
                            let outcome = apply_event(&mut record, &event, by);
                            if outcome != EventOutcome::Duplicate {
                                if !had_events {
                                    let at = millis(record.finished_at.unwrap_or(now));
                                    awaiting
                                        .remove((record.message.touser.as_str(), at, id))
                                        .map_err(storage)?;
                                }
                                seen.insert(key, id).map_err(storage)?;
                                messages
                                    .insert(id, encode(&record)?.as_slice())
                                    .map_err(storage)?;
                                if matches!(outcome, EventOutcome::Applied { .. }) {
                                    callbacks_added |=
                                        add_callback(&mut cbs, default_callback, &record, now)?;
                                }
                            }
                            effects.push(Effect::Evented { outcome, reply });
                        }
                        Op::Replay { id, reply } => {
                            let key = id.as_u128();
                            let record = messages
                                .get(key)
                                .map_err(storage)?
                                .map(|v| decode(v.value()))
                                .transpose()?;
                            let mut record = match record {
                                None => {
                                    let _ = reply.send(Err(StoreError::NotFound(id)));
                                    continue;
                                }
                                Some(r) if !r.dead_letter => {
                                    let _ = reply.send(Err(StoreError::NotDeadLetter(id)));
                                    continue;
                                }
                                Some(r) => r,
                            };
                            if let Some(exp) = record.message.expires_at
                                && exp <= now
                            {
                                let _ = reply.send(Err(StoreError::PastExpiry(id, exp)));
                                continue;
                            }
                            if pending + 1 > self.max_messages {
                                let _ = reply.send(Err(StoreError::Full {
                                    pending,
                                    max: self.max_messages,
                                    retry_after: Duration::from_secs(1),
                                }));
                                continue;
                            }
                            pending += 1;
                            if let Some(f) = record.finished_at {
                                finished.remove((millis(f), key)).map_err(storage)?;
                            }
                            dead.remove(key).map_err(storage)?;
                            record.status = Status::Queued;
                            record.attempts = 0;
                            record.budget_from = now;
                            record.next_attempt_at = Some(now);
                            record.finished_at = None;
                            record.updated_at = now;
                            record.dead_letter = false;
                            record.replays += 1;
                            messages
                                .insert(key, encode(&record)?.as_slice())
                                .map_err(storage)?;
                            schedule.insert((now_ms, key), ()).map_err(storage)?;
                            effects.push(Effect::Replayed {
                                record: Box::new(record),
                                due: now_ms,
                                reply,
                            });
                        }
                        Op::FinishCallback { key, next, reply } => {
                            effects.push(Effect::CallbackFinished { id: key.id, reply });
                            let old = cbs
                                .remove((key.due_ms, key.id))
                                .map_err(storage)?
                                .map(|v| v.value().to_vec());
                            if let (Some(old), Some((at, attempts))) = (old, next) {
                                let mut cb: PendingCallback = serde_json::from_slice(&old)
                                    .map_err(|e| {
                                        StoreError::Storage(format!("decode callback: {e}"))
                                    })?;
                                cb.attempts = attempts;
                                cbs.insert((millis(at), key.id), encode_cb(&cb)?.as_slice())
                                    .map_err(storage)?;
                            }
                        }
                        Op::Close { .. } => {}
                    }
                }
            }
            txn.commit().map_err(storage)?;
            Ok(())
        })();
        tracing::trace!(group, took = ?started.elapsed(), "group committed");
        match result {
            Ok(()) => {
                self.shared.healthy.store(true, Ordering::Relaxed);
                let mut woke = false;
                {
                    let mut index = self.shared.index.lock();
                    for effect in &effects {
                        match effect {
                            Effect::Accepted { new, due, .. } => {
                                for &id in new {
                                    index.schedule(*due, id);
                                }
                                woke |= !new.is_empty();
                            }
                            Effect::Completed { id, due, dead, .. } => {
                                index.release(*id, *due);
                                if *dead {
                                    index.dead += 1;
                                }
                                woke |= due.is_some();
                            }
                            Effect::Replayed { record, due, .. } => {
                                index.schedule(*due, record.id.as_u128());
                                index.dead = index.dead.saturating_sub(1);
                                woke = true;
                            }
                            Effect::Evented { .. } | Effect::CallbackFinished { .. } => {}
                        }
                    }
                }
                if woke {
                    self.shared.work.notify_one();
                }
                if callbacks_added {
                    self.shared.callback_work.notify_one();
                }
                for effect in effects {
                    match effect {
                        Effect::Accepted { results, reply, .. } => {
                            let _ = reply.send(Ok(results));
                        }
                        Effect::Completed { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                        Effect::Replayed { record, reply, .. } => {
                            let _ = reply.send(Ok(*record));
                        }
                        Effect::Evented { outcome, reply } => {
                            let _ = reply.send(Ok(outcome));
                        }
                        Effect::CallbackFinished { id, reply } => {
                            self.shared.callbacks_leased.lock().remove(&id);
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                // Nothing of this group is durable: fail every caller; leases go back.
                self.shared.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "queue commit failed");
                let msg = e.to_string();
                for effect in effects {
                    effect.fail(&self.shared, &msg);
                }
                // Operations not reached: answer them too (an accept or replay caught mid-way
                // dropped its reply, which its caller sees as an error as well).
                for op in ops {
                    let err = || StoreError::Storage(msg.clone());
                    match op {
                        Op::Accept { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Op::Complete { record, reply, .. } => {
                            self.shared.index.lock().unlease(record.id.as_u128());
                            let _ = reply.send(Err(err()));
                        }
                        Op::Replay { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Op::Event { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Op::FinishCallback { key, reply, .. } => {
                            self.shared.callbacks_leased.lock().remove(&key.id);
                            let _ = reply.send(Err(err()));
                        }
                        Op::Close { reply } => {
                            let _ = reply.send(());
                        }
                    }
                }
            }
        }
    }

    fn sweep_and_schedule(&self, every: Duration) -> Instant {
        if self.sweep() >= SWEEP_BATCH {
            Instant::now()
        } else {
            Instant::now() + every
        }
    }

    /// Removes finished messages older than the retention, with their idempotency keys;
    /// returns how many.
    fn sweep(&self) -> usize {
        let cutoff = millis(Timestamp::now())
            .saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let result = (|| -> Result<(usize, u64), StoreError> {
            let txn = self.shared.db.begin_write().map_err(storage)?;
            let mut removed = 0;
            let mut dead_removed = 0;
            {
                let mut messages = txn.open_table(MESSAGES).map_err(storage)?;
                let mut finished = txn.open_table(FINISHED).map_err(storage)?;
                let mut dead = txn.open_table(DEAD).map_err(storage)?;
                let mut idem = txn.open_table(IDEMPOTENCY).map_err(storage)?;
                let mut msgids = txn.open_table(MSGIDS).map_err(storage)?;
                let mut awaiting = txn.open_table(AWAITING).map_err(storage)?;
                let mut seen = txn.open_table(EVENTS_SEEN).map_err(storage)?;
                let old: Vec<(u64, u128)> = finished
                    .range(..(cutoff, 0))
                    .map_err(storage)?
                    .take(SWEEP_BATCH)
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(storage)?;
                for (at, id) in old {
                    finished.remove((at, id)).map_err(storage)?;
                    if dead.remove(id).map_err(storage)?.is_some() {
                        dead_removed += 1;
                    }
                    let record = messages
                        .remove(id)
                        .map_err(storage)?
                        .map(|v| decode(v.value()))
                        .transpose();
                    if let Ok(Some(r)) = record {
                        if let Some(k) = &r.idempotency_key {
                            idem.remove(k.as_str()).map_err(storage)?;
                        }
                        if let Some(m) = r.msgid {
                            msgids.remove(m).map_err(storage)?;
                        }
                        let openid = r.message.touser.as_str();
                        if r.status == Status::Delivered && r.events.is_empty() {
                            let at = millis(r.finished_at.unwrap_or_default());
                            awaiting.remove((openid, at, id)).map_err(storage)?;
                        }
                        for e in &r.events {
                            seen.remove((openid, e.create_time, e.msgid))
                                .map_err(storage)?;
                        }
                    }
                    removed += 1;
                }
            }
            if removed > 0 {
                txn.commit().map_err(storage)?;
            }
            Ok((removed, dead_removed))
        })();
        match result {
            Ok((0, _)) => 0,
            Ok((removed, dead_removed)) => {
                let mut index = self.shared.index.lock();
                index.dead = index.dead.saturating_sub(dead_removed);
                tracing::debug!(removed, "retention sweep");
                removed
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed");
                0
            }
        }
    }
}
