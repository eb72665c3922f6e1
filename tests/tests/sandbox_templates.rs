//! The sandbox's template catalogue, black-box through the binary (`--template-file`): the two
//! template-list APIs, the checks of a send against its template (40037, 47003), one-time
//! consents (43101 without one, one spent per delivery), and the deliveries it records.

use serde_json::{Value, json};
use wxpush_tests::sandbox::{WxClient, errcode, spawn, write_template_catalogue};

fn write_catalogue() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = write_template_catalogue(dir.path());
    (dir, path)
}

fn order(touser: &str, id: &str, cs: &str, thing: &str) -> Value {
    json!({"touser": touser, "template_id": id, "data": {
        "character_string1": {"value": cs},
        "thing2": {"value": thing},
        "time3": {"value": "2026-12-07 10:00"},
    }})
}

#[tokio::test]
async fn lists_checks_consents_and_deliveries() {
    let (_dir, path) = write_catalogue();
    let (_sandbox, base) = spawn(&["--template-file", &path]);
    let c = WxClient::new(base);
    let token = c.classic_token().await;

    let private = c
        .get_json(&format!(
            "/cgi-bin/template/get_all_private_template?access_token={token}"
        ))
        .await;
    let list = private["template_list"].as_array().expect("a list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["template_id"], "T-ORDER");
    assert!(
        list[1]["content"]
            .as_str()
            .expect("content")
            .contains("{{thing2.DATA}}")
    );
    let subscribe = c
        .get_json(&format!("/wxaapi/newtmpl/gettemplate?access_token={token}"))
        .await;
    assert_eq!(errcode(&subscribe), 0);
    assert_eq!(subscribe["data"][0]["priTmplId"], "S-PICKUP");
    assert_eq!(subscribe["data"][0]["type"], 2);
    let bad = c
        .get_json("/wxaapi/newtmpl/gettemplate?access_token=nope-not-a-token-at-all")
        .await;
    assert_ne!(errcode(&bad), 0);

    // Template sends against the catalogue.
    let cases = [
        (order("u", "T-NONE", "A1", "书"), 40037),
        (order("u", "T-ORDER", "订单1", "书"), 47003),
        (order("u", "T-ORDER", "A1", &"书".repeat(21)), 47003),
        (order("u", "T-ORDER", "A1", "two\nlines"), 47003),
        (
            json!({"touser": "u", "template_id": "T-ORDER",
                   "data": {"character_string1": {"value": "A1"}}}),
            47003,
        ),
        (order("u", "T-ORDER", "A-1", &"书".repeat(20)), 0),
        (
            json!({"touser": "u", "template_id": "T-OLD",
                   "data": {"keyword1": {"value": "x".repeat(30)}}}),
            0,
        ),
    ];
    for (body, want) in &cases {
        let answer = c.send_template(&token, body).await;
        assert_eq!(errcode(&answer), *want, "{body} → {answer}");
    }
    let deliveries = c.get_json("/__deliveries").await;
    let d = deliveries["deliveries"].as_array().expect("deliveries");
    assert_eq!(d.len(), 2, "{deliveries}");
    assert_eq!(
        d[1]["data"]["keyword1"].as_str().map(|v| v.chars().count()),
        Some(20),
        "old-style values are cut to 20 characters: {deliveries}"
    );

    // A one-time subscribe template: refused without a consent, one consent per delivery.
    let pickup = json!({"touser": "u2", "template_id": "S-PICKUP",
        "data": {"thing1": {"value": "取件"}, "phrase2": {"value": "已到"}}});
    let send = |body: Value| {
        let c = c.clone();
        let token = token.clone();
        async move {
            c.try_send_raw("subscribe/send", &token, body.to_string())
                .await
                .expect("answer")
        }
    };
    assert_eq!(errcode(&send(pickup.clone()).await), 43101);
    let url = format!("{}/__subscriptions", c.base);
    let added: Value = c
        .http
        .post(&url)
        .json(&json!({"openid": "u2", "template_id": "S-PICKUP"}))
        .send()
        .await
        .expect("consent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(added["consents"], 1);
    assert_eq!(errcode(&send(pickup.clone()).await), 0);
    assert_eq!(errcode(&send(pickup).await), 43101, "the consent was spent");
    let left = c
        .get_json("/__subscriptions?openid=u2&template_id=S-PICKUP")
        .await;
    assert_eq!(left["consents"], 0);
    let stats = c.stats().await;
    assert_eq!(stats.requests.get("template_list"), Some(&1));
    assert_eq!(stats.requests.get("subscribe_template_list"), Some(&2));
    assert_eq!(stats.delivered_unique, 3);
}

#[tokio::test]
async fn without_a_catalogue_lists_are_empty_and_sends_unchecked() {
    let (_sandbox, base) = spawn(&[]);
    let c = WxClient::new(base);
    let token = c.classic_token().await;
    let private = c
        .get_json(&format!(
            "/cgi-bin/template/get_all_private_template?access_token={token}"
        ))
        .await;
    assert_eq!(private["template_list"], json!([]));
    let answer = c.template(&token, "u", None).await;
    assert_eq!(errcode(&answer), 0);
}
