//! The WeCom providers end to end (issue 22): the real `wxpush-pusher` against the real
//! `wxpush-sandbox`, whose directory rules make recipients invalid by name (`gone-*` users,
//! `unlicensed-*` users, party and tag ids from 9000).

use std::time::Duration;

use serde_json::{Value, json};
use wxpush_tests::pusher::{PusherProc, tempdir};
use wxpush_tests::sandbox::{self, EventReceiver, WxClient};
use wxpush_tests::wait_for;
use wxpush_tests::wecom::{ROBOT_KEY, app_config, count, robot_config, stats, text};

/// Waits until the message `id` has a final status; returns its status document.
async fn wait_final(pusher: &PusherProc, id: &str) -> Value {
    wait_for(&format!("{id} final"), Duration::from_secs(20), || async {
        let (_, doc) = pusher.api.status(id).await;
        let s = doc["status"].as_str().unwrap_or("").to_string();
        (!matches!(s.as_str(), "queued" | "sending" | "retrying" | "")).then_some(doc)
    })
    .await
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// A partly delivered message shows the recipients WeCom could not reach in its status, its
/// callback and a metric, and is not retried for them; a message with no valid recipient fails
/// at once (81013); a delivered message is recalled, and a refusal says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_reach_the_status_the_callback_and_the_metric() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let wx = WxClient::new(sb_url.clone());
    let rx = EventReceiver::start(0).await;
    let dir = tempdir();
    let cfg = app_config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {"allow": ["127.0.0.1"], "url": format!("http://{}/hook", rx.addr),
                              "retry": {"initialBackoff": "50ms", "maxBackoff": "200ms"}}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;

    // A WeChat template message is refused at accept, naming the field.
    let (code, err) = pusher
        .api
        .send(&json!({"touser": "o1", "template_id": "T"}))
        .await;
    assert_eq!(code, 422, "{err}");
    assert_eq!(err["error"]["field"], "template_id", "{err}");
    let (code, err) = pusher
        .api
        .send(&json!({"touser": "a", "msgtype": "textcard", "textcard": {"title": "t"}}))
        .await;
    assert_eq!(code, 422, "{err}");
    assert_eq!(err["error"]["field"], "textcard.description", "{err}");

    let mut partial = text("alice|gone-1|unlicensed-2", "order 42 failed");
    partial["toparty"] = json!("9001");
    partial["totag"] = json!("1");
    let (code, accepted) = pusher.api.send(&partial).await;
    assert_eq!(code, 202, "{accepted}");
    let id = id_of(&accepted);
    let doc = wait_final(&pusher, &id).await;
    assert_eq!(doc["status"], "delivered", "{doc}");
    assert_eq!(
        doc["attempts"], 1,
        "not retried for the invalid recipients: {doc}"
    );
    let invalid = &doc["receipt"]["invalid"];
    assert_eq!(invalid["users"], json!(["gone-1"]), "{doc}");
    assert_eq!(invalid["parties"], json!(["9001"]), "{doc}");
    assert_eq!(
        invalid["unlicensed_users"],
        json!(["unlicensed-2"]),
        "{doc}"
    );
    assert!(invalid.get("tags").is_none(), "tag 1 is valid: {doc}");
    assert!(doc["receipt"]["provider_msgid"].is_string(), "{doc}");

    let (code, none) = pusher.api.send(&text("gone-a|gone-b", "nobody")).await;
    assert_eq!(code, 202, "{none}");
    let failed_id = id_of(&none);
    let failed = wait_final(&pusher, &failed_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["attempts"], 1, "{failed}");
    assert_eq!(failed["last_error"]["errcode"], 81013, "{failed}");

    // One callback per message; the partly delivered one names the invalid recipients.
    let got = wait_for("two callbacks", Duration::from_secs(20), || async {
        let got = rx.received.lock().await;
        (got.iter().filter(|g| g.answered == 200).count() >= 2).then(|| got.clone())
    })
    .await;
    let bodies: Vec<Value> = got
        .iter()
        .map(|g| serde_json::from_str(&g.body).expect("a JSON callback"))
        .collect();
    let cb = bodies
        .iter()
        .find(|b| b["id"] == id.as_str())
        .expect("the partial message's callback");
    assert_eq!(cb["status"], "delivered", "{cb}");
    assert_eq!(cb["receipt"]["invalid"]["users"], json!(["gone-1"]), "{cb}");
    let cb_failed = bodies
        .iter()
        .find(|b| b["id"] == failed_id.as_str())
        .expect("the failed message's callback");
    assert_eq!(cb_failed["status"], "failed", "{cb_failed}");

    for (kind, n) in [("user", 1.0), ("party", 1.0), ("unlicensed_user", 1.0)] {
        let got = pusher
            .api
            .metric(
                "wxpush_invalid_recipients_total",
                &[("provider", "wecomApp"), ("kind", kind)],
            )
            .await;
        assert_eq!(got, n, "{kind}");
    }
    let s = stats(&wx).await;
    assert_eq!(count(&s, "/delivered_unique"), 1, "{s}");
    assert_eq!(
        count(&s, "/all_invalid"),
        1,
        "81013 sent once, never retried: {s}"
    );

    // Recall: the delivered message once; a failed one is refused with the reason.
    let (code, first) = pusher
        .api
        .post_empty(&format!("/v1/messages/{id}/recall"))
        .await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(
        first["provider_msgid"], doc["receipt"]["provider_msgid"],
        "{first}"
    );
    assert_eq!(count(&stats(&wx).await, "/recalls"), 1);
    let (code, r) = pusher
        .api
        .post_empty(&format!("/v1/messages/{failed_id}/recall"))
        .await;
    assert_eq!(code, 409, "{r}");
    assert_eq!(r["error"]["code"], "not_recallable", "{r}");
    // The recall is kept in the message's record.
    let (_, after) = pusher.api.status(&id).await;
    assert!(first["recalled_at"].is_string(), "{first}");
    assert_eq!(
        after["receipt"]["recalled_at"], first["recalled_at"],
        "{after}"
    );
    assert_eq!(
        after["receipt"]["provider_msgid"], doc["receipt"]["provider_msgid"],
        "{after}"
    );
    // Asking again answers the first recall, without asking WeCom again.
    let (code, again) = pusher
        .api
        .post_empty(&format!("/v1/messages/{id}/recall"))
        .await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["recalled_at"], first["recalled_at"], "{again}");
    assert_eq!(count(&stats(&wx).await, "/recalls"), 1);
    let recall_requests = wx
        .stats()
        .await
        .requests
        .get("wecom_message_recall")
        .copied();
    assert_eq!(recall_requests, Some(1), "WeCom asked once");
}

