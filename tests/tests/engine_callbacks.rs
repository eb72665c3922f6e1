//! Outcome callbacks end to end: the real `wxpush-pusher` against the real `wxpush-sandbox`,
//! with small HTTP receivers standing in for producers. Signatures are checked here
//! independently (hmac + sha2), against the documented scheme:
//! `X-Wxpush-Signature: sha256=hex(HMAC-SHA256(key, "<X-Wxpush-Timestamp>.<body>"))`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use wxpush_tests::pusher::{PusherProc, config, send_all, tempdir, template};
use wxpush_tests::sandbox;
use wxpush_tests::sandbox::{EventReceiver as Receiver, Received as Got};
use wxpush_tests::wait_for;

const KEY: &str = "callback-signing-key-for-tests";

/// The receiver's URL at `path` (it records any path).
fn url(rx: &Receiver, path: &str) -> String {
    format!("http://{}{path}", rx.addr)
}

/// Waits until `n` requests were answered 200; returns every request.
async fn wait_ok(rx: &Receiver, n: usize, timeout: Duration) -> Vec<Got> {
    wait_for(&format!("{n} callbacks answered 200"), timeout, || async {
        let got = rx.received.lock().await;
        (got.iter().filter(|g| g.answered == 200).count() >= n).then(|| got.clone())
    })
    .await
}

/// Checks the signature headers of `g` independently; returns the parsed body.
fn verified(g: &Got) -> Value {
    verified_with(g, KEY)
}

