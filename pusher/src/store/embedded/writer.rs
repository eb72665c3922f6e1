//! The one writer of the embedded store: it takes whatever operations have queued up, applies
//! them in one write transaction, commits once, and only then answers the callers and updates
//! the in-memory schedule.
//!
//! Every operation is its own function over [`Tables`] (the open tables of the group's
//! transaction) and [`Group`] (what the group has decided so far: the clock, the pending count,
//! whether callbacks were added). It answers with a [`Step`]: done (with the change to the
//! in-memory schedule and the value for the caller) or refused (a business refusal such as
//! [`StoreError::Full`], answered at once, writing nothing). The replies are then sent in one
//! place, [`Writer::settle`], for success and failure alike: a failed commit rolls every change
//! back (leases go back to the schedule) and fails every caller, including those whose
//! operations were never reached.
//!
//! Between groups the writer also keeps the in-memory head of the schedule
//! ([`crate::store::index`]): it trims it, refills it from the durable `schedule` table when it
//! runs low, and counts the entries beyond its watermark that became due ([`Writer::upkeep`]).
//! Only here is that safe: the writer is the one thread that commits, so a read it makes
//! between two groups sees every commit, and the in-memory schedule has taken each of them.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::{
    AWAITING, CALLBACKS, DEAD, EVENTS_SEEN, FINISHED, IDEMPOTENCY, MAX_GROUP, MESSAGES, MSGIDS,
    PROBE, SCHEDULE, SWEEP_BATCH, Shared, decode, encode, load_index, open_db, storage,
};
use crate::message::{MessageId, MessageRecord, Status};
use crate::policy::{HumanDuration, Retry};
use crate::resilience::backoff;
use crate::store::index::{COUNT_EVERY_MS, Key};
use crate::store::{
    AcceptItem, Accepted, CallbackKey, DeliveryEvent, EventOutcome, MatchedBy, PendingCallback,
    StoreError, apply_event, digests_match, millis, reset_for_replay, wants_callback,
};

