//! The sandbox's configuration: WeChat's limits and timings (shortened for tests), the account's
//! users and templates, event delivery and the initial faults.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::faults::FaultConfig;
use super::tokens::TokenLimits;
use super::wecom::config::WeComConfig;

/// The defaults of [`SandboxConfig`] and [`EventConfig`]: WeChat's own numbers. The
/// binary's flags show and use the same values.
pub mod defaults {
    use wxpush_api::policy::HumanDuration;

    /// The account's appid.
    pub const APPID: &str = "wxsandbox00000000";
    /// The account's secret.
    pub const SECRET: &str = "sandboxsecret";
    /// The account's original id.
    pub const ACCOUNT_ID: &str = "gh_sandbox000000";
    /// Lifetime of every access_token.
    pub const TOKEN_EXPIRES_IN: HumanDuration = HumanDuration::secs(7200);
    /// How long a classic token keeps working after a newer one is issued.
    pub const CLASSIC_GRACE: HumanDuration = HumanDuration::mins(5);
    /// When the stable API renews its token.
    pub const STABLE_RENEW_BEFORE: HumanDuration = HumanDuration::mins(5);
    /// Classic token calls per day.
    pub const CLASSIC_DAILY_QUOTA: Option<u64> = Some(2000);
    /// Stable token calls per minute.
    pub const STABLE_MINUTE_QUOTA: Option<u64> = Some(10_000);
    /// Stable token calls per day.
    pub const STABLE_DAILY_QUOTA: Option<u64> = Some(500_000);
    /// `force_refresh: true` calls per day.
    pub const FORCE_REFRESH_DAILY_LIMIT: u32 = 20;
    /// Minimum time between two `force_refresh: true` calls.
    pub const FORCE_REFRESH_INTERVAL: HumanDuration = HumanDuration::secs(30);
    /// How long (`touser`, `client_msg_id`) de-duplicates.
    pub const DEDUP_WINDOW: HumanDuration = HumanDuration::mins(10);
    /// Sends per day, per send API.
    pub const DAILY_QUOTA: Option<u64> = Some(100_000);
    /// Sends per minute, per send API.
    pub const MINUTE_QUOTA: Option<u64> = None;
    /// Sends per minute to one openid.
    pub const OPENID_MINUTE_LIMIT: Option<u64> = None;
    /// The server-URL token of delivery events.
    pub const EVENT_TOKEN: &str = "sandboxtoken";
    /// Delay between a send's answer and its event.
    pub const EVENT_DELAY: HumanDuration = HumanDuration::secs(0);
    /// How long WeChat waits for the server's answer to an event.
    pub const EVENT_TIMEOUT: HumanDuration = HumanDuration::secs(5);
    /// How many times WeChat retries an event.
    pub const EVENT_RETRIES: u32 = 3;
}

/// How delivery events are encoded (WeChat's three server-URL modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EventMode {
    /// Plain XML, signed by `signature`.
    #[default]
    Plain,
    /// Plain XML plus an `<Encrypt>` element (WeChat's "compatible" mode).
    Compat,
    /// Only `<ToUserName>` and `<Encrypt>`; query carries `encrypt_type=aes` and `msg_signature`.
    Safe,
}

