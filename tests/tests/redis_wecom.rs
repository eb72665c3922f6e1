//! The WeCom providers with several pods on one Redis (issue 22): the (corp, application)
//! token is fetched once for all pods, and a group robot's 20 messages a minute hold for the
//! channel as a whole, not per pod.

use std::time::Duration;

use serde_json::{Value, json};
use wxpush_tests::pusher::{PusherProc, merge, tempdir};
use wxpush_tests::redis::RedisServer;
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::wait_for;
use wxpush_tests::wecom::{AGENT_ID, app_config, count, robot_config, stats, text};

fn on_redis(url: &str, extra: &Value) -> Value {
    let mut patch = json!({
        "queue": {"embedded": null, "redis": {"url": url, "claimIdle": "3s", "retention": "1h"}},
        "concurrency": {"maxInFlight": 16},
        "retry": {"initialBackoff": "50ms", "maxBackoff": "1s"},
    });
    merge(&mut patch, extra);
    patch
}

struct Pods {
    pods: Vec<PusherProc>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start(n: usize, build: impl Fn(&std::path::Path) -> Value) -> Pods {
    let mut pods = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempdir();
        pods.push(PusherProc::start(dir.path(), &build(dir.path())).await);
        dirs.push(dir);
    }
    Pods { pods, _dirs: dirs }
}

/// Three pods send 300 application messages: one `gettoken` for all of them (the token lives
/// 7200 s in the sandbox, far longer than the test), and every message delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_share_one_wecom_token() {
    const N: usize = 300;
    let redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let wx = WxClient::new(sb_url.clone());
    let url = redis.url();
    let pods = start(3, |dir| {
        app_config(&sb_url, dir, &on_redis(&url, &json!({})))
    })
    .await;
    for (i, chunk) in (0..N)
        .map(|i| text(&format!("p{i}"), &format!("shift {i}")))
        .collect::<Vec<_>>()
        .chunks(25)
        .enumerate()
    {
        let (code, v) = pods.pods[i % 3]
            .api
            .post_json("/v1/messages/batch", &json!({"messages": chunk}))
            .await;
        assert_eq!(code, 202, "{v}");
    }
    let s = wait_for(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            let s = stats(&wx).await;
            (count(&s, "/delivered_unique") >= N as u64).then_some(s)
        },
    )
    .await;
    assert_eq!(count(&s, "/delivered_unique"), N as u64, "{s}");
    let app = format!("/apps/{AGENT_ID}");
    assert_eq!(
        count(&s, &format!("{app}/token_fetches")),
        1,
        "one fetch for three pods: {s}"
    );
    for pod in &pods.pods {
        let sent = pod
            .api
            .metric(
                "wxpush_messages_completed_total",
                &[("outcome", "delivered")],
            )
            .await;
        eprintln!("pod {} delivered {sent}", pod.base);
    }
}

/// Two pods of one robot channel: the robot's limit is kept across them (the shared limiter
/// in Redis), so the sandbox never counts more than 20 in a window and never answers 45009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_keep_a_robot_under_twenty_a_minute() {
    const N: usize = 22;
    let redis = RedisServer::start().await;
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let wx = WxClient::new(sb_url.clone());
    let url = redis.url();
    let pods = start(2, |dir| {
        robot_config(&sb_url, dir, &on_redis(&url, &json!({})))
    })
    .await;
    for i in 0..N {
        let (code, a) = pods.pods[i % 2]
            .api
            .send(&json!({"msgtype": "text", "text": {"content": format!("deploy {i}")}}))
            .await;
        assert_eq!(code, 202, "{a}");
    }
    let s = wait_for(
        "every robot message delivered",
        Duration::from_secs(100),
        || async {
            let s = stats(&wx).await;
            (count(&s, "/robots/robot-key/delivered") >= N as u64).then_some(s)
        },
    )
    .await;
    let robot = &s["robots"]["robot-key"];
    assert_eq!(count(robot, "/delivered"), N as u64, "{s}");
    assert_eq!(count(robot, "/refused_45009"), 0, "{s}");
    assert!(count(robot, "/peak_per_window") <= 20, "{s}");
}
