//! Overload mode over real HTTP: requests beyond the capacity are answered later, by
//! `overload_latency_per_request` for each request in flight beyond it.

use std::time::{Duration, Instant};

use wxpush_sandbox::FaultConfig;

mod common;
use common::{send, started};

/// Sends `n` template messages at once; returns each one's latency, slowest last.
async fn burst(client: &reqwest::Client, base: &str, token: &str, n: usize) -> Vec<Duration> {
    let sends = (0..n).map(|i| async move {
        let start = Instant::now();
        send(client, base, token, i).await;
        start.elapsed()
    });
    let mut took = futures::future::join_all(sends).await;
    took.sort();
    took
}

#[tokio::test]
async fn requests_beyond_the_capacity_are_slowed_down() {
    let per = Duration::from_millis(100);
    let (sb, base, client, token) = started(FaultConfig {
        latency: Duration::from_millis(50),
        capacity: Some(2),
        overload_latency_per_request: per,
        ..FaultConfig::default()
    })
    .await;
    // Within the capacity: no added latency.
    let within = burst(&client, &base, &token, 2).await;
    assert!(within[1] < 3 * per, "{within:?}");
    // Six at once (the base latency makes them overlap): the ones that found 2, 3, 4, 5 ahead wait 1, 2, 3, 4 × 100 ms.
    let beyond = burst(&client, &base, &token, 6).await;
    assert!(beyond[5] >= 4 * per, "{beyond:?}");
    assert!(beyond[4] >= 3 * per, "{beyond:?}");
    assert_eq!(sb.stats().delivered_unique, 8);
    // Overload off, the base latency kept: all six overlap, none is slowed down.
    sb.set_faults(FaultConfig {
        latency: Duration::from_millis(50),
        ..FaultConfig::default()
    })
    .expect("overload off");
    let off = burst(&client, &base, &token, 6).await;
    assert!(off[5] < 3 * per, "{off:?}");
}
