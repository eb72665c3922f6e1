//! `wxpush-pusher demo`: the whole path in one command. It starts the WeChat sandbox in this
//! process (or uses one at `--sandbox-url`), a pusher on a temporary store, sends messages
//! through the pusher's real HTTP API, waits until they are delivered and reports the count,
//! the rate and the accepted → delivered latency percentiles. The bench script uses it too.
//!
//! Modules: [`faults`] (`--faults MODE`: what the sandbox does wrong), [`progress`] (the live
//! progress line), [`report`] (the closing table).
//!
//! **Why one file of about 670 lines.** `Demo` is one run: start, send, wait, read the metrics and
//! the sandbox, report; its steps share the running pusher, the sandbox and the options. What
//! stands alone already has a module (the faults, the progress line, the report's text).

pub mod faults;
pub mod progress;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::config::PusherConfig;
use crate::metrics::{
    AttemptLabels, AttemptResult, Outcome, OutcomeLabels, TokenApiLabel, TokenLabels, TokenResult,
};
use crate::providers::demo::DemoProfile;
use crate::wiring::{Pusher, ServerError};
use wxpush_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

pub use faults::FaultMode;
pub use progress::Style as ProgressStyle;
pub use report::{Attempts, DemoReport};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Messages to send.
    pub count: usize,
    /// Concurrent HTTP requests to the pusher.
    pub concurrency: usize,
    /// Messages per request (1 = `POST /v1/messages`, more = `/v1/messages/batch`).
    pub batch: usize,
    /// The pusher's `concurrency.maxInFlight`; `None` keeps the pusher's own default.
    pub max_in_flight: Option<u32>,
    /// The pusher's `rateLimit.perSecond` (and burst).
    pub rate_limit: u32,
    /// A sandbox already running (else one starts in this process).
    pub sandbox_url: Option<String>,
    /// Its appid.
    pub appid: String,
    /// Its secret.
    pub secret: String,
    /// Status documents fetched for the latency percentiles (at most).
    pub latency_sample: usize,
    /// Give up waiting for deliveries after this long.
    pub timeout: Duration,
    /// Make the sandbox misbehave (and tighten the pusher's timeouts, backoff and breaker).
    pub faults: Option<FaultMode>,
    /// How progress is shown while the run lasts.
    pub progress: ProgressStyle,
    /// The channel's provider: `wechatOfficialAccount` or `wecomApp`.
    pub provider: crate::policy::Provider,
}

