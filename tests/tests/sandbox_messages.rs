//! The sandbox's send APIs, black-box over HTTP: msgids, de-duplication within and after the
//! window, validation errcodes, quotas, the per-openid throttle, statistics and reset.

use std::time::Duration;

use serde_json::json;
use wxpush_sandbox::SandboxConfig;
use wxpush_tests::sandbox::{config, errcode, start};
use wxpush_tests::wait_for;

#[tokio::test]
async fn dedup_within_the_window_then_a_new_delivery_after_it() {
    let window = Duration::from_millis(500);
    let sb = start(SandboxConfig {
        dedup_window: window,
        ..config()
    })
    .await;
    let c = &sb.api;
    let token = c.classic_token().await;
    let first = c.template(&token, "o1", Some("order-42-shipped")).await;
    assert_eq!(errcode(&first), 0);
    assert_eq!(first["errmsg"], "ok");
    let msgid = first["msgid"].as_u64().expect("msgid");
    // Retries inside the window: success with the SAME msgid, not delivered again.
    for _ in 0..3 {
        let again = c.template(&token, "o1", Some("order-42-shipped")).await;
        assert_eq!(errcode(&again), 0);
        assert_eq!(again["msgid"], msgid);
    }
    // Another user with the same client_msg_id is another message.
    let other = c.template(&token, "o2", Some("order-42-shipped")).await;
    assert_ne!(other["msgid"], msgid);
    let stats = sb.admin.stats().await;
    assert_eq!(stats.delivered_unique, 2);
    assert_eq!(stats.duplicates_suppressed, 3);
    assert_eq!(stats.per_openid["o1"].delivered, 1);
    assert_eq!(stats.per_openid["o1"].duplicates, 3);
    assert_eq!(stats.per_openid["o1"].requests, 4);
    // After the window the same key is a new delivery.
    let after = wait_for(
        "the dedup window to pass",
        Duration::from_secs(5),
        || async {
            let v = c.template(&token, "o1", Some("order-42-shipped")).await;
            (v["msgid"] != msgid).then_some(v)
        },
    )
    .await;
    assert_eq!(errcode(&after), 0);
    let stats = sb.admin.stats().await;
    assert_eq!(stats.delivered_unique, 3);
}

#[tokio::test]
async fn sends_without_client_msg_id_are_always_new() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.classic_token().await;
    let a = c.template(&token, "o1", None).await;
    let b = c.template(&token, "o1", None).await;
    assert_ne!(a["msgid"], b["msgid"]);
    assert_eq!(sb.handle.delivered_unique(), 2);
}

#[tokio::test]
async fn concurrent_duplicates_deliver_once() {
    let sb = start(config()).await;
    let token = sb.api.classic_token().await;
    let sends = (0..20).map(|_| {
        let c = sb.api.clone();
        let token = token.clone();
        async move { c.template(&token, "o1", Some("same")).await["msgid"].clone() }
    });
    let msgids = futures::future::join_all(sends).await;
    assert!(msgids.iter().all(|m| *m == msgids[0]), "{msgids:?}");
    let stats = sb.admin.stats().await;
    assert_eq!(stats.delivered_unique, 1);
    assert_eq!(stats.duplicates_suppressed, 19);
}

