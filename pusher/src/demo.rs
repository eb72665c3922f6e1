//! `wxpush-pusher demo`: the whole path in one command. It starts the WeChat sandbox in this
//! process (or uses one at `--sandbox-url`), a pusher on a temporary store, sends messages
//! through the pusher's real HTTP API, waits until they are delivered and reports the count,
//! the rate and the accepted → delivered latency percentiles. The bench script uses it too.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::PusherConfig;
use crate::metrics::{Outcome, OutcomeLabels};
use crate::wiring::{Pusher, ServerError};
use wxpush_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Messages to send.
    pub count: usize,
    /// Concurrent HTTP requests to the pusher.
    pub concurrency: usize,
    /// Messages per request (1 = `POST /v1/messages`, more = `/v1/messages/batch`).
    pub batch: usize,
    /// The pusher's `concurrency.maxInFlight`.
    pub max_in_flight: u32,
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
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            count: 2000,
            concurrency: 32,
            batch: 1,
            max_in_flight: 64,
            rate_limit: 100_000,
            sandbox_url: None,
            appid: "wxdemo0000000000".into(),
            secret: "demo-secret".into(),
            latency_sample: 2000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Messages answered 202.
    pub accepted: usize,
    /// Messages the pusher reports delivered.
    pub delivered: u64,
    /// Messages that ended otherwise (failed, expired, dead-lettered).
    pub not_delivered: u64,
    /// Unique deliveries the sandbox counted during the run.
    pub sandbox_delivered_unique: u64,
    /// Seconds spent accepting.
    pub accept_seconds: f64,
    /// Seconds from the first request until the last delivery.
    pub total_seconds: f64,
    /// Accepted messages per second.
    pub accept_rate: f64,
    /// Delivered messages per second, end to end.
    pub delivery_rate: f64,
    /// Accepted → delivered latency percentiles in milliseconds (p50, p90, p99, max).
    pub latency_ms: Value,
    /// Where to look: the API, some status URLs, metrics, the sandbox's stats.
    pub urls: Vec<String>,
}

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
    http: reqwest::Client,
}

fn http_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Http(e.to_string())
}

impl Demo {
    /// Starts the sandbox (unless given) and a pusher pointed at it.
    pub async fn start(opts: &DemoOptions) -> Result<Self, DemoError> {
        let (sandbox, sandbox_url) = match &opts.sandbox_url {
            Some(url) => (None, url.trim_end_matches('/').to_string()),
            None => {
                let handle = Sandbox::start(SandboxConfig {
                    daily_quota: None,
                    ..SandboxConfig::new(opts.appid.clone(), opts.secret.clone())
                })
                .await?;
                let url = handle.base_url();
                (Some(handle), url)
            }
        };
        let dir = std::env::temp_dir().join(format!("wxpush-demo-{}", ulid::Ulid::new()));
        let token = format!("demo-{}", ulid::Ulid::new());
        let yaml = json!({
            "listen": "127.0.0.1:0",
            "channel": "demo",
            "apiBaseUrl": sandbox_url,
            "credentials": {"appId": opts.appid, "appSecret": opts.secret},
            "auth": {"token": token},
            "queue": {"embedded": {"path": dir.display().to_string()}},
            "concurrency": {"maxInFlight": opts.max_in_flight},
            "rateLimit": {"perSecond": opts.rate_limit, "burst": opts.rate_limit, "dailyQuota": 0},
            "shutdown": {"drainTimeout": "5s"},
        });
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
            http,
        })
    }

    /// The pusher's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.pusher.addr())
    }

    async fn sandbox_delivered(&self) -> Result<u64, DemoError> {
        if let Some(s) = &self.sandbox {
            return Ok(s.delivered_unique());
        }
        let v: Value = self
            .http
            .get(format!("{}/__stats", self.sandbox_url))
            .send()
            .await
            .map_err(http_err)?
            .json()
            .await
            .map_err(http_err)?;
        Ok(v["delivered_unique"].as_u64().unwrap_or(0))
    }

    fn finished(&self) -> (u64, u64) {
        let m = self.pusher.metrics();
        let get = |outcome| m.completed.get_or_create(&OutcomeLabels { outcome }).get();
        let delivered = get(Outcome::delivered);
        let other = get(Outcome::failed) + get(Outcome::expired) + get(Outcome::dead_lettered);
        (delivered, other)
    }

    /// Sends `opts.count` messages, waits for them and reports.
    pub async fn run(&self, opts: &DemoOptions) -> Result<DemoReport, DemoError> {
        let sandbox_before = self.sandbox_delivered().await?;
        let (delivered_before, other_before) = self.finished();
        let start = Instant::now();
        let batch = opts.batch.max(1);
        let requests = opts.count.div_ceil(batch);
        let sent = Arc::new(AtomicUsize::new(0));
        let ids: Vec<Result<Vec<String>, DemoError>> = futures::stream::iter(0..requests)
            .map(|r| {
                let sent = Arc::clone(&sent);
                async move {
                    let from = r * batch;
                    let n = batch.min(opts.count - from);
                    let msgs: Vec<Value> = (from..from + n)
                        .map(|i| {
                            json!({
                                "touser": format!("demo-user-{}", i % 997),
                                "template_id": "ORDER_SHIPPED",
                                "url": "https://example.com/orders",
                                "data": {"keyword1": {"value": format!("order {i}")},
                                         "keyword2": {"value": "shipped"}},
                            })
                        })
                        .collect();
                    let ids = self.post(msgs).await?;
                    sent.fetch_add(ids.len(), Ordering::Relaxed);
                    Ok(ids)
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        let accept_seconds = start.elapsed().as_secs_f64();
        let mut all = Vec::with_capacity(opts.count);
        for r in ids {
            all.extend(r?);
        }
        let accepted = all.len();
        let deadline = start + opts.timeout;
        let (delivered, other) = loop {
            let (d, o) = self.finished();
            let (d, o) = (d - delivered_before, o - other_before);
            if d + o >= accepted as u64 {
                break (d, o);
            }
            if Instant::now() > deadline {
                return Err(DemoError::Timeout {
                    delivered: d,
                    accepted,
                    waited: opts.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let total_seconds = start.elapsed().as_secs_f64();
        let sandbox_delivered_unique = self.sandbox_delivered().await? - sandbox_before;
        let latency_ms = self.latencies(&all, opts).await?;
        let base = self.base();
        let mut urls = vec![
            format!("{base}/metrics"),
            format!("{}/__stats", self.sandbox_url),
        ];
        urls.extend(
            all.iter()
                .take(3)
                .map(|id| format!("{base}/v1/messages/{id}")),
        );
        Ok(DemoReport {
            accepted,
            delivered,
            not_delivered: other,
            sandbox_delivered_unique,
            accept_seconds,
            total_seconds,
            accept_rate: accepted as f64 / accept_seconds.max(1e-9),
            delivery_rate: delivered as f64 / total_seconds.max(1e-9),
            latency_ms,
            urls,
        })
    }

    async fn post(&self, msgs: Vec<Value>) -> Result<Vec<String>, DemoError> {
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
            if status.as_u16() != 202 {
                return Err(DemoError::Http(format!("{status}: {v}")));
            }
            return Ok(if single {
                v["id"].as_str().map(str::to_string).into_iter().collect()
            } else {
                v["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["id"].as_str().map(str::to_string))
                    .collect()
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
