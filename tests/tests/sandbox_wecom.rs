//! The sandbox's WeCom routes over real HTTP: per-app tokens, strict application messages with
//! partial failures, the duplicate check and its interval, recall and its window, and group
//! robots with their sliding window. Counted in the `wecom` section of `/__stats`.

use std::time::Duration;

use serde_json::{Value, json};
use wxpush_sandbox::{SandboxConfig, WeComApp, WeComConfig};
use wxpush_tests::sandbox::{Running, config, errcode, start};
use wxpush_tests::wait_for;

const CORP: &str = "wwcorp";
const AGENT: u64 = 1_000_002;
const SECRET: &str = "wecom-secret";

/// WeCom calls over the sandbox's API client.
struct WeCom<'a>(&'a Running);

impl WeCom<'_> {
    async fn get(&self, path_and_query: &str) -> Value {
        self.0.api.get_json(path_and_query).await
    }

    async fn post(&self, path_and_query: &str, body: &Value) -> Value {
        self.0.api.post_raw(path_and_query, body.to_string()).await
    }

    async fn token_with(&self, corpid: &str, secret: &str) -> Value {
        self.get(&format!(
            "/cgi-bin/gettoken?corpid={corpid}&corpsecret={secret}"
        ))
        .await
    }

    async fn token(&self) -> String {
        let v = self.token_with(CORP, SECRET).await;
        assert_eq!(errcode(&v), 0, "{v}");
        v["access_token"].as_str().expect("a token").to_string()
    }

    async fn send(&self, token: &str, body: &Value) -> Value {
        self.post(&format!("/cgi-bin/message/send?access_token={token}"), body)
            .await
    }

    async fn recall(&self, token: &str, msgid: &str) -> Value {
        self.post(
            &format!("/cgi-bin/message/recall?access_token={token}"),
            &json!({ "msgid": msgid }),
        )
        .await
    }

    async fn robot(&self, key: &str, body: &Value) -> Value {
        self.post(&format!("/cgi-bin/webhook/send?key={key}"), body)
            .await
    }
}

fn text(touser: &str) -> Value {
    json!({"touser": touser, "msgtype": "text", "agentid": AGENT, "text": {"content": "Disk full"}})
}

