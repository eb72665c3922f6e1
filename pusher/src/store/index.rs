//! The in-memory view of the schedule: which pending messages are due when, and which are
//! leased. It mirrors the durable schedule table and changes only after a commit, so a crash
//! loses nothing but leases (which is what makes leased messages due again after a restart).
//!
//! **Bounded.** Only the *head* of the schedule is held in memory: the earliest-due entries, at
//! most about [`HEAD`] of them (twice that before the writer trims it), up to a **watermark**,
//! the `(due ms, id)` key up to which memory is complete: every durable schedule entry with a
//! key at or below the watermark is in memory (due, or leased). Entries beyond the watermark
//! stay on disk and are only counted ([`Index::beyond`]), together with how many of them are
//! due already (as of the writer's last look, [`Index::counted_to`]), so that the queue counts
//! stay exact without holding them. The store's writer thread, the only one that commits, keeps
//! the head filled: when it runs low it reads the next entries after the watermark from the
//! durable `schedule` table and moves the watermark to the last one read
//! ([`Index::refill_wanted`], [`Index::refilled`]); when accepts made it grow past twice
//! [`HEAD`] it forgets the latest entries and lowers the watermark ([`Index::trim`]). Because the
//! writer reads the table only between its own commits, a refill sees every entry up to the new
//! watermark: none is stranded on disk.
//!
//! **Entries with no durable twin.** Fresh messages accepted while the whole schedule is in
//! memory have no durable schedule entry (`embedded/schema.rs` says how a restart finds them):
//! they are held here until their first outcome, never trimmed and outside the watermark's
//! rule ([`Index::schedule_unscheduled`]).
//!
//! Hand-written rather than a cache crate: this is the queue's own scheduling over redb (what is
//! due, in which order, leased by whom, moved where), and its correctness rests on the
//! watermark invariant above, which only the store's writer can keep.

use std::collections::{BTreeSet, HashMap};

/// A map by message id. The ids are ULIDs this process made, so a fast hasher is safe
/// (SipHash, the standard one, showed in the profile).
pub(crate) type IdMap<V> = HashMap<u128, V, foldhash::fast::RandomState>;

/// A schedule key: `(due ms, id)`, the key of the durable `schedule` table.
pub(crate) type Key = (u64, u128);

/// The watermark of a schedule held in memory entirely.
pub(crate) const ALL: Key = (u64::MAX, u128::MAX);

/// Entries the in-memory head is refilled to (and trimmed back to once it holds twice as
/// many); it is refilled when fewer than a quarter of this are left unleased.
pub(crate) const HEAD: usize = 1024;

/// How many heads' worth of entries beyond the watermark one pull-in (retries an outage
/// delayed, due again once WeChat is back) brings into memory at most; the others stay due at
/// their written time. Bounds what a pull-in adds to memory (16,384 entries, about 1.5 MB).
pub(crate) const ADOPT_HEADS: usize = 16;

/// How often (ms) the writer counts the entries beyond the watermark that became due, while
/// there are any.
pub(crate) const COUNT_EVERY_MS: u64 = 250;

/// The key just before `k`.
fn before(k: Key) -> Key {
    match k {
        (due, 0) => (due.saturating_sub(1), u128::MAX),
        (due, id) => (due, id - 1),
    }
}

/// Pending messages by due time, and the leased ones.
#[derive(Debug)]
pub(crate) struct Index {
    /// `(due_ms, id)` of pending messages not leased, in memory.
    due: BTreeSet<Key>,
    /// Leased ids, with the slot they were leased from.
    leased: IdMap<u64>,
    /// Unleased ids due at another time than their durable schedule slot, with that slot:
    /// held back to a later time (a lease given back after a failed write) or pulled in to an
    /// earlier one (see [`Index::pull_in`]). The slot is what a lease hands out, so the durable
    /// entry stays the one that is completed; a crash forgets the move, never a message.
    moved: IdMap<u64>,
    /// Every durable schedule entry with a key up to this one is in memory.
    watermark: Key,
    /// Durable schedule entries beyond the watermark that are not in memory.
    beyond: u64,
    /// Those of them with a key up to `counted_to`: due already.
    beyond_due: u64,
    /// How far the entries beyond the watermark have been counted as due (never later than
    /// the writer's clock at its last look).
    counted_to: Key,
    /// The head's size (see [`HEAD`]).
    cap: usize,
    /// Pending messages that have no durable schedule entry (accepted while the whole
    /// schedule was in memory; see `embedded/schema.rs`; their slot is the time part of their
    /// id): in memory until their first outcome, never trimmed.
    unscheduled: BTreeSet<u128>,
    /// The lowest id that may be pending without a durable schedule entry, as last committed.
    pub(crate) unscheduled_mark: Option<u128>,
    /// Dead letters.
    pub(crate) dead: u64,
}

