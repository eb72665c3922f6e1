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

pub(super) fn options(dir: &std::path::Path) -> EmbeddedOptions {
    EmbeddedOptions {
        path: dir.to_path_buf(),
        max_messages: 10_000,
        retention: Duration::from_secs(3600),
        default_callback: false,
        unhealthy_after: Duration::from_secs(120),
        max_bytes: None,
        event_indexes: true,
    }
}

pub(super) fn temp() -> std::path::PathBuf {
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

pub(super) fn counts(c: QueueCounts) -> (u64, u64, u64) {
    (c.ready, c.delayed, c.inflight)
}

/// Leases one message at a time until `want` (or 5 s passed).
pub(super) async fn lease(store: &EmbeddedStore, want: usize) -> Vec<Leased> {
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

pub(super) async fn deliver(store: &EmbeddedStore, l: &Leased) {
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
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD, 0).expect("opens");
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
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD, 0).expect("opens");
    for _ in 0..5 {
        accept(&store, 7).await;
    }
    // Leased when the process stops: due again after the restart.
    let held = lease(&store, 4).await;
    assert_eq!(held.len(), 4);
    store.close().await;
    drop(store);
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD, 0).expect("opens");
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
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD, 0).expect("opens");
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
    let store = EmbeddedStore::open_with_head(&options(&dir), 1024, super::writer::MAX_UNSCHEDULED)
        .expect("opens");
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

