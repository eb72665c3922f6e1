//! The shared rate limiter's permits in Redis, asked for in batches: the permits that this pod's
//! sends ask for while one call is on its way go together in the next call, one script run for
//! all of them. Each permit is still reserved on its own, in the order the sends asked, as if
//! asked one after the other at the same instant; a pod sending thousands a second makes a few
//! hundred calls instead of one per send.

use std::sync::Arc;

use parking_lot::Mutex;
use redis::{ErrorKind, RedisError, Script};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::resilience::ratelimit::Gcra;
use crate::store::redis::RedisStore;

/// Permit script: GCRA (`resilience::ratelimit::Gcra`, written again in Lua) on Redis's clock,
/// plus the daily quota counted for all pods, in the one hash `rate`. KEYS: rate. ARGV: key TTL
/// ms, today (Beijing day), then per permit: interval µs, tolerance µs, daily quota (0 = none),
/// longest wait µs. Returns per permit, in order: 0 (go now), a positive wait in µs (the permit
/// is reserved for then: sleep and go), -1 (quota spent today) or -2 (the wait would be longer
/// than the longest wait: nothing is reserved). Reserving rather than answering "try again"
/// means no pod polls, and a send that asked first goes first, whichever pod it is on.
pub(super) const PERMITS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl, today = tonumber(ARGV[1]), ARGV[2]
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent_until') or '0') * 1000 > now
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
local day, used = nil, nil
local reserved = false
local out = {}
for i = 3, #ARGV, 4 do
  local interval, tolerance = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local quota, longest = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local answer = -1
  if not spent then
    local at = tat
    if at < now then at = now end
    local wait = at - tolerance - now
    if wait < 0 then wait = 0 end
    if wait > longest then
      answer = -2
    else
      local fits = true
      if quota > 0 then
        if day == nil then
          day = redis.call('HGET', KEYS[1], 'day')
          used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
        end
        if day ~= today then day = today; used = 0 end
        if used + 1 > quota then fits = false else used = used + 1 end
      end
      if fits then
        tat = at + interval
        reserved = true
        answer = wait
      end
    end
  end
  out[#out + 1] = answer
end
if day ~= nil then redis.call('HSET', KEYS[1], 'day', day, 'used', used) end
if reserved then
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return out
";

/// How long the `rate` hash outlives its last write: two days, so that a quiet channel keeps
/// today's count and a 45009 until midnight.
pub(super) const RATE_TTL_MS: u64 = 2 * 86_400_000;

/// Most permits in one call (a script blocks Redis while it runs).
const BATCH_AT_MOST: usize = 512;

/// One send's request.
struct Ask {
    /// interval µs, tolerance µs, daily quota, longest wait µs.
    args: [u64; 4],
    answer: oneshot::Sender<Result<i64, RedisError>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Ask>,
    /// Whether a task is sending the waiting permits.
    running: bool,
}

/// This pod's permit requests on their way to Redis. Cheap to clone.
#[derive(Clone)]
pub(super) struct Permits {
    store: RedisStore,
    key: String,
    script: Script,
    queue: Arc<Mutex<Queue>>,
}

impl Permits {
    pub(super) fn new(store: RedisStore, key: String) -> Self {
        Self {
            store,
            key,
            script: Script::new(PERMITS),
            queue: Arc::default(),
        }
    }

    /// One permit (see [`PERMITS`]), sent with the others waiting now.
    pub(super) async fn ask(
        &self,
        rule: Gcra,
        daily_quota: u64,
        longest_us: u64,
    ) -> Result<i64, RedisError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock();
            q.waiting.push(Ask {
                args: [rule.interval_us, rule.tolerance_us, daily_quota, longest_us],
                answer: tx,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // A task of its own, not this caller: a send that gives up waiting must not
            // strand the others' permits.
            let this = self.clone();
            tokio::spawn(
                async move { this.send_waiting().await }
                    .instrument(tracing::debug_span!("redis_permits")),
            );
        }
        rx.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Client,
                "the permit request ended without an answer",
            )))
        })
    }

    /// Sends the waiting permits, a batch per call, until none waits.
    async fn send_waiting(&self) {
        loop {
            let batch: Vec<Ask> = {
                let mut q = self.queue.lock();
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                let n = q.waiting.len().min(BATCH_AT_MOST);
                q.waiting.drain(..n).collect()
            };
            let mut args = Vec::with_capacity(2 + batch.len() * 4);
            args.push(RATE_TTL_MS.to_string());
            args.push(crate::calendar::beijing_day(std::time::SystemTime::now()).to_string());
            for a in &batch {
                args.extend(a.args.iter().map(u64::to_string));
            }
            let answers: Result<Vec<i64>, RedisError> = self
                .store
                .script(&self.script, std::slice::from_ref(&self.key), &args)
                .await
                .inspect_err(|e| self.store.reconnect_if_stuck(e));
            match answers {
                Ok(waits) if waits.len() == batch.len() => {
                    for (a, w) in batch.into_iter().zip(waits) {
                        let _ = a.answer.send(Ok(w));
                    }
                }
                Ok(_) => {
                    for a in batch {
                        let _ = a.answer.send(Err(RedisError::from((
                            ErrorKind::UnexpectedReturnType,
                            "the permit script answered a wrong number of permits",
                        ))));
                    }
                }
                Err(e) => {
                    for a in batch {
                        let _ = a.answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}
