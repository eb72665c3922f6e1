//! The operations the writer applies, as callers send them.

use jiff::Timestamp;
use tokio::sync::oneshot;

use crate::message::{MessageId, MessageRecord};
use crate::store::index::Key;
use crate::store::{AcceptItem, Accepted, CallbackKey, DeliveryEvent, EventOutcome, StoreError};

/// An operation for the writer.
#[derive(Debug)]
pub(in crate::store::embedded) enum Op {
    /// Items with their records in stored form, encoded by the caller
    /// ([`crate::store::embedded::stored::encode`]).
    Accept {
        items: Vec<(AcceptItem, Vec<u8>)>,
        reply: oneshot::Sender<Result<Vec<Accepted>, StoreError>>,
    },
    Complete {
        slot: u64,
        record: Box<MessageRecord>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Outcomes of several attempts, `(slot, record)` each, answered per message.
    CompleteMany {
        items: Vec<(u64, Box<MessageRecord>)>,
        reply: oneshot::Sender<Result<Vec<Result<(), StoreError>>, StoreError>>,
    },
    /// "Attempt started" marks of leased messages: `(id, its progress with the start)`.
    StartAttempts {
        items: Vec<(u128, Vec<u8>)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Replay {
        id: MessageId,
        reply: oneshot::Sender<Result<MessageRecord, StoreError>>,
    },
    /// A recall: keep its time in the record's receipt, unless one is kept already.
    Recall {
        id: MessageId,
        at: Timestamp,
        reply: oneshot::Sender<Result<Timestamp, StoreError>>,
    },
    Event {
        event: Box<DeliveryEvent>,
        fallback: bool,
        reply: oneshot::Sender<Result<EventOutcome, StoreError>>,
    },
    FinishCallback {
        key: CallbackKey,
        next: Option<(Timestamp, u32)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    /// The in-memory head runs low (sent by a lease): refill it now.
    Refill,
    /// Entries beyond the watermark named by [`crate::store::Store::pull_in`]: bring those
    /// still in the durable schedule into memory, due at `to_ms`.
    PullIn {
        entries: Vec<Key>,
        to_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}
