//! The Redis store: the same [`Store`](super::Store) contract as the embedded store, kept in Redis so that
//! several pusher replicas share one queue and act as one client towards WeChat.
//!
//! **Why Redis Streams.** A stream with one consumer group per channel gives each replica (one
//! consumer, named from the pod's host name and process id) its own lease list, the pending
//! entries list (PEL). A replica that dies leaves its entries there; after `claimIdle` any other
//! replica takes them over with `XAUTOCLAIM` and sends them again with the same
//! `client_msg_id` (WeChat de-duplicates within 10 minutes). Retries wait in a sorted set by
//! due time and are moved back to the stream when due by the lease script, which runs
//! atomically, so two replicas never move the same retry.
//!
//! **One hash slot per channel.** Every key of a channel starts with `{<keyPrefix>:<channel>}:`,
//! so in a Redis Cluster all of them live on one node and each request is one script there: the
//! accept writes the idempotency keys, the records and the `XADD`s all or nothing, and the
//! pusher answers 202 only after Redis answered the script (and, with
//! `queue.redis.minReplicasAcked`, after `WAIT` saw that many replicas take it).
//!
//! **Final states.** An attempt's outcome is written by one script that stores the record (with
//! the retention as its TTL), the dead-letter set, the events receiver's indexes (only when the
//! channel takes events) and the pending callback, and `XACK`s the entry (named by the pod,
//! which knows the entry it leased). Acknowledged entries stay in the stream until the counts'
//! refresh trims it, once a second (`XTRIM MINID` below the oldest entry a group still needs):
//! one command per message less than an `XDEL` each. A copy of the message that another
//! replica claimed finds the record final and only ends its own lease.
//!
//! **The "attempt started" mark.** Before the first send of a message the dispatcher calls
//! [`Store::start_attempt`](super::Store::start_attempt); one script (`scripts::START_ATTEMPT`)
//! writes the mark `s:<id>` → time into the `lease` hash (a few bytes; the record is not
//! written again), only while the entry is still in this consumer's pending entries list. The
//! next lease of the message returns the mark with the record, and [`Store::get`](super::Store::get) shows it, as
//! the record's `first_attempt_at` (and the `maxAge` budget's start). When a pod dies
//! mid-attempt, the pod that claims its entry leases the record with `first_attempt_at` set and
//! `attempts` 0, so the dispatcher re-sends it within WeChat's 10-minute window and parks it as
//! `unknown_outcome` beyond it, as with the embedded store. The complete script writes the
//! record the dispatcher passes and deletes the mark, so an attempt that did not send (its
//! `first_attempt_at` cleared) voids the start, and a replay clears it
//! ([`super::reset_for_replay`]). A record written whole with `first_attempt_at` by an older
//! version keeps it. When the write fails (Redis away, or the lease was taken over), the
//! message is not sent and this pod stops keeping the lease alive: the entry is claimed again
//! after `claimIdle`.
//!
//! **When Redis is away.** Every request fails fast (a response timeout of a few seconds), the
//! store reports itself unhealthy (readiness goes false, accepts answer 503 without having
//! written anything), leases fail (the dispatcher waits and tries again), and the client
//! reconnects with backoff on its own. Nothing acknowledged is lost as far as Redis keeps it:
//! with `appendfsync always` an acknowledged accept is on disk; with `everysec` (Redis's
//! default) up to a second of acknowledged writes can be lost when the Redis host (not just
//! the process) fails.
//!
//! Key layout and scripts: [`scripts`]. The other parts: `conn.rs` (connecting, retrying on a
//! cluster redirect), `options.rs` (settings and names), `handle.rs` (the store's handle and its
//! connection helpers), `tasks.rs` (the background refresher, heartbeat and lease keeper),
//! `lease.rs` (taking work from the stream), `queue.rs` (the [`Store`](super::Store) operations),
//! `outcome.rs` (the attempt-started records and the outcomes, a script call per batch) and
//! `check.rs` (the consistency check); this file connects and starts the tasks.