/// An operation for the writer.
#[derive(Debug)]
pub(super) enum Op {
    Accept {
        items: Vec<AcceptItem>,
        reply: oneshot::Sender<Result<Vec<Accepted>, StoreError>>,
    },
    Complete {
        slot: u64,
        record: Box<MessageRecord>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Outcomes of several attempts, `(slot, record)` each, answered per message.
    CompleteMany {
        items: Vec<(u64, Box<MessageRecord>)>,
        reply: oneshot::Sender<Result<Vec<Result<(), StoreError>>, StoreError>>,
    },
    /// "Attempt started" records of leased messages, encoded by the caller: `(id, record)`.
    StartAttempts {
        items: Vec<(u128, Vec<u8>)>,
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
    /// The in-memory head runs low (sent by a lease): refill it now.
    Refill,
    /// Entries beyond the watermark named by [`crate::store::Store::pull_in`]: bring those
    /// still in the durable schedule into memory, due at `to_ms`.
    PullIn {
        entries: Vec<Key>,
        to_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// The tables of one write transaction.
pub(super) struct Tables<'t> {
    messages: Table<'t, u128, &'static [u8]>,
    schedule: Table<'t, (u64, u128), ()>,
    finished: Table<'t, (u64, u128), ()>,
    dead: Table<'t, u128, ()>,
    idem: Table<'t, &'static str, u128>,
    msgids: Table<'t, i64, u128>,
    awaiting: Table<'t, (&'static str, u64, u128), ()>,
    seen: Table<'t, (&'static str, u64, i64), u128>,
    cbs: Table<'t, (u64, u128), &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MESSAGES).map_err(storage)?,
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

    fn record(&self, id: u128) -> Result<Option<MessageRecord>, StoreError> {
        self.messages
            .get(id)
            .map_err(storage)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn put(&mut self, record: &MessageRecord) -> Result<(), StoreError> {
        self.messages
            .insert(record.id.as_u128(), encode(record)?.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Writes a pending callback about `record` when it has somewhere to go; returns whether.
    fn add_callback(
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

fn encode_cb(cb: &PendingCallback) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(cb).map_err(|e| StoreError::storage(format!("encode callback: {e}"), e))
}

/// What a group has decided so far.
#[derive(Debug)]
pub(super) struct Group {
    now: Timestamp,
    now_ms: u64,
    /// Pending messages, counting this group's accepts, replays and final states.
    pending: u64,
    /// Whether a callback was written (the callback worker is woken after the commit).
    callbacks_added: bool,
    /// `(used, max)` when the disk budget is spent: new messages are refused.
    over_budget: Option<(u64, u64)>,
}

/// How an operation changes the in-memory view once its group committed (or, for a failed
/// commit, how it is undone).
#[derive(Debug)]
enum Change {
    None,
    /// Accepted messages: due at `due`; their records are kept in memory for their first
    /// lease ([`super::Shared::fresh`]).
    Scheduled {
        ids: Vec<u128>,
        due: u64,
        records: Vec<MessageRecord>,
    },
    /// A completed attempt: the lease ends. `outcome` is the record as completed, kept only to
    /// be handed back when the write fails ([`super::Shared::unrecorded`]).
    Released {
        id: u128,
        due: Option<u64>,
        dead: bool,
        outcome: Option<Box<MessageRecord>>,
    },
    Replayed {
        id: u128,
        due: u64,
    },
    CallbackDone {
        id: u128,
    },
    /// A refused operation's lease or callback lease, given back whatever the group's fate.
    GiveBack(Box<Change>),
    /// "Attempt started" records: the leases are kept after the commit, and given back when
    /// the commit fails (the caller does not send).
    Started {
        ids: Vec<u128>,
    },
    /// The changes of a many-message operation.
    Many(Vec<Change>),
}

impl Change {
    /// Applies the change after a commit; returns whether the lease loop has new work.
    fn apply(&mut self, shared: &Shared) -> bool {
        let mut index = shared.index.lock();
        match self {
            Self::None => false,
            Self::Scheduled { ids, due, records } => {
                for &id in ids.iter() {
                    index.schedule(*due, id);
                }
                drop(index);
                shared.keep_fresh(std::mem::take(records));
                !ids.is_empty()
            }
            Self::Released { id, due, dead, .. } => {
                index.release(*id, *due);
                if *dead {
                    index.dead += 1;
                }
                due.is_some()
            }
            Self::Replayed { id, due } => {
                index.schedule(*due, *id);
                index.dead = index.dead.saturating_sub(1);
                true
            }
            Self::CallbackDone { id } => {
                drop(index);
                shared.callbacks_leased.lock().remove(id);
                false
            }
            Self::GiveBack(change) => {
                drop(index);
                change.roll_back(shared);
                false
            }
            Self::Started { .. } => false,
            Self::Many(changes) => {
                drop(index);
                let mut woke = false;
                for change in changes {
                    woke |= change.apply(shared);
                }
                woke
            }
        }
    }

    /// The undo of a completion that was not written: the lease goes back and the outcome
    /// is kept for its next lease.
    fn released(record: Box<MessageRecord>) -> Self {
        Self::Released {
            id: record.id.as_u128(),
            due: None,
            dead: false,
            outcome: Some(record),
        }
    }

    /// Undoes what the caller's side did before the failed commit: leases go back, due
    /// again only after a delay (never at once: that would repeat the attempt in a loop).
    fn roll_back(&self, shared: &Shared) {
        match self {
            Self::Released { id, outcome, .. } => {
                shared.give_back(*id);
                if let Some(record) = outcome {
                    // Its next lease carries this outcome, so that it is recorded instead of
                    // sent again.
                    shared
                        .unrecorded
                        .lock()
                        .insert(*id, MessageRecord::clone(record));
                }
            }
            Self::CallbackDone { id } => {
                shared.callbacks_leased.lock().remove(id);
            }
            Self::GiveBack(change) => change.roll_back(shared),
            Self::Started { ids } => {
                for &id in ids {
                    shared.give_back(id);
                }
            }
            Self::Many(changes) => {
                for change in changes {
                    change.roll_back(shared);
                }
            }
            Self::None | Self::Scheduled { .. } | Self::Replayed { .. } => {}
        }
    }
}

impl Change {
    /// A refused operation's lease goes back once the group is settled (committed or not).
    fn roll_back_refused(self, effects: &mut Vec<Effect>) {
        if matches!(self, Self::None) {
            return;
        }
        effects.push(Effect {
            change: Change::GiveBack(Box::new(self)),
            answer: Box::new(Nothing),
        });
    }
}

/// An answer already given.
struct Nothing;

impl Owed for Nothing {
    fn settle(self: Box<Self>, _failed: Option<&str>) {}
}

/// What an operation came to.
enum Step<T> {
    /// Written: the change to apply after the commit, and the caller's answer.
    Done(Change, T),
    /// Refused without writing anything: answered at once.
    Refused(StoreError),
}

/// A reply owed to a caller, sent once the group's fate is known.
trait Owed: Send {
    /// Sends the value (`failed` = `None`) or the commit's error.
    fn settle(self: Box<Self>, failed: Option<&str>);
}

struct Answer<T> {
    value: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Owed for Answer<T> {
    fn settle(self: Box<Self>, failed: Option<&str>) {
        let result = match (failed, self.value) {
            (None, Some(v)) => Ok(v),
            (Some(msg), _) => Err(StoreError::Storage(msg.to_string().into())),
            (None, None) => Err(StoreError::Storage("operation not applied".into())),
        };
        let _ = self.reply.send(result);
    }
}

struct Closing(oneshot::Sender<()>);

impl Owed for Closing {
    fn settle(self: Box<Self>, _failed: Option<&str>) {
        let _ = self.0.send(());
    }
}

/// One operation's change and reply.
struct Effect {
    change: Change,
    answer: Box<dyn Owed>,
}

/// Records an operation's step: a done step owes its answer until the commit; a refused one
/// is answered now; a storage error owes a failure (with `undo` to roll back) and aborts the
/// group.
fn owe<T: Send + 'static>(
    effects: &mut Vec<Effect>,
    undo: Change,
    reply: oneshot::Sender<Result<T, StoreError>>,
    step: Result<Step<T>, StoreError>,
) -> Result<(), StoreError> {
    match step {
        Ok(Step::Done(change, value)) => {
            effects.push(Effect {
                change,
                answer: Box::new(Answer {
                    value: Some(value),
                    reply,
                }),
            });
            Ok(())
        }
        Ok(Step::Refused(e)) => {
            // Refused before writing anything: the group goes on; a lease goes back.
            undo.roll_back_refused(effects);
            let _ = reply.send(Err(e));
            Ok(())
        }
        Err(e) => {
            effects.push(Effect {
                change: undo,
                answer: Box::new(Answer { value: None, reply }),
            });
            Err(e)
        }
    }
}

impl Op {
    /// The effect of an operation that was never reached because its group failed.
    fn abandon(self) -> Effect {
        fn owed<T: Send + 'static>(
            change: Change,
            reply: oneshot::Sender<Result<T, StoreError>>,
        ) -> Effect {
            Effect {
                change,
                answer: Box::new(Answer { value: None, reply }),
            }
        }
        match self {
            Self::Accept { reply, .. } => owed(Change::None, reply),
            Self::Complete { record, reply, .. } => owed(Change::released(record), reply),
            Self::CompleteMany { items, reply } => owed(
                Change::Many(
                    items
                        .into_iter()
                        .map(|(_, record)| Change::released(record))
                        .collect(),
                ),
                reply,
            ),
            Self::StartAttempts { items, reply } => owed(
                Change::Started {
                    ids: items.iter().map(|(id, _)| *id).collect(),
                },
                reply,
            ),
            Self::Replay { reply, .. } => owed(Change::None, reply),
            Self::Event { reply, .. } => owed(Change::None, reply),
            Self::FinishCallback { key, reply, .. } => {
                owed(Change::CallbackDone { id: key.id }, reply)
            }
            Self::Close { reply } => Effect {
                change: Change::None,
                answer: Box::new(Closing(reply)),
            },
            Self::Refill => Effect {
                change: Change::None,
                answer: Box::new(Nothing),
            },
            Self::PullIn { reply, .. } => owed(Change::None, reply),
        }
    }
}

/// The healer's state while the store cannot be written.
#[derive(Debug)]
pub(super) struct Healing {
    /// Healing attempts so far.
    attempts: u32,
    /// When the next one is due.
    next_at: Instant,
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

/// How often, once the file's blocks have reached the budget, redb's page count is taken (it
/// walks the trees, so not on every group).
const BUDGET_STATS_EVERY: Duration = Duration::from_secs(1);

/// Bytes kept free for each pending message, for what its outcome will write: the delivered
/// (or dead) record, its indexes and callback, and the pages that redb's copy-on-write holds
/// twice until the commit after. Without it, a volume filled to the budget with pending
/// messages met the full file system while they were delivered (measured by
/// `engine_faults::a_producer_filling_the_volume_meets_the_budget_not_a_full_disk`, about
/// 800 bytes a pending message on disk).
pub(super) const OUTCOME_RESERVE: u64 = 256;

/// The disk budget: what the database holds plus what its pending messages' outcomes will
/// need.
///
/// What the database holds is measured on every group that adds messages, cheaply: the
/// file's allocated blocks (redb grows its file sparsely, so its length says little) bound it
/// from above. Once the blocks have reached the budget, redb's allocated pages are read (at
/// most once a second) and the blocks allocated since are added: redb reuses freed pages but
/// never gives blocks back, so after deliveries the pages come down and the blocks do not.
#[derive(Debug)]
pub(super) struct Budget {
    max: u64,
    state: parking_lot::Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    /// When redb's pages were last read, and the file's blocks then.
    stats_at: Option<(Instant, u64)>,
    /// Pages allocated at `stats_at`.
    pages: u64,
    /// What the budget counted last: the bytes in use plus the reserve.
    counted: u64,
    over: bool,
}

impl Budget {
    pub(super) fn new(max: u64) -> Self {
        Self {
            max,
            state: parking_lot::Mutex::new(BudgetState::default()),
        }
    }

    /// `(counted, max)`: what the budget counted last (the bytes in use plus the outcome
    /// reserve), and the budget.
    pub(super) fn figures(&self) -> (u64, u64) {
        (self.state.lock().counted, self.max)
    }

    /// `Some((used, max))` while the budget is spent: what the database holds plus
    /// [`OUTCOME_RESERVE`] for each of `pending` messages has reached it.
    fn spent(&self, file: &Path, txn: &redb::WriteTransaction, pending: u64) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut s = self.state.lock();
        let blocks = std::fs::metadata(file).map_or(0, |m| m.blocks().saturating_mul(512));
        let reserve = pending.saturating_mul(OUTCOME_RESERVE);
        let used = if blocks.saturating_add(reserve) < self.max {
            s.stats_at = None;
            blocks
        } else {
            let stale = s
                .stats_at
                .is_none_or(|(at, _)| at.elapsed() >= BUDGET_STATS_EVERY);
            if stale && let Ok(st) = txn.stats() {
                s.pages = st.allocated_pages() * st.page_size() as u64;
                s.stats_at = Some((Instant::now(), blocks));
            }
            let grown = s
                .stats_at
                .map_or(0, |(_, then)| blocks.saturating_sub(then));
            blocks.min(s.pages.saturating_add(grown))
        };
        s.counted = used.saturating_add(reserve);
        let over = s.counted >= self.max;
        if over != s.over {
            if over {
                tracing::warn!(
                    used,
                    pending,
                    reserved = reserve,
                    max = self.max,
                    "disk budget spent: accepts refused (429) until space is freed"
                );
            } else {
                tracing::info!(
                    used,
                    pending,
                    reserved = reserve,
                    max = self.max,
                    "disk budget has room again: accepts resume"
                );
            }
            s.over = over;
        }
        s.over.then_some((s.counted, self.max))
    }
}

/// The one writer.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) max_messages: u64,
    pub(super) retention: Duration,
    pub(super) default_callback: bool,
}

impl Writer {
    /// Serves operations until closed (answered with the returned sender) or disconnected.
    pub(super) fn run(&self, rx: &mpsc::Receiver<Op>) -> Option<oneshot::Sender<()>> {
        let sweep_every =
            (self.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        // When a sweep hit its batch limit, the next one is due at once (after the operations
        // waiting by then), so that removal keeps up with any inflow without long commits.
        let mut next_sweep = Instant::now() + sweep_every;
        let mut healing: Option<Healing> = None;
        loop {
            let mut until = next_sweep;
            if let Some(h) = &healing {
                until = until.min(h.next_at);
            } else if self.shared.index.lock().beyond() > 0 {
                // Entries beyond the watermark become due as time passes: count them.
                until = until.min(Instant::now() + Duration::from_millis(COUNT_EVERY_MS));
            }
            let wait = until.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if healing.is_some() {
                        self.heal(&mut healing);
                    } else if Instant::now() >= next_sweep {
                        next_sweep = self.sweep_and_schedule(sweep_every, &mut healing);
                    }
                    self.upkeep(healing.as_ref());
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
            self.taken(&ops);
            let mut close = None;
            let mut pull_ins = Vec::new();
            ops.retain_mut(|op| match op {
                Op::Close { reply } => {
                    let (dummy, _) = oneshot::channel();
                    close = Some(std::mem::replace(reply, dummy));
                    false
                }
                // Done by the upkeep below, after the group.
                Op::Refill => false,
                Op::PullIn { .. } => {
                    pull_ins.push(std::mem::replace(op, Op::Refill));
                    false
                }
                _ => true,
            });
            if !ops.is_empty() {
                self.apply(ops, &mut healing);
            }
            self.upkeep(healing.as_ref());
            for op in pull_ins {
                if let Op::PullIn {
                    entries,
                    to_ms,
                    reply,
                } = op
                {
                    let _ = reply.send(self.adopt(entries, to_ms, healing.as_ref()));
                }
            }
            if let Some(reply) = close {
                self.shared.closed.store(true, Ordering::Release);
                // Anything sent after the close but before the flag was seen is answered too.
                let rest: Vec<Op> = rx.try_iter().collect();
                self.taken(&rest);
                if !rest.is_empty() {
                    self.apply(rest, &mut healing);
                }
                tracing::info!("embedded queue closed");
                return Some(reply);
            }
            if healing.is_none() && Instant::now() >= next_sweep {
                next_sweep = self.sweep_and_schedule(sweep_every, &mut healing);
            }
        }
    }

    /// Counts producer operations out of the bounded queue.
    fn taken(&self, ops: &[Op]) {
        let n = ops
            .iter()
            .filter(|op| matches!(op, Op::Accept { .. } | Op::Replay { .. } | Op::Event { .. }))
            .count();
        if n > 0 {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Applies a group of operations in one transaction and commits once. While the store
    /// heals, a group is failed at once (no disk access) until the next healing attempt is due;
    /// then the database is reopened and probed first.
    fn apply(&self, ops: Vec<Op>, healing: &mut Option<Healing>) {
        if healing.as_ref().is_some_and(|h| Instant::now() < h.next_at) || !self.heal(healing) {
            let effects = ops.into_iter().map(Op::abandon).collect();
            self.settle(
                effects,
                Some(StoreError::Storage(
                    "the queue cannot be written now (healing after a storage error)".into(),
                )),
                false,
                healing,
            );
            return;
        }
        let mut ops: VecDeque<Op> = ops.into();
        let size = ops.len();
        let started = Instant::now();
        let now = Timestamp::now();
        // Entries beyond the watermark due by now are counted first, so that this group's
        // accepts (due now) count as ready from their commit on.
        if let Err(e) = self.count_due(millis(now))
            && let Some(held) = self.shared.logs.check("schedule_read")
        {
            tracing::error!(error = %e, held_back = held, "cannot read the schedule; tried again later");
        }
        let mut group = Group {
            now,
            now_ms: millis(now),
            pending: self.shared.index.lock().pending(),
            callbacks_added: false,
            over_budget: None,
        };
        let adds = ops
            .iter()
            .any(|op| matches!(op, Op::Accept { .. } | Op::Replay { .. }));
        let mut effects = Vec::with_capacity(ops.len());
        let result = (|| -> Result<(), StoreError> {
            let txn = self.shared.begin_write()?;
            if adds && let Some(b) = &self.shared.budget {
                group.over_budget = b.spent(&self.shared.file, &txn, group.pending);
            }
            {
                let mut t = Tables::open(&txn)?;
                while let Some(op) = ops.pop_front() {
                    self.apply_op(&mut t, &mut group, op, &mut effects)?;
                }
            }
            txn.commit().map_err(storage)?;
            Ok(())
        })();
        tracing::trace!(group = size, took = ?started.elapsed(), "group committed");
        // Operations not reached (the group failed part-way) are answered too.
        effects.extend(ops.into_iter().map(Op::abandon));
        self.settle(effects, result.err(), group.callbacks_added, healing);
    }

    /// Notes a failed write: the store is unhealthy and heals from now on.
    fn failed(&self, e: &StoreError, healing: &mut Option<Healing>) {
        self.shared.healthy.store(false, Ordering::Relaxed);
        self.shared.failures.fetch_add(1, Ordering::Relaxed);
        self.shared
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
    fn heal(&self, healing: &mut Option<Healing>) -> bool {
        let Some(h) = healing.as_mut() else {
            return true;
        };
        if Instant::now() < h.next_at {
            return false;
        }
        h.attempts += 1;
        match self.reopen() {
            Ok(()) => {
                tracing::info!(attempts = h.attempts, "queue healed: writes work again");
                *healing = None;
                self.shared.failures.store(0, Ordering::Relaxed);
                *self.shared.unhealthy_since.lock() = None;
                self.shared.healthy.store(true, Ordering::Relaxed);
                self.shared.work.notify_one();
                self.shared.callback_work.notify_one();
                true
            }
            Err(e) => {
                h.next_at = Instant::now() + heal_backoff(h.attempts);
                if let Some(held) = self.shared.logs.check("heal") {
                    tracing::error!(error = %e, attempts = h.attempts, held_back = held, "queue still cannot be written");
                }
                false
            }
        }
    }

    fn reopen(&self) -> Result<(), StoreError> {
        // A database that survived the error takes the probe as it is; one that redb
        // poisoned (`PreviousIo`) must be closed and opened again.
        if probe(&self.shared).is_ok() {
            return self.reload();
        }
        {
            let mut db = self.shared.db.write();
            *db = None;
        }
        let db = open_db(&self.shared.file)?;
        *self.shared.db.write() = Some(db);
        probe(&self.shared)?;
        self.reload()
    }

    /// Rebuilds the in-memory schedule from the database (a failed commit may have been
    /// durable after all), keeping the leases held now.
    fn reload(&self) -> Result<(), StoreError> {
        let leased = self.shared.index.lock().leases();
        let fresh = {
            let db = self.shared.db.read();
            let db = db
                .as_ref()
                .ok_or_else(|| StoreError::Storage("the queue is closed".into()))?;
            load_index(db, self.shared.head, &leased)?
        };
        self.shared.index.lock().reload(fresh, &leased);
        Ok(())
    }

    /// Keeps the in-memory head of the schedule between groups: trims it when accepts made it
    /// grow, refills it from the durable schedule when it runs low, and counts the entries
    /// beyond the watermark that became due. Nothing while the store heals (the reload that
    /// ends healing rebuilds it all).
    fn upkeep(&self, healing: Option<&Healing>) {
        if healing.is_some() {
            return;
        }
        self.shared.index.lock().trim();
        let result = self
            .refill()
            .and_then(|()| self.count_due(millis(Timestamp::now())));
        if let Err(e) = result
            && let Some(held) = self.shared.logs.check("schedule_read")
        {
            tracing::error!(error = %e, held_back = held, "cannot read the schedule; tried again later");
        }
    }

    /// Reads the entries after the watermark into the head when it runs low.
    fn refill(&self) -> Result<(), StoreError> {
        self.shared.refill_asked.store(false, Ordering::Release);
        let Some((from, want)) = self.shared.index.lock().refill_wanted() else {
            return Ok(());
        };
        let txn = self.shared.begin_read()?;
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
        let loaded = self.shared.index.lock().refilled(from, &keys, exhausted);
        tracing::trace!(loaded, exhausted, "schedule head refilled");
        self.shared.work.notify_one();
        Ok(())
    }

    /// Counts the entries beyond the watermark that are due at `now_ms` (each is read once,
    /// when it becomes due, in chunks so that the index is never locked for long).
    fn count_due(&self, now_ms: u64) -> Result<(), StoreError> {
        const CHUNK: usize = 4096;
        let Some((mut after, to)) = self.shared.index.lock().count_wanted(now_ms) else {
            return Ok(());
        };
        let txn = self.shared.begin_read()?;
        let table = txn.open_table(SCHEDULE).map_err(storage)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        for entry in table
            .range::<Key>((Bound::Excluded(after), Bound::Included(to)))
            .map_err(storage)?
        {
            chunk.push(entry.map_err(storage)?.0.value());
            if let Some(&last) = chunk.last().filter(|_| chunk.len() == CHUNK) {
                self.shared.index.lock().counted(after, &chunk, None);
                after = last;
                chunk.clear();
            }
        }
        self.shared.index.lock().counted(after, &chunk, Some(to));
        Ok(())
    }

    /// Brings entries beyond the watermark named by a pull-in into memory (those still in the
    /// durable schedule, at most [`crate::store::index::ADOPT_HEADS`] heads' worth); returns
    /// how many.
    fn adopt(
        &self,
        mut entries: Vec<Key>,
        to_ms: u64,
        healing: Option<&Healing>,
    ) -> Result<u64, StoreError> {
        if healing.is_some() {
            return Ok(0);
        }
        entries.truncate(self.shared.index.lock().max_adopt());
        let txn = self.shared.begin_read()?;
        let table = txn.open_table(SCHEDULE).map_err(storage)?;
        let mut found = Vec::with_capacity(entries.len());
        for key in entries {
            if table.get(key).map_err(storage)?.is_some() {
                found.push(key);
            }
        }
        let moved = self.shared.index.lock().adopt(&found, to_ms);
        if moved > 0 {
            self.shared.work.notify_waiters();
        }
        Ok(moved)
    }

    /// The reply fan-out, for a committed group and a failed one alike.
    fn settle(
        &self,
        mut effects: Vec<Effect>,
        failed: Option<StoreError>,
        callbacks_added: bool,
        healing: &mut Option<Healing>,
    ) {
        match failed {
            None => {
                self.shared.failures.store(0, Ordering::Relaxed);
                let mut woke = false;
                for e in &mut effects {
                    woke |= e.change.apply(&self.shared);
                }
                if woke {
                    self.shared.work.notify_one();
                }
                if callbacks_added {
                    self.shared.callback_work.notify_one();
                }
                for e in effects {
                    e.answer.settle(None);
                }
            }
            Some(e) => {
                // Nothing of this group is durable: fail every caller; leases go back (due
                // again after a delay).
                self.failed(&e, healing);
                if let Some(held) = self.shared.logs.check("commit") {
                    tracing::error!(error = %e, held_back = held, "queue commit failed");
                }
                let msg = e.to_string();
                for e in effects {
                    e.change.roll_back(&self.shared);
                    e.answer.settle(Some(&msg));
                }
            }
        }
    }

    fn apply_op(
        &self,
        t: &mut Tables<'_>,
        g: &mut Group,
        op: Op,
        effects: &mut Vec<Effect>,
    ) -> Result<(), StoreError> {
        match op {
            Op::Accept { items, reply } => {
                owe(effects, Change::None, reply, self.accept(t, g, items))
            }
            Op::Complete {
                slot,
                record,
                reply,
            } => {
                let (step, undo) = self.complete_one(t, g, slot, record);
                owe(effects, undo, reply, step)
            }
            Op::CompleteMany { items, reply } => {
                // One answer for the lot: a refused completion answers its own error (its
                // lease goes back); a storage error fails the group, and with it all of them.
                let mut changes = Vec::with_capacity(items.len());
                let mut answers = Vec::with_capacity(items.len());
                let mut failed = None;
                for (slot, record) in items {
                    if failed.is_some() {
                        changes.push(Change::released(record));
                        continue;
                    }
                    match self.complete_one(t, g, slot, record) {
                        (Ok(Step::Done(change, ())), _) => {
                            changes.push(change);
                            answers.push(Ok(()));
                        }
                        (Ok(Step::Refused(e)), undo) => {
                            changes.push(Change::GiveBack(Box::new(undo)));
                            answers.push(Err(e));
                        }
                        (Err(e), undo) => {
                            changes.push(undo);
                            failed = Some(e);
                        }
                    }
                }
                effects.push(Effect {
                    change: Change::Many(changes),
                    answer: Box::new(Answer {
                        value: Some(answers),
                        reply,
                    }),
                });
                failed.map_or(Ok(()), Err)
            }
            Op::StartAttempts { items, reply } => {
                let undo = Change::Started {
                    ids: items.iter().map(|(id, _)| *id).collect(),
                };
                owe(effects, undo, reply, start_attempts(t, items))
            }
            Op::Event {
                event,
                fallback,
                reply,
            } => owe(
                effects,
                Change::None,
                reply,
                self.record_event(t, g, &event, fallback),
            ),
            Op::Replay { id, reply } => owe(effects, Change::None, reply, self.replay(t, g, id)),
            Op::FinishCallback { key, next, reply } => owe(
                effects,
                Change::CallbackDone { id: key.id },
                reply,
                finish_callback(t, key, next),
            ),
            Op::Close { reply } => {
                effects.push(Op::Close { reply }.abandon());
                Ok(())
            }
            // Only reached after a close: nothing to keep up any more.
            Op::Refill => Ok(()),
            Op::PullIn { reply, .. } => {
                let _ = reply.send(Ok(0));
                Ok(())
            }
        }
    }

    /// [`Writer::complete`], with the record going to whichever change rolls the lease back
    /// (the done step's, or the returned undo), to be kept for the next lease.
    fn complete_one(
        &self,
        t: &mut Tables<'_>,
        g: &mut Group,
        slot: u64,
        record: Box<MessageRecord>,
    ) -> (Result<Step<()>, StoreError>, Change) {
        let mut step = self.complete(t, g, slot, &record);
        match &mut step {
            Ok(Step::Done(Change::Released { outcome, .. }, ())) => {
                *outcome = Some(record);
                // Written: there is nothing to undo before the commit.
                (step, Change::None)
            }
            _ => (step, Change::released(record)),
        }
    }

    /// Accepts a request's messages, all or nothing.
    fn accept(
        &self,
        t: &mut Tables<'_>,
        g: &mut Group,
        items: Vec<AcceptItem>,
    ) -> Result<Step<Vec<Accepted>>, StoreError> {
        // First pass, read only: resolve idempotency keys and check room, so that a refused
        // request writes nothing.
        let mut results = Vec::with_capacity(items.len());
        let mut fresh = Vec::new();
        for item in items {
            let seen = match &item.idempotency_key {
                Some(k) => match t.idem.get(k.as_str()) {
                    Ok(v) => v.map(|v| v.value()),
                    // A read that fails refuses this request only, not the whole group.
                    Err(e) => return Ok(Step::Refused(storage(e))),
                },
                None => None,
            };
            match seen {
                Some(first) => {
                    // An unreadable first record still answers the duplicate with its id.
                    let record = t.record(first).ok().flatten();
                    if let Some(r) = &record
                        && !digests_match(
                            r.request_digest.as_deref(),
                            item.request_digest.as_deref(),
                        )
                    {
                        return Ok(Step::Refused(StoreError::KeyReused(
                            item.idempotency_key.unwrap_or_default(),
                        )));
                    }
                    let status = record.map_or(Status::Queued, |r| r.status);
                    results.push(Accepted {
                        id: MessageId::from_u128(first),
                        status,
                        duplicate: true,
                    });
                }
                None => {
                    let mut record = MessageRecord::new(
                        MessageId::new(),
                        item.message,
                        item.idempotency_key,
                        g.now,
                    );
                    if record.idempotency_key.is_some() {
                        record.request_digest = item.request_digest;
                    }
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
        if let Some((used, max)) = g.over_budget.filter(|_| adding > 0) {
            return Ok(Step::Refused(StoreError::OverBudget { used, max }));
        }
        if g.pending + adding > self.max_messages {
            return Ok(Step::Refused(StoreError::Full {
                pending: g.pending,
                max: self.max_messages,
                retry_after: Duration::from_secs(1),
            }));
        }
        g.pending += adding;
        let mut ids = Vec::with_capacity(fresh.len());
        for record in &fresh {
            let id = record.id.as_u128();
            t.put(record)?;
            t.schedule.insert((g.now_ms, id), ()).map_err(storage)?;
            if let Some(k) = &record.idempotency_key {
                t.idem.insert(k.as_str(), id).map_err(storage)?;
            }
            ids.push(id);
        }
        Ok(Step::Done(
            Change::Scheduled {
                ids,
                due: g.now_ms,
                records: fresh,
            },
            results,
        ))
    }

    /// Records an attempt's outcome: the message leaves the schedule slot it was leased from
    /// and is rescheduled, or finished (with its indexes and callback).
    fn complete(
        &self,
        t: &mut Tables<'_>,
        g: &mut Group,
        slot: u64,
        record: &MessageRecord,
    ) -> Result<Step<()>, StoreError> {
        let id = record.id.as_u128();
        // Everything that can fail for this operation alone fails before the first write.
        let encoded = match encode(record) {
            Ok(b) => b,
            Err(e) => return Ok(Step::Refused(e)),
        };
        let due = if record.status.is_final() {
            g.pending = g.pending.saturating_sub(1);
            None
        } else {
            Some(crate::store::due_millis(
                record.next_attempt_at.unwrap_or(g.now),
            ))
        };
        t.schedule.remove((slot, id)).map_err(storage)?;
        match due {
            None => {
                let at = millis(record.finished_at.unwrap_or(g.now));
                t.finished.insert((at, id), ()).map_err(storage)?;
                if record.dead_letter {
                    t.dead.insert(id, ()).map_err(storage)?;
                }
            }
            Some(at) => {
                t.schedule.insert((at, id), ()).map_err(storage)?;
            }
        }
        if record.status == Status::Delivered {
            let at = millis(record.finished_at.unwrap_or(g.now));
            t.awaiting
                .insert((record.message.touser.as_str(), at, id), ())
                .map_err(storage)?;
            if let Some(m) = record.msgid.filter(|&m| m != 0) {
                t.msgids.insert(m, id).map_err(storage)?;
            }
        }
        if wants_callback(record.status) {
            g.callbacks_added |= t.add_callback(self.default_callback, record, g.now)?;
        }
        t.messages.insert(id, encoded.as_slice()).map_err(storage)?;
        Ok(Step::Done(
            Change::Released {
                id,
                due,
                dead: record.dead_letter,
                outcome: None,
            },
            (),
        ))
    }

    /// Records a delivery event (see [`crate::store::Store::record_event`]).
    fn record_event(
        &self,
        t: &mut Tables<'_>,
        g: &mut Group,
        event: &DeliveryEvent,
        fallback: bool,
    ) -> Result<Step<EventOutcome>, StoreError> {
        let key = (event.openid.as_str(), event.create_time, event.msgid);
        let found = match find_event_target(t, event, fallback) {
            Ok(f) => f,
            // Reads failed: this event only is refused (WeChat posts it again).
            Err(e) => return Ok(Step::Refused(e)),
        };
        let (mut record, by) = match found {
            EventTarget::Seen => return Ok(Step::Done(Change::None, EventOutcome::Duplicate)),
            EventTarget::None => return Ok(Step::Done(Change::None, EventOutcome::Unmatched)),
            EventTarget::Found(record, by) => (*record, by),
        };
        let id = record.id.as_u128();
        let had_events = !record.events.is_empty();
        let outcome = apply_event(&mut record, event, by);
        if outcome != EventOutcome::Duplicate {
            if !had_events {
                let at = millis(record.finished_at.unwrap_or(g.now));
                t.awaiting
                    .remove((record.message.touser.as_str(), at, id))
                    .map_err(storage)?;
            }
            t.seen.insert(key, id).map_err(storage)?;
            t.put(&record)?;
            if matches!(outcome, EventOutcome::Applied { .. }) {
                g.callbacks_added |= t.add_callback(self.default_callback, &record, g.now)?;
            }
        }
        Ok(Step::Done(Change::None, outcome))
    }

    /// Moves a dead letter back to the queue with a fresh retry budget.
    fn replay(
        &self,
        t: &mut Tables<'_>,
        g: &mut Group,
        id: MessageId,
    ) -> Result<Step<MessageRecord>, StoreError> {
        let key = id.as_u128();
        let found = match t.record(key) {
            Ok(r) => r,
            Err(e) => return Ok(Step::Refused(e)),
        };
        let mut record = match found {
            None => return Ok(Step::Refused(StoreError::NotFound(id))),
            Some(r) if !r.dead_letter => return Ok(Step::Refused(StoreError::NotDeadLetter(id))),
            Some(r) => r,
        };
        if let Some(exp) = record.message.expires_at
            && exp <= g.now
        {
            return Ok(Step::Refused(StoreError::PastExpiry(id, exp)));
        }
        if let Some((used, max)) = g.over_budget {
            return Ok(Step::Refused(StoreError::OverBudget { used, max }));
        }
        if g.pending + 1 > self.max_messages {
            return Ok(Step::Refused(StoreError::Full {
                pending: g.pending,
                max: self.max_messages,
                retry_after: Duration::from_secs(1),
            }));
        }
        g.pending += 1;
        if let Some(f) = record.finished_at {
            t.finished.remove((millis(f), key)).map_err(storage)?;
        }
        t.dead.remove(key).map_err(storage)?;
        reset_for_replay(&mut record, g.now);
        t.put(&record)?;
        t.schedule.insert((g.now_ms, key), ()).map_err(storage)?;
        Ok(Step::Done(
            Change::Replayed {
                id: key,
                due: g.now_ms,
            },
            record,
        ))
    }

    fn sweep_and_schedule(&self, every: Duration, healing: &mut Option<Healing>) -> Instant {
        if self.sweep(healing) >= SWEEP_BATCH {
            Instant::now()
        } else {
            Instant::now() + every
        }
    }

    /// Removes finished messages older than the retention, with their idempotency keys;
    /// returns how many.
    fn sweep(&self, healing: &mut Option<Healing>) -> usize {
        let cutoff = millis(Timestamp::now())
            .saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let result = (|| -> Result<(usize, u64), StoreError> {
            let txn = self.shared.begin_write()?;
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
                let mut index = self.shared.index.lock();
                index.dead = index.dead.saturating_sub(dead_removed);
                tracing::debug!(removed, "retention sweep");
                removed
            }
            Err(e) => {
                if let Some(held) = self.shared.logs.check("sweep") {
                    tracing::warn!(error = %e, held_back = held, "retention sweep failed");
                }
                self.failed(&e, healing);
                0
            }
        }
    }
}

/// What a delivery event points at.
enum EventTarget {
    /// The event was recorded before.
    Seen,
    /// No message.
    None,
    /// The message, and how it was found.
    Found(Box<MessageRecord>, MatchedBy),
}

/// The read phase of [`Writer::record_event`]: nothing is written here.
fn find_event_target(
    t: &Tables<'_>,
    event: &DeliveryEvent,
    fallback: bool,
) -> Result<EventTarget, StoreError> {
    let key = (event.openid.as_str(), event.create_time, event.msgid);
    if t.seen.get(key).map_err(storage)?.is_some() {
        return Ok(EventTarget::Seen);
    }
    let mut found = None;
    if event.msgid != 0
        && let Some(v) = t.msgids.get(event.msgid).map_err(storage)?
    {
        found = Some((v.value(), MatchedBy::Msgid));
    }
    if found.is_none() && fallback {
        let openid = event.openid.as_str();
        let last = t
            .awaiting
            .range((openid, 0, 0)..=(openid, u64::MAX, u128::MAX))
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?
            .map(|(k, _)| k.value().2);
        found = last.map(|id| (id, MatchedBy::OpenidFallback));
    }
    Ok(match found {
        Some((id, by)) => match t.record(id)? {
            Some(r) => EventTarget::Found(Box::new(r), by),
            None => EventTarget::None,
        },
        None => EventTarget::None,
    })
}

/// Writes "attempt started" records (`first_attempt_at` and the start of the `maxAge` budget),
/// encoded by the caller from the records it leased: a put, no read. The leases are kept.
fn start_attempts(t: &mut Tables<'_>, items: Vec<(u128, Vec<u8>)>) -> Result<Step<()>, StoreError> {
    let mut ids = Vec::with_capacity(items.len());
    for (id, record) in items {
        t.messages.insert(id, record.as_slice()).map_err(storage)?;
        ids.push(id);
    }
    Ok(Step::Done(Change::Started { ids }, ()))
}

/// Ends a callback's lease: removes it, or moves it to its next due time.
fn finish_callback(
    t: &mut Tables<'_>,
    key: CallbackKey,
    next: Option<(Timestamp, u32)>,
) -> Result<Step<()>, StoreError> {
    // An undecodable callback is dropped rather than failing the group.
    let moved = match next {
        Some((at, attempts)) => t
            .cbs
            .get((key.due_ms, key.id))
            .map_err(storage)?
            .and_then(|v| serde_json::from_slice::<PendingCallback>(v.value()).ok())
            .map(|mut cb| {
                cb.attempts = attempts;
                (at, cb)
            }),
        None => None,
    };
    t.cbs.remove((key.due_ms, key.id)).map_err(storage)?;
    if let Some((at, cb)) = moved {
        t.cbs
            .insert((millis(at), key.id), encode_cb(&cb)?.as_slice())
            .map_err(storage)?;
    }
    Ok(Step::Done(Change::CallbackDone { id: key.id }, ()))
}

/// Removes up to [`SWEEP_BATCH`] messages finished before `cutoff` (ms) with everything that
/// points at them; returns `(removed, dead letters among them)`.
fn sweep_before(t: &mut Tables<'_>, cutoff: u64) -> Result<(usize, u64), StoreError> {
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
        let record = t
            .messages
            .remove(id)
            .map_err(storage)?
            .map(|v| decode(v.value()))
            .transpose();
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
