//! Helpers for the WeCom providers' end-to-end tests: pusher configs for `wecomApp` and
//! `wecomRobot` channels against the sandbox's default corp, application and robot, and the
//! sandbox's WeCom counters.

use std::path::Path;

use serde_json::{Value, json};

use crate::pusher::{config as pusher_config, merge};
use crate::sandbox::WxClient;

/// The sandbox's default corp id.
pub const CORP_ID: &str = "wwcorp";
/// The sandbox's default application's secret.
pub const CORP_SECRET: &str = "wecom-secret";
/// The sandbox's default application's AgentId.
pub const AGENT_ID: &str = "1000002";
/// The sandbox's default robot key.
pub const ROBOT_KEY: &str = "robot-key";

/// A pusher config for a `wecomApp` channel (see [`crate::pusher::config`]).
pub fn app_config(sandbox: &str, store: &Path, overrides: &Value) -> Value {
    let mut patch = json!({
        "provider": "wecomApp",
        "credentials": {"appId": null, "appSecret": null, "corpId": CORP_ID,
                        "corpSecret": CORP_SECRET, "agentId": AGENT_ID},
    });
    merge(&mut patch, overrides);
    pusher_config(sandbox, store, &patch)
}

/// A pusher config for a `wecomRobot` channel.
pub fn robot_config(sandbox: &str, store: &Path, overrides: &Value) -> Value {
    let mut patch = json!({
        "provider": "wecomRobot",
        "credentials": {"appId": null, "appSecret": null, "webhookKey": ROBOT_KEY},
    });
    merge(&mut patch, overrides);
    pusher_config(sandbox, store, &patch)
}

/// A text message to `touser`.
pub fn text(touser: &str, content: &str) -> Value {
    json!({"touser": touser, "msgtype": "text", "text": {"content": content}})
}

/// The `wecom` section of the sandbox's `/__stats`.
pub async fn stats(wx: &WxClient) -> Value {
    wx.get_json("/__stats").await["wecom"].clone()
}

/// A counter of the `wecom` stats by JSON pointer (`/apps/1000002/token_fetches`); 0 when
/// absent.
pub fn count(stats: &Value, pointer: &str) -> u64 {
    stats.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}
