//! Resilience building blocks around the WeChat API: backoff with jitter, the circuit breaker,
//! and rate limiting. They decide; they do no I/O and record no metrics: their caller, the
//! engine in `wechat::sender` (and the dispatcher, for backoff), acts and records. Below them
//! sits only `policy`.

pub mod backoff;
pub mod breaker;
pub mod ratelimit;
