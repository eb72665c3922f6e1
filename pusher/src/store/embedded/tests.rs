//! The embedded store with a small in-memory head: a backlog larger than the head is leased
//! in due order, retries far beyond the watermark come back, counts stay exact, and a restart
//! reloads it all (see [`crate::store::index`]).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::{EmbeddedOptions, EmbeddedStore};
use crate::message::{Status, parse_message};
use crate::store::{AcceptItem, Leased, QueueCounts, Store};

const HEAD: usize = 8;

fn options(dir: &std::path::Path) -> EmbeddedOptions {
    EmbeddedOptions {
        path: dir.to_path_buf(),
        max_messages: 10_000,
        retention: Duration::from_secs(3600),
        default_callback: false,
        unhealthy_after: Duration::from_secs(120),
        max_bytes: None,
    }
}

fn temp() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wxpush-head-{}", ulid::Ulid::new()))
}

async fn accept(store: &EmbeddedStore, n: usize) {
    let items = (0..n)
        .map(|i| AcceptItem {
            message: parse_message(&json!({"touser": format!("o{i}"), "template_id": "T"}))
                .expect("valid"),
            idempotency_key: None,
            request_digest: None,
        })
        .collect();
    store.accept(items).await.expect("accepts");
}

fn counts(c: QueueCounts) -> (u64, u64, u64) {
    (c.ready, c.delayed, c.inflight)
}

/// Leases one message at a time until `want` (or 5 s passed).
async fn lease(store: &EmbeddedStore, want: usize) -> Vec<Leased> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while out.len() < want && tokio::time::Instant::now() < deadline {
        out.extend(
            store
                .lease(want - out.len(), Duration::from_secs(1))
                .await
                .expect("leases"),
        );
    }
    out
}

async fn deliver(store: &EmbeddedStore, l: &Leased) {
    let mut done = l.record.clone();
    done.status = Status::Delivered;
    done.finished_at = Some(Timestamp::now());
    done.next_attempt_at = None;
    store.complete(l.slot, done).await.expect("completes");
}

