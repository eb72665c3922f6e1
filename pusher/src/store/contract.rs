//! The store contract: one behaviour suite that every [`Store`] backend must pass unchanged.
//!
//! Each check is a plain async function generic over a [`Backend`], which knows how to open a
//! fresh, empty store of its kind, how to open it again "as a new process" (the old one's leases
//! die with it), how to read exact counts, and how long a dead process's leases take to become
//! due again. The embedded store runs the suite in its unit tests; the Redis store runs it in
//! the end-to-end tests against a real `redis-server`. A new backend passes the same functions,
//! so the API, the dispatcher, the events receiver and the callback worker can rely on one
//! behaviour whatever the queue.
//!
//! Compiled for the crate's own tests and with the `contract` feature (for other crates'
//! tests); never part of a release build.
//!
//! **Why one file of about 1,200 lines.** It is one list of the store's promises, read
//! and extended as a whole: each check is a short, independent function, and the
//! `store_contract!` macro at the end names them all, so a backend cannot skip one. Split by
//! topic, a new check could be written in one file and forgotten in the macro's list.
#![allow(clippy::missing_panics_doc)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::embedded::EmbeddedOptions;
use super::{
    AcceptItem, DeliveryEvent, EmbeddedStore, EventOutcome, Leased, PendingCallback, QueueCounts,
    Store, StoreError, millis,
};
use crate::message::{MessageId, Status, parse_message};

/// Settings a check opens its store with.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Pending messages at most.
    pub max_messages: u64,
    /// How long finished messages are kept.
    pub retention: Duration,
    /// Whether the channel has a default callback URL.
    pub default_callback: bool,
}

impl Options {
    fn new(max_messages: u64, retention: Duration) -> Self {
        Self {
            max_messages,
            retention,
            default_callback: false,
        }
    }
}

/// A kind of store under test. One backend value is one isolated store (a folder, a key
/// prefix).
pub trait Backend: Sync {
    /// The store type.
    type S: Store + Clone;
    /// Opens the store (empty on the first call).
    fn open(&self, options: Options) -> impl Future<Output = Self::S> + Send;
    /// Closes `old` as a process that stops would, and opens the same store as a new process.
    fn reopen(&self, options: Options, old: Self::S) -> impl Future<Output = Self::S> + Send;
    /// Exact counts now (a backend may cache [`Store::counts`]).
    fn counts(&self, store: &Self::S) -> impl Future<Output = QueueCounts> + Send;
    /// How long after a process died its leased messages are due again.
    fn takeover(&self) -> Duration;
}

/// The embedded store in a folder of its own, removed when the backend is dropped.
#[derive(Debug)]
pub struct Embedded(pub PathBuf);

impl Embedded {
    /// A new folder under the system's temporary folder.
    pub fn temp() -> Self {
        Self(std::env::temp_dir().join(format!("wxpush-contract-{}", ulid::Ulid::new())))
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Backend for Embedded {
    type S = EmbeddedStore;

    async fn open(&self, o: Options) -> EmbeddedStore {
        EmbeddedStore::open(&EmbeddedOptions {
            unhealthy_after: Duration::from_secs(120),
            path: self.0.clone(),
            max_messages: o.max_messages,
            retention: o.retention,
            default_callback: o.default_callback,
            max_bytes: None,
            event_indexes: true,
        })
        .expect("opens")
    }

    async fn reopen(&self, o: Options, old: EmbeddedStore) -> EmbeddedStore {
        old.close().await;
        drop(old);
        self.open(o).await
    }

    async fn counts(&self, store: &EmbeddedStore) -> QueueCounts {
        store.counts()
    }

    fn takeover(&self) -> Duration {
        Duration::ZERO
    }
}

fn item(n: usize, key: Option<&str>) -> AcceptItem {
    AcceptItem {
        message: parse_message(&json!({"touser": format!("o{n}"), "template_id": "T"}))
            .expect("valid"),
        idempotency_key: key.map(str::to_string),
        request_digest: None,
    }
}

/// Leases until `want` messages were leased or `wait` passed.
async fn lease_n<S: Store>(store: &S, want: usize, wait: Duration) -> Vec<super::Leased> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(store.lease(want - out.len(), left).await.expect("leases"));
    }
    out
}

