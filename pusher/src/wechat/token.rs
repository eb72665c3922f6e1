//! The access_token manager: one token per channel (one appid), shared by every worker.
//!
//! - **API**: `stable_token` by default (every caller gets the same token, so replicas never
//!   knock each other out), classic `GET /cgi-bin/token` when `token.api: classic`.
//! - **Refresh before expiry**: at `expires_in - min(token.refreshBefore, expires_in / 2)` the
//!   next caller starts a background refresh and keeps using the current token meanwhile.
//! - **Single flight**: at most one fetch is in flight; everyone who needs a token while it
//!   runs waits for that fetch's result (a `watch` channel) instead of starting another.
//! - **Compare-and-swap invalidation**: on 40001/40014/42001 a sender invalidates *the token it
//!   used*; if another worker already replaced it, nothing happens. With the stable API, when
//!   the platform hands back the very token that was just refused, one `force_refresh: true`
//!   call follows (at most every 30 s, WeChat's limit).
//! - **Faults**: a configuration fault at fetch time (40013, 40125, 40164, missing or unreadable
//!   credentials) pauses the channel with that reason; a single probe fetch runs every
//!   `retry.throttledBackoff`, re-reading the credential files, so fixing the Secret heals it.
//!   45009 pauses until midnight Beijing time, 45011 for `retry.throttledBackoff`. Other
//!   failures (timeouts, transport, 5xx, -1) back off exponentially per `retry`, and callers
//!   get an error at once meanwhile: a failing fetch never turns into a fetch per send.
//! - **A hanging call is sent again**: a `stable_token` call (without `force_refresh`) not
//!   answered within a second goes out a second time and the first answer wins, so one
//!   request hanging until `timeouts.responseHeader` does not hold every send that long.
//! - Neither the token nor the secret is ever logged, put in an error or a metric label.
//! - **Shared across pods** (with the Redis queue, [`TokenManager::with_shared`]): a fetch first
//!   looks at the token in Redis; only the pod that takes the refresher's lock calls WeChat and
//!   publishes the result; the others use the published token (or wait for it). Invalidation
//!   drops the token in Redis only if it is still the refused one. A configuration fault or a
//!   token quota seen by the refresher pauses every pod (a key with the pause as TTL).
//!
//! **Why one file of about 770 lines.** Every rule above acts on the same state under one lock
//! (the cached token, the fetch in flight, the block and its probe, the shared copy), and the
//! single-flight and compare-and-swap guarantees hold only because one type owns it; the
//! per-provider parts (WeChat's and WeCom's token APIs and errcodes) are in `providers/`, and
//! the tests in `token_tests.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::SendError;
use super::client::{HttpClient, HttpError};
use crate::config::ReadSecret as _;
use crate::coord::{CoordError, Coordinator, Lock, SharedToken};
use crate::metrics::Metrics;
use crate::metrics::{TokenApiLabel, TokenResult};
use crate::policy::{LocalSecret, Retry, TokenApi};
use crate::providers::errcode::{FetchAction, classify_fetch, describe};
use crate::providers::wecom_errcode;
use crate::resilience::backoff;
use crate::send::{ErrorKind, TokenScope};

/// WeChat allows a `force_refresh` of the stable token at most every 30 s.
const FORCE_REFRESH_SPACING: Duration = Duration::from_secs(30);
/// How often a webhook key (which is its own "token") is read again from its file.
const WEBHOOK_KEY_REREAD: Duration = Duration::from_secs(60);
/// Never plan a proactive refresh sooner than this after a fetch (tiny `expires_in` values).
const MIN_REFRESH_AFTER: Duration = Duration::from_millis(500);
/// A stable-token call still unanswered after this long is sent a second time, and the first
/// answer of the two wins: one request hanging (up to `timeouts.responseHeader`) would
/// otherwise hold every send for that long. Only the stable API without `force_refresh`:
/// there a repeat hands back the same token, while a classic or forced call issues a new one.
const STABLE_HEDGE_AFTER: Duration = Duration::from_secs(1);

