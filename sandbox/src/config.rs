//! The sandbox's configuration: WeChat's limits and timings (shortened for tests), the account's
//! users and templates, event delivery and the initial faults.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::faults::FaultConfig;
use super::wecom::config::WeComConfig;

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
            token: "sandboxtoken".to_string(),
            aes_key: None,
            mode: EventMode::Plain,
            user_block_share: 0.0,
            system_failed_share: 0.0,
            delay: Duration::ZERO,
            timeout: Duration::from_secs(5),
            retries: 3,
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
            appid: "wxsandbox00000000".to_string(),
            secret: "sandboxsecret".to_string(),
            account_id: "gh_sandbox000000".to_string(),
            token_expires_in: Duration::from_secs(7200),
            classic_grace: Duration::from_secs(300),
            stable_renew_before: Duration::from_secs(300),
            classic_daily_quota: Some(2000),
            stable_minute_quota: Some(10_000),
            stable_daily_quota: Some(500_000),
            force_refresh_daily_limit: 20,
            force_refresh_interval: Duration::from_secs(30),
            dedup_window: Duration::from_secs(600),
            daily_quota: Some(100_000),
            minute_quota: None,
            openid_minute_limit: None,
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
