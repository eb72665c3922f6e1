//! The record's stored forms side by side: a store written by the version before the binary
//! record (JSON records, with progress entries and the mark of messages without a
//! `schedule` entry) opens, reads exactly as that version wrote it, delivers, and takes
//! binary records beside its JSON ones.

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::schema::{IDEMPOTENCY, MARK, MESSAGES, PROGRESS, SCHEDULE, UNSCHEDULED_FROM};
use super::stored::FORMAT;
use super::tests::{
    bare_database, closed_empty, counts, deliver, lease, options, reopen_after_crash, temp,
};
use super::{EmbeddedStore, progress};
use crate::message::{MessageId, MessageRecord, Status, parse_message};
use crate::store::{AcceptItem, Store, millis};

/// The first byte of each record in `messages`, by id.
fn formats(store: &EmbeddedStore, ids: &[MessageId]) -> Vec<u8> {
    let txn = store.shared.begin_read().expect("reads");
    let messages = txn.open_table(MESSAGES).expect("table");
    ids.iter()
        .map(|id| {
            messages
                .get(id.as_u128())
                .expect("reads")
                .expect("kept")
                .value()[0]
        })
        .collect()
}

/// `accepted` as delivered by one attempt at `at` (msgid 4242).
fn delivered_at(accepted: &MessageRecord, at: Timestamp) -> MessageRecord {
    let mut delivered = accepted.clone();
    delivered.status = Status::Delivered;
    delivered.attempts = 1;
    delivered.msgid = Some(4242);
    delivered.first_attempt_at = Some(at);
    delivered.budget_from = at;
    delivered.finished_at = Some(at);
    delivered.updated_at = at;
    delivered.next_attempt_at = None;
    delivered
}

/// Writes into a fresh store's file what the version before wrote for these records: each
/// JSON record as accepted in `messages`, the started one's mark and the delivered one's
/// outcome in `progress`, a `schedule` entry for the started one, and for the first record
/// (queued, without a `schedule` entry) its idempotency key and the unscheduled mark.
async fn write_as_before(
    dir: &std::path::Path,
    accepted: &[&MessageRecord],
    (started, started_at): (&MessageRecord, Timestamp),
    delivered: &MessageRecord,
) {
    let queued = accepted[0];
    let db = bare_database(dir).await;
    let txn = db.begin_write().expect("writes");
    {
        let mut messages = txn.open_table(MESSAGES).expect("table");
        for r in accepted {
            let bytes = serde_json::to_vec(r).expect("JSON");
            messages
                .insert(r.id.as_u128(), bytes.as_slice())
                .expect("puts");
        }
        let mut progress_table = txn.open_table(PROGRESS).expect("table");
        let mark = progress::encode_started(started, started_at).expect("encodes");
        progress_table
            .insert(started.id.as_u128(), mark.as_slice())
            .expect("puts");
        let done = progress::encode(delivered).expect("encodes");
        progress_table
            .insert(delivered.id.as_u128(), done.as_slice())
            .expect("puts");
        let mut schedule = txn.open_table(SCHEDULE).expect("table");
        schedule
            .insert((millis(started.accepted_at), started.id.as_u128()), ())
            .expect("puts");
        let mut idem = txn.open_table(IDEMPOTENCY).expect("table");
        idem.insert(
            queued.idempotency_key.as_deref().expect("a key"),
            queued.id.as_u128(),
        )
        .expect("puts");
        let mut marks = txn.open_table(UNSCHEDULED_FROM).expect("table");
        marks.insert(MARK, queued.id.as_u128()).expect("puts");
    }
    txn.commit().expect("commits");
}

