//! The shared state of one process, in memory: the same rules as the Redis implementation
//! (`redis.rs`), for parts of one process that share a channel. Nothing here fails.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{CoordResult, Coordinator, Lock, Permit, SharedToken, unix_ms};
use crate::calendar::beijing_day;
use crate::resilience::ratelimit::Gcra;

/// The channel's shared state in this process's memory.
#[derive(Debug, Default)]
pub struct EmbeddedCoordinator {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    token: Option<SharedToken>,
    /// Each held lock and when it lapses.
    locks: HashMap<Lock, Instant>,
    token_pause: Option<Pause>,
    send_pause: Option<Pause>,
    templates: Option<(String, u64)>,
    rate: Rate,
}

#[derive(Debug, Clone)]
struct Pause {
    code: i64,
    message: String,
    until: Instant,
}

/// The same fields as the Redis hash `rate`.
#[derive(Debug, Default)]
struct Rate {
    /// The theoretical arrival time, Unix µs.
    tat: u64,
    day: u64,
    used: u64,
    /// Unix ms until which WeChat's 45009 holds every send.
    spent_until: u64,
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, CoordResult<T>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl EmbeddedCoordinator {
    /// An empty state: no token, no lock held, no pause.
    pub fn new() -> Self {
        Self::default()
    }

    fn set_pause(slot: &mut Option<Pause>, code: i64, message: &str, wait: Duration) {
        *slot = Some(Pause {
            code,
            message: message.to_string(),
            until: Instant::now() + wait,
        });
    }

    fn live_pause(slot: &Option<Pause>) -> Option<(i64, String, Duration)> {
        slot.as_ref().and_then(|p| {
            let left = p.until.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| (p.code, p.message.clone(), left))
        })
    }
}

