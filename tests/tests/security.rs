//! Issue 12 ("Nobody in"): each finding of its "Why" section re-run against the real
//! `wxpush-pusher` (and the real sandbox), as a test named after it.
//!
//! No test here makes the pusher connect anywhere but loopback: the refused callback targets are
//! refused before any connection (by address, by name, or by the accept-time resolution of a
//! name in `/etc/hosts`), and the allowed one is a loopback receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use wxpush_tests::pusher::{PusherProc, config, tempdir, template};
use wxpush_tests::sandbox;
use wxpush_tests::wait_for;

/// The URLs of the SSRF finding, all accepted with 202 before the fix.
const SSRF_URLS: &[&str] = &[
    "http://127.0.0.1/cb",
    "http://localhost/cb",
    "http://localhost:6379/",
    "http://0.0.0.0/cb",
    "http://127.1/cb",
    "http://2130706433/cb",
    "http://0x7f.1/cb",
    "http://[::ffff:127.0.0.1]/cb",
    "http://[::1]/cb",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://10.0.0.1:6379/",
];

/// A loopback receiver counting the POSTs it gets; the count is also published on a watch
/// channel, so that a test can wait for a hit instead of sleeping.
async fn receiver() -> (
    String,
    Arc<AtomicUsize>,
    tokio::sync::watch::Receiver<usize>,
) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let (tx, rx) = tokio::sync::watch::channel(0);
    let tx = Arc::new(tx);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        let tx = Arc::clone(&tx);
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tx.send_replace(n);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), hits, rx)
}

fn with_callback(url: &str) -> Value {
    let mut m = template("ssrf");
    m["callback_url"] = json!(url);
    m
}

/// Finding "SSRF through `callback_url`": every listed URL, single and in a batch, gets 422
/// naming `callback_url`; so do userinfo and a name that resolves to loopback; nothing is
/// stored and the loopback receiver gets nothing. An allowlisted loopback target still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_through_callback_url() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let (rx_base, hits, mut hit) = receiver().await;
    let rx_port = rx_base.rsplit(':').next().expect("port").to_string();
    let dir = tempdir();
    // Only 127.0.0.1 itself is allowed, and only for the receiver's test below: every other
    // loopback spelling must still be refused, so the allowlist is a name not used here.
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {"allow": ["127.0.0.9"]}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let mut refused = SSRF_URLS.to_vec();
    let local = format!("http://127.0.0.1:{rx_port}/cb");
    let userinfo = format!("http://user:secret@{}/cb", "hooks.example.com");
    let loopback_name = format!("http://localhost:{rx_port}/cb");
    let ip6_local = format!("http://[::1]:{rx_port}/cb");
    refused.extend([
        local.as_str(),
        userinfo.as_str(),
        loopback_name.as_str(),
        ip6_local.as_str(),
    ]);
    for url in &refused {
        let (code, body) = pusher.api.send(&with_callback(url)).await;
        assert_eq!(code, 422, "{url}: {body}");
        assert_eq!(body["error"]["field"], "callback_url", "{url}: {body}");
    }
    let batch: Vec<Value> = refused.iter().map(|u| with_callback(u)).collect();
    let (code, body) = pusher.api.try_batch(&batch, None).await.expect("answers");
    assert_eq!(code, 422, "{body}");
    for (i, r) in body["results"]
        .as_array()
        .expect("results")
        .iter()
        .enumerate()
    {
        assert_eq!(
            r["error"]["field"],
            format!("messages[{i}].callback_url"),
            "{r}"
        );
    }
    let (_, dead) = pusher.api.get("/v1/dead-letters").await;
    assert_eq!(dead["items"], json!([]));
    assert_eq!(
        pusher
            .api
            .metric("wxpush_messages_accepted_total", &[])
            .await,
        0.0
    );
    // Nothing was accepted, so no callback can come: a hit within 300 ms ends the wait early
    // and fails below.
    let _ = tokio::time::timeout(Duration::from_millis(300), hit.wait_for(|n| *n > 0)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the loopback receiver was reached"
    );
    drop(pusher);

    // The same receiver, allowlisted explicitly, gets its callback.
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"callbacks": {"allow": ["127.0.0.1"]}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let (code, body) = pusher.api.send(&with_callback(&local)).await;
    assert_eq!(code, 202, "{body}");
    wait_for("the allowlisted callback", Duration::from_secs(10), || {
        let n = hits.load(Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    // An allowlist of one address does not open the rest of loopback.
    let (code, body) = pusher.api.send(&with_callback("http://127.0.0.2/cb")).await;
    assert_eq!(code, 422, "{body}");
}

/// Lets this test process (and the pusher it spawns) hold thousands of sockets: the soft
/// open-file limit is raised to the hard one, which must allow 5,000.
fn raise_fd_limit() {
    let me = std::process::id().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &me, "--nofile", "--output=HARD", "--noheadings"])
        .output()
        .expect("prlimit runs");
    let hard = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &me, &format!("--nofile={hard}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "prlimit could not raise the soft open-file limit to {hard}"
    );
    assert!(
        hard == "unlimited" || hard.parse::<u64>().is_ok_and(|h| h >= 5000),
        "the hard open-file limit {hard} is below 5000"
    );
}

