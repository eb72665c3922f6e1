//! Helpers shared by the sandbox's HTTP tests.

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
