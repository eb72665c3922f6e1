//! The pusher's HTTP API at its edges: bad requests get the documented codes and change
//! nothing; idempotency; backpressure (429 + Retry-After, nothing half-written); graceful
//! shutdown; `check-config`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::pusher::{Api, PusherProc, TOKEN, config, config_path, tempdir, template};
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::{binary, wait_for};

/// What, token, content type, body, expected status, code and field.
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    String,
    u16,
    &'a str,
    Option<&'a str>,
);

async fn raw(
    api: &Api,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value, Option<String>) {
    let mut req = api
        .http
        .post(format!("{}/v1/messages", api.base))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(c) = content_type {
        req = req.header("content-type", c);
    }
    let r = req.send().await.expect("answers");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_documented_codes_and_change_nothing() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"api": {"maxBodyBytes": 2048, "maxBatch": 5}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let api = &pusher.api;
    let good = template("u1").to_string();
    let json_ct = Some("application/json");
    let cases: Vec<Case> = vec![
        ("no token", None, json_ct, good.clone(), 401, "unauthorized", None),
        ("wrong token", Some("not-the-token-at-all"), json_ct, good.clone(), 401, "unauthorized", None),
        ("wrong content type", Some(TOKEN), Some("text/plain"), good.clone(), 415, "unsupported_media_type", None),
        ("no content type", Some(TOKEN), None, good.clone(), 415, "unsupported_media_type", None),
        ("malformed JSON", Some(TOKEN), json_ct, "{\"touser\": ".into(), 400, "malformed_json", None),
        ("oversized", Some(TOKEN), json_ct,
            json!({"touser": "u", "template_id": "T", "data": {"k": {"value": "x".repeat(900)}, "l": {"value": "y".repeat(900)}, "m": {"value": "z".repeat(900)}}}).to_string(),
            413, "body_too_large", None),
        ("missing touser", Some(TOKEN), json_ct, json!({"template_id": "T"}).to_string(), 422, "missing_field", Some("touser")),
        ("missing template_id", Some(TOKEN), json_ct, json!({"touser": "u"}).to_string(), 422, "missing_field", Some("template_id")),
        ("unknown field", Some(TOKEN), json_ct, json!({"touser": "u", "template_id": "T", "priority": 1}).to_string(), 422, "unknown_field", Some("priority")),
        ("over-long", Some(TOKEN), json_ct, json!({"touser": "u".repeat(200), "template_id": "T"}).to_string(), 422, "too_long", Some("touser")),
        ("bad URL", Some(TOKEN), json_ct, json!({"touser": "u", "template_id": "T", "url": "javascript:alert(1)"}).to_string(), 422, "invalid_field", Some("url")),
        ("not an object", Some(TOKEN), json_ct, "[1, 2]".into(), 422, "invalid_field", Some("")),
    ];
    for (what, token, ct, body, status, code, field) in cases {
        let (got, v, _) = raw(api, token, ct, body).await;
        assert_eq!(got, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{what}: {v}");
        }
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    // A batch over api.maxBatch, and a status read with a bad token.
    let six: Vec<Value> = (0..6).map(|i| template(&format!("u{i}"))).collect();
    let (code, v) = api.try_batch(&six, None).await.expect("answers");
    assert_eq!(
        (code, v["error"]["field"].as_str()),
        (422, Some("messages")),
        "{v}"
    );
    let (code, _) = Api::new(&api.base, "wrong-token-wrong-token")
        .status("x")
        .await;
    assert_eq!(code, 401);
    // Nothing changed: nothing accepted, queued or sent.
    assert_eq!(api.metric("wxpush_messages_accepted_total", &[]).await, 0.0);
    for state in ["ready", "delayed", "inflight", "dead"] {
        assert_eq!(
            api.metric("wxpush_queue_messages", &[("state", state)])
                .await,
            0.0
        );
    }
    assert_eq!(
        wx.stats()
            .await
            .requests
            .get("template_send")
            .copied()
            .unwrap_or(0),
        0
    );

    // A batch with one bad item: the good ones are accepted, the bad one named by index.
    let mut mixed: Vec<Value> = (0..3).map(|i| template(&format!("m{i}"))).collect();
    mixed[1] = json!({"touser": "m1"});
    let (code, v) = api.try_batch(&mixed, None).await.expect("answers");
    assert_eq!(code, 202, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(
        v["results"][1]["error"]["field"], "messages[1].template_id",
        "{v}"
    );
    assert!(v["results"][0]["id"].is_string() && v["results"][2]["id"].is_string());

    // Idempotency: the same key answers the first id; unknown ids are 404.
    let (c1, a) = api
        .try_send(&template("idem"), Some("order-42"))
        .await
        .expect("answers");
    let (c2, b) = api
        .try_send(&template("idem"), Some("order-42"))
        .await
        .expect("answers");
    assert_eq!((c1, c2), (202, 202));
    assert_eq!(a["id"], b["id"]);
    api.wait_delivered(3, Duration::from_secs(30)).await;
    assert_eq!(api.metric("wxpush_messages_accepted_total", &[]).await, 3.0);
    let (code, doc) = api.status(a["id"].as_str().expect("id")).await;
    assert_eq!(
        (code, doc["status"].as_str()),
        (200, Some("delivered")),
        "{doc}"
    );
    let (code, v) = api.status("01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, _) = api.status("not-an-id").await;
    assert_eq!(code, 404);
}

/// A POST with `Idempotency-Key: key` and a body given as text; status, `Idempotent-Replayed`,
/// `Location` and the answer.
async fn keyed(api: &Api, path: &str, key: &str, body: &str) -> (u16, bool, Option<String>, Value) {
    let r = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("answers");
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let location = header("location");
    (
        status,
        replayed,
        location,
        r.json().await.unwrap_or(Value::Null),
    )
}

/// A reused `Idempotency-Key` replays the same request (spacing and key order aside) and
/// refuses another body with 422 `idempotency_key_reused`, on both routes, storing nothing; the
/// edge answers (`limit`, an empty batch, a wrong method) carry their documented codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_key_with_another_body_is_refused_on_both_routes() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let cfg = config(&sb_url, dir.path(), &json!({}));
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let api = &pusher.api;

    let one = r#"{"touser": "k1", "template_id": "T", "data": {"a": {"value": "1"}}}"#;
    let same = r#"{"data":{"a":{"value":"1"}},"template_id":"T","touser":"k1"}"#;
    let other = r#"{"touser": "k1", "template_id": "T", "data": {"a": {"value": "2"}}}"#;
    let (c, replayed, loc, first) = keyed(api, "/v1/messages", "single-1", one).await;
    assert_eq!((c, replayed), (202, false), "{first}");
    let id = first["id"].as_str().expect("id").to_string();
    assert_eq!(loc.as_deref(), Some(format!("/v1/messages/{id}").as_str()));
    let (c, replayed, loc, again) = keyed(api, "/v1/messages", "single-1", same).await;
    assert_eq!(
        (c, replayed, again["id"].as_str()),
        (202, true, Some(id.as_str())),
        "{again}"
    );
    assert_eq!(loc.as_deref(), Some(format!("/v1/messages/{id}").as_str()));
    let (c, replayed, _, refused) = keyed(api, "/v1/messages", "single-1", other).await;
    assert_eq!((c, replayed), (422, false), "{refused}");
    assert_eq!(
        (
            refused["error"]["code"].as_str(),
            refused["error"]["field"].as_str()
        ),
        (Some("idempotency_key_reused"), Some("Idempotency-Key")),
        "{refused}"
    );

    let batch = json!({"messages": [template("b1"), template("b2")]}).to_string();
    let changed = json!({"messages": [template("b1"), template("b3")]}).to_string();
    let longer = json!({"messages": [template("b1"), template("b2"), template("b4")]}).to_string();
    let (c, replayed, _, first) = keyed(api, "/v1/messages/batch", "batch-1", &batch).await;
    assert_eq!((c, replayed), (202, false), "{first}");
    let (c, replayed, _, again) = keyed(api, "/v1/messages/batch", "batch-1", &batch).await;
    assert_eq!((c, replayed), (202, true), "{again}");
    // The same ids; each with its current status (the first answer said "queued", and the
    // messages may have been delivered since).
    let ids = |v: &Value| -> Vec<Value> {
        v["results"]
            .as_array()
            .map(|a| a.iter().map(|r| r["id"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(ids(&first).len(), 2, "{first}");
    for body in [&changed, &longer] {
        let (c, replayed, _, refused) = keyed(api, "/v1/messages/batch", "batch-1", body).await;
        assert_eq!((c, replayed), (422, false), "{refused}");
        assert_eq!(
            refused["error"]["code"], "idempotency_key_reused",
            "{refused}"
        );
    }
    api.wait_delivered(3, Duration::from_secs(30)).await;
    assert_eq!(
        api.metric("wxpush_messages_accepted_total", &[]).await,
        3.0,
        "the refused requests stored nothing"
    );

    for q in ["limit=0", "limit=5000", "limit=abc", "limit=-1", "page=2"] {
        let (c, v) = api.get(&format!("/v1/dead-letters?{q}")).await;
        assert_eq!(
            (c, v["error"]["code"].as_str()),
            (400, Some("bad_query")),
            "{q}: {v}"
        );
    }
    let (c, v) = api.get("/v1/dead-letters?limit=1000").await;
    assert_eq!(c, 200, "{v}");
    let (c, v) = api.try_batch(&[], None).await.expect("answers");
    assert_eq!(
        (c, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (422, Some("empty_batch"), Some("messages")),
        "{v}"
    );
    let r = api
        .http
        .delete(format!("{}/v1/messages", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().contains_key("allow"));
    let v: Value = r.json().await.expect("a JSON body");
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_writes_nothing() {
    let dir = tempdir();
    // WeChat unreachable: messages stay pending.
    let cfg = config(
        "http://127.0.0.1:9",
        dir.path(),
        &json!({
            "queue": {"embedded": {"maxMessages": 3}},
            "retry": {"initialBackoff": "10s", "maxBackoff": "30s"},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let api = &pusher.api;
    for i in 0..2 {
        assert_eq!(api.send(&template(&format!("f{i}"))).await.0, 202);
    }
    // Two more do not fit: the whole batch is refused.
    let two = [template("f2"), template("f3")];
    let r = api
        .http
        .post(format!("{}/v1/messages/batch", api.base))
        .bearer_auth(TOKEN)
        .json(&json!({"messages": two}))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 429);
    assert!(
        r.headers().get("retry-after").is_some(),
        "Retry-After is set"
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    assert_eq!(api.metric("wxpush_messages_accepted_total", &[]).await, 2.0);
    assert_eq!(api.send(&template("f4")).await.0, 202, "one still fits");
    let (code, v, retry) = raw(
        api,
        Some(TOKEN),
        Some("application/json"),
        template("f5").to_string(),
    )
    .await;
    assert_eq!((code, retry.is_some()), (429, true), "{v}");
    let text = api.metrics().await;
    let pending: f64 = ["ready", "delayed", "inflight"]
        .iter()
        .map(|s| {
            wxpush_tests::pusher::metric_value(&text, "wxpush_queue_messages", &[("state", s)])
        })
        .sum();
    assert_eq!(pending, 3.0);
}

/// SIGTERM while sends are in flight: not ready at once, new messages refused, in-flight
/// sends finish, the process exits within the drain timeout, and what was not sent is there
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_keeps_the_rest() {
    let (_sb, sb_url) = sandbox::spawn(&["--fault-latency", "1500ms"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"concurrency": {"maxInFlight": 2}, "shutdown": {"drainTimeout": "6s"}}),
    );
    let mut pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<Value> = (0..6).map(|i| template(&format!("s{i}"))).collect();
    let ids = pusher.api.batch_ids(&msgs).await;
    let api = pusher.api.clone();
    // In flight means at WeChat: a request the sandbox has received and not yet answered
    // (leased messages still waiting for a slot of the concurrency gate are not sent).
    wait_for("sends in flight at WeChat", Duration::from_secs(20), || {
        let wx = wx.clone();
        async move {
            let stats = wx.stats().await;
            (stats.requests.get("template_send").copied().unwrap_or(0) >= 1).then_some(())
        }
    })
    .await;
    pusher.guard.terminate();
    let t0 = Instant::now();
    wait_for("/readyz to turn 503", Duration::from_secs(2), || {
        let api = api.clone();
        async move { (api.raw_get("/readyz").await.0 == 503).then_some(()) }
    })
    .await;
    let (code, v) = api.send(&template("late")).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (503, Some("draining")),
        "{v}"
    );
    let status = loop {
        if let Some(s) = pusher.guard.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "exited within the drain timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    let delivered_at_stop = wx.stats().await.delivered_unique;
    assert!(
        (1..6).contains(&delivered_at_stop),
        "in-flight sends finished, the rest waited: {delivered_at_stop}"
    );

    let second = PusherProc::start_with(&config_path(dir.path()), &[]).await;
    for id in &ids {
        let api = second.api.clone();
        wait_for(
            "every message delivered after the restart",
            Duration::from_secs(30),
            || {
                let api = api.clone();
                async move { (api.status(id).await.1["status"] == "delivered").then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(wx.stats().await.delivered_unique, 6);
}

#[test]
fn check_config_names_fields_and_hides_secrets() {
    let dir = tempdir();
    let good = config("http://127.0.0.1:9", dir.path(), &json!({}));
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, good.to_string()).expect("write");
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(TOKEN) && !stdout.contains(wxpush_tests::sandbox::SECRET),
        "{stdout}"
    );
    assert!(
        stdout.contains("<redacted>") && stdout.contains("maxInFlight"),
        "{stdout}"
    );

    let mut bad = good.clone();
    wxpush_tests::pusher::merge(
        &mut bad,
        &json!({"retry": {"initialBackoff": "1m", "maxBackoff": "1s"}, "apiBaseUrl": "nope"}),
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, bad.to_string()).expect("write");
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("retry.initialBackoff") && stderr.contains("apiBaseUrl"),
        "{stderr}"
    );

    // The environment overrides the file (here: the auth token and the listen address).
    let path = config_path(dir.path());
    std::fs::write(&path, good.to_string()).expect("write");
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env("WXPUSH_LISTEN", "not-an-address")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WXPUSH_LISTEN"));
}
