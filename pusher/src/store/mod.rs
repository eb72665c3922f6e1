//! The durable queue behind the API and the dispatcher.
//!
//! [`Store`] is what both sides need from a queue: accept a group of messages durably (all or
//! nothing), lease due messages to workers, record the outcome of an attempt, read a message's
//! status, list and replay dead letters, and count messages by state. [`embedded::EmbeddedStore`]
//! implements it on local disk with `redb` (one pod); [`redis::RedisStore`] in Redis Streams
//! (several pods, docs/scaling.md). [`contract`] is the behaviour suite both must pass;
//! [`types`] holds what the store shares with its neighbours `events` and `callbacks`, so that
//! they depend on the store and never the other way round. Above it: `api` and `dispatch`.

#[cfg(any(test, feature = "contract"))]
pub mod contract;
pub mod embedded;
mod index;
pub mod redis;
pub mod types;

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

use crate::message::{Message, MessageId, MessageRecord, Status};

pub use types::{
    CallbackKey, CallbackPayload, DeliveryEvent, EventOutcome, MatchedBy, PendingCallback,
    apply_event, wants_callback,
};

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// One message to accept.
#[derive(Debug, Clone)]
pub struct AcceptItem {
    /// The validated message.
    pub message: Message,
    /// The producer's `Idempotency-Key` for this message, if any.
    pub idempotency_key: Option<String>,
    /// The digest of the request that carried the key ([`crate::message::request_digest`]): a
    /// key seen before with another digest refuses the whole request
    /// ([`StoreError::KeyReused`]). `None` matches any digest.
    pub request_digest: Option<String>,
}

/// The answer for one accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The message's id (the first one, when the idempotency key was seen before).
    pub id: MessageId,
    /// Its status now (`queued` for a new message).
    pub status: Status,
    /// Whether the idempotency key was seen before (nothing new was stored).
    pub duplicate: bool,
}

/// A message leased to a worker. The lease lives in memory only: when the process dies, the
/// message is due again at the next start.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The message as stored when leased.
    pub record: MessageRecord,
    /// The schedule slot it was leased from (the store needs it to move the message on).
    pub slot: u64,
    /// The outcome of an earlier attempt that could not be recorded (the store failed to write
    /// it): the caller records this instead of sending again.
    pub unrecorded: Option<Box<MessageRecord>>,
}

/// Messages by state, for `wxpush_queue_messages{state}` and backpressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Due now, not leased.
    pub ready: u64,
    /// Waiting for a retry time.
    pub delayed: u64,
    /// Leased to a worker.
    pub inflight: u64,
    /// In the dead-letter set.
    pub dead: u64,
    /// When the oldest ready message became due (unix ms), if one is ready: for
    /// `wxpush_queue_oldest_ready_age_seconds`.
    pub oldest_ready_ms: Option<u64>,
}

impl QueueCounts {
    /// Messages not yet final (what `maxMessages` limits).
    pub fn pending(&self) -> u64 {
        self.ready + self.delayed + self.inflight
    }
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    /// The records.
    pub items: Vec<MessageRecord>,
    /// The cursor for the next page, when there may be more.
    pub next: Option<MessageId>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The queue holds `maxMessages` pending messages: nothing of the request was written.
    #[error("the queue is full ({pending} of {max} messages pending)")]
    Full {
        /// Pending messages now.
        pending: u64,
        /// The limit.
        max: u64,
        /// A hint for `Retry-After`.
        retry_after: Duration,
    },
    /// An `Idempotency-Key` seen before came with another request body: nothing of the
    /// request was written.
    #[error(
        "the Idempotency-Key {0:?} was used before with a different request body; use a new key \
         for a new message"
    )]
    KeyReused(String),
    /// The embedded store has reached its disk budget (`queue.embedded.maxBytes`): nothing of
    /// the request was written. Accepts resume once deliveries and the retention sweep free
    /// space.
    #[error(
        "the queue's disk budget is spent ({used} of {max} bytes in use); retry once deliveries free space"
    )]
    OverBudget {
        /// Bytes in use, as last measured.
        used: u64,
        /// The budget.
        max: u64,
    },
    /// No such message.
    #[error("no message with id {0}")]
    NotFound(MessageId),
    /// The message is not in the dead-letter set.
    #[error("message {0} is not a dead letter")]
    NotDeadLetter(MessageId),
    /// The message's `expires_at` has passed, so replaying it would only expire it again.
    #[error("message {0} expired at {1}; it cannot be replayed")]
    PastExpiry(MessageId, Timestamp),
    /// The store cannot be opened, read or written; the underlying error, when there is one,
    /// is its [`std::error::Error::source`].
    #[error(transparent)]
    Storage(StorageFailure),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// Too many operations are waiting for the store's writer: nothing was written; retry
    /// shortly (HTTP 503).
    #[error("the queue's writer is busy; retry shortly")]
    Busy,
}

