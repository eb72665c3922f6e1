//! `check-config --online`: one access_token request with the configured credentials against the
//! configured `apiBaseUrl`, through the pusher's own HTTP client (its timeouts, DNS and TLS), and
//! its answer in one line ([`wxpush_api::credential_check`], which the operator shares).

use bytes::Bytes;
use wxpush_api::credential_check::{self, Verdict};

use super::client::HttpClient;
use crate::config::{PusherConfig, ReadSecret as _};

/// Fetches one token and says what WeChat answered: `Ok(line)` when it issued one, `Err(line)`
/// naming the problem and its fix. Neither line holds the secret or the token.
pub async fn check_credentials(config: &PusherConfig) -> Result<String, String> {
    let read = |field: &str, s: Option<crate::policy::LocalSecret>| match s.map(|s| s.read()) {
        Some(Ok(v)) => Ok(v.trim().to_string()),
        Some(Err(e)) => Err(format!("{field}: {e}")),
        None => Err(format!("{field}: not set, so no token can be fetched")),
    };
    let app_id = read("credentials.appId", config.credentials.app_id())?;
    let app_secret = read("credentials.appSecret", config.credentials.app_secret())?;
    let client = HttpClient::new(&config.api_base_url, &config.timeouts, &config.pool)
        .map_err(|e| format!("apiBaseUrl: {e}"))?;
    let body = Bytes::from(credential_check::request_body(&app_id, &app_secret));
    let verdict = match client.post_json(credential_check::PATH, body).await {
        Ok(r) => credential_check::interpret(r.status, &r.body),
        Err(e) => Verdict::Unreachable {
            error: e.to_string(),
        },
    };
    let line = verdict.describe(&app_id, &config.api_base_url);
    if verdict.is_ok() {
        Ok(format!("credentials: ok: {line}"))
    } else {
        Err(format!("credentials: {line}"))
    }
}
