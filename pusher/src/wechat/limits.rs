//! The channel's send limits as the engine applies them: this pod's token bucket and daily
//! counter (`resilience::ratelimit`), and, when the pods of a channel coordinate (`coord`), the
//! rate and the daily quota shared by every pod. If the coordinator cannot be asked, the pod
//! falls back to its own bucket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::coord::{Coordinator, Permit};
use crate::policy::RateLimit;
use crate::resilience::ratelimit::{Gcra, RateLimiter};
use crate::send::RateCeiling;

/// The channel's rate limiter: this pod's bucket and daily counter, plus the shared ones.
#[derive(Debug)]
pub struct Limits {
    local: RateLimiter,
    shared: Option<Shared>,
}

#[derive(Debug)]
struct Shared {
    coord: Arc<dyn Coordinator>,
    rule: Gcra,
    daily_quota: u64,
}

impl Limits {
    /// Limits from the policy; with `coord`, the rate and the daily quota are shared with the
    /// other pods of the channel (the local daily counter then only keeps "spent until
    /// midnight").
    /// A provider's `ceiling` (a WeCom robot's 20 a minute) holds the rate down further, in
    /// this pod and in the shared rule.
    pub fn new(
        policy: &RateLimit,
        coord: Option<Arc<dyn Coordinator>>,
        ceiling: Option<RateCeiling>,
    ) -> Self {
        match coord {
            None => Self {
                local: RateLimiter::new(policy).with_ceiling(ceiling),
                shared: None,
            },
            Some(coord) => {
                let local = RateLimiter::new(&RateLimit {
                    daily_quota: 0,
                    ..policy.clone()
                })
                .with_ceiling(ceiling);
                Self {
                    shared: Some(Shared {
                        coord,
                        rule: local.shared_rule(policy),
                        daily_quota: policy.daily_quota,
                    }),
                    local,
                }
            }
        }
    }

    /// The spacing of sends at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.local.interval()
    }

    /// A permit from the shared limiter; `None` when the coordinator cannot be asked.
    async fn acquire_shared(&self, shared: &Shared, max_wait: Duration) -> Option<bool> {
        match shared
            .coord
            .permit(shared.rule, shared.daily_quota, max_wait)
            .await
        {
            Ok(Permit::Go) => Some(true),
            Ok(Permit::At(wait)) => {
                // Reserved for this pod's send: nobody else takes it meanwhile.
                tokio::time::sleep(wait).await;
                Some(true)
            }
            Ok(Permit::TooFar) => Some(false),
            Ok(Permit::QuotaSpent) => {
                // Let the daily check that follows refuse it, with the reset time.
                self.local.exhaust_daily(SystemTime::now());
                Some(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "shared rate limit unavailable; limiting this pod alone");
                None
            }
        }
    }

    /// Waits for a send permit, at most `max_wait`. `false` when the wait ran out.
    pub async fn acquire(&self, max_wait: Duration) -> bool {
        if let Some(shared) = &self.shared
            && let Some(got) = self.acquire_shared(shared, max_wait).await
        {
            return got;
        }
        self.local.acquire(max_wait).await
    }

    /// Reserves one send from today's quota; `Err(midnight)` when it is spent.
    pub fn take_daily(&self, now: SystemTime) -> Result<(), SystemTime> {
        self.local.take_daily(now)
    }

    /// Returns a reservation WeChat did not count.
    pub fn give_back_daily(&self, now: SystemTime) {
        self.local.give_back_daily(now);
        if let Some(shared) = self.shared.as_ref().filter(|s| s.daily_quota > 0) {
            let coord = Arc::clone(&shared.coord);
            tokio::spawn(async move {
                if let Err(e) = coord.give_back_daily().await {
                    tracing::debug!(error = %e, "cannot give a send back to the shared quota");
                }
            });
        }
    }

    /// WeChat answered 45009: park until midnight Beijing time, which is returned.
    pub fn exhaust_daily(&self, now: SystemTime) -> SystemTime {
        let until = self.local.exhaust_daily(now);
        if let Some(shared) = &self.shared {
            let coord = Arc::clone(&shared.coord);
            tokio::spawn(async move {
                if let Err(e) = coord.exhaust_daily(until).await {
                    tracing::warn!(error = %e, "cannot pause the other pods for the daily quota");
                }
            });
        }
        until
    }

    /// When today's quota resets, if it is spent.
    pub fn daily_exhausted_until(&self, now: SystemTime) -> Option<SystemTime> {
        self.local.daily_exhausted_until(now)
    }
}
