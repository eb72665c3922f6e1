//! The pusher's `/wechat/events` end to end: the real `wxpush-sandbox` POSTs
//! TEMPLATESENDJOBFINISH events (plain and safe mode) to the real `wxpush-pusher`, whose
//! messages move from `delivered` to `confirmed` / `rejected_by_user`; signatures, the echostr
//! check, duplicates and the MsgID 0 fallback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxcrypto::{Cipher, msg_signature, signature};
use wxpush_tests::pusher::{Api, PusherProc, config, send_all, tempdir, template};
use wxpush_tests::sandbox::{self, APPID, WxClient};
use wxpush_tests::{ChildGuard, capability, free_port, wait_for};

const EV_TOKEN: &str = "events-token-abc";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

/// Messages per end-to-end run (`WXPUSH_EVENTS_N` overrides).
fn n() -> usize {
    std::env::var("WXPUSH_EVENTS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

struct Setup {
    _sandbox: ChildGuard,
    wx: WxClient,
    pusher: PusherProc,
    _dir: tempfile::TempDir,
}

/// A sandbox that POSTs events to a pusher on a port chosen beforehand, and that pusher.
async fn setup(sandbox_args: &[&str], events: Value) -> Setup {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/wechat/events");
    let mut args = vec![
        "--daily-quota",
        "unlimited",
        "--event-url",
        &url,
        "--event-token",
        EV_TOKEN,
    ];
    args.extend_from_slice(sandbox_args);
    let (guard, sb_url) = sandbox::spawn(&args);
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"listen": format!("127.0.0.1:{port}"), "events": events}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    Setup {
        _sandbox: guard,
        wx: WxClient::new(sb_url),
        pusher,
        _dir: dir,
    }
}

/// Statuses of `ids`, counted.
async fn statuses(api: &Api, ids: &[String]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for id in ids {
        let (code, doc) = api.status(id).await;
        assert_eq!(code, 200, "{doc}");
        let s = doc["status"].as_str().unwrap_or("?").to_string();
        *out.entry(s).or_insert(0) += 1;
    }
    out
}

/// Sends `n` messages to `users` openids (round robin) and waits until every one is confirmed
/// or rejected; checks the counts against the sandbox's event statistics and the pusher's
/// metrics.
async fn run_and_check(s: &Setup, n: usize, users: usize, prefix: &str) -> BTreeMap<String, u64> {
    let api = &s.pusher.api;
    let msgs: Vec<_> = (0..n)
        .map(|i| template(&format!("{prefix}{}", i % users.max(1))))
        .collect();
    let start = Instant::now();
    let ids = send_all(api, &msgs, 100, 2).await;
    assert_eq!(ids.len(), n);
    let me = api.clone();
    wait_for("every event applied", Duration::from_secs(20), || {
        let me = me.clone();
        async move {
            let c = me.metric("wxpush_events_total", &[]).await;
            (c as usize >= n).then_some(())
        }
    })
    .await;
    let counts = statuses(api, &ids).await;
    let confirmed = counts.get("confirmed").copied().unwrap_or(0);
    let rejected = counts.get("rejected_by_user").copied().unwrap_or(0);
    assert_eq!(
        confirmed + rejected,
        n as u64,
        "every message ends confirmed or rejected_by_user: {counts:?}"
    );
    let stats = s.wx.stats().await;
    let ev = &stats.events;
    assert_eq!(ev.generated, n as u64);
    assert_eq!(ev.acknowledged, n as u64, "{ev:?}");
    assert_eq!(ev.failed, 0);
    assert_eq!(
        ev.attempts, n as u64,
        "each event acknowledged on its first attempt"
    );
    assert_eq!(ev.by_status.get("success").copied(), Some(confirmed));
    assert_eq!(
        ev.by_status.get("failed:user block").copied(),
        Some(rejected)
    );
    assert!(
        rejected > 0 && confirmed > 0,
        "both outcomes occur: {counts:?}"
    );
    let m = |r: &str| {
        let api = api.clone();
        let r = r.to_string();
        async move {
            api.metric(
                "wxpush_events_total",
                &[("event", "TEMPLATESENDJOBFINISH"), ("result", &r)],
            )
            .await as u64
        }
    };
    assert_eq!(m("confirmed").await, confirmed);
    assert_eq!(m("rejected_by_user").await, rejected);
    assert_eq!(m("unmatched").await, 0);
    eprintln!(
        "{n} messages confirmed/rejected ({confirmed}/{rejected}) in {:?}",
        start.elapsed()
    );
    counts
}

/// Several messages per openid (5 each): events, which the sandbox sends at once, can overtake
/// the pusher's `delivered` commit and arrive in the same second for one user; each still finds
/// its own message by msgid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_events_confirm_and_reject() {
    let s = setup(
        &["--event-mode", "plain", "--event-user-block-share", "0.25"],
        json!({"token": EV_TOKEN}),
    )
    .await;
    run_and_check(&s, n(), 40, "p").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_events_confirm_and_reject() {
    let s = setup(
        &[
            "--event-mode",
            "safe",
            "--event-aes-key",
            AES_KEY,
            "--event-user-block-share",
            "0.25",
        ],
        json!({"token": EV_TOKEN, "encodingAesKey": AES_KEY}),
    )
    .await;
    run_and_check(&s, n(), 40, "s").await;
}

/// WeChat's unconfirmed `MsgID` 0 (the pusher always sets `client_msg_id`): every event falls
/// back to the latest delivered message of its openid, which with one message per openid is
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgid_zero_events_fall_back_to_the_openid() {
    let s = setup(
        &[
            "--event-mode",
            "plain",
            "--event-user-block-share",
            "0.25",
            "--event-msgid-zero-with-client-msg-id",
        ],
        json!({"token": EV_TOKEN}),
    )
    .await;
    run_and_check(&s, 50, 50, "z").await;
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn query(ts: &str, nonce: &str, sig: &str) -> String {
    format!("timestamp={ts}&nonce={nonce}&signature={sig}")
}

fn event_xml(openid: &str, create_time: u64, msgid: i64, status: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_sandbox000000]]></ToUserName>\
         <FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>\
         <MsgID>{msgid}</MsgID><Status><![CDATA[{status}]]></Status></xml>"
    )
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, String) {
    let r = http
        .post(url)
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await
        .expect("the pusher answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Bad signatures are refused and change nothing; the echostr check; a duplicate changes
/// nothing; an event for a confirmed message is recorded, not applied; other events are
/// acknowledged; no token → 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_echostr_duplicates_and_other_events() {
    // No --event-url: this test plays WeChat itself.
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"events": {"token": EV_TOKEN, "encodingAesKey": AES_KEY}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let api = &pusher.api;
    let http = reqwest::Client::new();
    let base = format!("{}/wechat/events", pusher.base);
    // Timestamps must be fresh (events.maxClockSkew) and each (timestamp, nonce) is taken once.
    let now = now_secs();
    let ts0 = now.to_string();
    let ts = ts0.as_str();

    // The URL check.
    let sig = signature(EV_TOKEN, ts, "42");
    let r = http
        .get(format!(
            "{base}?{}&echostr=hello-echo",
            query(ts, "42", &sig)
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    assert_eq!(r.text().await.expect("body"), "hello-echo");
    let r = http
        .get(format!(
            "{base}?{}&echostr=hello-echo",
            query(ts, "43", &sig)
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 403);
    assert_ne!(r.text().await.expect("body"), "hello-echo");

    // One delivered message.
    let ids = send_all(api, &[template("sig-user")], 1, 1).await;
    api.wait_delivered(1, Duration::from_secs(10)).await;
    let (_, doc) = api.status(&ids[0]).await;
    assert_eq!(doc["status"], "delivered", "{doc}");
    let msgid = doc["msgid"].as_i64().expect("a msgid");
    let status = |api: Api, id: String| async move { api.status(&id).await.1 };

    // Bad signatures: refused, nothing changes.
    let ev = event_xml("sig-user", now, msgid, "success");
    let (code, _) = post(
        &http,
        &format!("{base}?{}", query(ts, "7", "0000deadbeef")),
        ev.clone(),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = post(&http, &base, ev.clone()).await;
    assert_eq!(code, 403, "no signature at all");
    let cipher = Cipher::new(AES_KEY, APPID).expect("key");
    let enc = cipher.encrypt(ev.as_bytes());
    let safe_body =
        format!("<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
    let sig = signature(EV_TOKEN, ts, "7");
    let (code, _) = post(
        &http,
        &format!(
            "{base}?{}&encrypt_type=aes&msg_signature=badbad",
            query(ts, "7", &sig)
        ),
        safe_body.clone(),
    )
    .await;
    assert_eq!(code, 403, "bad msg_signature");
    // Sealed for another appid: refused after a valid msg_signature.
    let other = Cipher::new(AES_KEY, "wxsomeoneelse").expect("key");
    let enc_other = other.encrypt(ev.as_bytes());
    let msig = msg_signature(EV_TOKEN, ts, "7", &enc_other);
    let (code, _) = post(
        &http,
        &format!(
            "{base}?{}&encrypt_type=aes&msg_signature={msig}",
            query(ts, "7", &sig)
        ),
        format!("<xml><Encrypt><![CDATA[{enc_other}]]></Encrypt></xml>"),
    )
    .await;
    assert_eq!(code, 400, "wrong appid");
    assert_eq!(
        status(api.clone(), ids[0].clone()).await["status"],
        "delivered"
    );
    assert_eq!(
        api.metric("wxpush_events_total", &[("result", "bad_signature")])
            .await,
        4.0
    );

    // A good safe-mode event confirms; the same event again (WeChat's retry) changes nothing.
    let msig = msg_signature(EV_TOKEN, ts, "7", &enc);
    let safe_url = format!(
        "{base}?{}&encrypt_type=aes&msg_signature={msig}",
        query(ts, "7", &sig)
    );
    assert_eq!(
        post(&http, &safe_url, safe_body.clone()).await,
        (200, "success".to_string())
    );
    let first = status(api.clone(), ids[0].clone()).await;
    assert_eq!(first["status"], "confirmed", "{first}");
    assert_eq!(first["events"][0]["matched_by"], "msgid");
    // Every further POST is sealed: the pusher is in safe mode.
    let sealed = |nonce: &str, xml: &str| {
        let enc = cipher.encrypt(xml.as_bytes());
        let url = format!(
            "{base}?{}&encrypt_type=aes&msg_signature={}",
            query(ts, nonce, &signature(EV_TOKEN, ts, nonce)),
            msg_signature(EV_TOKEN, ts, nonce, &enc)
        );
        (
            url,
            format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"),
        )
    };
    let (url, body) = sealed("8", &ev);
    assert_eq!(
        post(&http, &url, body).await,
        (200, "success".to_string()),
        "the duplicate, under another nonce this time"
    );
    assert_eq!(status(api.clone(), ids[0].clone()).await, first);
    assert_eq!(
        api.metric("wxpush_events_total", &[("result", "duplicate")])
            .await,
        1.0
    );

    // A different event for the confirmed message: recorded, not applied.
    let late = event_xml("sig-user", now + 1, msgid, "failed:user block");
    let (url, body) = sealed("9", &late);
    assert_eq!(post(&http, &url, body).await.0, 200);
    let doc = status(api.clone(), ids[0].clone()).await;
    assert_eq!(doc["status"], "confirmed");
    assert_eq!(doc["events"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(doc["events"][1]["applied"], false);

    // Other messages and events: acknowledged, ignored.
    let sub = "<xml><FromUserName>sig-user</FromUserName><CreateTime>1</CreateTime>\
               <MsgType>event</MsgType><Event>subscribe</Event></xml>";
    let (url, body) = sealed("10", sub);
    assert_eq!(post(&http, &url, body).await, (200, "success".to_string()));
    assert_eq!(
        api.metric("wxpush_events_total", &[("result", "ignored")])
            .await,
        1.0
    );
    // Malformed XML: 400; a body above 64 KiB: 413.
    let (url, _) = sealed("11", "<xml/>");
    assert_eq!(post(&http, &url, "<xml><a>".into()).await.0, 400);
    let (url, _) = sealed("12", "<xml/>");
    assert_eq!(post(&http, &url, "x".repeat(70 * 1024)).await.0, 413);

    // A pusher without an events token has no /wechat/events.
    let dir2 = tempdir();
    let plain = PusherProc::start(dir2.path(), &config(&sb_url, dir2.path(), &json!({}))).await;
    let r = http
        .get(format!(
            "{}/wechat/events?{}&echostr=x",
            plain.base,
            query(ts, "42", &signature(EV_TOKEN, ts, "42"))
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 404);
}

/// The downgrade of issue 25: a query string captured from a sealed POST (its `signature`
/// covers only token, timestamp and nonce) replayed without `encrypt_type` and
/// `msg_signature`, with a forged plaintext body, is refused in `safe` and `compatible` mode and
/// changes nothing. So is a compatible-mode body whose plaintext twin disagrees with its
/// sealed payload: only the payload counts. The genuine event then still confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_sealed_query_cannot_carry_a_forged_plaintext_body() {
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let http = reqwest::Client::new();
    let cipher = Cipher::new(AES_KEY, APPID).expect("key");
    for mode in ["safe", "compatible"] {
        let dir = tempdir();
        let cfg = config(
            &sb_url,
            dir.path(),
            &json!({"events": {"token": EV_TOKEN, "encodingAesKey": AES_KEY, "mode": mode}}),
        );
        let pusher = PusherProc::start(dir.path(), &cfg).await;
        let api = &pusher.api;
        let base = format!("{}/wechat/events", pusher.base);
        let user = format!("victim-{mode}");
        let ids = send_all(api, &[template(&user)], 1, 1).await;
        api.wait_delivered(1, Duration::from_secs(10)).await;
        let (_, before) = api.status(&ids[0]).await;
        assert_eq!(before["status"], "delivered", "{before}");
        let msgid = before["msgid"].as_i64().expect("a msgid");

        // What WeChat would send, and what an onlooker sees of it: the query string.
        let now = now_secs();
        let ts = now.to_string();
        let genuine = event_xml(&user, now, msgid, "success");
        let enc = cipher.encrypt(genuine.as_bytes());
        let sig = signature(EV_TOKEN, &ts, "77");
        let msig = msg_signature(EV_TOKEN, &ts, "77", &enc);
        let forged = event_xml(&user, now, msgid, "failed:user block");
        for (what, url, body) in [
            (
                "no encrypt_type, no msg_signature, plaintext body",
                format!("{base}?{}", query(&ts, "77", &sig)),
                forged.clone(),
            ),
            (
                "encrypt_type kept, no msg_signature",
                format!("{base}?{}&encrypt_type=aes", query(&ts, "77", &sig)),
                forged.clone(),
            ),
            (
                "msg_signature kept, plaintext body",
                format!(
                    "{base}?{}&encrypt_type=aes&msg_signature={msig}",
                    query(&ts, "77", &sig)
                ),
                forged.clone(),
            ),
        ] {
            let (code, _) = post(&http, &url, body).await;
            assert_eq!(code, 403, "{mode}: {what}");
        }
        let (_, after) = api.status(&ids[0]).await;
        assert_eq!(
            after, before,
            "{mode}: a refused request changed the message"
        );

        // A compatible-mode body: the plaintext twin says `user block`, the sealed payload
        // says `success`. Only the payload is read.
        let twin = forged.replace(
            "</xml>",
            &format!("<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"),
        );
        let url = format!(
            "{base}?{}&encrypt_type=aes&msg_signature={msig}",
            query(&ts, "77", &sig)
        );
        assert_eq!(post(&http, &url, twin).await, (200, "success".to_string()));
        let (_, doc) = api.status(&ids[0]).await;
        assert_eq!(doc["status"], "confirmed", "{mode}: {doc}");
        assert_eq!(doc["events"][0]["status"], "success", "{mode}: {doc}");
    }
}

/// Runs `tests/python/wechatpy_event.py`: the POST a WeChat SDK (wechatpy) builds for `xml` in
/// `mode`. `None` (said loudly) when wechatpy is missing outside CI; in CI that fails.
fn wechatpy_event(mode: &str, xml: &str, ts: &str, nonce: &str) -> Option<(String, String)> {
    use std::io::Write as _;
    let input = json!({
        "token": EV_TOKEN, "aes_key": AES_KEY, "appid": APPID, "mode": mode,
        "xml": xml, "timestamp": ts, "nonce": nonce,
    });
    let mut child = std::process::Command::new(wxpush_tests::python())
        .arg(wxpush_tests::workspace_root().join("tests/python/wechatpy_event.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python finishes");
    if out.status.code() == Some(3) {
        capability::require::<(), _>(
            "wechatpy (pip install -r tests/requirements.txt)",
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        )?;
    }
    assert!(
        out.status.success(),
        "wechatpy helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let query = v["query"]
        .as_object()
        .expect("query")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("&");
    Some((query, v["body"].as_str().expect("body").to_string()))
}

/// Events sealed (or, in plain mode, signed) by wechatpy, an SDK the project did not write,
/// confirm messages in every mode: the pusher's modes read what WeChat's SDKs produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechatpy_events_work_in_every_mode() {
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let http = reqwest::Client::new();
    for mode in ["plain", "compatible", "safe"] {
        let events = if mode == "plain" {
            json!({"token": EV_TOKEN, "mode": mode})
        } else {
            json!({"token": EV_TOKEN, "encodingAesKey": AES_KEY, "mode": mode})
        };
        let dir = tempdir();
        let cfg = config(&sb_url, dir.path(), &json!({"events": events}));
        let pusher = PusherProc::start(dir.path(), &cfg).await;
        let api = &pusher.api;
        let user = format!("wechatpy-{mode}");
        let ids = send_all(api, &[template(&user)], 1, 1).await;
        api.wait_delivered(1, Duration::from_secs(10)).await;
        let (_, doc) = api.status(&ids[0]).await;
        let msgid = doc["msgid"].as_i64().expect("a msgid");
        let now = now_secs();
        let xml = event_xml(&user, now, msgid, "success");
        let Some((query, body)) = wechatpy_event(mode, &xml, &now.to_string(), "4242") else {
            return;
        };
        let url = format!("{}/wechat/events?{query}", pusher.base);
        assert_eq!(
            post(&http, &url, body).await,
            (200, "success".to_string()),
            "{mode}"
        );
        let (_, doc) = api.status(&ids[0]).await;
        assert_eq!(doc["status"], "confirmed", "{mode}: {doc}");
    }
}

/// Compatible mode (plain fields plus `<Encrypt>`, handled as safe mode) with all three
/// statuses: `failed: system failed` leaves the message `delivered` with the event recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_mode_system_failures_stay_delivered_with_the_event() {
    const N: usize = 60;
    let s = setup(
        &[
            "--event-mode",
            "compat",
            "--event-aes-key",
            AES_KEY,
            "--event-user-block-share",
            "0.2",
            "--event-system-failed-share",
            "0.3",
        ],
        json!({"token": EV_TOKEN, "encodingAesKey": AES_KEY}),
    )
    .await;
    let api = &s.pusher.api;
    let msgs: Vec<_> = (0..N).map(|i| template(&format!("c{i}"))).collect();
    let ids = send_all(api, &msgs, 100, 1).await;
    let me = api.clone();
    wait_for("every event recorded", Duration::from_secs(20), || {
        let me = me.clone();
        async move {
            let c = me.metric("wxpush_events_total", &[]).await;
            (c as usize >= N).then_some(())
        }
    })
    .await;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for id in &ids {
        let (_, doc) = api.status(id).await;
        let st = doc["status"].as_str().unwrap_or("?").to_string();
        assert_eq!(doc["events"].as_array().map(Vec::len), Some(1), "{doc}");
        let ev = doc["events"][0]["status"].as_str().unwrap_or("?");
        let expected = match ev {
            "success" => "confirmed",
            "failed:user block" => "rejected_by_user",
            "failed: system failed" => "delivered",
            other => panic!("unexpected event status {other}"),
        };
        assert_eq!(st, expected, "{doc}");
        *counts.entry(ev.to_string()).or_insert(0) += 1;
    }
    let stats = s.wx.stats().await;
    for (k, v) in &stats.events.by_status {
        assert_eq!(counts.get(k).copied().unwrap_or(0), *v, "{k}: {counts:?}");
    }
    let system = counts.get("failed: system failed").copied().unwrap_or(0);
    assert!(system > 0, "{counts:?}");
    assert_eq!(
        api.metric("wxpush_events_total", &[("result", "recorded")])
            .await as u64,
        system
    );
}
