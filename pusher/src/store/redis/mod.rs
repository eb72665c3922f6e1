//! The Redis store: the same [`Store`] contract as the embedded store, kept in Redis so that
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
//! the retention as its TTL), the dead-letter set, the msgid index of the events receiver and
//! the pending callback, and only then `XACK`s and `XDEL`s the entry. A copy of the message
//! that another replica claimed finds the record final and only ends its own lease.
//!
//! **The "attempt started" record.** Before the first send of a message the dispatcher calls
//! [`Store::start_attempt`]; one script (`scripts::start_attempt`) writes the record with
//! `first_attempt_at` (and the `maxAge` budget's start) into `m:<id>`, only while the entry is
//! still in this consumer's pending entries list and the message is pending. When a pod dies
//! mid-attempt, the pod that claims its entry leases the record with `first_attempt_at` set and
//! `attempts` 0, so the dispatcher re-sends it within WeChat's 10-minute window and parks it as
//! `unknown_outcome` beyond it, as with the embedded store. The complete script writes the
//! record the dispatcher passes, so an attempt that did not send (its `first_attempt_at`
//! cleared) voids the record there, and a replay clears it ([`super::reset_for_replay`]). When
//! the write fails (Redis away, or the lease was taken over), the message is not sent and this
//! pod stops keeping the lease alive: the entry is claimed again after `claimIdle`.
//!
//! **When Redis is away.** Every request fails fast (a response timeout of a few seconds), the
//! store reports itself unhealthy (readiness goes false, accepts answer 503 without having
//! written anything), leases fail (the dispatcher waits and tries again), and the client
//! reconnects with backoff on its own. Nothing acknowledged is lost as far as Redis keeps it:
//! with `appendfsync always` an acknowledged accept is on disk; with `everysec` (Redis's
//! default) up to a second of acknowledged writes can be lost when the Redis host (not just
//! the process) fails.
//!
//! Key layout and scripts: [`scripts`].

mod check;
mod conn;
pub mod scripts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parking_lot::Mutex;
use redis::streams::StreamPendingReply;
use redis::{RedisError, Script, Value};
use tokio::sync::Notify;

pub(crate) use conn::retrying;
pub use conn::{Conn, check_url, connect, nodes, redact};

use super::{
    AcceptItem, Accepted, CallbackKey, DeadLetterPage, DeliveryEvent, EventOutcome, Leased,
    MatchedBy, PendingCallback, QueueCounts, Store, StoreError, apply_event, millis,
    reset_for_replay, wants_callback,
};
use crate::message::{MessageId, MessageRecord, Status};

/// How often the counts (and the connection's health) are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between looks for new work when nothing arrives (other pods' accepts and due
/// retries are seen within this; this pod's own accepts wake the lease at once).
const MAX_POLL: Duration = Duration::from_millis(100);
/// Longest wait between looks at the callbacks.
const CALLBACK_POLL: Duration = Duration::from_millis(100);
/// How often a pusher renews its heartbeat key `hb:<consumer>`.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// The heartbeat key's TTL: this long after a pusher's last renewal (its death, at worst), the
/// next lease of another pusher takes its leases over and, once it holds none, deletes its
/// consumer. Short, so that a killed pod's messages wait seconds, not `claimIdle`.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// Most entries taken over from dead consumers in one look.
const TAKE_OVER_AT_MOST: usize = 1000;
/// Timeouts in a row after which a cluster client is replaced.
const RECONNECT_AFTER_TIMEOUTS: u32 = 2;
/// How long `WAIT` may wait for replicas.
const WAIT_REPLICAS: Duration = Duration::from_secs(2);

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URL, with user and password when needed; several nodes
    /// separated by commas for a cluster.
    pub url: String,
    /// Use the cluster client (also when several nodes are given).
    pub cluster: bool,
    /// `queue.redis.keyPrefix`.
    pub key_prefix: String,
    /// The channel.
    pub channel: String,
    /// `queue.redis.consumerGroup`.
    pub consumer_group: String,
    /// This process's consumer name (see [`consumer_name`]).
    pub consumer: String,
    /// `queue.redis.claimIdle`: a lease idle this long is taken over.
    pub claim_idle: Duration,
    /// Pending messages at most.
    pub max_messages: u64,
    /// How long finished messages (and dead letters) are kept.
    pub retention: Duration,
    /// Whether the channel has a default callback URL.
    pub default_callback: bool,
    /// `queue.redis.minReplicasAcked`: replicas that must have an accept before it is answered.
    pub min_replicas_acked: u32,
}

/// The consumer name of this process: the pod's host name and the process id (so two
/// processes on one host, or a restarted pod, never share a lease list).
pub fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "pusher".into());
    format!("{host}-{}", std::process::id())
}

