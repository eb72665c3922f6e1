//! Several pushers on one Redis act as one queue and one WeChat client (issue #9): three pods
//! take the messages of the single, batch and idempotent routes; the sandbox sees every message
//! delivered once, no duplicate send, one token fetch, and the channel's rate across all pods.
//! Then the failure cases: a pod killed with SIGKILL mid-load (its leases are claimed by the
//! others after `claimIdle`), and Redis killed with SIGKILL mid-load and restarted on its AOF
//! (nothing acknowledged is lost; accepts answer 503 while it is away; the pushers recover on
//! their own). The three-pod test also runs on a 3-master Redis Cluster.
//!
//! `WXPUSH_SCALE_MESSAGES` sets the message count of the three-pod tests (default 3,000; the
//! issue's figure is 30,000).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use wxpush_sandbox::StatsSnapshot;
use wxpush_tests::pusher::{Api, PusherProc, config, ids_of, metric_value, tempdir, template};
use wxpush_tests::redis::{RedisCluster, RedisServer};
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::wait_for;

fn scale_messages() -> usize {
    std::env::var("WXPUSH_SCALE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// A pusher config on the Redis at `url` (all pods share the channel and the queue).
fn redis_config(sandbox: &str, dir: &std::path::Path, url: &str, extra: &Value) -> Value {
    let mut patch = json!({
        "queue": {"embedded": null, "redis": {"url": url, "claimIdle": "3s", "retention": "1h"}},
        "concurrency": {"maxInFlight": 32},
        "retry": {"initialBackoff": "50ms", "maxBackoff": "1s"},
    });
    wxpush_tests::pusher::merge(&mut patch, extra);
    config(sandbox, dir, &patch)
}

struct Pods {
    pods: Vec<PusherProc>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_pods(n: usize, sandbox: &str, url: &str, extra: &Value) -> Pods {
    let mut pods = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempdir();
        let cfg = redis_config(sandbox, dir.path(), url, extra);
        pods.push(PusherProc::start(dir.path(), &cfg).await);
        dirs.push(dir);
    }
    Pods { pods, _dirs: dirs }
}

/// The sandbox's counts, sampled every 250 ms until stopped, for rate windows.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(wx: WxClient) -> Self {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            tokio::spawn(async move {
                loop {
                    // Stamped at the middle of the request: the counters were read then, give
                    // or take half the request's time.
                    let before = Instant::now();
                    let s = wx.stats().await;
                    let at = before + before.elapsed() / 2;
                    samples.lock().await.push((at, sends_ok(&s)));
                    tokio::select! {
                        () = stop.notified() => return,
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            })
        };
        Self {
            samples,
            stop,
            task,
        }
    }

    /// The highest rate (sends/s) over any window of at least `window`.
    async fn max_rate(self, window: Duration) -> (f64, usize) {
        self.stop.notify_one();
        let _ = self.task.await;
        let s = self.samples.lock().await.clone();
        let mut best: f64 = 0.0;
        let mut windows = 0;
        for (i, &(t0, n0)) in s.iter().enumerate() {
            if let Some(&(t1, n1)) = s[i..].iter().find(|(t, _)| t.duration_since(t0) >= window) {
                windows += 1;
                best = best.max((n1 - n0) as f64 / t1.duration_since(t0).as_secs_f64());
            }
        }
        (best, windows)
    }
}

/// Sends answered errcode 0 (first sends and suppressed repeats).
fn sends_ok(s: &StatsSnapshot) -> u64 {
    s.delivered_unique + s.duplicates_suppressed
}

fn invalidations(s: &StatsSnapshot) -> u64 {
    ["40001", "40014", "42001"]
        .iter()
        .map(|c| s.errcodes.get(*c).copied().unwrap_or(0))
        .sum()
}

