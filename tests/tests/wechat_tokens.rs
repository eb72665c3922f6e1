//! The WeChat sender's token handling against the real sandbox over HTTP: single flight under
//! token storms, stable-token reuse, one refresh and one retry on 40001, configuration faults
//! that pause without looping and heal when the credentials are fixed.

mod wechat_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wechat_support::{config, counting_proxy, sandbox, sandbox_config, send, sender, template};
use wxpush_pusher::send::ErrorKind;
use wxpush_pusher::wechat::{Health, SendOutcome};
use wxpush_sandbox::{FaultConfig, SandboxConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_storm_with_64_senders_keeps_one_token_request_in_flight() {
    let sb = sandbox(SandboxConfig {
        faults: FaultConfig {
            token_invalidate_every: Some(Duration::from_millis(500)),
            ..FaultConfig::default()
        },
        ..sandbox_config()
    })
    .await;
    let (proxy, counters) = counting_proxy(sb.addr()).await;
    let cfg = config(
        &format!("http://{proxy}"),
        "token: {api: classic}\ncircuitBreaker: {enabled: false}\nrateLimit: {dailyQuota: 0}\n",
    );
    let (sender, _) = sender(&cfg);
    let start = Instant::now();
    let run_for = Duration::from_millis(3000);
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let sender = Arc::clone(&sender);
            tokio::spawn(async move {
                let (mut delivered, mut token_retries) = (0u64, 0u64);
                let mut i = 0;
                while start.elapsed() < run_for {
                    let body = template(&format!("user-{w}"), &format!("m-{w}-{i}"));
                    i += 1;
                    // As the dispatcher does: retry a Retry outcome (same client_msg_id).
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        match send(&sender, &body).await {
                            SendOutcome::Delivered { .. } => break,
                            SendOutcome::Retry { error, .. }
                                if error.kind == ErrorKind::Token && tries < 5 =>
                            {
                                token_retries += 1;
                            }
                            other => panic!("worker {w}: {other:?}"),
                        }
                    }
                    delivered += 1;
                }
                (delivered, token_retries)
            })
        })
        .collect();
    let (mut delivered, mut token_retries) = (0, 0);
    for w in workers {
        let (d, r) = w.await.expect("worker");
        delivered += d;
        token_retries += r;
    }
    let stats = sb.stats();
    let invalidations = stats
        .faults
        .get("token_invalidations")
        .copied()
        .unwrap_or(0);
    let max = counters.token_max.load(Ordering::SeqCst);
    let token_calls = stats.token_calls.classic;
    println!(
        "delivered {delivered} in {:?}; {invalidations} invalidations, {token_calls} token \
         calls, at most {max} in flight, {token_retries} sends needed a second attempt",
        start.elapsed()
    );
    assert!(invalidations >= 4, "the storm happened: {invalidations}");
    assert_eq!(max, 1, "never more than one token request in flight");
    assert!(
        token_calls <= invalidations + 2,
        "one fetch per invalidation: {token_calls} calls for {invalidations} invalidations"
    );
    assert_eq!(
        stats.delivered_unique, delivered,
        "every message delivered once"
    );
}