/// Why the store could not be opened, read or written: a sentence, and the error that caused
/// it when there is one. Reads as the sentence (`contains`, `starts_with`, …).
#[derive(Debug)]
pub struct StorageFailure {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StorageFailure {
    /// A failure described by `message` alone.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure described by `message` (which usually names `source` too), caused by
    /// `source`.
    pub fn caused(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage: {}", self.message)
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl std::ops::Deref for StorageFailure {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl From<String> for StorageFailure {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for StorageFailure {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl StoreError {
    /// A storage failure caused by `source`, described by `message`.
    pub fn storage(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Storage(StorageFailure::caused(message, source))
    }

    /// A short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Full { .. } => "full",
            Self::KeyReused(_) => "key_reused",
            Self::OverBudget { .. } => "over_budget",
            Self::NotFound(_) => "not_found",
            Self::NotDeadLetter(_) => "not_dead_letter",
            Self::PastExpiry(..) => "past_expiry",
            Self::Storage(_) => "storage",
            Self::Closed => "closed",
            Self::Busy => "busy",
        }
    }
}

/// Whether a request with digest `asked` may replay the message stored with digest `stored`
/// under the same `Idempotency-Key`. A record kept before digests were stored, or a request
/// without a digest, matches.
pub(crate) fn digests_match(stored: Option<&str>, asked: Option<&str>) -> bool {
    match (stored, asked) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The durable queue.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `items` in one durable write and answers only once it is durable. All or
    /// nothing: when they do not all fit under `maxMessages`, nothing is written
    /// ([`StoreError::Full`]). Items whose idempotency key was seen before get the first id;
    /// when such a key was stored with another request digest, nothing is written
    /// ([`StoreError::KeyReused`]).
    fn accept(
        &self,
        items: Vec<AcceptItem>,
    ) -> impl Future<Output = Result<Vec<Accepted>, StoreError>> + Send;

    /// Leases up to `max` due messages, waiting at most `wait` for one to become due (waking
    /// as soon as new work arrives). May return an empty list.
    fn lease(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Leased>, StoreError>> + Send;

    /// Records the outcome of an attempt on a leased message and ends the lease: `record`
    /// is the message's new state (queued/retrying with `next_attempt_at`, or final).
    /// Durable once the returned future resolves.
    fn complete(
        &self,
        slot: u64,
        record: MessageRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`Store::complete`] for several leased messages at once, answered per message in
    /// order: `(slot, record)` each. The dispatcher records the outcomes of attempts that ended
    /// together in one call; the embedded store writes them as one operation with one answer.
    /// The default completes them concurrently, one call each.
    fn complete_many(
        &self,
        items: Vec<(u64, MessageRecord)>,
    ) -> impl Future<Output = Vec<Result<(), StoreError>>> + Send {
        futures::future::join_all(
            items
                .into_iter()
                .map(|(slot, record)| self.complete(slot, record)),
        )
    }

    /// The message's record (status `sending` while leased).
    fn get(
        &self,
        id: MessageId,
    ) -> impl Future<Output = Result<Option<MessageRecord>, StoreError>> + Send;

    /// Dead letters after `after` (exclusive), at most `limit`.
    fn dead_letters(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> impl Future<Output = Result<DeadLetterPage, StoreError>> + Send;

    /// Moves a dead letter back to the queue with a fresh retry budget and the same
    /// `client_msg_id`.
    fn replay(
        &self,
        id: MessageId,
    ) -> impl Future<Output = Result<MessageRecord, StoreError>> + Send;

    /// Records that the message `id` was recalled at `at` (its receipt's `recalled_at`),
    /// keeping the first time: answers the time now recorded, which is an earlier recall's
    /// when there was one. [`StoreError::NotFound`] when there is no such message. The caller
    /// checks first that the message can be recalled; the store only keeps the record.
    fn record_recall(
        &self,
        id: MessageId,
        at: Timestamp,
    ) -> impl Future<Output = Result<Timestamp, StoreError>> + Send;

    /// Records a TEMPLATESENDJOBFINISH event, atomically: an event seen before (same openid,
    /// `CreateTime` and `MsgID`) is a [`EventOutcome::Duplicate`]; otherwise the message is
    /// found through the msgid → message index (written when a message is completed as
    /// `delivered`), or, when `MsgID` is 0 or unknown, as the most recent `delivered` message to
    /// that openid with no event yet (only when `fallback` is true, so that a caller can first
    /// wait for a known msgid's `delivered` commit); then [`apply_event`]
    /// decides. A Redis
    /// implementation keeps the index in a hash, the per-openid awaiting set in a sorted set and
    /// the seen keys with `SET NX`, and runs this in one script.
    fn record_event(
        &self,
        event: DeliveryEvent,
        fallback: bool,
    ) -> impl Future<Output = Result<EventOutcome, StoreError>> + Send;

    /// Leases up to `max` due outcome callbacks, waiting at most `wait` for one (may return
    /// an empty list). Callbacks are written by [`Store::complete`] (final states) and
    /// [`Store::record_event`] (confirmed / rejected) in the same transaction as the state
    /// change, when the message has a `callback_url` or the channel has a default URL. The
    /// lease is in memory only: after a crash a leased callback is due again. A Redis
    /// implementation keeps them in a sorted set by due time plus a hash, written in the
    /// same `MULTI`/script as the state change.
    fn lease_callbacks(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<PendingCallback>, StoreError>> + Send;

    /// Ends a callback's lease: removes it (`next` = `None`: sent, or given up) or moves it
    /// to `next = (due, attempts)`. Durable once the returned future resolves.
    fn finish_callback(
        &self,
        key: CallbackKey,
        next: Option<(Timestamp, u32)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes retries that an outage delayed due at `to` (the circuit breaker closed: WeChat is
    /// back). `entries` are `(schedule slot in store milliseconds, id)` as the dispatcher wrote
    /// them; entries no longer scheduled at that slot are skipped. A hint, not a durable change:
    /// after a restart the messages keep their written times. Returns how many moved. The
    /// default moves nothing.
    fn pull_in(
        &self,
        entries: Vec<(u64, MessageId)>,
        to: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (entries, to);
        async { Ok(0) }
    }

    /// Messages by state.
    fn counts(&self) -> QueueCounts;

    /// Whether the store can take writes now.
    fn is_healthy(&self) -> bool;

    /// Whether the store is alive: false only once it has failed to heal for longer than
    /// allowed (`queue.embedded.unhealthyAfter`), so that the liveness probe restarts the
    /// process. A store that cannot heal itself answers true.
    fn is_live(&self) -> bool {
        true
    }

    /// Records durably, before the first send of a leased message, that its first attempt
    /// started at `at` (`first_attempt_at`; the `maxAge` budget runs from then). The lease
    /// is kept. When this fails, the lease is given back (due again after a delay) and the
    /// message must not be sent. Both stores here write the record (the contract check
    /// `a_started_attempt_comes_back_with_the_next_lease`); a store without it answers `Ok`
    /// and leaves the crash window of the first attempt open.
    fn start_attempt(
        &self,
        leased: &Leased,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (leased, at);
        async { Ok(()) }
    }

    /// [`Store::start_attempt`] for several leased messages at once, answered per message in
    /// order. The dispatcher stamps each record first (`first_attempt_at` = `budget_from` =
    /// `updated_at` = `at`), so that a store can write the records as given, in one commit, with
    /// one answer for the lot (the embedded store does). The default starts them one by one.
    fn start_attempts(
        &self,
        leased: &[&Leased],
        at: Timestamp,
    ) -> impl Future<Output = Vec<Result<(), StoreError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(leased.len());
            for l in leased {
                out.push(self.start_attempt(l, at).await);
            }
            out
        }
    }

    /// Adds `count` one-time subscription credits of `openid` for `template_id` (the user's
    /// consents, docs/pusher.md "Subscription credits"); answers the new balance.
    fn add_credits(
        &self,
        openid: &str,
        template_id: &str,
        count: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (openid, template_id, count);
        async {
            Err(StoreError::Storage(
                "this store keeps no subscription credits".into(),
            ))
        }
    }

    /// The credits of `openid` for `template_id` left.
    fn credits(
        &self,
        openid: &str,
        template_id: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (openid, template_id);
        async {
            Err(StoreError::Storage(
                "this store keeps no subscription credits".into(),
            ))
        }
    }

    /// Takes one credit, atomically; `false` when there is none.
    fn take_credit(
        &self,
        openid: &str,
        template_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (openid, template_id);
        async {
            Err(StoreError::Storage(
                "this store keeps no subscription credits".into(),
            ))
        }
    }

    /// Finishes pending writes and stops; later calls fail with [`StoreError::Closed`].
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Longest `openid` or `template_id` a credit is kept for.
pub const MAX_CREDIT_KEY: usize = 128;

/// The answers of a many-message operation that failed as a whole: `e` for the first, its
/// text for the others.
pub fn each_failed(n: usize, e: StoreError) -> Vec<Result<(), StoreError>> {
    let text = e.to_string();
    let mut out = Vec::with_capacity(n);
    out.push(Err(e));
    out.extend((1..n).map(|_| Err(StoreError::Storage(text.clone().into()))));
    out.truncate(n);
    out
}

/// A dead letter's state when replayed: queued now, with a fresh retry budget and the same
/// `client_msg_id`.
pub fn reset_for_replay(record: &mut MessageRecord, now: Timestamp) {
    record.status = Status::Queued;
    record.attempts = 0;
    record.budget_from = now;
    record.next_attempt_at = Some(now);
    record.finished_at = None;
    record.updated_at = now;
    record.dead_letter = false;
    record.replays += 1;
    record.first_attempt_at = None;
}

pub use crate::clock::millis;

/// [`millis`] rounded up: the schedule key of a time something is due ("not before"), so that a
/// retry due at 12.3004 s is not leased at 12.3001 s. Everything that names a retry's place in
/// the schedule (the stores' writes, the dispatcher's outage pull-in) uses this one.
pub fn due_millis(t: Timestamp) -> u64 {
    let part = t.subsec_nanosecond().rem_euclid(1_000_000) != 0;
    millis(t) + u64::from(part && t.as_millisecond() >= 0)
}

#[cfg(test)]
mod tests;