/// Where and how the sandbox POSTs TEMPLATESENDJOBFINISH events.
#[derive(Debug, Clone, Serialize)]
pub struct EventConfig {
    /// The account's server URL; no events are sent without one.
    pub url: Option<String>,
    /// The server-URL token used for `signature` / `msg_signature`.
    #[serde(skip)]
    pub token: String,
    /// The 43-character EncodingAESKey; required by `Compat` and `Safe` modes.
    #[serde(skip)]
    pub aes_key: Option<String>,
    /// Plain, compatible or safe mode.
    pub mode: EventMode,
    /// Share (0..=1) of events with `Status` = `failed:user block`.
    pub user_block_share: f64,
    /// Share (0..=1) of events with `Status` = `failed: system failed`.
    pub system_failed_share: f64,
    /// Delay between the send's answer and its event.
    pub delay: Duration,
    /// How long WeChat waits for the server's answer before it retries (5 s).
    pub timeout: Duration,
    /// How many times WeChat retries after a timeout, transport error or non-2xx answer (3).
    pub retries: u32,
    /// Send `MsgID` 0 in events for sends that carried a `client_msg_id` (unconfirmed WeChat
    /// behaviour; off by default).
    pub msgid_zero_with_client_msg_id: bool,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: defaults::EVENT_TOKEN.to_string(),
            aes_key: None,
            mode: EventMode::Plain,
            user_block_share: 0.0,
            system_failed_share: 0.0,
            delay: defaults::EVENT_DELAY.get(),
            timeout: defaults::EVENT_TIMEOUT.get(),
            retries: defaults::EVENT_RETRIES,
            msgid_zero_with_client_msg_id: false,
        }
    }
}

/// Everything the sandbox can be told at start-up. `Default` gives WeChat's own numbers and an
/// OS-chosen port on 127.0.0.1; tests override fields with struct-update syntax.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The account's appid.
    pub appid: String,
    /// The account's secret.
    #[serde(skip)]
    pub secret: String,
    /// The account's original id (`gh_…`), the events' `ToUserName`.
    pub account_id: String,
    /// Lifetime of every access_token (WeChat: 7200 s).
    pub token_expires_in: Duration,
    /// How long a classic token keeps working after a newer one is issued (WeChat: ~5 min).
    pub classic_grace: Duration,
    /// The stable API issues a new token when the current one has less than this left (WeChat:
    /// ~5 min); capped at half of `token_expires_in`.
    pub stable_renew_before: Duration,
    /// Classic token calls per day (WeChat: 2000, unconfirmed); `None` = unlimited.
    pub classic_daily_quota: Option<u64>,
    /// Stable token calls per minute (WeChat: 10,000).
    pub stable_minute_quota: Option<u64>,
    /// Stable token calls per day (WeChat: 500,000).
    pub stable_daily_quota: Option<u64>,
    /// `force_refresh: true` calls allowed per day (WeChat: 20).
    pub force_refresh_daily_limit: u32,
    /// Minimum time between two `force_refresh: true` calls (WeChat: 30 s).
    pub force_refresh_interval: Duration,
    /// How long (`touser`, `client_msg_id`) de-duplicates (WeChat: 10 min).
    pub dedup_window: Duration,
    /// Sends per day, per send API (WeChat: 100,000); `None` = unlimited.
    pub daily_quota: Option<u64>,
    /// Sends per minute, per send API; `None` (default) = unlimited.
    pub minute_quota: Option<u64>,
    /// Sends per minute to one openid before 43117; `None` (default) = unlimited.
    pub openid_minute_limit: Option<u64>,
    /// Known openids: when set, any other `touser` gets 40003. Non-followers and refused
    /// subscribers count as known.
    pub users: Option<HashSet<String>>,
    /// Openids that unfollowed the account: 43004 on template and bizsend sends.
    pub non_followers: HashSet<String>,
    /// Openids that refused subscription messages: 43101 on subscribe and bizsend sends.
    pub refused_subscribers: HashSet<String>,
    /// Known template ids: when set, any other `template_id` gets 40037.
    pub templates: Option<HashSet<String>>,
    /// The account's template catalogue (`--template-file`): the template-list APIs answer
    /// from it and sends are checked against it (docs/sandbox.md). `None`: empty lists, and
    /// sends are not checked against templates.
    pub template_defs: Option<Vec<super::templates::TemplateDef>>,
    /// The account's IP allowlist: when set, token calls from any other address get 40164
    /// (with the address in `errmsg`, as WeChat does). `None` (default): any address.
    pub ip_allowlist: Option<Vec<std::net::IpAddr>>,
    /// Delivery events.
    pub events: EventConfig,
    /// Faults active from the start (and restored by `POST /__reset`).
    pub faults: FaultConfig,
    /// WeCom: the corp, its apps and robots, and their windows.
    pub wecom: WeComConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            appid: defaults::APPID.to_string(),
            secret: defaults::SECRET.to_string(),
            account_id: defaults::ACCOUNT_ID.to_string(),
            token_expires_in: defaults::TOKEN_EXPIRES_IN.get(),
            classic_grace: defaults::CLASSIC_GRACE.get(),
            stable_renew_before: defaults::STABLE_RENEW_BEFORE.get(),
            classic_daily_quota: defaults::CLASSIC_DAILY_QUOTA,
            stable_minute_quota: defaults::STABLE_MINUTE_QUOTA,
            stable_daily_quota: defaults::STABLE_DAILY_QUOTA,
            force_refresh_daily_limit: defaults::FORCE_REFRESH_DAILY_LIMIT,
            force_refresh_interval: defaults::FORCE_REFRESH_INTERVAL.get(),
            dedup_window: defaults::DEDUP_WINDOW.get(),
            daily_quota: defaults::DAILY_QUOTA,
            minute_quota: defaults::MINUTE_QUOTA,
            openid_minute_limit: defaults::OPENID_MINUTE_LIMIT,
            users: None,
            non_followers: HashSet::new(),
            refused_subscribers: HashSet::new(),
            templates: None,
            template_defs: None,
            ip_allowlist: None,
            events: EventConfig::default(),
            faults: FaultConfig::default(),
            wecom: WeComConfig::default(),
        }
    }
}

