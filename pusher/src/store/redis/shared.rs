//! What the replicas of a channel share so that, towards WeChat, they act as one client: the
//! access_token (one refresher at a time), the send rate (GCRA), the daily quota, and the
//! channel-wide pauses (a token quota or a configuration fault seen by one pod holds them all).
//!
//! **Why here.** Each pod fetching its own token would, with the classic API, invalidate the
//! others' tokens (every fetch replaces the previous token), and even with the stable API costs
//! one fetch per pod against a small daily token quota. Each pod enforcing `rateLimit.perSecond`
//! on its own would multiply the rate by the number of pods. So these live in Redis, next to the
//! queue, under the channel's hash tag.
//!
//! **What stays per pod**, and why: the circuit breaker (it judges the path from *this* pod to
//! WeChat; one pod with a bad network must not stop the others), the HTTP connection pool, and
//! `maxInFlight`.
//!
//! Keys (after the base `{<prefix>:<channel>}:`): `token` (hash: `t` token, `exp` and `ref`
//! expiry and refresh times in Unix ms), `token:lock` (the refresher's lock, `SET NX PX`),
//! `token:pause` (`<errcode> <errmsg>` while fetching is paused, with the pause as TTL),
//! `rate` (hash: `tat` the rate limiter's theoretical arrival time in µs, `day` and `used` the
//! Beijing day and the sends counted on it, `spent_until` the Unix ms until which WeChat's
//! 45009 holds every pod), `templates` (the account's template catalogue as JSON,
//! `src/templates/`), `templates:at` (when it was fetched, Unix ms) and `templates:lock` (the
//! one fetcher's lock).
//!
//! The rate and the quota are one key, so that each permit is a single-key script. While the
//! channel's slot moves between Cluster masters, a script over several keys of which some are
//! not there (a quota counter of a day not yet begun, a 45009 marker that is usually absent) is
//! answered TRYAGAIN by the importing master for as long as the move lasts; a single key is
//! simply redirected (ASK). With three keys, every pod fell back to limiting itself alone for
//! the length of a move.
//!
//! When Redis cannot be reached, callers fall back to their per-pod behaviour (a pod fetches its
//! own token, limits its own rate) and log it: the queue is unreachable too then, so hardly
//! anything is sent meanwhile.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{RedisError, Script};

use super::RedisStore;
use crate::calendar::beijing_day;

/// Rate-limit permit script: GCRA on Redis's clock, plus the daily quota counted for all pods,
/// in the one hash `rate`. KEYS: rate. ARGV: interval µs, tolerance µs, daily quota (0 = none),
/// key TTL ms, longest wait µs, today (Beijing day). A permit is reserved in the order the pods
/// ask: returns 0 (go now), a positive wait in µs (the permit is reserved for then: sleep and
/// go), -1 (quota spent today) or -2 (the wait would be longer than the longest wait: nothing
/// is reserved). Reserving rather than answering "try again" means no pod polls, and a send
/// that asked first goes first, whichever pod it is on.
const PERMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent_until') or '0')
if spent * 1000 > now then return -1 end
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local quota, ttl, longest, today = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > longest then return -2 end
if quota > 0 then
  if redis.call('HGET', KEYS[1], 'day') ~= today then
    redis.call('HSET', KEYS[1], 'day', today, 'used', 0)
  end
  if redis.call('HINCRBY', KEYS[1], 'used', 1) > quota then
    redis.call('HINCRBY', KEYS[1], 'used', -1)
    return -1
  end
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + interval))
redis.call('PEXPIRE', KEYS[1], ttl)
return wait
";

/// Gives a send back to today's count: KEYS rate; ARGV today. Only today's count (a send
/// given back after midnight was counted on a day that is over).
const GIVE_BACK: &str = r"
if redis.call('HGET', KEYS[1], 'day') == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'used', -1)
end
return 0
";

/// WeChat said 45009: KEYS rate; ARGV until (Unix ms), key TTL ms.
const EXHAUST: &str = r"
redis.call('HSET', KEYS[1], 'spent_until', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
";

/// How long the `rate` hash outlives its last write: two days, so that a quiet channel keeps
/// today's count and a 45009 until midnight.
const RATE_TTL_MS: u64 = 2 * 86_400_000;

/// Drops the token only if it is the one given (compare-and-swap invalidation).
const DROP_TOKEN: &str = r"
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Releases the refresher's lock only if this pod still holds it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A token as kept in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    /// The token text.
    pub token: String,
    /// When it expires (Unix ms).
    pub expires_ms: u64,
    /// When a refresh is due (Unix ms).
    pub refresh_ms: u64,
}

/// What the rate limiter's script said.
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

