//! The Redis store's handle: its connection (replaced when a cluster client gets stuck), its
//! scripts, what its background tasks refresh, and the helpers every operation uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parking_lot::Mutex;
use redis::{RedisError, Script, Value};
use tokio::sync::Notify;

use super::conn::{self, Conn, connect};
use super::options::RedisOptions;
use crate::message::{MessageId, MessageRecord};
use crate::store::{PendingCallback, QueueCounts, StoreError};

/// How often the counts (and the connection's health) are refreshed.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between looks for new work when nothing arrives (other pods' accepts and due
/// retries are seen within this; this pod's own accepts wake the lease at once).
pub(super) const MAX_POLL: Duration = Duration::from_millis(100);
/// Longest wait between looks at the callbacks.
pub(super) const CALLBACK_POLL: Duration = Duration::from_millis(100);
/// How often a pusher renews its heartbeat key `hb:<consumer>`.
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// The heartbeat key's TTL: this long after a pusher's last renewal (its death, at worst), the
/// next lease of another pusher takes its leases over and, once it holds none, deletes its
/// consumer. Short, so that a killed pod's messages wait seconds, not `claimIdle`.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// Most entries taken over from dead consumers in one look.
pub(super) const TAKE_OVER_AT_MOST: usize = 1000;
/// Timeouts in a row after which a cluster client is replaced.
pub(super) const RECONNECT_AFTER_TIMEOUTS: u32 = 2;
/// How long `WAIT` may wait for replicas.
pub(super) const WAIT_REPLICAS: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) accept: Script,
    pub(super) lease_read: Script,
    pub(super) lease_one: Script,
    pub(super) lease_take: Script,
    pub(super) claim_dead: Script,
    pub(super) hand_back: Script,
    pub(super) take_credit: Script,
    pub(super) complete: Script,
    pub(super) replay: Script,
    pub(super) recall: Script,
    pub(super) event: Script,
    pub(super) lease_callbacks: Script,
    pub(super) finish_callback: Script,
    pub(super) keep_leases: Script,
    pub(super) start_attempt: Script,
    pub(super) trim: Script,
}

impl Scripts {
    /// `name=sha1 ...` of every script: logged at debug level when the store connects, so
    /// that `bench/perf/redis.sh` (`SCRIPTS=1`) can name the scripts of Redis's slow log.
    pub(super) fn hashes(&self) -> String {
        [
            ("accept", &self.accept),
            ("lease_read", &self.lease_read),
            ("lease_one", &self.lease_one),
            ("lease_take", &self.lease_take),
            ("claim_dead", &self.claim_dead),
            ("hand_back", &self.hand_back),
            ("take_credit", &self.take_credit),
            ("complete", &self.complete),
            ("replay", &self.replay),
            ("recall", &self.recall),
            ("event", &self.event),
            ("lease_callbacks", &self.lease_callbacks),
            ("finish_callback", &self.finish_callback),
            ("keep_leases", &self.keep_leases),
            ("start_attempt", &self.start_attempt),
            ("trim", &self.trim),
        ]
        .iter()
        .map(|(name, script)| format!("{name}={}", script.get_hash()))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// A consumer's pending entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerPending {
    /// The consumer name.
    pub consumer: String,
    /// Entries it holds.
    pub pending: u64,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Snapshot {
    pub(super) counts: QueueCounts,
    pub(super) consumers: Vec<ConsumerPending>,
}

#[derive(Debug)]
pub(super) struct Inner {
    /// Replaced when a cluster connection stops answering (see [`RedisStore::fail`]).
    pub(super) conn: Mutex<Conn>,
    /// Set while a replacement connection is being made.
    pub(super) reconnecting: AtomicBool,
    /// Timeouts in a row, of a cluster connection.
    pub(super) timeouts: std::sync::atomic::AtomicU32,
    pub(super) options: RedisOptions,
    pub(super) base: String,
    pub(super) stream: String,
    pub(super) scripts: Scripts,
    pub(super) healthy: AtomicBool,
    pub(super) closed: AtomicBool,
    pub(super) work: Notify,
    pub(super) snapshot: Mutex<Snapshot>,
    pub(super) last_claim: Mutex<Option<Instant>>,
    /// When this pusher last looked for consumers whose heartbeat expired.
    pub(super) last_dead_check: Mutex<Option<Instant>>,
    /// Entries taken over from dead consumers that the dispatcher has not asked for yet
    /// (entry id, message id): served before new work. Kept alive like leases meanwhile.
    pub(super) taken_over: Mutex<std::collections::VecDeque<(String, String)>>,
    /// Where the next `XAUTOCLAIM` scan starts.
    pub(super) claim_cursor: Mutex<String>,
    /// This process's leases: message id → stream entry id.
    pub(super) leases: Mutex<std::collections::HashMap<String, String>>,
    /// Outcomes whose write failed (Redis away), by message id. When this pod claims the entry
    /// again, the lease carries the outcome, so that it is recorded instead of sent again. A
    /// copy that another pod claims is sent again under the same `client_msg_id`.
    pub(super) unrecorded: Mutex<std::collections::HashMap<MessageId, (Instant, MessageRecord)>>,
}

/// How long an unrecorded outcome is kept for this pod to claim its entry again; older ones
/// (another pod took the entry) are dropped.
pub(super) const UNRECORDED_KEPT: Duration = Duration::from_secs(600);

/// The Redis store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

pub(super) fn decode(bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::storage(format!("decode record: {e}"), e))
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::storage(format!("encode: {e}"), e))
}