fn addr_of(base: &str) -> std::net::SocketAddr {
    base.trim_start_matches("http://")
        .parse()
        .expect("an address")
}

/// `VmRSS` and `VmHWM` (KiB) of a process.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reads until the server closes the connection; how long that took (None: still open at
/// `limit`).
async fn closed_within(mut s: tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Opens `n` connections that send nothing.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => out.push(s),
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
    out
}

/// A slowloris connection: a header (or, with `body`, a body) trickled a byte at a time.
async fn slowloris(addr: std::net::SocketAddr, body: bool) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = if body {
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
            wxpush_tests::pusher::TOKEN
        )
    } else {
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\n".to_string()
    };
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Keeps trickling bytes into `s` (every 300 ms) on a clone of its descriptor.
fn trickle(s: &tokio::net::TcpStream, body: bool) {
    let fd = std::os::fd::AsFd::as_fd(s)
        .try_clone_to_owned()
        .expect("dup");
    let std_stream = std::net::TcpStream::from(fd);
    std::thread::spawn(move || {
        use std::io::Write;
        let mut w = std_stream;
        let byte: &[u8] = if body { b" " } else { b"X" };
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(300));
            if w.write_all(byte).is_err() {
                return;
            }
        }
    });
}

fn limits_config(sb_url: &str, dir: &std::path::Path) -> Value {
    config(
        sb_url,
        dir,
        &json!({"api": {"headerReadTimeout": "2s", "bodyReadTimeout": "2s", "idleTimeout": "3s"}}),
    )
}

/// Finding "Connections are never timed out" (300 slowloris connections held 75 s, 2,000 idle
/// ones indefinitely): with 2,000 idle and 300 slowloris connections open, a real client is
/// served within 1 s, and every one of them is closed by the configured timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_are_never_timed_out() {
    raise_fd_limit();
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let pusher = PusherProc::start(dir.path(), &limits_config(&sb_url, dir.path())).await;
    let addr = addr_of(&pusher.base);
    let idle = idle_connections(addr, 2000).await;
    let mut slow = Vec::new();
    for i in 0..300 {
        let body = i % 2 == 1;
        let s = slowloris(addr, body).await;
        trickle(&s, body);
        slow.push(s);
    }
    let start = std::time::Instant::now();
    let (code, body) = pusher.api.send(&template("real-client")).await;
    let served = start.elapsed();
    eprintln!("real client served in {served:?} beside 2000 idle and 300 slowloris connections");
    assert_eq!(code, 202, "{body}");
    assert!(served < Duration::from_secs(1), "served in {served:?}");
    // headerReadTimeout 2s, bodyReadTimeout 2s: every one is closed well within 10 s.
    let checks = idle
        .into_iter()
        .chain(slow)
        .map(|s| tokio::spawn(closed_within(s, Duration::from_secs(10))));
    let mut open = 0;
    let mut slowest = Duration::ZERO;
    for c in checks {
        match c.await.expect("joins") {
            Some(d) => slowest = slowest.max(d),
            None => open += 1,
        }
    }
    eprintln!("all 2300 closed; the last after {slowest:?} of waiting");
    assert_eq!(open, 0, "{open} connections were still open after 10 s");
    let (code, _) = pusher.api.send(&template("after")).await;
    assert_eq!(code, 202);
}