/// Written as the version before wrote it, then killed (no clean close): a queued message
/// without a `schedule` entry (only the mark) and with an idempotency key, one whose first
/// attempt started, and a delivered one. This version reads each exactly as written, finds
/// the unscheduled one, answers its key, delivers both pending ones, and writes its own
/// accepts in the binary form beside them; all of it reads the same after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_json_records_opens_reads_the_same_and_delivers() {
    let dir = temp();
    let now = Timestamp::now();
    let message = |to: &str| {
        parse_message(&json!({"touser": to, "template_id": "T", "data": {"k": {"value": "v\"1"}}}))
            .expect("valid")
    };
    // As the version before accepted them: ids made from the accept's millisecond.
    let mut queued = MessageRecord::new(
        MessageId::made_at(millis(now)),
        message("o-queued"),
        Some("key-q".into()),
        now,
    );
    queued.request_digest = Some("digest-q".into());
    let started_at = now + SignedDuration::from_millis(5);
    let started = MessageRecord::new(MessageId::new(), message("o-started"), None, now);
    let accepted_delivered =
        MessageRecord::new(MessageId::new(), message("o-delivered"), None, now);
    let delivered = delivered_at(&accepted_delivered, started_at);
    // The tables as this version creates them, then what the version before wrote.
    write_as_before(
        &dir,
        &[&queued, &started, &accepted_delivered],
        (&started, started_at),
        &delivered,
    )
    .await;

    let store = reopen_after_crash(&dir, super::HEAD, super::writer::MAX_UNSCHEDULED).await;
    assert_eq!(counts(store.counts()), (2, 0, 0), "both pending are found");
    let read = |id| {
        let store = store.clone();
        async move { store.get(id).await.expect("reads").expect("kept") }
    };
    assert_eq!(
        read(queued.id).await,
        queued,
        "a queued JSON record reads as written"
    );
    assert_eq!(read(delivered.id).await, delivered);
    let mut want_started = started.clone();
    want_started.first_attempt_at = Some(started_at);
    want_started.budget_from = started_at;
    want_started.updated_at = started_at;
    assert_eq!(read(started.id).await, want_started);

    // The key answers the JSON record's id, and its digest still guards it.
    let item = |key: &str, digest: &str| AcceptItem {
        message: message("o-again"),
        idempotency_key: Some(key.into()),
        request_digest: Some(digest.into()),
    };
    let again = store
        .accept(vec![item("key-q", "digest-q")])
        .await
        .expect("answers");
    assert_eq!((again[0].id, again[0].duplicate), (queued.id, true));
    assert!(
        store
            .accept(vec![item("key-q", "other-digest")])
            .await
            .is_err(),
        "another body under the key is refused"
    );

    // A new accept is written in the binary form, beside the JSON records.
    let fresh = store
        .accept(vec![item("key-new", "digest-new")])
        .await
        .expect("accepts")[0]
        .id;
    let fresh_read = read(fresh).await;
    assert_eq!(
        (
            fresh_read.status,
            fresh_read.request_digest.as_deref(),
            fresh_read.idempotency_key.as_deref()
        ),
        (Status::Queued, Some("digest-new"), Some("key-new"))
    );
    assert_eq!(
        formats(&store, &[queued.id, started.id, delivered.id, fresh]),
        vec![b'{', b'{', b'{', FORMAT]
    );

    let leased = lease(&store, 3).await;
    assert_eq!(leased.len(), 3);
    for l in &leased {
        if l.record.id == started.id {
            assert_eq!(l.record.first_attempt_at, Some(started_at));
        }
        if l.record.id != fresh {
            assert_eq!(l.record.message.data.as_str(), r#"{"k":{"value":"v\"1"}}"#);
            deliver(&store, l).await;
        }
    }
    // Killed again: everything reads the same from disk alone.
    let fresh_leased = leased
        .into_iter()
        .find(|l| l.record.id == fresh)
        .expect("leased");
    drop((store, fresh_leased));
    let store = reopen_after_crash(&dir, super::HEAD, super::writer::MAX_UNSCHEDULED).await;
    for id in [queued.id, started.id] {
        let got = store.get(id).await.expect("reads").expect("kept");
        assert_eq!(got.status, Status::Delivered, "{id}");
    }
    assert_eq!(
        store.get(fresh).await.expect("reads").expect("kept"),
        fresh_read,
        "the binary record reads the same after a crash"
    );
    let leased = lease(&store, 1).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].record, fresh_read);
    deliver(&store, &leased[0]).await;
    closed_empty(store, &dir).await;
}

