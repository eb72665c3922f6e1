//! Helpers shared by the sandbox's HTTP tests.

use wxpush_sandbox::{FaultConfig, Sandbox, SandboxConfig, SandboxHandle};

/// A sandbox started with `faults` and its defaults otherwise, its base URL, a client and an
/// access_token.
pub async fn started(faults: FaultConfig) -> (SandboxHandle, String, reqwest::Client, String) {
    let sb = Sandbox::start(SandboxConfig {
        faults,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let base = sb.base_url();
    let client = reqwest::Client::new();
    let token = token(&client, &base).await;
    (sb, base, client, token)
}

/// A stable access_token from the sandbox at `base` (its default appid and secret).
pub async fn token(client: &reqwest::Client, base: &str) -> String {
    let answer: serde_json::Value = client
        .post(format!("{base}/cgi-bin/stable_token"))
        .json(&serde_json::json!({
            "grant_type": "client_credential",
            "appid": "wxsandbox00000000",
            "secret": "sandboxsecret",
        }))
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    answer["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Sends one template message to `u{i}` and checks that it was taken (errcode 0).
pub async fn send(client: &reqwest::Client, base: &str, token: &str, i: usize) {
    let answer: serde_json::Value = client
        .post(format!(
            "{base}/cgi-bin/message/template/send?access_token={token}"
        ))
        .json(&serde_json::json!({"touser": format!("u{i}"), "template_id": "T"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("send JSON");
    assert_eq!(answer["errcode"], 0, "{answer}");
}