/// The consumer names of an `XINFO CONSUMERS` answer (RESP2 flat arrays or RESP3 maps).
fn consumer_names(v: Value) -> Vec<String> {
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

/// The key base of a channel: `{<prefix>:<channel>}:`.
pub fn key_base(prefix: &str, channel: &str) -> String {
    format!("{{{prefix}:{channel}}}:")
}

#[derive(Debug)]
struct Scripts {
    accept: Script,
    lease_read: Script,
    lease_take: Script,
    claim_dead: Script,
    hand_back: Script,
    take_credit: Script,
    complete: Script,
    replay: Script,
    event: Script,
    lease_callbacks: Script,
    finish_callback: Script,
    keep_leases: Script,
    start_attempt: Script,
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
struct Snapshot {
    counts: QueueCounts,
    consumers: Vec<ConsumerPending>,
}

#[derive(Debug)]
struct Inner {
    /// Replaced when a cluster connection stops answering (see [`RedisStore::fail`]).
    conn: Mutex<Conn>,
    /// Set while a replacement connection is being made.
    reconnecting: AtomicBool,
    /// Timeouts in a row, of a cluster connection.
    timeouts: std::sync::atomic::AtomicU32,
    options: RedisOptions,
    base: String,
    stream: String,
    scripts: Scripts,
    healthy: AtomicBool,
    closed: AtomicBool,
    work: Notify,
    snapshot: Mutex<Snapshot>,
    last_claim: Mutex<Option<Instant>>,
    /// When this pusher last looked for consumers whose heartbeat expired.
    last_dead_check: Mutex<Option<Instant>>,
    /// Entries taken over from dead consumers that the dispatcher has not asked for yet
    /// (entry id, message id): served before new work. Kept alive like leases meanwhile.
    taken_over: Mutex<std::collections::VecDeque<(String, String)>>,
    /// Where the next `XAUTOCLAIM` scan starts.
    claim_cursor: Mutex<String>,
    /// This process's leases: message id → stream entry id.
    leases: Mutex<std::collections::HashMap<String, String>>,
    /// Outcomes whose write failed (Redis away), by message id. When this pod claims the entry
    /// again, the lease carries the outcome, so that it is recorded instead of sent again. A
    /// copy that another pod claims is sent again under the same `client_msg_id`.
    unrecorded: Mutex<std::collections::HashMap<MessageId, (Instant, MessageRecord)>>,
}

/// How long an unrecorded outcome is kept for this pod to claim its entry again; older ones
/// (another pod took the entry) are dropped.
const UNRECORDED_KEPT: Duration = Duration::from_secs(600);

/// The Redis store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn decode(bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::storage(format!("decode record: {e}"), e))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::storage(format!("encode: {e}"), e))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn strings(v: Value) -> Vec<String> {
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
                lease_read: Script::new(scripts::LEASE_READ),
                lease_take: Script::new(&scripts::lease_take()),
                claim_dead: Script::new(scripts::CLAIM_DEAD),
                hand_back: Script::new(scripts::HAND_BACK),
                take_credit: Script::new(TAKE_CREDIT),
                complete: Script::new(&scripts::complete()),
                replay: Script::new(scripts::REPLAY),
                event: Script::new(scripts::EVENT),
                lease_callbacks: Script::new(scripts::LEASE_CALLBACKS),
                finish_callback: Script::new(scripts::FINISH_CALLBACK),
                keep_leases: Script::new(scripts::KEEP_LEASES),
                start_attempt: Script::new(&scripts::start_attempt()),
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
        tokio::spawn(refresher(Arc::downgrade(&store.inner)));
        tokio::spawn(lease_keeper(Arc::downgrade(&store.inner)));
        tokio::spawn(heartbeater(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    fn conn(&self) -> Conn {
        self.inner.conn.lock().clone()
    }

    /// The full name of key `name` of this channel.
    fn key(&self, name: &str) -> String {
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

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Turns a Redis error into a store error, marking the store unhealthy when Redis cannot
    /// be reached.
    fn fail(&self, what: &str, e: &RedisError) -> StoreError {
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

    fn ok<T>(&self, v: T) -> T {
        self.inner.timeouts.store(0, Ordering::Relaxed);
        if !self.inner.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("redis reachable again");
        }
        v
    }

    async fn create_group(&self) -> Result<(), StoreError> {
        let r: Result<Value, _> = conn::retrying(|| {
            let mut conn = self.conn();
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&self.inner.stream)
                .arg(&self.inner.options.consumer_group)
                .arg("0")
                .arg("MKSTREAM");
            async move { cmd.query_async(&mut conn).await }
        })
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.fail("XGROUP CREATE", &e)),
        }
    }

    /// Reads the counts and the consumers' pending entries from Redis, and caches them for
    /// [`Store::counts`].
    pub async fn refresh(&self) -> Result<QueueCounts, StoreError> {
        let b = &self.inner.base;
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.inner.stream)
            .cmd("ZCARD")
            .arg(format!("{b}d"))
            .cmd("ZCARD")
            .arg(format!("{b}dead"));
        let (xlen, delayed, dead): (u64, u64, u64) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("counts", &e))?;
        let pending: Result<StreamPendingReply, _> = redis::cmd("XPENDING")
            .arg(&self.inner.stream)
            .arg(&self.inner.options.consumer_group)
            .query_async(&mut self.conn())
            .await;
        let (inflight, consumers) = match pending {
            Ok(StreamPendingReply::Data(d)) => (
                d.count as u64,
                d.consumers
                    .into_iter()
                    .map(|c| ConsumerPending {
                        consumer: c.name,
                        pending: c.pending as u64,
                    })
                    .collect(),
            ),
            Ok(_) => (0, Vec::new()),
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.create_group().await?;
                (0, Vec::new())
            }
            Err(e) => return Err(self.fail("XPENDING", &e)),
        };
        let ready = xlen.saturating_sub(inflight);
        let oldest_ready_ms = if ready > 0 {
            self.oldest_unread().await
        } else {
            None
        };
        let counts = QueueCounts {
            ready,
            delayed,
            inflight,
            dead,
            oldest_ready_ms,
        };
        *self.inner.snapshot.lock() = Snapshot { counts, consumers };
        Ok(self.ok(counts))
    }

    /// When the oldest stream entry the group has not read yet was added (unix ms, from its
    /// id): the oldest ready message. `None` when Redis cannot say (an error is only logged:
    /// the gauge is a diagnostic, not the queue).
    async fn oldest_unread(&self) -> Option<u64> {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.inner.stream)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| tracing::debug!(error = %conn::clean(&e), "XINFO GROUPS"))
            .ok()?;
        let last = groups
            .groups
            .into_iter()
            .find(|g| g.name == self.inner.options.consumer_group)?
            .last_delivered_id;
        let next: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.inner.stream)
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| tracing::debug!(error = %conn::clean(&e), "XRANGE"))
            .ok()?;
        let id = next.ids.first()?.id.clone();
        id.split('-').next()?.parse().ok()
    }

    /// Pending entries per consumer, as of the last refresh.
    pub fn consumers(&self) -> Vec<ConsumerPending> {
        self.inner.snapshot.lock().consumers.clone()
    }

    /// The key base of this channel.
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The connection (shared by the token cache and the rate limiter of this channel).
    pub fn connection(&self) -> Conn {
        self.conn()
    }

    /// Waits until `minReplicasAcked` replicas have this connection's writes.
    async fn wait_replicas(&self) -> Result<(), StoreError> {
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

    async fn lease_once(&self, max: usize) -> Result<Vec<Leased>, StoreError> {
        let now = Instant::now();
        let idle = self.inner.options.claim_idle;
        let claim = {
            let mut last = self.inner.last_claim.lock();
            let every = (idle / 4).max(Duration::from_millis(50));
            if last.is_none_or(|t| now.duration_since(t) >= every) {
                *last = Some(now);
                ms(idle).max(1)
            } else {
                0
            }
        };
        let check_dead = {
            let mut last = self.inner.last_dead_check.lock();
            let due = last.is_none_or(|t| now.duration_since(t) >= HEARTBEAT_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if check_dead {
            // All of a dead consumer's entries at once, whatever room the dispatcher has now:
            // the rest wait here (kept alive), ahead of new work.
            let got = self.claim_dead(TAKE_OVER_AT_MOST).await?;
            let mut buffered = self.inner.taken_over.lock();
            let mut leases = self.inner.leases.lock();
            for pair in got.chunks_exact(2) {
                leases.insert(pair[1].clone(), pair[0].clone());
                buffered.push_back((pair[0].clone(), pair[1].clone()));
            }
        }
        let mut entries = Vec::new();
        {
            let mut buffered = self.inner.taken_over.lock();
            while entries.len() / 2 < max {
                let Some((eid, id)) = buffered.pop_front() else {
                    break;
                };
                entries.push(eid);
                entries.push(id);
            }
        }
        let room = max.saturating_sub(entries.len() / 2);
        if room > 0 {
            entries.extend(self.lease_read(room, claim).await?);
        }
        let flat = self.take(&entries).await?;
        let mut leased = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let record = decode(pair[1].as_bytes())?;
            self.inner
                .leases
                .lock()
                .insert(record.id.to_string(), pair[0].clone());
            let slot = pair[0]
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let unrecorded = self
                .inner
                .unrecorded
                .lock()
                .remove(&record.id)
                .map(|(_, r)| Box::new(r));
            leased.push(Leased {
                record,
                slot,
                unrecorded,
            });
        }
        Ok(self.ok(leased))
    }

    /// The first half of a lease ([`scripts::LEASE_READ`]): up to `count` entries, now in this
    /// consumer's pending list, as (entry id, message id, ...).
    async fn lease_read(&self, count: usize, claim: u64) -> Result<Vec<String>, StoreError> {
        let o = &self.inner.options;
        let cursor = self.inner.claim_cursor.lock().clone();
        let keys = [
            self.inner.stream.clone(),
            self.key("d"),
            self.key("deadt"),
            self.key("dead"),
        ];
        let args = [
            o.consumer_group.clone(),
            o.consumer.clone(),
            count.to_string(),
            millis(Timestamp::now()).to_string(),
            claim.to_string(),
            ms(o.retention).to_string(),
            cursor,
        ];
        let out = match self
            .script::<Value>(&self.inner.scripts.lease_read, &keys, &args)
            .await
        {
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.create_group().await?;
                self.script(&self.inner.scripts.lease_read, &keys, &args)
                    .await
            }
            r => r,
        }
        .map_err(|e| self.fail("lease", &e))?;
        let mut flat = strings(out).into_iter();
        if let Some(next) = flat.next() {
            *self.inner.claim_cursor.lock() = next;
        }
        Ok(flat.collect())
    }

    /// The second half of a lease: `entries` (entry id, message id, ...) are in this consumer's
    /// pending list; reads their records and records the leases ([`scripts::lease_take`]).
    async fn take(&self, entries: &[String]) -> Result<Vec<String>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = vec![self.inner.stream.clone(), self.key("lease")];
        let mut args = vec![self.inner.options.consumer_group.clone()];
        for pair in entries.chunks_exact(2) {
            keys.push(self.key(&format!("m:{}", pair[1])));
            args.push(pair[0].clone());
            args.push(pair[1].clone());
        }
        let out: Value = self
            .script(&self.inner.scripts.lease_take, &keys, &args)
            .await
            .map_err(|e| self.fail("lease", &e))?;
        Ok(strings(out))
    }

    /// Takes over the leases of consumers whose heartbeat expired (a pod that died), at once
    /// rather than after `claimIdle`, and deletes such consumers once they hold nothing.
    /// Returns (entry id, message id, ...) now pending for this consumer.
    async fn claim_dead(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let o = &self.inner.options;
        let infos: Value = match conn::retrying(|| {
            let mut conn = self.conn();
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("CONSUMERS")
                .arg(&self.inner.stream)
                .arg(&o.consumer_group);
            async move { cmd.query_async::<Value>(&mut conn).await }
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %conn::clean(&e), "cannot list the group's consumers");
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for name in consumer_names(infos) {
            if name == o.consumer || out.len() / 2 >= max {
                continue;
            }
            let keys = [
                self.inner.stream.clone(),
                self.key("lease"),
                self.key(&format!("hb:{name}")),
            ];
            let args = [
                o.consumer_group.clone(),
                o.consumer.clone(),
                name.clone(),
                max.saturating_sub(out.len() / 2).max(1).to_string(),
            ];
            let answer: Value = self
                .script(&self.inner.scripts.claim_dead, &keys, &args)
                .await
                .map_err(|e| self.fail("claim", &e))?;
            let mut answer = strings(answer).into_iter();
            match answer.next().as_deref() {
                Some("claimed") => {
                    let got: Vec<String> = answer.collect();
                    tracing::info!(consumer = %name, entries = got.len() / 2, "took over the leases of a pusher whose heartbeat expired");
                    out.extend(got);
                }
                Some("deleted") => {
                    tracing::info!(consumer = %name, "removed a dead pusher's consumer from the group");
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Writes this pusher's heartbeat key (see [`HEARTBEAT_TTL`]). A key of its own, so that a
    /// slot on the move (multi-key operations answered TRYAGAIN) never stops the heartbeat.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let key = self.key(&format!("hb:{}", self.inner.options.consumer));
        conn::retrying(|| {
            let mut conn = self.conn();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg("1").arg("PX").arg(ms(HEARTBEAT_TTL));
            async move { cmd.query_async::<()>(&mut conn).await }
        })
        .await
        .map_err(|e| self.fail("heartbeat", &e))
    }

    /// Makes sure this pusher's consumer is in the group (`XGROUP CREATECONSUMER`, after each
    /// heartbeat). Redis creates a consumer on `XREADGROUP` only when there is something to
    /// read, so an idle pusher would otherwise be missing from the group, and one whose
    /// consumer was deleted while its heartbeat had lapsed (a stall) comes back. Best effort:
    /// the next heartbeat tries again.
    async fn join_group(&self) {
        let o = &self.inner.options;
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATECONSUMER")
            .arg(&self.inner.stream)
            .arg(&o.consumer_group)
            .arg(&o.consumer);
        let mut conn = self.conn();
        if let Err(e) = cmd.query_async::<i64>(&mut conn).await {
            tracing::debug!(error = %conn::clean(&e), "cannot add this pusher's consumer to the group");
        }
    }

    /// Looks for the message an event is about: through the msgid index, else (when
    /// `fallback`) the most recent delivered message to the openid with no event yet.
    async fn find_for_event(
        &self,
        event: &DeliveryEvent,
        fallback: bool,
    ) -> Result<Option<(String, MatchedBy, String)>, StoreError> {
        let b = &self.inner.base;
        let mut conn = self.conn();
        if event.msgid != 0 {
            let id: Option<String> = redis::cmd("GET")
                .arg(format!("{b}x:{}", event.msgid))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("GET", &e))?;
            if let Some(id) = id {
                let rec: Option<String> = redis::cmd("GET")
                    .arg(format!("{b}m:{id}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.fail("GET", &e))?;
                if let Some(rec) = rec {
                    return Ok(Some((id, MatchedBy::Msgid, rec)));
                }
            }
        }
        if !fallback {
            return Ok(None);
        }
        let akey = format!("{b}a:{}", event.openid);
        for _ in 0..8 {
            let last: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&akey)
                .arg(0)
                .arg(0)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("ZREVRANGE", &e))?;
            let Some(id) = last.into_iter().next() else {
                return Ok(None);
            };
            let rec: Option<String> = redis::cmd("GET")
                .arg(format!("{b}m:{id}"))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("GET", &e))?;
            match rec {
                Some(rec) => return Ok(Some((id, MatchedBy::OpenidFallback, rec))),
                None => {
                    // Gone with the retention: forget it and look at the next one.
                    let _: Result<i64, _> = redis::cmd("ZREM")
                        .arg(&akey)
                        .arg(&id)
                        .query_async(&mut conn)
                        .await;
                }
            }
        }
        Ok(None)
    }

    /// A pending callback about `record`, when it has somewhere to go.
    fn callback_for(&self, record: &MessageRecord, now: Timestamp) -> Option<PendingCallback> {
        (self.inner.options.default_callback || record.message.callback_url.is_some())
            .then(|| PendingCallback::new(record, now))
    }
}

/// Refreshes the counts and the health every [`REFRESH_EVERY`] while the store is alive.
async fn refresher(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let store = RedisStore { inner };
        if let Err(e) = store.refresh().await {
            tracing::debug!(error = %e, "redis counts refresh failed");
        }
    }
}

