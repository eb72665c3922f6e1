//! The accepted record as `messages` holds it: a compact binary form, encoded by the caller of
//! an accept (the HTTP handlers, many at once) so that the one writer thread only sets its
//! time and inserts the bytes.
//!
//! A message's record in `messages` is written once, at its accept, and everything that
//! changes after goes to `progress` (`super::progress`). So the stored form holds only what is
//! known at the accept: the message, its idempotency key and request digest, and the accept
//! time. The id is the table's key; the status, times and counters of a message as accepted
//! follow from the accept time ([`MessageRecord::new`]), and the default `client_msg_id`
//! follows from the id.
//!
//! Layout:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | the format, [`FORMAT`] |
//! | 12 | the accept time: seconds (`i64`) and nanoseconds (`i32`), little-endian |
//! | the rest | the fields ([`Fields`]) in `postcard`'s format |
//!
//! The accept time has a fixed place because the caller encodes before it is known: the
//! writer takes the time of its group and writes it in place ([`set_accepted_at`]). The
//! fields go through `postcard` (a compact serde format: varint lengths, no field names) on a
//! flat struct of their own, not on [`MessageRecord`], whose skipped optional fields a format
//! without field names cannot read back. Template `data` and a WeCom body stay the JSON text
//! they are kept as in memory ([`crate::message::TemplateData`]): the send embeds that text.
//!
//! Stores written before this form hold the record as JSON, whose first byte is `{`; those
//! still read ([`decode`]). `postcard` keeps no field names and no count of fields, so any
//! change to [`Fields`] (a field added, moved or removed) needs a new [`FORMAT`] byte, and the
//! decoder keeps reading the formats before it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::message::{
    Message, MessageId, MessageKind, MessageRecord, MiniProgram, TemplateData, TemplateNote,
};
use crate::store::{AcceptItem, StoreError};

/// The first byte of a record in this form. JSON records (the versions before) start with `{`.
pub(super) const FORMAT: u8 = 1;

/// The format byte and the accept time.
const HEADER: usize = 13;

/// The kinds by code; codes never move, new kinds go at the end.
const KINDS: [MessageKind; 3] = [
    MessageKind::Template,
    MessageKind::Subscribe,
    MessageKind::Bizsend,
];

/// The code of `kind` (a `match`, so that a new kind cannot compile without one; its place
/// in [`KINDS`], which decoding reads, is tested to agree).
fn kind_code(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Template => 0,
        MessageKind::Subscribe => 1,
        MessageKind::Bizsend => 2,
    }
}

/// A template note: field, rule, action, message.
type Note<'a> = (&'a str, &'a str, &'a str, &'a str);

/// What the record holds beyond its header, borrowed from the message when encoding and from
/// the stored bytes when decoding. The order is the format: never reorder.
#[derive(Serialize, Deserialize)]
struct Fields<'a> {
    kind: u8,
    touser: &'a str,
    template_id: &'a str,
    #[serde(borrow)]
    url: Option<&'a str>,
    /// `appid`, `pagepath`.
    #[serde(borrow)]
    miniprogram: Option<(&'a str, Option<&'a str>)>,
    #[serde(borrow)]
    page: Option<&'a str>,
    #[serde(borrow)]
    miniprogram_state: Option<&'a str>,
    #[serde(borrow)]
    lang: Option<&'a str>,
    /// The JSON text of the template's fields.
    data: &'a str,
    #[serde(borrow)]
    client_msg_id: Option<&'a str>,
    /// Seconds and nanoseconds.
    expires_at: Option<(i64, i32)>,
    #[serde(borrow)]
    callback_url: Option<&'a str>,
    #[serde(borrow)]
    template_notes: Vec<Note<'a>>,
    subscription_credit: bool,
    /// The JSON text of a WeCom body.
    #[serde(borrow)]
    wecom: Option<&'a str>,
    #[serde(borrow)]
    idempotency_key: Option<&'a str>,
    /// Kept only with an idempotency key.
    #[serde(borrow)]
    request_digest: Option<&'a str>,
}

