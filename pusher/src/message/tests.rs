//! Unit tests of the message model, its validation and its record.

use super::*;
use serde_json::json;

fn ok() -> Value {
    json!({"touser": "o1", "template_id": "T", "data": {"k": {"value": "v"}}})
}

#[test]
fn minimal_message_parses_with_template_default() {
    let m = parse_message(&ok()).expect("valid");
    assert_eq!(m.kind, MessageKind::Template);
    let body: Value = serde_json::from_str(m.wechat_body("c1").get()).expect("json");
    assert_eq!(body["client_msg_id"], "c1");
    assert_eq!(body["data"]["k"]["value"], "v");
}

#[test]
fn errors_name_their_field() {
    let cases = [
        (json!({"template_id": "T"}), "missing_field", "touser"),
        (json!({"touser": "o"}), "missing_field", "template_id"),
        (
            json!({"touser": "o", "template_id": "T", "colour": 1}),
            "unknown_field",
            "colour",
        ),
        (
            json!({"touser": "x".repeat(MAX_TOUSER + 1), "template_id": "T"}),
            "too_long",
            "touser",
        ),
        (
            json!({"touser": "o", "template_id": "T", "url": "ftp://x"}),
            "invalid_field",
            "url",
        ),
        (
            json!({"touser": "o", "template_id": "T", "callback_url": "not a url"}),
            "invalid_field",
            "callback_url",
        ),
        (
            json!({"touser": "o", "template_id": "T", "data": {"k": {"value": 3}}}),
            "invalid_field",
            "data.k.value",
        ),
        (
            json!({"touser": "o", "template_id": "T", "data": {"k": {"valu": "x"}}}),
            "unknown_field",
            "data.k.valu",
        ),
        (
            json!({"touser": "o", "template_id": "T", "miniprogram": {"pagepath": "p"}}),
            "missing_field",
            "miniprogram.appid",
        ),
        (
            json!({"touser": "o", "template_id": "T", "expires_at": "tomorrow"}),
            "invalid_field",
            "expires_at",
        ),
        (
            json!({"touser": "o", "template_id": "T", "kind": "sms"}),
            "invalid_field",
            "kind",
        ),
        (
            json!({"touser": "o", "template_id": "T", "client_msg_id": "x".repeat(65)}),
            "too_long",
            "client_msg_id",
        ),
    ];
    for (body, code, field) in cases {
        let err = parse_message(&body).expect_err("invalid");
        assert_eq!(
            (err.code.as_str(), err.field.as_str()),
            (code, field),
            "{body}"
        );
    }
    let err = parse_message(&json!({"template_id": "T"}))
        .expect_err("invalid")
        .in_item(3);
    assert_eq!(err.field, "messages[3].touser");
}

#[test]
fn default_client_msg_id_comes_from_the_id() {
    let id = MessageId::new();
    let rec = MessageRecord::new(
        id,
        parse_message(&ok()).expect("valid"),
        None,
        Timestamp::now(),
    );
    assert_eq!(rec.client_msg_id, id.default_client_msg_id());
    assert!(rec.client_msg_id.len() <= MAX_CLIENT_MSG_ID);
    let parsed: MessageId = id.to_string().parse().expect("round trip");
    assert_eq!(parsed, id);
}

/// The accept route reads bodies into the light tree in the body's order; the answer must be
/// the one a `Value` tree (keys sorted) gives: the same message, the same data text, the same
/// first error when several fields are wrong.
#[test]
fn a_body_read_in_its_own_order_is_checked_as_a_sorted_tree() {
    let bodies: [&[u8]; 7] = [
        br##"{"touser": "o1", "template_id": "T", "data": {"z": {"value": "1"}, "a": {"color": "#fff", "value": "\u00e9\n"}}, "url": "https://a.example/x"}"##,
        br#"{"zeta": 1, "touser": "o", "template_id": "T", "alpha": 2}"#,
        br#"{"touser": "o", "template_id": "T", "data": {"b": {"value": 1}, "a": {"value": 2}}}"#,
        br#"{"touser": "o", "template_id": "T", "data": {"b": {"valu": "x"}, "a": {"value": "y", "size": 1}}}"#,
        br#"{"template_id": "", "touser": 7}"#,
        br#"{"touser": "o", "template_id": "T", "miniprogram": {"pagepath": "p", "x": 1, "appid": "a"}}"#,
        br#"{"kind": "subscribe", "touser": "o", "template_id": "T", "page": "p/q", "expires_at": "2026-11-28T12:00:00Z"}"#,
    ];
    for body in bodies {
        let light = parse_json_message(&parse_strict(body).expect("JSON"));
        let tree: Value = serde_json::from_slice(body).expect("JSON");
        let sorted = parse_message(&tree);
        assert_eq!(light, sorted, "{}", String::from_utf8_lossy(body));
    }
    let m = parse_json_message(&parse_strict(bodies[0]).expect("JSON")).expect("valid");
    assert_eq!(
        m.data.as_str(),
        r##"{"a":{"color":"#fff","value":"é\n"},"z":{"value":"1"}}"##,
        "canonical data text"
    );
}

#[test]
fn a_batch_names_its_first_unknown_key_in_sorted_order() {
    let body = br#"{"zz": 1, "messages": [], "bb": 2}"#;
    let err = batch_items(parse_strict(body).expect("JSON"), 10).expect_err("unknown");
    assert_eq!(err.field, "bb");
    let body = br#"{"messages": [{"touser": "o"}, 3]}"#;
    let items = batch_items(parse_strict(body).expect("JSON"), 10).expect("items");
    assert_eq!(items.len(), 2);
    assert!(batch_items(parse_strict(body).expect("JSON"), 1).is_err());
}
