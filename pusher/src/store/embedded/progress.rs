//! A message's progress: the parts of its record that change after its accept, kept in the
//! `progress` table apart from the record (`messages`), which is written once, at accept.
//!
//! The "attempt started" mark before a first send ([`encode_started`]), an outcome, an event, a
//! replay or a recall writes only this small entry (about 70 bytes for a delivered message)
//! instead of the whole record again (about 500 bytes of JSON). A read takes the record as
//! accepted and lays its progress over it ([`apply`]). Stores written before this table
//! existed kept the progress in the record, which still reads: a record without a progress
//! entry is read as it is.
//!
//! The layout is written by hand, not by a serde format, because it is a handful of fixed
//! fields: the compact serde formats cannot read the record's optional fields (they skip
//! absent ones), and the time stamps serialize as text. Little-endian, in this order:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | the layout's version, [`VERSION`] |
//! | 1 | `status` ([`status_code`]) |
//! | 1 | flags: which optional fields follow ([`DEAD`], [`MSGID`], …) |
//! | 4 + 4 | `attempts`, `replays` |
//! | 12 + 12 | `budget_from`, `updated_at` (seconds `i64`, nanoseconds `i32`) |
//! | 12 each, when flagged | `first_attempt_at`, `next_attempt_at`, `finished_at` |
//! | 8, when flagged | `msgid` |
//! | the rest, when flagged | `last_error`, `events` and `receipt` as JSON ([`Rare`]) |

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::message::{EventRecord, MessageRecord, Receipt, SendError, Status};
use crate::store::StoreError;

/// The version tag: the first byte of every entry.
pub(super) const VERSION: u8 = 1;

const DEAD: u8 = 1;
const MSGID: u8 = 1 << 1;
const FIRST_ATTEMPT: u8 = 1 << 2;
const NEXT_ATTEMPT: u8 = 1 << 3;
const FINISHED: u8 = 1 << 4;
const RARE: u8 = 1 << 5;

/// The rarely set parts of the progress, as JSON at the end of the entry.
#[derive(Serialize, Deserialize)]
struct Rare {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<SendError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<EventRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt: Option<Receipt>,
}

/// The statuses by code ([`status_code`]); codes never move, new statuses go at the end.
const STATUSES: [Status; 10] = [
    Status::Queued,
    Status::Sending,
    Status::Retrying,
    Status::Delivered,
    Status::Confirmed,
    Status::RejectedByUser,
    Status::Failed,
    Status::Expired,
    Status::DeadLettered,
    Status::UnknownOutcome,
];

/// The byte that stands for `status` (its place in [`STATUSES`]).
fn status_code(status: Status) -> u8 {
    match status {
        Status::Queued => 0,
        Status::Sending => 1,
        Status::Retrying => 2,
        Status::Delivered => 3,
        Status::Confirmed => 4,
        Status::RejectedByUser => 5,
        Status::Failed => 6,
        Status::Expired => 7,
        Status::DeadLettered => 8,
        Status::UnknownOutcome => 9,
    }
}

fn put_time(out: &mut Vec<u8>, at: Timestamp) {
    out.extend_from_slice(&at.as_second().to_le_bytes());
    out.extend_from_slice(&at.subsec_nanosecond().to_le_bytes());
}

/// The progress of `record`, encoded.
pub(super) fn encode(record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
    encode_times(record, Times::of(record))
}

/// The progress of `record` with its first attempt started at `at` (unless it records an
/// earlier start): the "attempt started" mark. Its first attempt started then, and its
/// `maxAge` budget runs from then.
pub(super) fn encode_started(record: &MessageRecord, at: Timestamp) -> Result<Vec<u8>, StoreError> {
    let mut times = Times::of(record);
    if times.first_attempt_at.is_none() {
        times = Times {
            first_attempt_at: Some(at),
            budget_from: at,
            updated_at: at,
        };
    }
    encode_times(record, times)
}

/// The times that an "attempt started" mark sets.
#[derive(Clone, Copy)]
struct Times {
    first_attempt_at: Option<Timestamp>,
    budget_from: Timestamp,
    updated_at: Timestamp,
}

impl Times {
    fn of(record: &MessageRecord) -> Self {
        Self {
            first_attempt_at: record.first_attempt_at,
            budget_from: record.budget_from,
            updated_at: record.updated_at,
        }
    }
}

