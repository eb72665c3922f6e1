//! The Redis store's settings, and the names it derives from them.

use std::time::Duration;

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
    /// Whether the channel takes delivery events (`events.token` is set). Only then does a
    /// delivered message get the events receiver's indexes (`x:<msgid>`, `a:<openid>`): without
    /// a token the receiver refuses every event, so nothing would read them.
    pub event_indexes: bool,
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

/// The key base of a channel: `{<prefix>:<channel>}:`.
pub fn key_base(prefix: &str, channel: &str) -> String {
    format!("{{{prefix}:{channel}}}:")
}
