//! The sandbox's WeCom callback URL (echostr verification and contact-change events, checked by
//! the independent Python verifier), the fault modes on the WeCom routes, the trusted IP list,
//! and the WeCom flags of the binary.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use wxpush_sandbox::wecom::config::DEFAULT_AES_KEY;
use wxpush_sandbox::{SandboxConfig, WeComCallbackConfig, WeComConfig};
use wxpush_tests::binary;
use wxpush_tests::sandbox::{
    EventReceiver, WxClient, config, errcode, python_verify, spawn, start,
};

const CORP: &str = "wwcorp";
const TOKEN: &str = "wecomtoken";

fn with_callback(url: String) -> SandboxConfig {
    SandboxConfig {
        wecom: WeComConfig {
            callback: WeComCallbackConfig {
                url: Some(url),
                timeout: Duration::from_secs(2),
                ..WeComCallbackConfig::default()
            },
            ..WeComConfig::default()
        },
        ..config()
    }
}

/// A callback server written the way a WeCom app's server is: it checks `msg_signature` and
/// answers the decrypted echostr.
async fn echo_server() -> String {
    async fn verify(
        State(cipher): State<Arc<wxcrypto::Cipher>>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Result<String, StatusCode> {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
        let echostr = get("echostr");
        if !wxcrypto::verify_msg_signature(
            TOKEN,
            get("timestamp"),
            get("nonce"),
            echostr,
            get("msg_signature"),
        ) {
            return Err(StatusCode::FORBIDDEN);
        }
        let plain = cipher
            .decrypt(echostr)
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        String::from_utf8(plain).map_err(|_| StatusCode::BAD_REQUEST)
    }
    let cipher = wxcrypto::Cipher::new(DEFAULT_AES_KEY, CORP).expect("the default key loads");
    let app = axum::Router::new()
        .route("/wecom/callback", axum::routing::get(verify))
        .with_state(Arc::new(cipher));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the callback server");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/wecom/callback")
}

async fn admin_post(c: &WxClient, path: &str, body: &Value) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}{path}", c.base))
        .json(body)
        .send()
        .await
        .expect("an admin answer");
    (r.status().as_u16(), r.json().await.expect("admin JSON"))
}

#[tokio::test]
async fn the_callback_url_is_verified_by_its_decrypted_echostr() {
    let good = start(with_callback(echo_server().await)).await;
    let (status, v) = admin_post(&good.admin, "/__wecom/verify", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["status"], 200);
    // A server that answers anything else than the plain echostr is not verified.
    let receiver = EventReceiver::start(0).await;
    let bad = start(with_callback(receiver.url())).await;
    let (_, v) = admin_post(&bad.admin, "/__wecom/verify", &json!({})).await;
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["answer"], "success");
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let q = &got[0].query;
    assert!(
        ["msg_signature", "timestamp", "nonce", "echostr"]
            .iter()
            .all(|k| q.contains_key(*k))
    );
    let opened = wxcrypto::Cipher::new(DEFAULT_AES_KEY, CORP)
        .expect("the key")
        .decrypt(&q["echostr"])
        .expect("the echostr opens with the corp id as receive id");
    assert!(!opened.is_empty());
    assert_eq!(good.handle.stats().wecom.callback.verified, 1);
    assert_eq!(bad.handle.stats().wecom.callback.verifications, 1);
    let none = start(config()).await;
    let (status, v) = admin_post(&none.admin, "/__wecom/verify", &json!({})).await;
    assert_eq!(status, 409, "{v}");
}

