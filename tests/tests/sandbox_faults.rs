//! Fault injection, black-box over HTTP: each fault kind set at run time through `/__faults`,
//! seen by a client as the pusher would see it, and counted in `/__stats`.

use std::time::{Duration, Instant};

use serde_json::json;
use wxpush_tests::sandbox::{WxClient, config, errcode, start};
use wxpush_tests::wait_for;

#[tokio::test]
async fn injected_errcodes_answer_sends_only() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.classic_token().await;
    for code in [-1, 45009, 45011, 43117] {
        let (status, _) = sb
            .admin
            .put_faults(&json!({"errcodes": {code.to_string(): 1.0}}))
            .await;
        assert_eq!(status, 200);
        let v = c.template(&token, "o1", Some("k")).await;
        assert_eq!(errcode(&v), code);
        assert!(v["errmsg"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(
            errcode(&c.stable_token(false).await),
            0,
            "token calls are not faulted"
        );
    }
    sb.admin.put_faults(&json!({})).await;
    assert_eq!(errcode(&c.template(&token, "o1", Some("k")).await), 0);
    let stats = sb.admin.stats().await;
    for code in ["-1", "45009", "45011", "43117"] {
        assert_eq!(stats.faults[&format!("errcode:{code}")], 1, "{code}");
    }
    assert_eq!(stats.delivered_unique, 1, "faulted sends deliver nothing");
}

#[tokio::test]
async fn shares_are_honoured_roughly() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.classic_token().await;
    sb.admin.put_faults(&json!({"errcodes": {"-1": 0.5}})).await;
    let mut busy = 0;
    for _ in 0..200 {
        if errcode(&c.template(&token, "o1", None).await) == -1 {
            busy += 1;
        }
    }
    assert!((60..=140).contains(&busy), "{busy} of 200 at share 0.5");
}

#[tokio::test]
async fn http_5xx() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.classic_token().await;
    sb.admin
        .put_faults(&json!({"http_5xx_share": 1.0, "http_5xx_status": 503}))
        .await;
    let r = c
        .http
        .post(format!(
            "{}/cgi-bin/message/template/send?access_token={token}",
            c.base
        ))
        .body(r#"{"touser":"o1","template_id":"T"}"#)
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 503);
    let r = c
        .http
        .get(format!("{}/cgi-bin/token", c.base))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 503, "5xx applies to token endpoints too");
    let stats = sb.admin.stats().await;
    assert_eq!(stats.faults["http_5xx"], 2);
    assert_eq!(stats.delivered_unique, 0);
}

#[tokio::test]
async fn connection_resets() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.classic_token().await;
    sb.admin.put_faults(&json!({"reset_share": 1.0})).await;
    let err = c
        .try_send_raw(
            "template/send",
            &token,
            r#"{"touser":"o1","template_id":"T"}"#,
        )
        .await
        .expect_err("the connection is reset");
    assert!(!err.is_timeout(), "{err:?}");
    let text = format!("{err:?}").to_lowercase();
    assert!(text.contains("reset") || text.contains("closed"), "{text}");
    sb.admin.put_faults(&json!({})).await;
    assert_eq!(
        errcode(&c.template(&token, "o1", None).await),
        0,
        "the client recovers"
    );
    let stats = sb.admin.stats().await;
    assert_eq!(stats.faults["reset"], 1);
    assert_eq!(stats.delivered_unique, 1);
}

#[tokio::test]
async fn hangs_process_the_send_then_answer_late() {
    let sb = start(config()).await;
    let token = sb.api.classic_token().await;
    sb.admin
        .put_faults(&json!({"hang_share": 1.0, "hang": "2s"}))
        .await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let c = WxClient {
        base: sb.api.base.clone(),
        http: impatient,
    };
    let started = Instant::now();
    let err = c
        .try_send_raw(
            "template/send",
            &token,
            r#"{"touser":"o1","template_id":"T","client_msg_id":"m1"}"#,
        )
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The message was delivered although the client never heard: a retry with the same
    // client_msg_id is suppressed, as on WeChat.
    assert_eq!(sb.admin.stats().await.delivered_unique, 1);
    sb.admin.put_faults(&json!({})).await;
    let retry = sb.api.template(&token, "o1", Some("m1")).await;
    assert_eq!(errcode(&retry), 0);
    let stats = sb.admin.stats().await;
    assert_eq!(
        (stats.delivered_unique, stats.duplicates_suppressed),
        (1, 1)
    );
    assert_eq!(stats.faults["hang"], 1);
}