/// Whether `g` is signed with `key`.
fn signed_with(g: &Got, key: &str) -> bool {
    let (Some(ts), Some(sig)) = (
        g.headers.get("x-wxpush-timestamp"),
        g.headers.get("x-wxpush-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(format!("{ts}.{}", g.body).as_bytes());
    *sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Issue 25: `callbacks.signingKey` from a file rotates without a restart. After the file's
/// content changes, callbacks carry the new key's signature (a receiver accepts both keys
/// during the overlap, as docs/pusher.md says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_rotates_without_a_restart() {
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let rx = Receiver::start(0).await;
    let dir = tempdir();
    let key_file = dir.path().join("signing-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write");
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {
            "allow": ["127.0.0.1"],
            "url": url(&rx, "/hooks"),
            "signingKey": {"file": key_file},
        }}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    send_all(&pusher.api, &[template("rot-1")], 1, 1).await;
    let got = wait_ok(&rx, 1, Duration::from_secs(20)).await;
    verified(&got[0]);

    const NEW_KEY: &str = "the-rotated-signing-key";
    std::fs::write(&key_file, NEW_KEY).expect("rotate");
    // Within a reload period (1 s) every new callback carries the new signature.
    let mut sent = 1;
    wait_for(
        "a callback signed with the new key",
        Duration::from_secs(15),
        || {
            sent += 1;
            let api = pusher.api.clone();
            let rx = &rx;
            let n = sent;
            async move {
                send_all(&api, &[template(&format!("rot-{n}"))], 1, 1).await;
                let got = wait_ok(rx, n, Duration::from_secs(20)).await;
                signed_with(&got[n - 1], NEW_KEY).then_some(())
            }
        },
    )
    .await;
    let got = rx.received.lock().await.clone();
    for g in &got {
        assert!(
            signed_with(g, KEY) || signed_with(g, NEW_KEY),
            "a callback signed with neither key: {}",
            g.body
        );
    }
}

fn verified_with(g: &Got, key: &str) -> Value {
    let ts = g
        .headers
        .get("x-wxpush-timestamp")
        .expect("timestamp header");
    let sig = g
        .headers
        .get("x-wxpush-signature")
        .expect("signature header");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(format!("{ts}.{}", g.body).as_bytes());
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(sig, &want, "signature of {}", g.body);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ts: i64 = ts.parse().expect("numeric timestamp");
    assert!((now - ts).abs() < 120, "timestamp {ts} is recent");
    assert_eq!(
        g.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    serde_json::from_str(&g.body).expect("JSON body")
}

/// 100 delivered messages and one permanently failing one (40003) each get exactly one
/// successful callback at the channel's URL, signed; one message with its own `callback_url`
/// gets it there instead; the channel receiver fails its first 5 requests, which are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_gets_one_signed_callback() {
    const N: usize = 100;
    const FAIL_FIRST: usize = 5;
    let users: Vec<String> = (0..N)
        .map(|i| format!("u{i}"))
        .chain(["own".to_string()])
        .collect();
    let (_sb, sb_url) = sandbox::spawn(&["--users", &users.join(",")]);
    let channel_rx = Receiver::start(FAIL_FIRST).await;
    let own_rx = Receiver::start(0).await;
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {
            "allow": ["127.0.0.1"],
            "url": url(&channel_rx, "/hooks/wxpush"),
            "signingKey": KEY,
            "timeouts": {"connect": "2s", "request": "5s"},
            "retry": {"initialBackoff": "50ms", "maxBackoff": "200ms", "maxAttempts": 10,
                      "maxAge": "1m"},
        }}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let start = Instant::now();

    let msgs: Vec<Value> = (0..N).map(|i| template(&format!("u{i}"))).collect();
    let ids = send_all(&pusher.api, &msgs, 25, 4).await;
    assert_eq!(ids.len(), N);
    let (code, bad) = pusher.api.send(&template("nobody")).await;
    assert_eq!(code, 202, "{bad}");
    let bad_id = bad["id"].as_str().expect("id").to_string();
    let mut own = template("own");
    own["callback_url"] = json!(url(&own_rx, "/mine"));
    let (code, own) = pusher.api.send(&own).await;
    assert_eq!(code, 202, "{own}");
    let own_id = own["id"].as_str().expect("id").to_string();

    let got = wait_ok(&channel_rx, N + 1, Duration::from_secs(20)).await;
    let mine = wait_ok(&own_rx, 1, Duration::from_secs(20)).await;
    eprintln!("{} callbacks in {:?}", N + 2, start.elapsed());

    // The channel receiver: 5 refused requests, then exactly one 200 per message.
    assert_eq!(
        got.iter().filter(|g| g.answered == 500).count(),
        FAIL_FIRST,
        "the first requests were refused"
    );
    let mut ok_by_id: HashMap<String, Value> = HashMap::new();
    for g in &got {
        let body = verified(g);
        if g.answered == 200 {
            let id = body["id"].as_str().expect("id").to_string();
            assert!(
                ok_by_id.insert(id.clone(), body).is_none(),
                "{id} got a second successful callback"
            );
        }
    }
    let want: HashSet<String> = ids.iter().cloned().chain([bad_id.clone()]).collect();
    let have: HashSet<String> = ok_by_id.keys().cloned().collect();
    assert_eq!(
        have, want,
        "one callback per message, none for the own-URL message"
    );
    for id in &ids {
        let b = &ok_by_id[id];
        assert_eq!(b["status"], "delivered", "{b}");
        assert!(b["msgid"].as_i64().is_some(), "{b}");
        assert_eq!(b["attempts"], 1, "{b}");
        assert_eq!(b["client_msg_id"], format!("wxp-{id}"), "{b}");
        assert!(b["touser"].as_str().is_some_and(|t| t.starts_with('u')));
        assert!(b["accepted_at"].is_string() && b["finished_at"].is_string());
        assert!(b.get("last_error").is_none(), "{b}");
    }
    let b = &ok_by_id[&bad_id];
    assert_eq!(b["status"], "failed", "{b}");
    assert_eq!(b["touser"], "nobody");
    assert_eq!(b["last_error"]["errcode"], 40003, "{b}");
    assert!(b.get("msgid").is_none(), "{b}");

    // The per-message URL won over the channel's.
    assert_eq!(mine.len(), 1);
    let b = verified(&mine[0]);
    assert_eq!(b["id"], own_id);
    assert_eq!(b["status"], "delivered");

    // The metric agrees (ok is counted after the store recorded it, so wait for it).
    let api = pusher.api.clone();
    wait_for("callback metrics", Duration::from_secs(5), || {
        let api = api.clone();
        async move {
            let ok = api
                .metric("wxpush_callbacks_total", &[("result", "ok")])
                .await;
            (ok as usize == N + 2).then_some(())
        }
    })
    .await;
    let retry = pusher
        .api
        .metric("wxpush_callbacks_total", &[("result", "retry")])
        .await;
    assert_eq!(retry as usize, FAIL_FIRST);
    let gave_up = pusher
        .api
        .metric("wxpush_callbacks_total", &[("result", "gave_up")])
        .await;
    assert_eq!(gave_up, 0.0);
}

