//! TEMPLATESENDJOBFINISH events, black-box: a tiny HTTP receiver stands in for the pusher's
//! `/wechat/events`, and an independent Python implementation (hashlib + cryptography) checks
//! every signature and decrypts every safe-mode body.

use std::time::Duration;

use wxpush_sandbox::{EventConfig, EventMode, SandboxConfig};
use wxpush_tests::sandbox::{APPID, EventReceiver, config, errcode, python_verify, start};
use wxpush_tests::wait_for;

const TOKEN: &str = "eventtoken123";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const ACCOUNT: &str = "gh_test0000001";

fn with_events(receiver: &EventReceiver, events: EventConfig) -> SandboxConfig {
    SandboxConfig {
        account_id: ACCOUNT.into(),
        events: EventConfig {
            url: Some(receiver.url()),
            token: TOKEN.into(),
            ..events
        },
        ..config()
    }
}

#[tokio::test]
async fn plain_events_are_signed_and_complete() {
    let rx = EventReceiver::start(0).await;
    let sb = start(with_events(&rx, EventConfig::default())).await;
    let token = sb.api.classic_token().await;
    let a = sb.api.template(&token, "openid-a", Some("c1")).await;
    let b = sb.api.template(&token, "openid-b", None).await;
    // A duplicate is not delivered again, so it has no event.
    sb.api.template(&token, "openid-a", Some("c1")).await;
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    let results = python_verify(TOKEN, None, APPID, &got);
    for (r, e) in results.iter().zip(&got) {
        assert_eq!(r["signature_ok"], true, "{r} {e:?}");
        assert!(r["msg_signature_ok"].is_null());
        assert_eq!(r["fields"]["ToUserName"], ACCOUNT);
        assert_eq!(r["fields"]["MsgType"], "event");
        assert_eq!(r["fields"]["Event"], "TEMPLATESENDJOBFINISH");
        assert_eq!(r["fields"]["Status"], "success");
        assert_eq!(
            e.query.get("openid"),
            Some(
                &r["fields"]["FromUserName"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            )
        );
        assert!(
            r["fields"]["CreateTime"]
                .as_str()
                .is_some_and(|t| t.parse::<u64>().is_ok())
        );
    }
    let mut pairs: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            let f = &r["fields"];
            (
                f["FromUserName"].as_str().unwrap_or("").into(),
                f["MsgID"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            ("openid-a".to_string(), a["msgid"].to_string()),
            ("openid-b".to_string(), b["msgid"].to_string()),
        ]
    );
    let stats = wait_for("events acknowledged", Duration::from_secs(5), || async {
        let s = sb.admin.stats().await;
        (s.events.acknowledged == 2).then_some(s)
    })
    .await;
    assert_eq!(stats.events.generated, 2);
    assert_eq!(stats.events.by_status["success"], 2);
    // No third event trickles in: a third request ends the wait early and fails below.
    rx.more_than(2, Duration::from_millis(100)).await;
    assert_eq!(rx.received.lock().await.len(), 2);
}

#[tokio::test]
async fn safe_mode_events_decrypt_with_an_independent_implementation() {
    let rx = EventReceiver::start(0).await;
    let sb = start(with_events(
        &rx,
        EventConfig {
            aes_key: Some(AES_KEY.into()),
            mode: EventMode::Safe,
            ..Default::default()
        },
    ))
    .await;
    let token = sb.api.classic_token().await;
    for i in 0..3 {
        assert_eq!(
            errcode(&sb.api.template(&token, &format!("o{i}"), None).await),
            0
        );
    }
    let got = rx.wait_for(3, Duration::from_secs(5)).await;
    for e in &got {
        assert_eq!(e.query.get("encrypt_type").map(String::as_str), Some("aes"));
        assert!(
            !e.body.contains("FromUserName"),
            "safe mode hides the event: {}",
            e.body
        );
    }
    let results = python_verify(TOKEN, Some(AES_KEY), APPID, &got);
    for r in &results {
        assert_eq!(r["signature_ok"], true, "{r}");
        assert_eq!(r["msg_signature_ok"], true, "{r}");
        assert_eq!(r["appid"], APPID);
        assert_eq!(
            r["outer_fields"],
            serde_json::json!(["Encrypt", "ToUserName"])
        );
        assert_eq!(r["fields"]["Event"], "TEMPLATESENDJOBFINISH");
        assert_eq!(r["fields"]["Status"], "success");
        assert!(
            r["fields"]["FromUserName"]
                .as_str()
                .is_some_and(|o| o.starts_with('o'))
        );
    }
    // The crate's own wxcrypto (reused by the pusher) agrees with Python.
    let cipher = wxcrypto::Cipher::new(AES_KEY, APPID).expect("key");
    let enc = got[0]
        .body
        .split("<Encrypt><![CDATA[")
        .nth(1)
        .and_then(|s| s.split("]]>").next());
    let plain = cipher
        .decrypt(enc.expect("an Encrypt element"))
        .expect("decrypts");
    assert!(String::from_utf8_lossy(&plain).contains("TEMPLATESENDJOBFINISH"));
}

#[tokio::test]
async fn compat_mode_carries_both_and_statuses_follow_shares() {
    let rx = EventReceiver::start(0).await;
    let sb = start(with_events(
        &rx,
        EventConfig {
            aes_key: Some(AES_KEY.into()),
            mode: EventMode::Compat,
            user_block_share: 1.0,
            ..Default::default()
        },
    ))
    .await;
    let token = sb.api.classic_token().await;
    sb.api.template(&token, "blocker", None).await;
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    assert!(
        got[0]
            .body
            .contains("<FromUserName><![CDATA[blocker]]></FromUserName>")
    );
    let r = &python_verify(TOKEN, Some(AES_KEY), APPID, &got)[0];
    assert_eq!(r["msg_signature_ok"], true);
    assert_eq!(r["fields"]["Status"], "failed:user block");

    let rx = EventReceiver::start(0).await;
    let sb = start(with_events(
        &rx,
        EventConfig {
            system_failed_share: 1.0,
            ..Default::default()
        },
    ))
    .await;
    let token = sb.api.classic_token().await;
    sb.api.template(&token, "o1", None).await;
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    let r = &python_verify(TOKEN, None, APPID, &got)[0];
    assert_eq!(
        r["fields"]["Status"], "failed: system failed",
        "sic, with the space"
    );
}

#[tokio::test]
async fn events_are_retried_three_times_then_given_up() {
    // The receiver fails the first 2 attempts: the third is acknowledged.
    let rx = EventReceiver::start(2).await;
    let sb = start(with_events(&rx, EventConfig::default())).await;
    let token = sb.api.classic_token().await;
    sb.api.template(&token, "o1", None).await;
    let got = rx.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(got[0].body, got[2].body, "a retry repeats the same event");
    let s = wait_for("acknowledgement", Duration::from_secs(5), || async {
        let s = sb.admin.stats().await;
        (s.events.acknowledged == 1).then_some(s)
    })
    .await;
    assert_eq!(s.events.attempts, 3);

    // A receiver that always fails: 1 + 3 attempts, then the event is given up.
    let rx = EventReceiver::start(usize::MAX).await;
    let sb = start(with_events(&rx, EventConfig::default())).await;
    let token = sb.api.classic_token().await;
    sb.api.template(&token, "o1", None).await;
    let s = wait_for(
        "the event to be given up",
        Duration::from_secs(5),
        || async {
            let s = sb.admin.stats().await;
            (s.events.failed == 1).then_some(s)
        },
    )
    .await;
    assert_eq!(s.events.attempts, 4);
}

#[tokio::test]
async fn delay_and_msgid_zero_option() {
    let rx = EventReceiver::start(0).await;
    let sb = start(with_events(
        &rx,
        EventConfig {
            delay: Duration::from_millis(300),
            msgid_zero_with_client_msg_id: true,
            ..Default::default()
        },
    ))
    .await;
    let token = sb.api.classic_token().await;
    let sent = std::time::Instant::now();
    sb.api.template(&token, "o1", Some("c")).await;
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    assert!(sent.elapsed() >= Duration::from_millis(300));
    let r = &python_verify(TOKEN, None, APPID, &got)[0];
    assert_eq!(r["fields"]["MsgID"], "0");
}