/// The way back: after a crash (messages pending without a `schedule` entry, their mark on
/// disk), the rewrite leaves JSON records that the versions before decode as the records
/// accepted, every pending message listed in `schedule` and no mark; this version still
/// reads it all the same, and a second run has nothing left to rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewrite_as_json_leaves_a_store_the_versions_before_read() {
    use redb::ReadableTable;
    let dir = temp();
    let store = EmbeddedStore::open(&options(&dir)).expect("opens");
    let item = |to: &str, key: Option<&str>| AcceptItem {
        message: parse_message(
            &json!({"touser": to, "template_id": "T", "data": {"k": {"value": "v"}}}),
        )
        .expect("valid"),
        idempotency_key: key.map(str::to_owned),
        request_digest: Some("digest".into()),
    };
    let ids: Vec<MessageId> = store
        .accept(vec![
            item("o-1", Some("key-1")),
            item("o-2", None),
            item("o-3", None),
        ])
        .await
        .expect("accepts")
        .into_iter()
        .map(|a| a.id)
        .collect();
    let mut accepted = Vec::new();
    for &id in &ids {
        accepted.push(store.get(id).await.expect("reads").expect("kept"));
    }
    let leased = lease(&store, 2).await;
    assert_eq!(leased.len(), 2);
    deliver(&store, &leased[0]).await;
    store
        .start_attempt(&leased[1], Timestamp::now())
        .await
        .expect("records the start");
    let (delivered, started) = (leased[0].record.id, leased[1].record.id);
    let mark = super::tests::listed(&store).1;
    assert!(mark.is_some(), "pending without an entry");
    drop((store, leased));

    // Killed: the rewrite waits for nothing but the file's release.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let written = loop {
        match EmbeddedStore::write_records_as_json(&dir) {
            Ok(n) => break n,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet released");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("cannot rewrite: {e}"),
        }
    };
    assert_eq!(written, 3);
    {
        // What the versions before read: JSON records as accepted, and the schedule alone.
        let db = redb::Database::create(EmbeddedStore::file_in(&dir)).expect("opens");
        let txn = db.begin_read().expect("reads");
        let messages = txn.open_table(MESSAGES).expect("table");
        for want in &accepted {
            let bytes = messages
                .get(want.id.as_u128())
                .expect("reads")
                .expect("kept");
            let got: MessageRecord = serde_json::from_slice(bytes.value()).expect("JSON");
            assert_eq!(&got, want);
        }
        let marks = txn.open_table(UNSCHEDULED_FROM).expect("table");
        assert!(marks.get(MARK).expect("reads").is_none(), "no mark");
        let mut listed: Vec<u128> = txn
            .open_table(SCHEDULE)
            .expect("table")
            .iter()
            .expect("iter")
            .map(|e| e.expect("entry").0.value().1)
            .collect();
        let mut pending: Vec<u128> = ids
            .iter()
            .filter(|&&id| id != delivered)
            .map(|id| id.as_u128())
            .collect();
        pending.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, pending, "every pending message is listed");
    }
    assert_eq!(
        EmbeddedStore::write_records_as_json(&dir).expect("rewrites"),
        0,
        "nothing left"
    );

    let store = EmbeddedStore::open(&options(&dir)).expect("opens");
    assert_eq!(counts(store.counts()), (2, 0, 0));
    let got = store.get(delivered).await.expect("reads").expect("kept");
    assert_eq!(got.status, Status::Delivered);
    let got = store.get(started).await.expect("reads").expect("kept");
    assert!(got.first_attempt_at.is_some(), "its start is kept");
    assert_eq!(
        formats(&store, &ids),
        vec![b'{', b'{', b'{'],
        "all JSON now"
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