/// An access_token. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    /// The token text, for the `access_token` query parameter only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Why no token can be handed out now.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    /// A configuration fault or a token quota: the channel cannot send until `until` (a probe
    /// time for configuration faults, midnight Beijing time for 45009).
    Paused {
        /// Why (kind `token`, WeChat's errcode when it gave one).
        error: SendError,
        /// When a fetch will be tried again.
        until: Option<SystemTime>,
    },
    /// A transient failure (timeout, transport, 5xx, -1): fetches back off.
    Unavailable {
        /// Why.
        error: SendError,
        /// When the next fetch may run, if known.
        retry_after: Option<Duration>,
    },
}

/// The token side of [`super::ChannelHealth`].
#[derive(Debug, Clone, PartialEq)]
pub enum TokenState {
    /// A token is cached, or can be fetched.
    Ok,
    /// Fetching is paused (configuration fault or quota) and no valid token is cached.
    Paused {
        /// Why.
        error: SendError,
        /// When a fetch will be tried again.
        until: Option<SystemTime>,
    },
}

/// What the token manager needs from the config.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Which token: WeChat's for an appid, WeCom's for a (corp, application), or a webhook key
    /// (no fetch at all).
    pub scope: TokenScope,
    /// Which WeChat API (WeChat tokens only).
    pub api: TokenApi,
    /// Refresh this long before expiry (at most half the lifetime).
    pub refresh_before: Duration,
    /// The appid, or the WeCom corp id (re-read on every fetch; unused for a webhook key).
    pub app_id: LocalSecret,
    /// The app secret, the WeCom application's secret, or the webhook key (re-read on every
    /// fetch).
    pub app_secret: LocalSecret,
    /// Backoff of failed fetches, and `throttledBackoff` as the pause between probes.
    pub retry: Retry,
    /// The whole-request timeout of one HTTP call, to bound waiting for a fetch.
    pub request_timeout: Duration,
}

#[derive(Debug)]
struct Cached {
    token: AccessToken,
    expires_at: Instant,
    refresh_at: Instant,
}

#[derive(Debug, Clone)]
struct Blocked {
    until: Instant,
    wall_until: SystemTime,
    error: SendError,
    pause: bool,
}

type Shared = Option<Result<AccessToken, TokenError>>;

#[derive(Debug, Default)]
struct State {
    token: Option<Cached>,
    inflight: Option<watch::Receiver<Shared>>,
    failures: u32,
    blocked: Option<Blocked>,
    /// The last token a send reported as refused.
    rejected: Option<AccessToken>,
    last_force: Option<Instant>,
}

/// The access_token manager of one channel.
#[derive(Debug)]
pub struct TokenManager {
    http: Arc<HttpClient>,
    settings: TokenSettings,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    shared: Option<Arc<dyn Coordinator>>,
}

/// What one fetch produced.
#[derive(Debug)]
enum Fetched {
    Token {
        token: AccessToken,
        expires_in: Duration,
        forced: bool,
    },
    Errcode(i64, String),
    Failed {
        kind: TokenResult,
        message: String,
    },
    Credentials(String),
}

#[derive(Debug, Deserialize)]
struct Answer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

fn token_error(errcode: Option<i64>, message: String) -> SendError {
    SendError {
        kind: ErrorKind::Token,
        errcode,
        message,
    }
}

