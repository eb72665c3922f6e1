use super::*;
use crate::message::{Message, MessageId, MessageRecord, Status};
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
        kind: "errcode".into(),
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

mod store {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::events::DeliveryEvent;
    use crate::message::parse_message;
    use crate::store::embedded::EmbeddedOptions;
    use crate::store::{AcceptItem, EmbeddedStore};

    fn open(dir: &std::path::Path, default_callback: bool) -> EmbeddedStore {
        EmbeddedStore::open(&EmbeddedOptions {
            path: dir.to_path_buf(),
            max_messages: 100,
            retention: Duration::from_secs(3600),
            default_callback,
        })
        .expect("opens")
    }

    /// Accepts `msgs` and completes each as delivered (msgid 7000+n).
    async fn deliver(store: &EmbeddedStore, msgs: &[Value]) {
        let items = msgs
            .iter()
            .map(|m| AcceptItem {
                message: parse_message(m).expect("valid"),
                idempotency_key: None,
            })
            .collect();
        store.accept(items).await.expect("accepts");
        let leased = store
            .lease(msgs.len(), Duration::from_secs(1))
            .await
            .expect("leases");
        assert_eq!(leased.len(), msgs.len());
        for (n, l) in leased.into_iter().enumerate() {
            let mut done = l.record.clone();
            done.status = Status::Delivered;
            done.msgid = Some(7000 + n as i64);
            done.finished_at = Some(Timestamp::now());
            done.next_attempt_at = None;
            store.complete(l.slot, done).await.expect("completes");
        }
    }

    fn body(cb: &PendingCallback) -> Value {
        serde_json::from_str(&cb.body).expect("json")
    }

    #[tokio::test]
    async fn final_states_write_callbacks_that_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Whole milliseconds, as the store keeps them.
        let later =
            Timestamp::from_millisecond(Timestamp::now().as_millisecond() + 300).expect("a time");
        {
            // No channel URL: only the message with its own callback_url gets one.
            let store = open(dir.path(), false);
            deliver(
                &store,
                &[
                    json!({"touser": "a", "template_id": "T"}),
                    json!({"touser": "b", "template_id": "T", "callback_url": "http://x/cb"}),
                ],
            )
            .await;
            let due = store
                .lease_callbacks(10, Duration::from_millis(200))
                .await
                .expect("leases");
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].url.as_deref(), Some("http://x/cb"));
            assert_eq!(body(&due[0])["status"], "delivered");
            assert_eq!(body(&due[0])["touser"], "b");
            // Leased: not handed out twice.
            let again = store
                .lease_callbacks(10, Duration::from_millis(50))
                .await
                .expect("leases");
            assert!(again.is_empty());
            // A failed attempt moves it to a later time with its attempt count.
            store
                .finish_callback(due[0].key, Some((later, 1)))
                .await
                .expect("reschedules");
            store.close().await;
        }
        // After a restart (the lease is gone), it is still there with its attempts.
        let store = open(dir.path(), false);
        let due = store
            .lease_callbacks(10, Duration::from_secs(2))
            .await
            .expect("leases");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, 1);
        assert_eq!(
            due[0].key.due_ms,
            crate::store::millis(later),
            "rescheduled"
        );
        assert!(
            Timestamp::now() >= later,
            "not handed out before its retry time"
        );
        store.finish_callback(due[0].key, None).await.expect("done");
        let none = store
            .lease_callbacks(10, Duration::from_millis(100))
            .await
            .expect("leases");
        assert!(none.is_empty(), "a finished callback is gone");
    }

    #[tokio::test]
    async fn a_confirming_event_writes_a_second_callback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), true);
        deliver(&store, &[json!({"touser": "c", "template_id": "T"})]).await;
        let first = store
            .lease_callbacks(10, Duration::from_millis(200))
            .await
            .expect("leases");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].url, None, "the channel's URL");
        store
            .finish_callback(first[0].key, None)
            .await
            .expect("done");
        let outcome = store
            .record_event(
                DeliveryEvent {
                    openid: "c".into(),
                    create_time: 1,
                    msgid: 7000,
                    status: "success".into(),
                    received_at: Timestamp::now(),
                },
                true,
            )
            .await
            .expect("records");
        assert!(matches!(
            outcome,
            crate::events::EventOutcome::Applied { .. }
        ));
        let second = store
            .lease_callbacks(10, Duration::from_millis(200))
            .await
            .expect("leases");
        assert_eq!(second.len(), 1);
        let b = body(&second[0]);
        assert_eq!(b["status"], "confirmed");
        assert_eq!(b["msgid"], 7000);
        assert_eq!(b["id"], body(&first[0])["id"]);
    }
}
