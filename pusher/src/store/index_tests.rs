//! Unit tests of the in-memory schedule (`index.rs`).

use std::ops::Bound::{Excluded, Included, Unbounded};

use super::*;

/// The writer's upkeep between groups, against `disk` (the durable schedule): trim, one
/// refill when wanted, and the due count of the entries beyond the watermark.
fn upkeep(ix: &mut Index, disk: &BTreeSet<Key>, now: u64) {
    ix.trim();
    if let Some((from, n)) = ix.refill_wanted() {
        let mut read: Vec<Key> = disk
            .range((Excluded(from), Unbounded))
            .take(n + 1)
            .copied()
            .collect();
        let exhausted = read.len() <= n;
        read.truncate(n);
        ix.refilled(from, &read, exhausted);
    }
    if let Some((after, to)) = ix.count_wanted(now) {
        let read: Vec<Key> = disk
            .range((Excluded(after), Included(to)))
            .copied()
            .collect();
        ix.counted(after, &read, Some(to));
    }
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// `(ready, delayed, inflight)` from the durable schedule itself.
fn exact(disk: &BTreeSet<Key>, leased: &IdMap<u64>, now: u64) -> (u64, u64, u64) {
    let free = disk.iter().filter(|(_, id)| !leased.contains_key(id));
    let ready = free.clone().filter(|&&(due, _)| due <= now).count() as u64;
    let delayed = free.count() as u64 - ready;
    (ready, delayed, leased.len() as u64)
}

#[test]
fn more_queued_than_the_head_holds_are_all_leased_in_due_order_with_exact_counts() {
    let mut ix = Index::with_head(8);
    let mut disk = BTreeSet::new();
    let mut rng = Rng(7);
    let mut now = 1_000;
    let mut next_id = 0u128;
    let mut accepted = 0;
    let mut delivered = 0;
    let mut retried_far = Vec::new();
    for step in 0..3_000 {
        now += rng.next(3);
        // Accepts (a group's messages share its due time), mostly early on.
        if step < 1_500 || rng.next(10) == 0 {
            for _ in 0..rng.next(12) {
                next_id += 1;
                let id = (u128::from(rng.next(1 << 20)) << 32) | next_id;
                disk.insert((now, id));
                ix.schedule(now, id);
                accepted += 1;
            }
        }
        upkeep(&mut ix, &disk, now);
        assert!(ix.held() <= 2 * 8 + 8, "bounded: {}", ix.held());
        assert_eq!(
            ix.counts(now),
            exact(&disk, &ix.leases(), now),
            "step {step}"
        );
        assert_eq!(ix.pending(), disk.len() as u64);
        // Leases hand out the earliest due entries not leased, none skipped.
        let leased_before = ix.leases();
        let free: Vec<Key> = disk
            .iter()
            .filter(|(due, id)| *due <= now && !leased_before.contains_key(id))
            .copied()
            .collect();
        let got = ix.take_due(now, 1 + rng.next(4) as usize);
        assert_eq!(got, free[..got.len()], "step {step}: in due order");
        // Outcomes: delivered, retried soon, retried far beyond the watermark.
        for (slot, id) in got {
            disk.remove(&(slot, id));
            let due = match rng.next(10) {
                0..=5 => None,
                6..=8 => Some(now + 1 + rng.next(400)),
                _ => Some(now + 1_000_000),
            };
            match due {
                None => delivered += 1,
                Some(d) => {
                    if d > now + 500_000 {
                        retried_far.push(id);
                    }
                    disk.insert((d, id));
                }
            }
            ix.release(id, due);
        }
    }
    assert!(
        ix.beyond() > 0,
        "the test ran with entries beyond the watermark"
    );
    // Drain everything, far retries too.
    now += 2_000_000;
    let mut order = Vec::new();
    while !disk.is_empty() {
        upkeep(&mut ix, &disk, now);
        assert_eq!(ix.counts(now), exact(&disk, &ix.leases(), now));
        let got = ix.take_due(now, 5);
        assert!(!got.is_empty(), "nothing stranded: {} on disk", disk.len());
        for (slot, id) in got {
            disk.remove(&(slot, id));
            ix.release(id, None);
            order.push((slot, id));
            delivered += 1;
        }
    }
    assert!(order.is_sorted(), "drained in due order");
    assert!(
        retried_far
            .iter()
            .all(|id| order.iter().any(|(_, o)| o == id))
    );
    assert_eq!(delivered, accepted);
    assert_eq!(ix.pending(), 0);
    assert_eq!(ix.counts(now), (0, 0, 0));
}

#[test]
fn a_retry_far_beyond_the_watermark_is_found_on_refill() {
    let mut ix = Index::with_head(4);
    let mut disk = BTreeSet::new();
    for id in 1..=20 {
        disk.insert((10, id));
        ix.schedule(10, id);
    }
    upkeep(&mut ix, &disk, 10);
    assert_eq!(ix.held(), 4, "trimmed to the head");
    assert_eq!(ix.counts(10), (20, 0, 0));
    assert_eq!(ix.take_due(10, 1), vec![(10, 1)]);
    disk.remove(&(10, 1));
    disk.insert((90_000, 1));
    ix.release(1, Some(90_000));
    assert_eq!(ix.counts(10), (19, 1, 0));
    let mut got = Vec::new();
    for now in 11..100 {
        upkeep(&mut ix, &disk, now);
        for (slot, id) in ix.take_due(now, 3) {
            disk.remove(&(slot, id));
            ix.release(id, None);
            got.push(id);
        }
    }
    assert_eq!(got, (2..=20).collect::<Vec<_>>());
    assert_eq!(ix.counts(100), (0, 1, 0));
    upkeep(&mut ix, &disk, 100);
    assert_eq!(ix.next_due(), Some(90_000), "read back from disk");
    assert_eq!(ix.take_due(89_999, 8), vec![]);
    assert_eq!(ix.take_due(90_000, 8), vec![(90_000, 1)]);
}

#[test]
fn a_reload_keeps_the_leases_held_and_takes_back_those_given_back() {
    let mut ix = Index::with_head(4);
    let mut disk = BTreeSet::new();
    for id in 1..=12 {
        disk.insert((u64::try_from(id).unwrap_or(0), id));
        ix.schedule(u64::try_from(id).unwrap_or(0), id);
    }
    upkeep(&mut ix, &disk, 0);
    assert_eq!(ix.take_due(2, 8), vec![(1, 1), (2, 2)]);
    let skipped = ix.leases();
    let fresh = Index::load(4, disk.iter().copied(), &skipped, 5);
    // Meanwhile: 1 was given back, 3 leased.
    ix.unlease_after(1, 500);
    assert_eq!(ix.take_due(3, 1), vec![(3, 3)]);
    ix.reload(fresh, &skipped);
    assert!(ix.is_leased(2) && ix.is_leased(3) && !ix.is_leased(1));
    assert_eq!(ix.pending(), 12);
    assert_eq!(ix.counts(5), (3, 7, 2));
    let mut got = Vec::new();
    for now in 5..20 {
        upkeep(&mut ix, &disk, now);
        got.extend(ix.take_due(now, 2).into_iter().map(|(_, id)| id));
    }
    assert_eq!(got, vec![1, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
}

#[test]
fn pulled_in_entries_beyond_the_watermark_are_adopted() {
    let mut ix = Index::with_head(4);
    let mut disk = BTreeSet::new();
    for id in 1..=12 {
        let due = 1_000 * u64::try_from(id).unwrap_or(0);
        disk.insert((due, id));
        ix.schedule(due, id);
    }
    upkeep(&mut ix, &disk, 0);
    let (moved, beyond) = ix.pull_in(&[(1_000, 1), (9_000, 9), (12_000, 12)], 100);
    assert_eq!((moved, beyond.clone()), (1, vec![(9_000, 9), (12_000, 12)]));
    assert_eq!(ix.adopt(&beyond, 100), 2);
    assert_eq!(ix.counts(100), (3, 9, 0));
    assert_eq!(
        ix.take_due(100, 8),
        vec![(1_000, 1), (9_000, 9), (12_000, 12)]
    );
    assert_eq!(ix.pending(), 12);
    // A refill skips the adopted ones, leased now.
    let mut got = Vec::new();
    for now in (0..13).map(|k| k * 1_000) {
        upkeep(&mut ix, &disk, now);
        got.extend(ix.take_due(now, 8).into_iter().map(|(_, id)| id));
    }
    assert_eq!(got, (2..=8).chain(10..=11).collect::<Vec<_>>());
    assert_eq!(ix.pending(), 12);
}

#[test]
fn the_oldest_ready_due_time_is_the_head_of_the_unleased_schedule() {
    let mut ix = Index::default();
    assert_eq!(ix.oldest_due(10), None, "empty");
    ix.schedule(100, 3);
    assert_eq!(ix.oldest_due(10), None, "only a delayed message");
    ix.schedule(5, 1);
    ix.schedule(8, 2);
    assert_eq!(ix.oldest_due(10), Some(5));
    assert_eq!(ix.take_due(10, 1), vec![(5, 1)]);
    assert_eq!(ix.oldest_due(10), Some(8), "a leased message is not ready");
    assert_eq!(ix.take_due(10, 1), vec![(8, 2)]);
    assert_eq!(ix.oldest_due(10), None);
    assert_eq!(ix.oldest_due(100), Some(100));
}

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
    assert_eq!(ix.pull_in(&[(5_000, 1), (8_000, 2), (50, 3)], 100).0, 1);
    assert_eq!(ix.counts(100), (2, 1, 0));
    assert_eq!(ix.take_due(100, 8), vec![(50, 3), (5_000, 1)]);
    assert!(ix.is_leased(1));
    // Given back unchanged, it returns to its durable slot.
    ix.unlease_after(1, 0);
    assert_eq!(ix.next_due(), Some(5_000));
    assert_eq!(ix.pull_in(&[(9_000, 2)], 200).0, 1);
    assert_eq!(ix.pull_in(&[(9_000, 2)], 150).0, 0, "already pulled in");
}