fn encode_times(record: &MessageRecord, times: Times) -> Result<Vec<u8>, StoreError> {
    let mut flags = 0;
    let optional = [
        (record.dead_letter, DEAD),
        (record.msgid.is_some(), MSGID),
        (times.first_attempt_at.is_some(), FIRST_ATTEMPT),
        (record.next_attempt_at.is_some(), NEXT_ATTEMPT),
        (record.finished_at.is_some(), FINISHED),
        (
            record.last_error.is_some() || !record.events.is_empty() || record.receipt.is_some(),
            RARE,
        ),
    ];
    for (set, flag) in optional {
        if set {
            flags |= flag;
        }
    }
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&[VERSION, status_code(record.status), flags]);
    out.extend_from_slice(&record.attempts.to_le_bytes());
    out.extend_from_slice(&record.replays.to_le_bytes());
    put_time(&mut out, times.budget_from);
    put_time(&mut out, times.updated_at);
    for at in [
        times.first_attempt_at,
        record.next_attempt_at,
        record.finished_at,
    ]
    .into_iter()
    .flatten()
    {
        put_time(&mut out, at);
    }
    if let Some(m) = record.msgid {
        out.extend_from_slice(&m.to_le_bytes());
    }
    if flags & RARE != 0 {
        let rare = RareRef {
            last_error: record.last_error.as_ref(),
            events: &record.events,
            receipt: record.receipt.as_ref(),
        };
        serde_json::to_writer(&mut out, &rare)
            .map_err(|e| StoreError::storage(format!("encode progress: {e}"), e))?;
    }
    Ok(out)
}

/// [`Rare`], borrowed from the record for writing.
#[derive(Serialize)]
struct RareRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<&'a SendError>,
    #[serde(skip_serializing_if = "<[EventRecord]>::is_empty")]
    events: &'a [EventRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a Receipt>,
}

/// Reads an entry front to back.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(bad("too short"));
        };
        self.0 = rest;
        Ok(*head)
    }

    fn time(&mut self) -> Result<Timestamp, StoreError> {
        let secs = i64::from_le_bytes(self.take()?);
        let nanos = i32::from_le_bytes(self.take()?);
        Timestamp::new(secs, nanos).map_err(|e| bad(&format!("time: {e}")))
    }

    fn time_if(&mut self, flags: u8, flag: u8) -> Result<Option<Timestamp>, StoreError> {
        if flags & flag == 0 {
            Ok(None)
        } else {
            self.time().map(Some)
        }
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Storage(format!("decode progress: {what}").into())
}

/// When the message of this progress finished, if its status is final (`finished_at`, else
/// the last change): what the retention sweep needs, read without decoding the rest.
pub(super) fn finished_at(bytes: &[u8]) -> Result<Option<Timestamp>, StoreError> {
    let mut r = Reader(bytes);
    let [version, status, flags] = r.take()?;
    if version != VERSION {
        return Err(bad(&format!("unknown version {version}")));
    }
    let final_ = STATUSES
        .get(usize::from(status))
        .ok_or_else(|| bad(&format!("unknown status {status}")))?
        .is_final();
    if !final_ {
        return Ok(None);
    }
    r.take::<8>()?;
    r.time()?;
    let updated_at = r.time()?;
    r.time_if(flags, FIRST_ATTEMPT)?;
    r.time_if(flags, NEXT_ATTEMPT)?;
    Ok(Some(r.time_if(flags, FINISHED)?.unwrap_or(updated_at)))
}

