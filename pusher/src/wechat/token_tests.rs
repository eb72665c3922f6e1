//! The token manager against the in-process sandbox (and a closed port for failures).

use std::time::Duration;

use super::*;
use crate::policy::{HumanDuration, Pool, Timeouts};
use wxpush_sandbox::{FaultConfig, Sandbox, SandboxConfig};

const APPID: &str = "wxtokentest000001";
const SECRET: &str = "token-test-secret";

/// A sandbox of the test channel with `faults`.
async fn sandbox_with(faults: FaultConfig) -> wxpush_sandbox::SandboxHandle {
    Sandbox::start(SandboxConfig {
        faults,
        ..SandboxConfig::new(APPID, SECRET)
    })
    .await
    .expect("sandbox")
}

fn manager(base: &str, api: TokenApi, secret: &str) -> (Arc<TokenManager>, Arc<Metrics>) {
    let timeouts = Timeouts {
        connect: HumanDuration::millis(500),
        tls_handshake: HumanDuration::millis(500),
        response_header: HumanDuration::secs(2),
        request: HumanDuration::secs(3),
    };
    let http = Arc::new(HttpClient::new(base, &timeouts, &Pool::default()).expect("client"));
    let metrics = Arc::new(Metrics::new("t"));
    let settings = TokenSettings {
        scope: crate::send::TokenScope::WeChatApp,
        api,
        refresh_before: Duration::from_secs(240),
        app_id: LocalSecret::Inline(APPID.into()),
        app_secret: LocalSecret::Inline(secret.into()),
        retry: Retry {
            throttled_backoff: HumanDuration::millis(300),
            initial_backoff: HumanDuration::millis(300),
            ..Retry::default()
        },
        request_timeout: timeouts.request.get(),
    };
    let m = Arc::new(TokenManager::new(http, settings, Arc::clone(&metrics)));
    (m, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_fetch() {
    let sandbox = sandbox_with(FaultConfig {
        latency: Duration::from_millis(100),
        ..FaultConfig::default()
    })
    .await;
    let (m, _) = manager(&sandbox.base_url(), TokenApi::Classic, SECRET);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let m = Arc::clone(&m);
            tokio::spawn(async move { m.get().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("task").expect("token"));
    }
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "one token for all");
    assert_eq!(sandbox.stats().token_calls.classic, 1, "single flight");
    assert_eq!(format!("{:?}", tokens[0]), "AccessToken(<redacted>)");
}

#[tokio::test]
async fn refreshes_before_expiry_in_the_background() {
    let sandbox = Sandbox::start(SandboxConfig {
        token_expires_in: Duration::from_secs(4),
        // Every token call takes 800 ms, so that the refresh can be seen under way (and still
        // ends well before the first token expires).
        faults: FaultConfig {
            latency: Duration::from_millis(800),
            ..FaultConfig::default()
        },
        ..SandboxConfig::new(APPID, SECRET)
    })
    .await
    .expect("sandbox");
    let (m, _) = manager(&sandbox.base_url(), TokenApi::Classic, SECRET);
    let first = m.get().await.expect("token");
    // refreshBefore (4m) is capped at half the lifetime: the refresh starts after 2 s.
    assert_eq!(m.get().await.expect("cached"), first);
    assert_eq!(sandbox.stats().token_calls.classic, 1);
    // The manager keeps time on the system clock, which tokio's paused clock does not move:
    // poll with a bound until the refresh reaches the sandbox. Every get meanwhile hands out
    // the cached token; the first one past the refresh time starts the refresh.
    let arrived = || sandbox.stats().requests.get("token").copied().unwrap_or(0);
    let start = std::time::Instant::now();
    while arrived() < 2 {
        assert_eq!(m.get().await.expect("cached"), first);
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still valid: handed out at once while the refresh runs.
    assert_eq!(m.get().await.expect("still valid"), first);
    let start = std::time::Instant::now();
    loop {
        let t = m.get().await.expect("token");
        if t != first {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sandbox.stats().token_calls.classic, 2);
}

#[tokio::test]
async fn invalidation_is_compare_and_swap() {
    let sandbox = Sandbox::start(SandboxConfig::new(APPID, SECRET))
        .await
        .expect("sandbox");
    let (m, _) = manager(&sandbox.base_url(), TokenApi::Stable, SECRET);
    let old = m.get().await.expect("token");
    sandbox.invalidate_tokens();
    assert!(m.invalidate(&old), "the current token is invalidated");
    let fresh = m.get().await.expect("fresh");
    assert_ne!(fresh, old);
    // A late report about the old token must not knock out the fresh one.
    assert!(!m.invalidate(&old));
    assert_eq!(m.get().await.expect("cached"), fresh);
    assert_eq!(sandbox.stats().token_calls.stable, 2);
}

#[tokio::test]
async fn config_faults_pause_with_one_probe_per_interval() {
    let sandbox = Sandbox::start(SandboxConfig::new(APPID, SECRET))
        .await
        .expect("sandbox");
    let (m, metrics) = manager(&sandbox.base_url(), TokenApi::Stable, "wrong-secret");
    let err = m.get().await.expect_err("wrong secret");
    let TokenError::Paused { error, until } = err else {
        panic!("expected a pause, got {err:?}");
    };
    assert_eq!(error.errcode, Some(40125));
    assert!(!error.message.contains("wrong-secret"), "{}", error.message);
    assert!(until.is_some());
    assert!(matches!(m.state(), TokenState::Paused { .. }));
    // Hammer it for ~1 s: probes run once per throttledBackoff (300 ms), not per call.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        assert!(m.get().await.is_err());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = sandbox.stats().token_calls.stable;
    assert!((2..=5).contains(&calls), "{calls} token calls in 1 s");
    assert!(
        metrics
            .encode()
            .contains(r#"wxpush_token_requests_total{channel="t",api="stable",result="40125"}"#)
    );
}

#[tokio::test]
async fn transient_failures_back_off_instead_of_fetching_per_call() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (m, metrics) = manager(&format!("http://{closed}"), TokenApi::Stable, SECRET);
    let err = m.get().await.expect_err("refused");
    assert!(matches!(err, TokenError::Unavailable { .. }), "{err:?}");
    for _ in 0..20 {
        let err = m.get().await.expect_err("backing off");
        let TokenError::Unavailable { retry_after, .. } = err else {
            panic!("{err:?}");
        };
        assert!(retry_after.is_some_and(|d| d <= Duration::from_millis(300)));
    }
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"wxpush_token_requests_total{channel="t",api="stable",result="transport"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_sharing_a_coordinator_fetch_one_token() {
    let sandbox = sandbox_with(FaultConfig {
        latency: Duration::from_millis(100),
        ..FaultConfig::default()
    })
    .await;
    // Two pods of one channel, as two managers sharing one coordinator.
    let coord: Arc<dyn crate::coord::Coordinator> =
        Arc::new(crate::coord::EmbeddedCoordinator::new());
    let pods: Vec<Arc<TokenManager>> = (0..2)
        .map(|_| {
            let (m, _) = manager(&sandbox.base_url(), TokenApi::Classic, SECRET);
            let m = Arc::into_inner(m).expect("one owner");
            Arc::new(m.with_shared(Some(Arc::clone(&coord))))
        })
        .collect();
    let tasks: Vec<_> = pods
        .iter()
        .map(|m| {
            let m = Arc::clone(m);
            tokio::spawn(async move { m.get().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("task").expect("token"));
    }
    assert_eq!(tokens[0], tokens[1], "one token for both pods");
    assert_eq!(
        sandbox.stats().token_calls.classic,
        1,
        "one fetch for the channel"
    );
}

/// A stable-token call that hangs is sent again after a second, and the second answer is
/// used: the token arrives well before the first call's `response_header` timeout (2 s here),
/// when the caller would otherwise get an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_stable_token_call_is_sent_again() {
    let sandbox = sandbox_with(FaultConfig {
        hang_share: 1.0,
        hang: Duration::from_secs(30),
        ..FaultConfig::default()
    })
    .await;
    let (m, _) = manager(&sandbox.base_url(), TokenApi::Stable, SECRET);
    let getter = {
        let m = Arc::clone(&m);
        tokio::spawn(async move { m.get().await })
    };
    // The first call reached the sandbox (and hangs there); the next one is answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sandbox.stats().token_calls.stable == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no token call arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sandbox.set_faults(FaultConfig::default()).expect("faults");
    let started = std::time::Instant::now();
    let token = getter
        .await
        .expect("task")
        .expect("a token from the second call");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sandbox.stats().token_calls.stable, 2, "one repeat");
    assert_eq!(m.get().await.expect("cached"), token);
}
