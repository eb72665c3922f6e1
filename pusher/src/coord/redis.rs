//! The pods' shared state in Redis, next to the queue, under the channel's hash tag.
//!
//! Keys (after the base `{<prefix>:<channel>}:`): `token` (hash: `t` token, `exp` and `ref`
//! expiry and refresh times in Unix ms), `token:lock` (the refresher's lock, `SET NX PX`),
//! `token:pause` (`<errcode> <errmsg>` while fetching is paused, with the pause as TTL),
//! `send:pause` (the same for sending), `rate` (hash: `tat` the rate limiter's theoretical
//! arrival time in µs, `day` and `used` the Beijing day and the sends counted on it,
//! `spent_until` the Unix ms until which WeChat's 45009 holds every pod), `templates` (the
//! account's template catalogue as JSON, `src/templates/`), `templates:at` (when it was fetched,
//! Unix ms) and `templates:lock` (the one fetcher's lock).
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

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use redis::{RedisError, Script};

use super::redis_permits::{Permits, RATE_TTL_MS};
use super::{CoordResult, Coordinator, Lock, Permit, SharedToken, parse_pause, ttl_ms, unix_ms};
use crate::calendar::beijing_day;
use crate::resilience::ratelimit::Gcra;
use crate::store::redis::{RedisStore, retrying};

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

/// The channel's shared state in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisCoordinator {
    store: RedisStore,
    base: String,
    /// This process's lock owner id.
    owner: String,
    permits: Permits,
    give_back: Script,
    exhaust: Script,
    drop_token: Script,
    unlock: Script,
}

impl std::fmt::Debug for RedisCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RedisCoordinator {
    /// The shared state of `store`'s channel, over the store's connection.
    pub fn new(store: &RedisStore) -> Self {
        Self {
            store: store.clone(),
            base: store.base().to_string(),
            owner: ulid::Ulid::new().to_string(),
            permits: Permits::new(store.clone(), format!("{}rate", store.base())),
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
        retrying(|| {
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
        retrying(|| {
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
                    .arg(ttl_ms(ttl)),
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

    /// Sets the pause `name` (`<errcode> <errmsg>`) for `wait`.
    async fn set_pause_key(
        &self,
        name: &str,
        code: i64,
        msg: &str,
        wait: Duration,
    ) -> Result<(), RedisError> {
        self.run(
            redis::cmd("SET")
                .arg(self.key(name))
                .arg(format!("{code} {msg}"))
                .arg("PX")
                .arg(ttl_ms(wait)),
        )
        .await
    }
}

/// The key of a lock.
fn lock_key(lock: Lock) -> &'static str {
    match lock {
        Lock::Token => "token:lock",
        Lock::Templates => "templates:lock",
    }
}

impl Coordinator for RedisCoordinator {
    fn token(&self) -> BoxFuture<'_, CoordResult<Option<SharedToken>>> {
        Box::pin(async move {
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
        })
    }

    fn put_token<'a>(
        &'a self,
        token: &'a str,
        expires_in: Duration,
        refresh_in: Duration,
    ) -> BoxFuture<'a, CoordResult<()>> {
        Box::pin(async move {
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
                .arg(ttl_ms(expires_in))
                .ignore();
            Ok(self.run_pipe(&pipe).await?)
        })
    }

    fn drop_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, CoordResult<bool>> {
        Box::pin(async move {
            let n: i64 = self
                .script(&self.drop_token, &[self.key("token")], &[token.to_string()])
                .await?;
            Ok(n == 1)
        })
    }

    fn try_lock(&self, lock: Lock, ttl: Duration) -> BoxFuture<'_, CoordResult<bool>> {
        Box::pin(async move { Ok(self.try_lock_key(lock_key(lock), ttl).await?) })
    }

    fn unlock(&self, lock: Lock) -> BoxFuture<'_, CoordResult<()>> {
        Box::pin(async move { Ok(self.unlock_key(lock_key(lock)).await?) })
    }

    fn templates_at(&self) -> BoxFuture<'_, CoordResult<Option<u64>>> {
        Box::pin(async move {
            Ok(self
                .run(redis::cmd("GET").arg(self.key("templates:at")))
                .await?)
        })
    }

    fn templates(&self) -> BoxFuture<'_, CoordResult<Option<(String, u64)>>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("GET")
                .arg(self.key("templates"))
                .cmd("GET")
                .arg(self.key("templates:at"));
            let (json, at): (Option<String>, Option<u64>) = self.run_pipe(&pipe).await?;
            Ok(json.zip(at))
        })
    }

    fn put_templates<'a>(&'a self, json: &'a str, at_ms: u64) -> BoxFuture<'a, CoordResult<()>> {
        Box::pin(async move {
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
            Ok(self.run_pipe(&pipe).await?)
        })
    }

    fn token_pause(&self) -> BoxFuture<'_, CoordResult<Option<(i64, String)>>> {
        Box::pin(async move {
            let v: Option<String> = self
                .run(redis::cmd("GET").arg(self.key("token:pause")))
                .await?;
            Ok(v.as_deref().and_then(parse_pause))
        })
    }

    fn set_token_pause<'a>(
        &'a self,
        code: i64,
        msg: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, CoordResult<()>> {
        Box::pin(async move { Ok(self.set_pause_key("token:pause", code, msg, wait).await?) })
    }

    fn send_pause(&self) -> BoxFuture<'_, CoordResult<Option<(i64, String, Duration)>>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("GET")
                .arg(self.key("send:pause"))
                .cmd("PTTL")
                .arg(self.key("send:pause"));
            let (v, ttl): (Option<String>, i64) = self.run_pipe(&pipe).await?;
            let left = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
            Ok(v.as_deref()
                .and_then(parse_pause)
                .map(|(code, msg)| (code, msg, left))
                .filter(|_| !left.is_zero()))
        })
    }

    fn set_send_pause<'a>(
        &'a self,
        code: i64,
        msg: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, CoordResult<()>> {
        Box::pin(async move { Ok(self.set_pause_key("send:pause", code, msg, wait).await?) })
    }

    fn clear_send_pause(&self) -> BoxFuture<'_, CoordResult<()>> {
        Box::pin(async move {
            Ok(self
                .run(redis::cmd("DEL").arg(self.key("send:pause")))
                .await?)
        })
    }

    fn permit(
        &self,
        gcra: Gcra,
        daily_quota: u64,
        longest: Duration,
    ) -> BoxFuture<'_, CoordResult<Permit>> {
        Box::pin(async move {
            let r = self
                .permits
                .ask(
                    gcra,
                    daily_quota,
                    u64::try_from(longest.as_micros()).unwrap_or(u64::MAX),
                )
                .await?;
            Ok(match r {
                0 => Permit::Go,
                -2 => Permit::TooFar,
                r if r < 0 => Permit::QuotaSpent,
                r => Permit::At(Duration::from_micros(r.unsigned_abs())),
            })
        })
    }

    fn give_back_daily(&self) -> BoxFuture<'_, CoordResult<()>> {
        Box::pin(async move {
            let today = beijing_day(SystemTime::now()).to_string();
            let _: i64 = self
                .script(&self.give_back, &[self.key("rate")], &[today])
                .await?;
            Ok(())
        })
    }

    fn exhaust_daily(&self, until: SystemTime) -> BoxFuture<'_, CoordResult<()>> {
        Box::pin(async move {
            let _: i64 = self
                .script(
                    &self.exhaust,
                    &[self.key("rate")],
                    &[unix_ms(until).to_string(), RATE_TTL_MS.to_string()],
                )
                .await?;
            Ok(())
        })
    }
}
