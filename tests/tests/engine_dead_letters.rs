//! Permanent errors fail fast into the dead-letter set; replay sends them again.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::pusher::{Api, PusherProc, config, tempdir, template};
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::wait_for;

async fn wait_status(api: &Api, id: &str, want: &str) -> Value {
    let api = api.clone();
    let id = id.to_string();
    wait_for(
        &format!("{id} to be {want}"),
        Duration::from_secs(30),
        || {
            let (api, id) = (api.clone(), id.clone());
            async move {
                let (_, doc) = api.status(&id).await;
                (doc["status"] == want).then_some(doc)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_fail_fast_and_replay_works() {
    let (_sb, sb_url) = sandbox::spawn(&["--users", "ok1,ok2,nf1", "--non-followers", "nf1"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let pusher = PusherProc::start(dir.path(), &config(&sb_url, dir.path(), &json!({}))).await;
    let api = &pusher.api;

    let start = Instant::now();
    let cases = [
        (template("nobody"), 40003),
        (template("nf1"), 43004),
        (
            json!({"kind": "subscribe", "touser": "ok1", "template_id": "SUB",
                   "data": {"thing1": {"value": "a value that is far too long for a thing"}}}),
            47003,
        ),
    ];
    let mut failed = Vec::new();
    for (msg, code) in &cases {
        let (status, v) = api.send(msg).await;
        assert_eq!(status, 202, "{v}");
        failed.push((v["id"].as_str().expect("id").to_string(), *code));
    }
    let (_, ok) = api.send(&template("ok1")).await;
    for (id, code) in &failed {
        let doc = wait_status(api, id, "failed").await;
        assert_eq!(doc["attempts"], 1, "not retried: {doc}");
        assert_eq!(doc["last_error"]["errcode"], *code, "{doc}");
        assert_eq!(doc["dead_letter"], true, "{doc}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        start.elapsed()
    );
    wait_status(api, ok["id"].as_str().expect("id"), "delivered").await;
    let (code, page) = api.get("/v1/dead-letters").await;
    assert_eq!(code, 200);
    let listed: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    for (id, _) in &failed {
        assert!(listed.contains(&id.as_str()), "{id} listed in {page}");
    }
    assert_eq!(
        api.metric("wxpush_messages_completed_total", &[("outcome", "failed")])
            .await,
        3.0
    );

    // Replay: fail messages with an injected permanent error, clear the fault, replay them.
    let (code, v) = wx.put_faults(&json!({"errcodes": {"47003": 1.0}})).await;
    assert_eq!(code, 200, "{v}");
    let mut replayable = Vec::new();
    for i in 0..5 {
        let (_, v) = api.send(&template(&format!("ok{}", 1 + i % 2))).await;
        let id = v["id"].as_str().expect("id").to_string();
        let doc = wait_status(api, &id, "failed").await;
        replayable.push((id, doc["client_msg_id"].clone()));
    }
    wx.put_faults(&json!({})).await;
    for (id, _) in &replayable {
        let (code, v) = api
            .post_empty(&format!("/v1/dead-letters/{id}/retry"))
            .await;
        assert_eq!(code, 202, "{v}");
        assert_eq!(v["status"], "queued");
    }
    for (id, client_msg_id) in &replayable {
        let doc = wait_status(api, id, "delivered").await;
        assert_eq!(doc["replays"], 1, "{doc}");
        assert_eq!(doc["attempts"], 1, "a fresh budget: {doc}");
        assert_eq!(&doc["client_msg_id"], client_msg_id, "same client_msg_id");
        assert_eq!(doc["dead_letter"], false);
    }
    // Replaying what is not a dead letter, or does not exist.
    let (code, v) = api
        .post_empty(&format!("/v1/dead-letters/{}/retry", replayable[0].0))
        .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("not_dead_letter")),
        "{v}"
    );
    let (code, _) = api
        .post_empty("/v1/dead-letters/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry")
        .await;
    assert_eq!(code, 404);
    let (_, page) = api.get("/v1/dead-letters?limit=2").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    let next = page["next"].as_str().expect("a next cursor");
    let (_, rest) = api.get(&format!("/v1/dead-letters?after={next}")).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1), "{rest}");
    assert!(rest["next"].is_null());
}
