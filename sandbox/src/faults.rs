//! Fault injection: what can go wrong between the pusher and WeChat, on demand.
//!
//! A [`FaultConfig`] is set at start-up (flags) and replaced or patched at run time through
//! `PUT`/`PATCH /__faults`. Per request, one uniform draw picks at most one of: connection reset,
//! HTTP 5xx, hang, or an injected errcode (in that order of precedence, each taking its share of
//! the unit interval); latency applies on top. Outages and forced token invalidation are
//! scheduled by the server and the token store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use wxcrypto::errcode::WxCode;
use wxcrypto::errcode::wecom::WeComCode;
use wxpush_api::policy::HumanDuration;

/// Serde for `Duration` as a human string ("250ms", "5s"): the config file's grammar,
/// [`HumanDuration`].
pub mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};
    use wxpush_api::policy::HumanDuration;

    /// Writes `d` as a human string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&HumanDuration(*d))
    }

    /// Reads a human string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        HumanDuration::deserialize(d).map(HumanDuration::get)
    }

    /// The same for `Option<Duration>` (`null` or absent = none).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};
        use wxpush_api::policy::HumanDuration;

        /// Writes `Some(d)` as a human string, `None` as null.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&HumanDuration(*d)),
                None => s.serialize_none(),
            }
        }

        /// Reads null or a human string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<HumanDuration>::deserialize(d).map(|d| d.map(HumanDuration::get))
        }
    }
}

/// A window during which the sandbox refuses connections: its listener is closed and open
/// connections are dropped, so clients see "connection refused" as with a real outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageSpec {
    /// How long after the faults are applied the outage starts.
    #[serde(default, with = "human_duration")]
    pub after: Duration,
    /// How long it lasts.
    #[serde(with = "human_duration")]
    pub duration: Duration,
}

/// Every fault the sandbox can inject. The default injects nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fixed delay added to every API request (WeChat and WeCom routes).
    #[serde(with = "human_duration")]
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per request.
    #[serde(with = "human_duration")]
    pub jitter: Duration,
    /// Share (0..=1) of requests answered only after `hang` (processed first, so a client that
    /// times out does not know the message was delivered).
    pub hang_share: f64,
    /// How long a hanging request hangs.
    #[serde(with = "human_duration")]
    pub hang: Duration,
    /// Share of message sends answered with an errcode, by errcode (-1, 45009, 45011, 43117, or
    /// any code in the sandbox's WeChat or WeCom table), before any processing. A code applies
    /// to the sends of the API whose table has it (WeChat's sends, or WeCom's `message/send`
    /// and `webhook/send`); other sends pass.
    pub errcodes: BTreeMap<i64, f64>,
    /// Share of requests answered with HTTP `http_5xx_status` before any processing.
    pub http_5xx_share: f64,
    /// The status code for `http_5xx_share` (500..=599).
    pub http_5xx_status: u16,
    /// Share of requests whose connection is reset (TCP RST) instead of answered, before any
    /// processing.
    pub reset_share: f64,
    /// An outage window (connections refused), scheduled when the faults are applied.
    pub outage: Option<OutageSpec>,
    /// Revoke every access_token (classic and stable) this often; sends then get 40001.
    #[serde(with = "human_duration::option")]
    pub token_invalidate_every: Option<Duration>,
    /// Overload mode: API requests (WeChat and WeCom) served at once without slowing down
    /// (`None` = unlimited). Each request that arrives while `n` requests are already in
    /// flight, `n` at or above the capacity, waits `(n + 1 - capacity) ×
    /// overload_latency_per_request` more.
    pub capacity: Option<u32>,
    /// The added latency per request in flight beyond `capacity`.
    #[serde(with = "human_duration")]
    pub overload_latency_per_request: Duration,
}

