//! XML parsing, the transition rules, and the embedded store's event matching (msgid index,
//! openid fallback, de-duplication, restart).

use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::message::{MessageId, MessageRecord, Status, parse_message};
use crate::store::embedded::EmbeddedOptions;
use crate::store::{AcceptItem, EmbeddedStore, Store};

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

fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(&EmbeddedOptions {
        path: dir.to_path_buf(),
        max_messages: 100,
        retention: Duration::from_secs(3600),
        default_callback: false,
    })
    .expect("opens")
}

/// Accepts messages to `openids` and completes them as delivered with msgids 1000+n.
async fn deliver(store: &EmbeddedStore, openids: &[&str]) -> Vec<MessageId> {
    let items = openids
        .iter()
        .map(|o| AcceptItem {
            message: parse_message(&json!({"touser": o, "template_id": "T"})).expect("valid"),
            idempotency_key: None,
        })
        .collect();
    let ids: Vec<MessageId> = store
        .accept(items)
        .await
        .expect("accepts")
        .iter()
        .map(|a| a.id)
        .collect();
    let leased = store
        .lease(openids.len(), Duration::from_secs(1))
        .await
        .expect("leases");
    assert_eq!(leased.len(), openids.len());
    for l in leased {
        let n = ids.iter().position(|&i| i == l.record.id).expect("ours");
        let mut done = l.record.clone();
        done.status = Status::Delivered;
        done.msgid = Some(1000 + n as i64);
        // Distinct delivery times so that "most recent" is well defined.
        done.finished_at = Some(Timestamp::from_millisecond(1_000_000 + n as i64).expect("ts"));
        done.next_attempt_at = None;
        store.complete(l.slot, done).await.expect("completes");
    }
    ids
}

async fn status(store: &EmbeddedStore, id: MessageId) -> Status {
    store.get(id).await.expect("reads").expect("exists").status
}

#[tokio::test]
async fn store_matches_by_msgid_dedups_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = {
        let store = open(dir.path());
        let ids = deliver(&store, &["o1", "o2", "o3"]).await;
        let ev = |o: &str, t, m, s: &str| DeliveryEvent {
            openid: o.into(),
            create_time: t,
            msgid: m,
            status: s.into(),
            received_at: Timestamp::now(),
        };
        let out = store
            .record_event(ev("o1", 10, 1000, "success"), true)
            .await
            .expect("records");
        assert_eq!(
            out,
            EventOutcome::Applied {
                id: ids[0],
                status: Status::Confirmed
            }
        );
        assert_eq!(
            store
                .record_event(ev("o1", 10, 1000, "success"), true)
                .await
                .expect("records"),
            EventOutcome::Duplicate
        );
        store
            .record_event(ev("o2", 10, 1001, "failed:user block"), false)
            .await
            .expect("records");
        let out = store
            .record_event(ev("o3", 10, 1002, "failed: system failed"), true)
            .await
            .expect("records");
        assert_eq!(
            out,
            EventOutcome::Recorded {
                id: ids[2],
                status: Status::Delivered
            }
        );
        assert_eq!(
            store
                .record_event(ev("o9", 10, 777, "success"), true)
                .await
                .expect("records"),
            EventOutcome::Unmatched
        );
        store.close().await;
        ids
    };
    // The index and the seen keys are durable.
    let store = open(dir.path());
    assert_eq!(status(&store, ids[0]).await, Status::Confirmed);
    assert_eq!(status(&store, ids[1]).await, Status::RejectedByUser);
    let r = store.get(ids[2]).await.expect("reads").expect("exists");
    assert_eq!(r.status, Status::Delivered);
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].status, "failed: system failed");
    let dup = DeliveryEvent {
        openid: "o2".into(),
        create_time: 10,
        msgid: 1001,
        status: "failed:user block".into(),
        received_at: Timestamp::now(),
    };
    assert_eq!(
        store.record_event(dup, true).await.expect("records"),
        EventOutcome::Duplicate
    );
    store.close().await;
}

#[tokio::test]
async fn store_falls_back_to_the_latest_delivered_message_of_the_openid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let ids = deliver(&store, &["o1", "o1", "o2"]).await;
    let ev = |t, m| DeliveryEvent {
        openid: "o1".into(),
        create_time: t,
        msgid: m,
        status: "success".into(),
        received_at: Timestamp::now(),
    };
    // MsgID 0: the most recent delivered message to o1 without an event (ids[1]).
    assert_eq!(
        store.record_event(ev(20, 0), true).await.expect("records"),
        EventOutcome::Applied {
            id: ids[1],
            status: Status::Confirmed
        }
    );
    // A retry of that event is a duplicate, not a match for the other message.
    assert_eq!(
        store.record_event(ev(20, 0), true).await.expect("records"),
        EventOutcome::Duplicate
    );
    // An unknown msgid without the fallback matches nothing (the caller is still waiting for
    // that msgid's commit); with it, ids[0], the only one left awaiting.
    assert_eq!(
        store
            .record_event(ev(21, 424_242), false)
            .await
            .expect("records"),
        EventOutcome::Unmatched
    );
    assert_eq!(
        store
            .record_event(ev(21, 424_242), true)
            .await
            .expect("records"),
        EventOutcome::Applied {
            id: ids[0],
            status: Status::Confirmed
        }
    );
    assert_eq!(
        store.record_event(ev(22, 0), true).await.expect("records"),
        EventOutcome::Unmatched
    );
    assert_eq!(status(&store, ids[2]).await, Status::Delivered);
    let r = store.get(ids[1]).await.expect("reads").expect("exists");
    assert_eq!(r.events[0].matched_by, "openid_fallback");
    store.close().await;
}
