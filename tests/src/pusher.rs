//! Helpers for the pusher's end-to-end tests: write a config into a temp dir, spawn
//! `wxpush-pusher serve`, wait for `/readyz`, and talk to its API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::sandbox::{APPID, SECRET};
use crate::{ChildGuard, binary, wait_for};

/// The bearer token every test pusher takes.
pub const TOKEN: &str = "engine-test-token-0123456789";

/// Merges `patch` into `base` (objects recursively; anything else replaces).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// A pusher config (as JSON, which is YAML) for a sandbox at `sandbox`, storing in `store`,
/// fast enough for tests; `overrides` are merged in.
pub fn config(sandbox: &str, store: &Path, overrides: &Value) -> Value {
    let mut c = json!({
        "listen": "127.0.0.1:0",
        "channel": "engine-test",
        "apiBaseUrl": sandbox,
        "credentials": {"appId": APPID, "appSecret": SECRET},
        "auth": {"token": TOKEN},
        "queue": {"embedded": {"path": store.join("queue").display().to_string()}},
        "concurrency": {"maxInFlight": 64},
        "rateLimit": {"perSecond": 100000, "burst": 100000, "dailyQuota": 0},
        "shutdown": {"drainTimeout": "3s"},
    });
    merge(&mut c, overrides);
    c
}

/// A running `wxpush-pusher serve`.
#[derive(Debug)]
pub struct PusherProc {
    /// The process (killed on drop).
    pub guard: ChildGuard,
    /// `http://ADDR` of its API.
    pub base: String,
    /// A client for its API.
    pub api: Api,
}

impl PusherProc {
    /// Writes `config` to `dir/pusher.yaml` and starts the pusher with it; waits until it
    /// prints its address and `/readyz` answers 200.
    pub async fn start(dir: &Path, config: &Value) -> Self {
        let path = dir.join("pusher.yaml");
        std::fs::write(&path, config.to_string()).expect("write the config");
        Self::start_with(&path, &[]).await
    }

    /// Starts `wxpush-pusher serve --config PATH` with extra environment variables.
    pub async fn start_with(path: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(path, env, &[]).await
    }

    /// As [`Self::start_with`], run through a wrapper command (`prefix`, e.g.
    /// `["prlimit", "--nofile=256:256"]`) that execs the pusher.
    pub async fn start_wrapped(path: &Path, env: &[(&str, &str)], prefix: &[&str]) -> Self {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary("wxpush-pusher"));
                c
            }
            None => Command::new(binary("wxpush-pusher")),
        };
        cmd.args(["serve", "--config"])
            .arg(path)
            .env(
                "RUST_LOG",
                std::env::var("WXPUSH_TEST_LOG").unwrap_or("warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        let mut guard = ChildGuard::spawn("wxpush-pusher", cmd);
        let stdout = guard.child.stdout.take().expect("stdout is piped");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(30), line)
            .await
            .expect("the pusher prints its address within 30 s")
            .expect("reader joins")
            .expect("read stdout");
        let base = line
            .trim()
            .strip_prefix("wxpush-pusher listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        let api = Api::new(&base, TOKEN);
        let probe = api.clone();
        wait_for("the pusher's /readyz", Duration::from_secs(30), || {
            let probe = probe.clone();
            async move { (probe.raw_get("/readyz").await.0 == 200).then_some(()) }
        })
        .await;
        Self { guard, base, api }
    }

    /// SIGKILL, reaped.
    pub fn kill9(&mut self) {
        self.guard.kill();
    }
}

/// A small client for the pusher's API.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://ADDR`.
    pub base: String,
    /// The bearer token sent.
    pub token: String,
    /// The HTTP client.
    pub http: reqwest::Client,
}

impl Api {
    /// A client with its own pool.
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a reqwest client builds"),
        }
    }

    async fn answer(r: reqwest::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /v1/messages` with an optional `Idempotency-Key`.
    pub async fn try_send(&self, msg: &Value, key: Option<&str>) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(&self.token)
            .json(msg);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Ok(Self::answer(req.send().await?).await)
    }

    /// `POST /v1/messages`; panics on transport errors.
    pub async fn send(&self, msg: &Value) -> (u16, Value) {
        self.try_send(msg, None).await.expect("the pusher answers")
    }

    /// `POST /v1/messages/batch` with an optional `Idempotency-Key`.
    pub async fn try_batch(
        &self,
        msgs: &[Value],
        key: Option<&str>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http
            .post(format!("{}/v1/messages/batch", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "messages": msgs }));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Ok(Self::answer(req.send().await?).await)
    }

    /// `POST /v1/messages/batch`; asserts 202 and returns the ids in order.
    pub async fn batch_ids(&self, msgs: &[Value]) -> Vec<String> {
        let (status, v) = self
            .try_batch(msgs, None)
            .await
            .expect("the pusher answers");
        assert_eq!(status, 202, "{v}");
        ids_of(&v)
    }

    /// `GET /v1/messages/{id}`.
    pub async fn status(&self, id: &str) -> (u16, Value) {
        self.get(&format!("/v1/messages/{id}")).await
    }

    /// An authenticated GET.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the pusher answers");
        Self::answer(r).await
    }

    /// An authenticated POST with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("the pusher answers");
        Self::answer(r).await
    }

    /// An authenticated POST without a body.
    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the pusher answers");
        Self::answer(r).await
    }

    /// An unauthenticated GET; status and body (errors as status 0).
    pub async fn raw_get(&self, path: &str) -> (u16, String) {
        match self.http.get(format!("{}{path}", self.base)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        self.raw_get("/metrics").await.1
    }

    /// One sample of `/metrics`: the value of the series `name` whose labels include every
    /// `k="v"` in `labels` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Waits until the pusher reports `n` messages delivered.
    pub async fn wait_delivered(&self, n: u64, timeout: Duration) {
        let me = self.clone();
        wait_for(&format!("{n} messages delivered"), timeout, || {
            let me = me.clone();
            async move {
                let got = me
                    .metric(
                        "wxpush_messages_completed_total",
                        &[("outcome", "delivered")],
                    )
                    .await;
                (got as u64 >= n).then_some(())
            }
        })
        .await;
    }
}

/// The ids of a batch answer, in order (items that failed are skipped).
pub fn ids_of(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect()
}

/// The value of a Prometheus text series (see [`Api::metric`]).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A template message to `touser`.
pub fn template(touser: &str) -> Value {
    json!({
        "touser": touser,
        "template_id": "TPL_SHIPPED",
        "url": "https://example.com/o/1",
        "data": {"keyword1": {"value": "Shipped"}, "keyword2": {"value": "2026-11-28"}},
    })
}

/// A temp dir for a test's store and config.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// Path of the config a [`PusherProc::start`] wrote in `dir`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("pusher.yaml")
}

/// Sends `msgs` through the batch route, `batch` per request, `concurrency` requests at once;
/// asserts every item was accepted and returns the ids in the order of `msgs`.
pub async fn send_all(api: &Api, msgs: &[Value], batch: usize, concurrency: usize) -> Vec<String> {
    use futures::StreamExt;
    let chunks: Vec<Vec<String>> = futures::stream::iter(msgs.chunks(batch.max(1)))
        .map(|chunk| async move {
            let ids = api.batch_ids(chunk).await;
            assert_eq!(ids.len(), chunk.len(), "every item accepted");
            ids
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    chunks.into_iter().flatten().collect()
}
