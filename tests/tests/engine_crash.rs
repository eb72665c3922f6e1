//! `kill -9` during a 20,000-message load, then a restart on the same store: every
//! acknowledged message ends delivered exactly once at the sandbox.
//!
//! The producer behaves as producers should: each batch carries an `Idempotency-Key`, and a
//! batch whose answer was lost (the pusher died) is sent again with the same key, to the
//! restarted pusher. The sandbox's unique-delivery count must then equal the number of
//! distinct acknowledged ids, and every recipient (one per message) got exactly one delivery.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use wxpush_tests::pusher::{Api, PusherProc, config, config_path, ids_of, tempdir, template};
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::wait_for;

const N: usize = 20_000;
const BATCH: usize = 100;

type Acked = Arc<Mutex<BTreeMap<usize, Vec<String>>>>;

async fn produce(api: Api, batches: Arc<Vec<Vec<Value>>>, todo: Vec<usize>, acked: Acked) {
    futures::stream::iter(todo)
        .for_each_concurrent(4, |j| {
            let (api, batches, acked) = (api.clone(), Arc::clone(&batches), Arc::clone(&acked));
            async move {
                let key = format!("crash-batch-{j}");
                if let Ok((202, v)) = api.try_batch(&batches[j], Some(&key)).await {
                    let ids = ids_of(&v);
                    assert_eq!(ids.len(), BATCH, "{v}");
                    acked.lock().await.insert(j, ids);
                }
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_nothing_acknowledged() {
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = config(&sb_url, dir.path(), &json!({}));
    let mut first = PusherProc::start(dir.path(), &cfg).await;
    let batches: Arc<Vec<Vec<Value>>> = Arc::new(
        (0..N / BATCH)
            .map(|j| {
                (0..BATCH)
                    .map(|i| template(&format!("k{}", j * BATCH + i)))
                    .collect()
            })
            .collect(),
    );
    let acked: Acked = Arc::default();
    let start = Instant::now();
    let producer = tokio::spawn(produce(
        first.api.clone(),
        Arc::clone(&batches),
        (0..N / BATCH).collect(),
        Arc::clone(&acked),
    ));
    // Kill while deliveries (and, usually, accepts) are under way.
    wait_for("deliveries to start", Duration::from_secs(60), || {
        let wx = wx.clone();
        async move { (wx.stats().await.delivered_unique >= 3000).then_some(()) }
    })
    .await;
    first.kill9();
    let at_kill = wx.stats().await.delivered_unique;
    producer
        .await
        .expect("the producer finishes (some batches unanswered)");
    let acked_before = acked.lock().await.len() * BATCH;
    eprintln!(
        "killed after {:?}: {acked_before} acknowledged, {at_kill} delivered",
        start.elapsed()
    );
    assert!(at_kill < N as u64, "the kill came mid-load");

    let second = PusherProc::start_with(&config_path(dir.path()), &[]).await;
    // Everything acknowledged before the kill is still known.
    let known: Vec<String> = acked
        .lock()
        .await
        .values()
        .flatten()
        .step_by(97)
        .cloned()
        .collect();
    for id in &known {
        let (code, doc) = second.api.status(id).await;
        assert_eq!(code, 200, "{id} survived the kill: {doc}");
    }
    let todo: Vec<usize> = {
        let a = acked.lock().await;
        (0..N / BATCH).filter(|j| !a.contains_key(j)).collect()
    };
    eprintln!("re-sending {} unanswered batches", todo.len());
    produce(
        second.api.clone(),
        Arc::clone(&batches),
        todo,
        Arc::clone(&acked),
    )
    .await;
    let ids: HashSet<String> = acked.lock().await.values().flatten().cloned().collect();
    assert_eq!(
        acked.lock().await.len(),
        N / BATCH,
        "every batch acknowledged in the end"
    );
    assert_eq!(ids.len(), N, "one id per message, re-sent batches included");

    wait_for("the queue to empty", Duration::from_secs(180), || {
        let api = second.api.clone();
        async move {
            let text = api.metrics().await;
            let pending: f64 = ["ready", "delayed", "inflight"]
                .iter()
                .map(|s| {
                    wxpush_tests::pusher::metric_value(
                        &text,
                        "wxpush_queue_messages",
                        &[("state", s)],
                    )
                })
                .sum();
            (pending == 0.0).then_some(())
        }
    })
    .await;
    let stats = wx.stats().await;
    eprintln!(
        "after {:?}: delivered_unique {}, duplicates suppressed {}",
        start.elapsed(),
        stats.delivered_unique,
        stats.duplicates_suppressed
    );
    assert_eq!(
        stats.delivered_unique,
        ids.len() as u64,
        "delivered == acknowledged"
    );
    assert_eq!(stats.per_openid.len(), N);
    assert!(stats.per_openid.values().all(|c| c.delivered == 1));
    let dead = second
        .api
        .metric("wxpush_queue_messages", &[("state", "dead")])
        .await;
    assert_eq!(dead, 0.0);
    for id in ids.iter().step_by(211) {
        let (_, doc) = second.api.status(id).await;
        assert_eq!(doc["status"], "delivered", "{doc}");
    }
}
