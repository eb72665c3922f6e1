//! Sender behaviours the sandbox cannot script: 48001 on a send (pause, one probe per interval,
//! resume) and a stable token API that hands back the very token a send was refused with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::post;
use serde_json::{Value, json};

use super::*;
use crate::wechat::MessageKind;

#[derive(Debug, Default)]
struct Script {
    send_errcode: AtomicI64,
    sends: AtomicUsize,
    stable_calls: AtomicUsize,
    force_calls: AtomicUsize,
    /// The token the stable API hands out without `force_refresh`.
    current: Mutex<String>,
    /// Tokens sends refuse with 40001.
    refused: Mutex<Vec<String>>,
}

async fn stable_token(State(s): State<Arc<Script>>, Json(body): Json<Value>) -> Json<Value> {
    s.stable_calls.fetch_add(1, Ordering::SeqCst);
    if body["force_refresh"] == json!(true) {
        let n = s.force_calls.fetch_add(1, Ordering::SeqCst);
        *s.current.lock() = format!("forcedtoken{n:0>20}");
    }
    Json(json!({"access_token": s.current.lock().clone(), "expires_in": 7200}))
}

async fn template_send(
    State(s): State<Arc<Script>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    s.sends.fetch_add(1, Ordering::SeqCst);
    let token = q.get("access_token").cloned().unwrap_or_default();
    if s.refused.lock().contains(&token) {
        return Json(json!({"errcode": 40001, "errmsg": "invalid credential"}));
    }
    let code = s.send_errcode.load(Ordering::SeqCst);
    Json(json!({"errcode": code, "errmsg": if code == 0 { "ok" } else { "scripted" }, "msgid": 7}))
}

async fn scripted() -> (String, Arc<Script>) {
    let script = Arc::new(Script::default());
    *script.current.lock() = "firsttoken0000000000000000".into();
    let app = axum::Router::new()
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/message/template/send", post(template_send))
        .with_state(Arc::clone(&script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), script)
}

fn sender(base: &str) -> WeChatSender {
    let yaml = format!(
        "listen: 127.0.0.1:0\napiBaseUrl: {base}\ncredentials: {{appId: wxa, appSecret: s}}\n\
         auth: {{token: a-long-enough-token-0123}}\nretry: {{throttledBackoff: 300ms}}\n"
    );
    let config = PusherConfig::from_yaml(&yaml).expect("config");
    WeChatSender::new(&config, Arc::new(Metrics::new("t"))).expect("sender")
}

async fn send(sender: &WeChatSender, id: &str) -> SendOutcome {
    let body = serde_json::value::to_raw_value(
        &json!({"touser": "u", "template_id": "T", "client_msg_id": id, "data": {}}),
    )
    .expect("json");
    sender
        .send(SendRequest {
            kind: MessageKind::Template,
            body: &body,
        })
        .await
}

/// Waits until the send pause's time is up (the next send is the probe), as `health()` reports
/// it. The pause runs on the system clock, which tokio's paused clock does not move, so this
/// polls with a bound instead.
async fn until_probe_due(sender: &WeChatSender) {
    let start = std::time::Instant::now();
    while sender.health().sending != crate::wechat::Health::Ok {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the send pause (throttledBackoff 300ms) did not end: {:?}",
            sender.health()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn api_unauthorized_pauses_the_channel_with_one_probe_per_interval() {
    let (base, script) = scripted().await;
    let sender = sender(&base);
    script.send_errcode.store(48001, Ordering::SeqCst);
    let out = send(&sender, "a").await;
    assert!(
        matches!(&out, SendOutcome::Paused { error, until: Some(_) } if error.errcode == Some(48001)),
        "{out:?}"
    );
    assert!(!sender.health().can_send());
    for i in 0..20 {
        let out = send(&sender, &format!("b{i}")).await;
        assert!(matches!(out, SendOutcome::Paused { .. }), "{out:?}");
    }
    assert_eq!(
        script.sends.load(Ordering::SeqCst),
        1,
        "no send while paused"
    );
    // Still unauthorised at the first probe: one request, paused again.
    until_probe_due(&sender).await;
    let ids: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let outs = futures::future::join_all(ids.iter().map(|id| send(&sender, id))).await;
    assert!(outs.iter().all(|o| matches!(o, SendOutcome::Paused { .. })));
    assert_eq!(script.sends.load(Ordering::SeqCst), 2, "exactly one probe");
    // Fixed at WeChat's side: the next probe goes through and the channel resumes.
    script.send_errcode.store(0, Ordering::SeqCst);
    until_probe_due(&sender).await;
    assert!(matches!(
        send(&sender, "d").await,
        SendOutcome::Delivered {
            msgid: Some(7),
            receipt: None
        }
    ));
    assert!(matches!(
        send(&sender, "e").await,
        SendOutcome::Delivered { .. }
    ));
    assert!(sender.health().can_send());
}

#[tokio::test]
async fn a_refused_stable_token_handed_back_again_is_force_refreshed_once() {
    let (base, script) = scripted().await;
    let sender = sender(&base);
    assert!(matches!(
        send(&sender, "a").await,
        SendOutcome::Delivered { .. }
    ));
    let first = script.current.lock().clone();
    script.refused.lock().push(first);
    let out = send(&sender, "b").await;
    assert!(matches!(out, SendOutcome::Delivered { .. }), "{out:?}");
    // initial fetch, the plain refresh that returned the refused token, the forced one.
    assert_eq!(script.stable_calls.load(Ordering::SeqCst), 3);
    assert_eq!(script.force_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        script.sends.load(Ordering::SeqCst),
        3,
        "a, b refused, b retried"
    );
}