#[tokio::test]
async fn events_reach_the_callback_and_change_the_directory() {
    let receiver = EventReceiver::start(1).await;
    let sb = start(with_callback(receiver.url())).await;
    let (status, v) = admin_post(
        &sb.admin,
        "/__wecom/events",
        &json!({"type": "delete_user", "user_id": "u1"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["acknowledged"], true);
    assert_eq!(v["attempts"], 2, "a 500 is retried");
    let token = sb
        .api
        .get_json(&format!(
            "/cgi-bin/gettoken?corpid={CORP}&corpsecret=wecom-secret"
        ))
        .await;
    let token = token["access_token"].as_str().expect("a token");
    let send = |to: &str| {
        json!({"touser": to, "msgtype": "text", "agentid": 1_000_002,
               "text": {"content": "x"}})
    };
    let path = format!("/cgi-bin/message/send?access_token={token}");
    let v = sb.api.post_raw(&path, send("u1|u2").to_string()).await;
    assert_eq!(v["invaliduser"], "u1", "a deleted user is invalid: {v}");
    for event in [
        json!({"type": "update_user", "user_id": "u2", "new_user_id": "u2b"}),
        json!({"type": "template_card_event", "user_id": "u3", "task_id": "approve-1",
               "card_type": "button_interaction", "event_key": "yes", "agentid": 7}),
        json!({"type": "create_user", "user_id": "u1"}),
    ] {
        let (status, v) = admin_post(&sb.admin, "/__wecom/events", &event).await;
        assert_eq!(
            (status, &v["acknowledged"]),
            (200, &json!(true)),
            "{event} → {v}"
        );
    }
    let v = sb.api.post_raw(&path, send("u1|u2|u2b").to_string()).await;
    assert_eq!(v["invaliduser"], "u2", "renamed away; u1 is back: {v}");
    let got = receiver.wait_for(5, Duration::from_secs(5)).await;
    let checked = python_verify(TOKEN, Some(DEFAULT_AES_KEY), CORP, &got);
    for (r, raw) in checked.iter().zip(&got) {
        assert_eq!(r["msg_signature_ok"], true, "{r}");
        assert_eq!(r["appid"], CORP, "the receive id is the corp id");
        assert_eq!(
            r["outer_fields"],
            json!(["AgentID", "Encrypt", "ToUserName"])
        );
        assert_eq!(r["fields"]["ToUserName"], CORP);
        assert_eq!(r["fields"]["MsgType"], "event");
        assert!(
            !raw.query.contains_key("signature"),
            "WeCom signs with msg_signature only"
        );
    }
    let fields = |i: usize| &checked[i]["fields"];
    assert_eq!(fields(0)["Event"], "change_contact");
    assert_eq!(fields(0)["ChangeType"], "delete_user");
    assert_eq!(fields(0)["UserID"], "u1");
    assert_eq!(fields(0)["AgentID"], "1000002");
    assert_eq!(fields(2)["NewUserID"], "u2b");
    assert_eq!(fields(3)["Event"], "template_card_event");
    assert_eq!(fields(3)["TaskId"], "approve-1");
    assert_eq!(fields(3)["AgentID"], "7");
    let cb = sb.handle.stats().wecom.callback;
    assert_eq!(
        (cb.events, cb.attempts, cb.acknowledged, cb.failed),
        (4, 5, 4, 0)
    );
    let (status, _) = admin_post(&sb.admin, "/__wecom/events", &json!({"type": "nope"})).await;
    assert_eq!(status, 400);
    let (status, v) = admin_post(
        &sb.admin,
        "/__wecom/events",
        &json!({"type": "delete_user"}),
    )
    .await;
    assert_eq!(status, 400, "user_id is required: {v}");
    // Without a callback URL the event still changes the directory.
    let quiet = start(config()).await;
    let (_, v) = admin_post(
        &quiet.admin,
        "/__wecom/events",
        &json!({"type": "delete_party", "party_id": 3}),
    )
    .await;
    assert_eq!(v, json!({"applied": true, "sent": false}));
}

#[tokio::test]
async fn faults_apply_to_the_wecom_routes() {
    let sb = start(config()).await;
    let gettoken = format!("/cgi-bin/gettoken?corpid={CORP}&corpsecret=wecom-secret");
    let token = sb.api.get_json(&gettoken).await["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let send = format!("/cgi-bin/message/send?access_token={token}");
    let text = json!({"touser": "u1", "msgtype": "text", "agentid": 1_000_002,
                      "text": {"content": "x"}})
    .to_string();
    let robot = r#"{"msgtype":"text","text":{"content":"x"}}"#;
    let (status, _) = sb
        .admin
        .put_faults(&json!({"errcodes": {"45033": 1.0}}))
        .await;
    assert_eq!(status, 200, "a WeCom code is a valid fault");
    let v = sb.api.post_raw(&send, text.clone()).await;
    assert_eq!(errcode(&v), 45033, "{v}");
    let v = sb
        .api
        .post_raw("/cgi-bin/webhook/send?key=robot-key", robot)
        .await;
    assert_eq!(errcode(&v), 45033);
    assert_eq!(
        errcode(&sb.api.get_json(&gettoken).await),
        0,
        "token calls are not faulted"
    );
    let wx_token = sb.api.classic_token().await;
    assert_eq!(
        errcode(&sb.api.template(&wx_token, "o1", None).await),
        0,
        "a code WeChat does not have leaves WeChat's sends alone"
    );
    let stats = sb.handle.stats();
    assert_eq!(stats.wecom.injected["45033"], 2);
    assert_eq!(stats.wecom.delivered_unique, 0);
    sb.admin
        .put_faults(&json!({"http_5xx_share": 1.0, "latency": "1ms"}))
        .await;
    let r = sb
        .api
        .http
        .get(format!("{}{gettoken}", sb.api.base))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 502);
    assert!(sb.handle.stats().faults["latency"] >= 1);
    sb.admin.put_faults(&json!({})).await;
    assert_eq!(errcode(&sb.api.post_raw(&send, text.clone()).await), 0);
    let (status, v) = admin_post(&sb.admin, "/__tokens/invalidate", &json!({})).await;
    assert_eq!(status, 200);
    assert!(
        v["revoked"].as_u64().is_some_and(|n| n >= 2),
        "WeChat's and WeCom's: {v}"
    );
    assert_eq!(errcode(&sb.api.post_raw(&send, text.clone()).await), 40014);
    let fresh = sb.api.get_json(&gettoken).await;
    assert_ne!(fresh["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(sb.handle.stats().wecom.apps["1000002"].tokens_issued, 2);
}

#[tokio::test]
async fn untrusted_addresses_get_60020() {
    let sb = start(SandboxConfig {
        wecom: WeComConfig {
            trusted_ips: Some(vec!["10.0.0.1".parse().expect("an IP")]),
            ..WeComConfig::default()
        },
        ..config()
    })
    .await;
    let v = sb
        .api
        .get_json(&format!(
            "/cgi-bin/gettoken?corpid={CORP}&corpsecret=wecom-secret"
        ))
        .await;
    assert_eq!(errcode(&v), 60020);
    assert!(
        v["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("from ip: 127.0.0.1")),
        "{v}"
    );
    let v = sb
        .api
        .post_raw("/cgi-bin/message/send?access_token=x", "{}")
        .await;
    assert_eq!(errcode(&v), 60020, "sends are refused too");
}

#[tokio::test]
async fn the_binary_takes_the_wecom_flags() {
    let help = Command::new(binary("wxpush-sandbox"))
        .arg("--help")
        .output()
        .expect("the sandbox binary runs (cargo build --workspace --bins)");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--wecom-corp-id",
        "--wecom-app",
        "--wecom-robot-key",
        "--wecom-trusted-ips",
        "--wecom-recall-window",
        "--wecom-robot-limit",
        "--wecom-robot-window",
        "--wecom-callback-url",
        "--wecom-callback-token",
        "--wecom-callback-aes-key",
        "--wecom-callback-timeout",
        "--wecom-callback-retries",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
    let (_child, base) = spawn(&[
        "--wecom-corp-id",
        "wwother",
        "--wecom-app",
        "9=s9",
        "--wecom-app",
        "10=s10",
        "--wecom-robot-key",
        "rk",
        "--wecom-robot-limit",
        "1",
    ]);
    let c = WxClient::new(base);
    let v = c
        .get_json("/cgi-bin/gettoken?corpid=wwother&corpsecret=s10")
        .await;
    assert_eq!(errcode(&v), 0, "{v}");
    let token = v["access_token"].as_str().expect("a token");
    let body = json!({"touser": "u1", "msgtype": "markdown", "agentid": 10,
                      "markdown": {"content": "**hi**"}});
    let path = format!("/cgi-bin/message/send?access_token={token}");
    assert_eq!(errcode(&c.post_raw(&path, body.to_string()).await), 0);
    let v = c
        .get_json("/cgi-bin/gettoken?corpid=wwother&corpsecret=wecom-secret")
        .await;
    assert_eq!(errcode(&v), 40001, "the default app is replaced");
    let robot = r#"{"msgtype":"text","text":{"content":"x"}}"#;
    assert_eq!(
        errcode(&c.post_raw("/cgi-bin/webhook/send?key=rk", robot).await),
        0
    );
    assert_eq!(
        errcode(&c.post_raw("/cgi-bin/webhook/send?key=rk", robot).await),
        45009
    );
    assert_eq!(
        errcode(
            &c.post_raw("/cgi-bin/webhook/send?key=robot-key", robot)
                .await
        ),
        93000
    );
}

#[tokio::test]
async fn concurrent_gettoken_calls_show_in_token_max_in_flight() {
    let sb = start(config()).await;
    sb.admin.put_faults(&json!({"latency": "1s"})).await;
    let gettoken = format!("/cgi-bin/gettoken?corpid={CORP}&corpsecret=wecom-secret");
    let answers = futures::future::join_all((0..3).map(|_| sb.api.get_json(&gettoken))).await;
    let tokens: std::collections::HashSet<_> =
        answers.iter().map(|v| v["access_token"].clone()).collect();
    assert_eq!(
        tokens.len(),
        1,
        "concurrent fetches get one token: {answers:?}"
    );
    let stats = sb.handle.stats();
    assert_eq!(
        stats.token_calls.max_in_flight, 3,
        "three fetches overlapped"
    );
    assert_eq!(stats.wecom.apps["1000002"].token_fetches, 3);
    assert_eq!(stats.wecom.apps["1000002"].tokens_issued, 1);
}
