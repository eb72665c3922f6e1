//! A faithful, fast stand-in for the WeChat API (`wxpush-sandbox`), used by tests, demos and
//! benchmarks. It follows `docs/wechat-api.md`; see `docs/sandbox.md` for the full story.
//!
//! Start one from a test on a port the OS picks:
//! ```no_run
//! # async fn demo() -> Result<(), wxpush_sandbox::SandboxError> {
//! use std::time::Duration;
//! use wxpush_sandbox::{Sandbox, SandboxConfig};
//! let sandbox = Sandbox::start(SandboxConfig {
//!     token_expires_in: Duration::from_secs(2),
//!     dedup_window: Duration::from_millis(500),
//!     ..SandboxConfig::new("wxappid", "secret")
//! })
//! .await?;
//! let base_url = sandbox.base_url(); // point the pusher's apiBaseUrl here
//! # let _ = base_url;
//! assert_eq!(sandbox.stats().delivered_unique, 0);
//! # Ok(()) }
//! ```
//!
//! Modules, one job each: [`tokens`] (classic and stable access_token), [`messages`] (send
//! validation, quotas, de-duplication), [`validate`] (subscribe data rules), [`templates`] (the account's template catalogue,
//! consents and recorded deliveries), [`events`]
//! (TEMPLATESENDJOBFINISH delivery), [`faults`] (what to inject), [`stats`] (counters),
//! [`quota`] (calendar-window counters), [`wecom`] (WeCom's token, message, recall, robot
//! and callback APIs), and the private HTTP side:
//! `state` (what the handlers share), `api` (WeChat routes), `admin` (`/__` routes),
//! `wecom_api` (WeCom routes), `wecom_admin` (`/__wecom/…` routes), `net` (outages and resets),
//! `server` (start, stop, router).

mod admin;
mod api;
pub mod config;
pub mod events;
pub mod faults;
pub mod messages;
mod net;
mod post;
pub mod quota;
mod server;
mod state;
pub mod stats;
pub mod templates;
pub mod tokens;
pub mod validate;
pub mod wecom;
mod wecom_admin;
mod wecom_api;

pub use config::{EventConfig, EventMode, SandboxConfig, parse_list};
pub use faults::{FaultConfig, FaultConfigError, OutageSpec};
pub use server::{Sandbox, SandboxError, SandboxHandle};
pub use stats::{EventCounts, OpenidCounts, StatsSnapshot, TokenCounts};
pub use templates::{Delivery, TemplateDef, TemplateKind};
pub use wecom::config::{WeComApp, WeComCallbackConfig, WeComConfig};
pub use wecom::events::{Delivered, Verification, WeComEvent};
pub use wecom::recall::SentMessage;
pub use wecom::stats::WeComSnapshot;
/// WeChat's errcodes: the one table the sandbox answers with and the pusher classifies by.
pub use wxcrypto::errcode::WxCode;