/// The stored form of an item to accept, with a zero accept time: the writer sets it
/// ([`set_accepted_at`]).
pub(super) fn encode(item: &AcceptItem) -> Result<Vec<u8>, StoreError> {
    let m = &item.message;
    let key = item.idempotency_key.as_deref();
    let fields = Fields {
        kind: kind_code(m.kind),
        touser: &m.touser,
        template_id: &m.template_id,
        url: m.url.as_deref(),
        miniprogram: m
            .miniprogram
            .as_ref()
            .map(|p| (p.appid.as_str(), p.pagepath.as_deref())),
        page: m.page.as_deref(),
        miniprogram_state: m.miniprogram_state.as_deref(),
        lang: m.lang.as_deref(),
        data: m.data.as_str(),
        client_msg_id: m.client_msg_id.as_deref(),
        expires_at: m.expires_at.map(|t| (t.as_second(), t.subsec_nanosecond())),
        callback_url: m.callback_url.as_deref(),
        template_notes: m
            .template_notes
            .iter()
            .map(|n| {
                (
                    n.field.as_str(),
                    n.rule.as_str(),
                    n.action.as_str(),
                    n.message.as_str(),
                )
            })
            .collect(),
        subscription_credit: m.subscription_credit,
        wecom: m.wecom.as_ref().map(TemplateData::as_str),
        idempotency_key: key,
        request_digest: key.and(item.request_digest.as_deref()),
    };
    // The text fields and a few bytes of lengths and flags each: one allocation.
    let text = [
        m.touser.len(),
        m.template_id.len(),
        m.data.as_str().len(),
        m.url.as_ref().map_or(0, String::len),
        m.callback_url.as_ref().map_or(0, String::len),
        m.client_msg_id.as_ref().map_or(0, String::len),
        m.wecom.as_ref().map_or(0, |w| w.as_str().len()),
        key.map_or(0, str::len),
        item.request_digest.as_ref().map_or(0, String::len),
    ]
    .iter()
    .sum::<usize>();
    let mut out = Vec::with_capacity(HEADER + text + 48);
    out.push(FORMAT);
    out.extend_from_slice(&[0; HEADER - 1]);
    postcard::to_extend(&fields, out).map_err(|e| bad("encode", &e.to_string()))
}

/// Writes the accept time into a record encoded by [`encode`].
pub(super) fn set_accepted_at(bytes: &mut [u8], at: Timestamp) {
    if let Some(time) = bytes.get_mut(1..HEADER) {
        time[..8].copy_from_slice(&at.as_second().to_le_bytes());
        time[8..].copy_from_slice(&at.subsec_nanosecond().to_le_bytes());
    }
}

/// The record of `id` as stored: this form, or the JSON of the versions before.
pub(super) fn decode(id: u128, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    match bytes.first() {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| bad("decode", &e.to_string())),
        Some(&FORMAT) => decode_binary(id, bytes),
        Some(other) => Err(bad("decode", &format!("unknown format {other}"))),
        None => Err(bad("decode", "empty")),
    }
}

fn decode_binary(id: u128, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER>() else {
        return Err(bad("decode", "too short"));
    };
    let mut secs = [0; 8];
    secs.copy_from_slice(&header[1..9]);
    let mut nanos = [0; 4];
    nanos.copy_from_slice(&header[9..]);
    let accepted_at = Timestamp::new(i64::from_le_bytes(secs), i32::from_le_bytes(nanos))
        .map_err(|e| bad("decode", &format!("accept time: {e}")))?;
    let f: Fields<'_> = postcard::from_bytes(rest).map_err(|e| bad("decode", &e.to_string()))?;
    let kind = KINDS
        .get(usize::from(f.kind))
        .copied()
        .ok_or_else(|| bad("decode", &format!("unknown kind {}", f.kind)))?;
    let json = |text: &str| {
        serde_json::from_str::<TemplateData>(text).map_err(|e| bad("decode", &e.to_string()))
    };
    let expires_at = f
        .expires_at
        .map(|(s, n)| Timestamp::new(s, n))
        .transpose()
        .map_err(|e| bad("decode", &format!("expires_at: {e}")))?;
    let message = Message {
        kind,
        touser: f.touser.to_owned(),
        template_id: f.template_id.to_owned(),
        url: f.url.map(str::to_owned),
        miniprogram: f.miniprogram.map(|(appid, pagepath)| MiniProgram {
            appid: appid.to_owned(),
            pagepath: pagepath.map(str::to_owned),
        }),
        page: f.page.map(str::to_owned),
        miniprogram_state: f.miniprogram_state.map(str::to_owned),
        lang: f.lang.map(str::to_owned),
        data: json(f.data)?,
        client_msg_id: f.client_msg_id.map(str::to_owned),
        expires_at,
        callback_url: f.callback_url.map(str::to_owned),
        template_notes: f
            .template_notes
            .into_iter()
            .map(|(field, rule, action, message)| TemplateNote {
                field: field.to_owned(),
                rule: rule.to_owned(),
                action: action.to_owned(),
                message: message.to_owned(),
            })
            .collect(),
        subscription_credit: f.subscription_credit,
        wecom: f.wecom.map(json).transpose()?,
    };
    let key = f.idempotency_key.map(str::to_owned);
    let mut record = MessageRecord::new(MessageId::from_u128(id), message, key, accepted_at);
    record.request_digest = f.request_digest.map(str::to_owned);
    Ok(record)
}

