//! The template registry end to end (issue 26): the real `wxpush-pusher` against a
//! `wxpush-sandbox` that knows the account's templates (`--template-file`). Messages that break
//! their template's rules are refused at accept (`400 template_rule`, naming the key) and never
//! reach the sandbox; `truncate` delivers cut values and says so; with Redis, the pods of a
//! channel make one template-list fetch per refresh.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::pusher::{Api, PusherProc, config, merge, tempdir};
use wxpush_tests::sandbox::{self, WxClient, write_template_catalogue};
use wxpush_tests::{ChildGuard, wait_for};

fn order(touser: &str, cs: &str, thing: &str) -> Value {
    json!({"touser": touser, "template_id": "T-ORDER", "data": {
        "character_string1": {"value": cs},
        "thing2": {"value": thing},
        "time3": {"value": "2026-12-07 10:00"},
    }})
}

/// A sandbox with the tests' template catalogue (and `flags`), and one pusher with
/// `templates.validation: mode`: (its folder, the sandbox, the sandbox's URL, a client of the
/// sandbox, the pusher).
async fn start(
    mode: &str,
    flags: &[&str],
) -> (tempfile::TempDir, ChildGuard, String, WxClient, PusherProc) {
    let dir = tempdir();
    let catalogue = write_template_catalogue(dir.path());
    let mut args = vec!["--template-file", catalogue.as_str()];
    args.extend_from_slice(flags);
    let (sb, sb_url) = sandbox::spawn(&args);
    let wx = WxClient::new(sb_url.clone());
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"templates": {"validation": mode}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    (dir, sb, sb_url, wx, pusher)
}

/// Waits until the pusher's registry holds the sandbox's template list.
async fn wait_for_templates(api: &Api) {
    wait_for("the template lists", Duration::from_secs(20), || async {
        let n = api.metric("wxpush_templates", &[("list", "private")]).await;
        (n >= 2.0).then_some(())
    })
    .await;
}

/// Every "Done when" refusal: unknown template, missing keyword, a 21-character `thing`,
/// Chinese in a `character_string`, a line break. Each gets 400 naming the key and the rule;
/// the sandbox sees only the valid messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_at_accept_and_nothing_bad_reaches_wechat() {
    let (_dir, _sb, _, wx, pusher) = start("strict", &[]).await;
    wait_for_templates(&pusher.api).await;
    let (_, status) = pusher.api.get("/v1/status").await;
    assert_eq!(status["templates"]["validation"], "strict", "{status}");
    assert_eq!(status["templates"]["private"], 2, "{status}");
    assert_eq!(status["templates"]["subscribe"], 1, "{status}");
    assert!(status["templates"]["fetched_at"].is_string(), "{status}");
    let fetches_before = wx.stats().await.requests.get("template_list").copied();

    let mut missing = order("u-bad", "A1", "书");
    missing["data"]
        .as_object_mut()
        .expect("data")
        .remove("time3");
    let mut unknown = order("u-bad", "A1", "书");
    unknown["template_id"] = json!("T-NOT-MINE");
    let bad = [
        (unknown, "template_id", "unknown_template"),
        (missing, "data.time3", "missing_keyword"),
        (
            order("u-bad", "A1", &"书".repeat(21)),
            "data.thing2",
            "too_long",
        ),
        (
            order("u-bad", "订单42", "书"),
            "data.character_string1",
            "bad_characters",
        ),
        (
            order("u-bad", "A1", "two\nlines"),
            "data.thing2",
            "line_break",
        ),
    ];
    for (msg, field, rule) in &bad {
        let (status, body) = pusher.api.send(msg).await;
        assert_eq!(status, 400, "{msg} → {body}");
        assert_eq!(body["error"]["code"], "template_rule", "{body}");
        assert_eq!(body["error"]["field"], *field, "{body}");
        assert_eq!(body["error"]["rule"], *rule, "{body}");
    }
    // The unknown template triggered one refresh of the lists before its refusal.
    let fetches_after = wx.stats().await.requests.get("template_list").copied();
    assert_eq!(
        fetches_after.unwrap_or(0),
        fetches_before.unwrap_or(0) + 1,
        "one refresh for the unknown template"
    );

    // The valid ones, one alone and three in a batch next to two bad ones.
    let (status, body) = pusher
        .api
        .send(&order("u-good-0", "A-0", &"书".repeat(20)))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = pusher
        .api
        .try_batch(
            &[
                order("u-good-1", "A-1", "书"),
                order("u-bad", "订单", "书"),
                order("u-good-2", "A-2", "书"),
                order("u-bad", "A", "a\u{7}b"),
                json!({"touser": "u-good-3", "template_id": "T-OLD",
                       "data": {"first": {"value": "hi"}, "keyword1": {"value": "x"}}}),
            ],
            None,
        )
        .await
        .expect("the pusher answers");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["results"][1]["error"]["rule"], "bad_characters");
    assert_eq!(body["results"][3]["error"]["rule"], "control_character");
    pusher.api.wait_delivered(4, Duration::from_secs(20)).await;
    let stats = wx.stats().await;
    assert_eq!(stats.requests.get("template_send"), Some(&4), "{stats:?}");
    assert_eq!(stats.delivered_unique, 4);
    assert!(!stats.per_openid.contains_key("u-bad"), "{stats:?}");
    let refused = pusher
        .api
        .metric("wxpush_template_refusals_total", &[])
        .await;
    assert_eq!(refused, 7.0);
    assert_eq!(
        pusher
            .api
            .metric("wxpush_template_refusals_total", &[("rule", "too_long")])
            .await,
        1.0
    );
}

