//! `check-config --online`: one access_token request with the configured credentials against the
//! configured `apiBaseUrl`, through the pusher's own HTTP client (its timeouts, DNS and TLS), and
//! its answer in one line ([`wxpush_api::credential_check`], which the operator shares).

use bytes::Bytes;
use wxpush_api::credential_check::{self, Verdict};

use std::sync::Arc;

use super::client::HttpClient;
use super::token::{TokenError, TokenManager, TokenSettings};
use crate::config::{PusherConfig, ReadSecret as _};
use crate::policy::wecom::Credential;
use crate::send::TokenScope;

/// Fetches one token and says what WeChat answered: `Ok(line)` when it issued one, `Err(line)`
/// naming the problem and its fix. Neither line holds the secret or the token.
pub async fn check_credentials(config: &PusherConfig) -> Result<String, String> {
    let provider = crate::providers::sender_for(config).map_err(|e| e.to_string())?;
    match provider.token_scope() {
        TokenScope::WeChatApp => {}
        TokenScope::WeComApp => return check_wecom(config).await,
        TokenScope::WebhookKey => {
            // No token call: the key's shape is what can be checked without posting a message.
            let key = match config
                .credentials
                .get(Credential::WebhookKey)
                .map(|s| s.read())
            {
                Some(Ok(k)) => k,
                Some(Err(e)) => return Err(format!("credentials.webhookKey: {e}")),
                None => return Err("credentials.webhookKey: not set".into()),
            };
            return match credential_check::wecom::check_webhook_key(&key) {
                Ok(()) => Ok(
                    "credentials: ok: the webhook key is well formed; a robot has no \
                              token to fetch, so its first send checks it"
                        .into(),
                ),
                Err(problem) => Err(format!("credentials.webhookKey: {problem}")),
            };
        }
    }
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

/// WeCom's check: one `gettoken` with the corp id and the application's secret, through the
/// token manager (so its answer is classified as the pusher's own fetches are).
async fn check_wecom(config: &PusherConfig) -> Result<String, String> {
    let get = |which: Credential| {
        config
            .credentials
            .get(which)
            .ok_or_else(|| format!("credentials.{}: not set", which.name()))
    };
    let http = HttpClient::new(&config.api_base_url, &config.timeouts, &config.pool)
        .map_err(|e| format!("apiBaseUrl: {e}"))?;
    let tokens = Arc::new(TokenManager::new(
        Arc::new(http),
        TokenSettings {
            scope: TokenScope::WeComApp,
            api: config.token.api,
            refresh_before: config.token.refresh_before.get(),
            app_id: get(Credential::CorpId)?,
            app_secret: get(Credential::CorpSecret)?,
            retry: config.retry.clone(),
            request_timeout: config.timeouts.request.get(),
        },
        Arc::new(crate::metrics::Metrics::new(&config.channel)),
    ));
    match tokens.get().await {
        Ok(_) => Ok(format!(
            "credentials: ok: WeCom issued an access_token at {}",
            config.api_base_url
        )),
        Err(TokenError::Paused { error, .. } | TokenError::Unavailable { error, .. }) => {
            Err(format!("credentials: {}", error.message))
        }
    }
}