/// The channel's shared client state in Redis. Cheap to clone.
#[derive(Clone)]
pub struct SharedClient {
    store: RedisStore,
    base: String,
    /// This process's lock owner id.
    owner: String,
    permit: Script,
    give_back: Script,
    exhaust: Script,
    drop_token: Script,
    unlock: Script,
}

impl std::fmt::Debug for SharedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SharedClient {
    /// The shared state of `store`'s channel, over the store's connection.
    pub fn new(store: &RedisStore) -> Self {
        Self {
            store: store.clone(),
            base: store.base().to_string(),
            owner: ulid::Ulid::new().to_string(),
            permit: Script::new(PERMIT),
            give_back: Script::new(GIVE_BACK),
            exhaust: Script::new(EXHAUST),
            drop_token: Script::new(DROP_TOKEN),
            unlock: Script::new(UNLOCK),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    // Each call is retried whole on a cluster redirect (a slot move), so the channel's shared
    // rate and token stay shared through it.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        super::conn::retrying(|| {
            let mut conn = self.store.connection();
            let cmd = cmd.clone();
            async move { cmd.query_async::<T>(&mut conn).await }
        })
        .await
        .inspect_err(|e| self.store.reconnect_if_stuck(e))
    }

    async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        super::conn::retrying(|| {
            let mut conn = self.store.connection();
            let pipe = pipe.clone();
            async move { pipe.query_async::<T>(&mut conn).await }
        })
        .await
        .inspect_err(|e| self.store.reconnect_if_stuck(e))
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, RedisError> {
        self.store
            .script(script, keys, args)
            .await
            .inspect_err(|e| self.store.reconnect_if_stuck(e))
    }

    /// The token in Redis, if any and not expired.
    pub async fn token(&self) -> Result<Option<SharedToken>, RedisError> {
        let (t, exp, refresh): (Option<String>, Option<u64>, Option<u64>) = self
            .run(
                redis::cmd("HMGET")
                    .arg(self.key("token"))
                    .arg("t")
                    .arg("exp")
                    .arg("ref"),
            )
            .await?;
        let now = unix_ms(SystemTime::now());
        Ok(match (t, exp, refresh) {
            (Some(token), Some(expires_ms), Some(refresh_ms)) if expires_ms > now => {
                Some(SharedToken {
                    token,
                    expires_ms,
                    refresh_ms,
                })
            }
            _ => None,
        })
    }

    /// Publishes a freshly fetched token to every pod.
    pub async fn put_token(
        &self,
        token: &str,
        expires_in: Duration,
        refresh_in: Duration,
    ) -> Result<(), RedisError> {
        let now = SystemTime::now();
        let key = self.key("token");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("t")
            .arg(token)
            .arg("exp")
            .arg(unix_ms(now + expires_in))
            .arg("ref")
            .arg(unix_ms(now + refresh_in))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(
                u64::try_from(expires_in.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .ignore();
        self.run_pipe(&pipe).await
    }

    /// Drops `token` from Redis if it is still the shared one; returns whether it was.
    pub async fn drop_token(&self, token: &str) -> Result<bool, RedisError> {
        let n: i64 = self
            .script(&self.drop_token, &[self.key("token")], &[token.to_string()])
            .await?;
        Ok(n == 1)
    }

    /// Tries to become the channel's one refresher for `ttl`.
    pub async fn try_lock(&self, ttl: Duration) -> Result<bool, RedisError> {
        self.try_lock_key("token:lock", ttl).await
    }

    /// Gives the refresher's lock back (only if still ours).
    pub async fn unlock(&self) -> Result<(), RedisError> {
        self.unlock_key("token:lock").await
    }

    /// Tries to become the one pod that fetches the template lists, for `ttl`.
    pub async fn try_lock_templates(&self, ttl: Duration) -> Result<bool, RedisError> {
        self.try_lock_key("templates:lock", ttl).await
    }

    /// Gives the template fetcher's lock back (only if still ours).
    pub async fn unlock_templates(&self) -> Result<(), RedisError> {
        self.unlock_key("templates:lock").await
    }

    /// Takes the lock `name` for `ttl` unless another pod holds it (`SET NX PX`, this pod's
    /// owner id as the value).
    async fn try_lock_key(&self, name: &str, ttl: Duration) -> Result<bool, RedisError> {
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.key(name))
                    .arg(&self.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Releases the lock `name` if this pod still holds it.
    async fn unlock_key(&self, name: &str) -> Result<(), RedisError> {
        let _: i64 = self
            .script(
                &self.unlock,
                &[self.key(name)],
                std::slice::from_ref(&self.owner),
            )
            .await?;
        Ok(())
    }

    /// When the shared template catalogue was fetched (Unix ms), if there is one.
    pub async fn templates_at(&self) -> Result<Option<u64>, RedisError> {
        self.run(redis::cmd("GET").arg(self.key("templates:at")))
            .await
    }

    /// The shared template catalogue (JSON) and when it was fetched.
    pub async fn templates(&self) -> Result<Option<(String, u64)>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.key("templates"))
            .cmd("GET")
            .arg(self.key("templates:at"));
        let (json, at): (Option<String>, Option<u64>) = self.run_pipe(&pipe).await?;
        Ok(json.zip(at))
    }

    /// Publishes a freshly fetched catalogue to every pod.
    pub async fn put_templates(&self, json: &str, at_ms: u64) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.key("templates"))
            .arg(json)
            .ignore()
            .cmd("SET")
            .arg(self.key("templates:at"))
            .arg(at_ms)
            .ignore();
        self.run_pipe(&pipe).await
    }

    /// The channel-wide token pause (`errcode`, `errmsg`), if one is on.
    pub async fn pause(&self) -> Result<Option<(i64, String)>, RedisError> {
        let v: Option<String> = self
            .run(redis::cmd("GET").arg(self.key("token:pause")))
            .await?;
        Ok(v.and_then(|v| {
            let (code, msg) = v.split_once(' ').unwrap_or((v.as_str(), ""));
            code.parse().ok().map(|c| (c, msg.to_string()))
        }))
    }

    /// Pauses token fetching for every pod for `wait`.
    pub async fn set_pause(&self, code: i64, msg: &str, wait: Duration) -> Result<(), RedisError> {
        self.run(
            redis::cmd("SET")
                .arg(self.key("token:pause"))
                .arg(format!("{code} {msg}"))
                .arg("PX")
                .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
        )
        .await
    }

    /// Pauses sending for every pod for `wait`: a configuration fault WeChat answered a send
    /// with (48001, 40013, 40125, 40164) is the account's, not one pod's.
    pub async fn set_send_pause(
        &self,
        code: i64,
        msg: &str,
        wait: Duration,
    ) -> Result<(), RedisError> {
        self.run(
            redis::cmd("SET")
                .arg(self.key("send:pause"))
                .arg(format!("{code} {msg}"))
                .arg("PX")
                .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
        )
        .await
    }

    /// The channel-wide send pause (`errcode`, `errmsg`, time left), if one is on.
    pub async fn send_pause(&self) -> Result<Option<(i64, String, Duration)>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.key("send:pause"))
            .cmd("PTTL")
            .arg(self.key("send:pause"));
        let (v, ttl): (Option<String>, i64) = self.run_pipe(&pipe).await?;
        let left = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
        Ok(v.and_then(|v| {
            let (code, msg) = v.split_once(' ').unwrap_or((v.as_str(), ""));
            code.parse().ok().map(|c| (c, msg.to_string(), left))
        })
        .filter(|_| !left.is_zero()))
    }

    /// Lifts the channel-wide send pause (a probe went through).
    pub async fn clear_send_pause(&self) -> Result<(), RedisError> {
        self.run(redis::cmd("DEL").arg(self.key("send:pause")))
            .await
    }

    /// One permit from the shared GCRA limiter (one send every `interval`, `burst` at once)
    /// and the shared daily quota (`daily_quota`, 0 = none), reserved for at most `longest`
    /// from now (see `PERMIT`).
    pub async fn permit(
        &self,
        interval: Duration,
        burst: u32,
        daily_quota: u64,
        longest: Duration,
    ) -> Result<Permit, RedisError> {
        let interval = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let tolerance = interval * u64::from(burst.max(1).saturating_sub(1));
        let r: i64 = self
            .script(
                &self.permit,
                &[self.key("rate")],
                &[
                    interval.max(1).to_string(),
                    tolerance.to_string(),
                    daily_quota.to_string(),
                    RATE_TTL_MS.to_string(),
                    u64::try_from(longest.as_micros())
                        .unwrap_or(u64::MAX)
                        .to_string(),
                    beijing_day(SystemTime::now()).to_string(),
                ],
            )
            .await?;
        Ok(match r {
            0 => Permit::Go,
            -2 => Permit::TooFar,
            r if r < 0 => Permit::QuotaSpent,
            r => Permit::At(Duration::from_micros(r.unsigned_abs())),
        })
    }

    /// Returns a send WeChat did not count to today's shared quota.
    pub async fn give_back_daily(&self) -> Result<(), RedisError> {
        let today = beijing_day(SystemTime::now()).to_string();
        let _: i64 = self
            .script(&self.give_back, &[self.key("rate")], &[today])
            .await?;
        Ok(())
    }

    /// WeChat said 45009: every pod holds its sends until `until` (midnight Beijing time).
    pub async fn exhaust_daily(&self, until: SystemTime) -> Result<(), RedisError> {
        let _: i64 = self
            .script(
                &self.exhaust,
                &[self.key("rate")],
                &[unix_ms(until).to_string(), RATE_TTL_MS.to_string()],
            )
            .await?;
        Ok(())
    }
}
