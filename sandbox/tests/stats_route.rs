//! `GET /__stats` over real HTTP: the sends' time at the sandbox and their injected latency,
//! and `?per_openid=false`, the cheap poll the benchmark's e2e tool makes every 20 ms.

use std::time::Duration;

use wxpush_sandbox::FaultConfig;

mod common;
use common::{send, started};

#[tokio::test]
async fn stats_give_the_sends_time_and_can_leave_out_the_openids() {
    let latency = Duration::from_millis(20);
    let (_sandbox, base, client, token) = started(FaultConfig {
        latency,
        ..FaultConfig::default()
    })
    .await;
    for i in 0..3 {
        send(&client, &base, &token, i).await;
    }
    let get = |query: &'static str| {
        let client = client.clone();
        let url = format!("{base}/__stats{query}");
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("stats")
                .json::<serde_json::Value>()
                .await
                .expect("stats JSON")
        }
    };
    let full = get("").await;
    assert_eq!(
        full["per_openid"].as_object().map(|m| m.len()),
        Some(3),
        "{full}"
    );
    let brief = get("?per_openid=false").await;
    assert_eq!(brief["per_openid"], serde_json::json!({}), "{brief}");
    assert_eq!(brief["delivered_unique"], 3, "{brief}");
    // The token call is not a send: three sends answered, each with 20 ms injected.
    assert_eq!(brief["sends_answered"], 3, "{brief}");
    let injected = brief["sends_injected_us"]
        .as_u64()
        .expect("sends_injected_us");
    assert_eq!(injected, 3 * 20_000, "{brief}");
    // A send's time at the sandbox includes its injected sleep, which never ends early.
    let busy = brief["sends_busy_us"].as_u64().expect("sends_busy_us");
    assert!(busy >= injected, "{brief}");
}