impl Default for Index {
    fn default() -> Self {
        Self::with_head(HEAD)
    }
}

impl Index {
    /// An empty index whose head holds about `cap` entries.
    pub(crate) fn with_head(cap: usize) -> Self {
        Self {
            due: BTreeSet::new(),
            leased: IdMap::default(),
            moved: IdMap::default(),
            watermark: ALL,
            beyond: 0,
            beyond_due: 0,
            counted_to: (0, 0),
            cap: cap.max(4),
            unscheduled: BTreeSet::new(),
            unscheduled_mark: None,
            dead: 0,
        }
    }

    /// Adds a pending message that has no durable schedule entry (just committed): into
    /// memory, whatever the watermark, until its first outcome ([`Index::release`]).
    pub(crate) fn schedule_unscheduled(&mut self, due_ms: u64, id: u128) {
        self.due.insert((due_ms, id));
        self.unscheduled.insert(id);
    }

    /// Whether `id` is pending without a durable schedule entry.
    pub(crate) fn is_unscheduled(&self, id: u128) -> bool {
        self.unscheduled.contains(&id)
    }

    /// How many messages are pending without a durable schedule entry.
    pub(crate) fn unscheduled(&self) -> usize {
        self.unscheduled.len()
    }

    /// The ids of the messages without a durable schedule entry, in order (ids are ULIDs: the
    /// oldest first).
    pub(crate) fn unscheduled_ids(&self) -> impl Iterator<Item = u128> + '_ {
        self.unscheduled.iter().copied()
    }

    /// Notes that these messages now have their durable schedule entry (written at their
    /// slot): they are ordinary entries from now on.
    pub(crate) fn now_scheduled(&mut self, ids: &[u128]) {
        for id in ids {
            self.unscheduled.remove(id);
        }
    }

    /// Whether `id` is in memory (due, moved or leased) under the durable key `key`.
    fn holds(&self, key: Key) -> bool {
        self.leased.contains_key(&key.1)
            || self.moved.contains_key(&key.1)
            || self.due.contains(&key)
    }

    /// Counts an entry that stays on disk only.
    fn add_beyond(&mut self, key: Key) {
        self.beyond += 1;
        if key <= self.counted_to {
            self.beyond_due += 1;
        }
    }

    /// Uncounts an entry beyond the watermark that came into memory.
    fn take_beyond(&mut self, key: Key) {
        self.beyond = self.beyond.saturating_sub(1);
        if key <= self.counted_to {
            self.beyond_due = self.beyond_due.saturating_sub(1);
        }
    }

    /// Adds a pending message (just committed): into memory when due by the watermark, else
    /// counted only.
    pub(crate) fn schedule(&mut self, due_ms: u64, id: u128) {
        let key = (due_ms, id);
        if key <= self.watermark {
            self.due.insert(key);
        } else {
            self.add_beyond(key);
        }
    }

    /// Takes up to `max` messages due at `now_ms`, marking them leased.
    pub(crate) fn take_due(&mut self, now_ms: u64, max: usize) -> Vec<(u64, u128)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.due.first() {
                Some(&(due, id)) if due <= now_ms => {
                    self.due.pop_first();
                    let slot = self.moved.remove(&id).unwrap_or(due);
                    self.leased.insert(id, slot);
                    out.push((slot, id));
                }
                _ => break,
            }
        }
        out
    }

    /// Makes the given `(slot, id)` entries due at `to_ms` when they are still scheduled at that
    /// slot, later than `to_ms`, and not leased (retries delayed by an outage, once WeChat is
    /// back). Returns how many moved, and the entries beyond the watermark (not in memory),
    /// which only the writer can check against the disk ([`Index::adopt`]). In memory only:
    /// the durable slot is kept and reported at lease time.
    pub(crate) fn pull_in(&mut self, entries: &[Key], to_ms: u64) -> (u64, Vec<Key>) {
        let mut moved = 0;
        let mut beyond = Vec::new();
        for &(slot, id) in entries {
            if slot <= to_ms || self.moved.contains_key(&id) {
                continue;
            }
            if self.due.remove(&(slot, id)) {
                self.due.insert((to_ms, id));
                self.moved.insert(id, slot);
                moved += 1;
            } else if (slot, id) > self.watermark && !self.leased.contains_key(&id) {
                beyond.push((slot, id));
            }
        }
        (moved, beyond)
    }

    /// How many entries beyond the watermark one pull-in brings into memory at most
    /// ([`ADOPT_HEADS`] heads' worth).
    pub(crate) fn max_adopt(&self) -> usize {
        self.cap * ADOPT_HEADS
    }

    /// Brings entries beyond the watermark into memory, due at `to_ms` (the second half of
    /// [`Index::pull_in`]). `entries` must be in the durable schedule (the writer read them
    /// after its last commit); at most [`Index::max_adopt`] are taken, the others stay due at
    /// their written time. Returns how many moved.
    pub(crate) fn adopt(&mut self, entries: &[Key], to_ms: u64) -> u64 {
        let mut moved = 0;
        for &(slot, id) in entries.iter().take(self.max_adopt()) {
            if slot <= to_ms || (slot, id) <= self.watermark || self.holds((slot, id)) {
                continue;
            }
            self.take_beyond((slot, id));
            self.due.insert((to_ms, id));
            self.moved.insert(id, slot);
            moved += 1;
        }
        moved
    }

    /// When the earliest unleased message in memory is due.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.due.first().map(|&(due, _)| due)
    }

    /// Ends a lease; the message is rescheduled at `due_ms` when given.
    pub(crate) fn release(&mut self, id: u128, due_ms: Option<u64>) {
        self.leased.remove(&id);
        self.unscheduled.remove(&id);
        if let Some(due) = due_ms {
            self.schedule(due, id);
        }
    }

    /// Gives a lease back unchanged, but not due before `not_before_ms` (a write about it
    /// failed: leasing it again at once would repeat the attempt in a tight loop). The durable
    /// slot is kept for the next lease.
    pub(crate) fn unlease_after(&mut self, id: u128, not_before_ms: u64) {
        if let Some(slot) = self.leased.remove(&id) {
            if not_before_ms > slot {
                self.moved.insert(id, slot);
                self.due.insert((not_before_ms, id));
            } else {
                self.due.insert((slot, id));
            }
        }
    }

    /// Whether the head runs low while entries wait beyond the watermark: then
    /// `Some((watermark, how many to read after it))`.
    pub(crate) fn refill_wanted(&self) -> Option<(Key, usize)> {
        if self.beyond == 0 {
            return None;
        }
        // Low, or holding nothing earlier than the watermark (only leases given back with a
        // delay): entries beyond it may be due before those.
        let low = self.due.len() < self.cap / 4
            || self.due.first().is_none_or(|&first| first > self.watermark);
        low.then(|| {
            (
                self.watermark,
                self.cap.saturating_sub(self.due.len()).max(self.cap / 4),
            )
        })
    }

    /// Takes the entries the writer read from the durable schedule after `from` (the watermark
    /// it was given by [`Index::refill_wanted`]), in key order; `exhausted` when the table had
    /// no more. The watermark moves to the last entry read. Returns how many came into memory.
    pub(crate) fn refilled(&mut self, from: Key, entries: &[Key], exhausted: bool) -> usize {
        if from != self.watermark {
            return 0; // Read for another watermark: the next refill reads again.
        }
        let mut loaded = 0;
        for &key in entries {
            // An entry in memory already (leased, moved) was never counted beyond.
            if key <= from || self.holds(key) {
                continue;
            }
            self.take_beyond(key);
            self.due.insert(key);
            loaded += 1;
        }
        if exhausted {
            self.watermark = ALL;
            self.beyond = 0;
            self.beyond_due = 0;
        } else if let Some(&last) = entries.last() {
            self.watermark = last;
        }
        loaded
    }

    /// When the head grew past twice [`HEAD`] (accepts due by the watermark), forgets its latest
    /// entries down to [`HEAD`] and lowers the watermark before them; they stay on disk and are
    /// counted. Entries due at a moved time stay (their durable slot may be anywhere).
    ///
    /// Entries without a durable schedule entry are neither counted nor forgotten: they are
    /// bounded on their own (`MAX_UNSCHEDULED` in the embedded store's writer).
    pub(crate) fn trim(&mut self) -> usize {
        let listed = self.due.len().saturating_sub(self.unscheduled.len());
        if listed <= self.cap * 2 {
            return 0;
        }
        let excess = listed - self.cap;
        let out: Vec<Key> = self
            .due
            .iter()
            .rev()
            .filter(|(_, id)| !self.moved.contains_key(id) && !self.unscheduled.contains(id))
            .take(excess)
            .copied()
            .collect();
        let Some(&earliest) = out.last() else {
            return 0;
        };
        for &key in &out {
            self.due.remove(&key);
            self.add_beyond(key);
        }
        self.watermark = self.watermark.min(before(earliest));
        out.len()
    }

    /// The range of keys the writer counts to bring the due count of the entries beyond the
    /// watermark up to `now_ms`: `Some((after, up_to))`, or `None` when there is nothing to read.
    pub(crate) fn count_wanted(&mut self, now_ms: u64) -> Option<(Key, Key)> {
        let to = (now_ms, u128::MAX);
        if self.beyond == 0 {
            // Nothing beyond the watermark: nothing to count.
            self.counted_to = self.counted_to.max(to);
            return None;
        }
        let from = self.counted_to.max(self.watermark);
        if from >= to {
            self.counted_to = self.counted_to.max(to);
            return None;
        }
        Some((from, to))
    }

    /// Adds the entries the writer read in `(after, ..]` (a part of [`Index::count_wanted`]'s
    /// range, in key order) to the due count; `done` with the range's end when it read all.
    pub(crate) fn counted(&mut self, after: Key, entries: &[Key], done: Option<Key>) {
        if after != self.counted_to.max(self.watermark) {
            return; // The watermark moved meanwhile: counted again at the next look.
        }
        for &key in entries {
            if key > after && !self.holds(key) {
                self.beyond_due += 1;
            }
        }
        let end = done.or_else(|| entries.last().copied());
        if let Some(end) = end {
            self.counted_to = self.counted_to.max(end);
        }
        self.beyond_due = self.beyond_due.min(self.beyond);
    }

    /// Takes the schedule of `fresh` (just read from disk with [`Index::load`], skipping the
    /// ids of `skipped`, the leases held when the read began), keeping the leases held now: an
    /// id leased since is taken out of `fresh`, and one of `skipped` given back since is put
    /// into it at its durable slot.
    pub(crate) fn reload(&mut self, mut fresh: Index, skipped: &IdMap<u64>) {
        for (&id, &slot) in &self.leased {
            let key = (slot, id);
            if !skipped.contains_key(&id) && !fresh.due.remove(&key) && key > fresh.watermark {
                fresh.take_beyond(key);
            }
        }
        for (&id, &slot) in skipped {
            if !self.leased.contains_key(&id)
                && (self.moved.contains_key(&id) || self.due.contains(&(slot, id)))
            {
                fresh.schedule(slot, id);
            }
        }
        fresh.leased = std::mem::take(&mut self.leased);
        *self = fresh;
    }

    /// Builds an index from the durable schedule's entries in key order, skipping those of
    /// `leased` (held by this process), as of `now_ms`: the first [`HEAD`] in memory, the rest
    /// counted.
    pub(crate) fn load(
        cap: usize,
        entries: impl Iterator<Item = Key>,
        leased: &IdMap<u64>,
        now_ms: u64,
    ) -> Self {
        let mut ix = Self::with_head(cap);
        ix.counted_to = (now_ms, u128::MAX);
        let mut last = None;
        for key in entries {
            if leased.contains_key(&key.1) {
                continue;
            }
            if ix.due.len() < ix.cap {
                ix.due.insert(key);
                last = Some(key);
            } else {
                ix.add_beyond(key);
            }
        }
        if ix.beyond > 0
            && let Some(last) = last
        {
            ix.watermark = last;
        }
        ix
    }

    /// Whether `id` is leased.
    pub(crate) fn is_leased(&self, id: u128) -> bool {
        self.leased.contains_key(&id)
    }

    /// The ids leased now, with their slots.
    pub(crate) fn leases(&self) -> IdMap<u64> {
        self.leased.clone()
    }

    /// Pending messages (due, delayed and leased, in memory or not).
    pub(crate) fn pending(&self) -> u64 {
        (self.due.len() + self.leased.len()) as u64 + self.beyond
    }

    /// Entries in memory (unleased); at most about twice [`HEAD`] after the writer's upkeep.
    pub(crate) fn held(&self) -> usize {
        self.due.len()
    }

    /// Entries on disk only.
    pub(crate) fn beyond(&self) -> u64 {
        self.beyond
    }

    /// The due time (unix ms) of the oldest unleased message due at `now_ms`, if any: the
    /// first entry in memory (entries beyond the watermark are due later).
    pub(crate) fn oldest_due(&self, now_ms: u64) -> Option<u64> {
        self.due
            .first()
            .map(|(due, _)| *due)
            .filter(|due| *due <= now_ms)
    }

    /// `(ready, delayed, inflight)` at `now_ms`. Entries beyond the watermark count as due as
    /// of the writer's last look ([`Index::counted`], every group and at least every
    /// [`COUNT_EVERY_MS`] ms). O(head), never O(queue).
    pub(crate) fn counts(&self, now_ms: u64) -> (u64, u64, u64) {
        let delayed = self.due.range((now_ms.saturating_add(1), 0)..).count() as u64;
        let ready = self.due.len() as u64 - delayed + self.beyond_due;
        let delayed = delayed + (self.beyond - self.beyond_due.min(self.beyond));
        (ready, delayed, self.leased.len() as u64)
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
