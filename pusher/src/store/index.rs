//! The in-memory view of the schedule: which pending messages are due when, and which are
//! leased. It mirrors the durable schedule table and changes only after a commit, so a crash
//! loses nothing but leases (which is what makes leased messages due again after a restart).

use std::collections::{BTreeSet, HashMap};

/// Pending messages by due time, and the leased ones.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// `(due_ms, id)` of pending messages not leased.
    due: BTreeSet<(u64, u128)>,
    /// Leased ids, with the slot they were leased from.
    leased: HashMap<u128, u64>,
    /// Unleased ids due at another time than their durable schedule slot, with that slot:
    /// held back to a later time (a lease given back after a failed write) or pulled in to an
    /// earlier one (see [`Index::pull_in`]). The slot is what a lease hands out, so the durable
    /// entry stays the one that is completed; a crash forgets the move, never a message.
    moved: HashMap<u128, u64>,
    /// Dead letters.
    pub(crate) dead: u64,
}

impl Index {
    /// Adds a pending message.
    pub(crate) fn schedule(&mut self, due_ms: u64, id: u128) {
        self.due.insert((due_ms, id));
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
    /// back). Returns how many moved. In memory only: the durable slot is kept and reported at
    /// lease time.
    pub(crate) fn pull_in(&mut self, entries: &[(u64, u128)], to_ms: u64) -> u64 {
        let mut moved = 0;
        for &(slot, id) in entries {
            if slot > to_ms && !self.moved.contains_key(&id) && self.due.remove(&(slot, id)) {
                self.due.insert((to_ms, id));
                self.moved.insert(id, slot);
                moved += 1;
            }
        }
        moved
    }

    /// When the earliest unleased message is due.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.due.first().map(|&(due, _)| due)
    }

    /// Ends a lease; the message is rescheduled at `due_ms` when given.
    pub(crate) fn release(&mut self, id: u128, due_ms: Option<u64>) {
        self.leased.remove(&id);
        if let Some(due) = due_ms {
            self.due.insert((due, id));
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

    /// Takes the schedule of `fresh` (just read from disk), keeping the leases held now.
    pub(crate) fn reload(&mut self, fresh: Index) {
        self.due = fresh
            .due
            .into_iter()
            .filter(|(_, id)| !self.leased.contains_key(id))
            .collect();
        self.moved.clear();
        self.dead = fresh.dead;
    }

    /// Whether `id` is leased.
    pub(crate) fn is_leased(&self, id: u128) -> bool {
        self.leased.contains_key(&id)
    }

    /// Pending messages (due, delayed and leased).
    pub(crate) fn pending(&self) -> u64 {
        (self.due.len() + self.leased.len()) as u64
    }

    /// `(ready, delayed, inflight)` at `now_ms`.
    pub(crate) fn counts(&self, now_ms: u64) -> (u64, u64, u64) {
        let delayed = self.due.range((now_ms.saturating_add(1), 0)..).count() as u64;
        let ready = self.due.len() as u64 - delayed;
        (ready, delayed, self.leased.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_only_due_messages_in_order() {
        let mut ix = Index::default();
        ix.schedule(10, 2);
        ix.schedule(5, 1);
        ix.schedule(100, 3);
        assert_eq!(ix.counts(10), (2, 1, 0));
        assert_eq!(ix.take_due(10, 8), vec![(5, 1), (10, 2)]);
        assert_eq!(ix.take_due(10, 8), vec![]);
        assert_eq!(ix.next_due(), Some(100));
        assert_eq!(ix.counts(10), (0, 1, 2));
        assert!(ix.is_leased(1));
        ix.release(1, Some(50));
        ix.unlease_after(2, 0);
        assert_eq!(ix.take_due(60, 1), vec![(10, 2)]);
        assert_eq!(ix.take_due(60, 8), vec![(50, 1)]);
        ix.release(1, None);
        assert_eq!(ix.pending(), 2);
    }

    #[test]
    fn a_lease_given_back_after_a_failure_waits_but_keeps_its_slot() {
        let mut ix = Index::default();
        ix.schedule(10, 1);
        assert_eq!(ix.take_due(10, 8), vec![(10, 1)]);
        ix.unlease_after(1, 1010);
        assert_eq!(ix.take_due(1009, 8), vec![], "not at once");
        assert_eq!(ix.next_due(), Some(1010));
        assert_eq!(ix.take_due(1010, 8), vec![(10, 1)], "the durable slot");
        assert_eq!(ix.pending(), 1);
    }

    #[test]
    fn pulled_in_entries_are_due_early_and_lease_their_durable_slot() {
        let mut ix = Index::default();
        ix.schedule(5_000, 1);
        ix.schedule(9_000, 2);
        ix.schedule(50, 3);
        // Entry 2 is named with a wrong slot, entry 3 is due already: only 1 moves.
        assert_eq!(ix.pull_in(&[(5_000, 1), (8_000, 2), (50, 3)], 100), 1);
        assert_eq!(ix.counts(100), (2, 1, 0));
        assert_eq!(ix.take_due(100, 8), vec![(50, 3), (5_000, 1)]);
        assert!(ix.is_leased(1));
        // Given back unchanged, it returns to its durable slot.
        ix.unlease_after(1, 0);
        assert_eq!(ix.next_due(), Some(5_000));
        assert_eq!(ix.pull_in(&[(9_000, 2)], 200), 1);
        assert_eq!(ix.pull_in(&[(9_000, 2)], 150), 0, "already pulled in");
    }
}