/// The "attempt started" mark is a small progress entry, not a rewrite of the record: the
/// record on disk stays as accepted, a read shows the start, a restart leases the message with
/// it, and the outcome's progress takes the mark's place (the record still as accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_started_mark_is_an_entry_of_its_own() {
    use super::schema::{MESSAGES, PROGRESS};
    use redb::ReadableTableMetadata;
    let dir = temp();
    let store = EmbeddedStore::open(&options(&dir)).expect("opens");
    accept(&store, 1).await;
    let leased = lease(&store, 1).await;
    let id = leased[0].record.id;
    let stored = |store: &EmbeddedStore| {
        let txn = store.shared.begin_read().expect("reads");
        let messages = txn.open_table(MESSAGES).expect("table");
        let bytes = messages
            .get(id.as_u128())
            .expect("reads")
            .expect("kept")
            .value()
            .to_vec();
        let progress = txn.open_table(PROGRESS).expect("table").len().expect("len");
        (bytes, progress)
    };
    let (before, marks) = stored(&store);
    assert_eq!(marks, 0);
    let at = Timestamp::now();
    store
        .start_attempt(&leased[0], at)
        .await
        .expect("records the start");
    let (after, marks) = stored(&store);
    assert_eq!(after, before, "the record is not rewritten");
    assert_eq!(marks, 1);
    let rec = store.get(id).await.expect("reads").expect("kept");
    assert_eq!((rec.first_attempt_at, rec.budget_from), (Some(at), at));

    // A new process leases it with its start (its outcome is unknown).
    store.close().await;
    drop((store, leased));
    let store = EmbeddedStore::open(&options(&dir)).expect("opens again");
    let again = lease(&store, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].record.first_attempt_at, again[0].record.attempts),
        (Some(at), 0)
    );
    deliver(&store, &again[0]).await;
    let (record, entries) = stored(&store);
    assert_eq!(entries, 1, "the outcome's progress took the mark's place");
    assert_eq!(
        record, before,
        "the outcome is written as progress, not a new record"
    );
    let rec = store.get(id).await.expect("reads").expect("kept");
    assert_eq!(
        (rec.status, rec.first_attempt_at),
        (Status::Delivered, Some(at))
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written before the `started` table existed (the "attempt started" time inside the
/// record) opens, keeps that time, and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_before_the_started_table_opens_and_delivers() {
    use super::schema::{
        AWAITING, CALLBACKS, DEAD, EVENTS_SEEN, FINISHED, IDEMPOTENCY, MESSAGES, MSGIDS, PROBE,
        SCHEDULE,
    };
    use crate::message::{MessageId, MessageRecord};
    let dir = temp();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let at = Timestamp::now() - SignedDuration::from_secs(30);
    let message = |to: &str| {
        parse_message(&json!({"touser": to, "template_id": "T", "data": {"k": {"value": "v"}}}))
            .expect("valid")
    };
    // One message whose first attempt started (written into its record, as before), and one
    // never attempted.
    let mut started = MessageRecord::new(MessageId::new(), message("o-started"), None, at);
    started.first_attempt_at = Some(at);
    let queued = MessageRecord::new(MessageId::new(), message("o-queued"), None, at);
    {
        let db = redb::Database::create(EmbeddedStore::file_in(&dir)).expect("creates");
        let txn = db.begin_write().expect("writes");
        {
            let mut messages = txn.open_table(MESSAGES).expect("table");
            let mut schedule = txn.open_table(SCHEDULE).expect("table");
            for r in [&started, &queued] {
                let bytes = serde_json::to_vec(r).expect("JSON");
                messages
                    .insert(r.id.as_u128(), bytes.as_slice())
                    .expect("puts");
                schedule
                    .insert((crate::store::millis(at), r.id.as_u128()), ())
                    .expect("puts");
            }
            txn.open_table(FINISHED).expect("table");
            txn.open_table(DEAD).expect("table");
            txn.open_table(IDEMPOTENCY).expect("table");
            txn.open_table(MSGIDS).expect("table");
            txn.open_table(AWAITING).expect("table");
            txn.open_table(EVENTS_SEEN).expect("table");
            txn.open_table(CALLBACKS).expect("table");
            txn.open_table(PROBE).expect("table");
        }
        txn.commit().expect("commits");
    }
    let store = EmbeddedStore::open(&options(&dir)).expect("opens the old store");
    assert_eq!(counts(store.counts()), (2, 0, 0));
    let leased = lease(&store, 2).await;
    assert_eq!(leased.len(), 2);
    for l in &leased {
        let want = if l.record.id == started.id {
            Some(at)
        } else {
            None
        };
        assert_eq!(
            l.record.first_attempt_at, want,
            "{}",
            l.record.message.touser
        );
        assert_eq!(l.record.message.data.as_str(), r#"{"k":{"value":"v"}}"#);
        deliver(&store, l).await;
    }
    assert_eq!(counts(store.counts()), (0, 0, 0));
    for r in [&started, &queued] {
        let rec = store.get(r.id).await.expect("reads").expect("kept");
        assert_eq!(rec.status, Status::Delivered);
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written by the version before the `progress` table (outcomes rewrote the whole
/// JSON record; the "attempt started" mark in `started`) opens: status reads and the dead
/// letters show its finished messages, an event finds its delivered one by `msgid`, a replay
/// and a pending message deliver, and all of it reads the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_before_the_progress_table_opens_reads_and_delivers() {
    use super::schema::{
        AWAITING, CALLBACKS, DEAD, EVENTS_SEEN, FINISHED, IDEMPOTENCY, MESSAGES, MSGIDS, PROBE,
        SCHEDULE, STARTED,
    };
    use crate::message::{ErrorKind, MessageId, MessageRecord, SendError};
    use crate::store::{DeliveryEvent, EventOutcome, millis};
    let dir = temp();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let at = Timestamp::now() - SignedDuration::from_secs(30);
    let record = |to: &str| {
        let m =
            parse_message(&json!({"touser": to, "template_id": "T", "data": {}})).expect("valid");
        MessageRecord::new(MessageId::new(), m, None, at)
    };
    let mut delivered = record("o-delivered");
    delivered.status = Status::Delivered;
    delivered.attempts = 1;
    delivered.msgid = Some(777);
    delivered.first_attempt_at = Some(at);
    delivered.finished_at = Some(at);
    delivered.next_attempt_at = None;
    let mut failed = record("o-failed");
    failed.status = Status::Failed;
    failed.attempts = 1;
    failed.dead_letter = true;
    failed.finished_at = Some(at);
    failed.next_attempt_at = None;
    failed.last_error = Some(SendError::new(ErrorKind::Errcode, "template gone"));
    let queued = record("o-queued");
    {
        let db = redb::Database::create(EmbeddedStore::file_in(&dir)).expect("creates");
        let txn = db.begin_write().expect("writes");
        {
            let mut messages = txn.open_table(MESSAGES).expect("table");
            for r in [&delivered, &failed, &queued] {
                let bytes = serde_json::to_vec(r).expect("JSON");
                let id = r.id.as_u128();
                messages.insert(id, bytes.as_slice()).expect("puts");
            }
            let (d, f, q) = (
                delivered.id.as_u128(),
                failed.id.as_u128(),
                queued.id.as_u128(),
            );
            let mut finished = txn.open_table(FINISHED).expect("table");
            finished.insert((millis(at), d), ()).expect("puts");
            finished.insert((millis(at), f), ()).expect("puts");
            txn.open_table(DEAD)
                .expect("table")
                .insert(f, ())
                .expect("puts");
            let mut msgids = txn.open_table(MSGIDS).expect("table");
            msgids.insert(777, d).expect("puts");
            let mut awaiting = txn.open_table(AWAITING).expect("table");
            awaiting
                .insert(("o-delivered", millis(at), d), ())
                .expect("puts");
            let mut schedule = txn.open_table(SCHEDULE).expect("table");
            schedule.insert((millis(at), q), ()).expect("puts");
            let mut started = txn.open_table(STARTED).expect("table");
            started.insert(q, at.as_nanosecond()).expect("puts");
            txn.open_table(IDEMPOTENCY).expect("table");
            txn.open_table(EVENTS_SEEN).expect("table");
            txn.open_table(CALLBACKS).expect("table");
            txn.open_table(PROBE).expect("table");
        }
        txn.commit().expect("commits");
    }
    let store = EmbeddedStore::open(&options(&dir)).expect("opens the old store");
    assert_eq!(counts(store.counts()), (1, 0, 0));
    let marks = {
        use redb::ReadableTableMetadata;
        let txn = store.shared.begin_read().expect("reads");
        txn.open_table(STARTED).expect("table").len().expect("len")
    };
    assert_eq!(marks, 0, "the start mark moved into progress");
    let got = store.get(delivered.id).await.expect("reads").expect("kept");
    assert_eq!((got.status, got.msgid), (Status::Delivered, Some(777)));
    let dead = store.dead_letters(None, 10).await.expect("lists");
    assert_eq!(dead.items.len(), 1);
    assert_eq!(dead.items[0].id, failed.id);
    assert_eq!(dead.items[0].last_error, failed.last_error);

    let event = DeliveryEvent {
        openid: "o-delivered".into(),
        create_time: 1,
        msgid: 777,
        status: "success".into(),
        received_at: Timestamp::now(),
    };
    let outcome = store.record_event(event, true).await.expect("records");
    assert!(
        matches!(outcome, EventOutcome::Applied { id, status: Status::Confirmed } if id == delivered.id),
        "{outcome:?}"
    );
    let replayed = store.replay(failed.id).await.expect("replays");
    assert_eq!((replayed.status, replayed.replays), (Status::Queued, 1));
    let leased = lease(&store, 2).await;
    assert_eq!(leased.len(), 2);
    for l in &leased {
        let start = (l.record.id == queued.id).then_some(at);
        assert_eq!(
            l.record.first_attempt_at, start,
            "{}",
            l.record.message.touser
        );
        deliver(&store, l).await;
    }
    store.close().await;
    drop((store, leased));

    let store = EmbeddedStore::open(&options(&dir)).expect("opens again");
    assert_eq!(counts(store.counts()), (0, 0, 0));
    let want = [
        (delivered.id, Status::Confirmed, 0),
        (failed.id, Status::Delivered, 1),
        (queued.id, Status::Delivered, 0),
    ];
    for (id, status, replays) in want {
        let got = store.get(id).await.expect("reads").expect("kept");
        assert_eq!((got.status, got.replays), (status, replays), "{id}");
    }
    let got = store.get(delivered.id).await.expect("reads").expect("kept");
    assert_eq!(got.events.len(), 1);
    assert!(
        store
            .dead_letters(None, 10)
            .await
            .expect("lists")
            .items
            .is_empty()
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without `events.token` (`event_indexes: false`) a delivered message gets no events indexes
/// (`msgids`, `awaiting_event`). Reopened with a token, its events do not match, and messages
/// delivered from then on are matched by `msgid` and by the `MsgID` 0 fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_indexes_are_written_only_when_the_channel_takes_events() {
    use super::schema::{AWAITING, MSGIDS};
    use crate::store::{DeliveryEvent, EventOutcome, MatchedBy};
    use redb::ReadableTableMetadata;
    let dir = temp();
    let indexes = |store: &EmbeddedStore| {
        let txn = store.shared.begin_read().expect("reads");
        let msgids = txn.open_table(MSGIDS).expect("table").len().expect("len");
        let awaiting = txn.open_table(AWAITING).expect("table").len().expect("len");
        (msgids, awaiting)
    };
    let deliver_with = |store: &EmbeddedStore, l: &Leased, msgid: i64| {
        let mut done = l.record.clone();
        done.status = Status::Delivered;
        done.msgid = Some(msgid);
        done.finished_at = Some(Timestamp::now());
        done.next_attempt_at = None;
        let store = store.clone();
        let slot = l.slot;
        async move { store.complete(slot, done).await.expect("completes") }
    };
    // Records an event of `openid` with `msgid` and returns how it was matched.
    let record = |store: &EmbeddedStore, openid: &str, msgid: i64| {
        let store = store.clone();
        let event = DeliveryEvent {
            openid: openid.into(),
            create_time: 1,
            msgid,
            status: "success".into(),
            received_at: Timestamp::now(),
        };
        async move { store.record_event(event, true).await.expect("records") }
    };

    let store = EmbeddedStore::open(&EmbeddedOptions {
        event_indexes: false,
        ..options(&dir)
    })
    .expect("opens");
    accept(&store, 1).await;
    let before = lease(&store, 1).await;
    assert_eq!(before.len(), 1);
    deliver_with(&store, &before[0], 100).await;
    assert_eq!(indexes(&store), (0, 0));
    let got = store
        .get(before[0].record.id)
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!((got.status, got.msgid), (Status::Delivered, Some(100)));
    store.close().await;
    drop(store);

    let store = EmbeddedStore::open(&options(&dir)).expect("opens with events");
    let old = before[0].record.message.touser.clone();
    let outcome = record(&store, &old, 100).await;
    assert_eq!(outcome, EventOutcome::Unmatched);
    let outcome = record(&store, &old, 0).await;
    assert_eq!(outcome, EventOutcome::Unmatched);
    accept(&store, 2).await;
    let after = lease(&store, 2).await;
    assert_eq!(after.len(), 2);
    deliver_with(&store, &after[0], 200).await;
    deliver_with(&store, &after[1], 201).await;
    assert_eq!(indexes(&store), (2, 2));
    let by_msgid = record(&store, &after[0].record.message.touser, 200).await;
    assert!(
        matches!(by_msgid, EventOutcome::Applied { id, .. } if id == after[0].record.id),
        "{by_msgid:?}"
    );
    let by_openid = record(&store, &after[1].record.message.touser, 0).await;
    assert!(
        matches!(by_openid, EventOutcome::Applied { id, .. } if id == after[1].record.id),
        "{by_openid:?}"
    );
    let got = store
        .get(after[1].record.id)
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!(got.events[0].matched_by, MatchedBy::OpenidFallback.as_str());
    let got = store
        .get(before[0].record.id)
        .await
        .expect("reads")
        .expect("kept");
    assert!(got.events.is_empty());
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retention walks `progress`: a delivered message and a dead letter are removed no earlier
/// than the retention after they finished, without a `finished` entry; a message whose attempt
/// started but did not end stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_finished_messages_by_their_progress() {
    use super::schema::FINISHED;
    use redb::ReadableTableMetadata;
    let dir = temp();
    let retention = Duration::from_secs(2);
    let store = EmbeddedStore::open(&EmbeddedOptions {
        retention,
        ..options(&dir)
    })
    .expect("opens");
    accept(&store, 3).await;
    let leased = lease(&store, 3).await;
    assert_eq!(leased.len(), 3);
    for l in &leased {
        store
            .start_attempt(l, Timestamp::now())
            .await
            .expect("records the start");
    }
    deliver(&store, &leased[0]).await;
    let mut dead = leased[1].record.clone();
    dead.status = Status::Failed;
    dead.dead_letter = true;
    dead.finished_at = Some(Timestamp::now());
    dead.next_attempt_at = None;
    store
        .complete(leased[1].slot, dead)
        .await
        .expect("completes");
    let finished = {
        let txn = store.shared.begin_read().expect("reads");
        txn.open_table(FINISHED).expect("table").len().expect("len")
    };
    assert_eq!(finished, 0, "no `finished` entry is written");
    let mut ends = Vec::new();
    for l in &leased[..2] {
        let got = store.get(l.record.id).await.expect("reads").expect("kept");
        ends.push((l.record.id, got.finished_at.expect("finished")));
    }
    assert_eq!(store.counts().dead, 1);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut left = ends.clone();
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for (id, finished_at) in left {
            if store.get(id).await.expect("reads").is_some() {
                still.push((id, finished_at));
            } else {
                let kept = Timestamp::now().duration_since(finished_at);
                assert!(
                    kept >= jiff::SignedDuration::try_from(retention).expect("fits"),
                    "{id} removed {kept:?} after it finished"
                );
            }
        }
        left = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "not removed: {left:?}");
    assert_eq!(store.counts().dead, 0);
    assert!(
        store
            .dead_letters(None, 10)
            .await
            .expect("lists")
            .items
            .is_empty()
    );
    let started = store.get(leased[2].record.id).await.expect("reads");
    assert!(started.is_some(), "an unfinished message stays");
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written by the build before retention walked `progress` (finished messages listed
/// in `finished`, with the events indexes) opens: a recent delivered message reads and takes
/// its event by `msgid`, a queued one delivers, and the message finished longer ago than the
/// retention is swept with its entries, while the recent one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lists_finished_messages_opens_delivers_and_is_swept() {
    use super::schema::{AWAITING, FINISHED, MESSAGES, MSGIDS, PROGRESS, SCHEDULE};
    use crate::message::{MessageId, MessageRecord};
    use crate::store::{DeliveryEvent, EventOutcome, millis};
    let dir = temp();
    let now = Timestamp::now();
    let long_ago = now - SignedDuration::from_secs(60);
    let delivered = |to: &str, at: Timestamp, msgid: i64| {
        let m =
            parse_message(&json!({"touser": to, "template_id": "T", "data": {}})).expect("valid");
        let mut r = MessageRecord::new(MessageId::new(), m, None, at);
        r.status = Status::Delivered;
        r.attempts = 1;
        r.msgid = Some(msgid);
        r.first_attempt_at = Some(at);
        r.finished_at = Some(at);
        r.next_attempt_at = None;
        r
    };
    let old = delivered("o-old", long_ago, 555);
    let recent = delivered("o-recent", now, 556);
    let m = parse_message(&json!({"touser": "o-queued", "template_id": "T"})).expect("valid");
    let queued = MessageRecord::new(MessageId::new(), m, None, now);
    {
        // Create the tables as the store does, then write what the build before wrote.
        let store = EmbeddedStore::open(&options(&dir)).expect("opens");
        store.close().await;
        drop(store);
        let db = redb::Database::create(EmbeddedStore::file_in(&dir)).expect("opens");
        let txn = db.begin_write().expect("writes");
        {
            let mut messages = txn.open_table(MESSAGES).expect("table");
            let mut progress = txn.open_table(PROGRESS).expect("table");
            let mut finished = txn.open_table(FINISHED).expect("table");
            let mut msgids = txn.open_table(MSGIDS).expect("table");
            let mut awaiting = txn.open_table(AWAITING).expect("table");
            for r in [&old, &recent] {
                let id = r.id.as_u128();
                let at = millis(r.finished_at.expect("finished"));
                let mut accepted = r.clone();
                accepted.status = Status::Queued;
                let bytes = serde_json::to_vec(&accepted).expect("JSON");
                messages.insert(id, bytes.as_slice()).expect("puts");
                let p = super::progress::encode(r).expect("encodes");
                progress.insert(id, p.as_slice()).expect("puts");
                finished.insert((at, id), ()).expect("puts");
                msgids.insert(r.msgid.expect("msgid"), id).expect("puts");
                let openid = r.message.touser.as_str();
                awaiting.insert((openid, at, id), ()).expect("puts");
            }
            let bytes = serde_json::to_vec(&queued).expect("JSON");
            let q = queued.id.as_u128();
            messages.insert(q, bytes.as_slice()).expect("puts");
            let mut schedule = txn.open_table(SCHEDULE).expect("table");
            schedule.insert((millis(now), q), ()).expect("puts");
        }
        txn.commit().expect("commits");
    }
    let store = EmbeddedStore::open(&EmbeddedOptions {
        retention: Duration::from_secs(30),
        ..options(&dir)
    })
    .expect("opens the old store");
    let got = store.get(recent.id).await.expect("reads").expect("kept");
    assert_eq!((got.status, got.msgid), (Status::Delivered, Some(556)));
    let event = DeliveryEvent {
        openid: "o-recent".into(),
        create_time: 1,
        msgid: 556,
        status: "success".into(),
        received_at: Timestamp::now(),
    };
    let outcome = store.record_event(event, true).await.expect("records");
    assert!(
        matches!(outcome, EventOutcome::Applied { id, status: Status::Confirmed } if id == recent.id),
        "{outcome:?}"
    );
    let leased = lease(&store, 1).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].record.id, queued.id);
    deliver(&store, &leased[0]).await;

    let listed = |store: &EmbeddedStore| {
        use redb::ReadableTableMetadata;
        let txn = store.shared.begin_read().expect("reads");
        txn.open_table(FINISHED).expect("table").len().expect("len")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.get(old.id).await.expect("reads").is_some()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.get(old.id).await.expect("reads").is_none(), "swept");
    assert_eq!(listed(&store), 1, "the recent message is still listed");
    let txn = store.shared.begin_read().expect("reads");
    let msgids = txn.open_table(MSGIDS).expect("table");
    assert!(
        msgids.get(555).expect("reads").is_none(),
        "the old msgid went"
    );
    assert!(msgids.get(556).expect("reads").is_some());
    drop((msgids, txn));
    let got = store.get(recent.id).await.expect("reads").expect("kept");
    assert_eq!(got.status, Status::Confirmed);
    let got = store.get(queued.id).await.expect("reads").expect("kept");
    assert_eq!(got.status, Status::Delivered);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `schedule` entries and the mark of messages pending without one, as on disk.
pub(super) fn listed(store: &EmbeddedStore) -> (Vec<(u64, u128)>, Option<u128>) {
    use super::schema::{MARK, SCHEDULE, UNSCHEDULED_FROM};
    use redb::ReadableTable;
    let txn = store.shared.begin_read().expect("reads");
    let schedule: Vec<(u64, u128)> = txn
        .open_table(SCHEDULE)
        .expect("table")
        .iter()
        .expect("iter")
        .map(|e| e.expect("entry").0.value())
        .collect();
    let mark = txn
        .open_table(UNSCHEDULED_FROM)
        .expect("table")
        .get(MARK)
        .expect("reads")
        .map(|v| v.value());
    (schedule, mark)
}

/// Opens the store again once the writer of a dropped handle let go of the file (a process
/// killed without a close).
pub(super) async fn reopen_after_crash(
    dir: &std::path::Path,
    head: usize,
    unscheduled: usize,
) -> EmbeddedStore {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match EmbeddedStore::open_with_head(&options(dir), head, unscheduled) {
            Ok(store) => return store,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet released");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("cannot open again: {e}"),
        }
    }
}

/// Messages accepted while the schedule is in memory get no `schedule` entry, only a mark;
/// after a crash (no close) every pending one of them is found again exactly once: never
/// leased, leased with its start written, and retried (listed by its outcome), while the
/// delivered one stays delivered. Afterwards the mark is gone and every entry is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_finds_the_messages_accepted_without_a_schedule_entry() {
    let dir = temp();
    let store = EmbeddedStore::open(&options(&dir)).expect("opens");
    accept(&store, 5).await;
    let (schedule, mark) = listed(&store);
    assert!(schedule.is_empty(), "no entries written: {schedule:?}");
    let leased = lease(&store, 3).await;
    assert_eq!(leased.len(), 3);
    let lowest = leased.iter().map(|l| l.record.id.as_u128()).min();
    assert!(
        mark.is_some() && mark <= lowest,
        "the mark is at or below every id"
    );
    let at = Timestamp::now();
    store.start_attempt(&leased[0], at).await.expect("starts");
    deliver(&store, &leased[1]).await;
    let due = Timestamp::now() + SignedDuration::from_secs(3600);
    let mut retry = leased[2].record.clone();
    retry.status = Status::Retrying;
    retry.attempts = 1;
    retry.next_attempt_at = Some(due);
    store
        .complete(leased[2].slot, retry)
        .await
        .expect("completes");
    let (schedule, _) = listed(&store);
    assert_eq!(
        schedule,
        vec![(crate::store::due_millis(due), key(&leased[2]).1)]
    );
    assert_eq!(counts(store.counts()), (2, 1, 1));

    // Killed: no close, so nothing more is written.
    drop(store);
    let store = reopen_after_crash(
        &dir,
        crate::store::index::HEAD,
        super::writer::MAX_UNSCHEDULED,
    )
    .await;
    assert_eq!(counts(store.counts()), (3, 1, 0));
    let (schedule, mark) = listed(&store);
    assert_eq!(mark, None);
    assert_eq!(
        schedule.len(),
        4,
        "every pending message is listed: {schedule:?}"
    );
    let again = lease(&store, 3).await;
    assert_eq!(again.len(), 3);
    let mut ids: Vec<u128> = again.iter().map(|l| l.record.id.as_u128()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each once");
    assert!(
        !ids.contains(&key(&leased[1]).1),
        "the delivered one stays delivered"
    );
    assert!(
        !ids.contains(&key(&leased[2]).1),
        "the retry waits for its time"
    );
    let started = again
        .iter()
        .find(|l| l.record.id == leased[0].record.id)
        .expect("the started one is due again");
    assert_eq!(started.record.first_attempt_at, Some(at));
    for l in &again {
        deliver(&store, l).await;
    }
    assert_eq!(counts(store.counts()), (0, 1, 0));
    let (schedule, _) = listed(&store);
    assert_eq!(schedule.len(), 1, "only the retry is left: {schedule:?}");
    let rec = store
        .get(leased[1].record.id)
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!(rec.status, Status::Delivered);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A clean close lists every message pending without an entry and removes the mark, so that
/// the version before (which knows no mark) reads the store whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_lists_every_pending_message() {
    let dir = temp();
    let store = EmbeddedStore::open(&options(&dir)).expect("opens");
    accept(&store, 4).await;
    let held = lease(&store, 1).await;
    assert_eq!(held.len(), 1);
    assert!(listed(&store).0.is_empty());
    store.close().await;
    let txn_store = {
        drop(store);
        reopen_after_crash(&dir, crate::store::index::HEAD, 0).await
    };
    let (schedule, mark) = listed(&txn_store);
    assert_eq!(mark, None);
    assert_eq!(schedule.len(), 4, "{schedule:?}");
    assert!(
        schedule.contains(&key(&held[0])),
        "at the slot its lease holds"
    );
    txn_store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a small head and a small allowance: accepts beyond the allowance write their entries
/// and the head trims those only; the whole lot is leased in due order, each once, with exact
/// counts, also across a crash half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_an_entry_and_a_backlog_beyond_the_head_lease_in_order() {
    let dir = temp();
    let store = EmbeddedStore::open_with_head(&options(&dir), HEAD, 12).expect("opens");
    accept(&store, 10).await;
    for _ in 0..4 {
        accept(&store, 10).await;
    }
    assert_eq!(counts(store.counts()), (50, 0, 0));
    let (schedule, mark) = listed(&store);
    assert_eq!(schedule.len(), 40, "only the first 10 go without an entry");
    assert!(mark.is_some());
    {
        let index = store.shared.index.lock();
        assert_eq!(index.unscheduled(), 10);
        assert!(index.held() <= 2 * HEAD + 10, "bounded: {}", index.held());
    }
    let mut order = Vec::new();
    for l in lease(&store, 20).await {
        order.push(key(&l));
        deliver(&store, &l).await;
    }
    assert_eq!(counts(store.counts()), (30, 0, 0));
    drop(store);
    let store = reopen_after_crash(&dir, HEAD, 12).await;
    assert_eq!(counts(store.counts()), (30, 0, 0));
    let mut left = 30;
    while left > 0 {
        let got = lease(&store, 3).await;
        assert!(!got.is_empty(), "{left} left");
        for l in &got {
            order.push(key(l));
            deliver(&store, l).await;
        }
        left -= got.len();
    }
    assert_eq!(order.len(), 50);
    assert!(order.is_sorted(), "leased in due order: {order:?}");
    assert_eq!(counts(store.counts()), (0, 0, 0));
    assert_eq!(listed(&store), (Vec::new(), None));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Healing reloads the schedule from disk: the messages held without an entry (one of them
/// leased) get their entries at the slots their leases hold, so each outcome after it removes
/// its own, and nothing is left behind or leased twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healing_lists_the_messages_held_without_an_entry() {
    let dir = temp();
    let store = EmbeddedStore::open(&options(&dir)).expect("opens");
    accept(&store, 3).await;
    let first = lease(&store, 1).await;
    assert_eq!(first.len(), 1);
    assert_eq!(store.shared.index.lock().unscheduled(), 3);
    super::writer::reload(&store.shared).expect("reloads");
    assert_eq!(store.shared.index.lock().unscheduled(), 0);
    let (schedule, mark) = listed(&store);
    assert_eq!(mark, None);
    assert_eq!(schedule.len(), 3, "{schedule:?}");
    assert!(
        schedule.contains(&key(&first[0])),
        "at the slot the lease holds"
    );
    assert_eq!(counts(store.counts()), (2, 0, 1));
    deliver(&store, &first[0]).await;
    let rest = lease(&store, 2).await;
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|l| l.record.id != first[0].record.id));
    for l in &rest {
        deliver(&store, l).await;
    }
    assert_eq!(counts(store.counts()), (0, 0, 0));
    assert_eq!(listed(&store), (Vec::new(), None));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
