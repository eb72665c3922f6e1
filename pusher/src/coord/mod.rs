//! What the pods of one channel share so that, towards WeChat, they act as one client: the
//! access_token (one refresher at a time), the send rate and the daily quota, the channel-wide
//! pauses (a token quota or a configuration fault seen by one pod holds them all), and the
//! template catalogue (one fetcher at a time).
//!
//! **Why.** Each pod fetching its own token would, with the classic API, invalidate the others'
//! tokens (every fetch replaces the previous token), and even with the stable API costs one
//! fetch per pod against a small daily token quota. Each pod enforcing `rateLimit.perSecond` on
//! its own would multiply the rate by the number of pods.
//!
//! **What stays per pod**, and why: the circuit breaker (it judges the path from *this* pod to
//! WeChat; one pod with a bad network must not stop the others), the HTTP connection pool, and
//! `maxInFlight`.
//!
//! One trait, [`Coordinator`], with two implementations:
//! - [`redis::RedisCoordinator`]: the state lives in Redis, next to the queue, under the
//!   channel's hash tag, for every pod of a channel on the Redis queue.
//! - [`embedded::EmbeddedCoordinator`]: the state lives in this process's memory, for parts of
//!   one process that share a channel.
//!
//! The callers (`wechat::token`, `wechat::sender`, `templates`) take an
//! `Option<Arc<dyn Coordinator>>`. `None` means the pod is alone (the embedded queue): each part
//! then keeps its own state, as it does when the coordinator cannot be reached.
//!
//! This module sits beside `store` and below `wechat`: the Redis implementation uses the Redis
//! store's connection, and nothing in `store` uses this module.

pub mod embedded;
pub mod redis;
mod redis_permits;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use crate::resilience::ratelimit::Gcra;

pub use embedded::EmbeddedCoordinator;
pub use redis::RedisCoordinator;

/// A coordinator could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// Redis answered with an error or could not be reached.
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
}

/// A token as the pods share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    /// The token text.
    pub token: String,
    /// When it expires (Unix ms).
    pub expires_ms: u64,
    /// When a refresh is due (Unix ms).
    pub refresh_ms: u64,
}

/// What the shared rate limiter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send now.
    Go,
    /// A permit is reserved for this much later: wait, then send.
    At(Duration),
    /// The next permit is further away than the longest wait asked for; none is reserved.
    TooFar,
    /// The daily quota is spent (for all pods) until midnight Beijing time.
    QuotaSpent,
}

/// A lock that at most one pod of the channel holds at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lock {
    /// The one refresher of the access_token.
    Token,
    /// The one fetcher of the template catalogue.
    Templates,
}

/// A result of a coordinator call.
pub type CoordResult<T> = Result<T, CoordError>;

/// The state the pods of one channel share. Every method is one short call; none waits for
/// another pod.
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// The shared token, if any and not expired.
    fn token(&self) -> BoxFuture<'_, CoordResult<Option<SharedToken>>>;

    /// Publishes a freshly fetched token to every pod.
    fn put_token<'a>(
        &'a self,
        token: &'a str,
        expires_in: Duration,
        refresh_in: Duration,
    ) -> BoxFuture<'a, CoordResult<()>>;

    /// Drops `token` if it is still the shared one; returns whether it was.
    fn drop_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, CoordResult<bool>>;

    /// Takes `lock` for `ttl` unless another holder has it.
    fn try_lock(&self, lock: Lock, ttl: Duration) -> BoxFuture<'_, CoordResult<bool>>;

    /// Gives `lock` back, only if this holder still has it.
    fn unlock(&self, lock: Lock) -> BoxFuture<'_, CoordResult<()>>;

    /// When the shared template catalogue was fetched (Unix ms), if there is one.
    fn templates_at(&self) -> BoxFuture<'_, CoordResult<Option<u64>>>;

    /// The shared template catalogue (JSON) and when it was fetched (Unix ms).
    fn templates(&self) -> BoxFuture<'_, CoordResult<Option<(String, u64)>>>;

    /// Publishes a freshly fetched catalogue to every pod.
    fn put_templates<'a>(&'a self, json: &'a str, at_ms: u64) -> BoxFuture<'a, CoordResult<()>>;

    /// The channel-wide token pause (`errcode`, `errmsg`), if one is on.
    fn token_pause(&self) -> BoxFuture<'_, CoordResult<Option<(i64, String)>>>;

    /// Pauses token fetching for every pod for `wait`.
    fn set_token_pause<'a>(
        &'a self,
        code: i64,
        msg: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, CoordResult<()>>;

    /// The channel-wide send pause (`errcode`, `errmsg`, time left), if one is on.
    fn send_pause(&self) -> BoxFuture<'_, CoordResult<Option<(i64, String, Duration)>>>;

    /// Pauses sending for every pod for `wait`: a configuration fault WeChat answered a send
    /// with (48001, 40013, 40125, 40164) is the account's, not one pod's.
    fn set_send_pause<'a>(
        &'a self,
        code: i64,
        msg: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, CoordResult<()>>;

    /// Lifts the channel-wide send pause (a probe went through).
    fn clear_send_pause(&self) -> BoxFuture<'_, CoordResult<()>>;

    /// One permit from the shared GCRA limiter (`rule`: the policy's rate and burst, or a
    /// provider's ceiling) and the shared daily quota (`daily_quota`, 0 = none), reserved for
    /// at most `longest` from now. A permit is reserved in the order the pods ask, so no pod
    /// polls and a send that asked first goes first, whichever pod it is on.
    fn permit(
        &self,
        rule: Gcra,
        daily_quota: u64,
        longest: Duration,
    ) -> BoxFuture<'_, CoordResult<Permit>>;

    /// Returns a send WeChat did not count to today's shared quota (only today's: a send given
    /// back after midnight was counted on a day that is over).
    fn give_back_daily(&self) -> BoxFuture<'_, CoordResult<()>>;

    /// WeChat said 45009: every pod holds its sends until `until` (midnight Beijing time).
    fn exhaust_daily(&self, until: SystemTime) -> BoxFuture<'_, CoordResult<()>>;
}

/// Unix milliseconds of `t` (0 before the epoch).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in whole milliseconds, at least 1 (a TTL of 0 would not expire).
fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Splits a stored pause, `<errcode> <errmsg>`.
fn parse_pause(v: &str) -> Option<(i64, String)> {
    let (code, msg) = v.split_once(' ').unwrap_or((v, ""));
    code.parse().ok().map(|c| (c, msg.to_string()))
}
