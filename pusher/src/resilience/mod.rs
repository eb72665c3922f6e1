//! Resilience building blocks around the WeChat API: backoff with jitter, the circuit breaker,
//! and rate limiting.

pub mod backoff;
pub mod breaker;
pub mod ratelimit;
