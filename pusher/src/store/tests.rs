//! The embedded store against its contract: all-or-nothing accepts, idempotency, leases that
//! die with the process, outcomes, dead letters and replay, retention.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;

use super::embedded::EmbeddedOptions;
use super::{AcceptItem, EmbeddedStore, Store, StoreError};
use crate::message::{Status, parse_message};

fn item(n: usize, key: Option<&str>) -> AcceptItem {
    AcceptItem {
        message: parse_message(&json!({"touser": format!("o{n}"), "template_id": "T"}))
            .expect("valid"),
        idempotency_key: key.map(str::to_string),
    }
}

fn open(dir: &std::path::Path, max: u64, retention: Duration) -> EmbeddedStore {
    EmbeddedStore::open(&EmbeddedOptions {
        path: dir.to_path_buf(),
        max_messages: max,
        retention,
        default_callback: false,
    })
    .expect("opens")
}

#[tokio::test]
async fn accept_lease_complete_and_leases_die_with_the_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100, Duration::from_secs(3600));
    let got = store
        .accept((0..5).map(|n| item(n, None)).collect())
        .await
        .expect("accepts");
    assert_eq!(got.len(), 5);
    assert_eq!(store.counts().ready, 5);
    let leased = store.lease(3, Duration::ZERO).await.expect("leases");
    assert_eq!(leased.len(), 3);
    assert_eq!(store.counts().inflight, 3);
    let first = &leased[0];
    assert_eq!(
        store
            .get(first.record.id)
            .await
            .expect("reads")
            .map(|r| r.status),
        Some(Status::Sending)
    );
    let mut done = first.record.clone();
    done.status = Status::Delivered;
    done.msgid = Some(42);
    done.finished_at = Some(Timestamp::now());
    done.next_attempt_at = None;
    store.complete(first.slot, done).await.expect("completes");
    let mut retry = leased[1].record.clone();
    retry.status = Status::Retrying;
    retry.attempts = 1;
    retry.next_attempt_at = Some(Timestamp::now() + jiff::SignedDuration::from_secs(3600));
    store
        .complete(leased[1].slot, retry)
        .await
        .expect("completes");
    let c = store.counts();
    assert_eq!((c.ready, c.delayed, c.inflight), (2, 1, 1));
    store.close().await;
    drop(store);

    // A new process: the leased message is due again, the delivered one is not.
    let store = open(dir.path(), 100, Duration::from_secs(3600));
    let c = store.counts();
    assert_eq!((c.ready, c.delayed, c.inflight), (3, 1, 0));
    let rec = store
        .get(first.record.id)
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!((rec.status, rec.msgid), (Status::Delivered, Some(42)));
    let again = store.lease(10, Duration::ZERO).await.expect("leases");
    assert!(again.iter().any(|l| l.record.id == leased[2].record.id));
    assert_eq!(
        again
            .iter()
            .find(|l| l.record.id == leased[2].record.id)
            .map(|l| l.record.client_msg_id.clone()),
        Some(leased[2].record.client_msg_id.clone())
    );
}

#[tokio::test]
async fn idempotency_keys_answer_the_first_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100, Duration::from_secs(3600));
    let a = store
        .accept(vec![item(1, Some("k1"))])
        .await
        .expect("accepts");
    let b = store
        .accept(vec![item(2, Some("k1"))])
        .await
        .expect("accepts");
    assert_eq!(a[0].id, b[0].id);
    assert!(!a[0].duplicate && b[0].duplicate);
    assert_eq!(store.counts().pending(), 1);
}

#[tokio::test]
async fn a_full_queue_refuses_whole_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 3, Duration::from_secs(3600));
    store
        .accept(vec![item(0, None), item(1, None)])
        .await
        .expect("fits");
    let err = store
        .accept(vec![item(2, None), item(3, None)])
        .await
        .expect_err("does not fit");
    assert!(
        matches!(
            err,
            StoreError::Full {
                pending: 2,
                max: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.counts().pending(), 2, "nothing half-written");
    store.accept(vec![item(4, None)]).await.expect("one fits");
}

#[tokio::test]
async fn dead_letters_list_replay_and_expire_with_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100, Duration::from_millis(400));
    store
        .accept(vec![item(0, Some("dk"))])
        .await
        .expect("accepts");
    let l = store
        .lease(1, Duration::ZERO)
        .await
        .expect("leases")
        .remove(0);
    let mut failed = l.record.clone();
    failed.status = Status::Failed;
    failed.attempts = 1;
    failed.dead_letter = true;
    failed.finished_at = Some(Timestamp::now());
    store.complete(l.slot, failed).await.expect("completes");
    assert_eq!(store.counts().dead, 1);
    let page = store.dead_letters(None, 10).await.expect("lists");
    assert_eq!(page.items.len(), 1);
    let replayed = store.replay(l.record.id).await.expect("replays");
    assert_eq!(
        (replayed.status, replayed.attempts, replayed.replays),
        (Status::Queued, 0, 1)
    );
    assert_eq!(replayed.client_msg_id, l.record.client_msg_id);
    assert_eq!(store.counts().dead, 0);
    assert!(matches!(
        store.replay(l.record.id).await,
        Err(StoreError::NotDeadLetter(_))
    ));
    // Deliver it, then let the retention sweep remove it (and its idempotency key).
    let l = store
        .lease(1, Duration::from_secs(1))
        .await
        .expect("leases")
        .remove(0);
    let mut done = l.record.clone();
    done.status = Status::Delivered;
    done.finished_at = Some(Timestamp::now());
    store.complete(l.slot, done).await.expect("completes");
    let mut gone = false;
    for _ in 0..100 {
        if store.get(l.record.id).await.expect("reads").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "retention removed the finished message");
    let again = store
        .accept(vec![item(0, Some("dk"))])
        .await
        .expect("accepts");
    assert!(!again[0].duplicate, "the key went with the message");
}

#[tokio::test]
async fn lease_wakes_promptly_on_new_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100, Duration::from_secs(3600));
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let got = store
                .lease(1, Duration::from_secs(10))
                .await
                .expect("leases");
            (got.len(), start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.accept(vec![item(0, None)]).await.expect("accepts");
    let (n, waited) = waiter.await.expect("joins");
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
}
