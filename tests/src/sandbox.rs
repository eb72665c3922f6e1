//! Helpers for the WeChat sandbox's tests: start it in-process or spawn the binary, talk to it
//! like the pusher does, receive its events, and check them with the independent Python
//! implementation in `tests/python/wx_event_verify.py`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use wxpush_sandbox::{Sandbox, SandboxConfig, SandboxHandle, StatsSnapshot};

use crate::{ChildGuard, binary, python, workspace_root};

/// The appid every sandbox test uses.
pub const APPID: &str = "wxtestappid000001";
/// The secret every sandbox test uses.
pub const SECRET: &str = "test-secret";

/// The template catalogue the template tests give the sandbox (`--template-file`): a category
/// template, an old-style template and a one-time subscribe template.
pub fn template_catalogue() -> Value {
    json!([
        {"template_id": "T-ORDER", "title": "Order shipped",
         "keywords": ["character_string1", "thing2", "time3"]},
        {"template_id": "T-OLD", "keywords": ["first", "keyword1", "remark"]},
        {"template_id": "S-PICKUP", "kind": "subscribe", "one_time": true,
         "keywords": ["thing1", "phrase2"]},
    ])
}

/// Writes [`template_catalogue`] into `dir`; its path.
pub fn write_template_catalogue(dir: &std::path::Path) -> String {
    let path = dir.join("templates.json");
    std::fs::write(&path, template_catalogue().to_string()).expect("write the catalogue");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// A default config for [`APPID`] / [`SECRET`].
pub fn config() -> SandboxConfig {
    SandboxConfig::new(APPID, SECRET)
}

/// A plain HTTP client (no proxy, short timeout).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client builds")
}

/// Talks to a sandbox at `base` the way the pusher does.
#[derive(Debug, Clone)]
pub struct WxClient {
    /// `http://ADDR`.
    pub base: String,
    /// The HTTP client (one connection pool).
    pub http: reqwest::Client,
}

