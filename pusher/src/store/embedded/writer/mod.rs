//! The one writer of the embedded store: it takes whatever operations have queued up, applies
//! them in one write transaction, commits once, and only then answers the callers and updates
//! the in-memory schedule.
//!
//! Its parts, one job each: `op.rs` (the operations as callers send them), `txn.rs` (the open
//! tables of a group's transaction and what the group has decided so far), `ops.rs` (what each
//! operation writes), `reply.rs` (the in-memory changes and the replies, sent in one place,
//! [`Writer::settle`], for success and failure alike: a failed commit rolls every change back
//! and fails every caller, including those whose operations were never reached), `head.rs`
//! (the in-memory head of the schedule), `heal.rs` (reopening after a failed write) and
//! `sweep.rs` (the retention sweep).
//!
//! Between groups the writer also keeps the in-memory head of the schedule
//! ([`crate::store::index`]): it trims it, refills it from the durable `schedule` table when it
//! runs low, and counts the entries beyond its watermark that became due (`head.rs`).
//! Only here is that safe: the writer is the one thread that commits, so a read it makes
//! between two groups sees every commit, and the in-memory schedule has taken each of them.

mod head;
mod heal;
mod op;
mod ops;
mod reply;
mod sweep;
mod txn;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::oneshot;

use crate::store::embedded::schema::{
    MARK, SCHEDULE, UNSCHEDULED_FROM, schedule_at_slot, storage, unscheduled_slot,
};
use crate::store::embedded::shared::Shared;
use crate::store::index::COUNT_EVERY_MS;
use crate::store::index::IdMap;
use crate::store::{StoreError, millis};
use heal::Healing;
#[cfg(test)]
pub(super) use heal::reload;
pub(super) use op::Op;
use reply::{Answer, Change, Effect, Step, owe};
use sweep::SWEEP_BATCH;
use txn::{Group, Tables};

/// Most operations applied in one commit.
const MAX_GROUP: usize = 8192;

/// Pending messages without a `schedule` entry at most (they are all held in memory, about
/// 80 bytes each); accepts beyond it write their entry.
pub(in crate::store::embedded) const MAX_UNSCHEDULED: usize = 16_384;

/// How long a message may stay pending without a `schedule` entry; then the next group writes
/// it. This bounds how far back the walk of `messages` on open starts (`schema.rs`).
const SPILL_AFTER_MS: u64 = 10_000;

/// Writes the `schedule` entries of the messages pending without one for longer than
/// [`SPILL_AFTER_MS`] (a send that hangs, a backlog that drains slowly).
fn spill_old(t: &mut Tables<'_>, g: &mut Group) -> Result<(), StoreError> {
    let cutoff = g.now_ms.saturating_sub(SPILL_AFTER_MS);
    let old: Vec<u128> = {
        let index = g.shared.index.lock();
        index
            .unscheduled_ids()
            .take_while(|&id| unscheduled_slot(id) < cutoff)
            .filter(|id| !g.unscheduled_ended.contains(id))
            .collect()
    };
    for id in old {
        schedule_at_slot(&mut t.schedule, id)?;
        g.unscheduled_ended.push(id);
    }
    Ok(())
}

/// Writes the mark of the messages pending without a `schedule` entry when the group moved
/// it: the lowest id of those left after the group. Returns the new mark when written.
fn write_mark(txn: &redb::WriteTransaction, g: &Group) -> Result<Option<Option<u128>>, StoreError> {
    let (left, written) = {
        let index = g.shared.index.lock();
        let ended: IdMap<()> = g.unscheduled_ended.iter().map(|&id| (id, ())).collect();
        let left = index.unscheduled_ids().find(|id| !ended.contains_key(id));
        (left, index.unscheduled_mark)
    };
    let mark = match (left, g.unscheduled_min) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if mark == written {
        return Ok(None);
    }
    let mut marks = txn.open_table(UNSCHEDULED_FROM).map_err(storage)?;
    match mark {
        Some(m) => marks.insert(MARK, m).map(drop).map_err(storage)?,
        None => marks.remove(MARK).map(drop).map_err(storage)?,
    }
    Ok(Some(mark))
}

/// How soon a retention sweep whose walk stopped early (it read its most entries) goes on.
const SWEEP_AGAIN: Duration = Duration::from_secs(1);

