//! Hedged sends, recovery after an outage and connection reuse, end to end: the real
//! `wxpush-pusher` against the real `wxpush-sandbox` (issues 13 and 20, "Done when"). These
//! tests prove mechanisms, never speed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::ChildGuard;
use wxpush_tests::pusher::{PusherProc, config, send_all, tempdir, template};
use wxpush_tests::sandbox::{self, WxClient};

/// The sandbox's process and the queue's directory, kept for as long as a test runs.
type Keep = (ChildGuard, tempfile::TempDir);

/// Send attempts that failed on the way (a broken connection or a timeout).
async fn failed_sends(pusher: &PusherProc) -> f64 {
    let api = &pusher.api;
    api.metric("wxpush_send_attempts_total", &[("result", "transport")])
        .await
        + api
            .metric("wxpush_send_attempts_total", &[("result", "timeout")])
            .await
}

/// What each test starts from: the sandbox run with `args`, a client of it, and a pusher on a
/// fresh queue whose config the test's `policy` overrides.
async fn rig(args: &[&str], policy: &Value) -> (Keep, WxClient, PusherProc) {
    let (sandbox, sb_url) = sandbox::spawn(args);
    let dir = tempdir();
    let cfg = config(&sb_url, dir.path(), policy);
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    ((sandbox, dir), WxClient::new(sb_url), pusher)
}

/// Hedges forced on by a tail fault (5 % of sends hang 5 s once the pusher has learnt the
/// usual latency): a hedge goes out under the same client_msg_id, and the sandbox, which
/// de-duplicates on it, delivers every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_send_never_produces_two_deliveries() {
    const WARM: usize = 600;
    const N: usize = 1000;
    let (_keep, wx, pusher) = rig(
        &["--fault-latency", "2ms", "--daily-quota", "unlimited"],
        &json!({
            "rateLimit": {"perSecond": 100000, "burst": 100000, "dailyQuota": 0},
            "retry": {"initialBackoff": "50ms", "maxBackoff": "500ms", "maxAttempts": 20},
            "circuitBreaker": {"enabled": false},
        }),
    )
    .await;
    let warm: Vec<_> = (0..WARM).map(|i| template(&format!("w{i}"))).collect();
    send_all(&pusher.api, &warm, 100, 2).await;
    pusher
        .api
        .wait_delivered(WARM as u64, Duration::from_secs(60))
        .await;
    let (code, _) = wx
        .put_faults(&json!({"latency": "2ms", "hang_share": 0.05, "hang": "5s"}))
        .await;
    assert_eq!(code, 200);
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("h{i}"))).collect();
    send_all(&pusher.api, &msgs, 100, 2).await;
    pusher
        .api
        .wait_delivered((WARM + N) as u64, Duration::from_secs(120))
        .await;
    let hedged = pusher.api.metric("wxpush_hedged_sends_total", &[]).await;
    assert!(hedged >= 1.0, "the tail fault forced hedges ({hedged})");
    let stats = wx.stats().await;
    assert!(stats.faults.get("hang").copied().unwrap_or(0) >= 1);
    assert_eq!(
        stats.delivered_unique,
        (WARM + N) as u64,
        "one delivery each"
    );
    assert!(
        stats.per_openid.values().all(|c| c.delivered == 1),
        "no recipient got two deliveries"
    );
    assert!(
        stats.duplicates_suppressed >= 1,
        "hedges (and retries) reached the sandbox under the same client_msg_id"
    );
}

/// An outage: sends fail and are retried only after a long backoff (20 s); once the sandbox is
/// back the breaker's early probe closes it and the delayed retries are pulled in, so every
/// message is delivered long before its backoff ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_retries_are_pulled_in_when_the_breaker_closes() {
    const N: usize = 50;
    let (_keep, wx, pusher) = rig(
        &["--fault-latency", "1ms"],
        &json!({
            "timeouts": {"connect": "300ms", "tlsHandshake": "300ms",
                         "responseHeader": "1s", "request": "2s"},
            "retry": {"initialBackoff": "20s", "maxBackoff": "30s", "jitter": 0.0,
                      "maxAttempts": 10},
            "circuitBreaker": {"minimumRequests": 5, "failureRatio": 0.5, "window": "10s",
                               "openDuration": "30s", "firstProbeAfter": "200ms",
                               "halfOpenProbes": 1},
        }),
    )
    .await;
    send_all(&pusher.api, &[template("warm")], 1, 1).await;
    pusher.api.wait_delivered(1, Duration::from_secs(30)).await;
    let (code, _) = wx
        .put_faults(&json!({"latency": "1ms", "outage": {"duration": "2s"}}))
        .await;
    assert_eq!(code, 200);
    let start = Instant::now();
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("o{i}"))).collect();
    send_all(&pusher.api, &msgs, 10, 1).await;
    pusher
        .api
        .wait_delivered(1 + N as u64, Duration::from_secs(15))
        .await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "delivered {took:?} after the outage began, before the 20 s backoff"
    );
    let failed = failed_sends(&pusher).await;
    assert!(failed >= 1.0, "the outage failed attempts ({failed})");
    let opens = pusher.api.metric("wxpush_circuit_opens_total", &[]).await;
    assert!(opens >= 1.0, "the breaker opened");
    assert_eq!(wx.stats().await.delivered_unique, 1 + N as u64);
}