/// Sends `n` messages through the three routes, spread over the pods: a third one per
/// request, a third in batches of 100, a third one per request with an `Idempotency-Key` (each
/// sent twice: the repeat must answer the first id). Returns the distinct ids.
async fn send_through_all_routes(apis: &[Api], n: usize, tag: &str) -> Vec<String> {
    let third = n / 3;
    let single: Vec<usize> = (0..third).collect();
    let batch: Vec<usize> = (third..2 * third).collect();
    let idem: Vec<usize> = (2 * third..n).collect();
    let to = |i: usize| template(&format!("{tag}-{i}"));
    let mut ids: Vec<String> = futures::stream::iter(single)
        .map(|i| {
            let api = apis[i % apis.len()].clone();
            async move {
                let (status, v) = api.send(&to(i)).await;
                assert_eq!(status, 202, "{v}");
                v["id"].as_str().map(str::to_string).unwrap_or_default()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let chunks: Vec<Vec<usize>> = batch.chunks(100).map(<[usize]>::to_vec).collect();
    let batched: Vec<Vec<String>> = futures::stream::iter(chunks.into_iter().enumerate())
        .map(|(j, chunk)| {
            let api = apis[j % apis.len()].clone();
            async move {
                let msgs: Vec<Value> = chunk.iter().map(|&i| to(i)).collect();
                let (status, v) = api.try_batch(&msgs, None).await.expect("answers");
                assert_eq!(status, 202, "{v}");
                let got = ids_of(&v);
                assert_eq!(got.len(), msgs.len());
                got
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    ids.extend(batched.into_iter().flatten());
    let keyed: Vec<String> = futures::stream::iter(idem)
        .map(|i| {
            let first = apis[i % apis.len()].clone();
            let second = apis[(i + 1) % apis.len()].clone();
            async move {
                let key = format!("{tag}-key-{i}");
                let (s1, v1) = first.try_send(&to(i), Some(&key)).await.expect("answers");
                let (s2, v2) = second.try_send(&to(i), Some(&key)).await.expect("answers");
                assert_eq!((s1, s2), (202, 202), "{v1} {v2}");
                assert_eq!(
                    v1["id"], v2["id"],
                    "the repeat answers the first id, on any pod"
                );
                v1["id"].as_str().map(str::to_string).unwrap_or_default()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    ids.extend(keyed);
    ids
}

async fn wait_unique(wx: &WxClient, n: u64, timeout: Duration) -> StatsSnapshot {
    wait_for(&format!("{n} unique deliveries"), timeout, || async {
        let s = wx.stats().await;
        (s.delivered_unique >= n).then_some(s)
    })
    .await
}

async fn three_pods(url: &str, cluster: bool) {
    let n = scale_messages();
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let extra = json!({"rateLimit": {"perSecond": 500, "burst": 50, "dailyQuota": 0}});
    let pods = start_pods(3, &sb_url, url, &extra).await;
    let apis: Vec<Api> = pods.pods.iter().map(|p| p.api.clone()).collect();
    let sampler = Sampler::start(wx.clone());
    let started = Instant::now();
    let ids = send_through_all_routes(&apis, n, "scale").await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "distinct ids");
    let budget = Duration::from_secs(60 + (n as u64 / 500) * 2);
    let s = wait_unique(&wx, n as u64, budget).await;
    let took = started.elapsed();
    let (rate, windows) = sampler.max_rate(Duration::from_secs(5)).await;
    let s_after = wx.stats().await;
    println!(
        "{n} messages through 3 pods in {took:.1?}: max {rate:.0} sends/s over 5 s ({windows} windows); \
         token calls {:?}; duplicates suppressed {}",
        s_after.token_calls, s_after.duplicates_suppressed
    );
    assert_eq!(s.delivered_unique, n as u64, "all delivered, once each");
    assert_eq!(
        s_after.duplicates_suppressed, 0,
        "no message was sent twice across the pods"
    );
    let token_calls = s_after.token_calls.classic + s_after.token_calls.stable;
    assert!(
        token_calls <= 1 + invalidations(&s_after),
        "token requests {token_calls} for one lifetime and {} invalidations",
        invalidations(&s_after)
    );
    if windows > 0 {
        assert!(
            rate <= 550.0,
            "{rate:.0} sends/s over 5 s with perSecond 500"
        );
    }
    // The gauges come from Redis (cached, refreshed every second): drained, Redis up.
    let api = apis[0].clone();
    wait_for("queue gauges drained", Duration::from_secs(15), || {
        let api = api.clone();
        async move {
            let m = api.metrics().await;
            let v = |name: &str, labels: &[(&str, &str)]| metric_value(&m, name, labels);
            (v("wxpush_redis_up", &[]) == 1.0
                && v("wxpush_queue_messages", &[("state", "ready")]) == 0.0
                && v("wxpush_queue_messages", &[("state", "inflight")]) == 0.0
                && v("wxpush_queue_group_lag", &[]) == 0.0)
                .then_some(())
        }
    })
    .await;
    // Every id reads back as delivered from any pod (the status lives in Redis).
    for (j, id) in ids.iter().enumerate().step_by((n / 50).max(1)) {
        let (status, v) = apis[(j + 1) % 3].status(id).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "delivered", "{v}");
    }
    wxpush_tests::redis::assert_consistent(url, cluster, "three pods").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_on_one_redis_deliver_everything_once_as_one_client() {
    let redis = RedisServer::start().await;
    three_pods(&redis.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_on_a_redis_cluster_deliver_everything_once_as_one_client() {
    let cluster = RedisCluster::start().await;
    three_pods(&cluster.url(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pods_leases_are_claimed_and_delivered_with_the_same_client_msg_id() {
    let n: usize = 2000;
    let redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    // A slow rate so that every pod holds leases (waiting for permits) when one is killed.
    let extra = json!({"rateLimit": {"perSecond": 400, "burst": 20, "dailyQuota": 0}});
    let mut pods = start_pods(3, &sb_url, &redis.url(), &extra).await;
    let msgs: Vec<Value> = (0..n).map(|i| template(&format!("kill-{i}"))).collect();
    for (j, chunk) in msgs.chunks(100).enumerate() {
        let ids = pods.pods[j % 3].api.batch_ids(chunk).await;
        assert_eq!(ids.len(), chunk.len());
    }
    wait_for("some deliveries", Duration::from_secs(30), || async {
        (wx.stats().await.delivered_unique >= 200).then_some(())
    })
    .await;
    // The victim holds leases now: its consumer has pending entries.
    let victim_pending = redis.cli(&["XPENDING", "{wxpush:engine-test}:q", "pushers"]);
    pods.pods[0].kill9();
    let killed_at = Instant::now();
    let s = wait_unique(&wx, n as u64, Duration::from_secs(60)).await;
    let s_after = wx.stats().await;
    println!(
        "pod killed; all {n} delivered {:.1?} later; duplicates suppressed (same client_msg_id) {}; \
         pending summary at the kill: {}",
        killed_at.elapsed(),
        s_after.duplicates_suppressed,
        victim_pending.replace('\n', " ")
    );
    assert_eq!(
        s.delivered_unique, n as u64,
        "every message delivered, and a repeat of a message the dead pod had sent carried the \
         same client_msg_id (a new one would count as a second unique delivery)"
    );
    // Nothing stays leased by the dead consumer.
    let port = redis.port;
    wait_for(
        "no pending entries left",
        Duration::from_secs(20),
        || async move {
            let out =
                wxpush_tests::redis::cli(port, &["XPENDING", "{wxpush:engine-test}:q", "pushers"]);
            out.lines()
                .next()
                .is_some_and(|l| l.trim() == "0")
                .then_some(())
        },
    )
    .await;
    wxpush_tests::redis::assert_consistent(&redis.url(), false, "a pod killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_loses_nothing_acknowledged_and_pushers_recover() {
    let mut redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let extra = json!({"rateLimit": {"perSecond": 100000, "burst": 100000, "dailyQuota": 0}});
    let pods = start_pods(2, &sb_url, &redis.url(), &extra).await;
    let apis: Vec<Api> = pods.pods.iter().map(|p| p.api.clone()).collect();

    // A producer: one message per request (each to a recipient of its own), alternating pods,
    // recording every answer: the (id, recipient) pairs acknowledged, and the recipients of the
    // requests answered otherwise (a 503 at the kill's edge may follow a write Redis applied
    // just before it died, so those messages may or may not be stored).
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let unconfirmed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let outage_answers: Arc<Mutex<Vec<u16>>> = Arc::default();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (apis, acked, unconfirmed, outage_answers, down, stop) = (
            apis.clone(),
            Arc::clone(&acked),
            Arc::clone(&unconfirmed),
            Arc::clone(&outage_answers),
            Arc::clone(&down),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let api = &apis[i % apis.len()];
                let was_down = down.load(std::sync::atomic::Ordering::Relaxed);
                let user = format!("outage-{i}");
                let answer = api.try_send(&template(&user), None).await;
                let is_down = down.load(std::sync::atomic::Ordering::Relaxed);
                match answer {
                    Ok((202, v)) => {
                        let id = v["id"].as_str().unwrap_or_default().to_string();
                        acked.lock().await.push((id, user));
                        if was_down && is_down {
                            outage_answers.lock().await.push(202);
                        }
                    }
                    Ok((status, _)) => {
                        unconfirmed.lock().await.insert(user);
                        if was_down && is_down {
                            outage_answers.lock().await.push(status);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        unconfirmed.lock().await.insert(user);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
        })
    };
    wait_for(
        "500 accepted before the outage",
        Duration::from_secs(30),
        || async { (acked.lock().await.len() >= 500).then_some(()) },
    )
    .await;
    redis.kill();
    down.store(true, std::sync::atomic::Ordering::Relaxed);
    // Readiness goes false on every pod.
    for api in &apis {
        wait_for(
            "readyz 503 while redis is down",
            Duration::from_secs(15),
            || async { (api.raw_get("/readyz").await.0 == 503).then_some(()) },
        )
        .await;
    }
    wait_for(
        "accepts refused during the outage",
        Duration::from_secs(15),
        || async { (outage_answers.lock().await.len() >= 20).then_some(()) },
    )
    .await;
    down.store(false, std::sync::atomic::Ordering::Relaxed);
    redis.restart().await;
    for api in &apis {
        wait_for(
            "readyz 200 after redis is back",
            Duration::from_secs(30),
            || async { (api.raw_get("/readyz").await.0 == 200).then_some(()) },
        )
        .await;
    }
    let before = acked.lock().await.len();
    wait_for(
        "accepts again after the restart",
        Duration::from_secs(30),
        || async { (acked.lock().await.len() >= before + 200).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.expect("producer");
    let outage = outage_answers.lock().await.clone();
    assert!(
        outage.iter().all(|&s| s == 503),
        "accepts while redis was down: {outage:?} (never 202 without a write)"
    );
    let acked = acked.lock().await.clone();
    let distinct: HashSet<&String> = acked.iter().map(|(id, _)| id).collect();
    assert_eq!(distinct.len(), acked.len());
    let acked_users: HashSet<&String> = acked.iter().map(|(_, user)| user).collect();
    let unconfirmed = unconfirmed.lock().await.clone();
    // A stored unconfirmed message counts in delivered_unique too, so that count alone cannot
    // say every acknowledged message arrived: wait for the recipients.
    let reached = wait_for(
        "every acknowledged recipient reached",
        Duration::from_secs(60),
        || async {
            let s = wx.stats().await;
            let all = acked_users
                .iter()
                .all(|u| s.per_openid.get(*u).is_some_and(|c| c.delivered > 0));
            all.then_some(s)
        },
    )
    .await;
    println!(
        "{} acknowledged, {} refused during the outage; sandbox unique deliveries {}",
        acked.len(),
        outage.len(),
        reached.delivered_unique
    );
    // An outcome whose write met the outage is recorded when its entry is claimed again
    // (after claimIdle), so a status can trail the sandbox's count by that long.
    for (id, _) in acked.iter().step_by(25) {
        let v = wait_for(
            "every sampled message reported delivered",
            Duration::from_secs(30),
            || async {
                let (status, v) = apis[0].status(id).await;
                (status == 200 && v["status"] == "delivered").then_some(v)
            },
        )
        .await;
        assert_eq!(v["dead_letter"], false, "{v}");
    }
    // Each acknowledged message reached its recipient once (a message recorded again after the
    // outage would reach it a second time, under a new client_msg_id), and nothing reached a
    // recipient whose request was never sent. Counted after the sampling above, so that a late
    // second delivery shows.
    let s = wx.stats().await;
    for user in &acked_users {
        let delivered = s.per_openid.get(*user).map_or(0, |c| c.delivered);
        assert_eq!(
            delivered, 1,
            "{user}: acknowledged, delivered {delivered} times"
        );
    }
    let mut stored_unconfirmed = 0;
    let unacked = s
        .per_openid
        .iter()
        .filter(|(u, c)| c.delivered > 0 && !acked_users.contains(*u));
    for (user, c) in unacked {
        assert!(
            unconfirmed.contains(user),
            "{user}: delivered but never sent"
        );
        assert!(c.delivered <= 1, "{user}: delivered {} times", c.delivered);
        stored_unconfirmed += c.delivered;
    }
    println!(
        "{stored_unconfirmed} of {} requests not answered 202 were stored all the same",
        unconfirmed.len()
    );
    assert_eq!(
        s.delivered_unique,
        acked.len() as u64 + stored_unconfirmed,
        "every delivery is accounted for"
    );
    wxpush_tests::redis::assert_consistent(&redis.url(), false, "redis killed").await;
}

/// A 45009 (daily quota spent) seen by one pod holds the whole channel: a pod started
/// afterwards sends nothing to WeChat and reports itself on hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_45009_on_one_pod_holds_every_pod() {
    a_fault_on_one_pod_holds_every_pod(45009).await;
}

/// A configuration fault on a send (40013: WeChat no longer takes the appid) is the
/// account's, not one pod's: the pod that met it pauses every pod through Redis, and a pod
/// that starts later holds its messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_fault_on_a_send_holds_every_pod() {
    a_fault_on_one_pod_holds_every_pod(40013).await;
}

/// One pod meets `errcode` on a send; the whole channel holds: a pod started afterwards sends
/// nothing to WeChat and reports itself on hold.
async fn a_fault_on_one_pod_holds_every_pod(errcode: i64) {
    let code = errcode.to_string();
    let redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let extra = json!({"rateLimit": {"perSecond": 100000, "burst": 100000, "dailyQuota": 0},
                       "retry": {"throttledBackoff": "60s"}});
    let pods = start_pods(3, &sb_url, &redis.url(), &extra).await;
    for i in 0..3 {
        let (status, v) = pods.pods[i]
            .api
            .send(&template(&format!("q-warm-{i}")))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    wait_unique(&wx, 3, Duration::from_secs(30)).await;
    let (status, v) = wx
        .put_faults(&json!({"errcodes": {code.clone(): 1.0}}))
        .await;
    assert_eq!(status, 200, "{v}");
    for i in 0..30 {
        let (status, _) = pods.pods[i % 3]
            .api
            .send(&template(&format!("q-{i}")))
            .await;
        assert_eq!(status, 202);
    }
    let quota_answers = |s: &StatsSnapshot| s.errcodes.get(code.as_str()).copied().unwrap_or(0);
    wait_for(
        &format!("a {code} from WeChat"),
        Duration::from_secs(30),
        || async { (quota_answers(&wx.stats().await) >= 1).then_some(()) },
    )
    .await;
    // Let the pods that were sending settle on hold.
    let mut last = quota_answers(&wx.stats().await);
    let mut stable_since = Instant::now();
    let settle = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(1) {
        assert!(
            settle.elapsed() < Duration::from_secs(20),
            "{code} answers keep coming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = quota_answers(&wx.stats().await);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    // A new pod: it gets work (the others hold theirs) and must not send any of it.
    let late = start_pods(1, &sb_url, &redis.url(), &extra).await;
    for i in 0..20 {
        let (status, _) = late.pods[0]
            .api
            .send(&template(&format!("q-late-{i}")))
            .await;
        assert_eq!(status, 202);
    }
    let api = late.pods[0].api.clone();
    wait_for("the new pod on hold", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            let (_, v) = api.get("/healthz").await;
            (v["status"] == "on_hold").then_some(())
        }
    })
    .await;
    let s = wx.stats().await;
    println!(
        "{code} answers: {} before the new pod, {} after; sends answered 0: {}",
        last,
        quota_answers(&s),
        sends_ok(&s)
    );
    assert_eq!(
        quota_answers(&s),
        last,
        "the new pod sent nothing: the {code} another pod met holds it"
    );
    assert_eq!(sends_ok(&s), 3, "nothing was delivered after the {code}");
}

/// WeChat invalidating the token now and then (the sandbox's `token_invalidate_every`): the
/// three pods fetch one new token per invalidation between them, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_tokens_are_refreshed_once_for_all_pods() {
    let n = 3000;
    let redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let extra = json!({"rateLimit": {"perSecond": 1500, "burst": 100, "dailyQuota": 0}});
    let pods = start_pods(3, &sb_url, &redis.url(), &extra).await;
    let apis: Vec<Api> = pods.pods.iter().map(|p| p.api.clone()).collect();
    let (status, v) = wx
        .put_faults(&json!({"token_invalidate_every": "400ms"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let msgs: Vec<Value> = (0..n).map(|i| template(&format!("inv-{i}"))).collect();
    for (j, chunk) in msgs.chunks(100).enumerate() {
        let ids = apis[j % 3].batch_ids(chunk).await;
        assert_eq!(ids.len(), chunk.len());
    }
    let s = wait_unique(&wx, n as u64, Duration::from_secs(90)).await;
    let (status, v) = wx.put_faults(&json!({})).await;
    assert_eq!(status, 200, "{v}");
    let forced = s.faults.get("token_invalidations").copied().unwrap_or(0);
    let t = &s.token_calls;
    let calls = t.classic + t.stable;
    println!(
        "{n} delivered; {forced} forced invalidations; token calls {t:?}; 40001 answers {}",
        invalidations(&s)
    );
    assert_eq!(s.delivered_unique, n as u64);
    // One fetch per invalidation for all pods (a `force_refresh` when the stable API still
    // hands out the refused token counts as part of that fetch), plus the first.
    assert!(
        calls - t.stable_force_refresh <= forced + 1,
        "{calls} token calls ({} forced refreshes) for {forced} invalidations across 3 pods",
        t.stable_force_refresh
    );
    wxpush_tests::redis::assert_consistent(&redis.url(), false, "tokens invalidated").await;
}

/// The message ids whose stream entries are pending for the consumer of process `pid`.
fn held_by(redis: &RedisServer, pid: u32) -> (String, Vec<String>) {
    let suffix = format!("-{pid}");
    let info = redis.cli(&["XINFO", "CONSUMERS", "{wxpush:engine-test}:q", "pushers"]);
    let lines: Vec<&str> = info.lines().collect();
    let name = lines
        .windows(2)
        .find(|w| w[0] == "name" && w[1].ends_with(&suffix))
        .map(|w| w[1].to_string())
        .unwrap_or_default();
    let pending = redis.cli(&[
        "XPENDING",
        "{wxpush:engine-test}:q",
        "pushers",
        "-",
        "+",
        "10000",
        &name,
    ]);
    let mut ids = Vec::new();
    for eid in pending
        .lines()
        .filter(|l| l.contains('-') && l.chars().next().is_some_and(|c| c.is_ascii_digit()))
    {
        let entry = redis.cli(&["XRANGE", "{wxpush:engine-test}:q", eid, eid]);
        let fields: Vec<&str> = entry.lines().collect();
        if let Some(i) = fields.iter().position(|f| *f == "id")
            && let Some(id) = fields.get(i + 1)
        {
            ids.push((*id).to_string());
        }
    }
    (name, ids)
}

/// With the default `claimIdle` (60 s), three pushers killed one after another (`kill -9`,
/// a new one started after each): the leases of a killed pusher are taken over within 10 s of
/// its death (its heartbeat expires, another pusher claims them), each is delivered (the time
/// is printed: the taken-over messages then wait for the shared rate like the rest), and every
/// message is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pushers_leases_are_taken_over_within_seconds() {
    let n: usize = 3000;
    let redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let extra = json!({
        "queue": {"redis": {"claimIdle": "60s"}},
        "rateLimit": {"perSecond": 300, "burst": 20, "dailyQuota": 0},
    });
    let mut pods = start_pods(3, &sb_url, &redis.url(), &extra).await;
    let msgs: Vec<Value> = (0..n).map(|i| template(&format!("churn-{i}"))).collect();
    for (j, chunk) in msgs.chunks(100).enumerate() {
        let ids = pods.pods[j % 3].api.batch_ids(chunk).await;
        assert_eq!(ids.len(), chunk.len());
    }
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        wait_for("deliveries go on", Duration::from_secs(30), || async {
            (wx.stats().await.delivered_unique >= (round as u64 + 1) * 300).then_some(())
        })
        .await;
        let pid = pods.pods[0].guard.child.id();
        pods.pods[0].kill9();
        let killed = Instant::now();
        let killed_at = jiff::Timestamp::now();
        let (name, held) = held_by(&redis, pid);
        assert!(!name.is_empty(), "the victim's consumer is in the group");
        // Taken over: the dead consumer holds nothing any more.
        let vname = name.clone();
        let port = redis.port;
        wait_for(
            "the dead consumer's entries taken over",
            Duration::from_secs(30),
            || {
                let vname = vname.clone();
                async move {
                    let p = wxpush_tests::redis::cli(
                        port,
                        &[
                            "XPENDING",
                            "{wxpush:engine-test}:q",
                            "pushers",
                            "-",
                            "+",
                            "1",
                            &vname,
                        ],
                    );
                    p.trim().is_empty().then_some(())
                }
            },
        )
        .await;
        let claimed = killed.elapsed();
        // When each was delivered, from its record (the status reads here take their own time).
        let api = pods.pods[1].api.clone();
        let mut took = claimed;
        for id in &held {
            let api = api.clone();
            let finished = wait_for(
                &format!("{id}, held by the killed pusher, delivered"),
                Duration::from_secs(20),
                || {
                    let api = api.clone();
                    async move {
                        let (_, v) = api.status(id).await;
                        (v["status"] == "delivered")
                            .then(|| v["finished_at"].as_str().map(str::to_string))
                            .flatten()
                    }
                },
            )
            .await;
            let at: jiff::Timestamp = finished.parse().expect("finished_at is a timestamp");
            took = took.max(Duration::try_from(at.duration_since(killed_at)).unwrap_or_default());
        }
        worst = worst.max(took);
        println!(
            "kill {}: {} leased messages of {name} taken over {claimed:.1?} and all delivered \
             {took:.1?} after its death",
            round + 1,
            held.len()
        );
        // The heartbeat's TTL (3 s) plus a look per second, far below claimIdle (60 s).
        assert!(
            claimed <= Duration::from_secs(10),
            "{claimed:?} from the kill to its leases taken over"
        );
        assert!(
            took <= Duration::from_secs(10),
            "{took:?} from the kill to the last of its leases delivered"
        );
        pods.pods.remove(0);
        let dir = tempdir();
        let cfg = redis_config(&sb_url, dir.path(), &redis.url(), &extra);
        pods.pods.push(PusherProc::start(dir.path(), &cfg).await);
        pods._dirs.push(dir);
    }
    let s = wait_unique(&wx, n as u64, Duration::from_secs(60)).await;
    assert_eq!(s.delivered_unique, n as u64);
    let live = pods.pods.len();
    // The group holds exactly the live pushers: the killed ones are deleted once their
    // heartbeat has expired, and an idle pusher keeps its consumer by its heartbeat (Redis
    // creates one on XREADGROUP only when there is something to read).
    let consumers = || {
        let info = redis.cli(&["XINFO", "CONSUMERS", "{wxpush:engine-test}:q", "pushers"]);
        info.lines().filter(|l| *l == "name").count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumers() != live {
        assert!(
            Instant::now() < deadline,
            "not {live} consumers 20 s after the last kill: {}",
            consumers()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "3 kills: worst delivery of a killed pusher's leases {worst:.1?}; {live} consumers in \
         the group for {live} pushers"
    );
    wxpush_tests::redis::assert_consistent(&redis.url(), false, "3 kills").await;
}