fn bad(what: &str, why: &str) -> StoreError {
    StoreError::Storage(format!("{what} record: {why}").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_message;
    use serde_json::json;

    fn item(body: &serde_json::Value, key: Option<&str>) -> AcceptItem {
        AcceptItem {
            message: parse_message(body).expect("valid"),
            idempotency_key: key.map(str::to_owned),
            request_digest: Some("d1g35t".into()),
        }
    }

    fn round_trip(item: AcceptItem) -> (MessageRecord, Vec<u8>) {
        let id = MessageId::new();
        let at = Timestamp::from_nanosecond(1_765_000_000_123_456_789).expect("time");
        let mut bytes = encode(&item).expect("encodes");
        set_accepted_at(&mut bytes, at);
        let mut want = MessageRecord::new(id, item.message, item.idempotency_key, at);
        if want.idempotency_key.is_some() {
            want.request_digest = item.request_digest;
        }
        let got = decode(id.as_u128(), &bytes).expect("decodes");
        assert_eq!(got, want);
        (got, bytes)
    }

    /// Every field of a message comes back as accepted, and the record is the one
    /// [`MessageRecord::new`] makes, in about half the bytes of its JSON.
    #[test]
    fn every_field_comes_back() {
        let full = json!({
            "kind": "subscribe",
            "touser": "o-full",
            "template_id": "T-1",
            "url": "https://example.invalid/a?b=\"c\"",
            "miniprogram": {"appid": "wxapp", "pagepath": "p/q"},
            "page": "index",
            "miniprogram_state": "trial",
            "lang": "zh_CN",
            "data": {"thing1": {"value": "línea\n\"dos\""}},
            "client_msg_id": "mine-1",
            "expires_at": "2030-01-02T03:04:05.678Z",
            "callback_url": "https://example.invalid/cb",
        });
        let (record, _) = round_trip(item(&full, Some("key-1")));
        assert_eq!(record.client_msg_id, "mine-1");
        assert_eq!(record.request_digest.as_deref(), Some("d1g35t"));

        let plain = json!({"touser": "o", "template_id": "T", "data": {"k": {"value": "v"}}});
        let (record, bytes) = round_trip(item(&plain, None));
        assert!(record.client_msg_id.starts_with("wxp-"));
        assert_eq!(record.request_digest, None, "kept only with a key");
        let json = serde_json::to_vec(&record).expect("JSON");
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn notes_credits_and_wecom_bodies_come_back() {
        let mut it = item(
            &json!({"touser": "o", "template_id": "T", "data": {}}),
            None,
        );
        it.message.template_notes = vec![TemplateNote {
            field: "data.thing2".into(),
            rule: "too_long".into(),
            action: "cut".into(),
            message: "cut to 20 characters".into(),
        }];
        it.message.subscription_credit = true;
        it.message.wecom =
            serde_json::from_str(r#"{"msgtype":"text","text":{"content":"hi"}}"#).expect("JSON");
        round_trip(it);
    }

    #[test]
    fn each_kind_code_is_its_place_in_the_decoding_table() {
        for (i, kind) in KINDS.iter().enumerate() {
            assert_eq!(usize::from(kind_code(*kind)), i, "{kind:?}");
        }
    }

    /// A JSON record (the versions before) reads; bytes of neither form are refused.
    #[test]
    fn json_records_read_and_others_are_refused() {
        let it = item(
            &json!({"touser": "o", "template_id": "T", "data": {}}),
            None,
        );
        let id = MessageId::new();
        let mut record = MessageRecord::new(id, it.message, None, Timestamp::now());
        record.attempts = 2;
        let bytes = serde_json::to_vec(&record).expect("JSON");
        assert_eq!(decode(id.as_u128(), &bytes).expect("decodes"), record);
        for bad in [&b""[..], b"\x07abc", b"\x01short"] {
            assert!(decode(id.as_u128(), bad).is_err(), "{bad:?}");
        }
    }
}