impl TokenManager {
    /// A manager fetching through `http`.
    pub fn new(http: Arc<HttpClient>, settings: TokenSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            http,
            settings,
            metrics,
            state: Mutex::new(State::default()),
            shared: None,
        }
    }

    /// Shares the token with the other pods of the channel through `shared` (`coord`).
    #[must_use]
    pub fn with_shared(mut self, shared: Option<Arc<dyn Coordinator>>) -> Self {
        // A webhook key is read from the channel's own Secret by each pod: nothing to share.
        if self.settings.scope != TokenScope::WebhookKey {
            self.shared = shared;
        }
        self
    }

    fn api_label(&self) -> &'static str {
        self.token_api().as_str()
    }

    /// The token API, as the `api` label of `wxpush_token_requests_total` names it.
    fn token_api(&self) -> TokenApiLabel {
        match self.settings.scope {
            TokenScope::WeChatApp => TokenApiLabel::from(self.settings.api),
            TokenScope::WeComApp => TokenApiLabel::Wecom,
            TokenScope::WebhookKey => TokenApiLabel::WebhookKey,
        }
    }

    /// What a fetch's errcode means, in the table of the token's API.
    fn classify_fetch(&self, code: i64, now: SystemTime) -> FetchAction {
        match self.settings.scope {
            TokenScope::WeChatApp | TokenScope::WebhookKey => {
                classify_fetch(code, now, &self.settings.retry)
            }
            TokenScope::WeComApp => wecom_errcode::classify_fetch(code, now, &self.settings.retry),
        }
    }

    fn describe(&self, code: i64) -> &'static str {
        match self.settings.scope {
            TokenScope::WeChatApp | TokenScope::WebhookKey => describe(code),
            TokenScope::WeComApp => wecom_errcode::describe(code),
        }
    }

    /// A valid token: the cached one, or the result of the (single) fetch in flight.
    pub async fn get(self: &Arc<Self>) -> Result<AccessToken, TokenError> {
        let mut rx = {
            let mut st = self.state.lock();
            let now = Instant::now();
            let blocked = st.blocked.as_ref().filter(|b| now < b.until).cloned();
            if let Some(cached) = st.token.as_ref().filter(|c| now < c.expires_at) {
                let token = cached.token.clone();
                if now >= cached.refresh_at && st.inflight.is_none() && blocked.is_none() {
                    let _ = self.start_fetch(&mut st);
                }
                return Ok(token);
            }
            if let Some(b) = blocked {
                return Err(b.to_error(now));
            }
            match &st.inflight {
                // A fetch task that died without a result (a panic) must not block forever.
                Some(rx) if rx.has_changed().is_ok() => rx.clone(),
                _ => self.start_fetch(&mut st),
            }
        };
        // A fetch is at most two HTTP calls (stable + force) plus reading the credentials.
        let bound = self.settings.request_timeout * 2 + Duration::from_secs(1);
        match tokio::time::timeout(bound, rx.wait_for(Option::is_some)).await {
            Ok(Ok(result)) => result.clone().unwrap_or_else(|| {
                Err(TokenError::Unavailable {
                    error: token_error(None, "token fetch gave no result".into()),
                    retry_after: None,
                })
            }),
            Ok(Err(_)) => Err(TokenError::Unavailable {
                error: token_error(None, "token fetch ended without a result".into()),
                retry_after: None,
            }),
            Err(_) => Err(TokenError::Unavailable {
                error: token_error(None, format!("no token within {bound:?}")),
                retry_after: None,
            }),
        }
    }

    /// Invalidates `token` if it is still the current one (compare-and-swap); returns whether
    /// it was. The next [`TokenManager::get`] fetches a new one.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        let mut st = self.state.lock();
        if st.token.as_ref().is_some_and(|c| c.token == *token) {
            st.token = None;
            st.rejected = Some(token.clone());
            tracing::info!(
                api = self.api_label(),
                "access_token refused by WeChat; refreshing"
            );
            if let Some(shared) = self.shared.clone() {
                let token = token.as_str().to_string();
                tokio::spawn(async move {
                    if let Err(e) = shared.drop_token(&token).await {
                        tracing::warn!(error = %e, "cannot drop the refused token in redis");
                    }
                });
            }
            true
        } else {
            false
        }
    }

    /// Whether tokens can be had, for health and status.
    pub fn state(&self) -> TokenState {
        let st = self.state.lock();
        let now = Instant::now();
        let valid = st.token.as_ref().is_some_and(|c| now < c.expires_at);
        match &st.blocked {
            Some(b) if b.pause && !valid => TokenState::Paused {
                error: b.error.clone(),
                until: Some(b.wall_until),
            },
            _ => TokenState::Ok,
        }
    }

    /// If fetching is paused and no valid token is cached, the error a send should report,
    /// without waiting for anything.
    pub fn paused(&self) -> Option<TokenError> {
        let st = self.state.lock();
        let now = Instant::now();
        if st.token.as_ref().is_some_and(|c| now < c.expires_at) {
            return None;
        }
        st.blocked
            .as_ref()
            .filter(|b| b.pause && now < b.until)
            .map(|b| b.to_error(now))
    }

    fn start_fetch(self: &Arc<Self>, st: &mut State) -> watch::Receiver<Shared> {
        let (tx, rx) = watch::channel(None);
        st.inflight = Some(rx.clone());
        let rejected = st.rejected.clone();
        let may_force = st
            .last_force
            .is_none_or(|t| t.elapsed() >= FORCE_REFRESH_SPACING);
        let this = Arc::clone(self);
        let span = tracing::info_span!("token_fetch", api = self.api_label());
        tokio::spawn(
            async move {
                let fetched = match this.shared.clone() {
                    Some(shared) => this.fetch_shared(&*shared, rejected, may_force).await,
                    None => this.fetch(rejected, may_force).await,
                };
                let result = this.apply(fetched);
                tx.send_replace(Some(result));
            }
            .instrument(span),
        );
        rx
    }

    /// A fetch through the token shared in Redis: the published token when it is valid and
    /// not the refused one; else, as the one refresher (lock), a fetch from WeChat that is then
    /// published; else the token another pod publishes meanwhile.
    async fn fetch_shared(
        &self,
        shared: &dyn Coordinator,
        rejected: Option<AccessToken>,
        may_force: bool,
    ) -> Fetched {
        let bound = self.settings.request_timeout * 2 + Duration::from_secs(1);
        let deadline = Instant::now() + bound;
        let usable = |t: &SharedToken| rejected.as_ref().is_none_or(|r| r.as_str() != t.token);
        let from_shared = |t: SharedToken| {
            let now = crate::clock::millis(jiff::Timestamp::now());
            Fetched::Token {
                token: AccessToken(Arc::from(t.token)),
                expires_in: Duration::from_millis(t.expires_ms.saturating_sub(now)),
                forced: false,
            }
        };
        loop {
            let step = async {
                if let Some((code, msg)) = shared.token_pause().await? {
                    return Ok::<_, CoordError>(Some(Fetched::Errcode(code, msg)));
                }
                let now = crate::clock::millis(jiff::Timestamp::now());
                let current = shared.token().await?.filter(|t| usable(t));
                if let Some(t) = current.clone().filter(|t| now < t.refresh_ms) {
                    return Ok(Some(from_shared(t)));
                }
                if shared.try_lock(Lock::Token, bound).await? {
                    // Someone may have published between the look and the lock.
                    if let Some(t) = shared
                        .token()
                        .await?
                        .filter(|t| usable(t) && now < t.refresh_ms)
                    {
                        shared.unlock(Lock::Token).await?;
                        return Ok(Some(from_shared(t)));
                    }
                    let fetched = self.fetch(rejected.clone(), may_force).await;
                    self.publish(shared, &fetched).await;
                    shared.unlock(Lock::Token).await?;
                    return Ok(Some(fetched));
                }
                // Another pod is refreshing: the current token is still good meanwhile.
                Ok(current.map(from_shared))
            };
            match step.await {
                Ok(Some(fetched)) => return fetched,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "shared token unavailable in redis; fetching for this pod");
                    return self.fetch(rejected, may_force).await;
                }
            }
            if Instant::now() >= deadline {
                return Fetched::Failed {
                    kind: TokenResult::Timeout,
                    message: format!("no shared token from another pod within {bound:?}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes what the refresher got: a token for every pod, or a channel-wide pause.
    async fn publish(&self, shared: &dyn Coordinator, fetched: &Fetched) {
        let result = match fetched {
            Fetched::Token {
                token, expires_in, ..
            } => {
                let early = self.settings.refresh_before.min(*expires_in / 2);
                let refresh_in = expires_in.saturating_sub(early).max(MIN_REFRESH_AFTER);
                shared
                    .put_token(token.as_str(), *expires_in, refresh_in.min(*expires_in))
                    .await
            }
            Fetched::Errcode(code, msg) => {
                let wall = SystemTime::now();
                match self.classify_fetch(*code, wall) {
                    FetchAction::ConfigFault => {
                        shared
                            .set_token_pause(
                                *code,
                                msg,
                                self.settings.retry.throttled_backoff.get(),
                            )
                            .await
                    }
                    FetchAction::Quota { until } => {
                        shared
                            .set_token_pause(
                                *code,
                                msg,
                                until.duration_since(wall).unwrap_or_default(),
                            )
                            .await
                    }
                    FetchAction::Backoff => Ok(()),
                }
            }
            Fetched::Failed { .. } | Fetched::Credentials(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot publish the token fetch to redis");
        }
    }

    async fn fetch(&self, rejected: Option<AccessToken>, may_force: bool) -> Fetched {
        let names = match self.settings.scope {
            TokenScope::WeChatApp => ("appId", "appSecret"),
            TokenScope::WeComApp => ("corpId", "corpSecret"),
            TokenScope::WebhookKey => ("webhookKey", "webhookKey"),
        };
        let (app_id, app_secret) = {
            let (id, secret) = (
                self.settings.app_id.clone(),
                self.settings.app_secret.clone(),
            );
            // Files are re-read on every fetch so a rotated Secret is picked up.
            match tokio::task::spawn_blocking(move || (id.read(), secret.read())).await {
                Ok((Ok(id), Ok(secret))) => (id, secret),
                Ok((Err(e), _)) => return Fetched::Credentials(format!("{}: {e}", names.0)),
                Ok((_, Err(e))) => return Fetched::Credentials(format!("{}: {e}", names.1)),
                Err(e) => return Fetched::Credentials(format!("reading credentials: {e}")),
            }
        };
        let first = self.call(&app_id, &app_secret, false).await;
        let stable =
            self.settings.scope == TokenScope::WeChatApp && self.settings.api == TokenApi::Stable;
        match (&first, stable, rejected) {
            (Fetched::Token { token, .. }, true, Some(bad)) if *token == bad => {
                if may_force {
                    self.call(&app_id, &app_secret, true).await
                } else {
                    Fetched::Failed {
                        kind: TokenResult::Stale,
                        message: "the stable API still hands out the refused token; \
                                  force_refresh is allowed once every 30 s"
                            .into(),
                    }
                }
            }
            _ => first,
        }
    }

    async fn call(&self, app_id: &str, app_secret: &str, force: bool) -> Fetched {
        let answer = match (self.settings.scope, self.settings.api) {
            (TokenScope::WebhookKey, _) => {
                // The key is the credential itself; it is re-read when this "token" expires,
                // so a rotated Secret is picked up within WEBHOOK_KEY_REREAD.
                return Fetched::Token {
                    token: AccessToken(Arc::from(app_secret.trim())),
                    expires_in: WEBHOOK_KEY_REREAD,
                    forced: false,
                };
            }
            (TokenScope::WeComApp, _) => {
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("corpid", app_id)
                    .append_pair("corpsecret", app_secret)
                    .finish();
                self.http.get(&format!("/cgi-bin/gettoken?{query}")).await
            }
            (TokenScope::WeChatApp, TokenApi::Classic) => {
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credential")
                    .append_pair("appid", app_id)
                    .append_pair("secret", app_secret)
                    .finish();
                self.http.get(&format!("/cgi-bin/token?{query}")).await
            }
            (TokenScope::WeChatApp, TokenApi::Stable) => {
                let body = Bytes::from(
                    serde_json::json!({
                        "grant_type": "client_credential",
                        "appid": app_id,
                        "secret": app_secret,
                        "force_refresh": force,
                    })
                    .to_string(),
                );
                let send = || self.http.post_json("/cgi-bin/stable_token", body.clone());
                if force {
                    send().await
                } else {
                    hedged(send, STABLE_HEDGE_AFTER).await
                }
            }
        };
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                let kind = match e {
                    HttpError::Timeout { .. } => TokenResult::Timeout,
                    _ => TokenResult::Transport,
                };
                return Fetched::Failed {
                    kind,
                    message: e.to_string(),
                };
            }
        };
        if response.status != 200 {
            return Fetched::Failed {
                kind: if response.status >= 500 {
                    TokenResult::Http5xx
                } else {
                    TokenResult::HttpStatus
                },
                message: format!("token endpoint answered HTTP {}", response.status),
            };
        }
        match serde_json::from_slice::<Answer>(&response.body) {
            Ok(Answer {
                access_token: Some(token),
                expires_in: Some(expires_in),
                ..
            }) if !token.is_empty() && expires_in > 0 => Fetched::Token {
                token: AccessToken(Arc::from(token)),
                expires_in: Duration::from_secs(expires_in),
                forced: force,
            },
            Ok(Answer {
                errcode: Some(code),
                errmsg,
                ..
            }) if code != 0 => Fetched::Errcode(code, errmsg.unwrap_or_default()),
            _ => Fetched::Failed {
                kind: TokenResult::BadResponse,
                message: "token endpoint answered without a token or an errcode".into(),
            },
        }
    }

    fn apply(&self, fetched: Fetched) -> Result<AccessToken, TokenError> {
        let api = self.api_label();
        let now = Instant::now();
        let wall = SystemTime::now();
        let retry = &self.settings.retry;
        let probe = retry.throttled_backoff.get();
        let mut st = self.state.lock();
        st.inflight = None;
        let (blocked, result_label) = match fetched {
            Fetched::Token {
                token,
                expires_in,
                forced,
            } => {
                let early = self.settings.refresh_before.min(expires_in / 2);
                let refresh_in = expires_in.saturating_sub(early).max(MIN_REFRESH_AFTER);
                st.token = Some(Cached {
                    token: token.clone(),
                    expires_at: now + expires_in,
                    refresh_at: now + refresh_in.min(expires_in),
                });
                if forced {
                    st.last_force = Some(now);
                }
                if st.blocked.as_ref().is_some_and(|b| b.pause) {
                    tracing::info!(api, "access_token fetch works again; channel resumed");
                }
                st.blocked = None;
                st.failures = 0;
                st.rejected = None;
                self.metrics
                    .token_request(self.token_api(), TokenResult::Ok);
                tracing::debug!(
                    api,
                    expires_in = expires_in.as_secs(),
                    forced,
                    "access_token fetched"
                );
                return Ok(token);
            }
            Fetched::Errcode(code, errmsg) => {
                let what = self.describe(code);
                let error = token_error(
                    Some(code),
                    format!("access_token fetch refused: errcode {code} ({what}): {errmsg}"),
                );
                let blocked = match self.classify_fetch(code, wall) {
                    FetchAction::ConfigFault => {
                        tracing::error!(
                            api,
                            errcode = code,
                            reason = what,
                            "configuration fault fetching the access_token; channel paused, next probe in {probe:?}"
                        );
                        Blocked::pause(error, now, wall, probe)
                    }
                    FetchAction::Quota { until } => {
                        let wait = until.duration_since(wall).unwrap_or_default();
                        tracing::warn!(
                            api,
                            errcode = code,
                            "access_token quota reached; channel paused for {wait:?}"
                        );
                        Blocked::pause(error, now, wall, wait)
                    }
                    FetchAction::Backoff => self.backoff(&mut st, error, now, wall),
                };
                (blocked, TokenResult::Errcode(code))
            }
            Fetched::Failed { kind, message } => {
                let error = token_error(None, format!("access_token fetch failed: {message}"));
                tracing::warn!(api, kind = ?kind, "{}", error.message);
                (self.backoff(&mut st, error, now, wall), kind)
            }
            Fetched::Credentials(message) => {
                let error = token_error(None, format!("credentials: {message}"));
                tracing::error!(
                    api,
                    "{}; channel paused, next probe in {probe:?}",
                    error.message
                );
                (
                    Blocked::pause(error, now, wall, probe),
                    TokenResult::Credentials,
                )
            }
        };
        self.metrics.token_request(self.token_api(), result_label);
        let error = blocked.to_error(now);
        st.blocked = Some(blocked);
        Err(error)
    }

    fn backoff(&self, st: &mut State, error: SendError, now: Instant, wall: SystemTime) -> Blocked {
        st.failures = st.failures.saturating_add(1);
        let wait = backoff::delay(&self.settings.retry, st.failures, rand::random());
        Blocked {
            until: now + wait,
            wall_until: wall + wait,
            error,
            pause: false,
        }
    }
}

impl Blocked {
    fn pause(error: SendError, now: Instant, wall: SystemTime, wait: Duration) -> Self {
        Self {
            until: now + wait,
            wall_until: wall + wait,
            error,
            pause: true,
        }
    }

    fn to_error(&self, now: Instant) -> TokenError {
        if self.pause {
            TokenError::Paused {
                error: self.error.clone(),
                until: Some(self.wall_until),
            }
        } else {
            TokenError::Unavailable {
                error: self.error.clone(),
                retry_after: Some(self.until.saturating_duration_since(now)),
            }
        }
    }
}

/// `send()`, and a second `send()` if the first is not answered within `after`: the first
/// success of the two, or the last failure when both fail.
async fn hedged<F, Fut>(send: F, after: Duration) -> Result<super::client::HttpResponse, HttpError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<super::client::HttpResponse, HttpError>>,
{
    let mut first = Box::pin(send());
    match tokio::time::timeout(after, &mut first).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::debug!(after = ?after, "token call unanswered: sending it again");
            futures::future::select_ok([first, Box::pin(send())])
                .await
                .map(|(answer, _)| answer)
        }
    }
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