#[tokio::test]
async fn latency_with_jitter() {
    let sb = start(config()).await;
    let token = sb.api.classic_token().await;
    let (_, v) = sb
        .admin
        .put_faults(&json!({"latency": "150ms", "jitter": "50ms"}))
        .await;
    assert_eq!(v["faults"]["latency"], "150ms");
    let started = Instant::now();
    assert_eq!(errcode(&sb.api.template(&token, "o1", None).await), 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(sb.admin.stats().await.faults["latency"], 1);
}

#[tokio::test]
async fn outage_refuses_connections_then_recovers() {
    let sb = start(config()).await;
    let token = sb.api.classic_token().await; // the API client now holds a pooled connection
    let (status, v) = sb
        .admin
        .put_faults(&json!({"outage": {"after": "0s", "duration": "700ms"}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["faults"]["outage"]["duration"], "700ms");
    let err = wait_for(
        "connections to be refused",
        Duration::from_secs(3),
        || async {
            sb.api
                .try_send_raw(
                    "template/send",
                    &token,
                    r#"{"touser":"o1","template_id":"T"}"#,
                )
                .await
                .err()
                .filter(reqwest::Error::is_connect)
        },
    )
    .await;
    assert!(err.is_connect(), "{err:?}");
    // A fresh client is refused too: the listener is really closed.
    let fresh = WxClient::new(sb.api.base.clone());
    let e = fresh
        .http
        .get(format!("{}/cgi-bin/token", fresh.base))
        .send()
        .await;
    assert!(e.as_ref().is_err_and(reqwest::Error::is_connect), "{e:?}");
    // The admin connection survives, so the test can still look inside.
    let during = sb.admin.stats().await;
    assert_eq!(during.faults["outages"], 1);
    let v = wait_for("the outage to end", Duration::from_secs(5), || async {
        sb.api
            .try_send_raw(
                "template/send",
                &token,
                r#"{"touser":"o1","template_id":"T"}"#,
            )
            .await
            .ok()
    })
    .await;
    assert_eq!(errcode(&v), 0);
    let stats = sb.admin.stats().await;
    assert!(
        stats.faults["outage_connections_closed"] >= 1,
        "{:?}",
        stats.faults
    );
}

#[tokio::test]
async fn forced_token_invalidation() {
    let sb = start(config()).await;
    let c = &sb.api;
    let token = c.stable_token(false).await["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(errcode(&c.template(&token, "o1", None).await), 0);
    sb.admin
        .put_faults(&json!({"token_invalidate_every": "300ms"}))
        .await;
    let code = wait_for(
        "the token to be invalidated",
        Duration::from_secs(5),
        || async {
            let code = errcode(&c.template(&token, "o1", None).await);
            (code != 0).then_some(code)
        },
    )
    .await;
    assert_eq!(code, 40001);
    let fresh = c.stable_token(false).await["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_ne!(
        fresh, token,
        "the stable API issues a new token after a revocation"
    );
    assert_eq!(errcode(&c.template(&fresh, "o1", None).await), 0);
    // And the admin route does it on demand.
    sb.admin.put_faults(&json!({})).await;
    let r = sb
        .admin
        .http
        .post(format!("{}/__tokens/invalidate", sb.admin.base))
        .send()
        .await;
    assert!(r.is_ok_and(|r| r.status().is_success()));
    assert_eq!(errcode(&c.template(&fresh, "o1", None).await), 40001);
    assert!(sb.admin.stats().await.faults["token_invalidations"] >= 2);
}

#[tokio::test]
async fn fault_admin_validates_and_patches() {
    let sb = start(config()).await;
    let (status, v) = sb.admin.put_faults(&json!({"reset_share": 2.0})).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("reset_share")),
        "{v}"
    );
    let (status, _) = sb
        .admin
        .put_faults(&json!({"errcodes": {"12345": 0.1}}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = sb.admin.put_faults(&json!({"latency": "soon"})).await;
    assert_eq!(status, 400);
    let (status, _) = sb.admin.put_faults(&json!({"latency": "5ms"})).await;
    assert_eq!(status, 200);
    let (status, v) = sb
        .admin
        .patch_faults(&json!({"errcodes": {"-1": 0.25}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["faults"]["latency"], "5ms", "PATCH keeps other fields");
    assert_eq!(v["faults"]["errcodes"]["-1"], 0.25);
    let got: serde_json::Value = sb
        .admin
        .http
        .get(format!("{}/__faults", sb.admin.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["faults"], v["faults"]);
    // Reset restores the start-up faults (none here).
    sb.admin.reset().await;
    assert_eq!(sb.handle.faults(), wxpush_sandbox::FaultConfig::default());
}
