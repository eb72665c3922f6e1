//! *Check credentials*: one access_token request with the channel's credentials against its
//! `apiBaseUrl` ([`wxpush_api::credential_check`], shared with `check-config --online`), shown in
//! the `CredentialsValid` condition. By provider:
//! - WeChat (`wechatOfficialAccount`, `wechatMiniProgram`): `stable_token` with the appid and
//!   the secret;
//! - `wecomApp`: WeCom's `gettoken` with the corp id and the application's secret;
//! - `wecomRobot`: no request. A robot has no token call, and the only way to prove its key is
//!   to post into the group. The key is checked for its shape (present, no URL, no character
//!   that cannot go into `?key=`); the condition says that only the first send proves it.
//!
//! It costs at most one token call per change of the credentials or the URL: the answer is
//! cached under a SHA-256 of the provider, `apiBaseUrl` and the checked Secret values' digests
//! (taken in *dereference*, where values are dropped), so a periodic reconcile, a spec change
//! elsewhere or a change of another key of the Secret reuses it. The cache lives in this process: a restarted
//! operator, or a new leader, checks each channel once. The values are read again only on a
//! cache miss, sent in the request body, and dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use sha2::{Digest as _, Sha256};
use wxpush_api::credential_check::{self, Verdict, wecom};
use wxpush_api::policy::Provider;
use wxpush_api::policy::wecom::Credential;

use super::dereference::Found;
use super::error::Error;
use crate::crd::PushChannelSpec;

/// What the check found, as the condition shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `Some(true)` token issued, `Some(false)` refused, `None` no answer (WeChat unreachable
    /// from the operator: it says nothing about the credentials).
    pub ok: Option<bool>,
    /// The condition's reason.
    pub reason: &'static str,
    /// One line: what WeChat said and the fix.
    pub message: String,
}

impl Checked {
    fn of(verdict: &Verdict, app_id: &str, api_base_url: &str) -> Self {
        Self {
            ok: ok_of(verdict),
            reason: verdict.reason(),
            message: verdict.describe(app_id, api_base_url),
        }
    }

    fn of_wecom(verdict: &Verdict, corp_id: &str, api_base_url: &str) -> Self {
        Self {
            ok: ok_of(verdict),
            reason: wecom::reason(verdict),
            message: wecom::describe(verdict, corp_id, api_base_url),
        }
    }

    fn of_webhook_key(key: &str) -> Self {
        match wecom::check_webhook_key(key) {
            Ok(()) => Self {
                ok: Some(true),
                reason: "WebhookKeyWellFormed",
                message: "the robot's webhook key is present and well formed; a robot has no \
                          token call, so only its first send proves WeCom knows it (93000 then \
                          pauses the channel)"
                    .into(),
            },
            Err(problem) => Self {
                ok: Some(false),
                reason: "WebhookKeyMalformed",
                message: problem,
            },
        }
    }
}

fn ok_of(verdict: &Verdict) -> Option<bool> {
    match verdict {
        Verdict::Issued => Some(true),
        Verdict::Unreachable { .. } => None,
        _ => Some(false),
    }
}

/// The credentials a provider's check reads: the token request's pair, or the robot's key.
fn checked_credentials(provider: Provider) -> &'static [Credential] {
    match provider {
        Provider::WechatOfficialAccount | Provider::WechatMiniProgram => {
            &[Credential::AppId, Credential::AppSecret]
        }
        Provider::WecomApp => &[Credential::CorpId, Credential::CorpSecret],
        Provider::WecomRobot => &[Credential::WebhookKey],
    }
}

/// The checker and its cache, shared by every reconcile.
#[derive(Debug)]
pub struct CredentialChecks {
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (String, Checked)>>,
}

impl CredentialChecks {
    /// A checker whose one request is bounded by `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            cache: Mutex::default(),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Checked)>> {
        // A poisoned cache only costs one more token call.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets a deleted channel (`namespace/name`).
    pub fn forget(&self, object: &str) {
        self.cache().remove(object);
    }