/// How long hanging requests hang, by default.
pub const DEFAULT_HANG: HumanDuration = HumanDuration::secs(30);
/// The status of injected 5xx answers, by default.
pub const DEFAULT_5XX_STATUS: u16 = 502;
/// The latency added per request beyond the capacity, by default.
pub const DEFAULT_OVERLOAD_LATENCY: HumanDuration = HumanDuration::micros(250);

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            hang_share: 0.0,
            hang: DEFAULT_HANG.get(),
            errcodes: BTreeMap::new(),
            http_5xx_share: 0.0,
            http_5xx_status: DEFAULT_5XX_STATUS,
            reset_share: 0.0,
            outage: None,
            token_invalidate_every: None,
            capacity: None,
            overload_latency_per_request: DEFAULT_OVERLOAD_LATENCY.get(),
        }
    }
}

/// Why a fault config was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultConfigError {
    /// A share is outside 0..=1 (or not a number).
    #[error("{field} must be between 0 and 1, got {value}")]
    Share {
        /// Which field.
        field: String,
        /// The value given.
        value: f64,
    },
    /// An errcode the sandbox does not know.
    #[error("unknown errcode {0}")]
    UnknownErrcode(i64),
    /// `http_5xx_status` is not a 5xx.
    #[error("http_5xx_status must be 500..=599, got {0}")]
    Status(u16),
    /// A zero token invalidation period.
    #[error("token_invalidate_every must be positive")]
    ZeroPeriod,
    /// A zero capacity.
    #[error("capacity must be positive")]
    ZeroCapacity,
}

impl FaultConfig {
    /// Checks shares, codes and periods.
    pub fn validate(&self) -> Result<(), FaultConfigError> {
        let share = |field: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(FaultConfigError::Share {
                    field: field.to_string(),
                    value,
                })
            }
        };
        share("hang_share", self.hang_share)?;
        share("http_5xx_share", self.http_5xx_share)?;
        share("reset_share", self.reset_share)?;
        for (code, s) in &self.errcodes {
            let known = WxCode::from_code(*code).is_some() || WeComCode::from_code(*code).is_some();
            if !known || *code == 0 {
                return Err(FaultConfigError::UnknownErrcode(*code));
            }
            share(&format!("errcodes[{code}]"), *s)?;
        }
        if !(500..=599).contains(&self.http_5xx_status) {
            return Err(FaultConfigError::Status(self.http_5xx_status));
        }
        if self.token_invalidate_every == Some(Duration::ZERO) {
            return Err(FaultConfigError::ZeroPeriod);
        }
        if self.capacity == Some(0) {
            return Err(FaultConfigError::ZeroCapacity);
        }
        Ok(())
    }

    fn is_noop(&self) -> bool {
        self.latency.is_zero()
            && self.jitter.is_zero()
            && self.hang_share <= 0.0
            && self.errcodes.values().all(|s| *s <= 0.0)
            && self.http_5xx_share <= 0.0
            && self.reset_share <= 0.0
            && self.capacity.is_none()
    }
}

/// What to do with one request, decided by [`FaultState::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Process normally.
    Pass,
    /// Reset the connection.
    Reset,
    /// Answer with this HTTP status.
    Http(u16),
    /// Process, then hold the answer this long.
    Hang(Duration),
    /// Answer with this errcode (sends only; other endpoints pass), if the route's API has it.
    Errcode(i64),
}

/// The live fault configuration, cheap to consult on every request.
#[derive(Debug)]
pub struct FaultState {
    config: RwLock<Arc<FaultConfig>>,
    /// False when the config injects no per-request fault: the hot path skips the lock.
    active: AtomicBool,
    /// Next forced token invalidation, in ms since `base` (0 = none).
    next_invalidation_ms: AtomicU64,
    base: Instant,
    /// API requests in flight (counted whether or not overload mode is on).
    in_flight: Arc<AtomicU64>,
}