/// Accepts, leases, completes; leases die with the process (the leased message is due again
/// for the next process, with the same `client_msg_id`), final states survive it.
pub async fn accept_lease_complete_and_leases_die_with_the_process<B: Backend>(b: &B) {
    let o = Options::new(100, Duration::from_secs(3600));
    let store = b.open(o).await;
    let got = store
        .accept((0..5).map(|n| item(n, None)).collect())
        .await
        .expect("accepts");
    assert_eq!(got.len(), 5);
    assert_eq!(b.counts(&store).await.ready, 5);
    let leased = lease_n(&store, 3, Duration::from_secs(2)).await;
    assert_eq!(leased.len(), 3);
    assert_eq!(b.counts(&store).await.inflight, 3);
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
    let c = b.counts(&store).await;
    assert_eq!((c.ready, c.delayed, c.inflight), (2, 1, 1));

    // A new process: the leased message is due again, the delivered one is not.
    let store = b.reopen(o, store).await;
    let c = b.counts(&store).await;
    assert_eq!((c.pending(), c.delayed), (4, 1));
    if b.takeover().is_zero() {
        assert_eq!((c.ready, c.inflight), (3, 0));
    }
    let rec = store
        .get(first.record.id)
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!((rec.status, rec.msgid), (Status::Delivered, Some(42)));
    let again = lease_n(&store, 3, b.takeover() * 3 + Duration::from_secs(2)).await;
    assert_eq!(again.len(), 3, "the two queued and the one leased before");
    assert_eq!(
        again
            .iter()
            .find(|l| l.record.id == leased[2].record.id)
            .map(|l| l.record.client_msg_id.clone()),
        Some(leased[2].record.client_msg_id.clone())
    );
    store.close().await;
}

/// Outcomes written together ([`Store::complete_many`]) are answered one by one, in order, and
/// each lands as if written alone: final ones leave the queue, a retry waits for its time.
pub async fn outcomes_written_together_are_answered_each<B: Backend>(b: &B) {
    let o = Options::new(100, Duration::from_secs(3600));
    let store = b.open(o).await;
    store
        .accept((0..4).map(|n| item(n, None)).collect())
        .await
        .expect("accepts");
    let leased = lease_n(&store, 4, Duration::from_secs(2)).await;
    assert_eq!(leased.len(), 4);
    let now = Timestamp::now();
    let mut items = Vec::new();
    for (n, l) in leased.iter().take(3).enumerate() {
        let mut r = l.record.clone();
        if n == 1 {
            r = retrying(&l.record, now + jiff::SignedDuration::from_secs(3600));
        } else {
            r.status = Status::Delivered;
            r.msgid = Some(100 + n as i64);
            r.attempts = 1;
            r.finished_at = Some(now);
            r.next_attempt_at = None;
        }
        items.push((l.slot, r));
    }
    let answers = store.complete_many(items).await;
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(store.complete_many(Vec::new()).await.is_empty());
    let c = b.counts(&store).await;
    assert_eq!((c.ready, c.delayed, c.inflight), (0, 1, 1));
    let statuses = [
        Status::Delivered,
        Status::Retrying,
        Status::Delivered,
        Status::Sending,
    ];
    for (l, want) in leased.iter().zip(statuses) {
        let got = store.get(l.record.id).await.expect("reads").expect("kept");
        assert_eq!(got.status, want, "{}", l.record.id);
    }
    store.close().await;
}