/// Renews this pusher's heartbeat every [`HEARTBEAT_EVERY`] while the store is alive.
async fn heartbeater(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let store = RedisStore { inner };
        match store.heartbeat().await {
            Ok(()) => store.join_group().await,
            Err(e) => tracing::debug!(error = %e, "cannot renew the heartbeat"),
        }
    }
}

/// Keeps this process's leases from looking idle (see [`scripts::KEEP_LEASES`]), every third
/// of `claimIdle`, while the store is alive.
async fn lease_keeper(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => (i.options.claim_idle / 3).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let eids: Vec<String> = inner.leases.lock().values().cloned().collect();
        for chunk in eids.chunks(500) {
            let mut inv = inner.scripts.keep_leases.key(&inner.stream);
            inv.arg(&inner.options.consumer_group)
                .arg(&inner.options.consumer);
            for eid in chunk {
                inv.arg(eid);
            }
            let mut conn = inner.conn.lock().clone();
            if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
                tracing::debug!(error = %conn::clean(&e), "cannot keep leases alive");
                break;
            }
        }
    }
}

fn cb_args(cb: Option<&PendingCallback>) -> Result<(String, u64, String), StoreError> {
    Ok(match cb {
        Some(cb) => (
            ulid::Ulid(cb.key.id).to_string(),
            cb.key.due_ms,
            encode(cb)?,
        ),
        None => (String::new(), 0, String::new()),
    })
}

