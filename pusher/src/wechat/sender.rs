//! [`WeChatSender`]: one send attempt of one message, composed of the pieces around it.
//!
//! In order: the channel's own pauses (a configuration fault or the daily quota seen on a
//! send, a 45011 slow-down, a paused token) → the circuit breaker (`CircuitOpen` when open) →
//! an access_token → a rate-limit permit (token bucket, then the local daily quota) → the HTTP
//! request (counted in `wxpush_inflight_requests`, timed in `wxpush_send_duration_seconds`,
//! counted in `wxpush_send_attempts_total{result}`) → WeChat's JSON answer, classified by
//! `super::errcode`. On 40001/40014/42001 the token that failed is invalidated
//! (compare-and-swap) and the send is retried once with a fresh token.
//!
//! **Why one file of about 830 lines.** It is one sequence, read top to bottom: the gates, the
//! token, the limits, the request and what the answer means, with the state they share (the
//! pauses, the breaker's ticket, the token that was used). Its parts that stand alone already
//! live beside it (`client.rs`, `flow.rs`, `limits.rs`, `token.rs`); its tests are in
//! `sender_tests.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::client::{HttpClient, HttpError};
use super::flow::Flow;
use super::limits::Limits;
use super::token::{AccessToken, TokenError, TokenManager, TokenSettings, TokenState};
use super::{ChannelHealth, Circuit, Health, SendError, SendOutcome, SendRequest, SenderError};
use crate::config::PusherConfig;
use crate::config::ReadSecret as _;
use crate::coord::Coordinator;
use crate::metrics::{AttemptResult, CircuitState, Metrics, ProviderLabel};
use crate::metrics::{ConnCloseLabels, ConnCloseReason};
use crate::policy::LocalSecret;
use crate::policy::Retry;
use crate::policy::wecom::Credential;
use crate::providers::errcode::{SendAction, classify_http_status, describe};
use crate::providers::{sender_for, wecom_errcode};
use crate::resilience::breaker::{Outcome, SharedBreaker};
use crate::send::ErrorKind;
use crate::send::{Outgoing, Receipt, Sender, TokenScope};