/// Finding "Under `ulimit -n 256`, 300 idle connections made `accept` fail (EMFILE) and real
/// clients timed out": with the pusher's open-file limit at 256 and 300 idle connections, a real
/// client retrying gets served (once the idle ones hit headerReadTimeout), and the pusher keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_with_ulimit_256_locks_real_clients_out() {
    raise_fd_limit();
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let path = dir.path().join("pusher.yaml");
    std::fs::write(&path, limits_config(&sb_url, dir.path()).to_string()).expect("write");
    let pusher =
        PusherProc::start_wrapped(&path, &[], &["prlimit", "--nofile=256:256", "--"]).await;
    let addr = addr_of(&pusher.base);
    let idle = idle_connections(addr, 300).await;
    let start = std::time::Instant::now();
    let served = loop {
        match pusher.api.try_send(&template("real"), None).await {
            Ok((202, _)) => break start.elapsed(),
            Ok((code, body)) => panic!("{code}: {body}"),
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("locked out for 10 s: {e}"),
        }
    };
    eprintln!("with nofile=256 and 300 idle connections a real client was served after {served:?}");
    // The idle ones are gone after headerReadTimeout (each accepted as descriptors free up);
    // from then on every request is served.
    let closing = idle
        .into_iter()
        .map(|s| tokio::spawn(closed_within(s, Duration::from_secs(20))));
    for c in closing {
        assert!(
            c.await.expect("joins").is_some(),
            "an idle connection was still open after 20 s"
        );
    }
    // The client's pooled connection from the first request idled past headerReadTimeout
    // meanwhile, and the pusher may close it just as a request goes out on it
    // (`IncompleteMessage`): a producer then sends again under the same Idempotency-Key, once.
    for i in 0..20 {
        let msg = template(&format!("more{i}"));
        let key = format!("more{i}");
        let (code, body) = match pusher.api.try_send(&msg, Some(&key)).await {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!("request {i} lost its connection ({e}); sent again under its key");
                pusher.api.try_send(&msg, Some(&key)).await.expect("served")
            }
        };
        assert_eq!(code, 202, "{body}");
    }
}

/// Finding "There is no limit on concurrent requests": 10,000 requests, 1,000 at a time,
/// against `maxConcurrentRequests: 32` get 202 or 503 with `Retry-After`, nothing else, and the
/// pusher's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_limit_on_concurrent_requests() {
    use futures::StreamExt as _;
    raise_fd_limit();
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"api": {"maxConcurrentRequests": 32}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let pid = pusher.guard.child.id();
    let (rss_before, _) = rss_kib(pid);
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1000)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let url = format!("{}/v1/messages", pusher.base);
    let msg = template("load");
    let answers: Vec<(u16, bool)> = futures::stream::iter(0..10_000)
        .map(|_| {
            let req = http
                .post(&url)
                .bearer_auth(wxpush_tests::pusher::TOKEN)
                .json(&msg);
            async move {
                match req.send().await {
                    Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
                    Err(_) => (0, false),
                }
            }
        })
        .buffer_unordered(1000)
        .collect()
        .await;
    let ok = answers.iter().filter(|a| a.0 == 202).count();
    let shed = answers.iter().filter(|a| a.0 == 503).count();
    let (rss_after, hwm) = rss_kib(pid);
    eprintln!(
        "10000 requests: {ok} × 202, {shed} × 503; pusher RSS {rss_before} KiB before, \
         {rss_after} KiB after, peak {hwm} KiB"
    );
    assert_eq!(
        ok + shed,
        10_000,
        "other answers: {:?}",
        answers
            .iter()
            .filter(|a| a.0 != 202 && a.0 != 503)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        shed > 0,
        "nothing was shed at 1000 in flight against a cap of 32"
    );
    assert!(
        answers.iter().filter(|a| a.0 == 503).all(|a| a.1),
        "a 503 without Retry-After"
    );
    assert!(hwm < 512 * 1024, "peak RSS {hwm} KiB");
}

const EV_TOKEN: &str = "events-token-security";

fn event_xml(openid: &str, create_time: u64, msgid: i64, status: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_sandbox000000]]></ToUserName>\
         <FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>\
         <MsgID>{msgid}</MsgID><Status><![CDATA[{status}]]></Status></xml>"
    )
}