/// Sends that hang past the request timeout are retried; WeCom's duplicate check (sent with
/// every message) answers the retry of a message it already took with the first msgid, so no
/// recipient gets a message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_timeout_is_not_a_second_message() {
    const N: usize = 30;
    let (_sb, sb_url) = sandbox::spawn(&["--fault-hang-share", "0.3", "--fault-hang", "2s"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = app_config(
        &sb_url,
        dir.path(),
        &json!({
            "timeouts": {"connect": "500ms", "tlsHandshake": "500ms",
                         "responseHeader": "500ms", "request": "500ms"},
            "retry": {"initialBackoff": "100ms", "maxBackoff": "500ms", "maxAttempts": 20},
            "circuitBreaker": {"enabled": false},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    for i in 0..N {
        let (code, a) = pusher
            .api
            .send(&text(&format!("u{i}"), &format!("alert {i}")))
            .await;
        assert_eq!(code, 202, "{a}");
    }
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(60))
        .await;
    let s = stats(&wx).await;
    assert_eq!(count(&s, "/delivered_unique"), N as u64, "{s}");
    for i in 0..N {
        assert_eq!(count(&s, &format!("/per_user/u{i}")), 1, "u{i}: {s}");
    }
    let timeouts = pusher.api.metric("wxpush_send_timeouts_total", &[]).await;
    assert!(timeouts >= 1.0, "some sends timed out: {timeouts}");
    assert!(
        count(&s, "/duplicates_suppressed") >= 1,
        "a retry of a message WeCom had taken was answered as a duplicate: {s}"
    );
}

/// `kill -9` with messages in flight: after the restart every acknowledged message reaches
/// its recipient exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_over_kill_9() {
    const N: usize = 300;
    let (_sb, sb_url) = sandbox::spawn(&["--fault-latency", "20ms"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = app_config(
        &sb_url,
        dir.path(),
        &json!({"concurrency": {"maxInFlight": 8}}),
    );
    let mut pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<Value> = (0..N)
        .map(|i| text(&format!("k{i}"), &format!("job {i} done")))
        .collect();
    for chunk in msgs.chunks(50) {
        let (code, v) = pusher
            .api
            .post_json("/v1/messages/batch", &json!({"messages": chunk}))
            .await;
        assert_eq!(code, 202, "{v}");
    }
    wait_for("some deliveries", Duration::from_secs(30), || async {
        (count(&stats(&wx).await, "/delivered_unique") >= 30).then_some(())
    })
    .await;
    pusher.kill9();
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let s = wait_for(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            let s = stats(&wx).await;
            (count(&s, "/delivered_unique") >= N as u64).then_some(s)
        },
    )
    .await;
    assert_eq!(count(&s, "/delivered_unique"), N as u64, "{s}");
    for i in 0..N {
        assert_eq!(count(&s, &format!("/per_user/k{i}")), 1, "k{i}: {s}");
    }
    drop(pusher);
}

/// A robot has no duplicate check: a send whose answer never came (the sandbox took it and
/// hung) is not re-sent. The message ends `unknown_outcome` in its status, its callback and
/// the outcome metric, and exactly one send reached the robot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_send_with_an_unknown_outcome_is_not_sent_again() {
    let (_sb, sb_url) = sandbox::spawn(&["--fault-hang-share", "1", "--fault-hang", "3s"]);
    let wx = WxClient::new(sb_url.clone());
    let rx = EventReceiver::start(0).await;
    let dir = tempdir();
    let cfg = robot_config(
        &sb_url,
        dir.path(),
        &json!({
            "timeouts": {"connect": "500ms", "tlsHandshake": "500ms",
                         "responseHeader": "500ms", "request": "500ms"},
            "retry": {"initialBackoff": "100ms", "maxBackoff": "500ms", "maxAttempts": 10},
            "circuitBreaker": {"enabled": false},
            "callbacks": {"allow": ["127.0.0.1"], "url": format!("http://{}/hook", rx.addr),
                          "retry": {"initialBackoff": "50ms", "maxBackoff": "200ms"}},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let (code, a) = pusher
        .api
        .send(&json!({"msgtype": "text", "text": {"content": "disk full on db-1"}}))
        .await;
    assert_eq!(code, 202, "{a}");
    let id = id_of(&a);
    let doc = wait_final(&pusher, &id).await;
    assert_eq!(doc["status"], "unknown_outcome", "{doc}");
    assert_eq!(doc["attempts"], 1, "{doc}");
    assert_eq!(doc["last_error"]["kind"], "unknown_outcome", "{doc}");
    let cb = wait_for("the callback", Duration::from_secs(20), || async {
        let got = rx.received.lock().await;
        got.iter()
            .filter(|g| g.answered == 200)
            .find_map(|g| serde_json::from_str::<Value>(&g.body).ok())
    })
    .await;
    assert_eq!(cb["id"], id.as_str(), "{cb}");
    assert_eq!(cb["status"], "unknown_outcome", "{cb}");
    let parked = pusher
        .api
        .metric(
            "wxpush_messages_completed_total",
            &[("outcome", "unknown_outcome")],
        )
        .await;
    assert_eq!(parked, 1.0);
    // Exactly one send reached the robot; a re-send would have been a second message. Watched
    // past the pusher's backoff (at most 500 ms) so that a late re-send fails the test.
    let mut seen = 0;
    for _ in 0..15 {
        seen = count(&stats(&wx).await["robots"][ROBOT_KEY], "/delivered");
        if seen > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = stats(&wx).await;
    assert_eq!(seen, 1, "{s}");
    assert_eq!(count(&s["robots"][ROBOT_KEY], "/repeated"), 0, "{s}");
}

/// `kill -9` of a robot channel with messages queued and some in flight: after the restart
/// every acknowledged message ends `delivered`, except one whose attempt had started before the
/// kill and whose outcome was never recorded: a robot has no de-duplication, so that one ends
/// `unknown_outcome` (reported, never sent a second time). No message is lost silently and none
/// reaches the robot twice. A robot sends at most 20 messages a minute, so the test keeps to
/// five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_to_a_robot_is_lost_over_kill_9() {
    const N: usize = 5;
    let (_sb, sb_url) = sandbox::spawn(&["--fault-latency", "20ms"]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = robot_config(&sb_url, dir.path(), &json!({}));
    let mut pusher = PusherProc::start(dir.path(), &cfg).await;
    let msgs: Vec<Value> = (0..N)
        .map(|i| json!({"msgtype": "text", "text": {"content": format!("deploy {i} done")}}))
        .collect();
    let (code, v) = pusher
        .api
        .post_json("/v1/messages/batch", &json!({"messages": msgs}))
        .await;
    assert_eq!(code, 202, "{v}");
    let ids = wxpush_tests::pusher::ids_of(&v);
    assert_eq!(ids.len(), N, "{v}");
    let robot = |s: &Value| count(&s["robots"][ROBOT_KEY], "/delivered");
    wait_for("a first delivery", Duration::from_secs(30), || async {
        (robot(&stats(&wx).await) >= 1).then_some(())
    })
    .await;
    pusher.kill9();
    let killed_at = jiff::Timestamp::now();
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let mut docs = Vec::new();
    for id in &ids {
        docs.push(wait_final(&pusher, id).await);
    }
    let s = stats(&wx).await;
    let mut delivered = 0u64;
    let mut unknown = 0u64;
    for doc in &docs {
        match doc["status"].as_str() {
            Some("delivered") => delivered += 1,
            Some("unknown_outcome") => {
                // Only a send whose attempt started before the kill may end so.
                let started: jiff::Timestamp = doc["first_attempt_at"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("no first_attempt_at: {doc}"));
                assert!(started < killed_at, "{doc}\n{s}");
                assert_eq!(doc["last_error"]["kind"], "unknown_outcome", "{doc}");
                unknown += 1;
            }
            _ => panic!("neither delivered nor unknown_outcome: {doc}\n{s}"),
        }
    }
    assert_eq!(delivered + unknown, N as u64, "{s}");
    // Every delivered message reached the robot; an unknown outcome may or may not have; no
    // body reached it twice.
    let reached = robot(&s);
    assert!(
        (delivered..=delivered + unknown).contains(&reached),
        "{delivered} delivered, {unknown} unknown, {reached} at the robot: {s}"
    );
    assert_eq!(count(&s["robots"][ROBOT_KEY], "/repeated"), 0, "{s}");
    drop(pusher);
}

/// A group robot channel: messages go to `webhook/send` with the key, never more than 20 in
/// any 60 s window, so WeCom never answers 45009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_never_exceeds_twenty_messages_a_minute() {
    const N: usize = 22;
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let wx = WxClient::new(sb_url.clone());
    let dir = tempdir();
    let cfg = robot_config(&sb_url, dir.path(), &json!({}));
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let (code, err) = pusher.api.send(&text("alice", "x")).await;
    assert_eq!(code, 422, "a robot takes no recipients: {err}");
    assert_eq!(err["error"]["field"], "touser", "{err}");
    for i in 0..N {
        let (code, a) = pusher
            .api
            .send(
                &json!({"msgtype": "markdown", "markdown": {"content": format!("**build {i}**")}}),
            )
            .await;
        assert_eq!(code, 202, "{a}");
    }
    // 22 messages at 20 a minute: the last goes out after a minute.
    pusher
        .api
        .wait_delivered(N as u64, Duration::from_secs(100))
        .await;
    let s = stats(&wx).await;
    let robot = &s["robots"]["robot-key"];
    assert_eq!(count(robot, "/delivered"), N as u64, "{s}");
    assert_eq!(count(robot, "/refused_45009"), 0, "{s}");
    assert!(count(robot, "/peak_per_window") <= 20, "{s}");
}

/// WeCom's callback URL check: the sandbox, as WeCom does when an admin saves the URL, sends
/// an encrypted `echostr` signed with `msg_signature`; the pusher answers the plain text,
/// opening it with the corp id as receive id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_url_is_verified_with_the_corp_id_as_receive_id() {
    const AES_KEY: &str = "wecomSandboxEncodingAesKey0123456789abcdefg";
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let cfg = app_config(
        &sb_url,
        dir.path(),
        &json!({"events": {"token": "wecomtoken", "encodingAesKey": AES_KEY, "mode": "safe"}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let events = format!("{}/wechat/events", pusher.base);
    let (_caller, caller_url) = sandbox::spawn(&["--wecom-callback-url", &events]);
    let v = WxClient::new(caller_url.clone())
        .post_raw("/__wecom/verify", "{}")
        .await;
    assert_eq!(v["verified"], true, "{v}");
    // A change event (a user left the corp) is checked and acknowledged.
    let caller = WxClient::new(caller_url.clone());
    caller
        .post_raw(
            "/__wecom/events",
            r#"{"type": "delete_user", "user_id": "u1"}"#,
        )
        .await;
    wait_for(
        "the event acknowledged",
        Duration::from_secs(10),
        || async { (count(&stats(&caller).await, "/callback/acknowledged") >= 1).then_some(()) },
    )
    .await;
    // The change events a sender needs are read: recipients that became unreachable are
    // counted; other changes and card taps are acknowledged as ignored.
    for event in [
        r#"{"type": "update_user", "user_id": "u2", "status": 5}"#,
        r#"{"type": "update_user", "user_id": "u3", "new_user_id": "u3b"}"#,
        r#"{"type": "delete_party", "party_id": 3}"#,
        r#"{"type": "update_user", "user_id": "u4", "status": 1}"#,
        r#"{"type": "create_user", "user_id": "u5"}"#,
        r#"{"type": "template_card_event", "user_id": "u6", "task_id": "t1",
            "card_type": "button_interaction", "event_key": "ok"}"#,
    ] {
        let v = caller.post_raw("/__wecom/events", event).await;
        assert_eq!(v["acknowledged"], true, "{event}: {v}");
    }
    for (event, result, n) in [
        ("change_contact", "unreachable", 4.0),
        ("change_contact", "ignored", 2.0),
        ("template_card_event", "ignored", 1.0),
        ("other", "ignored", 0.0),
    ] {
        let got = pusher
            .api
            .metric(
                "wxpush_events_total",
                &[("event", event), ("result", result)],
            )
            .await;
        assert_eq!(got, n, "{event} {result}");
    }
    // A sandbox of another corp seals for another receive id: refused.
    let (_other, other_url) = sandbox::spawn(&[
        "--wecom-callback-url",
        &events,
        "--wecom-corp-id",
        "wwother",
    ]);
    let v = WxClient::new(other_url)
        .post_raw("/__wecom/verify", "{}")
        .await;
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["status"], 403, "{v}");
}