impl WxClient {
    /// A client with its own connection pool.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: http(),
        }
    }

    /// `GET <base><path_and_query>`; the JSON answer.
    pub async fn get_json(&self, path_and_query: &str) -> Value {
        let url = format!("{}{path_and_query}", self.base);
        let resp = self.http.get(url).send().await.expect("GET");
        resp.json().await.expect("JSON answer")
    }

    /// `POST <base><path>` with `body` sent as is (it may be malformed on purpose); the JSON
    /// answer.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = self.http.post(url).body(body).send().await.expect("POST");
        resp.json().await.expect("JSON answer")
    }

    /// `GET /cgi-bin/token` with these credentials; the JSON answer.
    pub async fn classic_token_with(&self, appid: &str, secret: &str) -> Value {
        self.get_json(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}"
        ))
        .await
    }

    /// A classic token for the test account.
    pub async fn classic_token(&self) -> String {
        let v = self.classic_token_with(APPID, SECRET).await;
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_string()
    }

    /// `POST /cgi-bin/stable_token` with a raw JSON body; the JSON answer.
    pub async fn stable_token_body(&self, body: &Value) -> Value {
        let url = format!("{}/cgi-bin/stable_token", self.base);
        self.http
            .post(url)
            .json(body)
            .send()
            .await
            .expect("stable call")
            .json()
            .await
            .expect("JSON")
    }

    /// `POST /cgi-bin/stable_token` for the test account.
    pub async fn stable_token(&self, force_refresh: bool) -> Value {
        self.stable_token_body(&json!({
            "grant_type": "client_credential", "appid": APPID, "secret": SECRET,
            "force_refresh": force_refresh,
        }))
        .await
    }

    /// POSTs a raw body to a send API (`template/send`, `subscribe/send`, `subscribe/bizsend`).
    pub async fn try_send_raw(
        &self,
        api: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<Value> {
        let url = format!("{}/cgi-bin/message/{api}?access_token={token}", self.base);
        self.http
            .post(url)
            .body(body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// A template send; the JSON answer.
    pub async fn send_template(&self, token: &str, body: &Value) -> Value {
        self.try_send_raw("template/send", token, body.to_string())
            .await
            .expect("send answers")
    }

    /// A template send to `touser` with an optional `client_msg_id`.
    pub async fn template(&self, token: &str, touser: &str, client_msg_id: Option<&str>) -> Value {
        let mut body = json!({
            "touser": touser, "template_id": "TPL",
            "data": {"keyword1": {"value": "Shipped"}},
        });
        if let Some(c) = client_msg_id {
            body["client_msg_id"] = json!(c);
        }
        self.send_template(token, &body).await
    }

    /// `GET /__stats`.
    pub async fn stats(&self) -> StatsSnapshot {
        let url = format!("{}/__stats", self.base);
        self.http
            .get(url)
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// `PUT /__faults`; the status and the JSON answer.
    pub async fn put_faults(&self, faults: &Value) -> (u16, Value) {
        let url = format!("{}/__faults", self.base);
        let r = self
            .http
            .put(url)
            .json(faults)
            .send()
            .await
            .expect("faults");
        (r.status().as_u16(), r.json().await.expect("faults JSON"))
    }

    /// `PATCH /__faults`; the status and the JSON answer.
    pub async fn patch_faults(&self, patch: &Value) -> (u16, Value) {
        let url = format!("{}/__faults", self.base);
        let r = self
            .http
            .patch(url)
            .json(patch)
            .send()
            .await
            .expect("faults");
        (r.status().as_u16(), r.json().await.expect("faults JSON"))
    }

    /// `POST /__reset`.
    pub async fn reset(&self) {
        let url = format!("{}/__reset", self.base);
        let r = self.http.post(url).send().await.expect("reset");
        assert!(r.status().is_success());
    }
}

/// The errcode of an answer (0 when absent, as in token answers).
pub fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

/// A sandbox started in this process, with separate API and admin clients (admin connections
/// survive outages; API connections do not).
#[derive(Debug)]
pub struct Running {
    /// The sandbox.
    pub handle: SandboxHandle,
    /// Client for the WeChat routes.
    pub api: WxClient,
    /// Client for the `/__` routes.
    pub admin: WxClient,
}

/// Starts a sandbox in-process on a port the OS picks.
pub async fn start(config: SandboxConfig) -> Running {
    let handle = Sandbox::start(config).await.expect("the sandbox starts");
    let base = handle.base_url();
    Running {
        handle,
        api: WxClient::new(base.clone()),
        admin: WxClient::new(base),
    }
}

/// Spawns the `wxpush-sandbox` binary on `--listen 127.0.0.1:0` with `args`; returns the
/// process and its base URL (read from the line it prints).
pub fn spawn(args: &[&str]) -> (ChildGuard, String) {
    let mut cmd = Command::new(binary("wxpush-sandbox"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--appid",
        APPID,
        "--secret",
        SECRET,
    ])
    .args(args)
    .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn("wxpush-sandbox", cmd);
    let stdout = guard.child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the sandbox prints its address");
    let base = line
        .trim()
        .strip_prefix("wxpush-sandbox listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (guard, base)
}

/// One request the event receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    /// Request headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: String,
    /// The HTTP status the receiver answered (500 for the first `fail_first`, else 200).
    pub answered: u16,
}

/// A tiny HTTP/1.1 server standing in for the pusher's `/wechat/events` (or a producer's
/// callback endpoint): records every request with its headers, answers `success` (or 500 for
/// the first `fail_first` requests).
#[derive(Debug, Clone)]
pub struct EventReceiver {
    /// Its address.
    pub addr: SocketAddr,
    /// Everything received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    /// How many requests arrived, for waiting on the next one without polling.
    arrived: Arc<tokio::sync::watch::Sender<usize>>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(target: &str) -> HashMap<String, String> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

impl EventReceiver {
    /// Listens on 127.0.0.1 (OS-chosen port); the first `fail_first` requests get HTTP 500.
    pub async fn start(fail_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let me = Self {
            addr,
            received: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            arrived: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let this = me.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let _ = this.serve(&mut stream).await;
                });
            }
        });
        me
    }

    async fn serve(&self, stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[header_end..]).into_owned();
        let fail = self
            .fail_first
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        let count = {
            let mut received = self.received.lock().await;
            received.push(Received {
                query: parse_query(&target),
                headers,
                body,
                answered: if fail { 500 } else { 200 },
            });
            received.len()
        };
        self.arrived.send_replace(count);
        let reply: &[u8] = if fail {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nsuccess"
        };
        stream.write_all(reply).await?;
        stream.shutdown().await
    }

    /// From now on, fail the next `n` requests with 500 (0: answer every request 200).
    pub fn set_fail_first(&self, n: usize) {
        self.fail_first.store(n, Ordering::SeqCst);
    }

    /// The server URL to configure in the sandbox.
    pub fn url(&self) -> String {
        format!("http://{}/wechat/events", self.addr)
    }

    /// For a check that nothing more comes: waits at most `within` for more than `n` requests
    /// to have arrived (returning at once when they have), and returns how many arrived.
    pub async fn more_than(&self, n: usize, within: Duration) -> usize {
        let mut arrived = self.arrived.subscribe();
        let _ = tokio::time::timeout(within, arrived.wait_for(|&count| count > n)).await;
        *arrived.borrow()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        crate::wait_for(&format!("{n} event requests"), timeout, || async {
            let got = self.received.lock().await;
            (got.len() >= n).then(|| got.clone())
        })
        .await
    }
}

/// Runs `tests/python/wx_event_verify.py` on received events; returns its per-event results.
pub fn python_verify(
    token: &str,
    aes_key: Option<&str>,
    appid: &str,
    events: &[Received],
) -> Vec<Value> {
    let input = json!({
        "token": token, "aes_key": aes_key, "appid": appid,
        "events": events.iter().map(|e| json!({"query": e.query, "body": e.body})).collect::<Vec<_>>(),
    });
    let script = workspace_root().join("tests/python/wx_event_verify.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs (set WXPUSH_PYTHON or create .venv)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.to_string().as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python finishes");
    assert!(
        out.status.success(),
        "python verifier failed (is `cryptography` installed? pip install -r tests/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("verifier JSON");
    v["results"].as_array().cloned().expect("results array")
}