/// The "attempt started" record ([`Store::start_attempt`]) is durable and keeps the lease: a
/// message whose process died mid-attempt is leased again by the next one with
/// `first_attempt_at` (and the `maxAge` budget's start) as written and `attempts` 0, so that the
/// dispatcher can tell that its outcome is unknown. A later start keeps the earlier one. An
/// outcome recorded without it (an attempt that did not send) voids it; a final outcome keeps
/// it; a replay clears it. Template data whose keys are named like the record's fields does not
/// pass for a recorded start.
pub async fn a_started_attempt_comes_back_with_the_next_lease<B: Backend>(b: &B) {
    let o = Options::new(100, Duration::from_secs(3600));
    let store = b.open(o).await;
    let look_alike = |n: usize| AcceptItem {
        message: parse_message(&json!({
            "touser": format!("o{n}"),
            "template_id": "T",
            "data": {
                "budget_from": {"value": "2020-01-01T00:00:00Z"},
                "first_attempt_at": {"value": "2020-01-01T00:00:00Z"}
            }
        }))
        .expect("valid"),
        idempotency_key: None,
        request_digest: None,
    };
    let ids: Vec<MessageId> = store
        .accept((0..3).map(look_alike).collect())
        .await
        .expect("accepts")
        .into_iter()
        .map(|a| a.id)
        .collect();
    let leased = lease_n(&store, 3, Duration::from_secs(2)).await;
    assert_eq!(leased.len(), 3);
    let lease_of = |id: MessageId| {
        leased
            .iter()
            .find(|l| l.record.id == id)
            .expect("every message leased")
    };
    let at = Timestamp::now();
    for l in &leased {
        assert_eq!(l.record.first_attempt_at, None);
    }
    // One alone, two together (the dispatcher's batch): each answered.
    store
        .start_attempt(&leased[0], at)
        .await
        .expect("records the start");
    let rest: Vec<&Leased> = leased[1..].iter().collect();
    let answers = store.start_attempts(&rest, at).await;
    assert_eq!(answers.len(), 2);
    for a in answers {
        a.expect("records the start");
    }
    assert_eq!(b.counts(&store).await.inflight, 3, "the leases are kept");
    let rec = store.get(ids[0]).await.expect("reads").expect("kept");
    assert_eq!(
        (
            rec.status,
            rec.first_attempt_at,
            rec.budget_from,
            rec.attempts
        ),
        (Status::Sending, Some(at), at, 0)
    );

    // ids[1]: the attempt did not send (a paused channel): queued again, the record voided.
    let now = Timestamp::now();
    let mut not_sent = lease_of(ids[1]).record.clone();
    not_sent.first_attempt_at = None;
    not_sent.next_attempt_at = Some(now);
    not_sent.updated_at = now;
    store
        .complete(lease_of(ids[1]).slot, not_sent)
        .await
        .expect("completes");
    // ids[2]: parked as unknown_outcome (the record kept), then replayed (cleared).
    let mut parked = lease_of(ids[2]).record.clone();
    parked.first_attempt_at = Some(at);
    parked.budget_from = at;
    parked.status = Status::UnknownOutcome;
    parked.dead_letter = true;
    parked.next_attempt_at = None;
    parked.finished_at = Some(now);
    store
        .complete(lease_of(ids[2]).slot, parked)
        .await
        .expect("completes");
    let rec = store.get(ids[2]).await.expect("reads").expect("kept");
    assert_eq!(
        (rec.status, rec.first_attempt_at),
        (Status::UnknownOutcome, Some(at))
    );
    let replayed = store.replay(ids[2]).await.expect("replays");
    assert_eq!(
        (replayed.status, replayed.first_attempt_at),
        (Status::Queued, None)
    );

    // A new process: ids[0] (its attempt's outcome never recorded) comes back with its start.
    let store = b.reopen(o, store).await;
    let again = lease_n(&store, 3, b.takeover() * 3 + Duration::from_secs(2)).await;
    assert_eq!(again.len(), 3);
    let started = |id: MessageId| {
        again
            .iter()
            .find(|l| l.record.id == id)
            .map(|l| (l.record.first_attempt_at, l.record.attempts))
    };
    assert_eq!(started(ids[0]), Some((Some(at), 0)));
    assert_eq!(started(ids[1]), Some((None, 0)), "voided");
    assert_eq!(started(ids[2]), Some((None, 0)), "cleared by the replay");
    let first = again
        .iter()
        .find(|l| l.record.id == ids[0])
        .expect("leased again");
    assert_eq!(first.record.budget_from, at);
    // A later start keeps the earlier one.
    let later = at + jiff::SignedDuration::from_secs(60);
    store.start_attempt(first, later).await.expect("answers");
    let rec = store.get(ids[0]).await.expect("reads").expect("kept");
    assert_eq!(rec.first_attempt_at, Some(at));
    store.close().await;
}

/// An idempotency key seen before answers the first id and stores nothing.
pub async fn idempotency_keys_answer_the_first_id<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_secs(3600))).await;
    let a = store
        .accept(vec![item(1, Some("k1"))])
        .await
        .expect("accepts");
    let c = store
        .accept(vec![item(2, Some("k1"))])
        .await
        .expect("accepts");
    assert_eq!(a[0].id, c[0].id);
    assert!(!a[0].duplicate && c[0].duplicate);
    assert_eq!(c[0].status, Status::Queued);
    assert_eq!(b.counts(&store).await.pending(), 1);
    store.close().await;
}

/// A key seen before with another request digest refuses the whole request and writes
/// nothing; the same digest replays; a record stored without a digest (before digests were
/// kept) matches any request.
pub async fn a_reused_key_with_another_body_is_refused<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_secs(3600))).await;
    let with = |n: usize, key: &str, digest: Option<&str>| AcceptItem {
        request_digest: digest.map(str::to_string),
        ..item(n, Some(key))
    };
    let first = store
        .accept(vec![with(1, "r#0", Some("aa")), with(2, "r#1", Some("aa"))])
        .await
        .expect("accepts");
    // The same request again: replayed.
    let again = store
        .accept(vec![with(1, "r#0", Some("aa")), with(2, "r#1", Some("aa"))])
        .await
        .expect("replays");
    assert_eq!(
        again
            .iter()
            .map(|a| (a.id, a.duplicate))
            .collect::<Vec<_>>(),
        first.iter().map(|a| (a.id, true)).collect::<Vec<_>>()
    );
    // Another body under the same key, next to a fresh item: nothing of it is written.
    let err = store
        .accept(vec![
            with(3, "fresh", Some("bb")),
            with(4, "r#1", Some("bb")),
        ])
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, StoreError::KeyReused(k) if k == "r#1"),
        "{err}"
    );
    assert_eq!(b.counts(&store).await.pending(), 2, "nothing written");
    let later = store
        .accept(vec![with(3, "fresh", Some("cc"))])
        .await
        .expect("the fresh key was not stored by the refused request");
    assert!(!later[0].duplicate);
    // A record without a digest matches whatever comes.
    let old = store
        .accept(vec![with(5, "old", None)])
        .await
        .expect("accepts");
    let replay = store
        .accept(vec![with(6, "old", Some("dd"))])
        .await
        .expect("an old record matches");
    assert_eq!((replay[0].id, replay[0].duplicate), (old[0].id, true));
    store.close().await;
}