/// The pool follows the concurrency limit: with the default settings and a slow upstream (so
/// that well over 64 requests are in flight, the old fixed idle cap), a steady run opens about
/// one connection per request that was ever under way at once, not one per request above the
/// idle cap. Counted by the pusher (connections opened, most requests under way at once) and
/// checked against the sandbox (connections that carried an API request); no timing is
/// asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_load_opens_each_connection_once() {
    const N: usize = 3000;
    // The defaults of `concurrency` (the test helper's config pins maxInFlight to 64).
    let (_keep, wx, pusher) = rig(
        &["--fault-latency", "200ms", "--daily-quota", "unlimited"],
        &json!({"concurrency": {"maxInFlight": 1024, "adaptive": true}}),
    )
    .await;
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("c{i}"))).collect();
    send_all(&pusher.api, &msgs, 500, 2).await;
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(120))
        .await;
    let stats = wx.stats().await;
    assert_eq!(stats.delivered_unique, N as u64);
    let peak = pusher.api.metric("wxpush_wechat_requests_peak", &[]).await;
    let opened = pusher
        .api
        .metric("wxpush_wechat_connections_opened_total", &[])
        .await;
    let seen = stats.api_connections as f64;
    eprintln!(
        "peak {peak} under way; {opened} connections opened, {seen} seen by the sandbox \
         (most sends there at once: {})",
        stats.sends_max_in_flight
    );
    assert!(
        peak > 64.0,
        "the limit climbed past the old idle cap of 64 (peak under way {peak})"
    );
    assert!(
        opened <= peak * 1.1,
        "{opened} connections opened for a peak of {peak} requests under way"
    );
    // The pusher's count is not flattering itself: every connection that carried a request
    // to the sandbox is in it.
    assert!(
        seen <= opened,
        "the sandbox saw {seen} connections, the pusher counted {opened}"
    );
}

/// The pool shrinks gradually when the load falls: a burst drives well over 64 requests in
/// flight against a slow sandbox, then one message at a time follows. The connections the
/// burst no longer needs close at most `1 + w × pool.closesPerSecond` in any window of `w`
/// seconds (counted by polling `wxpush_wechat_connections_closed_total{reason="idle"}`), the
/// single messages keep at least their connection, and no send fails. Counted, never timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_gradually_when_the_load_falls() {
    const BURST: usize = 600;
    const RATE: f64 = 20.0;
    let (_keep, wx, pusher) = rig(
        &["--fault-latency", "200ms", "--daily-quota", "unlimited"],
        &json!({
            "concurrency": {"maxInFlight": 1024, "adaptive": true},
            "timeouts": {"responseHeader": "1s", "request": "1s"},
            "pool": {"idleTimeout": "500ms", "closesPerSecond": RATE as u32},
        }),
    )
    .await;
    let msgs: Vec<_> = (0..BURST).map(|i| template(&format!("b{i}"))).collect();
    send_all(&pusher.api, &msgs, 500, 2).await;
    pusher
        .api
        .wait_delivered(BURST as u64, Duration::from_secs(60))
        .await;
    let peak = pusher.api.metric("wxpush_wechat_requests_peak", &[]).await;
    let opened = pusher
        .api
        .metric("wxpush_wechat_connections_opened_total", &[])
        .await;
    assert!(
        peak > 64.0,
        "the burst had {peak} requests under way at once"
    );
    let idle = |api: wxpush_tests::pusher::Api| async move {
        api.metric(
            "wxpush_wechat_connections_closed_total",
            &[("reason", "idle")],
        )
        .await
    };
    // One message at a time until the burst's surplus closed (bounded in count).
    let mut samples = vec![(Instant::now(), idle(pusher.api.clone()).await)];
    let mut sent = BURST;
    for i in 0..200 {
        if samples.last().map_or(0.0, |s| s.1) >= opened - 2.0 {
            break;
        }
        send_all(&pusher.api, &[template(&format!("s{i}"))], 1, 1).await;
        sent += 1;
        pusher
            .api
            .wait_delivered(sent as u64, Duration::from_secs(10))
            .await;
        samples.push((Instant::now(), idle(pusher.api.clone()).await));
    }
    let closed = samples.last().map_or(0.0, |s| s.1);
    let other = pusher
        .api
        .metric(
            "wxpush_wechat_connections_closed_total",
            &[("reason", "other")],
        )
        .await;
    let now_opened = pusher
        .api
        .metric("wxpush_wechat_connections_opened_total", &[])
        .await;
    eprintln!(
        "peak {peak}; opened {opened} in the burst, {now_opened} in all; closed idle {closed}, \
         other {other}; {} samples",
        samples.len()
    );
    assert!(
        closed >= opened - 2.0,
        "the burst's surplus closed ({closed} of {opened})"
    );
    assert!(
        now_opened - closed - other >= 1.0,
        "the single messages kept a connection"
    );
    for (i, (t0, c0)) in samples.iter().enumerate() {
        for (t1, c1) in &samples[i + 1..] {
            let w = t1.duration_since(*t0);
            if w <= Duration::from_secs(1) {
                assert!(
                    c1 - c0 <= 1.0 + RATE,
                    "{} closes within {w:?} (at most {} a second)",
                    c1 - c0,
                    RATE
                );
            }
        }
    }
    let failed = failed_sends(&pusher).await;
    assert_eq!(failed, 0.0, "no send failed while connections closed");
    assert_eq!(wx.stats().await.delivered_unique, sent as u64);
}
