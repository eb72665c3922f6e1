//! The WeChat sender against the sandbox's faults over real HTTP: hangs hit the response-header
//! timeout and are retried safely with the same client_msg_id; an outage opens the breaker,
//! which probes and closes; quotas and permanent errcodes are classified as docs/wechat-api.md says.

mod wechat_support;

use std::time::{Duration, Instant, SystemTime};

use wechat_support::{config, sandbox, sandbox_config, send, sender, template};
use wxpush_pusher::send::ErrorKind;
use wxpush_pusher::wechat::{Circuit, SendOutcome};
use wxpush_sandbox::{FaultConfig, OutageSpec, SandboxConfig};

#[tokio::test]
async fn a_hang_hits_the_response_header_timeout_and_the_retry_is_deduplicated() {
    let sb = sandbox(sandbox_config()).await;
    let cfg = config(
        &sb.base_url(),
        "timeouts: {connect: 1s, tlsHandshake: 1s, responseHeader: 300ms, request: 2s}\n",
    );
    let (sender, metrics) = sender(&cfg);
    // Fetch the token first, so only the send hangs.
    assert!(matches!(
        send(&sender, &template("u", "warm")).await,
        SendOutcome::Delivered { .. }
    ));
    sb.set_faults(FaultConfig {
        hang_share: 1.0,
        hang: Duration::from_secs(30),
        ..FaultConfig::default()
    })
    .expect("faults");
    let body = template("u", "order-42");
    let start = Instant::now();
    let out = send(&sender, &body).await;
    let took = start.elapsed();
    let SendOutcome::Retry { error, .. } = out else {
        panic!("expected Retry, got {out:?}");
    };
    assert_eq!(error.kind, ErrorKind::TimeoutResponseHeader, "{error:?}");
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(700)).contains(&took),
        "{took:?}"
    );
    sb.set_faults(FaultConfig::default()).expect("faults off");
    // The hung request was processed first: the retry with the same client_msg_id is
    // answered with the first msgid and not delivered twice.
    assert!(matches!(
        send(&sender, &body).await,
        SendOutcome::Delivered { msgid: Some(_), .. }
    ));
    let stats = sb.stats();
    assert_eq!(stats.delivered_unique, 2, "warm-up + order-42 once");
    assert_eq!(stats.duplicates_suppressed, 1);
    let text = metrics.encode();
    assert!(text.contains(r#"wxpush_send_attempts_total{channel="t",result="timeout"} 1"#));
    assert!(text.contains(r#"wxpush_send_timeouts_total{channel="t",phase="response_header"} 1"#));
}

#[tokio::test]
async fn an_outage_opens_the_breaker_which_probes_and_closes() {
    let sb = sandbox(sandbox_config()).await;
    let cfg = config(
        &sb.base_url(),
        "timeouts: {connect: 300ms, tlsHandshake: 300ms, responseHeader: 500ms, request: 1s}\n\
         circuitBreaker: {minimumRequests: 5, failureRatio: 0.5, window: 10s, openDuration: 400ms, halfOpenProbes: 2}\n",
    );
    let (sender, metrics) = sender(&cfg);
    assert!(matches!(
        send(&sender, &template("u", "warm")).await,
        SendOutcome::Delivered { .. }
    ));
    sb.set_faults(FaultConfig {
        outage: Some(OutageSpec {
            after: Duration::ZERO,
            duration: Duration::from_millis(1500),
        }),
        ..FaultConfig::default()
    })
    .expect("outage");
    let start = Instant::now();
    let (mut transport, mut open, mut delivered_at) = (0, 0, None);
    let mut states = Vec::new();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(6) {
        i += 1;
        match send(&sender, &template("u", &format!("o{i}"))).await {
            SendOutcome::Retry { error, .. } => {
                assert_eq!(error.kind, ErrorKind::Transport, "{error:?}");
                transport += 1;
            }
            SendOutcome::CircuitOpen { retry_after } => {
                assert!(retry_after <= Duration::from_millis(400));
                open += 1;
            }
            SendOutcome::Delivered { .. } => {
                delivered_at = Some(start.elapsed());
                break;
            }
            other => panic!("{other:?}"),
        }
        let c = sender.health().circuit;
        if states.last() != Some(&c) {
            states.push(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_at = delivered_at.expect("delivered after the outage");
    println!(
        "transport {transport}, circuit-open {open}, delivered at {delivered_at:?}, states {states:?}"
    );
    assert!(transport >= 4, "the breaker counted the failures");
    assert!(open > transport, "while open, sends are not attempted");
    assert!(states.contains(&Circuit::Open));
    assert!(delivered_at >= Duration::from_millis(1500));
    // Two successful probes close it.
    assert!(matches!(
        send(&sender, &template("u", "after")).await,
        SendOutcome::Delivered { .. }
    ));
    assert_eq!(sender.health().circuit, Circuit::Closed);
    assert!(
        metrics
            .encode()
            .contains(r#"wxpush_circuit_state{channel="t"} 0"#)
    );
}

#[tokio::test]
async fn errcodes_are_classified_over_the_wire() {
    let sb = sandbox(SandboxConfig {
        users: Some(["known".to_string()].into()),
        ..sandbox_config()
    })
    .await;
    let cfg = config(&sb.base_url(), "retry: {throttledBackoff: 2s}\n");
    let (sender, _) = sender(&cfg);
    // 40003: permanent.
    let out = send(&sender, &template("stranger", "x1")).await;
    assert!(
        matches!(&out, SendOutcome::Permanent { error } if error.errcode == Some(40003)),
        "{out:?}"
    );
    // -1 and HTTP 5xx: retried with backoff.
    for (faults, kind) in [
        (
            FaultConfig {
                errcodes: [(-1, 1.0)].into(),
                ..FaultConfig::default()
            },
            ErrorKind::Errcode,
        ),
        (
            FaultConfig {
                http_5xx_share: 1.0,
                ..FaultConfig::default()
            },
            ErrorKind::Http5xx,
        ),
    ] {
        sb.set_faults(faults).expect("faults");
        let out = send(&sender, &template("known", "x2")).await;
        assert!(
            matches!(&out, SendOutcome::Retry { error, not_before: None, .. } if error.kind == kind),
            "{out:?}"
        );
    }
    // 43117: per-openid delay.
    sb.set_faults(FaultConfig {
        errcodes: [(43117, 1.0)].into(),
        ..FaultConfig::default()
    })
    .expect("faults");
    let out = send(&sender, &template("known", "x3")).await;
    assert!(
        matches!(out, SendOutcome::Retry { not_before: Some(d), .. } if d >= Duration::from_secs(2)),
        "{out:?}"
    );
    // 45011: this message waits, and the whole channel slows down without calling WeChat.
    sb.set_faults(FaultConfig {
        errcodes: [(45011, 1.0)].into(),
        ..FaultConfig::default()
    })
    .expect("faults");
    let out = send(&sender, &template("known", "x4")).await;
    assert!(
        matches!(out, SendOutcome::Retry { not_before: Some(d), .. } if d >= Duration::from_secs(2)),
        "{out:?}"
    );
    let before = sb.stats().requests_total;
    let out = send(&sender, &template("known", "x5")).await;
    assert!(
        matches!(&out, SendOutcome::Retry { error, not_before: Some(_), .. } if error.kind == ErrorKind::Throttled),
        "{out:?}"
    );
    assert_eq!(
        sb.stats().requests_total,
        before,
        "no request while throttled"
    );
}

#[tokio::test]
async fn daily_quota_parks_the_channel_until_midnight_beijing_time() {
    let sb = sandbox(sandbox_config()).await;
    let (sender, metrics) = sender(&config(&sb.base_url(), ""));
    sb.set_faults(FaultConfig {
        errcodes: [(45009, 1.0)].into(),
        ..FaultConfig::default()
    })
    .expect("faults");
    let out = send(&sender, &template("u", "q1")).await;
    let SendOutcome::Paused { error, until } = out else {
        panic!("{out:?}");
    };
    assert_eq!(error.errcode, Some(45009));
    let until = until.expect("a reset time");
    let secs = until
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    assert_eq!((secs + 8 * 3600) % 86_400, 0, "midnight in Beijing");
    assert!(until > SystemTime::now() && until <= SystemTime::now() + Duration::from_secs(86_400));
    let before = sb.stats().requests_total;
    for i in 0..10 {
        let out = send(&sender, &template("u", &format!("q{i}"))).await;
        assert!(matches!(out, SendOutcome::Paused { .. }), "{out:?}");
    }
    assert_eq!(sb.stats().requests_total, before, "no loop against WeChat");
    assert!(!sender.health().can_send());
    assert!(
        metrics
            .encode()
            .contains(r#"wxpush_channel_paused{channel="t"} 1"#)
    );
}

#[tokio::test]
async fn local_daily_quota_is_enforced() {
    let sb = sandbox(sandbox_config()).await;
    let (sender, _) = sender(&config(&sb.base_url(), "rateLimit: {dailyQuota: 3}\n"));
    for i in 0..3 {
        let out = send(&sender, &template("u", &format!("d{i}"))).await;
        assert!(matches!(out, SendOutcome::Delivered { .. }), "{out:?}");
    }
    let out = send(&sender, &template("u", "d3")).await;
    assert!(
        matches!(&out, SendOutcome::Paused { error, until: Some(_) } if error.kind == ErrorKind::Quota),
        "{out:?}"
    );
    assert_eq!(sb.stats().delivered_unique, 3);
}
