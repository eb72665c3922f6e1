//! wxpush's pusher: accepts WeChat messages over HTTP, stores them durably, and delivers them
//! to the WeChat API reliably. `docs/architecture.md` draws a message's path through these
//! modules; from the bottom up (the layers of the table there, which
//! `scripts/check-module-cycles.py` checks):
//!
//! - [`policy`] and [`config`]: the policy types and config file (types from `wxpush-api`;
//!   [`config`] adds reading files and secrets); [`clock`]: the dispatcher's wall clock (movable
//!   in debug builds for tests) and WeChat's de-duplication window; [`ratelog`]: rate-limited
//!   error lines; [`secrets`]: secrets that follow their files.
//! - [`send`]: the vocabulary of one attempt and the [`send::Sender`] trait of a provider;
//!   [`message`]: a message, its validation, record and status.
//! - [`providers`]: one module per `provider` (wire protocol, errcode table);
//!   [`resilience`]: backoff, breaker and rate limit, pure decisions;
//!   [`metrics`]: the Prometheus registry.
//! - [`store`]: the durable queue; [`coord`]: what the pods of a channel share (token, rate,
//!   quota, pauses), in memory or in Redis.
//! - [`wechat`]: the engine that performs one attempt (HTTP client, tokens, breaker, limits);
//!   [`dispatch`]: leases, attempts and the next state; [`templates`]: the account's template
//!   lists; [`callbacks`] and [`events`]: outcome callbacks to producers and WeChat's delivery
//!   events.
//! - [`api`]: the HTTP API; [`preflight`]: every secret read and checked, for `serve` and
//!   `check-config` alike; [`wiring`]: assembles all of it into one running pusher.
//! - `demo` (feature `demo`): the WeChat sandbox and a pusher in one process.
//! - `fuzzing` (feature `fuzzing`): the entry points of the fuzz targets (`fuzz/`) and their
//!   regression replays (`tests/tests/fuzz_regressions.rs`).

pub mod api;
pub mod calendar;
pub mod callbacks;
pub mod clock;
pub mod config;
pub mod coord;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dispatch;
pub mod error_code;
pub mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod message;
pub mod metrics;
pub mod preflight;
pub mod ratelog;
pub use wxpush_api::policy;
pub mod providers;
pub mod resilience;
pub mod secrets;
pub mod send;
pub mod store;
pub mod templates;
pub mod wechat;
pub mod wiring;
