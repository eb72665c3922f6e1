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

/// A loopback receiver counting the POSTs it gets.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
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
    (format!("http://{addr}"), hits)
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
    let (rx_base, hits) = receiver().await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
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