fn key(l: &Leased) -> (u64, u128) {
    (l.slot, l.record.id.as_u128())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_head_is_leased_in_due_order_and_a_far_retry_comes_back() {
    let dir = temp();
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD).expect("opens");
    for _ in 0..6 {
        accept(&store, 10).await;
    }
    assert_eq!(counts(store.counts()), (60, 0, 0));
    assert!(store.shared.index.lock().held() <= 2 * HEAD, "bounded");
    // The first one is retried far beyond the watermark.
    let first = lease(&store, 1).await.remove(0);
    let due = Timestamp::now() + SignedDuration::from_millis(1500);
    let mut retry = first.record.clone();
    retry.status = Status::Retrying;
    retry.attempts = 1;
    retry.next_attempt_at = Some(due);
    store.complete(first.slot, retry).await.expect("completes");
    assert_eq!(counts(store.counts()), (59, 1, 0));
    // The other 59, a few at a time, in due order, with exact counts all along.
    let mut order = vec![key(&first)];
    let mut left: u64 = 59;
    while left > 0 {
        let got = lease(&store, 3.min(left) as usize).await;
        assert!(!got.is_empty(), "{left} left");
        assert_eq!(
            counts(store.counts()),
            (left - got.len() as u64, 1, got.len() as u64)
        );
        for l in &got {
            order.push(key(l));
            deliver(&store, l).await;
        }
        left -= got.len() as u64;
    }
    assert!(order.is_sorted(), "leased in due order: {order:?}");
    assert!(store.shared.index.lock().held() <= 2 * HEAD, "bounded");
    // The retry is found again on disk, and not before it is due.
    let again = lease(&store, 1).await;
    assert_eq!(again.len(), 1);
    assert!(Timestamp::now() >= due, "not before it was due");
    assert_eq!(again[0].record.id, first.record.id);
    assert_eq!(again[0].record.attempts, 1);
    deliver(&store, &again[0]).await;
    assert_eq!(counts(store.counts()), (0, 0, 0));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reloads_a_backlog_larger_than_the_head() {
    let dir = temp();
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD).expect("opens");
    for _ in 0..5 {
        accept(&store, 7).await;
    }
    // Leased when the process stops: due again after the restart.
    let held = lease(&store, 4).await;
    assert_eq!(held.len(), 4);
    store.close().await;
    drop(store);
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD).expect("opens");
    assert_eq!(counts(store.counts()), (35, 0, 0));
    assert!(store.shared.index.lock().held() <= HEAD);
    let all = lease(&store, 35).await;
    assert_eq!(all.len(), 35, "none stranded on disk");
    let order: Vec<_> = all.iter().map(key).collect();
    assert!(order.is_sorted(), "in due order");
    assert!(held.iter().all(|h| order.contains(&key(h))));
    assert_eq!(counts(store.counts()), (0, 0, 35));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_in_retries_beyond_the_watermark_are_due_at_once() {
    let dir = temp();
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD).expect("opens");
    accept(&store, 30).await;
    // Retry all of them an hour later (an outage): most are beyond the watermark.
    let leased = lease(&store, 30).await;
    assert_eq!(leased.len(), 30);
    let later = Timestamp::now() + SignedDuration::from_secs(3600);
    let mut entries = Vec::new();
    for l in &leased {
        let mut retry = l.record.clone();
        retry.status = Status::Retrying;
        retry.attempts = 1;
        retry.next_attempt_at = Some(later);
        store.complete(l.slot, retry).await.expect("completes");
        entries.push((crate::store::due_millis(later), l.record.id));
    }
    assert_eq!(counts(store.counts()), (0, 30, 0));
    assert!(store.shared.index.lock().beyond() > 0);
    let moved = store
        .pull_in(entries, Timestamp::now())
        .await
        .expect("pulls in");
    assert_eq!(moved, 30);
    assert_eq!(counts(store.counts()), (30, 0, 0));
    let again = lease(&store, 30).await;
    assert_eq!(again.len(), 30);
    assert!(
        again
            .iter()
            .all(|l| l.slot == crate::store::due_millis(later))
    );
    assert_eq!(counts(store.counts()), (0, 0, 30));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Accepted records wait in memory for their first lease only up to a byte budget: large
/// template data fills it early, the rest is leased from disk, and every lease carries the
/// record as accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_records_are_kept_in_memory_within_a_byte_budget() {
    let dir = temp();
    let store = EmbeddedStore::open_with_head(&options(&dir), 1024).expect("opens");
    // 80 messages of about 64 KiB of template data each: 5 MiB, beyond the 4 MiB budget.
    let data: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|k| (format!("k{k}"), json!({"value": "x".repeat(1000)})))
        .collect();
    let items = (0..80)
        .map(|i| AcceptItem {
            message: parse_message(
                &json!({"touser": format!("big{i}"), "template_id": "T", "data": data}),
            )
            .expect("valid"),
            idempotency_key: None,
            request_digest: None,
        })
        .collect();
    store.accept(items).await.expect("accepts");
    let (kept, bytes) = {
        let fresh = store.shared.fresh.lock();
        (fresh.records.len(), fresh.bytes)
    };
    assert!(bytes <= super::shared::FRESH_BYTES, "{bytes} bytes kept");
    assert!(kept > 0 && kept < 80, "{kept} of 80 kept in memory");
    let leased = lease(&store, 80).await;
    assert_eq!(leased.len(), 80);
    for l in &leased {
        assert_eq!(
            l.record.message.data.to_map(),
            data,
            "{}",
            l.record.message.touser
        );
        assert_eq!(l.record.status, Status::Queued);
    }
    let left = {
        let fresh = store.shared.fresh.lock();
        (fresh.records.len(), fresh.bytes)
    };
    assert_eq!(left, (0, 0));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
