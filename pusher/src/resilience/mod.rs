//! Resilience building blocks around the WeChat API: backoff with jitter, the circuit breaker,
//! rate limiting, the adaptive concurrency limit, and the observed latency (hedging, derived
//! timeouts). They decide; they do no I/O and record no metrics: their caller, the
//! engine in `wechat::sender` (and the dispatcher, for backoff), acts and records. Below them
//! sits only `policy`. One part runs on its own: [`lag`]'s probe, a timer task that measures how
//! late the pusher's runtime runs, for the adaptive limit.

pub mod adaptive;
pub mod backoff;
pub mod breaker;
pub mod lag;
pub mod latency;
pub mod ratelimit;