/// A request that does not fit under `maxMessages` writes nothing.
pub async fn a_full_queue_refuses_whole_requests<B: Backend>(b: &B) {
    let store = b.open(Options::new(3, Duration::from_secs(3600))).await;
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
    assert_eq!(b.counts(&store).await.pending(), 2, "nothing half-written");
    store.accept(vec![item(4, None)]).await.expect("one fits");
    store.close().await;
}

/// Dead letters are listed, replayed once with the same `client_msg_id`, and removed with
/// their idempotency key after the retention.
pub async fn dead_letters_list_replay_and_expire_with_retention<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_millis(400))).await;
    store
        .accept(vec![item(0, Some("dk"))])
        .await
        .expect("accepts");
    let l = lease_n(&store, 1, Duration::from_secs(2)).await.remove(0);
    let mut failed = l.record.clone();
    failed.status = Status::Failed;
    failed.attempts = 1;
    failed.dead_letter = true;
    failed.finished_at = Some(Timestamp::now());
    store.complete(l.slot, failed).await.expect("completes");
    assert_eq!(b.counts(&store).await.dead, 1);
    let page = store.dead_letters(None, 10).await.expect("lists");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next, None);
    let replayed = store.replay(l.record.id).await.expect("replays");
    assert_eq!(
        (replayed.status, replayed.attempts, replayed.replays),
        (Status::Queued, 0, 1)
    );
    assert_eq!(replayed.client_msg_id, l.record.client_msg_id);
    assert_eq!(b.counts(&store).await.dead, 0);
    assert!(matches!(
        store.replay(l.record.id).await,
        Err(StoreError::NotDeadLetter(_))
    ));
    assert!(matches!(
        store.replay(MessageId::new()).await,
        Err(StoreError::NotFound(_))
    ));
    // Deliver it, then let the retention remove it (and its idempotency key).
    let l = lease_n(&store, 1, Duration::from_secs(2)).await.remove(0);
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
    store.close().await;
}

/// Dead letters page in id order.
pub async fn dead_letters_page_in_id_order<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_secs(3600))).await;
    store
        .accept((0..5).map(|n| item(n, None)).collect())
        .await
        .expect("accepts");
    let leased = lease_n(&store, 5, Duration::from_secs(2)).await;
    for l in &leased {
        let mut failed = l.record.clone();
        failed.status = Status::DeadLettered;
        failed.dead_letter = true;
        failed.finished_at = Some(Timestamp::now());
        store.complete(l.slot, failed).await.expect("completes");
    }
    let mut ids: Vec<MessageId> = leased.iter().map(|l| l.record.id).collect();
    ids.sort();
    let p1 = store.dead_letters(None, 2).await.expect("lists");
    assert_eq!(p1.items.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(p1.next, Some(ids[1]));
    let p2 = store.dead_letters(p1.next, 10).await.expect("lists");
    assert_eq!(p2.items.iter().map(|r| r.id).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(p2.next, None);
    store.close().await;
}

/// `record` after a failed first attempt, due again at `due`.
fn retrying(
    record: &crate::message::MessageRecord,
    due: Timestamp,
) -> crate::message::MessageRecord {
    let mut retry = record.clone();
    retry.status = Status::Retrying;
    retry.attempts = 1;
    retry.next_attempt_at = Some(due);
    retry
}

/// A retry scheduled a little later is leased again once due, not before.
pub async fn retries_come_back_when_due<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_secs(3600))).await;
    store.accept(vec![item(0, None)]).await.expect("accepts");
    let l = lease_n(&store, 1, Duration::from_secs(2)).await.remove(0);
    let due = Timestamp::now() + jiff::SignedDuration::from_millis(300);
    store
        .complete(l.slot, retrying(&l.record, due))
        .await
        .expect("completes");
    assert_eq!(
        store
            .get(l.record.id)
            .await
            .expect("reads")
            .map(|r| r.status),
        Some(Status::Retrying)
    );
    let again = lease_n(&store, 1, Duration::from_secs(3)).await;
    assert_eq!(again.len(), 1);
    assert!(Timestamp::now() >= due, "not leased before it was due");
    assert_eq!(again[0].record.attempts, 1);
    assert_eq!(again[0].record.client_msg_id, l.record.client_msg_id);
    store.close().await;
}

/// A waiting lease wakes soon after new work arrives.
pub async fn lease_wakes_promptly_on_new_work<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_secs(3600))).await;
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
    store.close().await;
}