fn hint(v: &Value) -> &str {
    v["errmsg"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn one_token_per_app_reused_until_it_expires() {
    let sb = start(SandboxConfig {
        token_expires_in: Duration::from_secs(2),
        wecom: WeComConfig {
            apps: vec![WeComApp::new(AGENT, SECRET), WeComApp::new(7, "second")],
            ..WeComConfig::default()
        },
        ..config()
    })
    .await;
    let wc = WeCom(&sb);
    let first = wc.token_with(CORP, SECRET).await;
    assert_eq!(errcode(&first), 0);
    assert_eq!(first["errmsg"], "ok");
    assert_eq!(first["expires_in"], 2);
    let again = wc.token_with(CORP, SECRET).await;
    assert_eq!(
        again["access_token"], first["access_token"],
        "a re-fetch returns the same token"
    );
    let other = wc.token_with(CORP, "second").await;
    assert_ne!(
        other["access_token"], first["access_token"],
        "one token per app"
    );
    for (corpid, secret, code) in [
        ("", SECRET, 41002),
        ("wwother", SECRET, 40013),
        (CORP, "", 41004),
        (CORP, "wrong", 40001),
    ] {
        assert_eq!(
            errcode(&wc.token_with(corpid, secret).await),
            code,
            "{corpid} {secret}"
        );
    }
    let token = first["access_token"].as_str().expect("a token");
    let other = other["access_token"].as_str().expect("a token");
    assert_eq!(errcode(&wc.send(token, &text("u1")).await), 0);
    let wrong_app = wc.send(other, &text("u1")).await;
    assert_eq!(
        errcode(&wrong_app),
        40056,
        "agentid must be the token's app: {wrong_app}"
    );
    let stats = sb.handle.stats().wecom;
    assert_eq!(stats.apps["1000002"].token_fetches, 2);
    assert_eq!(stats.apps["1000002"].tokens_issued, 1);
    assert_eq!(stats.apps["7"].tokens_issued, 1);
    assert_eq!(stats.errcodes["40001"], 1);
    // Past its lifetime the token answers 42001 and the next fetch issues a new one.
    wait_for("the token to expire", Duration::from_secs(5), || async {
        (errcode(&wc.send(token, &text("u1")).await) == 42001).then_some(())
    })
    .await;
    let renewed = wc.token().await;
    assert_ne!(renewed, token);
    assert_eq!(errcode(&wc.send(&renewed, &text("u1")).await), 0);
    assert_eq!(sb.handle.stats().wecom.apps["1000002"].tokens_issued, 2);
    assert_eq!(errcode(&wc.send("", &text("u1")).await), 41001);
    assert_eq!(errcode(&wc.send(&"x".repeat(96), &text("u1")).await), 40014);
}

#[tokio::test]
async fn message_send_checks_each_type_strictly() {
    let sb = start(config()).await;
    let wc = WeCom(&sb);
    let token = wc.token().await;
    let with = |msgtype: &str, content: Value| {
        let mut body = json!({"touser": "u1", "msgtype": msgtype, "agentid": AGENT});
        body[msgtype] = content;
        body
    };
    let valid = [
        with("text", json!({"content": "Disk full on db-1"})),
        with(
            "textcard",
            json!({"title": "Order late", "description": "#42 is late",
                   "url": "https://example.test/42"}),
        ),
        with("markdown", json!({"content": "**Disk** full"})),
        with(
            "news",
            json!({"articles": [{"title": "Release", "url": "https://example.test/r"}]}),
        ),
        with(
            "template_card",
            json!({"card_type": "text_notice", "main_title": {"title": "On call"},
                   "card_action": {"type": 1, "url": "https://example.test/oncall"}}),
        ),
    ];
    for body in &valid {
        let v = wc.send(&token, body).await;
        assert_eq!(errcode(&v), 0, "{body} → {v}");
        assert!(v["msgid"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(v["invaliduser"], "");
    }
    let card = wc
        .send(
            &token,
            &with(
                "template_card",
                json!({"card_type": "button_interaction", "main_title": {"title": "Approve?"},
                       "task_id": "approve-42", "button_list": [{"text": "Yes", "key": "yes"}]}),
            ),
        )
        .await;
    assert!(
        card["response_code"].is_string(),
        "interactive cards get a response_code: {card}"
    );
    let invalid = [
        (with("voice", json!({})), 40008, "msgtype"),
        (with("text", json!({"content": ""})), 44004, "text.content"),
        (
            with("text", json!({"content": "x".repeat(2049)})),
            45002,
            "text.content",
        ),
        (
            with("textcard", json!({"description": "d", "url": "u"})),
            41016,
            "textcard.title",
        ),
        (
            with("textcard", json!({"title": "t", "url": "u"})),
            41033,
            "textcard.description",
        ),
        (
            with("textcard", json!({"title": "t", "description": "d"})),
            41010,
            "textcard.url",
        ),
        (with("markdown", json!({})), 44004, "markdown.content"),
        (
            with("news", json!({"articles": []})),
            45008,
            "news.articles",
        ),
        (
            with("news", json!({"articles": [{"url": "u"}]})),
            41016,
            "news.articles[0].title",
        ),
        (
            with("template_card", json!({"card_type": "poster"})),
            42031,
            "card_type",
        ),
        (
            with(
                "template_card",
                json!({"card_type": "news_notice", "main_title": {"title": "t"}}),
            ),
            42045,
            "card_action",
        ),
        (
            with(
                "template_card",
                json!({"card_type": "button_interaction", "main_title": {"title": "t"},
                       "button_list": [{"text": "Yes", "key": "yes"}]}),
            ),
            42014,
            "task_id",
        ),
        (
            json!({"touser": "u1", "msgtype": "text", "text": {"content": "x"}}),
            41011,
            "agentid",
        ),
        (
            json!({"msgtype": "text", "agentid": AGENT, "text": {"content": "x"}}),
            82001,
            "touser",
        ),
    ];
    for (body, code, field) in &invalid {
        let v = wc.send(&token, body).await;
        assert_eq!(errcode(&v), *code, "{body} → {v}");
        assert!(hint(&v).contains(field), "the hint names {field}: {v}");
    }
    let mut bad_flag = text("u1");
    bad_flag["enable_duplicate_check"] = json!(2);
    assert_eq!(errcode(&wc.send(&token, &bad_flag).await), 40058);
    let mut bad_interval = text("u1");
    bad_interval["duplicate_check_interval"] = json!(14_401);
    assert_eq!(errcode(&wc.send(&token, &bad_interval).await), 40058);
    let raw =
        wc.0.api
            .post_raw(
                &format!("/cgi-bin/message/send?access_token={token}"),
                "{nope",
            )
            .await;
    assert_eq!(errcode(&raw), 40058);
    let stats = sb.handle.stats().wecom;
    assert_eq!(stats.delivered_unique, 6, "refused sends deliver nothing");
    assert_eq!(sb.handle.wecom_messages().len(), 6);
}

#[tokio::test]
async fn partial_failures_are_answered_and_counted() {
    let sb = start(config()).await;
    let wc = WeCom(&sb);
    let token = wc.token().await;
    let mut body = text("u1|gone-u2|unlicensed-u3");
    body["toparty"] = json!("2|9000");
    body["totag"] = json!("9001");
    let v = wc.send(&token, &body).await;
    assert_eq!(errcode(&v), 0, "a partial failure is errcode 0: {v}");
    assert_eq!(v["invaliduser"], "gone-u2");
    assert_eq!(v["unlicenseduser"], "unlicensed-u3");
    assert_eq!(v["invalidparty"], "9000");
    assert_eq!(v["invalidtag"], "9001");
    let none = wc.send(&token, &text("gone-a|gone-b")).await;
    assert_eq!(errcode(&none), 81013, "{none}");
    assert_eq!(none["invaliduser"], "gone-a|gone-b");
    let stats = sb.handle.stats().wecom;
    assert_eq!(stats.delivered_unique, 1);
    assert_eq!(stats.all_invalid, 1);
    assert_eq!(stats.errcodes["81013"], 1);
    assert_eq!(
        (stats.unreached.users, stats.unreached.unlicensed_users),
        (1, 1)
    );
    assert_eq!((stats.unreached.parties, stats.unreached.tags), (1, 1));
    assert_eq!(stats.per_user.get("u1"), Some(&1));
    assert!(!stats.per_user.contains_key("gone-u2"));
    let sent = sb.handle.wecom_messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].delivered_to, ["u1", "party:2"]);
}

#[tokio::test]
async fn duplicate_check_suppresses_repeats_inside_the_interval_only() {
    let sb = start(config()).await;
    let wc = WeCom(&sb);
    let token = wc.token().await;
    let mut body = text("u1|gone-u2");
    body["enable_duplicate_check"] = json!(1);
    body["duplicate_check_interval"] = json!(1);
    let first = wc.send(&token, &body).await;
    assert_eq!(errcode(&first), 0);
    let repeat = wc.send(&token, &body).await;
    assert_eq!(errcode(&repeat), 0);
    assert_eq!(
        repeat["msgid"], first["msgid"],
        "a repeat gets the first msgid"
    );
    assert_eq!(
        repeat["invaliduser"], "gone-u2",
        "and the first answer's lists"
    );
    let stats = sb.handle.stats().wecom;
    assert_eq!(
        (stats.delivered_unique, stats.duplicates_suppressed),
        (1, 1)
    );
    assert_eq!(stats.per_user["u1"], 1, "delivered once");
    // Past the interval the same message is a new one.
    let past = wait_for("the interval to pass", Duration::from_secs(5), || async {
        let v = wc.send(&token, &body).await;
        (v["msgid"] != first["msgid"]).then_some(v)
    })
    .await;
    assert_eq!(errcode(&past), 0);
    assert_eq!(sb.handle.stats().wecom.per_user["u1"], 2);
    // Without the flag nothing is suppressed.
    let plain = text("u9");
    let a = wc.send(&token, &plain).await;
    let b = wc.send(&token, &plain).await;
    assert_ne!(a["msgid"], b["msgid"]);
    assert_eq!(sb.handle.stats().wecom.per_user["u9"], 2);
    // A reset forgets tokens, the duplicate table, sent messages and the counters.
    let mut checked = text("u7");
    checked["enable_duplicate_check"] = json!(1);
    assert_eq!(errcode(&wc.send(&token, &checked).await), 0);
    sb.admin.reset().await;
    assert_eq!(sb.handle.stats().wecom, Default::default());
    assert!(sb.handle.wecom_messages().is_empty());
    assert_eq!(errcode(&wc.send(&token, &checked).await), 40014);
    let token = wc.token().await;
    assert_eq!(errcode(&wc.send(&token, &checked).await), 0);
    let stats = sb.handle.stats().wecom;
    assert_eq!(
        (stats.delivered_unique, stats.duplicates_suppressed),
        (1, 0)
    );
}

#[tokio::test]
async fn recall_works_inside_the_window_only() {
    let sb = start(SandboxConfig {
        wecom: WeComConfig {
            apps: vec![WeComApp::new(AGENT, SECRET), WeComApp::new(7, "second")],
            recall_window: Duration::from_secs(1),
            ..WeComConfig::default()
        },
        ..config()
    })
    .await;
    let wc = WeCom(&sb);
    let token = wc.token().await;
    let msgid = wc.send(&token, &text("u1")).await["msgid"]
        .as_str()
        .expect("a msgid")
        .to_string();
    let other = wc.token_with(CORP, "second").await["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let foreign = wc.recall(&other, &msgid).await;
    assert_eq!(
        errcode(&foreign),
        40058,
        "only the sending app recalls: {foreign}"
    );
    assert_eq!(errcode(&wc.recall(&token, &msgid).await), 0);
    assert_eq!(
        errcode(&wc.recall(&token, &msgid).await),
        0,
        "a repeat is still 0"
    );
    let unknown = wc.recall(&token, "no-such-msgid").await;
    assert_eq!(errcode(&unknown), 40058);
    assert!(hint(&unknown).contains("not found"), "{unknown}");
    assert!(sb.handle.wecom_messages()[0].recalled);
    let late = wait_for(
        "the recall window to pass",
        Duration::from_secs(5),
        || async {
            let v = wc.recall(&token, &msgid).await;
            (errcode(&v) != 0).then_some(v)
        },
    )
    .await;
    assert_eq!(errcode(&late), 40058);
    assert!(hint(&late).contains("recall window"), "{late}");
    let stats = sb.handle.stats().wecom;
    assert_eq!(stats.recalls, 1);
    assert!(stats.recalls_refused >= 3, "{stats:?}");
}

#[tokio::test]
async fn robots_allow_20_messages_per_sliding_minute_per_key() {
    let sb = start(SandboxConfig {
        wecom: WeComConfig {
            robot_keys: vec!["robot-key".into(), "robot-two".into()],
            ..WeComConfig::default()
        },
        ..config()
    })
    .await;
    let wc = WeCom(&sb);
    let msg = json!({"msgtype": "text", "text": {"content": "build failed"}});
    for i in 0..20 {
        assert_eq!(
            errcode(&wc.robot("robot-key", &msg).await),
            0,
            "message {i}"
        );
    }
    let over = wc.robot("robot-key", &msg).await;
    assert_eq!(errcode(&over), 45009, "{over}");
    assert_eq!(
        errcode(&wc.robot("robot-two", &msg).await),
        0,
        "limits are per key"
    );
    assert_eq!(errcode(&wc.robot("nope", &msg).await), 93000);
    assert_eq!(
        errcode(&wc.post("/cgi-bin/webhook/send", &msg).await),
        93000
    );
    for (body, code) in [
        (json!({"msgtype": "textcard", "textcard": {}}), 40008),
        (
            json!({"msgtype": "markdown", "markdown": {"content": ""}}),
            44004,
        ),
        (
            json!({"msgtype": "markdown", "markdown": {"content": "x".repeat(4096)}}),
            0,
        ),
        (
            json!({"msgtype": "news", "news": {"articles": [{"title": "t"}]}}),
            41010,
        ),
        (
            json!({"msgtype": "news", "news": {"articles": [{"title": "t", "url": "u"}]}}),
            0,
        ),
    ] {
        assert_eq!(errcode(&wc.robot("robot-two", &body).await), code, "{body}");
    }
    let stats = sb.handle.stats().wecom;
    let key = &stats.robots["robot-key"];
    assert_eq!(
        (key.delivered, key.refused_45009, key.peak_per_window),
        (20, 1, 21)
    );
    assert_eq!(stats.robot_45009, 1);
    assert_eq!(stats.robots["robot-two"].delivered, 3);
    assert!(!stats.robots.contains_key("nope"));
}

#[tokio::test]
async fn a_robot_recovers_when_its_oldest_message_leaves_the_window() {
    let sb = start(SandboxConfig {
        wecom: WeComConfig {
            robot_limit: 2,
            robot_window: Duration::from_millis(500),
            ..WeComConfig::default()
        },
        ..config()
    })
    .await;
    let wc = WeCom(&sb);
    let msg = json!({"msgtype": "markdown", "markdown": {"content": "**ok**"}});
    assert_eq!(errcode(&wc.robot("robot-key", &msg).await), 0);
    assert_eq!(errcode(&wc.robot("robot-key", &msg).await), 0);
    assert_eq!(errcode(&wc.robot("robot-key", &msg).await), 45009);
    wait_for("the window to slide", Duration::from_secs(5), || async {
        (errcode(&wc.robot("robot-key", &msg).await) == 0).then_some(())
    })
    .await;
    let stats = sb.handle.stats().wecom;
    assert_eq!(stats.robots["robot-key"].delivered, 3);
    assert!(stats.robot_45009 >= 1);
}