/// The one writer.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) max_messages: u64,
    pub(super) retention: Duration,
    pub(super) default_callback: bool,
    /// See [`crate::store::embedded::EmbeddedOptions::event_indexes`].
    pub(super) event_indexes: bool,
    /// Pending messages without a `schedule` entry at most ([`MAX_UNSCHEDULED`]; 0 in the
    /// tests of the head, so that every accept writes its entry).
    pub(super) max_unscheduled: usize,
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
        // Where the retention sweep's walk of `progress` goes on from (sweep.rs).
        let mut cursor = 0;
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
                        heal::heal(&self.shared, &mut healing);
                    } else if Instant::now() >= next_sweep {
                        next_sweep =
                            self.sweep_and_schedule(sweep_every, &mut cursor, &mut healing);
                    }
                    head::upkeep(&self.shared, healing.as_ref());
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
            head::upkeep(&self.shared, healing.as_ref());
            for op in pull_ins {
                if let Op::PullIn {
                    entries,
                    to_ms,
                    reply,
                } = op
                {
                    let _ = reply.send(head::adopt(&self.shared, entries, to_ms, healing.as_ref()));
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
                self.schedule_all(healing.as_ref());
                tracing::info!("embedded queue closed");
                return Some(reply);
            }
            if healing.is_none() && Instant::now() >= next_sweep {
                next_sweep = self.sweep_and_schedule(sweep_every, &mut cursor, &mut healing);
            }
        }
    }

    /// Counts producer operations out of the bounded queue.
    fn taken(&self, ops: &[Op]) {
        let n = ops
            .iter()
            .filter(|op| {
                matches!(
                    op,
                    Op::Accept { .. } | Op::Replay { .. } | Op::Event { .. } | Op::Recall { .. }
                )
            })
            .count();
        if n > 0 {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Applies a group of operations in one transaction and commits once. While the store
    /// heals, a group is failed at once (no disk access) until the next healing attempt is due;
    /// then the database is reopened and probed first.
    fn apply(&self, ops: Vec<Op>, healing: &mut Option<Healing>) {
        if healing.as_ref().is_some_and(|h| Instant::now() < h.next_at)
            || !heal::heal(&self.shared, healing)
        {
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
        if let Err(e) = head::count_due(&self.shared, millis(now))
            && let Some(held) = self.shared.logs.check("schedule_read")
        {
            tracing::error!(error = %e, held_back = held, "cannot read the schedule; tried again later");
        }
        let mut group = Group {
            now,
            now_ms: millis(now),
            pending: self.shared.index.lock().pending(),
            max_messages: self.max_messages,
            default_callback: self.default_callback,
            event_indexes: self.event_indexes,
            callbacks_added: false,
            over_budget: None,
            unscheduled_room: 0,
            unscheduled_min: None,
            unscheduled_ended: Vec::new(),
            shared: Arc::clone(&self.shared),
        };
        {
            let index = self.shared.index.lock();
            // Only while no entry waits on disk beyond the head: the message is then due no
            // earlier than any other, so leasing it from memory keeps the schedule's order.
            if index.beyond() == 0 {
                group.unscheduled_room = self.max_unscheduled.saturating_sub(index.unscheduled());
            }
        }
        let mut mark = None;
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
                spill_old(&mut t, &mut group)?;
            }
            mark = write_mark(&txn, &group)?;
            txn.commit().map_err(storage)?;
            Ok(())
        })();
        tracing::trace!(group = size, took = ?started.elapsed(), "group committed");
        // Operations not reached (the group failed part-way) are answered too.
        effects.extend(ops.into_iter().map(Op::abandon));
        if result.is_ok() {
            let mut index = self.shared.index.lock();
            index.now_scheduled(&group.unscheduled_ended);
            if let Some(mark) = mark {
                index.unscheduled_mark = mark;
            }
        }
        self.settle(effects, result.err(), group.callbacks_added, healing);
    }

    /// Gives every message pending without a `schedule` entry its entry, and removes the
    /// mark: what a clean close leaves, so that a version that does not know the mark reads
    /// the store whole.
    fn schedule_all(&self, healing: Option<&Healing>) {
        if healing.is_some() {
            return;
        }
        let entries: Vec<u128> = self.shared.index.lock().unscheduled_ids().collect();
        if entries.is_empty() {
            return;
        }
        let result = (|| -> Result<(), StoreError> {
            let txn = self.shared.begin_write()?;
            {
                let mut schedule = txn.open_table(SCHEDULE).map_err(storage)?;
                for &id in &entries {
                    schedule_at_slot(&mut schedule, id)?;
                }
                let mut marks = txn.open_table(UNSCHEDULED_FROM).map_err(storage)?;
                marks.remove(MARK).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })();
        match result {
            Ok(()) => {
                let mut index = self.shared.index.lock();
                index.now_scheduled(&entries);
                index.unscheduled_mark = None;
            }
            Err(e) => {
                // The next open lists them from the mark.
                tracing::warn!(error = %e, "cannot list the pending messages in the schedule at close");
            }
        }
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
                heal::failed(&self.shared, &e, healing);
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
                owe(effects, Change::None, reply, ops::accept(t, g, items))
            }
            Op::Complete {
                slot,
                record,
                reply,
            } => {
                let (step, undo) = ops::complete_one(t, g, slot, record);
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
                    match ops::complete_one(t, g, slot, record) {
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
                owe(effects, undo, reply, ops::start_attempts(t, items))
            }
            Op::Event {
                event,
                fallback,
                reply,
            } => owe(
                effects,
                Change::None,
                reply,
                ops::record_event(t, g, &event, fallback),
            ),
            Op::Replay { id, reply } => owe(effects, Change::None, reply, ops::replay(t, g, id)),
            Op::Recall { id, at, reply } => {
                owe(effects, Change::None, reply, ops::record_recall(t, id, at))
            }
            Op::FinishCallback { key, next, reply } => owe(
                effects,
                Change::CallbackDone { id: key.id },
                reply,
                ops::finish_callback(t, key, next),
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

    /// Sweeps, and says when the next sweep is due: at once when this one removed a full
    /// batch, within a second when its walk stopped before the cutoff, else after `every`.
    fn sweep_and_schedule(
        &self,
        every: Duration,
        cursor: &mut u128,
        healing: &mut Option<Healing>,
    ) -> Instant {
        if sweep::sweep(&self.shared, self.retention, cursor, healing) >= SWEEP_BATCH {
            Instant::now()
        } else if *cursor != 0 {
            Instant::now() + every.min(SWEEP_AGAIN)
        } else {
            Instant::now() + every
        }
    }
}