/// Findings "Forged events": a captured `(timestamp, nonce, signature)` reused with another
/// body, the same request replayed, and a timestamp from 2001 all get 403, and the delivered
/// message stays `delivered` (no `rejected_by_user`, no callback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_rebodied_replayed_and_stale() {
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let dir = tempdir();
    let cfg = config(&sb_url, dir.path(), &json!({"events": {"token": EV_TOKEN}}));
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let api = &pusher.api;
    let (code, sent) = api.send(&template("victim")).await;
    assert_eq!(code, 202, "{sent}");
    let id = sent["id"].as_str().expect("id").to_string();
    api.wait_delivered(1, Duration::from_secs(10)).await;
    let (_, doc) = api.status(&id).await;
    let msgid = doc["msgid"].as_i64().expect("msgid");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let base = format!("{}/wechat/events", pusher.base);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ts = now.to_string();
    let post = |url: String, body: String| {
        let http = http.clone();
        async move {
            let r = http.post(url).body(body).send().await.expect("answers");
            r.status().as_u16()
        }
    };
    let url = |ts: &str, nonce: &str| {
        format!(
            "{base}?timestamp={ts}&nonce={nonce}&signature={}",
            wxcrypto::signature(EV_TOKEN, ts, nonce)
        )
    };
    // A legitimate request (another user's subscribe event) is captured on the way.
    let captured = url(&ts, "5150");
    let sub = "<xml><FromUserName>someone</FromUserName><CreateTime>1</CreateTime>\
               <MsgType>event</MsgType><Event>subscribe</Event></xml>";
    assert_eq!(post(captured.clone(), sub.to_string()).await, 200);
    // Re-bodied: the captured query with a forged "failed:user block" for the victim.
    let forged = event_xml("victim", now, msgid, "failed:user block");
    assert_eq!(
        post(captured.clone(), forged.clone()).await,
        403,
        "re-bodied"
    );
    // Replayed as is.
    assert_eq!(post(captured, sub.to_string()).await, 403, "replayed");
    // Correctly signed, but from 2001.
    assert_eq!(
        post(url("978307200", "1"), forged.clone()).await,
        403,
        "stale"
    );
    assert_eq!(
        post(url(&(now + 3600).to_string(), "2"), forged).await,
        403,
        "from the future"
    );
    // The URL check with a stale timestamp: 403 too; a fresh one echoes with nosniff.
    let r = http
        .get(format!("{}&echostr=hi", url("978307200", "3")))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .get(format!("{}&echostr=<b>hi</b>", url(&ts, "4")))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    let (_, after) = api.status(&id).await;
    assert_eq!(after["status"], "delivered", "{after}");
    assert_eq!(after["events"].as_array().map_or(0, Vec::len), 0, "{after}");
    let refused = api
        .metric("wxpush_events_total", &[("result", "replayed")])
        .await
        + api
            .metric("wxpush_events_total", &[("result", "stale")])
            .await;
    assert_eq!(refused, 5.0);
}

/// Finding "Error bodies echo field names in full": a 900 KB unknown key gets a small answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_echo_field_names_in_full() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let pusher = PusherProc::start(dir.path(), &config(&sb_url, dir.path(), &json!({}))).await;
    let mut msg = template("u");
    msg["k".repeat(900_000)] = json!(1);
    let (code, body) = pusher.api.send(&msg).await;
    assert_eq!(code, 422);
    let size = body.to_string().len();
    eprintln!("a 900 KB unknown key is answered in {size} bytes");
    assert!(size < 2048, "{size} bytes");
    assert_eq!(body["error"]["code"], "unknown_field");
    let (code, body) = pusher.api.try_batch(&[msg], None).await.expect("answers");
    assert_eq!(code, 422);
    assert!(body.to_string().len() < 2048);
}

/// Finding "Duplicate JSON keys are accepted, and the last one wins": refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_are_accepted() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let pusher = PusherProc::start(dir.path(), &config(&sb_url, dir.path(), &json!({}))).await;
    let body = r#"{"touser": "alice", "template_id": "T", "touser": "mallory"}"#;
    let r = pusher
        .api
        .http
        .post(format!("{}/v1/messages", pusher.base))
        .bearer_auth(wxpush_tests::pusher::TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "malformed_json", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("duplicate key `touser`")),
        "{v}"
    );
    assert_eq!(
        pusher
            .api
            .metric("wxpush_messages_accepted_total", &[])
            .await,
        0.0
    );
}

/// Finding "`check-config` calls a bad `encodingAesKey`, an unwritable queue path and a port in
/// use valid": each is named and the exit code is 1.
#[test]
fn check_config_calls_bad_settings_valid() {
    let dir = tempdir();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let mut cfg = config("http://127.0.0.1:9", dir.path(), &json!({}));
    wxpush_tests::pusher::merge(
        &mut cfg,
        &json!({
            "listen": format!("127.0.0.1:{port}"),
            "queue": {"embedded": {"path": not_a_dir.join("queue").display().to_string()}},
            "events": {"token": "t", "encodingAesKey": "too-short"},
            "callbacks": {"url": "http://169.254.169.254/"},
        }),
    );
    let path = dir.path().join("pusher.yaml");
    std::fs::write(&path, cfg.to_string()).expect("write");
    let out = std::process::Command::new(wxpush_tests::binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for field in [
        "events.encodingAesKey",
        "queue.embedded.path",
        "listen: cannot listen",
        "callbacks.url",
    ] {
        assert!(err.contains(field), "{field} not named: {err}");
    }
    drop(busy);
}

/// Finding "`echostr` is reflected without `X-Content-Type-Options: nosniff`".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echostr_is_reflected_without_nosniff() {
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let cfg = config(&sb_url, dir.path(), &json!({"events": {"token": EV_TOKEN}}));
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let sig = wxcrypto::signature(EV_TOKEN, &ts, "9");
    let r = reqwest::Client::new()
        .get(format!(
            "{}/wechat/events?timestamp={ts}&nonce=9&signature={sig}&echostr=%3Cscript%3E",
            pusher.base
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    // And every other answer carries it too.
    let r = reqwest::get(format!("{}/healthz", pusher.base))
        .await
        .expect("answers");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}