/// The callback's id, due ms and JSON for a script, or empty ones when there is none.
pub(super) fn cb_args(cb: Option<&PendingCallback>) -> Result<(String, u64, String), StoreError> {
    Ok(match cb {
        Some(cb) => (
            ulid::Ulid(cb.key.id).to_string(),
            cb.key.due_ms,
            encode(cb)?,
        ),
        None => (String::new(), 0, String::new()),
    })
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                Value::SimpleString(s) => s,
                Value::Int(n) => n.to_string(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The consumer names of an `XINFO CONSUMERS` answer (RESP2 flat arrays or RESP3 maps).
pub(super) fn consumer_names(v: Value) -> Vec<String> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(kv) => kv
                .chunks_exact(2)
                .find(|p| text(&p[0]).as_deref() == Some("name"))
                .and_then(|p| text(&p[1])),
            Value::Map(kv) => kv
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some("name"))
                .and_then(|(_, v)| text(v)),
            _ => None,
        })
        .collect()
}

impl RedisStore {
    pub(super) fn conn(&self) -> Conn {
        self.inner.conn.lock().clone()
    }

    /// The full name of key `name` of this channel.
    pub(super) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.base)
    }

    /// Runs `script` with every key it touches in `keys`, retrying the whole call on a cluster
    /// redirect ([`conn::retrying`]). The pods' coordination over Redis (`coord/redis.rs`) runs
    /// its scripts through this too.
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, RedisError> {
        conn::retrying(|| {
            let mut conn = self.conn();
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            async move { inv.invoke_async::<T>(&mut conn).await }
        })
        .await
    }

    pub(super) fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Turns a Redis error into a store error, marking the store unhealthy when Redis cannot
    /// be reached.
    pub(super) fn fail(&self, what: &str, e: &RedisError) -> StoreError {
        if is_connection_error(e) && self.inner.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %conn::clean(e), "redis unreachable");
        }
        self.reconnect_if_stuck(e);
        StoreError::storage(format!("redis {what}: {}", conn::clean(e)), e.clone())
    }

    /// A cluster client can stay stuck on a stale view of the cluster after a node restarted
    /// or a slot moved, every request timing out. After a few timeouts in a row, a new client
    /// is made in the background (from the seeds, with a fresh slot map) and replaces it.
    pub(crate) fn reconnect_if_stuck(&self, e: &RedisError) {
        if !matches!(*self.inner.conn.lock(), Conn::Cluster(_)) {
            return;
        }
        if !e.is_timeout() {
            self.inner.timeouts.store(0, Ordering::Relaxed);
            return;
        }
        if self.inner.timeouts.fetch_add(1, Ordering::Relaxed) + 1 < RECONNECT_AFTER_TIMEOUTS
            || self.inner.reconnecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let Some(i) = inner.upgrade() else { return };
            match connect(&i.options.url, i.options.cluster).await {
                Ok(c) => {
                    *i.conn.lock() = c;
                    i.timeouts.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        "the redis cluster client kept timing out; replaced it with a new one"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot make a new redis cluster client"),
            }
            i.reconnecting.store(false, Ordering::Release);
        });
    }

    pub(super) fn ok<T>(&self, v: T) -> T {
        self.inner.timeouts.store(0, Ordering::Relaxed);
        if !self.inner.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("redis reachable again");
        }
        v
    }

    /// The key base of this channel.
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The connection (shared by the token cache and the rate limiter of this channel).
    pub fn connection(&self) -> Conn {
        self.conn()
    }

    /// Pending entries per consumer, as of the last refresh.
    pub fn consumers(&self) -> Vec<ConsumerPending> {
        self.inner.snapshot.lock().consumers.clone()
    }

    /// Waits until `minReplicasAcked` replicas have this connection's writes.
    pub(super) async fn wait_replicas(&self) -> Result<(), StoreError> {
        let n = self.inner.options.min_replicas_acked;
        if n == 0 {
            return Ok(());
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(ms(WAIT_REPLICAS));
        let acked: i64 = match self.conn() {
            Conn::Single(mut c) => cmd
                .query_async(&mut c)
                .await
                .map_err(|e| self.fail("WAIT", &e))?,
            Conn::Cluster(mut c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(&self.inner.stream, SlotAddr::Master),
                ));
                let v = c
                    .route_command(cmd, route)
                    .await
                    .map_err(|e| self.fail("WAIT", &e))?;
                redis::from_redis_value(v).map_err(|e| self.fail("WAIT", &e.into()))?
            }
        };
        if acked < i64::from(n) {
            return Err(StoreError::Storage(
                format!("only {acked} of {n} replicas acknowledged the write in {WAIT_REPLICAS:?}")
                    .into(),
            ));
        }
        Ok(())
    }

    /// A pending callback about `record`, when it has somewhere to go.
    pub(super) fn callback_for(
        &self,
        record: &MessageRecord,
        now: Timestamp,
    ) -> Option<PendingCallback> {
        (self.inner.options.default_callback || record.message.callback_url.is_some())
            .then(|| PendingCallback::new(record, now))
    }
}
