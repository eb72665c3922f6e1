//! One module per kind the `provider` field names, each a [`Sender`]: the wire protocol of that
//! provider (token scope, request building, reading the answer, errcode classification, the
//! messages it accepts). [`sender_for`] is the one place the field selects a module.
//! [`errcode`] is WeChat's errcode table and [`wecom_errcode`] WeCom's, pure functions that the
//! providers and the token manager use. The engine that drives any of them, with the HTTP
//! client, tokens, breaker and rate limit, is `wechat::WeChatSender`; the dispatcher above it
//! never names a provider.

#[cfg(feature = "demo")]
pub mod demo;
pub mod errcode;
mod mini_program;
mod official_account;
mod wecom_app;
pub mod wecom_errcode;
pub mod wecom_message;
mod wecom_robot;

use std::sync::Arc;

pub use mini_program::MiniProgram;
pub use official_account::OfficialAccount;
pub use wecom_app::{DUPLICATE_CHECK_INTERVAL, RECALL_WINDOW, WeComApp};
pub use wecom_robot::WeComRobot;

use crate::config::{PusherConfig, ReadSecret as _};
use crate::policy::Provider;
use crate::policy::wecom::{Credential, parse_agent_id};
use crate::send::Sender;
use crate::send::SenderError;

/// The metrics label of a channel's `provider` (the policy's `Provider` lives in another crate,
/// so the label is a type of `metrics` and the mapping is here, with the other choices the
/// field makes).
impl From<Provider> for crate::metrics::ProviderLabel {
    fn from(p: Provider) -> Self {
        match p {
            Provider::WechatOfficialAccount => Self::WechatOfficialAccount,
            Provider::WechatMiniProgram => Self::WechatMiniProgram,
            Provider::WecomApp => Self::WecomApp,
            Provider::WecomRobot => Self::WecomRobot,
        }
    }
}

/// The [`Sender`] of a channel's `provider`. A provider that needs a setting of its own reads
/// it here (the WeCom application's `agentId`), so that a bad one fails at start-up.
pub fn sender_for(config: &PusherConfig) -> Result<Arc<dyn Sender>, SenderError> {
    Ok(match config.provider {
        Provider::WechatOfficialAccount => Arc::new(OfficialAccount),
        Provider::WechatMiniProgram => Arc::new(MiniProgram),
        Provider::WecomApp => {
            let secret = config.credentials.get(Credential::AgentId).ok_or_else(|| {
                SenderError::Credentials("set one of agentId and agentIdFile".into())
            })?;
            let text = secret
                .read()
                .map_err(|e| SenderError::Credentials(format!("agentId: {e}")))?;
            let agent_id = parse_agent_id(&text)
                .map_err(|e| SenderError::Credentials(format!("agentId: {e}")))?;
            Arc::new(WeComApp::new(agent_id))
        }
        Provider::WecomRobot => Arc::new(WeComRobot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(provider: &str, credentials: &str) -> PusherConfig {
        PusherConfig::from_yaml(&format!(
            "listen: 127.0.0.1:0\napiBaseUrl: http://127.0.0.1:9\nprovider: {provider}\n\
             credentials: {credentials}\nauth: {{token: a-long-enough-token}}\n"
        ))
        .expect("parses")
    }

    #[test]
    fn the_provider_field_selects_its_sender() {
        let wechat = "{appId: wx1, appSecret: s}";
        for (provider, credentials) in [
            ("wechatOfficialAccount", wechat),
            ("wechatMiniProgram", wechat),
            (
                "wecomApp",
                "{corpId: ww1, corpSecret: s, agentId: \"1000002\"}",
            ),
            ("wecomRobot", "{webhookKey: k}"),
        ] {
            let c = config(provider, credentials);
            c.validate().expect("valid");
            assert_eq!(sender_for(&c).expect("builds").name(), provider);
        }
    }

    #[test]
    fn the_provider_label_is_the_provider_field_as_spelled() {
        for p in [
            Provider::WechatOfficialAccount,
            Provider::WechatMiniProgram,
            Provider::WecomApp,
            Provider::WecomRobot,
        ] {
            assert_eq!(crate::metrics::ProviderLabel::from(p).as_str(), p.as_str());
        }
    }

    #[test]
    fn a_bad_agent_id_fails_at_start_up() {
        let mut c = config(
            "wecomApp",
            "{corpId: ww1, corpSecret: s, agentId: \"1000002\"}",
        );
        c.credentials.agent_id = Some("app".into());
        let e = sender_for(&c).expect_err("not a number");
        assert!(e.to_string().contains("agentId"), "{e}");
    }
}