/// A receiver that never succeeds: the callback is retried `maxAttempts` times, then given
/// up (metric), and message delivery is not held up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_given_up_after_max_attempts() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let rx = Receiver::start(usize::MAX).await;
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {
            "allow": ["127.0.0.1"],
            "url": url(&rx, "/down"),
            "retry": {"initialBackoff": "20ms", "maxBackoff": "50ms", "maxAttempts": 3},
        }}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<Value> = (0..20).map(|i| template(&format!("d{i}"))).collect();
    send_all(&pusher.api, &msgs, 20, 1).await;
    pusher.api.wait_delivered(20, Duration::from_secs(10)).await;
    let api = pusher.api.clone();
    wait_for("20 callbacks given up", Duration::from_secs(15), || {
        let api = api.clone();
        async move {
            let n = api
                .metric("wxpush_callbacks_total", &[("result", "gave_up")])
                .await;
            (n as u64 == 20).then_some(())
        }
    })
    .await;
    let got = rx.received.lock().await.clone();
    assert_eq!(got.len(), 60, "3 attempts each");
    assert!(
        got.iter()
            .all(|g| !g.headers.contains_key("x-wxpush-signature")),
        "no signing key, no signature"
    );
    let retry = pusher
        .api
        .metric("wxpush_callbacks_total", &[("result", "retry")])
        .await;
    assert_eq!(retry as u64, 40);
}

/// Pending callbacks survive `kill -9`: the receiver refuses everything, the pusher is killed
/// with callbacks pending, the receiver recovers, and after a restart on the same store every
/// message's callback arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_callbacks_survive_kill_9() {
    const N: usize = 20;
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let rx = Receiver::start(usize::MAX).await;
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {
            "allow": ["127.0.0.1"],
            "url": url(&rx, "/later"),
            "signingKey": KEY,
            "retry": {"initialBackoff": "300ms", "maxBackoff": "300ms", "maxAttempts": 100},
        }}),
    );
    let mut pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<Value> = (0..N).map(|i| template(&format!("k{i}"))).collect();
    let ids = send_all(&pusher.api, &msgs, N, 1).await;
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(10))
        .await;
    let got = rx.received.clone();
    wait_for(
        "every callback refused once",
        Duration::from_secs(10),
        || {
            let got = got.clone();
            async move { (got.lock().await.len() >= N).then_some(()) }
        },
    )
    .await;
    pusher.kill9();
    rx.set_fail_first(0);
    rx.received.lock().await.clear();

    let pusher = PusherProc::start_with(&wxpush_tests::pusher::config_path(dir.path()), &[]).await;
    let got = wait_ok(&rx, N, Duration::from_secs(10)).await;
    let have: HashSet<String> = got
        .iter()
        .filter(|g| g.answered == 200)
        .map(|g| verified(g)["id"].as_str().expect("id").to_string())
        .collect();
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(
        have, want,
        "every pending callback was sent after the restart"
    );
    drop(pusher);
}

/// With `/wechat/events` wired to the sandbox, each message gets two callbacks: `delivered`,
/// then `confirmed` or `rejected_by_user` (as its status says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_give_a_second_callback_confirmed_or_rejected() {
    const N: usize = 40;
    const EV_TOKEN: &str = "events-token-callbacks";
    let port = wxpush_tests::free_port();
    let event_url = format!("http://127.0.0.1:{port}/wechat/events");
    let (_sb, sb_url) = sandbox::spawn(&[
        "--event-url",
        &event_url,
        "--event-token",
        EV_TOKEN,
        "--event-mode",
        "plain",
        "--event-user-block-share",
        "0.25",
    ]);
    let rx = Receiver::start(0).await;
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({
            "listen": format!("127.0.0.1:{port}"),
            "events": {"token": EV_TOKEN},
            "callbacks": {"url": url(&rx, "/ev"), "signingKey": KEY, "allow": ["127.0.0.1"]},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<Value> = (0..N).map(|i| template(&format!("e{i}"))).collect();
    let ids = send_all(&pusher.api, &msgs, N, 1).await;
    let got = wait_ok(&rx, 2 * N, Duration::from_secs(20)).await;
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for g in &got {
        let b = verified(g);
        by_id
            .entry(b["id"].as_str().expect("id").to_string())
            .or_default()
            .push(b["status"].as_str().expect("status").to_string());
    }
    let mut confirmed = 0;
    let mut rejected = 0;
    for id in &ids {
        let mut s = by_id.remove(id).unwrap_or_default();
        s.sort();
        let (_, doc) = pusher.api.status(id).await;
        let last = doc["status"].as_str().expect("status").to_string();
        assert!(
            s == ["delivered".to_string(), last.clone()]
                || s == [last.clone(), "delivered".to_string()],
            "{id}: callbacks {s:?}, status {last}"
        );
        match last.as_str() {
            "confirmed" => confirmed += 1,
            "rejected_by_user" => rejected += 1,
            other => panic!("{id} ended {other}"),
        }
    }
    assert!(by_id.is_empty(), "no callbacks for unknown ids");
    assert!(confirmed > 0 && rejected > 0, "{confirmed}/{rejected}");
}
