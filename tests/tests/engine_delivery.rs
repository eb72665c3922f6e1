//! The pusher's delivery engine end to end: the real `wxpush-pusher` against the real
//! `wxpush-sandbox`, with and without faults (issue 4, "Done when").
//!
//! Time is scaled down so the suite stays fast; each test says how its numbers map to the
//! issue's (what matters is the scenario: a hang longer than the timeout, an outage longer than
//! several backoffs, tokens dying under load).

use std::time::{Duration, Instant};

use serde_json::json;
use wxpush_tests::pusher::{PusherProc, config, send_all, tempdir, template};
use wxpush_tests::sandbox::{self, WxClient};

/// 10,000 messages, no faults: every one delivered exactly once, and no send repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_no_duplicate_send() {
    const N: usize = 10_000;
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let pusher = PusherProc::start(dir.path(), &config(&sb_url, dir.path(), &json!({}))).await;
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("u{i}"))).collect();
    let start = Instant::now();
    let ids = send_all(&pusher.api, &msgs, 200, 4).await;
    assert_eq!(ids.len(), N);
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(120))
        .await;
    let took = start.elapsed();
    let stats = wx.stats().await;
    assert_eq!(stats.delivered_unique, N as u64);
    // A send slower than a multiple of the observed p99 (a hiccup on a loaded machine) may get
    // a hedge under the same client_msg_id: the only repeated sends allowed.
    let hedged = pusher.api.metric("wxpush_hedged_sends_total", &[]).await as u64;
    assert!(
        stats.duplicates_suppressed <= hedged,
        "no send repeated but hedges"
    );
    let sends = stats.requests.get("template_send").copied().unwrap_or(0);
    assert!(
        (N as u64..=N as u64 + hedged).contains(&sends),
        "{sends} sends, {hedged} hedges"
    );
    assert!(
        stats
            .per_openid
            .values()
            .all(|c| c.delivered == 1 && c.requests <= 2),
        "each recipient got exactly one delivery"
    );
    let (code, doc) = pusher.api.status(&ids[N / 2]).await;
    assert_eq!(code, 200);
    assert_eq!(doc["status"], "delivered", "{doc}");
    assert_eq!(doc["attempts"], 1);
    assert!(doc["msgid"].as_i64().is_some(), "{doc}");
    eprintln!("10,000 messages delivered in {took:?}");
}

/// 1% of sends hang. Scaled: the 30 s hang against the default 10 s request timeout
/// becomes a 3 s hang against a 500 ms timeout (the hang outlasts the timeout six-fold).
/// Everything is delivered; no attempt outlives the timeout; the hung sends are retried with the
/// same client_msg_id (the sandbox, which processed them before hanging, suppresses the retries
/// as duplicates: one delivery per message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_sends_are_retried_with_the_same_client_msg_id() {
    const N: usize = 2000;
    let (_sb, sb_url) = sandbox::spawn(&["--fault-hang-share", "0.01", "--fault-hang", "3s"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({
            "timeouts": {"connect": "500ms", "tlsHandshake": "500ms",
                         "responseHeader": "500ms", "request": "500ms"},
            "retry": {"initialBackoff": "100ms", "maxBackoff": "1s", "maxAttempts": 10},
            "circuitBreaker": {"enabled": false},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("h{i}"))).collect();
    send_all(&pusher.api, &msgs, 200, 4).await;
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(120))
        .await;
    let stats = wx.stats().await;
    let hangs = stats.faults.get("hang").copied().unwrap_or(0);
    assert!(hangs >= 5, "the fault fired ({hangs} hangs)");
    assert_eq!(stats.delivered_unique, N as u64, "one delivery per message");
    assert!(
        stats.duplicates_suppressed >= 1,
        "hung sends were retried with their client_msg_id"
    );
    assert!(stats.per_openid.values().all(|c| c.delivered == 1));
    // Every attempt ended within the request timeout (histogram bucket le=1.024 s holds all).
    let text = pusher.api.metrics().await;
    let count =
        wxpush_tests::pusher::metric_value(&text, "wxpush_send_duration_seconds_count", &[]);
    let within = wxpush_tests::pusher::metric_value(
        &text,
        "wxpush_send_duration_seconds_bucket",
        &[("le", "1.024")],
    );
    assert!(count >= N as f64, "attempts recorded: {count}");
    assert_eq!(
        within, count,
        "no attempt outlived the 500 ms request timeout"
    );
    let timeouts = wxpush_tests::pusher::metric_value(
        &text,
        "wxpush_send_attempts_total",
        &[("result", "timeout")],
    );
    assert!(timeouts >= 1.0, "hangs were cut off as timeouts");
}

