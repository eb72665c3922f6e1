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
