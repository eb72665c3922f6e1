//! The sandbox's access_token APIs, black-box over HTTP: classic issuance and grace period,
//! stable reuse and force_refresh limits, expiry, credential and quota errors, and the codes a
//! send gets for bad tokens.

use std::time::{Duration, Instant};

use serde_json::json;
use wxpush_tests::sandbox::{APPID, SECRET, config, errcode, start};
use wxpush_tests::wait_for;

#[tokio::test]
async fn classic_credential_errors() {
    let sb = start(config()).await;
    let c = &sb.api;
    assert_eq!(
        errcode(&c.classic_token_with("wxwrong", SECRET).await),
        40013
    );
    assert_eq!(errcode(&c.classic_token_with(APPID, "wrong").await), 40125);
    let v = c
        .get_json(&format!(
            "/cgi-bin/token?grant_type=password&appid={APPID}&secret={SECRET}"
        ))
        .await;
    assert_eq!(errcode(&v), 40002);
    let v = c
        .get_json(&format!(
            "/cgi-bin/token?grant_type=client_credential&secret={SECRET}"
        ))
        .await;
    assert_eq!(errcode(&v), 41002);
    let ok = c.classic_token_with(APPID, SECRET).await;
    assert_eq!(ok["expires_in"], 7200);
    assert!(ok["access_token"].as_str().is_some_and(|t| t.len() >= 32));
    let stats = sb.admin.stats().await;
    assert_eq!(stats.token_calls.classic, 5);
    assert_eq!(stats.token_calls.issued, 1);
    assert_eq!(stats.errcodes["40013"], 1);
}

#[tokio::test]
async fn classic_issues_new_tokens_and_old_ones_live_only_for_the_grace_period() {
    let grace = Duration::from_millis(400);
    let sb = start(wxpush_sandbox::SandboxConfig {
        classic_grace: grace,
        ..config()
    })
    .await;
    let c = &sb.api;
    let first = c.classic_token().await;
    assert_eq!(errcode(&c.template(&first, "o1", None).await), 0);
    let second = c.classic_token().await;
    let superseded_at = Instant::now();
    assert_ne!(first, second, "every classic call issues a new token");
    // Still valid inside the grace period...
    assert_eq!(errcode(&c.template(&first, "o1", None).await), 0);
    // ...then 40001 "invalid credential, not latest".
    let code = wait_for(
        "the superseded token to fail",
        Duration::from_secs(5),
        || async {
            let code = errcode(&c.template(&first, "o1", None).await);
            (code != 0).then_some(code)
        },
    )
    .await;
    assert_eq!(code, 40001);
    assert!(superseded_at.elapsed() >= grace - Duration::from_millis(50));
    assert_eq!(
        errcode(&c.template(&second, "o1", None).await),
        0,
        "the newest still works"
    );
}

#[tokio::test]
async fn tokens_expire_with_42001_and_bad_tokens_get_their_codes() {
    let sb = start(wxpush_sandbox::SandboxConfig {
        token_expires_in: Duration::from_millis(600),
        ..config()
    })
    .await;
    let c = &sb.api;
    let v = c.classic_token_with(APPID, SECRET).await;
    assert_eq!(v["expires_in"], 1, "sub-second lifetimes round up");
    let token = v["access_token"].as_str().expect("token").to_string();
    assert_eq!(errcode(&c.template(&token, "o1", None).await), 0);
    let code = wait_for("the token to expire", Duration::from_secs(5), || async {
        let code = errcode(&c.template(&token, "o1", None).await);
        (code != 0).then_some(code)
    })
    .await;
    assert_eq!(code, 42001);
    assert_eq!(
        errcode(&c.template("not a token!", "o1", None).await),
        40014
    );
    assert_eq!(
        errcode(&c.template(&"A".repeat(64), "o1", None).await),
        40001
    );
    let body = json!({"touser": "o1", "template_id": "T"}).to_string();
    let v = c.post_raw("/cgi-bin/message/template/send", body).await;
    assert_eq!(errcode(&v), 41001);
}

#[tokio::test]
async fn stable_token_is_reused_until_renewal_and_independent_of_classic() {
    let sb = start(wxpush_sandbox::SandboxConfig {
        token_expires_in: Duration::from_secs(3),
        stable_renew_before: Duration::from_millis(1500),
        ..config()
    })
    .await;
    let c = &sb.api;
    let a = c.stable_token(false).await;
    let token = a["access_token"].as_str().expect("token").to_string();
    assert_eq!(a["expires_in"], 3);
    for _ in 0..5 {
        let again = c.stable_token(false).await;
        assert_eq!(
            again["access_token"], a["access_token"],
            "same token while valid"
        );
    }
    // Classic calls never touch the stable token.
    let classic = c.classic_token().await;
    let _ = c.classic_token().await;
    assert_ne!(classic, token);
    assert_eq!(errcode(&c.template(&token, "o1", None).await), 0);
    // Near expiry the platform renews: a new token, the old one still valid to its end.
    let renewed = wait_for(
        "the stable token to renew",
        Duration::from_secs(5),
        || async {
            let v = c.stable_token(false).await;
            (v["access_token"] != a["access_token"]).then_some(v)
        },
    )
    .await;
    assert_eq!(renewed["expires_in"], 3);
    assert_eq!(
        errcode(&c.template(&token, "o1", None).await),
        0,
        "old one valid to its expiry"
    );
    let stats = sb.admin.stats().await;
    assert_eq!(
        stats.token_calls.issued, 4,
        "two stable + two classic tokens"
    );
}