/// Sends messages to WeChat for one channel. Cheap to share (`Arc`); safe to call from many
/// workers at once.
#[derive(Debug)]
pub struct WeChatSender {
    provider: Arc<dyn Sender>,
    /// The configured `provider`, as metrics label it.
    provider_label: ProviderLabel,
    http: Arc<HttpClient>,
    tokens: Arc<TokenManager>,
    breaker: SharedBreaker,
    limiter: Limits,
    flow: Arc<Flow>,
    metrics: Arc<Metrics>,
    retry: Retry,
    rate_wait: Duration,
    gates: Arc<Mutex<Gates>>,
    /// The state shared with the other pods of the channel (`coord`), when there are several.
    shared: Option<Arc<dyn Coordinator>>,
    /// Whether a send pause of another pod has been looked for since start (the first sends
    /// wait for that answer; later ones rely on the once-a-second watcher).
    shared_pause_checked: std::sync::atomic::AtomicBool,
    /// Counts the breaker's closings (half-open → closed): WeChat is back.
    closings: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Channel-wide stops learnt from send answers.
#[derive(Debug, Default)]
struct Gates {
    /// 48001 (or another configuration fault) or 45009 on a send.
    pause: Option<SendPause>,
    /// A rate limit of the API (WeChat's 45011, WeCom's 45009 and 45033), with its errcode.
    throttled_until: Option<(Instant, i64)>,
}

#[derive(Debug, Clone)]
struct SendPause {
    error: SendError,
    until: Instant,
    wall_until: SystemTime,
}

/// How one HTTP attempt ended.
#[derive(Debug)]
enum Attempt {
    Answered {
        errcode: i64,
        errmsg: String,
        msgid: Option<i64>,
        receipt: Option<Receipt>,
        action: SendAction,
    },
    Status {
        status: u16,
        action: SendAction,
    },
    Failed(HttpError),
    BadBody,
}

/// An answer that is not HTTP 200: retried; a 5xx may have been delivered, a 429 does not
/// count against the breaker.
fn status_outcome(status: u16, action: SendAction) -> (SendOutcome, Outcome) {
    let not_before = match action {
        SendAction::Retry { not_before } => not_before,
        _ => None,
    };
    let kind = if status >= 500 {
        ErrorKind::Http5xx
    } else {
        ErrorKind::HttpStatus
    };
    let error = SendError {
        kind,
        errcode: None,
        message: format!("WeChat answered HTTP {status}"),
    };
    let breaker = if status == 429 {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    (
        SendOutcome::Retry {
            error,
            not_before,
            maybe_delivered: status >= 500,
        },
        breaker,
    )
}

/// A token that cannot be had parks the channel, like a send outage: nothing was sent, so no
/// message's retry budget is spent. The hold lasts as long as the token manager's own backoff
/// between fetches (at least [`TOKEN_HOLD_MIN`]); then the next attempts probe it again.
fn token_outcome(error: TokenError) -> SendOutcome {
    match error {
        TokenError::Paused { error, until } => SendOutcome::Paused { error, until },
        TokenError::Unavailable { error, retry_after } => SendOutcome::Paused {
            error,
            until: Some(
                SystemTime::now() + retry_after.unwrap_or(TOKEN_HOLD_MIN).max(TOKEN_HOLD_MIN),
            ),
        },
    }
}

/// The shortest hold after a failed token fetch.
const TOKEN_HOLD_MIN: Duration = Duration::from_millis(200);

fn errcode_error(scope: TokenScope, errcode: i64, errmsg: &str) -> SendError {
    let what = match scope {
        TokenScope::WeChatApp => describe(errcode),
        TokenScope::WeComApp | TokenScope::WebhookKey => wecom_errcode::describe(errcode),
    };
    SendError {
        kind: ErrorKind::Errcode,
        errcode: Some(errcode),
        message: format!("errcode {errcode} ({what}): {errmsg}"),
    }
}

/// The two secrets the token manager reads for `scope`: the appid and secret, the corp id and
/// application secret, or the webhook key (twice: it needs no id).
fn token_credentials(
    config: &PusherConfig,
    scope: TokenScope,
) -> Result<(LocalSecret, LocalSecret), SenderError> {
    let (id, secret) = match scope {
        TokenScope::WeChatApp => (Credential::AppId, Credential::AppSecret),
        TokenScope::WeComApp => (Credential::CorpId, Credential::CorpSecret),
        TokenScope::WebhookKey => (Credential::WebhookKey, Credential::WebhookKey),
    };
    let get = |which: Credential| {
        let secret = config.credentials.get(which).ok_or_else(|| {
            SenderError::Credentials(format!("set one of {0} and {0}File", which.name()))
        })?;
        secret
            .read()
            .map_err(|e| SenderError::Credentials(format!("{}: {e}", which.name())))?;
        Ok::<_, SenderError>(secret)
    };
    Ok((get(id)?, get(secret)?))
}

impl WeChatSender {
    /// Builds the sender from the config (HTTP client, token manager, breaker, rate limiter).
    /// The credentials are read once here so that a missing file fails at start-up.
    pub fn new(config: &PusherConfig, metrics: Arc<Metrics>) -> Result<Self, SenderError> {
        Self::build(config, metrics, sender_for(config)?, None)
    }

    /// Like [`Self::new`], with the provider given rather than chosen by `config.provider`.
    pub fn with_provider(
        config: &PusherConfig,
        metrics: Arc<Metrics>,
        provider: Arc<dyn Sender>,
    ) -> Result<Self, SenderError> {
        Self::build(config, metrics, provider, None)
    }

    /// As [`WeChatSender::new`], sharing the token, the rate limit, the daily quota and the
    /// channel's pauses with the other pods through `shared` when it is given.
    pub fn with_shared(
        config: &PusherConfig,
        metrics: Arc<Metrics>,
        shared: Option<Arc<dyn Coordinator>>,
    ) -> Result<Self, SenderError> {
        Self::build(config, metrics, sender_for(config)?, shared)
    }

    fn build(
        config: &PusherConfig,
        metrics: Arc<Metrics>,
        provider: Arc<dyn Sender>,
        shared: Option<Arc<dyn Coordinator>>,
    ) -> Result<Self, SenderError> {
        // An unset `pool.maxIdlePerHost` leaves hyper's idle list unbounded: connections are
        // opened only for requests that found none idle (so no more than were in flight at
        // once), and the ones the load no longer needs close themselves, paced
        // (`super::idle`). A bound would count the closed ones hyper has not yet swept from
        // its list, and drop live connections handed back.
        let pool = config.pool.clone();
        let closed = |metrics: &Metrics, reason| {
            metrics
                .wechat_connections_closed
                .get_or_create(&ConnCloseLabels { reason })
                .clone()
        };
        let http = Arc::new(
            HttpClient::counted(
                &config.api_base_url,
                &config.timeouts,
                &pool,
                super::client::ClientCounters {
                    opened: metrics.wechat_connections_opened.clone(),
                    peak: metrics.wechat_requests_peak.clone(),
                    closed_idle: closed(&metrics, ConnCloseReason::Idle),
                    closed_other: closed(&metrics, ConnCloseReason::Other),
                },
            )
            .map_err(|e| SenderError::Client(e.to_string()))?,
        );
        let scope = provider.token_scope();
        let (app_id, app_secret) = token_credentials(config, scope)?;
        let tokens = Arc::new(
            TokenManager::new(
                Arc::clone(&http),
                TokenSettings {
                    scope,
                    api: config.token.api,
                    refresh_before: config.token.refresh_before.get(),
                    app_id,
                    app_secret,
                    retry: config.retry.clone(),
                    request_timeout: config.timeouts.request.get(),
                },
                Arc::clone(&metrics),
            )
            .with_shared(shared.clone()),
        );
        metrics.channel_paused.set(0);
        let limiter = Limits::new(&config.rate_limit, shared.clone(), provider.rate_ceiling());
        let closings = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let flow = Arc::new(Flow::new(&config.concurrency, Arc::clone(&metrics)));
        Ok(Self {
            provider,
            provider_label: config.provider.into(),
            http,
            tokens,
            breaker: SharedBreaker::new(&config.circuit_breaker, {
                let metrics = Arc::clone(&metrics);
                let closings = Arc::clone(&closings);
                let flow = Arc::downgrade(&flow);
                Arc::new(move |before, after| {
                    if after == CircuitState::Open && before != CircuitState::Open {
                        metrics.circuit_opens.inc();
                        if let Some(flow) = flow.upgrade() {
                            flow.breaker_opened();
                        }
                    }
                    if after == CircuitState::Closed && before != CircuitState::Closed {
                        closings.send_modify(|n| *n += 1);
                    }
                    metrics.set_circuit(after);
                })
            }),
            closings,
            limiter,
            flow,
            retry: config.retry.clone(),
            rate_wait: config.retry.max_backoff.get(),
            gates: {
                let gates = Arc::new(Mutex::new(Gates::default()));
                if let Some(shared) = shared.clone() {
                    watch_send_pause(shared, Arc::downgrade(&gates));
                }
                gates
            },
            shared,
            shared_pause_checked: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    /// Performs one attempt (with at most one token refresh inside it on 40001/40014/42001).
    pub async fn send(&self, request: SendRequest<'_>) -> SendOutcome {
        let outcome = self.send_inner(request).await;
        self.update_paused_gauge();
        outcome
    }

    async fn send_inner(&self, request: SendRequest<'_>) -> SendOutcome {
        if let Some(shared) = &self.shared
            && !self
                .shared_pause_checked
                .load(std::sync::atomic::Ordering::Relaxed)
            && let Ok(pause) = shared.send_pause().await
        {
            adopt_send_pause(&self.gates, pause);
            self.shared_pause_checked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(stop) = self.check_gates() {
            return stop;
        }
        if let Some(error) = self.tokens.paused() {
            return token_outcome(error);
        }
        let permit = match self.breaker.admit() {
            Ok(permit) => permit,
            Err(retry_after) => return SendOutcome::CircuitOpen { retry_after },
        };
        let mut token = match self.tokens.get().await {
            Ok(token) => token,
            Err(error) => return token_outcome(error),
        };
        // Under a provider's ceiling (a robot's 20 a minute) a full window is the normal state
        // of a busy channel: the message does not wait for its turn here, with its attempt's
        // start recorded (a crash meanwhile would leave it looking sent, and a provider with
        // no de-duplication would not re-send it), but goes back with sending on hold until
        // the next slot, without spending an attempt.
        let ceiling = self.provider.rate_ceiling().is_some();
        let rate_wait = if ceiling {
            Duration::ZERO
        } else {
            self.rate_wait
        };
        if !self.limiter.acquire(rate_wait).await {
            let error = SendError {
                kind: ErrorKind::RateLimited,
                errcode: None,
                message: format!("no rate-limit permit within {rate_wait:?}"),
            };
            if ceiling {
                return SendOutcome::Paused {
                    error,
                    until: Some(SystemTime::now() + self.limiter.interval()),
                };
            }
            return SendOutcome::Retry {
                error,
                not_before: None,
                maybe_delivered: false,
            };
        }
        if let Err(until) = self.limiter.take_daily(SystemTime::now()) {
            return SendOutcome::Paused {
                error: SendError {
                    kind: ErrorKind::Quota,
                    errcode: None,
                    message: "the channel's rateLimit.dailyQuota is spent for today".into(),
                },
                until: Some(until),
            };
        }
        let outgoing = match self.provider.build(request) {
            Ok(outgoing) => outgoing,
            Err(error) => {
                self.limiter.give_back_daily(SystemTime::now());
                return SendOutcome::Permanent { error };
            }
        };
        let mut attempt = self.attempt(&token, outgoing.clone()).await;
        if matches!(
            attempt,
            Attempt::Answered {
                action: SendAction::RefreshToken,
                ..
            }
        ) {
            self.tokens.invalidate(&token);
            token = match self.tokens.get().await {
                Ok(fresh) => fresh,
                Err(error) => {
                    self.limiter.give_back_daily(SystemTime::now());
                    permit.record(Outcome::Success);
                    return token_outcome(error);
                }
            };
            if self.limiter.acquire(self.rate_wait).await {
                attempt = self.attempt(&token, outgoing).await;
            }
        }
        if matches!(attempt, Attempt::Failed(HttpError::Stopping)) {
            // Never sent: nothing for the breaker, the quota or the message's budget.
            self.limiter.give_back_daily(SystemTime::now());
            drop(permit);
            return SendOutcome::Stopping;
        }
        let (outcome, breaker) = self.conclude(attempt);
        permit.record(breaker);
        outcome
    }

    /// One HTTP request (hedged when slow, through the concurrency gate), with its metrics.
    async fn attempt(&self, token: &AccessToken, outgoing: Outgoing) -> Attempt {
        let encoded: String =
            url::form_urlencoded::byte_serialize(token.as_str().as_bytes()).collect();
        let param = self.provider.token_scope().query_param();
        let path = format!("{}?{param}={encoded}", outgoing.path);
        self.metrics.inflight.inc();
        // Timed from the first request's start, once the gate let it go: the wait for a gate
        // slot is not part of an HTTP attempt.
        let started = std::sync::OnceLock::new();
        let body = outgoing.body;
        let (answer, _hedged) = self
            .flow
            .send(self.http.header_timeout(), |header_timeout| {
                started.get_or_init(Instant::now);
                self.http
                    .post_json_within(&path, body.clone(), header_timeout)
            })
            .await;
        let seconds = started
            .get()
            .map_or(0.0, |started| started.elapsed().as_secs_f64());
        self.metrics.inflight.dec();
        let attempt = match answer {
            Err(e) => Attempt::Failed(e),
            Ok(r) if r.status != 200 => Attempt::Status {
                status: r.status,
                action: classify_http_status(r.status, &self.retry),
            },
            Ok(r) => match self.provider.read_answer(&r.body) {
                Some(a) => Attempt::Answered {
                    action: self
                        .provider
                        .classify(a.errcode, SystemTime::now(), &self.retry),
                    errcode: a.errcode,
                    errmsg: a.errmsg,
                    msgid: a.msgid,
                    receipt: a.receipt,
                },
                None => Attempt::BadBody,
            },
        };
        let result = match &attempt {
            Attempt::Answered { action, .. } | Attempt::Status { action, .. } => {
                action.attempt_result()
            }
            Attempt::Failed(HttpError::Timeout { phase, .. }) => {
                self.metrics.timeout(phase.label());
                AttemptResult::timeout
            }
            // Not an attempt: it never left the gate.
            Attempt::Failed(HttpError::Stopping) => return attempt,
            Attempt::Failed(_) => AttemptResult::transport,
            Attempt::BadBody => AttemptResult::retryable,
        };
        self.metrics.attempt(result, seconds);
        attempt
    }

    /// What the attempt means for the message, the breaker and the channel.
    fn conclude(&self, attempt: Attempt) -> (SendOutcome, Outcome) {
        let now = SystemTime::now();
        match attempt {
            Attempt::Answered {
                errcode,
                errmsg,
                msgid,
                receipt,
                action,
            } => self.conclude_answer(errcode, &errmsg, msgid, receipt, action, now),
            Attempt::Status { status, action } => status_outcome(status, action),
            Attempt::Failed(e) => {
                if e.never_sent() {
                    self.limiter.give_back_daily(now);
                }
                let error = SendError {
                    kind: e.kind(),
                    errcode: None,
                    message: e.to_string(),
                };
                (
                    SendOutcome::Retry {
                        error,
                        not_before: None,
                        maybe_delivered: !e.never_sent(),
                    },
                    Outcome::Failure,
                )
            }
            Attempt::BadBody => (
                SendOutcome::Retry {
                    error: SendError {
                        kind: ErrorKind::BadResponse,
                        errcode: None,
                        message: "WeChat answered 200 without a JSON errcode".into(),
                    },
                    not_before: None,
                    maybe_delivered: true,
                },
                Outcome::Failure,
            ),
        }
    }

    /// What an answer with a JSON errcode means: the provider's action, with the pause, the
    /// throttle, the daily quota and the metrics it sets off.
    fn conclude_answer(
        &self,
        errcode: i64,
        errmsg: &str,
        msgid: Option<i64>,
        receipt: Option<Receipt>,
        action: SendAction,
        now: SystemTime,
    ) -> (SendOutcome, Outcome) {
        let error = errcode_error(self.provider.token_scope(), errcode, errmsg);
        if action != SendAction::Delivered {
            self.limiter.give_back_daily(now);
        }
        let breaker = if errcode == -1 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let outcome = match action {
            SendAction::Delivered => {
                self.clear_pause();
                if let Some(r) = &receipt {
                    self.metrics
                        .invalid_recipients(self.provider_label, &r.invalid);
                }
                SendOutcome::Delivered { msgid, receipt }
            }
            SendAction::Retry { not_before } => SendOutcome::Retry {
                error,
                not_before,
                maybe_delivered: false,
            },
            SendAction::RefreshToken => SendOutcome::Retry {
                error: SendError {
                    kind: ErrorKind::Token,
                    ..error
                },
                not_before: None,
                maybe_delivered: false,
            },
            SendAction::Permanent { alert } => {
                if alert {
                    tracing::error!(errcode, "{}", error.message);
                }
                SendOutcome::Permanent { error }
            }
            SendAction::Pause { until } => self.pause(error, until),
            SendAction::Throttle { for_at_least } => {
                self.gates.lock().throttled_until = Some((Instant::now() + for_at_least, errcode));
                tracing::warn!(
                    errcode,
                    "rate limit of the API reached: slowing down for {for_at_least:?}"
                );
                SendOutcome::Retry {
                    error,
                    not_before: Some(for_at_least),
                    maybe_delivered: false,
                }
            }
        };
        (outcome, breaker)
    }

    /// Pauses the channel: until `until` (45009: midnight Beijing time), or until a probe
    /// after `retry.throttledBackoff` for configuration faults.
    fn pause(&self, error: SendError, until: Option<SystemTime>) -> SendOutcome {
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_until = match until {
            Some(midnight) => {
                self.limiter.exhaust_daily(wall);
                midnight
            }
            None => wall + self.retry.throttled_backoff.get(),
        };
        let wait = wall_until.duration_since(wall).unwrap_or_default();
        tracing::error!(
            errcode = error.errcode,
            "{}; channel paused for {wait:?}",
            error.message
        );
        self.gates.lock().pause = Some(SendPause {
            error: error.clone(),
            until: now + wait,
            wall_until,
        });
        if until.is_none()
            && let Some(shared) = self.shared.clone()
        {
            let (code, message) = (error.errcode.unwrap_or(0), error.message.clone());
            tokio::spawn(async move {
                if let Err(e) = shared.set_send_pause(code, &message, wait).await {
                    tracing::warn!(error = %e, "the send pause could not be shared with the other pods");
                }
            });
        }
        SendOutcome::Paused {
            error,
            until: Some(wall_until),
        }
    }

    fn clear_pause(&self) {
        if self.gates.lock().pause.take().is_some() {
            tracing::info!("a send went through again; channel resumed");
            if let Some(shared) = self.shared.clone() {
                tokio::spawn(async move {
                    let _ = shared.clear_send_pause().await;
                });
            }
        }
    }

    /// The channel-wide stops, without waiting. A pause whose time is up lets exactly one
    /// probe through (the others stay paused for another interval until it succeeds).
    fn check_gates(&self) -> Option<SendOutcome> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut gates = self.gates.lock();
        if let Some(pause) = gates.pause.as_mut() {
            if now < pause.until {
                return Some(SendOutcome::Paused {
                    error: pause.error.clone(),
                    until: Some(pause.wall_until),
                });
            }
            let probe = self.retry.throttled_backoff.get();
            pause.until = now + probe;
            pause.wall_until = wall + probe;
        }
        if let Some((until, errcode)) = gates.throttled_until {
            if now < until {
                let left = until - now;
                return Some(SendOutcome::Retry {
                    error: SendError {
                        kind: ErrorKind::Throttled,
                        errcode: Some(errcode),
                        message: format!("API rate limit ({errcode}): waiting {left:?} more"),
                    },
                    not_before: Some(left),
                    maybe_delivered: false,
                });
            }
            gates.throttled_until = None;
        }
        drop(gates);
        self.limiter
            .daily_exhausted_until(wall)
            .map(|until| SendOutcome::Paused {
                error: SendError {
                    kind: ErrorKind::Quota,
                    errcode: None,
                    message: "today's send quota is spent".into(),
                },
                until: Some(until),
            })
    }

    fn update_paused_gauge(&self) {
        let paused = !self.health().can_send();
        self.metrics.channel_paused.set(i64::from(paused));
    }

    /// The channel's health, for `/readyz` and status: token, send pauses, breaker.
    pub fn health(&self) -> ChannelHealth {
        let now = Instant::now();
        let wall = SystemTime::now();
        let token = match self.tokens.state() {
            TokenState::Ok => Health::Ok,
            TokenState::Paused { error, until } => Health::paused(error, until),
        };
        let sending = {
            let gates = self.gates.lock();
            match &gates.pause {
                Some(p) if now < p.until => Health::paused(p.error.clone(), Some(p.wall_until)),
                _ => match self.limiter.daily_exhausted_until(wall) {
                    Some(until) => Health::paused(
                        SendError {
                            kind: ErrorKind::Quota,
                            errcode: None,
                            message: "today's send quota is spent".into(),
                        },
                        Some(until),
                    ),
                    None => Health::Ok,
                },
            }
        };
        let circuit = match self.breaker.state() {
            CircuitState::Closed => Circuit::Closed,
            CircuitState::HalfOpen => Circuit::HalfOpen,
            CircuitState::Open => Circuit::Open,
        };
        ChannelHealth {
            token,
            sending,
            circuit,
        }
    }

    /// Changes each time the circuit breaker closes again (WeChat is back), so that the
    /// dispatcher can pull in the retries an outage delayed.
    pub fn circuit_closings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closings.subscribe()
    }

    /// The concurrency gate and latency tracker (limit, derived timeouts).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Recalls a delivered message by the provider's message id: one request with the
    /// channel's token (refreshed once if refused). `Ok` when the provider said errcode 0.
    pub async fn recall(&self, outgoing: Outgoing) -> Result<(), SendError> {
        let mut token = match self.tokens.get().await {
            Ok(token) => token,
            Err(TokenError::Paused { error, .. } | TokenError::Unavailable { error, .. }) => {
                return Err(error);
            }
        };
        let mut attempt = self.attempt(&token, outgoing.clone()).await;
        if matches!(
            attempt,
            Attempt::Answered {
                action: SendAction::RefreshToken,
                ..
            }
        ) {
            self.tokens.invalidate(&token);
            token = match self.tokens.get().await {
                Ok(token) => token,
                Err(TokenError::Paused { error, .. } | TokenError::Unavailable { error, .. }) => {
                    return Err(error);
                }
            };
            attempt = self.attempt(&token, outgoing).await;
        }
        match attempt {
            Attempt::Answered {
                action: SendAction::Delivered,
                ..
            } => Ok(()),
            Attempt::Answered {
                errcode, errmsg, ..
            } => Err(errcode_error(self.provider.token_scope(), errcode, &errmsg)),
            Attempt::Status { status, .. } => Err(SendError {
                kind: ErrorKind::HttpStatus,
                errcode: None,
                message: format!("the recall was answered HTTP {status}"),
            }),
            Attempt::Failed(e) => Err(SendError {
                kind: ErrorKind::Transport,
                errcode: None,
                message: e.to_string(),
            }),
            Attempt::BadBody => Err(SendError {
                kind: ErrorKind::BadResponse,
                errcode: None,
                message: "the recall was answered without a JSON errcode".into(),
            }),
        }
    }

    /// The channel's provider.
    pub fn provider(&self) -> &Arc<dyn Sender> {
        &self.provider
    }

    /// The access_token manager (the template registry fetches its lists with it).
    pub fn tokens(&self) -> &Arc<TokenManager> {
        &self.tokens
    }

    /// The shared HTTP client (for callers that need the same pool, e.g. diagnostics).
    pub fn http(&self) -> &Arc<HttpClient> {
        &self.http
    }
}

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;

/// How often a pod looks for a send pause another pod set.
const SEND_PAUSE_POLL: Duration = Duration::from_secs(1);

/// Copies a channel-wide send pause (a configuration fault another pod's send met) into this
/// pod's gates, once a second, while the sender lives. Polled rather than checked per send so
/// that sending costs no extra Redis round trip.
fn watch_send_pause(shared: Arc<dyn Coordinator>, gates: std::sync::Weak<Mutex<Gates>>) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(SEND_PAUSE_POLL).await;
            }
            let Some(gates) = gates.upgrade() else {
                return;
            };
            match shared.send_pause().await {
                Ok(pause) => adopt_send_pause(&gates, pause),
                Err(e) => tracing::debug!(error = %e, "send pause not readable from Redis"),
            }
        }
    });
}

/// Takes over a channel-wide send pause, unless this pod's own lasts longer.
fn adopt_send_pause(gates: &Mutex<Gates>, pause: Option<(i64, String, Duration)>) {
    let Some((code, message, left)) = pause else {
        return;
    };
    let now = Instant::now();
    let mut g = gates.lock();
    if g.pause.as_ref().is_none_or(|p| p.until < now + left) {
        tracing::warn!(errcode = code, "another pod paused sending: {message}");
        g.pause = Some(SendPause {
            error: SendError {
                kind: ErrorKind::Errcode,
                errcode: Some(code),
                message,
            },
            until: now + left,
            wall_until: SystemTime::now() + left,
        });
    }
}
