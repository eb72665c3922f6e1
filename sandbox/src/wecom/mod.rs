//! WeCom (企业微信), served on the same port as the WeChat routes: `gettoken` (one token per
//! app), `message/send` (application messages with partial failures and the duplicate
//! check), `message/recall`, group robots (`webhook/send`) and the callback URL (verification
//! and contact-change events). See `docs/sandbox.md` for what is faithful and what is not.
//!
//! Modules, one job each: [`config`] (corp, apps, robots, windows), [`tokens`], [`content`]
//! (message content rules), [`directory`] (who is a valid recipient), [`messages`]
//! (`message/send`), [`recall`] (the sent messages and their recall), [`robot`] (webhook
//! sends and their window), [`events`] (the callback URL), [`stats`] (the counters), and the
//! private HTTP side: `api` (WeCom routes) and `admin` (`/__wecom/…`).

pub(crate) mod admin;
pub(crate) mod api;
pub mod config;
pub mod content;
pub mod directory;
pub mod events;
pub mod messages;
pub mod recall;
pub mod robot;
pub mod stats;
pub mod tokens;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use self::config::WeComConfig;
use self::directory::Directory;
use self::events::{Callback, CallbackError};
use self::messages::AppMessages;
use self::recall::SentLog;
use self::robot::Robots;
use self::tokens::WeComTokens;

/// Everything the WeCom routes keep between calls.
#[derive(Debug)]
pub(crate) struct WeCom {
    pub(crate) tokens: WeComTokens,
    pub(crate) messages: AppMessages,
    pub(crate) directory: Directory,
    pub(crate) sent: SentLog,
    pub(crate) robots: Robots,
    pub(crate) callback: Callback,
}

impl WeCom {
    /// Empty state for `cfg`; tokens live `token_lifetime`.
    pub(crate) fn new(
        cfg: &WeComConfig,
        token_lifetime: std::time::Duration,
        stats: Arc<crate::stats::Stats>,
        shutdown: CancellationToken,
    ) -> Result<Self, CallbackError> {
        Ok(Self {
            tokens: WeComTokens::new(token_lifetime),
            messages: AppMessages::default(),
            directory: Directory::default(),
            sent: SentLog::new(cfg.recall_window),
            robots: Robots::new(cfg.robot_limit, cfg.robot_window),
            callback: Callback::new(cfg, stats, shutdown)?,
        })
    }

    /// Back to the start-up state.
    pub(crate) fn reset(&self) {
        self.tokens.reset();
        self.messages.reset();
        self.directory.reset();
        self.sent.reset();
        self.robots.reset();
    }
}
