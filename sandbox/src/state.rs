//! What every handler of the sandbox shares: the account's tokens, messages, quotas, faults and
//! counters, and the operations on them that both the WeChat routes (`api`) and the admin routes
//! (`admin`) call. It sits below both and below `server`, which builds it.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::config::SandboxConfig;
use super::events::Events;
use super::faults::{FaultConfig, FaultConfigError, FaultState};
use super::messages::Messages;
use super::net::NetControl;
use super::quota::WindowCounter;
use super::stats::{FaultKind, Stats};
use super::templates::Templates;
use super::tokens::TokenStore;
use super::wecom::WeCom;

/// Token-endpoint call counters.
#[derive(Debug, Default)]
pub(crate) struct TokenQuota {
    pub(crate) classic_daily: WindowCounter,
    pub(crate) stable_minute: WindowCounter,
    pub(crate) stable_daily: WindowCounter,
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) cfg: SandboxConfig,
    pub(crate) tokens: TokenStore,
    pub(crate) token_quota: TokenQuota,
    pub(crate) messages: Messages,
    pub(crate) templates: Templates,
    pub(crate) stats: Arc<Stats>,
    pub(crate) faults: FaultState,
    pub(crate) events: Arc<Events>,
    pub(crate) net: Arc<NetControl>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) wecom: WeCom,
}

/// The state as handlers hold it.
pub(crate) type Shared = Arc<State>;

impl State {
    /// Applies a forced token invalidation if one is due.
    pub(crate) fn maybe_invalidate(&self, now: Instant) {
        if self.faults.take_due_invalidation(now) {
            self.tokens.revoke_all(now);
            self.wecom.tokens.revoke_all(now);
            self.stats.fault(FaultKind::TokenInvalidation);
            tracing::info!("fault: every access_token invalidated");
        }
    }

    /// Revokes every token now, WeChat's and WeCom's; returns how many were live.
    pub(crate) fn invalidate_tokens(&self) -> usize {
        self.stats.fault(FaultKind::TokenInvalidation);
        let now = Instant::now();
        self.tokens.revoke_all(now) + self.wecom.tokens.revoke_all(now)
    }

    /// Validates and applies a fault config; schedules its outage when `schedule_outage`.
    pub(crate) fn apply_faults(
        &self,
        cfg: FaultConfig,
        schedule_outage: bool,
    ) -> Result<(), FaultConfigError> {
        cfg.validate()?;
        if schedule_outage {
            let window = cfg.outage.map(|o| {
                let from = tokio::time::Instant::now() + o.after;
                (from, from + o.duration)
            });
            self.net.schedule_outage(window);
        }
        tracing::info!(faults = ?cfg, "faults applied");
        self.faults.set(cfg);
        Ok(())
    }

    /// Back to the start-up state (message ids keep increasing so they stay unique).
    pub(crate) fn reset(&self) {
        self.stats.reset();
        self.tokens.reset();
        self.messages.reset();
        self.templates.reset();
        self.wecom.reset();
        self.token_quota.classic_daily.reset();
        self.token_quota.stable_minute.reset();
        self.token_quota.stable_daily.reset();
        self.net.schedule_outage(None);
        self.faults.restart(self.cfg.faults.clone());
        if let Some(o) = self.cfg.faults.outage {
            let from = tokio::time::Instant::now() + o.after;
            self.net.schedule_outage(Some((from, from + o.duration)));
        }
    }
}