    /// The check's answer for this channel: the cached one while the credentials and the URL
    /// are unchanged, else the answer of one new token request. `None` when a digest is missing
    /// (the keys were checked to exist before this is called).
    pub async fn check(
        &self,
        metrics: &crate::metrics::Metrics,
        client: &Client,
        object: &str,
        namespace: &str,
        spec: &PushChannelSpec,
        found: &Found,
    ) -> Result<Option<Checked>, Error> {
        let creds = &spec.credentials.secret_ref;
        let Some(meta) = found.get(&creds.name).and_then(Option::as_ref) else {
            return Ok(None);
        };
        let wanted = checked_credentials(spec.provider);
        let keys: Vec<&str> = creds
            .keys(spec.provider)
            .into_iter()
            .filter(|(which, _)| wanted.contains(which))
            .map(|(_, key)| key)
            .collect();
        let Some(digests) = keys
            .iter()
            .map(|k| meta.digests.get(*k).map(String::as_str))
            .collect::<Option<Vec<&str>>>()
        else {
            return Ok(None);
        };
        let mut parts = vec![spec.provider.as_str(), spec.api_base_url.as_str()];
        parts.extend(digests);
        let key = cache_key(&parts);
        if let Some((k, checked)) = self.cache().get(object)
            && *k == key
        {
            return Ok(Some(checked.clone()));
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api
            .get_opt(&creds.name)
            .await
            .map_err(|source| Error::ReadSecret {
                name: creds.name.clone(),
                source,
            })?;
        let value = |k: &str| {
            secret
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        };
        let Some(values) = keys
            .iter()
            .map(|k| value(k))
            .collect::<Option<Vec<String>>>()
        else {
            // Gone between dereference and now: the next reconcile (its watch) reports it.
            return Ok(None);
        };
        drop(secret);
        let url = &spec.api_base_url;
        let checked = match (spec.provider, values.as_slice()) {
            (Provider::WecomRobot, [webhook_key]) => Checked::of_webhook_key(webhook_key),
            (Provider::WecomApp, [corp_id, corp_secret]) => {
                let verdict = self.gettoken(url, corp_id, corp_secret).await;
                Checked::of_wecom(&verdict, corp_id, url)
            }
            (_, [app_id, app_secret]) => {
                let verdict = self.request(url, app_id, app_secret).await;
                Checked::of(&verdict, app_id, url)
            }
            // `checked_credentials` names one value for a robot and two for the others.
            _ => return Ok(None),
        };
        drop(values);
        metrics.credential_checked(checked.reason);
        tracing::info!(
            reason = checked.reason,
            provider = spec.provider.as_str(),
            "checked the channel's credentials"
        );
        self.cache()
            .insert(object.to_string(), (key, checked.clone()));
        Ok(Some(checked))
    }

    /// WeCom's `gettoken` with the corp id and the application's secret in the query.
    async fn gettoken(&self, api_base_url: &str, corp_id: &str, corp_secret: &str) -> Verdict {
        let url = format!(
            "{}{}",
            api_base_url.trim_end_matches('/'),
            wecom::GETTOKEN_PATH
        );
        let sent = self
            .http
            .get(url)
            .query(&wecom::gettoken_query(corp_id, corp_secret))
            .send()
            .await;
        Self::read(sent).await
    }

    async fn read(sent: Result<reqwest::Response, reqwest::Error>) -> Verdict {
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Unreachable {
                    error: error_chain(&e),
                };
            }
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(body) => credential_check::interpret(status, &body),
            Err(e) => Verdict::Unreachable {
                error: error_chain(&e),
            },
        }
    }

    async fn request(&self, api_base_url: &str, app_id: &str, app_secret: &str) -> Verdict {
        let url = format!(
            "{}{}",
            api_base_url.trim_end_matches('/'),
            credential_check::PATH
        );
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(credential_check::request_body(app_id, app_secret))
            .send()
            .await;
        Self::read(sent).await
    }
}

/// The error and its causes in one line, without the URL (reqwest's messages carry it; the
/// verdict names the URL itself).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    parts.push(if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    });
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// SHA-256 over the parts (the provider, the URL and the checked values' digests).
pub fn cache_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_each_part() {
        let k = cache_key(&["https://a", "d1", "d2"]);
        assert_eq!(k, cache_key(&["https://a", "d1", "d2"]));
        assert_ne!(k, cache_key(&["https://b", "d1", "d2"]));
        assert_ne!(k, cache_key(&["https://a", "d1", "d3"]));
        assert_ne!(k, cache_key(&["https://a", "d3", "d2"]));
        // Separators keep parts from running into each other.
        assert_ne!(cache_key(&["a", "bc", "d"]), cache_key(&["ab", "c", "d"]));
    }

    #[test]
    fn an_unreachable_endpoint_says_nothing_about_the_credentials() {
        let c = Checked::of(
            &Verdict::Unreachable {
                error: "connection failed".into(),
            },
            "wx1",
            "http://127.0.0.1:9",
        );
        assert_eq!((c.ok, c.reason), (None, "Unreachable"));
        let c = Checked::of(
            &Verdict::Refused {
                errcode: 40125,
                errmsg: String::new(),
            },
            "wx1",
            "http://x",
        );
        assert_eq!((c.ok, c.reason), (Some(false), "InvalidAppSecret"));
        let c = Checked::of_wecom(
            &Verdict::Refused {
                errcode: 40001,
                errmsg: String::new(),
            },
            "wwcorp",
            "http://x",
        );
        assert_eq!((c.ok, c.reason), (Some(false), "InvalidCorpSecret"));
    }

    #[test]
    fn a_robot_key_is_checked_for_shape_and_never_quoted() {
        let c = Checked::of_webhook_key("693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa");
        assert_eq!((c.ok, c.reason), (Some(true), "WebhookKeyWellFormed"));
        assert!(c.message.contains("first send"), "{}", c.message);
        let c = Checked::of_webhook_key("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k1");
        assert_eq!((c.ok, c.reason), (Some(false), "WebhookKeyMalformed"));
        assert!(!c.message.contains("k1"), "{}", c.message);
    }
}