/// `truncate`: an over-long value with a line break is cleaned and cut to its limit, delivered,
/// and the status says what was cut; a value of the wrong kind is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_delivers_cut_values_and_says_so() {
    let (_dir, _sb, _, wx, pusher) = start("truncate", &[]).await;
    wait_for_templates(&pusher.api).await;
    let long = format!("{}\n{}", "一".repeat(15), "二".repeat(10));
    let (status, body) = pusher.api.send(&order("u-cut", "A-1", &long)).await;
    assert_eq!(status, 202, "{body}");
    let actions: Vec<&str> = body["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["action"].as_str())
        .collect();
    assert_eq!(actions, ["cleaned", "cut"], "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let (status, refused) = pusher.api.send(&order("u-cut", "订单", "x")).await;
    assert_eq!(status, 400, "{refused}");
    pusher.api.wait_delivered(1, Duration::from_secs(20)).await;
    let (_, doc) = pusher.api.status(&id).await;
    assert_eq!(doc["status"], "delivered", "{doc}");
    let notes = doc["message"]["template_notes"]
        .as_array()
        .expect("notes in the status");
    assert!(
        notes
            .iter()
            .any(|n| n["field"] == "data.thing2" && n["action"] == "cut"),
        "{doc}"
    );
    let delivered = wx.get_json("/__deliveries").await;
    let value = delivered["deliveries"][0]["data"]["thing2"]
        .as_str()
        .expect("the delivered value")
        .to_string();
    assert_eq!(value.chars().count(), 20, "{delivered}");
    assert!(!value.contains('\n'));
    assert_eq!(
        doc["message"]["data"]["thing2"]["value"], value,
        "the status shows what was sent"
    );
}

/// With the Redis queue, three pods share one catalogue: one template-list fetch per refresh,
/// not one per pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_redis_pods_make_one_fetch_per_refresh() {
    let redis = wxpush_tests::redis::RedisServer::start().await;
    let dir = tempdir();
    let catalogue = write_template_catalogue(dir.path());
    let (_sb, sb_url) = sandbox::spawn(&["--template-file", &catalogue]);
    let wx = WxClient::new(sb_url.clone());
    let interval = Duration::from_secs(3);
    let mut pods = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let d = tempdir();
        let mut cfg = config(&sb_url, d.path(), &json!({}));
        merge(
            &mut cfg,
            &json!({
                "queue": {"embedded": null, "redis": {"url": redis.url()}},
                "templates": {"validation": "strict", "refreshInterval": "3s"},
            }),
        );
        pods.push(PusherProc::start(d.path(), &cfg).await);
        dirs.push(d);
    }
    for p in &pods {
        wait_for_templates(&p.api).await;
    }
    let started = Instant::now();
    let fetches = || async {
        wx.stats()
            .await
            .requests
            .get("template_list")
            .copied()
            .unwrap_or(0)
    };
    let first = fetches().await;
    // Pods started within one interval of each other: the first fetched, the others took its
    // catalogue (a slow start may let one more refresh fall due meanwhile).
    assert!((1..=2).contains(&first), "{first} fetches at start");
    // Three more refreshes fall due; each is one fetch.
    let target = first + 3;
    wait_for("three refreshes", interval * 6, || async {
        (fetches().await >= target).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let total = fetches().await;
    let due = (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + first;
    assert!(
        total <= due,
        "{total} fetches in {elapsed:?} with a {interval:?} interval: more than one per refresh"
    );
    // Each fetch was made by one pod; the others took it from Redis. A fetch counts whatever
    // it ended in: one the pod gave up on (a timeout on a loaded machine) still reached the
    // sandbox.
    let mut by_pods = 0.0;
    for p in &pods {
        by_pods += p
            .api
            .metric("wxpush_template_list_fetches_total", &[("list", "private")])
            .await;
    }
    let after = fetches().await;
    assert!(
        (total..=after).contains(&(by_pods as u64)),
        "{by_pods} fetches by the pods, {total} to {after} at the sandbox"
    );
    // Every pod refuses with the shared catalogue.
    for p in &pods {
        let (status, body) = p.api.send(&order("u", "A1", &"书".repeat(21))).await;
        assert_eq!(status, 400, "{body}");
    }
}

/// A one-time subscribe template in strict mode: refused without a credit; with one (and the
/// user's consent at WeChat) delivered once, and the credit is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_credits_are_required_and_spent() {
    let (_dir, _sb, sb_url, wx, pusher) =
        start("strict", &["--refused-subscribers", "u-refused"]).await;
    wait_for_templates(&pusher.api).await;
    let pickup = json!({"kind": "bizsend", "touser": "u-sub", "template_id": "S-PICKUP",
        "data": {"thing1": {"value": "包裹"}, "phrase2": {"value": "已到站"}}});
    let credits = || async {
        let (status, v) = pusher
            .api
            .get("/v1/subscriptions?openid=u-sub&template_id=S-PICKUP")
            .await;
        assert_eq!(status, 200, "{v}");
        v["credits"].as_u64().expect("credits")
    };

    let (status, body) = pusher.api.send(&pickup).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["rule"], "no_subscription_credit", "{body}");
    assert_eq!(body["error"]["field"], "touser", "{body}");

    // The user accepts the prompt: WeChat counts the consent, the producer records it.
    let url = format!("{sb_url}/__subscriptions");
    let r = wx
        .http
        .post(&url)
        .json(&json!({"openid": "u-sub", "template_id": "S-PICKUP"}))
        .send()
        .await
        .expect("consent at the sandbox");
    assert!(r.status().is_success());
    let (status, _) = pusher
        .api
        .post_json(
            "/v1/subscriptions",
            &json!({"openid": "u-sub", "template_id": "S-PICKUP"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(credits().await, 1);

    let (status, body) = pusher.api.send(&pickup).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(credits().await, 0, "taken at accept");
    let (status, body) = pusher.api.send(&pickup).await;
    assert_eq!(status, 400, "the one credit is spent: {body}");
    pusher.api.wait_delivered(1, Duration::from_secs(20)).await;
    let (_, doc) = pusher.api.status(&id).await;
    assert_eq!(doc["status"], "delivered", "{doc}");
    assert_eq!(doc["message"]["subscription_credit"], true, "{doc}");
    let stats = wx.stats().await;
    assert_eq!(stats.requests.get("bizsend"), Some(&1), "{stats:?}");
    assert_eq!(stats.delivered_unique, 1);
    let left = wx
        .get_json("/__subscriptions?openid=u-sub&template_id=S-PICKUP")
        .await;
    assert_eq!(left["consents"], 0, "WeChat's consent was used once");
    assert_eq!(credits().await, 0);
    assert_eq!(
        pusher
            .api
            .metric(
                "wxpush_template_refusals_total",
                &[("rule", "no_subscription_credit")]
            )
            .await,
        2.0
    );

    // A message that takes a credit and then fails for good (WeChat: 43101) gives it back.
    let (status, _) = pusher
        .api
        .post_json(
            "/v1/subscriptions",
            &json!({"openid": "u-refused", "template_id": "S-PICKUP"}),
        )
        .await;
    assert_eq!(status, 200);
    let mut refused = pickup.clone();
    refused["touser"] = json!("u-refused");
    let (status, body) = pusher.api.send(&refused).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    wait_for(
        "the refused message to fail",
        Duration::from_secs(20),
        || async {
            let (_, doc) = pusher.api.status(&id).await;
            (doc["status"] == "failed").then_some(())
        },
    )
    .await;
    wait_for(
        "the credit to come back",
        Duration::from_secs(5),
        || async {
            let (_, v) = pusher
                .api
                .get("/v1/subscriptions?openid=u-refused&template_id=S-PICKUP")
                .await;
            (v["credits"] == 1).then_some(())
        },
    )
    .await;
}

/// The same bad messages with `templates.validation: off`: accepted, sent, and refused by the
/// sandbox with WeChat's errcodes (40037, 47003), each costing a send. The stand-in agrees with
/// the pusher's rules, and this is what the checks at accept save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_sends_bad_messages_and_wechat_refuses_them() {
    let (_dir, _sb, _, wx, pusher) = start("off", &[]).await;
    let mut unknown = order("u", "A1", "书");
    unknown["template_id"] = json!("T-NOT-MINE");
    let bad = [
        (unknown, "40037"),
        (order("u", "A1", &"书".repeat(21)), "47003"),
        (order("u", "订单42", "书"), "47003"),
        (order("u", "A1", "two\nlines"), "47003"),
    ];
    let mut ids = Vec::new();
    for (msg, _) in &bad {
        let (status, body) = pusher.api.send(msg).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    for (id, (_, errcode)) in ids.iter().zip(&bad) {
        let doc = wait_for("the message to fail", Duration::from_secs(20), || async {
            let (_, doc) = pusher.api.status(id).await;
            (doc["status"] == "failed").then_some(doc)
        })
        .await;
        assert_eq!(doc["last_error"]["errcode"].to_string(), *errcode, "{doc}");
    }
    let stats = wx.stats().await;
    assert_eq!(
        stats.requests.get("template_send"),
        Some(&4),
        "one send each"
    );
    assert_eq!(
        stats.requests.get("template_list"),
        Some(&0),
        "off fetches nothing"
    );
    assert_eq!(stats.delivered_unique, 0);
}
