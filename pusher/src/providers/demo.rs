//! What `wxpush-pusher demo` needs of a provider, so that the demo never names one: its
//! credentials in the sandbox, a message of its shape, and where the sandbox counts its
//! deliveries. The demo runs WeChat's Official Account (the default) and a WeCom application;
//! a group robot takes 20 messages a minute, too few for a demo of the pusher's rate.

use serde_json::{Value, json};

use crate::policy::Provider;

/// A provider as the demo drives it.
#[derive(Debug, Clone)]
pub struct DemoProfile {
    /// The `credentials` section of the pusher's config (the sandbox's defaults for WeCom).
    pub credentials: Value,
    /// The section of the sandbox's stats that counts its deliveries (`None`: the top level).
    pub stats_section: Option<&'static str>,
    /// Whether the demo's WeChat template messages are what it sends.
    pub wechat_messages: bool,
}

/// The demo's profile of `provider`, with the WeChat account `appid` / `secret`; `None` when
/// the demo does not run it.
pub fn profile(provider: Provider, appid: &str, secret: &str) -> Option<DemoProfile> {
    match provider {
        Provider::WechatOfficialAccount => Some(DemoProfile {
            credentials: json!({"appId": appid, "appSecret": secret}),
            stats_section: None,
            wechat_messages: true,
        }),
        Provider::WecomApp => Some(DemoProfile {
            credentials: json!({"corpId": "wwcorp", "corpSecret": "wecom-secret",
                                "agentId": "1000002"}),
            stats_section: Some("wecom"),
            wechat_messages: false,
        }),
        Provider::WechatMiniProgram | Provider::WecomRobot => None,
    }
}

/// The `i`-th demo message of a provider whose messages are not WeChat's: a WeCom text to one
/// of 997 staff (each text differs, so WeCom's duplicate check keeps every one).
pub fn wecom_message(i: usize) -> Value {
    json!({"touser": format!("demo-user-{}", i % 997), "msgtype": "text",
           "text": {"content": format!("order {i} shipped")}})
}