mod check;
mod conn;
mod handle;
mod lease;
mod options;
mod outcome;
mod queue;
pub mod scripts;
mod tasks;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use parking_lot::Mutex;
use redis::Script;
use tokio::sync::Notify;

use crate::store::StoreError;
pub(crate) use conn::retrying;
pub use conn::{Conn, check_url, connect, nodes, redact};
pub use handle::{ConsumerPending, HEARTBEAT_TTL, RedisStore};
use handle::{Inner, Scripts, Snapshot};
pub use options::{RedisOptions, consumer_name, key_base};
use scripts::TAKE_CREDIT;
use tasks::{heartbeater, lease_keeper, refresher};

impl RedisStore {
    /// Connects, creates the consumer group if needed and starts the counts refresher.
    /// Errors name the URL without its password.
    pub async fn connect(options: RedisOptions) -> Result<Self, StoreError> {
        let conn = connect(&options.url, options.cluster)
            .await
            .map_err(|m| StoreError::Storage(m.into()))?;
        let base = key_base(&options.key_prefix, &options.channel);
        let stream = format!("{base}q");
        let inner = Arc::new(Inner {
            conn: Mutex::new(conn),
            reconnecting: AtomicBool::new(false),
            timeouts: std::sync::atomic::AtomicU32::new(0),
            base,
            stream,
            scripts: Scripts {
                accept: Script::new(&scripts::accept()),
                lease_read: Script::new(&scripts::lease_read()),
                lease_one: Script::new(&scripts::lease_one()),
                lease_take: Script::new(&scripts::lease_take()),
                claim_dead: Script::new(scripts::CLAIM_DEAD),
                hand_back: Script::new(scripts::HAND_BACK),
                take_credit: Script::new(TAKE_CREDIT),
                complete: Script::new(&scripts::complete()),
                replay: Script::new(scripts::REPLAY),
                recall: Script::new(scripts::RECALL),
                event: Script::new(scripts::EVENT),
                lease_callbacks: Script::new(scripts::LEASE_CALLBACKS),
                finish_callback: Script::new(scripts::FINISH_CALLBACK),
                keep_leases: Script::new(scripts::KEEP_LEASES),
                start_attempt: Script::new(scripts::START_ATTEMPT),
                trim: Script::new(scripts::TRIM),
            },
            options,
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            work: Notify::new(),
            snapshot: Mutex::new(Snapshot::default()),
            last_claim: Mutex::new(None),
            last_dead_check: Mutex::new(None),
            taken_over: Mutex::new(std::collections::VecDeque::new()),
            claim_cursor: Mutex::new("0-0".into()),
            leases: Mutex::new(std::collections::HashMap::new()),
            unrecorded: Mutex::new(std::collections::HashMap::new()),
        });
        let store = Self { inner };
        store.create_group().await?;
        store.heartbeat().await?;
        store.join_group().await;
        // The counts come again every second; a slot on the move must not stop the start.
        if let Err(e) = store.refresh().await {
            tracing::warn!(error = %e, "cannot read the queue's counts yet");
        }
        tracing::info!(
            url = %nodes(&store.inner.options.url).iter().map(|n| redact(n)).collect::<Vec<_>>().join(","),
            stream = %store.inner.stream,
            consumer = %store.inner.options.consumer,
            "redis queue connected"
        );
        tracing::debug!(scripts = %store.inner.scripts.hashes(), "redis store scripts");
        tokio::spawn(refresher(Arc::downgrade(&store.inner)));
        tokio::spawn(lease_keeper(Arc::downgrade(&store.inner)));
        tokio::spawn(heartbeater(Arc::downgrade(&store.inner)));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_keys_share_one_slot() {
        use redis::cluster_routing::Slot;
        let base = key_base("wxpush", "orders");
        assert_eq!(
            Slot::for_key(format!("{base}q")),
            Slot::for_key(format!("{base}m:01ABC"))
        );
        assert_ne!(
            Slot::for_key(format!("{base}q")),
            Slot::for_key(format!("{}q", key_base("wxpush", "other")))
        );
    }
}