/// One request counted in flight; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicU64>,
    /// Requests in flight when this one arrived (itself not included).
    pub ahead: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FaultState {
    /// A state holding `config` (validated by the caller).
    pub fn new(config: FaultConfig) -> Self {
        let state = Self {
            config: RwLock::new(Arc::new(FaultConfig::default())),
            active: AtomicBool::new(false),
            next_invalidation_ms: AtomicU64::new(0),
            base: Instant::now(),
            in_flight: Arc::new(AtomicU64::new(0)),
        };
        state.set(config);
        state
    }

    /// The current config.
    pub fn get(&self) -> Arc<FaultConfig> {
        self.config.read().clone()
    }

    /// Replaces the config. The token invalidation schedule restarts only when its period
    /// changes, so patching another field does not postpone it.
    pub fn set(&self, config: FaultConfig) {
        self.active.store(!config.is_noop(), Ordering::Release);
        let mut current = self.config.write();
        if current.token_invalidate_every != config.token_invalidate_every
            || self.next_invalidation_ms.load(Ordering::Acquire) == 0
        {
            let next = config
                .token_invalidate_every
                .map(|every| self.ms_since_base(Instant::now() + every).max(1))
                .unwrap_or(0);
            self.next_invalidation_ms.store(next, Ordering::Release);
        }
        *current = Arc::new(config);
    }

    /// Replaces the config and restarts the token invalidation schedule from now.
    pub fn restart(&self, config: FaultConfig) {
        self.next_invalidation_ms.store(0, Ordering::Release);
        self.set(config);
    }

    fn ms_since_base(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a forced token invalidation is due at `now`; if so, schedules the next one.
    /// Exactly one caller sees `true` per due period.
    pub fn take_due_invalidation(&self, now: Instant) -> bool {
        let due = self.next_invalidation_ms.load(Ordering::Acquire);
        if due == 0 {
            return false;
        }
        let now_ms = self.ms_since_base(now);
        if now_ms < due {
            return false;
        }
        let Some(every) = self.config.read().token_invalidate_every else {
            return false;
        };
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        // Skip missed periods rather than firing a burst of invalidations.
        let next = due + ((now_ms - due) / every_ms + 1) * every_ms;
        self.next_invalidation_ms
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts one API request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlight {
        let ahead = self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            counter: Arc::clone(&self.in_flight),
            ahead,
        }
    }

    /// API requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The overload latency of a request that found `ahead` requests in flight: zero up to the
    /// capacity, then `overload_latency_per_request` for each request beyond it (this one
    /// included).
    pub fn overload_latency(&self, ahead: u64) -> Duration {
        if !self.active.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let cfg = self.config.read();
        overload_latency(cfg.capacity, cfg.overload_latency_per_request, ahead)
    }

    /// Latency to add to this request (zero when none is configured).
    pub fn latency(&self) -> Duration {
        if !self.active.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let cfg = self.config.read();
        if cfg.jitter.is_zero() {
            return cfg.latency;
        }
        cfg.latency + cfg.jitter.mul_f64(rand::random::<f64>())
    }

    /// Rolls the dice for one request; `send` says whether errcode faults apply.
    pub fn decide(&self, send: bool) -> Decision {
        if !self.active.load(Ordering::Acquire) {
            return Decision::Pass;
        }
        let cfg = self.config.read();
        let roll: f64 = rand::random();
        let mut edge = cfg.reset_share;
        if roll < edge {
            return Decision::Reset;
        }
        edge += cfg.http_5xx_share;
        if roll < edge {
            return Decision::Http(cfg.http_5xx_status);
        }
        edge += cfg.hang_share;
        if roll < edge {
            return Decision::Hang(cfg.hang);
        }
        if send {
            for (code, share) in &cfg.errcodes {
                edge += share;
                if roll < edge {
                    return Decision::Errcode(*code);
                }
            }
        }
        Decision::Pass
    }
}

/// The pure rule behind [`FaultState::overload_latency`].
pub fn overload_latency(capacity: Option<u32>, per_request: Duration, ahead: u64) -> Duration {
    match capacity {
        Some(cap) if ahead >= u64::from(cap) => {
            let beyond = u32::try_from(ahead + 1 - u64::from(cap)).unwrap_or(u32::MAX);
            per_request.saturating_mul(beyond)
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_adds_latency_per_request_beyond_capacity() {
        let per = Duration::from_millis(1);
        assert_eq!(overload_latency(None, per, 1000), Duration::ZERO);
        assert_eq!(overload_latency(Some(32), per, 0), Duration::ZERO);
        assert_eq!(overload_latency(Some(32), per, 31), Duration::ZERO);
        assert_eq!(overload_latency(Some(32), per, 32), per);
        assert_eq!(overload_latency(Some(32), per, 41), per * 10);
        let s = FaultState::new(FaultConfig {
            capacity: Some(2),
            overload_latency_per_request: per,
            ..FaultConfig::default()
        });
        let a = s.enter();
        let b = s.enter();
        let c = s.enter();
        assert_eq!((a.ahead, b.ahead, c.ahead, s.in_flight()), (0, 1, 2, 3));
        assert_eq!(s.overload_latency(a.ahead), Duration::ZERO);
        assert_eq!(s.overload_latency(c.ahead), per);
        drop((a, b, c));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(
            FaultConfig {
                capacity: Some(0),
                ..FaultConfig::default()
            }
            .validate(),
            Err(FaultConfigError::ZeroCapacity)
        );
        let parsed: FaultConfig =
            serde_json::from_str(r#"{"capacity":32,"overload_latency_per_request":"500us"}"#)
                .expect("overload JSON");
        assert_eq!(parsed.capacity, Some(32));
        assert_eq!(
            parsed.overload_latency_per_request,
            Duration::from_micros(500)
        );
    }

    #[test]
    fn parses_human_json_and_validates() {
        let cfg: FaultConfig = serde_json::from_str(
            r#"{"latency":"5ms","errcodes":{"-1":0.5,"45011":0.25},"outage":{"duration":"2s"},
                "token_invalidate_every":"1s"}"#,
        )
        .expect("valid fault JSON");
        assert_eq!(cfg.latency, Duration::from_millis(5));
        assert_eq!(cfg.errcodes.get(&-1), Some(&0.5));
        assert_eq!(cfg.outage.map(|o| o.after), Some(Duration::ZERO));
        assert_eq!(cfg.validate(), Ok(()));
        let bad = FaultConfig {
            reset_share: 1.5,
            ..FaultConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = FaultConfig {
            errcodes: [(12, 0.1)].into(),
            ..FaultConfig::default()
        };
        assert_eq!(bad.validate(), Err(FaultConfigError::UnknownErrcode(12)));
        assert!(serde_json::from_str::<FaultConfig>(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn certain_shares_always_fire_in_precedence_order() {
        let s = FaultState::new(FaultConfig {
            errcodes: [(-1, 1.0)].into(),
            ..FaultConfig::default()
        });
        assert_eq!(s.decide(true), Decision::Errcode(-1));
        assert_eq!(s.decide(false), Decision::Pass);
        s.set(FaultConfig {
            reset_share: 1.0,
            http_5xx_share: 1.0,
            ..FaultConfig::default()
        });
        assert_eq!(s.decide(true), Decision::Reset);
        s.set(FaultConfig::default());
        assert_eq!(s.decide(true), Decision::Pass);
    }

    #[test]
    fn invalidation_fires_once_per_period() {
        let s = FaultState::new(FaultConfig {
            token_invalidate_every: Some(Duration::from_millis(100)),
            ..FaultConfig::default()
        });
        let now = Instant::now();
        assert!(!s.take_due_invalidation(now));
        let later = now + Duration::from_millis(150);
        assert!(s.take_due_invalidation(later));
        assert!(!s.take_due_invalidation(later));
        assert!(s.take_due_invalidation(later + Duration::from_millis(100)));
    }
}