/// Lays the progress in `bytes` over `record` (the record as accepted).
pub(super) fn apply(record: &mut MessageRecord, bytes: &[u8]) -> Result<(), StoreError> {
    let mut r = Reader(bytes);
    let [version, status, flags] = r.take()?;
    if version != VERSION {
        return Err(bad(&format!("unknown version {version}")));
    }
    let status = STATUSES
        .get(usize::from(status))
        .copied()
        .ok_or_else(|| bad(&format!("unknown status {status}")))?;
    let attempts = u32::from_le_bytes(r.take()?);
    let replays = u32::from_le_bytes(r.take()?);
    let budget_from = r.time()?;
    let updated_at = r.time()?;
    let first_attempt_at = r.time_if(flags, FIRST_ATTEMPT)?;
    let next_attempt_at = r.time_if(flags, NEXT_ATTEMPT)?;
    let finished_at = r.time_if(flags, FINISHED)?;
    let msgid = if flags & MSGID == 0 {
        None
    } else {
        Some(i64::from_le_bytes(r.take()?))
    };
    let rare = if flags & RARE == 0 {
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Rare {
            last_error: None,
            events: Vec::new(),
            receipt: None,
        }
    } else {
        serde_json::from_slice(r.0).map_err(|e| bad(&e.to_string()))?
    };
    record.status = status;
    record.attempts = attempts;
    record.replays = replays;
    record.budget_from = budget_from;
    record.updated_at = updated_at;
    record.first_attempt_at = first_attempt_at;
    record.next_attempt_at = next_attempt_at;
    record.finished_at = finished_at;
    record.msgid = msgid;
    record.dead_letter = flags & DEAD != 0;
    record.last_error = rare.last_error;
    record.events = rare.events;
    record.receipt = rare.receipt;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ErrorKind, MessageId, parse_message};
    use jiff::SignedDuration;
    use serde_json::json;

    fn record() -> MessageRecord {
        let m =
            parse_message(&json!({"touser": "o", "template_id": "T", "data": {}})).expect("valid");
        MessageRecord::new(MessageId::new(), m, None, Timestamp::now())
    }

    /// Every field the progress carries comes back as written, set or not.
    #[test]
    fn the_progress_reads_back_as_written() {
        let accepted = record();
        let mut done = accepted.clone();
        let at = Timestamp::now() + SignedDuration::from_millis(1234);
        done.status = Status::DeadLettered;
        done.attempts = 3;
        done.replays = 2;
        done.budget_from = at;
        done.updated_at = at + SignedDuration::from_nanos(7);
        done.first_attempt_at = Some(at - SignedDuration::from_secs(1));
        done.next_attempt_at = Some(at + SignedDuration::from_secs(1));
        done.finished_at = Some(at);
        done.msgid = Some(-42);
        done.dead_letter = true;
        done.last_error = Some(SendError::new(ErrorKind::Errcode, "no"));
        done.receipt = Some(Receipt::default());
        for want in [accepted.clone(), done] {
            let bytes = encode(&want).expect("encodes");
            assert_eq!(bytes[0], VERSION);
            let mut got = accepted.clone();
            got.status = Status::Confirmed;
            got.msgid = Some(1);
            apply(&mut got, &bytes).expect("decodes");
            assert_eq!(
                serde_json::to_value(&got).expect("JSON"),
                serde_json::to_value(&want).expect("JSON")
            );
        }
    }

    /// A delivered message's progress is small, and every status keeps its code.
    #[test]
    fn a_delivered_progress_is_small_and_statuses_round_trip() {
        let mut r = record();
        r.status = Status::Delivered;
        r.attempts = 1;
        r.msgid = Some(1);
        r.first_attempt_at = Some(r.accepted_at);
        r.finished_at = Some(r.accepted_at);
        r.next_attempt_at = None;
        let bytes = encode(&r).expect("encodes");
        assert!(bytes.len() <= 72, "{} bytes", bytes.len());
        for (code, &status) in STATUSES.iter().enumerate() {
            assert_eq!(usize::from(status_code(status)), code);
        }
    }

    /// The start mark sets the start and the budget of a record not yet started, and keeps an
    /// earlier start.
    #[test]
    fn the_start_mark_keeps_an_earlier_start() {
        let mut r = record();
        let at = r.accepted_at + SignedDuration::from_secs(5);
        let mut got = r.clone();
        apply(&mut got, &encode_started(&r, at).expect("encodes")).expect("decodes");
        let times = |r: &MessageRecord| (r.first_attempt_at, r.budget_from, r.updated_at);
        assert_eq!(times(&got), (Some(at), at, at));
        r.first_attempt_at = Some(r.accepted_at);
        let mut got = r.clone();
        apply(&mut got, &encode_started(&r, at).expect("encodes")).expect("decodes");
        assert_eq!(times(&got), times(&r));
    }

    /// The sweep reads the finish time of a final progress only.
    #[test]
    fn the_finish_time_is_read_from_a_final_progress_only() {
        let mut r = record();
        let at = r.accepted_at + SignedDuration::from_secs(3);
        assert_eq!(
            finished_at(&encode(&r).expect("encodes")).expect("reads"),
            None
        );
        r.first_attempt_at = Some(r.accepted_at);
        r.status = Status::Retrying;
        r.next_attempt_at = Some(at);
        assert_eq!(
            finished_at(&encode(&r).expect("encodes")).expect("reads"),
            None
        );
        r.status = Status::Delivered;
        r.next_attempt_at = None;
        r.finished_at = Some(at);
        r.msgid = Some(5);
        r.last_error = Some(SendError::new(ErrorKind::Errcode, "no"));
        let bytes = encode(&r).expect("encodes");
        assert_eq!(finished_at(&bytes).expect("reads"), Some(at));
        assert!(finished_at(&bytes[..20]).is_err());
    }

    /// A damaged or unknown entry is an error, never a wrong record.
    #[test]
    fn a_damaged_progress_is_an_error() {
        let mut r = record();
        let bytes = encode(&r).expect("encodes");
        for bad in [
            &bytes[..bytes.len() - 1],
            &[2, 0, 0][..],
            &[VERSION, 10, 0][..],
        ] {
            assert!(apply(&mut r, bad).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(apply(&mut r, &longer).is_err());
    }
}