/// Status documents fetched for the latency percentiles, at most.
pub const LATENCY_SAMPLE: usize = 2000;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The sandbox did not start.
    #[error("sandbox: {0}")]
    Sandbox(#[from] wxpush_sandbox::SandboxError),
    /// The pusher did not start.
    #[error("pusher: {0}")]
    Pusher(#[from] ServerError),
    /// The generated config is invalid (a bug).
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// An HTTP call failed.
    #[error("http: {0}")]
    Http(String),
    /// The demo does not run this provider.
    #[error("the demo runs wechatOfficialAccount and wecomApp, not {0}")]
    Provider(&'static str),
    /// Not everything was delivered in time.
    #[error("timed out: {delivered} of {accepted} delivered after {waited:?}")]
    Timeout {
        /// Delivered so far.
        delivered: u64,
        /// Accepted.
        accepted: usize,
        /// How long it waited.
        waited: Duration,
    },
}

/// A running demo: the sandbox (when in-process), the pusher and its temp folder.
#[derive(Debug)]
pub struct Demo {
    /// The pusher.
    pub pusher: Pusher,
    /// The in-process sandbox, if any.
    pub sandbox: Option<SandboxHandle>,
    /// The sandbox's base URL.
    pub sandbox_url: String,
    /// The pusher's bearer token.
    pub token: String,
    /// The store folder (removed by [`Demo::stop`]).
    pub dir: PathBuf,
    profile: DemoProfile,
    http: reqwest::Client,
}

fn http_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Http(e.to_string())
}

impl Demo {
    /// Starts the sandbox (unless given) and a pusher pointed at it.
    pub async fn start(opts: &DemoOptions) -> Result<Self, DemoError> {
        let profile = crate::providers::demo::profile(opts.provider, &opts.appid, &opts.secret)
            .ok_or(DemoError::Provider(opts.provider.as_str()))?;
        let (sandbox, sandbox_url) = match &opts.sandbox_url {
            Some(url) => (None, url.trim_end_matches('/').to_string()),
            None => {
                let handle = Sandbox::start(SandboxConfig {
                    daily_quota: None,
                    template_defs: (opts.faults == Some(FaultMode::Templates))
                        .then(faults::demo_catalogue),
                    ..SandboxConfig::new(opts.appid.clone(), opts.secret.clone())
                })
                .await?;
                let url = handle.base_url();
                (Some(handle), url)
            }
        };
        let dir = std::env::temp_dir().join(format!("wxpush-demo-{}", ulid::Ulid::new()));
        let token = format!("demo-{}", ulid::Ulid::new());
        let mut yaml = json!({
            "listen": "127.0.0.1:0",
            "channel": "demo",
            "provider": opts.provider,
            "apiBaseUrl": sandbox_url,
            "credentials": profile.credentials,
            "auth": {"token": token},
            "queue": {"embedded": {"path": dir.display().to_string()}},
            "rateLimit": {"perSecond": opts.rate_limit, "burst": opts.rate_limit, "dailyQuota": 0},
            "shutdown": {"drainTimeout": "5s"},
        });
        if opts.faults.is_some() {
            crate::demo::merge(&mut yaml, &FaultMode::pusher_overrides());
        }
        if let Some(max) = opts.max_in_flight {
            crate::demo::merge(&mut yaml, &json!({"concurrency": {"maxInFlight": max}}));
        }
        if opts.faults == Some(FaultMode::Templates) {
            crate::demo::merge(&mut yaml, &json!({"templates": {"validation": "strict"}}));
        }
        let config = PusherConfig::from_yaml(&yaml.to_string())?;
        config.validate()?;
        let pusher = Pusher::start(config).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(opts.concurrency.max(1))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(http_err)?;
        Ok(Self {
            pusher,
            sandbox,
            sandbox_url,
            token,
            dir,
            profile,
            http,
        })
    }

    /// The pusher's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.pusher.addr())
    }

    /// The sandbox's statistics as JSON (in-process, or `GET /__stats`).
    async fn sandbox_stats(&self) -> Result<Value, DemoError> {
        if let Some(s) = &self.sandbox {
            return serde_json::to_value(s.stats()).map_err(http_err);
        }
        self.http
            .get(format!("{}/__stats", self.sandbox_url))
            .send()
            .await
            .map_err(http_err)?
            .json()
            .await
            .map_err(http_err)
    }

    /// Applies the faults of `mode` to the sandbox (in-process, or `PUT /__faults`).
    async fn apply_faults(&self, mode: FaultMode) -> Result<(), DemoError> {
        let faults = mode.sandbox_faults();
        if let Some(s) = &self.sandbox {
            return s
                .set_faults(faults)
                .map_err(|e| DemoError::Http(format!("sandbox faults: {e}")));
        }
        let resp = self
            .http
            .put(format!("{}/__faults", self.sandbox_url))
            .json(&faults)
            .send()
            .await
            .map_err(http_err)?;
        if !resp.status().is_success() {
            return Err(DemoError::Http(format!("PUT /__faults: {}", resp.status())));
        }
        Ok(())
    }

    /// Sends `opts.count` messages, waits for them to settle (or `opts.timeout`) and reports.
    pub async fn run(&self, opts: &DemoOptions) -> Result<DemoReport, DemoError> {
        let stats_before = self.sandbox_stats().await?;
        let metrics = Arc::clone(self.pusher.metrics());
        let before = MetricCounts::read(&metrics);
        let sent = Arc::new(AtomicUsize::new(0));
        let probe = progress::Probe::new(Arc::clone(&metrics), Arc::clone(&sent));
        if let Some(mode) = opts.faults {
            self.apply_faults(mode).await?;
        }
        if opts.faults == Some(FaultMode::Templates) {
            self.wait_for_templates().await?;
        }
        let refused: Arc<parking_lot::Mutex<std::collections::BTreeMap<String, u64>>> =
            Arc::default();
        let start = Instant::now();
        let shown = progress::Progress::start(
            opts.progress,
            probe
                .clone()
                .with_scrape(self.http.clone(), format!("{}/metrics", self.base())),
            opts.count,
        );
        let batch = opts.batch.max(1);
        let requests = opts.count.div_ceil(batch);
        let ids: Vec<Result<Vec<String>, DemoError>> = futures::stream::iter(0..requests)
            .map(|r| {
                let sent = Arc::clone(&sent);
                let refused = Arc::clone(&refused);
                async move {
                    let from = r * batch;
                    let n = batch.min(opts.count - from);
                    let msgs: Vec<Value> = (from..from + n)
                        .map(|i| {
                            if self.profile.wechat_messages {
                                faults::demo_message(opts.faults, i)
                            } else {
                                crate::providers::demo::wecom_message(i)
                            }
                        })
                        .collect();
                    let (ids, rules) = self.post(msgs).await?;
                    sent.fetch_add(ids.len(), Ordering::Relaxed);
                    let mut r = refused.lock();
                    for rule in rules {
                        *r.entry(rule).or_default() += 1;
                    }
                    Ok(ids)
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        let accept_seconds = start.elapsed().as_secs_f64();
        let mut all = Vec::with_capacity(opts.count);
        let mut first_error = None;
        for r in ids {
            match r {
                Ok(v) => all.extend(v),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            shown.finish().await;
            return Err(e);
        }
        let accepted = all.len();
        let deadline = start + opts.timeout;
        let settled = loop {
            let c = probe.read();
            if c.delivered + c.not_delivered >= accepted as u64 {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let total_seconds = start.elapsed().as_secs_f64();
        shown.finish().await;
        if opts.faults.is_some() {
            // Back to a healthy sandbox for --keep-running and the status look-ups below.
            if let Some(s) = &self.sandbox {
                let _ = s.set_faults(wxpush_sandbox::FaultConfig::default());
            }
        }
        let after = MetricCounts::read(&metrics);
        let stats_after = self.sandbox_stats().await?;
        let latency_ms = self.latencies(&all, opts).await?;
        Ok(self.report(ReportInputs {
            opts,
            ids: &all,
            settled,
            accept_seconds,
            total_seconds,
            before: &before,
            after: &after,
            stats_before: &stats_before,
            stats_after: &stats_after,
            latency_ms,
            refused: &refused.lock(),
        }))
    }

    /// Waits (at most 10 s) until the pusher's template registry holds the sandbox's templates.
    async fn wait_for_templates(&self) -> Result<(), DemoError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let gauge = self
            .pusher
            .metrics()
            .templates
            .get_or_create(&crate::metrics::TemplateListLabels {
                list: crate::metrics::TemplateList::Private,
            })
            .clone();
        while gauge.get() < 1 {
            if Instant::now() > deadline {
                return Err(DemoError::Http(
                    "the pusher did not read the sandbox's template list within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn report(&self, i: ReportInputs<'_>) -> DemoReport {
        let d = |f: fn(&MetricCounts) -> u64| f(i.after).saturating_sub(f(i.before));
        let delivered = d(|m| m.delivered);
        let failed = d(|m| m.failed);
        let expired = d(|m| m.expired);
        let dead_lettered = d(|m| m.dead_lettered);
        let not_delivered = failed + expired + dead_lettered;
        let attempts = Attempts {
            ok: d(|m| m.attempts[0]),
            retryable: d(|m| m.attempts[1]),
            permanent: d(|m| m.attempts[2]),
            timeout: d(|m| m.attempts[3]),
            transport: d(|m| m.attempts[4]),
        };
        let s = |path: &[&str]| {
            let get = |v: &Value| {
                path.iter()
                    .fold(v, |v, k| &v[*k])
                    .as_u64()
                    .unwrap_or_default()
            };
            get(i.stats_after).saturating_sub(get(i.stats_before))
        };
        let map_delta = |key: &str| -> std::collections::BTreeMap<String, u64> {
            let before = &i.stats_before[key];
            i.stats_after[key]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let n = v
                        .as_u64()?
                        .saturating_sub(before[k].as_u64().unwrap_or_default());
                    (n > 0 && k != "0").then(|| (k.clone(), n))
                })
                .collect()
        };
        let accepted = i.ids.len();
        // Requests that reached WeChat for messages the pusher refused (their touser is
        // `demo-bad-…`): each would have spent a unit of the daily quota.
        let spent_on_refused = i.stats_after["per_openid"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("demo-bad-"))
            .map(|(k, v)| {
                v["requests"].as_u64().unwrap_or_default().saturating_sub(
                    i.stats_before["per_openid"][k]["requests"]
                        .as_u64()
                        .unwrap_or_default(),
                )
            })
            .sum();
        let counted = |key: &'static str| match self.profile.stats_section {
            Some(section) => s(&[section, key]),
            None => s(&[key]),
        };
        let sandbox_delivered_unique = counted("delivered_unique");
        let settled_count = delivered + not_delivered;
        let pending = (accepted as u64).saturating_sub(settled_count);
        // Lost: accepted (202) but neither received by WeChat (the sandbox's own count of
        // unique deliveries) nor reported as ended otherwise, nor still pending.
        let lost = (accepted as u64)
            .saturating_sub(sandbox_delivered_unique.min(delivered))
            .saturating_sub(not_delivered)
            .saturating_sub(pending);
        let settled_attempts = attempts.ok + attempts.permanent;
        let base = self.base();
        let mut urls = vec![
            format!("{base}/metrics"),
            format!("{}/__stats", self.sandbox_url),
        ];
        urls.extend(
            i.ids
                .iter()
                .take(3)
                .map(|id| format!("{base}/v1/messages/{id}")),
        );
        DemoReport {
            faults: i.opts.faults,
            fault_description: i.opts.faults.map(FaultMode::describe),
            refused: i.refused.values().sum(),
            refused_by_rule: i.refused.clone(),
            sends_for_refused: spent_on_refused,
            accepted,
            delivered,
            not_delivered,
            failed,
            expired,
            dead_lettered,
            pending,
            lost,
            settled: i.settled,
            sandbox_delivered_unique,
            duplicates_suppressed: counted("duplicates_suppressed"),
            attempts,
            retries: attempts
                .total()
                .saturating_sub(settled_attempts.min(settled_count)),
            hedges: d(|m| m.hedges),
            breaker_opens: d(|m| m.breaker_opens),
            token_requests: d(|m| m.token_ok),
            sandbox_token_calls: s(&["token_calls", "classic"]) + s(&["token_calls", "stable"]),
            sandbox_errcodes: map_delta("errcodes"),
            sandbox_faults: map_delta("faults"),
            accept_seconds: i.accept_seconds,
            total_seconds: i.total_seconds,
            accept_rate: accepted as f64 / i.accept_seconds.max(1e-9),
            delivery_rate: delivered as f64 / i.total_seconds.max(1e-9),
            latency_ms: i.latency_ms,
            urls,
            sample_ids: i.ids.iter().take(3).cloned().collect(),
        }
    }

    /// Shell lines that work against this demo while it runs (`--keep-running`).
    pub fn curl_lines(&self, report: &DemoReport) -> Vec<String> {
        let base = self.base();
        let auth = format!("-H 'Authorization: Bearer {}'", self.token);
        let mut lines = vec![format!(
            "curl -sS -i -X POST {base}/v1/messages {auth} -H 'Content-Type: application/json' \\\n    \
             -d '{{\"touser\": \"o-user-1\", \"template_id\": \"TPL\", \"data\": {{\"keyword1\": {{\"value\": \"Shipped\"}}}}}}'"
        )];
        lines.extend(
            report
                .sample_ids
                .iter()
                .take(1)
                .map(|id| format!("curl -sS {auth} {base}/v1/messages/{id}")),
        );
        lines.push(format!("curl -sS {base}/metrics | grep '^wxpush_'"));
        lines.push(format!("curl -sS {}/__stats", self.sandbox_url));
        lines
    }

    /// Posts messages; answers the ids of those accepted and the rule of each one refused by
    /// the template check.
    async fn post(&self, msgs: Vec<Value>) -> Result<(Vec<String>, Vec<String>), DemoError> {
        let single = msgs.len() == 1;
        let (url, body) = if single {
            (format!("{}/v1/messages", self.base()), msgs[0].clone())
        } else {
            (
                format!("{}/v1/messages/batch", self.base()),
                json!({ "messages": msgs }),
            )
        };
        for attempt in 0..50u32 {
            let resp = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
                .map_err(http_err)?;
            let status = resp.status();
            if status.as_u16() == 429 || status.as_u16() == 503 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await;
                continue;
            }
            let v: Value = resp.json().await.map_err(http_err)?;
            let rule = |e: &Value| {
                (e["code"] == "template_rule")
                    .then(|| e["rule"].as_str().unwrap_or("unknown").to_string())
            };
            if single && let Some(r) = rule(&v["error"]) {
                return Ok((Vec::new(), vec![r]));
            }
            let results = v["results"].as_array().cloned().unwrap_or_default();
            let rules: Vec<String> = results.iter().filter_map(|r| rule(&r["error"])).collect();
            if status.as_u16() != 202
                && !(status.as_u16() == 422 && rules.len() == results.len() && !rules.is_empty())
            {
                return Err(DemoError::Http(format!("{status}: {v}")));
            }
            return Ok(if single {
                (
                    v["id"].as_str().map(str::to_string).into_iter().collect(),
                    Vec::new(),
                )
            } else {
                (
                    results
                        .iter()
                        .filter_map(|r| r["id"].as_str().map(str::to_string))
                        .collect(),
                    rules,
                )
            });
        }
        Err(DemoError::Http("the pusher kept answering 429/503".into()))
    }

    async fn latencies(&self, ids: &[String], opts: &DemoOptions) -> Result<Value, DemoError> {
        let step = (ids.len() / opts.latency_sample.max(1)).max(1);
        let sample: Vec<&String> = ids.iter().step_by(step).collect();
        let docs: Vec<Result<Value, DemoError>> = futures::stream::iter(sample)
            .map(|id| async move {
                self.http
                    .get(format!("{}/v1/messages/{id}", self.base()))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .map_err(http_err)?
                    .json::<Value>()
                    .await
                    .map_err(http_err)
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        let mut ms = Vec::new();
        for doc in docs {
            let doc = doc?;
            let parse = |k: &str| {
                doc[k]
                    .as_str()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            };
            if let (Some(a), Some(f)) = (parse("accepted_at"), parse("finished_at")) {
                ms.push(f.duration_since(a).as_secs_f64() * 1000.0);
            }
        }
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() - 1) as f64 * q).round() as usize]
            }
        };
        Ok(json!({
            "sampled": ms.len(),
            "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0),
        }))
    }

    /// Stops the pusher (gracefully) and the sandbox; removes the temp folder.
    pub async fn stop(self) {
        self.pusher.shutdown();
        self.pusher.wait().await;
        if let Some(s) = self.sandbox {
            s.shutdown(Duration::from_secs(2)).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Merges `patch` into `base` (objects recursively; anything else replaces).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The pusher counters the report is made of, read once before and once after the run.
#[derive(Debug, Clone, Default)]
struct MetricCounts {
    delivered: u64,
    failed: u64,
    expired: u64,
    dead_lettered: u64,
    /// ok, retryable, permanent, timeout, transport.
    attempts: [u64; 5],
    breaker_opens: u64,
    hedges: u64,
    token_ok: u64,
}

impl MetricCounts {
    fn read(m: &crate::metrics::Metrics) -> Self {
        let outcome = |outcome| m.completed.get_or_create(&OutcomeLabels { outcome }).get();
        let attempt = |result| {
            m.send_attempts
                .get_or_create(&AttemptLabels { result })
                .get()
        };
        let token = |api: TokenApiLabel| {
            m.token_requests
                .get_or_create(&TokenLabels {
                    api,
                    result: TokenResult::Ok,
                })
                .get()
        };
        Self {
            delivered: outcome(Outcome::delivered),
            failed: outcome(Outcome::failed),
            expired: outcome(Outcome::expired),
            dead_lettered: outcome(Outcome::dead_lettered),
            attempts: [
                attempt(AttemptResult::ok),
                attempt(AttemptResult::retryable),
                attempt(AttemptResult::permanent),
                attempt(AttemptResult::timeout),
                attempt(AttemptResult::transport),
            ],
            breaker_opens: m.circuit_opens.get(),
            hedges: m.hedged_sends.get(),
            token_ok: token(TokenApiLabel::Stable) + token(TokenApiLabel::Classic),
        }
    }
}

struct ReportInputs<'a> {
    opts: &'a DemoOptions,
    ids: &'a [String],
    settled: bool,
    accept_seconds: f64,
    total_seconds: f64,
    before: &'a MetricCounts,
    after: &'a MetricCounts,
    stats_before: &'a Value,
    stats_after: &'a Value,
    latency_ms: Value,
    refused: &'a std::collections::BTreeMap<String, u64>,
}