#[tokio::test]
async fn force_refresh_rotates_with_limits() {
    let sb = start(wxpush_sandbox::SandboxConfig {
        force_refresh_daily_limit: 2,
        force_refresh_interval: Duration::from_millis(300),
        ..config()
    })
    .await;
    let c = &sb.api;
    let a = c.stable_token(false).await["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let b = c.stable_token(true).await;
    let b_token = b["access_token"].as_str().expect("token").to_string();
    assert_ne!(a, b_token);
    assert_eq!(
        errcode(&c.template(&a, "o1", None).await),
        40001,
        "rotated at once"
    );
    assert_eq!(errcode(&c.template(&b_token, "o1", None).await), 0);
    assert_eq!(
        errcode(&c.stable_token(true).await),
        45011,
        "less than the interval apart"
    );
    let second = wait_for(
        "the force_refresh interval",
        Duration::from_secs(5),
        || async {
            let v = c.stable_token(true).await;
            (errcode(&v) == 0).then_some(v)
        },
    )
    .await;
    assert_ne!(second["access_token"], b["access_token"]);
    // Past the interval again, the next forced refresh meets the daily limit: the first answer
    // that is not 45011 (too soon).
    let past_interval = wait_for(
        "the force_refresh interval again",
        Duration::from_secs(5),
        || async {
            let v = c.stable_token(true).await;
            (errcode(&v) != 45011).then_some(v)
        },
    )
    .await;
    assert_eq!(errcode(&past_interval), 45009, "daily limit");
    assert_eq!(
        c.stable_token(false).await["access_token"],
        second["access_token"]
    );
    let stats = sb.admin.stats().await;
    assert!(stats.token_calls.stable_force_refresh >= 4);
}

#[tokio::test]
async fn stable_token_errors() {
    let sb = start(wxpush_sandbox::SandboxConfig {
        stable_minute_quota: Some(3),
        ..config()
    })
    .await;
    let c = &sb.api;
    let v = c.post_raw("/cgi-bin/stable_token", "{oops").await;
    assert_eq!(errcode(&v), 47001);
    let wrong = json!({"grant_type": "client_credential", "appid": "wxnope", "secret": SECRET});
    assert_eq!(errcode(&c.stable_token_body(&wrong).await), 40013);
    let wrong = json!({"grant_type": "client_credential", "appid": APPID, "secret": "nope"});
    assert_eq!(errcode(&c.stable_token_body(&wrong).await), 40125);
    // The minute quota counts calls that passed the credential check.
    for _ in 0..3 {
        assert_eq!(errcode(&c.stable_token(false).await), 0);
    }
    assert_eq!(errcode(&c.stable_token(false).await), 45011);
}

#[tokio::test]
async fn classic_daily_quota() {
    let sb = start(wxpush_sandbox::SandboxConfig {
        classic_daily_quota: Some(2),
        ..config()
    })
    .await;
    let c = &sb.api;
    assert_eq!(errcode(&c.classic_token_with(APPID, SECRET).await), 0);
    assert_eq!(errcode(&c.classic_token_with(APPID, SECRET).await), 0);
    assert_eq!(errcode(&c.classic_token_with(APPID, SECRET).await), 45009);
    sb.admin.reset().await;
    assert_eq!(
        errcode(&c.classic_token_with(APPID, SECRET).await),
        0,
        "reset clears quotas"
    );
}

/// `token_calls.max_in_flight` sees overlapping token requests (so a "one refresh in flight"
/// assertion built on it can fail), and counts one at a time as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_token_requests_are_counted() {
    let sb = start(config()).await;
    let c = &sb.api;
    let (status, _) = sb.admin.patch_faults(&json!({"latency": "100ms"})).await;
    assert_eq!(status, 200);
    c.stable_token(false).await;
    assert_eq!(sb.admin.stats().await.token_calls.max_in_flight, 1);
    let calls = (0..6).map(|_| c.stable_token(false));
    futures::future::join_all(calls).await;
    let max = sb.admin.stats().await.token_calls.max_in_flight;
    assert!(
        max >= 2,
        "6 concurrent calls with 100 ms latency overlapped, max seen {max}"
    );
    sb.admin.reset().await;
    assert_eq!(sb.admin.stats().await.token_calls.max_in_flight, 0);
}