/// Accepts messages to `openids` and completes them as delivered with msgids `base`+n, at
/// distinct delivery times so that "most recent" is well defined.
async fn deliver<S: Store>(store: &S, msgs: &[Value], base: i64) -> Vec<MessageId> {
    let items = msgs
        .iter()
        .map(|m| AcceptItem {
            message: parse_message(m).expect("valid"),
            idempotency_key: None,
            request_digest: None,
        })
        .collect();
    let ids: Vec<MessageId> = store
        .accept(items)
        .await
        .expect("accepts")
        .iter()
        .map(|a| a.id)
        .collect();
    let leased = lease_n(store, msgs.len(), Duration::from_secs(2)).await;
    assert_eq!(leased.len(), msgs.len());
    let start = Timestamp::now().as_millisecond() - 10_000;
    for l in leased {
        let n = ids.iter().position(|&i| i == l.record.id).expect("ours");
        let mut done = l.record.clone();
        done.status = Status::Delivered;
        done.msgid = Some(base + n as i64);
        let at = start + n as i64;
        done.finished_at = Some(Timestamp::from_millisecond(at).expect("ts"));
        done.next_attempt_at = None;
        store.complete(l.slot, done).await.expect("completes");
    }
    ids
}

fn to(openid: &str) -> Value {
    json!({"touser": openid, "template_id": "T"})
}

fn ev(openid: &str, create_time: u64, msgid: i64, status: &str) -> DeliveryEvent {
    DeliveryEvent {
        openid: openid.into(),
        create_time,
        msgid,
        status: status.into(),
        received_at: Timestamp::now(),
    }
}

async fn status<S: Store>(store: &S, id: MessageId) -> Status {
    store.get(id).await.expect("reads").expect("exists").status
}

/// Events find their message through the msgid index, are de-duplicated, and both survive a
/// restart.
pub async fn store_matches_by_msgid_dedups_and_survives_restart<B: Backend>(b: &B) {
    let o = Options::new(100, Duration::from_secs(3600));
    let store = b.open(o).await;
    let ids = deliver(&store, &[to("o1"), to("o2"), to("o3")], 1000).await;
    let out = store
        .record_event(ev("o1", 10, 1000, "success"), true)
        .await
        .expect("records");
    assert_eq!(
        out,
        EventOutcome::Applied {
            id: ids[0],
            status: Status::Confirmed
        }
    );
    assert_eq!(
        store
            .record_event(ev("o1", 10, 1000, "success"), true)
            .await
            .expect("records"),
        EventOutcome::Duplicate
    );
    store
        .record_event(ev("o2", 10, 1001, "failed:user block"), false)
        .await
        .expect("records");
    let out = store
        .record_event(ev("o3", 10, 1002, "failed: system failed"), true)
        .await
        .expect("records");
    assert_eq!(
        out,
        EventOutcome::Recorded {
            id: ids[2],
            status: Status::Delivered
        }
    );
    assert_eq!(
        store
            .record_event(ev("o9", 10, 777, "success"), true)
            .await
            .expect("records"),
        EventOutcome::Unmatched
    );
    // The index and the seen keys are durable.
    let store = b.reopen(o, store).await;
    assert_eq!(status(&store, ids[0]).await, Status::Confirmed);
    assert_eq!(status(&store, ids[1]).await, Status::RejectedByUser);
    let r = store.get(ids[2]).await.expect("reads").expect("exists");
    assert_eq!(r.status, Status::Delivered);
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].status, "failed: system failed");
    assert_eq!(
        store
            .record_event(ev("o2", 10, 1001, "failed:user block"), true)
            .await
            .expect("records"),
        EventOutcome::Duplicate
    );
    store.close().await;
}

/// An event without a known msgid falls back to the most recent delivered message to its
/// openid that has no event yet.
pub async fn store_falls_back_to_the_latest_delivered_message_of_the_openid<B: Backend>(b: &B) {
    let store = b.open(Options::new(100, Duration::from_secs(3600))).await;
    let ids = deliver(&store, &[to("o1"), to("o1"), to("o2")], 1000).await;
    // MsgID 0: the most recent delivered message to o1 without an event (ids[1]).
    assert_eq!(
        store
            .record_event(ev("o1", 20, 0, "success"), true)
            .await
            .expect("records"),
        EventOutcome::Applied {
            id: ids[1],
            status: Status::Confirmed
        }
    );
    // A retry of that event is a duplicate, not a match for the other message.
    assert_eq!(
        store
            .record_event(ev("o1", 20, 0, "success"), true)
            .await
            .expect("records"),
        EventOutcome::Duplicate
    );
    // An unknown msgid without the fallback matches nothing; with it, ids[0], the only one
    // left awaiting.
    assert_eq!(
        store
            .record_event(ev("o1", 21, 424_242, "success"), false)
            .await
            .expect("records"),
        EventOutcome::Unmatched
    );
    assert_eq!(
        store
            .record_event(ev("o1", 21, 424_242, "success"), true)
            .await
            .expect("records"),
        EventOutcome::Applied {
            id: ids[0],
            status: Status::Confirmed
        }
    );
    assert_eq!(
        store
            .record_event(ev("o1", 22, 0, "success"), true)
            .await
            .expect("records"),
        EventOutcome::Unmatched
    );
    assert_eq!(status(&store, ids[2]).await, Status::Delivered);
    let r = store.get(ids[1]).await.expect("reads").expect("exists");
    assert_eq!(r.events[0].matched_by, "openid_fallback");
    store.close().await;
}