impl SandboxConfig {
    /// A default config for this appid and secret.
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            appid: appid.into(),
            secret: secret.into(),
            ..Self::default()
        }
    }

    /// Whether a token call from `ip` passes the IP allowlist (always without one). An
    /// IPv4-mapped IPv6 peer counts as its IPv4 address.
    pub fn ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.ip_allowlist
            .as_ref()
            .is_none_or(|list| list.contains(&ip))
    }

    /// The timings and limits of the account's access_tokens.
    pub fn token_limits(&self) -> TokenLimits {
        TokenLimits {
            expires_in: self.token_expires_in,
            classic_grace: self.classic_grace,
            stable_renew_before: self.stable_renew_before,
            force_refresh_daily_limit: self.force_refresh_daily_limit,
            force_refresh_interval: self.force_refresh_interval,
        }
    }

    /// Whether `openid` belongs to the account (always true without a user list).
    pub fn knows_user(&self, openid: &str) -> bool {
        match &self.users {
            None => true,
            Some(users) => {
                users.contains(openid)
                    || self.non_followers.contains(openid)
                    || self.refused_subscribers.contains(openid)
            }
        }
    }
}

/// Parses a list flag: `a,b,c`, or `@PATH` to read a file of names separated by newlines or
/// commas (`#` starts a comment line).
pub fn parse_list(value: &str) -> Result<HashSet<String>, std::io::Error> {
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)?,
        None => value.to_string(),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_from_commas_and_files() -> Result<(), std::io::Error> {
        assert_eq!(parse_list(" a, b,,c ")?.len(), 3);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("users.txt");
        std::fs::write(&path, "# users\no1\no2,o3\n\n")?;
        let set = parse_list(&format!("@{}", path.display()))?;
        assert_eq!(set, ["o1", "o2", "o3"].map(String::from).into());
        assert!(parse_list("@/does/not/exist").is_err());
        Ok(())
    }

    #[test]
    fn non_followers_are_known_users() {
        let cfg = SandboxConfig {
            users: Some(["u1".to_string()].into()),
            non_followers: ["nf".to_string()].into(),
            ..SandboxConfig::default()
        };
        assert!(cfg.knows_user("u1") && cfg.knows_user("nf") && !cfg.knows_user("x"));
        assert!(SandboxConfig::default().knows_user("anyone"));
    }
}
