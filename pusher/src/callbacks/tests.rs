use super::*;
use crate::message::{Message, MessageId, MessageRecord, Status};
use crate::send::ErrorKind;
use crate::wechat::SendError;
use serde_json::{Value, json};

fn record(status: Status) -> MessageRecord {
    let message: Message = crate::message::parse_message(&json!({
        "touser": "openid-1", "template_id": "T", "callback_url": "http://cb.example/x"
    }))
    .expect("valid message");
    let now: Timestamp = "2026-11-28T12:00:00Z".parse().expect("ts");
    let mut r = MessageRecord::new(MessageId::new(), message, None, now);
    r.status = status;
    r.attempts = 2;
    r.finished_at = Some("2026-11-28T12:00:05Z".parse().expect("ts"));
    r
}

#[test]
fn payload_has_the_documented_shape() {
    let mut r = record(Status::Delivered);
    r.msgid = Some(4242);
    let now: Timestamp = "2026-11-28T12:00:09Z".parse().expect("ts");
    let body: Value =
        serde_json::from_str(&CallbackPayload::of(&r, now).to_body()).expect("json body");
    assert_eq!(
        body,
        json!({
            "id": r.id.to_string(), "status": "delivered", "client_msg_id": r.client_msg_id,
            "touser": "openid-1", "msgid": 4242, "attempts": 2,
            "accepted_at": "2026-11-28T12:00:00Z", "finished_at": "2026-11-28T12:00:05Z",
        })
    );
    // A failure carries last_error and no msgid; a confirmation is stamped with the event time.
    let mut f = record(Status::Failed);
    f.last_error = Some(SendError {
        kind: ErrorKind::Errcode,
        errcode: Some(40003),
        message: "invalid openid".into(),
    });
    let body: Value =
        serde_json::from_str(&CallbackPayload::of(&f, now).to_body()).expect("json body");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["last_error"]["errcode"], 40003);
    assert!(body.get("msgid").is_none());
    let c = record(Status::Confirmed);
    let body: Value =
        serde_json::from_str(&CallbackPayload::of(&c, now).to_body()).expect("json body");
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["finished_at"], "2026-11-28T12:00:09Z");
}

#[test]
fn signature_is_hmac_sha256_of_timestamp_dot_body() {
    // RFC 4231 test case 2 shape: key "Jefe", data "what do ya want for nothing?".
    // Here the signed data is "<ts>.<body>", so split it accordingly.
    let sig = sign(b"Jefe", 0, b"what do ya want for nothing?");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
    mac.update(b"0.what do ya want for nothing?");
    assert_eq!(
        sig,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    // A known vector computed independently (Python: hmac.new(b"k", b"1700000000.{}", sha256)).
    assert_eq!(
        sign(b"k", 1_700_000_000, b"{}"),
        "sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
    );
    assert_ne!(sign(b"k", 1, b"{}"), sign(b"k", 2, b"{}"));
    assert_ne!(sign(b"k", 1, b"{}"), sign(b"other", 1, b"{}"));
}

#[test]
fn only_final_states_want_callbacks() {
    for s in [Status::Queued, Status::Sending, Status::Retrying] {
        assert!(!wants_callback(s));
    }
    for s in [
        Status::Delivered,
        Status::Failed,
        Status::Expired,
        Status::DeadLettered,
        Status::Confirmed,
        Status::RejectedByUser,
    ] {
        assert!(wants_callback(s));
    }
}

// Pending callbacks written with final states and events are part of the store contract:
// `crate::store::contract`.
