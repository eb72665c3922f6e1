//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) and of their regression replays
//! (`pusher/tests/fuzz_regressions.rs`): each takes arbitrary bytes, runs one parser the way the
//! pusher does on untrusted input, and panics only when an invariant breaks. They live in the
//! library so that the fuzz targets and the replays run the very same code.

use std::str::FromStr;

use crate::events::{DeliveryEvent, is_template_event, parse_xml};
use crate::message::{MAX_ECHOED_FIELD, batch_items, parse_json_message, parse_strict};
use crate::policy::HumanDuration;

/// The EncodingAESKey and appid the AES target decrypts with.
pub const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
/// See [`AES_KEY`].
pub const AES_APPID: &str = "wxfuzz00000000000";

/// A request body of `POST /v1/messages`: strict JSON, then the message's validation. An
/// accepted message serialises, and an error's field is bounded.
pub fn message(data: &[u8]) {
    let Ok(value) = parse_strict(data) else {
        return;
    };
    match parse_json_message(&value) {
        Ok(m) => {
            assert!(!m.touser.trim().is_empty(), "accepted a blank touser");
            assert!(
                serde_json::to_vec(&m).is_ok(),
                "an accepted message does not serialise"
            );
        }
        Err(e) => {
            let e = e.bounded();
            assert!(
                e.field.chars().count() <= MAX_ECHOED_FIELD + 1,
                "unbounded field"
            );
        }
    }
}

/// A request body of `POST /v1/messages/batch`.
pub fn batch(data: &[u8]) {
    let Ok(value) = parse_strict(data) else {
        return;
    };
    let Ok(items) = batch_items(value, 1000) else {
        return;
    };
    assert!(!items.is_empty() && items.len() <= 1000);
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = parse_json_message(item) {
            let e = e.in_item(i).bounded();
            assert!(e.field.starts_with("messages["), "{}", e.field);
        }
    }
}

/// A `/wechat/events` body (plain mode, or a decrypted safe-mode payload).
pub fn events_xml(data: &[u8]) {
    let Ok(xml) = parse_xml(data) else {
        return;
    };
    if is_template_event(&xml) {
        let _ = DeliveryEvent::from_xml(&xml, jiff::Timestamp::UNIX_EPOCH);
    }
}

/// A safe-mode `<Encrypt>` text: decrypting never panics; what the key sealed opens again.
pub fn aes(data: &[u8]) {
    let Ok(cipher) = wxcrypto::Cipher::new(AES_KEY, AES_APPID) else {
        panic!("the fixed key is valid");
    };
    let text = String::from_utf8_lossy(data);
    let _ = cipher.decrypt(&text);
    let sealed = cipher.encrypt_with_random(data, [7; 16]);
    assert_eq!(
        cipher.decrypt(&sealed).ok().as_deref(),
        Some(data),
        "a round trip changed the payload"
    );
}

/// A duration as written in the config and the CRD: what parses prints as text that parses to
/// the same duration.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = HumanDuration::from_str(text) {
        let printed = d.to_string();
        let again = HumanDuration::from_str(&printed).unwrap_or_else(|e| {
            panic!("{text:?} printed as {printed:?}, which does not parse: {e}")
        });
        assert_eq!(again, d, "{text:?} → {printed:?}");
    }
}