fn body(cb: &PendingCallback) -> Value {
    serde_json::from_str(&cb.body).expect("json")
}

/// Final states write callbacks in the same write; a rescheduled callback keeps its attempts
/// and due time across a restart and is not handed out twice.
pub async fn final_states_write_callbacks_that_survive_a_restart<B: Backend>(b: &B) {
    let o = Options::new(100, Duration::from_secs(3600));
    // Whole milliseconds, as the store keeps them.
    let later =
        Timestamp::from_millisecond(Timestamp::now().as_millisecond() + 300).expect("a time");
    // No channel URL: only the message with its own callback_url gets one.
    let store = b.open(o).await;
    deliver(
        &store,
        &[
            json!({"touser": "a", "template_id": "T"}),
            json!({"touser": "b", "template_id": "T", "callback_url": "http://x/cb"}),
        ],
        7000,
    )
    .await;
    let due = store
        .lease_callbacks(10, Duration::from_millis(500))
        .await
        .expect("leases");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].url.as_deref(), Some("http://x/cb"));
    assert_eq!(body(&due[0])["status"], "delivered");
    assert_eq!(body(&due[0])["touser"], "b");
    // Leased: not handed out twice.
    let again = store
        .lease_callbacks(10, Duration::from_millis(50))
        .await
        .expect("leases");
    assert!(again.is_empty());
    // A failed attempt moves it to a later time with its attempt count.
    store
        .finish_callback(due[0].key, Some((later, 1)))
        .await
        .expect("reschedules");
    // After a restart (the lease is gone), it is still there with its attempts.
    let store = b.reopen(o, store).await;
    let due = store
        .lease_callbacks(10, Duration::from_secs(2))
        .await
        .expect("leases");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].key.due_ms, millis(later), "rescheduled");
    assert!(
        Timestamp::now() >= later,
        "not handed out before its retry time"
    );
    store.finish_callback(due[0].key, None).await.expect("done");
    let none = store
        .lease_callbacks(10, Duration::from_millis(100))
        .await
        .expect("leases");
    assert!(none.is_empty(), "a finished callback is gone");
    store.close().await;
}

/// A confirming event writes a second callback about the same message.
pub async fn a_confirming_event_writes_a_second_callback<B: Backend>(b: &B) {
    let store = b
        .open(Options {
            default_callback: true,
            ..Options::new(100, Duration::from_secs(3600))
        })
        .await;
    deliver(&store, &[to("c")], 7000).await;
    let first = store
        .lease_callbacks(10, Duration::from_millis(500))
        .await
        .expect("leases");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].url, None, "the channel's URL");
    store
        .finish_callback(first[0].key, None)
        .await
        .expect("done");
    let outcome = store
        .record_event(ev("c", 1, 7000, "success"), true)
        .await
        .expect("records");
    assert!(matches!(outcome, EventOutcome::Applied { .. }));
    let second = store
        .lease_callbacks(10, Duration::from_millis(500))
        .await
        .expect("leases");
    assert_eq!(second.len(), 1);
    let b2 = body(&second[0]);
    assert_eq!(b2["status"], "confirmed");
    assert_eq!(b2["msgid"], 7000);
    assert_eq!(b2["id"], body(&first[0])["id"]);
    store.close().await;
}

/// A backlog larger than any in-memory part of the schedule (the embedded store holds about
/// a thousand entries in memory, the rest on disk) is counted exactly and leased whole, each
/// message once, and a retry scheduled behind it comes back.
pub async fn a_backlog_larger_than_memory_holds_is_leased_whole<B: Backend>(b: &B) {
    const N: usize = 3_000;
    let store = b
        .open(Options::new(10_000, Duration::from_secs(3600)))
        .await;
    let mut ids = std::collections::HashSet::new();
    for k in (0..N).step_by(500) {
        let got = store
            .accept((k..k + 500).map(|n| item(n, None)).collect())
            .await
            .expect("accepts");
        ids.extend(got.into_iter().map(|a| a.id));
    }
    let c = b.counts(&store).await;
    assert_eq!((c.ready, c.delayed, c.inflight), (N as u64, 0, 0));
    let mut leased = Vec::new();
    let deadline = tokio::time::Instant::now() + b.takeover() * 3 + Duration::from_secs(30);
    while leased.len() < N && tokio::time::Instant::now() < deadline {
        leased.extend(
            store
                .lease(500, Duration::from_secs(2))
                .await
                .expect("leases"),
        );
    }
    let got: std::collections::HashSet<MessageId> = leased.iter().map(|l| l.record.id).collect();
    assert_eq!(leased.len(), N, "each leased once");
    assert_eq!(got, ids, "none left behind");
    let c = b.counts(&store).await;
    assert_eq!((c.ready, c.delayed, c.inflight), (0, 0, N as u64));
    // One retried behind the whole backlog.
    let l = &leased[0];
    let due = Timestamp::now() + jiff::SignedDuration::from_millis(300);
    store
        .complete(l.slot, retrying(&l.record, due))
        .await
        .expect("completes");
    let c = b.counts(&store).await;
    assert_eq!((c.pending(), c.inflight), (N as u64, N as u64 - 1));
    let again = lease_n(&store, 1, b.takeover() * 3 + Duration::from_secs(3)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record.id, l.record.id);
    assert!(Timestamp::now() >= due, "not before it was due");
    store.close().await;
}