/// Classic tokens, all revoked every second while 3,000 messages flow for several seconds:
/// all delivered, and token fetches stay at about one per revocation (one request in flight
/// per appid: a storm would fetch once per worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_tokens_invalidated_under_load() {
    const N: usize = 3000;
    let (_sb, sb_url) = sandbox::spawn(&[
        "--fault-token-invalidate-every",
        "1s",
        "--fault-latency",
        "2ms",
    ]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({
            "token": {"api": "classic"},
            "retry": {"initialBackoff": "50ms", "maxBackoff": "500ms", "maxAttempts": 10},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let start = Instant::now();
    // Spread the load over ~5 s so that several revocations hit it.
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let msgs: Vec<_> = chunk.iter().map(|i| template(&format!("t{i}"))).collect();
        pusher.api.batch_ids(&msgs).await;
        tokio::time::sleep(Duration::from_millis(160)).await;
    }
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(120))
        .await;
    let stats = wx.stats().await;
    let revocations = stats
        .faults
        .get("token_invalidations")
        .copied()
        .unwrap_or(0);
    let fetched = stats.token_calls.classic;
    eprintln!(
        "{:?}: {revocations} revocations, {fetched} classic token calls, 40001 answers: {:?}",
        start.elapsed(),
        stats.errcodes.get("40001")
    );
    assert!(
        revocations >= 3,
        "tokens were revoked during the load ({revocations})"
    );
    assert!(
        stats.errcodes.get("40001").copied().unwrap_or(0) >= 1,
        "sends met revoked tokens"
    );
    assert!(
        fetched <= revocations + 2,
        "{fetched} token calls for {revocations} revocations: more than one refresh per revocation"
    );
    // Every token call takes the injected 2 ms at the sandbox, so overlapping refreshes show.
    assert!(
        stats.token_calls.max_in_flight <= 1,
        "{} token requests were in flight at once",
        stats.token_calls.max_in_flight
    );
    assert_eq!(stats.delivered_unique, N as u64);
}

/// 5% errcode -1 plus an outage. Scaled: the 10 s outage becomes 3 s, with
/// `retry.maxBackoff` 1 s and a 1 s breaker so that several backoffs and breaker cycles fall
/// inside it. Everything is delivered after recovery; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_busy_and_an_outage_then_all_delivered() {
    const N: usize = 3000;
    let (_sb, sb_url) = sandbox::spawn(&["--fault-errcode=-1=0.05"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({
            "timeouts": {"connect": "300ms", "request": "1s", "responseHeader": "1s"},
            "retry": {"initialBackoff": "100ms", "maxBackoff": "1s", "maxAttempts": 30},
            "circuitBreaker": {"window": "2s", "openDuration": "1s", "minimumRequests": 10},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("b{i}"))).collect();
    send_all(&pusher.api, &msgs[..N / 3], 100, 2).await;
    // The outage starts now, while the rest arrives.
    let (code, v) = wx
        .patch_faults(&json!({"outage": {"after": "0s", "duration": "3s"}}))
        .await;
    assert_eq!(code, 200, "{v}");
    send_all(&pusher.api, &msgs[N / 3..], 100, 2).await;
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(120))
        .await;
    let stats = wx.stats().await;
    assert!(
        stats.faults.get("outages").copied().unwrap_or(0) >= 1,
        "{:?}",
        stats.faults
    );
    assert!(
        stats.faults.get("errcode:-1").copied().unwrap_or(0) >= 10,
        "{:?}",
        stats.faults
    );
    assert_eq!(stats.delivered_unique, N as u64);
    let dead = pusher
        .api
        .metric("wxpush_queue_messages", &[("state", "dead")])
        .await;
    assert_eq!(dead, 0.0, "nothing dead-lettered");
    let (_, page) = pusher.api.get("/v1/dead-letters").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page}");
}
