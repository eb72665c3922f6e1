//! *Check credentials*: one access_token request with the channel's appid and secret against its
//! `apiBaseUrl` ([`wxpush_api::credential_check`], shared with `check-config --online`), shown in
//! the `CredentialsValid` condition.
//!
//! It costs at most one token call per change of the credentials or the URL: the answer is
//! cached under a SHA-256 of `apiBaseUrl` and of the two Secret values' digests (taken in
//! *dereference*, where values are dropped), so a periodic reconcile, a spec change elsewhere or
//! a change of another key of the Secret reuses it. The cache lives in this process: a restarted
//! operator, or a new leader, checks each channel once. The values are read again only on a
//! cache miss, sent in the request body, and dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use sha2::{Digest as _, Sha256};
use wxpush_api::credential_check::{self, Verdict};

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
            ok: match verdict {
                Verdict::Issued => Some(true),
                Verdict::Unreachable { .. } => None,
                _ => Some(false),
            },
            reason: verdict.reason(),
            message: verdict.describe(app_id, api_base_url),
        }
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
        let (Some(id_digest), Some(secret_digest)) = (
            meta.digests.get(&creds.app_id_key),
            meta.digests.get(&creds.app_secret_key),
        ) else {
            return Ok(None);
        };
        let key = cache_key(&spec.api_base_url, id_digest, secret_digest);
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
        let (Some(app_id), Some(app_secret)) =
            (value(&creds.app_id_key), value(&creds.app_secret_key))
        else {
            // Gone between dereference and now: the next reconcile (its watch) reports it.
            return Ok(None);
        };
        let verdict = self.request(&spec.api_base_url, &app_id, &app_secret).await;
        drop(app_secret);
        let checked = Checked::of(&verdict, &app_id, &spec.api_base_url);
        metrics.credential_checked(checked.reason);
        tracing::info!(
            reason = checked.reason,
            "checked the channel's credentials with one access_token request"
        );
        self.cache()
            .insert(object.to_string(), (key, checked.clone()));
        Ok(Some(checked))
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

/// SHA-256 over the URL and the two values' digests.
pub fn cache_key(api_base_url: &str, app_id_digest: &str, app_secret_digest: &str) -> String {
    let mut h = Sha256::new();
    for part in [api_base_url, app_id_digest, app_secret_digest] {
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
        let k = cache_key("https://a", "d1", "d2");
        assert_eq!(k, cache_key("https://a", "d1", "d2"));
        assert_ne!(k, cache_key("https://b", "d1", "d2"));
        assert_ne!(k, cache_key("https://a", "d1", "d3"));
        assert_ne!(k, cache_key("https://a", "d3", "d2"));
        // Separators keep parts from running into each other.
        assert_ne!(cache_key("a", "bc", "d"), cache_key("ab", "c", "d"));
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
    }
}
