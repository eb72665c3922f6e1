//! Shared by the `wechat_*` tests: a pusher config pointing at a sandbox, message bodies, and a
//! TCP proxy that counts access_token requests in flight as the sandbox sees them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wxpush_pusher::config::PusherConfig;
use wxpush_pusher::metrics::Metrics;
use wxpush_pusher::wechat::{MessageKind, SendOutcome, SendRequest, WeChatSender};
use wxpush_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

/// The test account.
pub const APPID: &str = "wxwechattest00001";
/// Its secret.
pub const SECRET: &str = "wechat-test-secret";

/// A sandbox config for the test account.
pub fn sandbox_config() -> SandboxConfig {
    SandboxConfig::new(APPID, SECRET)
}

/// Starts a sandbox in-process.
pub async fn sandbox(config: SandboxConfig) -> SandboxHandle {
    Sandbox::start(config).await.expect("the sandbox starts")
}

/// A validated pusher config for `base`, with `extra` YAML lines appended.
pub fn config(base: &str, extra: &str) -> PusherConfig {
    let yaml = format!(
        "listen: 127.0.0.1:0\nchannel: t\napiBaseUrl: {base}\n\
         credentials: {{appId: {APPID}, appSecret: {SECRET}}}\n\
         auth: {{token: a-long-enough-token-0123}}\n{extra}"
    );
    let config = PusherConfig::from_yaml(&yaml).expect("the test config parses");
    config.validate().expect("the test config is valid");
    config
}

/// A template message body.
pub fn template(touser: &str, client_msg_id: &str) -> Value {
    json!({
        "touser": touser,
        "template_id": "TPL",
        "client_msg_id": client_msg_id,
        "data": {"keyword1": {"value": "Shipped"}},
    })
}

/// Counts requests in flight through it, in particular access_token requests.
#[derive(Debug, Default)]
pub struct Counters {
    /// access_token requests in flight now.
    pub token_inflight: AtomicUsize,
    /// The most ever in flight at once.
    pub token_max: AtomicUsize,
    /// access_token requests seen.
    pub token_requests: AtomicUsize,
}

/// A TCP proxy in front of `upstream`; returns its address and its counters. HTTP/1.1 without
/// pipelining: the first client chunk on an idle connection starts a request, the first server
/// chunk after it starts its response.
pub async fn counting_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Counters>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let counters = Arc::new(Counters::default());
    let shared = Arc::clone(&counters);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counters = Arc::clone(&shared);
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(upstream).await {
                    pump(client, server, &counters).await;
                }
            });
        }
    });
    (addr, counters)
}

async fn pump(mut client: TcpStream, mut server: TcpStream, c: &Counters) {
    let (mut cbuf, mut sbuf) = (vec![0u8; 16384], vec![0u8; 16384]);
    let (mut awaiting, mut token) = (false, false);
    let finish = |token: &mut bool| {
        if std::mem::take(token) {
            c.token_inflight.fetch_sub(1, Ordering::SeqCst);
        }
    };
    loop {
        tokio::select! {
            n = client.read(&mut cbuf) => {
                let Ok(n @ 1..) = n else { break };
                if !awaiting {
                    awaiting = true;
                    let head = &cbuf[..n];
                    if head.starts_with(b"GET /cgi-bin/token") || head.starts_with(b"POST /cgi-bin/stable_token") {
                        token = true;
                        c.token_requests.fetch_add(1, Ordering::SeqCst);
                        let now = c.token_inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        c.token_max.fetch_max(now, Ordering::SeqCst);
                    }
                }
                if server.write_all(&cbuf[..n]).await.is_err() { break }
            }
            n = server.read(&mut sbuf) => {
                let Ok(n @ 1..) = n else { break };
                if awaiting {
                    awaiting = false;
                    finish(&mut token);
                }
                if client.write_all(&sbuf[..n]).await.is_err() { break }
            }
        }
    }
    finish(&mut token);
}

/// A sender for `config` with its own metrics, shared as the dispatcher shares it.
pub fn sender(config: &PusherConfig) -> (Arc<WeChatSender>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new("t"));
    let sender = WeChatSender::new(config, Arc::clone(&metrics)).expect("sender builds");
    (Arc::new(sender), metrics)
}

/// One template send attempt.
pub async fn send(sender: &WeChatSender, body: &Value) -> SendOutcome {
    let body = serde_json::value::to_raw_value(body).expect("json");
    sender
        .send(SendRequest {
            kind: MessageKind::Template,
            body: &body,
        })
        .await
}
