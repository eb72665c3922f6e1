//! Injected store faults (issue 11): a fault-injecting wrapper around the embedded store, used
//! only here, fails accepts, leases and completions at random (seeded), in front of the real
//! dispatcher and WeChat engine talking to an in-process sandbox that answers some sends with a
//! retryable errcode. Nothing is lost or stranded, no message is sent after its `maxAge`, and
//! re-sends carry the same `client_msg_id` (no openid is delivered twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use wxpush_pusher::config::PusherConfig;
use wxpush_pusher::dispatch::{DispatchState, Dispatcher};
use wxpush_pusher::message::{MessageId, MessageRecord, Status, parse_message};
use wxpush_pusher::metrics::Metrics;
use wxpush_pusher::store::embedded::EmbeddedOptions;
use wxpush_pusher::store::{
    AcceptItem, Accepted, CallbackKey, DeadLetterPage, DeliveryEvent, EmbeddedStore, EventOutcome,
    Leased, PendingCallback, QueueCounts, Store, StoreError,
};
use wxpush_pusher::wechat::WeChatSender;
use wxpush_tests::sandbox;
use wxpush_tests::wait_for;

/// A seeded xorshift generator shared by the clones of one wrapper.
#[derive(Debug)]
struct Dice(AtomicU64);

impl Dice {
    fn roll(&self) -> f64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Fails operations at random: an accept before its write (nothing stored) or after it (stored,
/// but the caller hears an error: a lost answer); a lease; a completion after its write (a lost
/// answer). Counts what it injected.
#[derive(Debug, Clone)]
struct Faulty<S> {
    inner: S,
    dice: Arc<Dice>,
    share: f64,
    injected: Arc<AtomicU64>,
}

impl<S> Faulty<S> {
    fn fail(&self) -> bool {
        let hit = self.dice.roll() < self.share;
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

fn injected() -> StoreError {
    StoreError::Storage("injected fault".into())
}

impl<S: Store + Clone> Store for Faulty<S> {
    async fn accept(&self, items: Vec<AcceptItem>) -> Result<Vec<Accepted>, StoreError> {
        if self.fail() {
            return Err(injected());
        }
        let r = self.inner.accept(items).await;
        if self.fail() {
            return Err(injected());
        }
        r
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Leased>, StoreError> {
        if self.fail() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Err(injected());
        }
        self.inner.lease(max, wait).await
    }

    async fn complete(&self, slot: u64, record: MessageRecord) -> Result<(), StoreError> {
        let r = self.inner.complete(slot, record).await;
        if self.fail() {
            return Err(injected());
        }
        r
    }

    async fn start_attempt(&self, leased: &Leased, at: jiff::Timestamp) -> Result<(), StoreError> {
        self.inner.start_attempt(leased, at).await
    }

    async fn get(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn dead_letters(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        self.inner.dead_letters(after, limit).await
    }

    async fn replay(&self, id: MessageId) -> Result<MessageRecord, StoreError> {
        self.inner.replay(id).await
    }

    async fn record_recall(
        &self,
        id: MessageId,
        at: jiff::Timestamp,
    ) -> Result<jiff::Timestamp, StoreError> {
        self.inner.record_recall(id, at).await
    }

    async fn record_event(
        &self,
        event: DeliveryEvent,
        fallback: bool,
    ) -> Result<EventOutcome, StoreError> {
        self.inner.record_event(event, fallback).await
    }

    async fn lease_callbacks(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PendingCallback>, StoreError> {
        self.inner.lease_callbacks(max, wait).await
    }

    async fn finish_callback(
        &self,
        key: CallbackKey,
        next: Option<(jiff::Timestamp, u32)>,
    ) -> Result<(), StoreError> {
        self.inner.finish_callback(key, next).await
    }

    fn counts(&self) -> QueueCounts {
        self.inner.counts()
    }

    fn is_healthy(&self) -> bool {
        self.inner.is_healthy()
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

const N: usize = 300;
const MAX_AGE_MS: i64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_store_faults_lose_strand_and_duplicate_nothing() {
    let seed: u64 = std::env::var("WXPUSH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    eprintln!("seed {seed} (set WXPUSH_FAULT_SEED to replay)");
    let mut sb_config = sandbox::config();
    sb_config.daily_quota = None;
    sb_config.faults = serde_json::from_value(json!({"errcodes": {"-1": 0.3}})).expect("faults");
    let sb = sandbox::start(sb_config).await;
    let dir = wxpush_tests::pusher::tempdir();
    let cfg_json = wxpush_tests::pusher::config(
        &sb.handle.base_url(),
        dir.path(),
        &json!({
            "retry": {"maxAttempts": 50, "initialBackoff": "50ms", "maxBackoff": "200ms",
                      "maxAge": format!("{MAX_AGE_MS}ms")},
            "circuitBreaker": {"enabled": false},
        }),
    );
    let config = PusherConfig::from_yaml(&cfg_json.to_string()).expect("config");
    let inner = EmbeddedStore::open(&EmbeddedOptions {
        path: dir.path().join("queue"),
        max_messages: 100_000,
        retention: Duration::from_secs(3600),
        default_callback: false,
        unhealthy_after: Duration::from_secs(120),
        max_bytes: None,
        event_indexes: false,
    })
    .expect("store");
    let store = Faulty {
        inner: inner.clone(),
        dice: Arc::new(Dice(AtomicU64::new(seed | 1))),
        share: 0.1,
        injected: Arc::default(),
    };
    let metrics = Arc::new(Metrics::new("faults"));
    let sender = Arc::new(WeChatSender::new(&config, Arc::clone(&metrics)).expect("sender"));
    let dispatcher = Dispatcher::new(
        store.clone(),
        sender,
        metrics,
        config.retry.clone(),
        16,
        Arc::new(DispatchState::default()),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(dispatcher.run(stop.clone(), Duration::from_secs(2)));

    // A producer that retries with the same idempotency key until it hears an answer.
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let message =
            parse_message(&json!({"touser": format!("f-{i}"), "template_id": "T"})).expect("valid");
        let item = AcceptItem {
            message,
            idempotency_key: Some(format!("key-{i}")),
            request_digest: None,
        };
        let mut tries = 0;
        let id = loop {
            tries += 1;
            assert!(tries < 100, "accept never succeeded");
            match store.accept(vec![item.clone()]).await {
                Ok(a) => break a[0].id,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        ids.push(id);
    }

    // Every message reaches a final state: nothing lost, nothing stranded.
    wait_for("every message final", Duration::from_secs(120), || {
        let inner = inner.clone();
        async move { (inner.counts().pending() == 0).then_some(()) }
    })
    .await;
    stop.cancel();
    let _ = running.await;

    let stats = sb.api.stats().await;
    let mut delivered = 0u64;
    let mut expired = 0u64;
    for id in &ids {
        let r = inner.get(*id).await.expect("read").expect("stored");
        match r.status {
            Status::Delivered => {
                delivered += 1;
                // Sent within its maxAge (the outcome is recorded right after the send).
                let finished = r.finished_at.expect("finished").as_millisecond();
                assert!(
                    finished - r.budget_from.as_millisecond() <= MAX_AGE_MS + 1000,
                    "{id} delivered after its maxAge: {r:?}"
                );
            }
            Status::Expired => expired += 1,
            other => panic!("{id} ended {other:?}: {r:?}"),
        }
    }
    let c = inner.counts();
    eprintln!(
        "{N} messages: {delivered} delivered, {expired} expired; {} faults injected; sandbox: \
         {} sends, {} unique deliveries, {} duplicates suppressed",
        store.injected.load(Ordering::Relaxed),
        stats.requests.get("template_send").copied().unwrap_or(0),
        stats.delivered_unique,
        stats.duplicates_suppressed
    );
    assert!(
        store.injected.load(Ordering::Relaxed) > 20,
        "faults were injected"
    );
    assert_eq!(c.pending(), 0);
    assert_eq!(c.dead, expired);
    // Same client_msg_id on every attempt: no openid got a second delivery.
    assert!(
        stats.per_openid.values().all(|o| o.delivered <= 1),
        "a duplicate delivery"
    );
    assert_eq!(
        stats.delivered_unique, delivered,
        "every delivery is recorded"
    );
    inner.close().await;
}