#[tokio::test]
async fn validation_errcodes() {
    let sb = start(SandboxConfig {
        users: Some(["u1".into(), "u2".into()].into()),
        non_followers: ["gone".into()].into(),
        refused_subscribers: ["nope".into()].into(),
        templates: Some(["TPL".into()].into()),
        ..config()
    })
    .await;
    let c = &sb.api;
    let token = c.classic_token().await;
    let raw = |api: &'static str, body: &'static str| {
        let c = c.clone();
        let token = token.clone();
        async move { errcode(&c.try_send_raw(api, &token, body).await.expect("answer")) }
    };
    assert_eq!(raw("template/send", "{\"touser\": ").await, 47001);
    assert_eq!(raw("template/send", "[1,2]").await, 47001);
    assert_eq!(raw("template/send", r#"{"touser":"u1"}"#).await, 47003);
    assert_eq!(
        raw("template/send", r#"{"template_id":"TPL"}"#).await,
        47003
    );
    assert_eq!(
        raw("template/send", r#"{"touser":"u1","template_id":"X"}"#).await,
        40037
    );
    assert_eq!(
        raw("template/send", r#"{"touser":"zz","template_id":"TPL"}"#).await,
        40003
    );
    assert_eq!(
        raw("template/send", r#"{"touser":"gone","template_id":"TPL"}"#).await,
        43004
    );
    assert_eq!(
        raw("template/send", r#"{"touser":"nope","template_id":"TPL"}"#).await,
        0
    );
    let sub = r#"{"touser":"nope","template_id":"TPL","page":"pages/a","miniprogram_state":"formal","data":{"thing1":{"value":"hi"}}}"#;
    assert_eq!(raw("subscribe/send", sub).await, 43101);
    let biz_gone = r#"{"touser":"gone","template_id":"TPL","data":{"thing1":{"value":"hi"}}}"#;
    assert_eq!(raw("subscribe/bizsend", biz_gone).await, 43004);
    let sub_ok = r#"{"touser":"u1","template_id":"TPL","miniprogram_state":"trial","data":{"thing1":{"value":"hi"},"number2":{"value":"42"}}}"#;
    assert_eq!(raw("subscribe/send", sub_ok).await, 0);
    let sub_state = r#"{"touser":"u1","template_id":"TPL","miniprogram_state":"beta","data":{"thing1":{"value":"hi"}}}"#;
    assert_eq!(raw("subscribe/send", sub_state).await, 47003);
    let sub_long = r#"{"touser":"u1","template_id":"TPL","data":{"thing1":{"value":"this value is longer than twenty"}}}"#;
    assert_eq!(raw("subscribe/send", sub_long).await, 47003);
    let sub_nan = r#"{"touser":"u1","template_id":"TPL","data":{"number1":{"value":"12a"}}}"#;
    assert_eq!(raw("subscribe/send", sub_nan).await, 47003);
    let sub_nodata = r#"{"touser":"u1","template_id":"TPL"}"#;
    assert_eq!(raw("subscribe/send", sub_nodata).await, 47003);
    let stats = sb.admin.stats().await;
    assert_eq!(stats.errcodes["47001"], 2);
    assert_eq!(stats.errcodes["40037"], 1);
    assert_eq!(stats.per_openid["gone"].errors, 2);
    assert_eq!(stats.requests["subscribe_send"], 6);
    assert_eq!(stats.requests["bizsend"], 1);
    // Unknown paths fail loudly.
    let r = c
        .http
        .get(format!("{}/cgi-bin/nope", c.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn daily_and_minute_quotas_and_openid_throttle() {
    let sb = start(SandboxConfig {
        daily_quota: Some(3),
        ..config()
    })
    .await;
    let c = &sb.api;
    let token = c.classic_token().await;
    for i in 0..3 {
        assert_eq!(
            errcode(&c.template(&token, &format!("o{i}"), None).await),
            0
        );
    }
    assert_eq!(errcode(&c.template(&token, "o9", None).await), 45009);
    // Each send API has its own quota.
    let sub = json!({"touser": "o1", "template_id": "T", "data": {"thing1": {"value": "x"}}});
    let v = c
        .try_send_raw("subscribe/send", &token, sub.to_string())
        .await
        .expect("answer");
    assert_eq!(errcode(&v), 0);

    let sb = start(SandboxConfig {
        minute_quota: Some(2),
        ..config()
    })
    .await;
    let c = &sb.api;
    let token = c.classic_token().await;
    // Five sends span at most two minutes, so at least three fall into one of them.
    let mut codes = Vec::new();
    for i in 0..5 {
        codes.push(errcode(&c.template(&token, &format!("m{i}"), None).await));
    }
    assert_eq!(codes[0], 0);
    assert!(codes.contains(&45011), "{codes:?}");

    let sb = start(SandboxConfig {
        openid_minute_limit: Some(2),
        ..config()
    })
    .await;
    let c = &sb.api;
    let token = c.classic_token().await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(errcode(&c.template(&token, "busy", None).await));
    }
    assert!(codes.contains(&43117), "{codes:?}");
    assert_eq!(
        errcode(&c.template(&token, "calm", None).await),
        0,
        "other openids unaffected"
    );
}

#[tokio::test]
async fn reset_clears_state_and_counters() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.classic_token().await;
    let first = c.template(&token, "o1", Some("k")).await;
    assert_eq!(sb.admin.stats().await.requests_total, 2);
    sb.admin.reset().await;
    let stats = sb.admin.stats().await;
    assert_eq!(stats.requests_total, 0);
    assert_eq!(stats.delivered_unique, 0);
    assert!(stats.per_openid.is_empty());
    // Tokens are forgotten and de-duplication starts afresh.
    assert_eq!(errcode(&c.template(&token, "o1", Some("k")).await), 40001);
    let token = c.classic_token().await;
    let again = c.template(&token, "o1", Some("k")).await;
    assert_ne!(again["msgid"], first["msgid"]);
    assert_eq!(sb.admin.stats().await.delivered_unique, 1);
}