/// Subscription credits: added, read, taken one at a time down to none (concurrent takes
/// never take more than there is), and kept across a restart.
pub async fn subscription_credits_are_taken_once_each<B: Backend>(b: &B) {
    let o = || Options::new(1000, Duration::from_secs(3600));
    let store = b.open(o()).await;
    assert_eq!(store.credits("o1", "S").await.expect("credits"), 0);
    assert!(!store.take_credit("o1", "S").await.expect("take"));
    assert_eq!(store.add_credits("o1", "S", 3).await.expect("add"), 3);
    assert_eq!(store.add_credits("o1", "S2", 1).await.expect("add"), 1);
    let takes = futures::future::join_all((0..5).map(|_| store.take_credit("o1", "S"))).await;
    let taken = takes
        .into_iter()
        .map(|t| t.expect("take"))
        .filter(|t| *t)
        .count();
    assert_eq!(taken, 3, "three credits, three takes");
    assert_eq!(store.credits("o1", "S").await.expect("credits"), 0);
    let store = b.reopen(o(), store).await;
    assert_eq!(store.credits("o1", "S2").await.expect("credits"), 1);
    assert_eq!(store.credits("o2", "S2").await.expect("credits"), 0);
    store.close().await;
}

/// WeCom messages (an application's and a robot's) keep their body through accept, lease
/// and a restart, and a delivered one keeps its receipt: WeCom's msgid and the recipients it
/// could not reach.
pub async fn wecom_records_keep_their_body_and_receipt<B: Backend>(b: &B) {
    use crate::providers::wecom_message::{Audience, parse};
    use crate::send::{InvalidRecipients, Receipt};
    let o = Options::new(100, Duration::from_secs(3600));
    let store = b.open(o).await;
    let app = parse(
        &json!({"touser": "alice|gone-1", "toparty": "9001", "msgtype": "textcard",
                "textcard": {"title": "Order 42", "description": "failed",
                             "url": "https://shop.example/orders/42"}}),
        Audience::App,
    )
    .expect("valid");
    let robot = parse(
        &json!({"msgtype": "markdown", "markdown": {"content": "**deploy** done"}}),
        Audience::Robot,
    )
    .expect("valid");
    let items = [&app, &robot]
        .into_iter()
        .map(|m| AcceptItem {
            message: m.clone(),
            idempotency_key: None,
            request_digest: None,
        })
        .collect();
    store.accept(items).await.expect("accepts");
    let leased = lease_n(&store, 2, Duration::from_secs(2)).await;
    assert_eq!(leased.len(), 2);
    let receipt = Receipt {
        provider_msgid: Some("MSGID-1".into()),
        invalid: InvalidRecipients {
            users: vec!["gone-1".into()],
            parties: vec!["9001".into()],
            ..InvalidRecipients::default()
        },
        recalled_at: None,
    };
    for l in &leased {
        let mut done = l.record.clone();
        done.status = Status::Delivered;
        done.attempts = 1;
        done.finished_at = Some(Timestamp::now());
        done.next_attempt_at = None;
        if l.record.message == app {
            done.receipt = Some(receipt.clone());
        }
        store.complete(l.slot, done).await.expect("completes");
    }
    let store = b.reopen(o, store).await;
    for l in &leased {
        let rec = store.get(l.record.id).await.expect("reads").expect("kept");
        assert_eq!(rec.status, Status::Delivered);
        assert!(rec.message.wecom.is_some());
        if rec.message == app {
            assert_eq!(rec.receipt.as_ref(), Some(&receipt));
        } else {
            assert_eq!(rec.message, robot);
            assert_eq!(rec.receipt, None);
        }
    }
    store.close().await;
}