/// Takes one credit if there is one. KEYS: the credits hash. ARGV: the field. Returns 1 or 0.
const TAKE_CREDIT: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n > 0 then
  if n == 1 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HINCRBY', KEYS[1], ARGV[1], -1) end
  return 1
end
return 0
";

/// The field of (`openid`, `template_id`) in the `credits` hash (a newline cannot occur in
/// either: both refuse control characters).
fn credit_field(openid: &str, template_id: &str) -> String {
    format!("{openid}\n{template_id}")
}

impl Store for RedisStore {
    async fn add_credits(
        &self,
        openid: &str,
        template_id: &str,
        count: u64,
    ) -> Result<u64, StoreError> {
        let cmd = redis::cmd("HINCRBY")
            .arg(self.key("credits"))
            .arg(credit_field(openid, template_id))
            .arg(count)
            .clone();
        let n: u64 = conn::retrying(|| {
            let mut c = self.conn();
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
        .map_err(|e| self.fail("add_credits", &e))?;
        Ok(self.ok(n))
    }

    async fn credits(&self, openid: &str, template_id: &str) -> Result<u64, StoreError> {
        let n: Option<u64> = redis::cmd("HGET")
            .arg(self.key("credits"))
            .arg(credit_field(openid, template_id))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("credits", &e))?;
        Ok(self.ok(n.unwrap_or(0)))
    }

    async fn take_credit(&self, openid: &str, template_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .script(
                &self.inner.scripts.take_credit,
                &[self.key("credits")],
                &[credit_field(openid, template_id)],
            )
            .await
            .map_err(|e| self.fail("take_credit", &e))?;
        Ok(self.ok(n == 1))
    }

    async fn accept(&self, items: Vec<AcceptItem>) -> Result<Vec<Accepted>, StoreError> {
        self.check_open()?;
        let now = Timestamp::now();
        let mut keys = vec![self.inner.stream.clone(), self.key("n")];
        let mut args = vec![
            self.inner.options.max_messages.to_string(),
            items.len().to_string(),
        ];
        for item in items {
            let key = item.idempotency_key.clone().unwrap_or_default();
            let mut record =
                MessageRecord::new(MessageId::new(), item.message, item.idempotency_key, now);
            if record.idempotency_key.is_some() {
                record.request_digest = item.request_digest;
            }
            keys.push(self.key(&format!("i:{key}")));
            keys.push(self.key(&format!("m:{}", record.id)));
            args.push(key);
            args.push(record.request_digest.clone().unwrap_or_default());
            args.push(record.id.to_string());
            args.push(encode(&record)?);
        }
        // A key seen before: the script asks for the first message's record to be declared
        // too (it cannot know that id in advance), and runs again with it.
        let mut flat;
        let mut rounds = 0;
        loop {
            let out: Value = self
                .script(&self.inner.scripts.accept, &keys, &args)
                .await
                .map_err(|e| self.fail("accept", &e))?;
            flat = strings(out);
            if flat.first().map(String::as_str) != Some("declare") || rounds > 2 {
                break;
            }
            rounds += 1;
            for first in &flat[1..] {
                keys.push(self.key(&format!("m:{first}")));
            }
        }
        match flat.first().map(String::as_str) {
            Some("full") => {
                let pending = flat.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
                return Err(StoreError::Full {
                    pending,
                    max: self.inner.options.max_messages,
                    retry_after: Duration::from_secs(1),
                });
            }
            Some("reused") => {
                return Err(StoreError::KeyReused(
                    flat.get(1).cloned().unwrap_or_default(),
                ));
            }
            Some("ok") => {}
            _ => {
                return Err(StoreError::Storage(
                    "redis accept: unexpected answer".into(),
                ));
            }
        }
        let mut results = Vec::with_capacity(flat.len() / 3);
        let mut fresh = false;
        for t in flat[1..].chunks_exact(3) {
            let id: MessageId = t[0].parse().map_err(|_| {
                StoreError::Storage(format!("redis accept: bad id {}", t[0]).into())
            })?;
            let status: Status = serde_json::from_value(serde_json::Value::String(t[1].clone()))
                .unwrap_or(Status::Queued);
            let duplicate = t[2] == "1";
            fresh |= !duplicate;
            results.push(Accepted {
                id,
                status,
                duplicate,
            });
        }
        self.wait_replicas().await?;
        if fresh {
            self.inner.work.notify_waiters();
        }
        Ok(self.ok(results))
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Leased>, StoreError> {
        self.check_open()?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut poll = Duration::from_millis(5);
        loop {
            let notified = self.inner.work.notified();
            let got = self.lease_once(max).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.min(now + poll)) => {}
            }
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    async fn complete(&self, _slot: u64, record: MessageRecord) -> Result<(), StoreError> {
        self.check_open()?;
        let now = Timestamp::now();
        let o = &self.inner.options;
        let is_final = record.status.is_final();
        let cb = if is_final && wants_callback(record.status) {
            self.callback_for(&record, now)
        } else {
            None
        };
        let (cb_id, cb_due, cb_json) = cb_args(cb.as_ref())?;
        let finished = millis(record.finished_at.unwrap_or(now));
        let due = crate::store::due_millis(record.next_attempt_at.unwrap_or(now));
        let msgid = record
            .msgid
            .filter(|&m| m != 0)
            .map(|m| m.to_string())
            .unwrap_or_default();
        let idem = record.idempotency_key.clone().unwrap_or_default();
        let keys = [
            self.inner.stream.clone(),
            self.key("lease"),
            self.key(&format!("m:{}", record.id)),
            self.key("n"),
            self.key(&format!("i:{idem}")),
            self.key("dead"),
            self.key("deadt"),
            self.key(&format!("a:{}", record.message.touser)),
            self.key(&format!("x:{msgid}")),
            self.key("cb"),
            self.key("cbd"),
            self.key("d"),
        ];
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let args = [
            o.consumer_group.clone(),
            record.id.to_string(),
            encode(&record)?,
            flag(is_final),
            due.to_string(),
            flag(record.dead_letter),
            flag(record.status == Status::Delivered),
            msgid,
            idem,
            ms(o.retention).max(1).to_string(),
            cb_id,
            cb_due.to_string(),
            cb_json,
            millis(now).to_string(),
            finished.to_string(),
        ];
        let done: Result<i64, _> = self
            .script(&self.inner.scripts.complete, &keys, &args)
            .await;
        // Kept alive no longer either way: after a failed write the entry goes idle and is
        // claimed again after claimIdle (by this pod or another).
        self.inner.leases.lock().remove(&record.id.to_string());
        if let Err(e) = done {
            let mut kept = self.inner.unrecorded.lock();
            let now = Instant::now();
            kept.retain(|_, (at, _)| now.duration_since(*at) < UNRECORDED_KEPT);
            kept.insert(record.id, (now, record));
            return Err(self.fail("complete", &e));
        }
        if !is_final && due <= millis(now) {
            self.inner.work.notify_waiters();
        }
        self.ok(());
        Ok(())
    }

    async fn start_attempt(&self, leased: &Leased, at: Timestamp) -> Result<(), StoreError> {
        self.check_open()?;
        let id = leased.record.id;
        let key = id.to_string();
        let Some(eid) = self.inner.leases.lock().get(&key).cloned() else {
            return Err(StoreError::Storage(
                format!("redis start attempt: {id} is not leased by this process").into(),
            ));
        };
        let mut record = leased.record.clone();
        if record.first_attempt_at.is_none() {
            record.first_attempt_at = Some(at);
            record.budget_from = at;
            record.updated_at = at;
        }
        let o = &self.inner.options;
        let keys = [self.inner.stream.clone(), self.key(&format!("m:{key}"))];
        let args = [
            o.consumer_group.clone(),
            o.consumer.clone(),
            key.clone(),
            eid,
            encode(&record)?,
        ];
        let answer: Result<String, _> = self
            .script(&self.inner.scripts.start_attempt, &keys, &args)
            .await;
        let refused = match answer {
            Ok(a) => {
                self.ok(());
                match a.as_str() {
                    "ok" | "kept" => return Ok(()),
                    "gone" => StoreError::NotFound(id),
                    _ => StoreError::Storage(
                        format!(
                            "redis start attempt: not written ({a}): the lease of {id} was \
                             taken over or the message is final"
                        )
                        .into(),
                    ),
                }
            }
            Err(e) => self.fail("start attempt", &e),
        };
        // Not sent: kept alive no longer, so that the entry is claimed again after claimIdle
        // (by this pod or another), as after a failed complete.
        self.inner.leases.lock().remove(&key);
        Err(refused)
    }

    async fn get(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let b = &self.inner.base;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(format!("{b}m:{id}"))
            .cmd("HEXISTS")
            .arg(format!("{b}lease"))
            .arg(id.to_string());
        let (rec, leased): (Option<String>, bool) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("get", &e))?;
        let mut record = rec.map(|r| decode(r.as_bytes())).transpose()?;
        if let Some(r) = record.as_mut()
            && leased
            && !r.status.is_final()
        {
            r.status = Status::Sending;
        }
        Ok(self.ok(record))
    }

    async fn dead_letters(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let b = &self.inner.base;
        let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(format!("{b}dead"))
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.saturating_add(1))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("dead letters", &e))?;
        let more = ids.len() > limit;
        let mut items = Vec::new();
        if limit > 0 && !ids.is_empty() {
            let keys: Vec<String> = ids
                .iter()
                .take(limit)
                .map(|id| format!("{b}m:{id}"))
                .collect();
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("GET").arg(k);
            }
            let recs: Vec<Option<String>> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail("dead letters", &e))?;
            for r in recs.into_iter().flatten() {
                items.push(decode(r.as_bytes())?);
            }
        }
        let next = if more {
            ids.get(limit.saturating_sub(1))
                .and_then(|s| s.parse().ok())
        } else {
            None
        };
        Ok(self.ok(DeadLetterPage { items, next }))
    }

    async fn replay(&self, id: MessageId) -> Result<MessageRecord, StoreError> {
        self.check_open()?;
        let b = &self.inner.base;
        let rec: Option<String> = redis::cmd("GET")
            .arg(format!("{b}m:{id}"))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("replay", &e))?;
        let mut record = match rec {
            None => return Err(StoreError::NotFound(id)),
            Some(r) => decode(r.as_bytes())?,
        };
        if !record.dead_letter {
            return Err(StoreError::NotDeadLetter(id));
        }
        let now = Timestamp::now();
        if let Some(exp) = record.message.expires_at
            && exp <= now
        {
            return Err(StoreError::PastExpiry(id, exp));
        }
        reset_for_replay(&mut record, now);
        let idem = record.idempotency_key.clone().unwrap_or_default();
        let keys = [
            self.inner.stream.clone(),
            self.key("n"),
            self.key("dead"),
            self.key("deadt"),
            self.key(&format!("m:{id}")),
            self.key(&format!("i:{idem}")),
        ];
        let args = [
            id.to_string(),
            encode(&record)?,
            self.inner.options.max_messages.to_string(),
            idem,
        ];
        let out: Value = self
            .script(&self.inner.scripts.replay, &keys, &args)
            .await
            .map_err(|e| self.fail("replay", &e))?;
        let flat = strings(out);
        match flat.first().map(String::as_str) {
            Some("ok") => {
                self.inner.work.notify_waiters();
                Ok(self.ok(record))
            }
            Some("full") => Err(StoreError::Full {
                pending: flat.get(1).and_then(|p| p.parse().ok()).unwrap_or(0),
                max: self.inner.options.max_messages,
                retry_after: Duration::from_secs(1),
            }),
            _ => Err(StoreError::NotDeadLetter(id)),
        }
    }

    async fn record_event(
        &self,
        event: DeliveryEvent,
        fallback: bool,
    ) -> Result<EventOutcome, StoreError> {
        self.check_open()?;
        let b = &self.inner.base;
        let seen = format!("s:{}:{}:{}", event.openid, event.create_time, event.msgid);
        for _ in 0..16 {
            let exists: bool = redis::cmd("EXISTS")
                .arg(format!("{b}{seen}"))
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail("event", &e))?;
            if exists {
                return Ok(self.ok(EventOutcome::Duplicate));
            }
            let Some((id, by, old)) = self.find_for_event(&event, fallback).await? else {
                return Ok(self.ok(EventOutcome::Unmatched));
            };
            let mut record = decode(old.as_bytes())?;
            let had_events = !record.events.is_empty();
            let outcome = apply_event(&mut record, &event, by);
            if outcome == EventOutcome::Duplicate {
                return Ok(self.ok(outcome));
            }
            let now = Timestamp::now();
            let cb = if matches!(outcome, EventOutcome::Applied { .. }) {
                self.callback_for(&record, now)
            } else {
                None
            };
            let (cb_id, cb_due, cb_json) = cb_args(cb.as_ref())?;
            let keys = [
                self.key(&seen),
                self.key(&format!("m:{id}")),
                self.key(&format!("a:{}", event.openid)),
                self.key("cb"),
                self.key("cbd"),
            ];
            let args = [
                id.clone(),
                old.clone(),
                encode(&record)?,
                if had_events { "0" } else { "1" }.to_string(),
                ms(self.inner.options.retention).max(1).to_string(),
                cb_id,
                cb_due.to_string(),
                cb_json,
            ];
            let answer: String = self
                .script(&self.inner.scripts.event, &keys, &args)
                .await
                .map_err(|e| self.fail("event", &e))?;
            match answer.as_str() {
                "ok" => return Ok(self.ok(outcome)),
                "dup" => return Ok(self.ok(EventOutcome::Duplicate)),
                _ => continue,
            }
        }
        Err(StoreError::Storage(
            "redis event: the message kept changing; try again".into(),
        ))
    }

    async fn lease_callbacks(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PendingCallback>, StoreError> {
        self.check_open()?;
        let deadline = tokio::time::Instant::now() + wait;
        let visibility = ms(self.inner.options.claim_idle).max(1000);
        loop {
            let keys = [self.key("cb"), self.key("cbd")];
            let args = [
                millis(Timestamp::now()).to_string(),
                max.to_string(),
                visibility.to_string(),
            ];
            let out: Value = self
                .script(&self.inner.scripts.lease_callbacks, &keys, &args)
                .await
                .map_err(|e| self.fail("lease callbacks", &e))?;
            let mut due = Vec::new();
            for t in strings(out).chunks_exact(3) {
                let Ok(id) = ulid::Ulid::from_string(&t[0]) else {
                    continue;
                };
                let due_ms = t[1].parse::<f64>().unwrap_or(0.0) as u64;
                match serde_json::from_str::<PendingCallback>(&t[2]) {
                    Ok(mut cb) => {
                        cb.key = CallbackKey { due_ms, id: id.0 };
                        due.push(cb);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable pending callback skipped"),
                }
            }
            if !due.is_empty() {
                return Ok(self.ok(due));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(self.ok(Vec::new()));
            }
            tokio::time::sleep_until(deadline.min(now + CALLBACK_POLL)).await;
        }
    }

    async fn finish_callback(
        &self,
        key: CallbackKey,
        next: Option<(Timestamp, u32)>,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        let b = &self.inner.base;
        let id = ulid::Ulid(key.id).to_string();
        let (due, js) = match next {
            None => (String::new(), String::new()),
            Some((at, attempts)) => {
                let old: Option<String> = redis::cmd("HGET")
                    .arg(format!("{b}cbd"))
                    .arg(&id)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(|e| self.fail("finish callback", &e))?;
                let Some(old) = old else {
                    return Ok(());
                };
                let mut cb: PendingCallback = serde_json::from_str(&old)
                    .map_err(|e| StoreError::storage(format!("decode callback: {e}"), e))?;
                cb.attempts = attempts;
                (millis(at).to_string(), encode(&cb)?)
            }
        };
        let keys = [self.key("cb"), self.key("cbd")];
        let args = [id, due, js];
        let _: i64 = self
            .script(&self.inner.scripts.finish_callback, &keys, &args)
            .await
            .map_err(|e| self.fail("finish callback", &e))?;
        self.ok(());
        Ok(())
    }

    fn counts(&self) -> QueueCounts {
        self.inner.snapshot.lock().counts
    }

    fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed) && !self.inner.closed.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        // Writes are answered as they happen: nothing is buffered. Leases this process still
        // holds (attempts abandoned by the drain) are handed back to the stream for another
        // pod, and this consumer leaves the group. When Redis cannot be reached, they stay in
        // its pending list and are taken over once its heartbeat expires.
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.work.notify_waiters();
        let o = &self.inner.options;
        let keys = [
            self.inner.stream.clone(),
            self.key("lease"),
            self.key(&format!("hb:{}", o.consumer)),
        ];
        let args = [o.consumer_group.clone(), o.consumer.clone()];
        match self
            .script::<i64>(&self.inner.scripts.hand_back, &keys, &args)
            .await
        {
            Ok(n) => {
                tracing::info!(handed_back = n, consumer = %o.consumer, "left the consumer group")
            }
            Err(e) => {
                tracing::warn!(error = %conn::clean(&e), "cannot hand back the leases; another pusher takes them over once this one's heartbeat expires")
            }
        }
        self.inner.leases.lock().clear();
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
