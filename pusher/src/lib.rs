//! wxpush's pusher: accepts WeChat messages over HTTP, stores them durably, and delivers them
//! to the WeChat API (or the bundled sandbox) reliably.
//!
//! - [`policy`]: the policy types shared with the operator's `PushChannel` resource.
//! - [`config`]: the pusher's config file.
//! - [`sandbox`]: a faithful stand-in for the WeChat API, used by tests, demos and benchmarks.

pub mod api;
pub mod callbacks;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dispatch;
pub mod events;
pub mod message;
pub mod metrics;
pub use wxpush_api::policy;
pub mod resilience;
pub mod server;
pub mod store;
pub mod wechat;
