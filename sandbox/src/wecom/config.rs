//! The WeCom part of the sandbox's configuration: the corp, its apps, its group robots, the
//! limits and windows (shortened for tests), and the callback URL events go to.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use wxpush_api::policy::HumanDuration;

/// One self-built app of the corp (应用): its agentid and secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeComApp {
    /// The app's `agentid`.
    pub agentid: u64,
    /// The app's secret (`corpsecret` of `gettoken`).
    #[serde(skip)]
    pub secret: String,
}

impl WeComApp {
    /// An app with this agentid and secret.
    pub fn new(agentid: u64, secret: impl Into<String>) -> Self {
        Self {
            agentid,
            secret: secret.into(),
        }
    }
}

/// Where and how the sandbox calls the corp's callback URL (接收消息服务器).
#[derive(Debug, Clone, Serialize)]
pub struct WeComCallbackConfig {
    /// The callback URL; no events and no verification without one.
    pub url: Option<String>,
    /// The callback Token used for `msg_signature`.
    #[serde(skip)]
    pub token: String,
    /// The 43-character EncodingAESKey; WeCom callbacks are always encrypted.
    #[serde(skip)]
    pub aes_key: String,
    /// How long the sandbox waits for the server's answer before it retries (WeCom: 5 s).
    pub timeout: Duration,
    /// How many times an event is retried after a timeout, transport error or non-2xx (3).
    pub retries: u32,
}

impl Default for WeComCallbackConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: DEFAULT_CALLBACK_TOKEN.to_string(),
            aes_key: DEFAULT_AES_KEY.to_string(),
            timeout: DEFAULT_CALLBACK_TIMEOUT.get(),
            retries: DEFAULT_CALLBACK_RETRIES,
        }
    }
}

/// The default Token of the callback.
pub const DEFAULT_CALLBACK_TOKEN: &str = "wecomtoken";
/// How long the callback's answer is awaited before a retry, by default.
pub const DEFAULT_CALLBACK_TIMEOUT: HumanDuration = HumanDuration::secs(5);
/// Retries of a callback event, by default.
pub const DEFAULT_CALLBACK_RETRIES: u32 = 3;
/// The default corp id.
pub const DEFAULT_CORP_ID: &str = "wwcorp";
/// The default app of the corp, `AGENTID=SECRET`.
pub const DEFAULT_APP: &str = "1000002=wecom-secret";
/// The default group robot's webhook key.
pub const DEFAULT_ROBOT_KEY: &str = "robot-key";
/// How long after a send message/recall still works, by default.
pub const DEFAULT_RECALL_WINDOW: HumanDuration = HumanDuration::hours(24);
/// Messages per robot key in a window, by default.
pub const DEFAULT_ROBOT_LIMIT: u32 = 20;
/// The robots' sliding window, by default.
pub const DEFAULT_ROBOT_WINDOW: HumanDuration = HumanDuration::secs(60);

/// The default EncodingAESKey of the callback (43 base64 characters; for tests only).
pub const DEFAULT_AES_KEY: &str = "wecomSandboxEncodingAesKey0123456789abcdefg";

/// Everything WeCom-specific the sandbox can be told at start-up. `Default` gives a corp that
/// works with no flags: corp `wwcorp`, app 1000002 with secret `wecom-secret`, robot key
/// `robot-key`, and WeCom's own limits.
#[derive(Debug, Clone, Serialize)]
pub struct WeComConfig {
    /// The corp id (`corpid` of `gettoken`; the receive id of callbacks).
    pub corp_id: String,
    /// The corp's apps. Token lifetimes follow `SandboxConfig::token_expires_in`.
    pub apps: Vec<WeComApp>,
    /// The group robots' webhook keys.
    #[serde(skip)]
    pub robot_keys: Vec<String>,
    /// The apps' trusted IP list: when set, `gettoken`, `message/send` and `message/recall`
    /// from any other address get 60020. `None` (default): any address.
    pub trusted_ips: Option<Vec<IpAddr>>,
    /// How long after a send `message/recall` still works (WeCom: 24 h).
    pub recall_window: Duration,
    /// Messages one robot key may send in any `robot_window` (WeCom: 20).
    pub robot_limit: u32,
    /// The robots' sliding window (WeCom: 60 s).
    pub robot_window: Duration,
    /// The callback URL.
    pub callback: WeComCallbackConfig,
}

impl Default for WeComConfig {
    fn default() -> Self {
        Self {
            corp_id: DEFAULT_CORP_ID.to_string(),
            apps: parse_app(DEFAULT_APP).into_iter().collect(),
            robot_keys: vec![DEFAULT_ROBOT_KEY.to_string()],
            trusted_ips: None,
            recall_window: DEFAULT_RECALL_WINDOW.get(),
            robot_limit: DEFAULT_ROBOT_LIMIT,
            robot_window: DEFAULT_ROBOT_WINDOW.get(),
            callback: WeComCallbackConfig::default(),
        }
    }
}

impl WeComConfig {
    /// The app whose secret this is.
    pub fn app_by_secret(&self, secret: &str) -> Option<&WeComApp> {
        self.apps.iter().find(|a| a.secret == secret)
    }

    /// Whether `ip` may call the apps' APIs (always without a trusted list). An IPv4-mapped
    /// IPv6 peer counts as its IPv4 address.
    pub fn ip_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.trusted_ips
            .as_ref()
            .is_none_or(|list| list.contains(&ip))
    }

    /// Whether `key` is a robot's webhook key.
    pub fn knows_robot(&self, key: &str) -> bool {
        self.robot_keys.iter().any(|k| k == key)
    }
}

/// Parses `AGENTID=SECRET` (the `--wecom-app` flag).
pub fn parse_app(value: &str) -> Result<WeComApp, String> {
    let (agentid, secret) = value
        .split_once('=')
        .ok_or("expected AGENTID=SECRET, e.g. 1000002=wecom-secret")?;
    let agentid = agentid
        .trim()
        .parse()
        .map_err(|e| format!("agentid: {e}"))?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err("the secret is empty".to_string());
    }
    Ok(WeComApp::new(agentid, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_flags() {
        let cfg = WeComConfig::default();
        assert_eq!(
            cfg.app_by_secret("wecom-secret").map(|a| a.agentid),
            Some(1_000_002)
        );
        assert!(cfg.app_by_secret("nope").is_none());
        assert!(cfg.knows_robot("robot-key") && !cfg.knows_robot("x"));
        assert!(cfg.ip_trusted("10.1.2.3".parse().expect("an IP")));
        assert!(wxcrypto::Cipher::new(&cfg.callback.aes_key, cfg.corp_id.clone()).is_ok());
    }

    #[test]
    fn trusted_ips_and_app_flags() {
        let cfg = WeComConfig {
            trusted_ips: Some(vec!["127.0.0.1".parse().expect("an IP")]),
            ..WeComConfig::default()
        };
        assert!(cfg.ip_trusted("::ffff:127.0.0.1".parse().expect("an IP")));
        assert!(!cfg.ip_trusted("127.0.0.2".parse().expect("an IP")));
        assert_eq!(parse_app(" 7 = s "), Ok(WeComApp::new(7, "s")));
        assert!(parse_app("7").is_err());
        assert!(parse_app("x=s").is_err());
        assert!(parse_app("7=").is_err());
    }
}