impl Coordinator for EmbeddedCoordinator {
    fn token(&self) -> BoxFuture<'_, CoordResult<Option<SharedToken>>> {
        let now = unix_ms(SystemTime::now());
        let token = self.state.lock().token.clone();
        ready(token.filter(|t| t.expires_ms > now))
    }

    fn put_token<'a>(
        &'a self,
        token: &'a str,
        expires_in: Duration,
        refresh_in: Duration,
    ) -> BoxFuture<'a, CoordResult<()>> {
        let now = SystemTime::now();
        self.state.lock().token = Some(SharedToken {
            token: token.to_string(),
            expires_ms: unix_ms(now + expires_in),
            refresh_ms: unix_ms(now + refresh_in),
        });
        ready(())
    }

    fn drop_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, CoordResult<bool>> {
        let mut st = self.state.lock();
        let ours = st.token.as_ref().is_some_and(|t| t.token == token);
        if ours {
            st.token = None;
        }
        ready(ours)
    }

    fn try_lock(&self, lock: Lock, ttl: Duration) -> BoxFuture<'_, CoordResult<bool>> {
        let now = Instant::now();
        let mut st = self.state.lock();
        let free = st.locks.get(&lock).is_none_or(|until| *until <= now);
        if free {
            st.locks
                .insert(lock, now + ttl.max(Duration::from_millis(1)));
        }
        ready(free)
    }

    fn unlock(&self, lock: Lock) -> BoxFuture<'_, CoordResult<()>> {
        self.state.lock().locks.remove(&lock);
        ready(())
    }

    fn templates_at(&self) -> BoxFuture<'_, CoordResult<Option<u64>>> {
        ready(self.state.lock().templates.as_ref().map(|(_, at)| *at))
    }

    fn templates(&self) -> BoxFuture<'_, CoordResult<Option<(String, u64)>>> {
        ready(self.state.lock().templates.clone())
    }

    fn put_templates<'a>(&'a self, json: &'a str, at_ms: u64) -> BoxFuture<'a, CoordResult<()>> {
        self.state.lock().templates = Some((json.to_string(), at_ms));
        ready(())
    }

    fn token_pause(&self) -> BoxFuture<'_, CoordResult<Option<(i64, String)>>> {
        let pause = Self::live_pause(&self.state.lock().token_pause);
        ready(pause.map(|(code, message, _)| (code, message)))
    }

    fn set_token_pause<'a>(
        &'a self,
        code: i64,
        msg: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, CoordResult<()>> {
        Self::set_pause(&mut self.state.lock().token_pause, code, msg, wait);
        ready(())
    }

    fn send_pause(&self) -> BoxFuture<'_, CoordResult<Option<(i64, String, Duration)>>> {
        ready(Self::live_pause(&self.state.lock().send_pause))
    }

    fn set_send_pause<'a>(
        &'a self,
        code: i64,
        msg: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, CoordResult<()>> {
        Self::set_pause(&mut self.state.lock().send_pause, code, msg, wait);
        ready(())
    }

    fn clear_send_pause(&self) -> BoxFuture<'_, CoordResult<()>> {
        self.state.lock().send_pause = None;
        ready(())
    }

    fn permit(
        &self,
        rule: Gcra,
        daily_quota: u64,
        longest: Duration,
    ) -> BoxFuture<'_, CoordResult<Permit>> {
        let wall = SystemTime::now();
        let now = unix_us(wall);
        let today = beijing_day(wall);
        let longest = u64::try_from(longest.as_micros()).unwrap_or(u64::MAX);
        let mut st = self.state.lock();
        let r = &mut st.rate;
        if r.spent_until.saturating_mul(1000) > now {
            return ready(Permit::QuotaSpent);
        }
        let Some((wait, tat)) = rule.reserve(now, r.tat, longest) else {
            return ready(Permit::TooFar);
        };
        if daily_quota > 0 {
            if r.day != today {
                (r.day, r.used) = (today, 0);
            }
            if r.used >= daily_quota {
                return ready(Permit::QuotaSpent);
            }
            r.used += 1;
        }
        r.tat = tat;
        ready(if wait == 0 {
            Permit::Go
        } else {
            Permit::At(Duration::from_micros(wait))
        })
    }

    fn give_back_daily(&self) -> BoxFuture<'_, CoordResult<()>> {
        let today = beijing_day(SystemTime::now());
        let mut st = self.state.lock();
        if st.rate.day == today {
            st.rate.used = st.rate.used.saturating_sub(1);
        }
        ready(())
    }

    fn exhaust_daily(&self, until: SystemTime) -> BoxFuture<'_, CoordResult<()>> {
        self.state.lock().rate.spent_until = unix_ms(until);
        ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn locks_are_exclusive_until_given_back() {
        let c = EmbeddedCoordinator::new();
        let ttl = Duration::from_secs(60);
        assert!(c.try_lock(Lock::Token, ttl).await.expect("in memory"));
        assert!(!c.try_lock(Lock::Token, ttl).await.expect("in memory"));
        assert!(c.try_lock(Lock::Templates, ttl).await.expect("in memory"));
        c.unlock(Lock::Token).await.expect("in memory");
        assert!(c.try_lock(Lock::Token, ttl).await.expect("in memory"));
    }

    #[tokio::test]
    async fn a_token_is_dropped_only_while_it_is_the_shared_one() {
        let c = EmbeddedCoordinator::new();
        let hour = Duration::from_secs(3600);
        c.put_token("a", hour, hour / 2).await.expect("in memory");
        assert!(!c.drop_token("b").await.expect("in memory"));
        assert_eq!(
            c.token().await.expect("in memory").map(|t| t.token),
            Some("a".into())
        );
        assert!(c.drop_token("a").await.expect("in memory"));
        assert_eq!(c.token().await.expect("in memory"), None);
    }

    #[tokio::test]
    async fn the_daily_quota_is_counted_given_back_and_exhausted() {
        let c = EmbeddedCoordinator::new();
        let rule = Gcra::new(1_000_000, 1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            c.permit(rule, 2, hour).await.expect("in memory"),
            Permit::Go
        );
        assert_eq!(
            c.permit(rule, 2, hour).await.expect("in memory"),
            Permit::Go
        );
        assert_eq!(
            c.permit(rule, 2, hour).await.expect("in memory"),
            Permit::QuotaSpent
        );
        c.give_back_daily().await.expect("in memory");
        assert_eq!(
            c.permit(rule, 2, hour).await.expect("in memory"),
            Permit::Go
        );
        assert_eq!(
            c.permit(rule, 0, hour).await.expect("in memory"),
            Permit::Go
        );
        c.exhaust_daily(SystemTime::now() + hour)
            .await
            .expect("in memory");
        assert_eq!(
            c.permit(rule, 0, hour).await.expect("in memory"),
            Permit::QuotaSpent
        );
    }

    #[tokio::test]
    async fn a_send_pause_lasts_until_cleared() {
        let c = EmbeddedCoordinator::new();
        assert_eq!(c.send_pause().await.expect("in memory"), None);
        c.set_send_pause(48001, "api unauthorized", Duration::from_secs(60))
            .await
            .expect("in memory");
        let (code, message, left) = c.send_pause().await.expect("in memory").expect("a pause");
        assert_eq!((code, message.as_str()), (48001, "api unauthorized"));
        assert!(left > Duration::ZERO && left <= Duration::from_secs(60));
        c.clear_send_pause().await.expect("in memory");
        assert_eq!(c.send_pause().await.expect("in memory"), None);
    }
}