/// A recall is kept in the delivered message's receipt, next to what the send answered; a
/// second recall keeps the first time (and answers it), through a restart; a recall of no
/// message is `NotFound`.
pub async fn a_recall_is_kept_once<B: Backend>(b: &B) {
    use crate::providers::wecom_message::{Audience, parse};
    use crate::send::Receipt;
    let o = Options::new(100, Duration::from_secs(3600));
    let store = b.open(o).await;
    let app = parse(
        &json!({"touser": "alice", "msgtype": "text", "text": {"content": "order 42 failed"}}),
        Audience::App,
    )
    .expect("valid");
    store
        .accept(vec![AcceptItem {
            message: app,
            idempotency_key: None,
            request_digest: None,
        }])
        .await
        .expect("accepts");
    let leased = lease_n(&store, 1, Duration::from_secs(2)).await;
    let l = &leased[0];
    let id = l.record.id;
    let mut done = l.record.clone();
    done.status = Status::Delivered;
    done.attempts = 1;
    done.finished_at = Some(Timestamp::now());
    done.next_attempt_at = None;
    done.receipt = Some(Receipt {
        provider_msgid: Some("MSGID-1".into()),
        ..Receipt::default()
    });
    store.complete(l.slot, done).await.expect("completes");
    let first = Timestamp::from_second(1_800_000_000).expect("a time");
    let later = Timestamp::from_second(1_800_000_060).expect("a time");
    assert_eq!(store.record_recall(id, first).await.expect("kept"), first);
    assert_eq!(
        store.record_recall(id, later).await.expect("answered"),
        first,
        "a second recall answers the first one's time"
    );
    let store = b.reopen(o, store).await;
    let rec = store.get(id).await.expect("reads").expect("kept");
    assert_eq!(rec.status, Status::Delivered);
    let receipt = rec.receipt.expect("a receipt");
    assert_eq!(receipt.recalled_at, Some(first));
    assert_eq!(receipt.provider_msgid.as_deref(), Some("MSGID-1"));
    assert_eq!(
        store.record_recall(id, later).await.expect("answered"),
        first
    );
    assert!(matches!(
        store.record_recall(MessageId::new(), later).await,
        Err(StoreError::NotFound(_))
    ));
    store.close().await;
}

/// Runs every check of the contract as one `#[tokio::test]` each, for a backend built by
/// `$backend` (an expression evaluated once per test, which may `.await`).
#[macro_export]
macro_rules! store_contract {
    ($backend:expr) => {
        $crate::store_contract!(@tests $backend;
            accept_lease_complete_and_leases_die_with_the_process,
            outcomes_written_together_are_answered_each,
            a_started_attempt_comes_back_with_the_next_lease,
            idempotency_keys_answer_the_first_id,
            a_reused_key_with_another_body_is_refused,
            a_full_queue_refuses_whole_requests,
            dead_letters_list_replay_and_expire_with_retention,
            dead_letters_page_in_id_order,
            retries_come_back_when_due,
            lease_wakes_promptly_on_new_work,
            store_matches_by_msgid_dedups_and_survives_restart,
            store_falls_back_to_the_latest_delivered_message_of_the_openid,
            final_states_write_callbacks_that_survive_a_restart,
            a_confirming_event_writes_a_second_callback,
            a_backlog_larger_than_memory_holds_is_leased_whole,
            subscription_credits_are_taken_once_each,
            wecom_records_keep_their_body_and_receipt,
            a_recall_is_kept_once
        );
    };
    (@tests $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $backend;
                $crate::store::contract::$name(&backend).await;
            }
        )*
    };
}

/// The Redis store under a key prefix of its own on a running server.
#[derive(Debug)]
pub struct Redis {
    /// The server's URL.
    pub url: String,
    /// A prefix no other backend uses.
    pub prefix: String,
    /// `claimIdle` (short in tests, so that a dead process's leases come back soon; not so
    /// short that a loaded machine delays the lease keeper past it, which would hand a live
    /// lease out again: 500 ms did on a 2-core machine at load 8).
    pub claim_idle: Duration,
    /// Use the cluster client.
    pub cluster: bool,
}

impl Redis {
    /// A backend with a fresh key prefix on the server at `url`.
    pub fn new(url: &str, cluster: bool) -> Self {
        Self {
            url: url.to_string(),
            prefix: format!("contract-{}", ulid::Ulid::new()),
            claim_idle: Duration::from_millis(1500),
            cluster,
        }
    }

    async fn connect(&self, o: Options) -> super::RedisStore {
        super::RedisStore::connect(super::redis::RedisOptions {
            url: self.url.clone(),
            cluster: self.cluster,
            key_prefix: self.prefix.clone(),
            channel: "contract".into(),
            consumer_group: "pushers".into(),
            consumer: format!("contract-{}", ulid::Ulid::new()),
            claim_idle: self.claim_idle,
            max_messages: o.max_messages,
            retention: o.retention,
            default_callback: o.default_callback,
            min_replicas_acked: 0,
            event_indexes: true,
        })
        .await
        .expect("connects to redis")
    }
}

impl Backend for Redis {
    type S = super::RedisStore;

    async fn open(&self, o: Options) -> super::RedisStore {
        self.connect(o).await
    }

    async fn reopen(&self, o: Options, old: super::RedisStore) -> super::RedisStore {
        old.close().await;
        drop(old);
        self.connect(o).await
    }

    async fn counts(&self, store: &super::RedisStore) -> QueueCounts {
        store.refresh().await.expect("counts")
    }

    fn takeover(&self) -> Duration {
        self.claim_idle
    }
}
