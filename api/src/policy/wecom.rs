//! What each provider takes from a channel's configuration, defined once for the config file and
//! the `PushChannel`: its credentials, and the WeCom robot's rate.
//!
//! A WeChat channel needs `appId` and `appSecret`. A `wecomApp` channel needs `corpId`,
//! `corpSecret` and `agentId`. A `wecomRobot` channel needs `webhookKey` alone. A credential of
//! another provider is refused, naming the field, so that a half-edited channel is not read as
//! the wrong one.

use std::time::Duration;

use super::Provider;

/// One credential of a channel. The config file names it under `credentials` (`corpId`, with
/// `corpIdFile` for a file); the `PushChannel` names its Secret key under
/// `credentials.secretRef` (`corpIdKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The WeChat appid.
    AppId,
    /// The WeChat app secret.
    AppSecret,
    /// The WeCom corp id (`ww…`). It is also the receive id of WeCom's event envelopes.
    CorpId,
    /// The secret of the WeCom application (one token per corp and secret).
    CorpSecret,
    /// The WeCom application's agentid, a positive integer.
    AgentId,
    /// The key of a WeCom group robot's webhook URL.
    WebhookKey,
}

impl Credential {
    /// Every credential, in the order problems are reported.
    pub const ALL: [Self; 6] = [
        Self::AppId,
        Self::AppSecret,
        Self::CorpId,
        Self::CorpSecret,
        Self::AgentId,
        Self::WebhookKey,
    ];

    /// The field's camelCase name under `credentials`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AppId => "appId",
            Self::AppSecret => "appSecret",
            Self::CorpId => "corpId",
            Self::CorpSecret => "corpSecret",
            Self::AgentId => "agentId",
            Self::WebhookKey => "webhookKey",
        }
    }

    /// The environment variable that supplies it, when there is one.
    pub fn env(self) -> Option<&'static str> {
        match self {
            Self::AppId => Some("WXPUSH_APP_ID"),
            Self::AppSecret => Some("WXPUSH_APP_SECRET"),
            Self::CorpSecret => Some("WXPUSH_CORP_SECRET"),
            Self::WebhookKey => Some("WXPUSH_WEBHOOK_KEY"),
            Self::CorpId | Self::AgentId => None,
        }
    }

    /// Whether the value is a secret (never shown in `Debug` output).
    pub fn is_secret(self) -> bool {
        matches!(self, Self::AppSecret | Self::CorpSecret | Self::WebhookKey)
    }
}

impl Provider {
    /// The provider's name, as the `provider` field spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WechatOfficialAccount => "wechatOfficialAccount",
            Self::WechatMiniProgram => "wechatMiniProgram",
            Self::WecomApp => "wecomApp",
            Self::WecomRobot => "wecomRobot",
        }
    }

    /// The credentials a channel of this provider needs; any other is refused.
    pub fn credentials(self) -> &'static [Credential] {
        match self {
            Self::WechatOfficialAccount | Self::WechatMiniProgram => {
                &[Credential::AppId, Credential::AppSecret]
            }
            Self::WecomApp => &[
                Credential::CorpId,
                Credential::CorpSecret,
                Credential::AgentId,
            ],
            Self::WecomRobot => &[Credential::WebhookKey],
        }
    }

    /// Whether the provider can receive events (WeChat's server URL, WeCom's callback URL).
    /// A group robot has none.
    pub fn has_events(self) -> bool {
        !matches!(self, Self::WecomRobot)
    }
}

/// Checks an `agentId` value: WeCom's agentid is a positive integer.
pub fn parse_agent_id(value: &str) -> Result<u32, &'static str> {
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a positive integer (the application's AgentId)"),
    }
}

/// Most messages a WeCom group robot takes in any 60 s window.
pub const ROBOT_MESSAGES_PER_WINDOW: u32 = 20;

/// The window the robot's limit is kept in. WeCom counts 60 s; the pusher counts a little more,
/// so that a request that travels slower than the one before it still lands inside WeCom's
/// count.
pub const ROBOT_WINDOW: Duration = Duration::from_secs(61);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_names_its_own_credentials() {
        assert_eq!(
            Provider::WecomApp
                .credentials()
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>(),
            ["corpId", "corpSecret", "agentId"]
        );
        assert_eq!(Provider::WecomRobot.credentials(), [Credential::WebhookKey]);
        assert!(!Provider::WecomRobot.has_events());
        assert_eq!(Provider::WecomApp.as_str(), "wecomApp");
        let json = serde_json::to_string(&Provider::WecomRobot).expect("json");
        assert_eq!(json, "\"wecomRobot\"");
    }

    #[test]
    fn agent_ids_are_positive_integers() {
        assert_eq!(parse_agent_id("1000002"), Ok(1_000_002));
        assert!(parse_agent_id("0").is_err());
        assert!(parse_agent_id("abc").is_err());
        assert!(parse_agent_id("-3").is_err());
    }
}