#[tokio::test]
async fn stable_token_is_fetched_once_and_reused() {
    let sb = sandbox(sandbox_config()).await;
    let (sender, metrics) = sender(&config(&sb.base_url(), ""));
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let sender = Arc::clone(&sender);
            tokio::spawn(async move {
                for i in 0..10 {
                    let body = template("u", &format!("s-{w}-{i}"));
                    let out = send(&sender, &body).await;
                    assert!(
                        matches!(out, SendOutcome::Delivered { msgid: Some(_), .. }),
                        "{out:?}"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let stats = sb.stats();
    assert_eq!(stats.delivered_unique, 160);
    assert_eq!(stats.token_calls.stable, 1, "{:?}", stats.token_calls);
    assert_eq!(stats.token_calls.classic, 0);
    let text = metrics.encode();
    assert!(
        text.contains(r#"wxpush_token_requests_total{channel="t",api="stable",result="ok"} 1"#)
    );
    assert!(text.contains(r#"wxpush_send_attempts_total{channel="t",result="ok"} 160"#));
    assert!(text.contains(r#"wxpush_inflight_requests{channel="t"} 0"#));
}

#[tokio::test]
async fn refused_token_mid_flight_means_one_refresh_and_one_retry() {
    let sb = sandbox(sandbox_config()).await;
    let (sender, metrics) = sender(&config(&sb.base_url(), ""));
    assert!(matches!(
        send(&sender, &template("u", "a")).await,
        SendOutcome::Delivered { .. }
    ));
    assert_eq!(sb.invalidate_tokens(), 1);
    let out = send(&sender, &template("u", "b")).await;
    assert!(matches!(out, SendOutcome::Delivered { .. }), "{out:?}");
    let stats = sb.stats();
    assert_eq!(stats.token_calls.stable, 2, "one refresh");
    assert_eq!(stats.requests.get("template_send"), Some(&3), "one retry");
    assert_eq!(stats.errcodes.get("40001"), Some(&1));
    assert_eq!(stats.delivered_unique, 2);
    assert!(
        metrics
            .encode()
            .contains(r#"wxpush_send_attempts_total{channel="t",result="retryable"} 1"#)
    );
}

#[tokio::test]
async fn config_faults_pause_without_looping_and_heal_when_credentials_are_fixed() {
    let sb = sandbox(sandbox_config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("appSecret");
    std::fs::write(&secret_file, "not-the-secret\n").expect("write secret");
    let mut cfg = config(&sb.base_url(), "retry: {throttledBackoff: 400ms}\n");
    cfg.credentials.app_secret = None;
    cfg.credentials.app_secret_file = Some(secret_file.clone());
    let (sender, metrics) = sender(&cfg);

    let start = Instant::now();
    let mut paused = 0;
    while start.elapsed() < Duration::from_millis(1200) {
        let bodies: Vec<_> = (0..16).map(|i| template("u", &format!("p{i}"))).collect();
        let outs = futures::future::join_all(bodies.iter().map(|b| send(&sender, b))).await;
        for out in outs {
            let SendOutcome::Paused { error, until } = out else {
                panic!("expected Paused, got {out:?}");
            };
            assert_eq!(error.errcode, Some(40125), "{error:?}");
            assert!(until.is_some());
            assert!(!error.message.contains("not-the-secret"));
            paused += 1;
        }
    }
    let calls = sb.stats().token_calls.stable;
    // One fetch, then one probe per 400 ms: not one per send.
    assert!(
        (2..=5).contains(&calls),
        "{calls} token calls for {paused} sends"
    );
    assert_eq!(
        sb.stats()
            .requests
            .get("template_send")
            .copied()
            .unwrap_or(0),
        0
    );
    let health = sender.health();
    assert!(
        matches!(&health.token, Health::Paused { reason, .. } if reason.errcode == Some(40125))
    );
    assert!(!health.can_send());
    let json = serde_json::to_string(&health).expect("health serialises");
    assert!(
        json.contains(r#""state":"paused""#) && !json.contains("not-the-secret"),
        "{json}"
    );
    assert!(
        metrics
            .encode()
            .contains(r#"wxpush_channel_paused{channel="t"} 1"#)
    );

    // The Secret is fixed: the next probe re-reads the file and the channel resumes.
    std::fs::write(&secret_file, format!("{}\n", wechat_support::SECRET)).expect("fix secret");
    let healed = Instant::now();
    loop {
        match send(&sender, &template("u", "healed")).await {
            SendOutcome::Delivered { .. } => break,
            SendOutcome::Paused { .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(healed.elapsed() < Duration::from_secs(3), "did not heal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        healed.elapsed() <= Duration::from_millis(800),
        "{:?}",
        healed.elapsed()
    );
    assert!(sender.health().can_send());
    assert!(
        metrics
            .encode()
            .contains(r#"wxpush_channel_paused{channel="t"} 0"#)
    );
}
