//! XML parsing, the transition rules, and the embedded store's event matching (msgid index,
//! openid fallback, de-duplication, restart).

use jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::message::{MessageId, MessageRecord, Status, parse_message};

const SAMPLE: &str = "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>\
<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>\
<CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType>\
<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>200163836</MsgID>\
<Status><![CDATA[failed:user block]]></Status></xml>";

#[test]
fn parses_wechat_sample_event() {
    let xml = parse_xml(SAMPLE.as_bytes()).expect("parses");
    assert!(is_template_event(&xml));
    assert_eq!(xml.to_user_name.as_deref(), Some("gh_7f083739789a"));
    let ev = DeliveryEvent::from_xml(&xml, Timestamp::UNIX_EPOCH).expect("event");
    assert_eq!(ev.openid, "oia2TjuEGTNoeX76QEjQNrcURxG8");
    assert_eq!(ev.create_time, 1_395_658_920);
    assert_eq!(ev.msgid, 200_163_836);
    assert_eq!(ev.kind(), EventStatus::UserBlock);
}

#[test]
fn parses_plain_text_values_encrypt_and_other_messages() {
    let xml = parse_xml(
        b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>7</CreateTime>\
          <MsgType>text</MsgType><Content>hi</Content><MsgId>99</MsgId></xml>",
    )
    .expect("parses");
    assert!(!is_template_event(&xml));
    assert_eq!(xml.msg_id.as_deref(), Some("99"));
    let outer = parse_xml(
        b"<xml><ToUserName><![CDATA[gh]]></ToUserName><Encrypt><![CDATA[abc+/=]]></Encrypt></xml>",
    )
    .expect("parses");
    assert_eq!(outer.encrypt.as_deref(), Some("abc+/="));
    let other = parse_xml(
        b"<xml><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>",
    )
    .expect("parses");
    assert!(!is_template_event(&other));
}

#[test]
fn rejects_malformed_xml_and_missing_fields() {
    assert!(matches!(parse_xml(b"<xml><a>"), Err(EventError::Xml(_))));
    assert!(matches!(parse_xml(b"\xff\xfe"), Err(EventError::Xml(_))));
    let no_from = parse_xml(b"<xml><CreateTime>1</CreateTime><Status>success</Status></xml>")
        .expect("parses");
    assert_eq!(
        DeliveryEvent::from_xml(&no_from, Timestamp::UNIX_EPOCH),
        Err(EventError::Field("FromUserName"))
    );
    let bad_time = parse_xml(
        b"<xml><FromUserName>o</FromUserName><CreateTime>x</CreateTime><Status>success</Status></xml>",
    )
    .expect("parses");
    assert_eq!(
        DeliveryEvent::from_xml(&bad_time, Timestamp::UNIX_EPOCH),
        Err(EventError::Field("CreateTime"))
    );
    let no_msgid = parse_xml(
        b"<xml><FromUserName>o</FromUserName><CreateTime>5</CreateTime><Status>success</Status></xml>",
    )
    .expect("parses");
    let ev = DeliveryEvent::from_xml(&no_msgid, Timestamp::UNIX_EPOCH).expect("event");
    assert_eq!(ev.msgid, 0);
}

#[test]
fn classifies_statuses() {
    assert_eq!(EventStatus::parse("success"), EventStatus::Success);
    assert_eq!(
        EventStatus::parse("failed:user block"),
        EventStatus::UserBlock
    );
    assert_eq!(
        EventStatus::parse("failed: system failed"),
        EventStatus::SystemFailed
    );
    assert_eq!(
        EventStatus::parse("FAILED: USER BLOCK"),
        EventStatus::UserBlock
    );
    assert_eq!(EventStatus::parse("pending"), EventStatus::Other);
    assert_eq!(EventStatus::Success.target(), Some(Status::Confirmed));
    assert_eq!(
        EventStatus::UserBlock.target(),
        Some(Status::RejectedByUser)
    );
    assert_eq!(EventStatus::SystemFailed.target(), None);
}

fn record(status: Status) -> MessageRecord {
    let msg = parse_message(&json!({"touser": "o1", "template_id": "T"})).expect("valid");
    let mut r = MessageRecord::new(MessageId::new(), msg, None, Timestamp::UNIX_EPOCH);
    r.status = status;
    r
}

fn event(status: &str, create_time: u64, msgid: i64) -> DeliveryEvent {
    DeliveryEvent {
        openid: "o1".into(),
        create_time,
        msgid,
        status: status.into(),
        received_at: Timestamp::now(),
    }
}

#[test]
fn transitions_only_from_delivered() {
    let mut r = record(Status::Delivered);
    let out = apply_event(&mut r, &event("success", 1, 5), MatchedBy::Msgid);
    assert_eq!(
        out,
        EventOutcome::Applied {
            id: r.id,
            status: Status::Confirmed
        }
    );
    assert_eq!(r.status, Status::Confirmed);
    assert!(r.events[0].applied);
    // A later, different event for a confirmed message is recorded, not applied.
    let out = apply_event(&mut r, &event("failed:user block", 2, 5), MatchedBy::Msgid);
    assert_eq!(
        out,
        EventOutcome::Recorded {
            id: r.id,
            status: Status::Confirmed
        }
    );
    assert_eq!(r.events.len(), 2);
    assert!(!r.events[1].applied);
    // The same event again changes nothing.
    let before = r.clone();
    assert_eq!(
        apply_event(&mut r, &event("success", 1, 5), MatchedBy::Msgid),
        EventOutcome::Duplicate
    );
    assert_eq!(r, before);

    let mut blocked = record(Status::Delivered);
    apply_event(
        &mut blocked,
        &event("failed:user block", 1, 6),
        MatchedBy::Msgid,
    );
    assert_eq!(blocked.status, Status::RejectedByUser);

    let mut sys = record(Status::Delivered);
    let out = apply_event(
        &mut sys,
        &event("failed: system failed", 1, 7),
        MatchedBy::OpenidFallback,
    );
    assert!(matches!(
        out,
        EventOutcome::Recorded {
            status: Status::Delivered,
            ..
        }
    ));
    assert_eq!(sys.events[0].status, "failed: system failed");
    assert_eq!(sys.events[0].matched_by, "openid_fallback");

    for s in [
        Status::Queued,
        Status::Retrying,
        Status::Failed,
        Status::DeadLettered,
    ] {
        let mut r = record(s);
        let out = apply_event(&mut r, &event("success", 1, 8), MatchedBy::Msgid);
        assert!(matches!(out, EventOutcome::Recorded { status, .. } if status == s));
        assert_eq!(r.status, s);
    }
}

#[test]
fn keeps_a_bounded_event_history() {
    let mut r = record(Status::Delivered);
    for t in 0..20 {
        apply_event(&mut r, &event("pending", t, 1), MatchedBy::Msgid);
    }
    assert_eq!(r.events.len(), crate::message::MAX_EVENTS_PER_MESSAGE);
    assert_eq!(r.events[0].create_time, 12);
    assert_eq!(r.status, Status::Delivered);
}

// The store's side of events (msgid index, de-duplication, the openid fallback) is part of the
// store contract: `crate::store::contract`.
