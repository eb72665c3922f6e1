//! The Redis store under cluster operations (issue 24), on a real 3-master Redis Cluster started
//! here: the channel's slot moved to another master under load (the way `redis-cli --cluster
//! reshard` moves it: `SETSLOT IMPORTING/MIGRATING`, `MIGRATE` in small batches, `SETSLOT
//! NODE`), and the master that owns the slot killed with SIGKILL and restarted from its AOF; a
//! pusher killed (SIGKILL) and a new one started during each. Each run ends with the
//! consistency check, the sandbox's count of unique deliveries, the callbacks delivered, the
//! group's consumers (exactly the live pushers), and no "non local key" in any log. The slot
//! move also checks the channel's rate over every 5 s window (limit + 10 %) and that no pod
//! fell back to limiting itself alone (the shared limiter is one key, so a move redirects it
//! rather than refusing it).
//!
//! `WXPUSH_RESHARD_MESSAGES` sets the message count (default 2,000; the figure is
//! 20,000).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use wxpush_tests::pusher::{Api, PusherProc, config, ids_of, tempdir, template};
use wxpush_tests::redis::{RedisCluster, cli};
use wxpush_tests::sandbox::{self, EventReceiver, WxClient};
use wxpush_tests::wait_for;

const STREAM: &str = "{wxpush:engine-test}:q";
const RATE: u32 = 300;

fn messages() -> usize {
    std::env::var("WXPUSH_RESHARD_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A pusher on the cluster whose stderr goes to `log`.
struct Pod {
    proc: PusherProc,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start_pod(sandbox: &str, url: &str, callback: &str) -> Pod {
    let dir = tempdir();
    let cfg = config(
        sandbox,
        dir.path(),
        &json!({
            "queue": {"embedded": null, "redis": {"url": url, "cluster": true, "retention": "1h"}},
            "concurrency": {"maxInFlight": 32},
            "retry": {"initialBackoff": "50ms", "maxBackoff": "1s"},
            "rateLimit": {"perSecond": RATE, "burst": 30, "dailyQuota": 0},
            "callbacks": {"allow": ["127.0.0.1"], "url": callback, "signingKey": "cluster-ops-key",
                          "retry": {"initialBackoff": "50ms", "maxBackoff": "500ms"}},
        }),
    );
    let path = dir.path().join("pusher.yaml");
    std::fs::write(&path, cfg.to_string()).expect("write the config");
    let log = dir.path().join("stderr.log");
    let redirect = format!("exec \"$@\" 2>>'{}'", log.display());
    let proc = PusherProc::start_wrapped(&path, &[], &["sh", "-c", &redirect, "sh"]).await;
    Pod {
        proc,
        log,
        _dir: dir,
    }
}

/// Sends `n` messages in batches of 50 over `apis`, each batch with an `Idempotency-Key`
/// and sent again (same key, same body) until it is answered 202 or 60 s pass. Returns the
/// acknowledged ids.
async fn produce(apis: Arc<Mutex<Vec<Api>>>, n: usize, tag: &'static str) -> Vec<String> {
    let msgs: Vec<Value> = (0..n).map(|i| template(&format!("{tag}-{i}"))).collect();
    let mut ids = Vec::new();
    for (j, chunk) in msgs.chunks(50).enumerate() {
        let key = format!("{tag}-batch-{j}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let api = {
                let apis = apis.lock().await;
                apis[j % apis.len()].clone()
            };
            match api.try_batch(chunk, Some(&key)).await {
                Ok((202, v)) => {
                    ids.extend(ids_of(&v));
                    break;
                }
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "batch {j} not accepted in 60 s: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    ids
}

/// `(node id, port, owns the slot)` of each master, from `CLUSTER NODES`.
/// The hash slot of `key`, as the cluster node on `port` computes it (`CLUSTER KEYSLOT`).
fn key_slot(port: u16, key: &str) -> u16 {
    let answer = cli(port, &["CLUSTER", "KEYSLOT", key]);
    answer
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {answer:?}: {e}"))
}

fn masters(port: u16, slot: u16) -> Vec<(String, u16, bool)> {
    cli(port, &["CLUSTER", "NODES"])
        .lines()
        .filter(|l| l.contains("master"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let p = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            let owns = f.iter().skip(8).any(|r| {
                let mut ends = r.split('-').map(|x| x.parse::<u16>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            Some((f[0].to_string(), p, owns))
        })
        .collect()
}

/// Moves `slot` from its owner to another master as `redis-cli --cluster reshard` does, in
/// batches of `batch` keys with a pause between them (so that the move overlaps the load).
/// Returns (keys moved, time taken).
fn move_slot(ports: &[u16], slot: u16, batch: usize) -> (usize, Duration) {
    let started = Instant::now();
    let nodes = masters(ports[0], slot);
    let (src_id, src_port, _) = nodes.iter().find(|n| n.2).expect("an owner").clone();
    let (dst_id, dst_port, _) = nodes.iter().find(|n| !n.2).expect("another master").clone();
    let s = slot.to_string();
    assert!(cli(dst_port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id]).contains("OK"));
    assert!(cli(src_port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id]).contains("OK"));
    let mut moved = 0;
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        let keys: Vec<String> = cli(
            src_port,
            &["CLUSTER", "GETKEYSINSLOT", &s, &batch.to_string()],
        )
        .lines()
        .map(str::to_string)
        .filter(|k| !k.is_empty())
        .collect();
        if keys.is_empty() {
            break;
        }
        assert!(Instant::now() < limit, "the slot did not empty in 120 s");
        let dst = dst_port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &dst, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let out = cli(src_port, &args);
        assert!(
            out.contains("OK") || out.contains("NOKEY"),
            "MIGRATE: {out}"
        );
        moved += keys.len();
        std::thread::sleep(Duration::from_millis(5));
    }
    // The new owner first, then the old one, then the rest (as redis-cli does).
    let mut order = vec![dst_port, src_port];
    order.extend(
        nodes
            .iter()
            .map(|n| n.1)
            .filter(|p| *p != dst_port && *p != src_port),
    );
    for port in order {
        let out = cli(port, &["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]);
        assert!(out.contains("OK"), "SETSLOT NODE on {port}: {out}");
    }
    (moved, started.elapsed())
}

/// The sandbox's successful sends, sampled every 250 ms, for rate windows.
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

fn sample(wx: WxClient) -> (Samples, tokio::task::JoinHandle<()>) {
    let samples: Samples = Arc::default();
    let task = {
        let samples = Arc::clone(&samples);
        tokio::spawn(async move {
            loop {
                let before = Instant::now();
                let s = wx.stats().await;
                let at = before + before.elapsed() / 2;
                samples
                    .lock()
                    .await
                    .push((at, s.delivered_unique + s.duplicates_suppressed));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    (samples, task)
}

/// The highest rate over any window of at least `window` while sends went on.
fn max_rate(s: &[(Instant, u64)], window: Duration, total: u64) -> f64 {
    let mut best: f64 = 0.0;
    for (i, &(t0, n0)) in s.iter().enumerate() {
        if n0 >= total {
            break;
        }
        if let Some(&(t1, n1)) = s[i..].iter().find(|(t, _)| t.duration_since(t0) >= window) {
            best = best.max((n1 - n0) as f64 / t1.duration_since(t0).as_secs_f64());
        }
    }
    best
}

/// `XINFO CONSUMERS` of the channel's stream, asked of the master that owns its slot now.
fn consumer_info(port: u16) -> String {
    let owner = masters(port, key_slot(port, STREAM))
        .into_iter()
        .find(|m| m.2)
        .map_or(port, |m| m.1);
    cli(owner, &["XINFO", "CONSUMERS", STREAM, "pushers"])
}

fn consumers(port: u16) -> usize {
    consumer_info(port)
        .lines()
        .filter(|l| l.trim() == "name")
        .count()
}

/// What the run left: every acknowledged message delivered once, its callback delivered,
/// the check clean, no `forbidden` text in any log, and the group holding exactly the live
/// pushers.
async fn verify(
    what: &str,
    ids: &[String],
    (wx, rx): (&WxClient, &EventReceiver),
    cluster: &RedisCluster,
    logs: &[PathBuf],
    forbidden: &[&str],
    live: usize,
) {
    let n = ids.len() as u64;
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "distinct ids"
    );
    let s = wait_for(
        &format!("{n} unique deliveries"),
        Duration::from_secs(120),
        || async {
            let s = wx.stats().await;
            (s.delivered_unique >= n).then_some(s)
        },
    )
    .await;
    assert_eq!(
        s.delivered_unique, n,
        "{what}: every acknowledged message delivered once"
    );
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let called = wait_for(
        "a callback per message",
        Duration::from_secs(60),
        || async {
            let got = rx.received.lock().await;
            let delivered: HashSet<String> = got
                .iter()
                .filter(|g| g.answered == 200)
                .filter_map(|g| serde_json::from_str::<Value>(&g.body).ok())
                .filter(|v| v["status"] == "delivered")
                .filter_map(|v| v["id"].as_str().map(str::to_string))
                .collect();
            wanted
                .iter()
                .all(|id| delivered.contains(*id))
                .then_some(delivered.len())
        },
    )
    .await;
    let port = cluster.nodes[0].port;
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumers(port) != live {
        assert!(
            Instant::now() < deadline,
            "{what}: not {live} consumers after 20 s: {}",
            consumer_info(port).replace('\n', " ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wxpush_tests::redis::assert_consistent(&cluster.url(), true, what).await;
    let mut bad = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if forbidden.iter().any(|f| line.contains(f)) {
                bad.push(line.to_string());
            }
        }
    }
    println!(
        "{what}: {n} acknowledged, {} delivered once, {called} delivered callbacks, \
         {} duplicates suppressed, {live} consumers, consistency check clean",
        s.delivered_unique, s.duplicates_suppressed,
    );
    assert!(bad.is_empty(), "{what}: log lines {bad:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_channels_slot_under_load_leaves_nothing_half_done() {
    let n = messages();
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let rx = EventReceiver::start(0).await;
    let cb = format!("http://{}/hooks", rx.addr);
    let mut pods = vec![
        start_pod(&sb_url, &url, &cb).await,
        start_pod(&sb_url, &url, &cb).await,
    ];
    let apis = Arc::new(Mutex::new(
        pods.iter().map(|p| p.proc.api.clone()).collect::<Vec<_>>(),
    ));
    let memory = |ports: &[u16]| -> u64 {
        ports
            .iter()
            .filter_map(|p| {
                cli(*p, &["INFO", "memory"])
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    };
    let all_ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let memory_before = memory(&all_ports);
    let (samples, sampler) = sample(wx.clone());
    let producer = tokio::spawn(produce(Arc::clone(&apis), n, "reshard"));
    wait_for("a tenth delivered", Duration::from_secs(60), || async {
        (wx.stats().await.delivered_unique >= n as u64 / 10).then_some(())
    })
    .await;
    // The slot moves while messages are accepted, sent and completed; a pusher is killed and
    // another started meanwhile.
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let slot = key_slot(ports[0], STREAM);
    let mover = tokio::task::spawn_blocking(move || move_slot(&ports, slot, 20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut victim = pods.remove(0);
    victim.proc.kill9();
    let fresh = start_pod(&sb_url, &url, &cb).await;
    *apis.lock().await = vec![pods[0].proc.api.clone(), fresh.proc.api.clone()];
    pods.push(fresh);
    let (moved, took) = mover.await.expect("the slot moves");
    let mut logs: Vec<PathBuf> = pods.iter().map(|p| p.log.clone()).collect();
    logs.push(victim.log.clone());
    let ids = match producer.await {
        Ok(ids) => ids,
        Err(e) => {
            for log in &logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {}:\n{}", log.display(), tail.join("\n"));
            }
            panic!("the producer failed: {e}");
        }
    };
    verify(
        "reshard",
        &ids,
        (&wx, &rx),
        &cluster,
        &logs,
        &["non local key", "limiting this pod alone"],
        2,
    )
    .await;
    // Every record is retained (retention 1h) and final: Redis memory per retained message.
    let grown = memory(&all_ports).saturating_sub(memory_before);
    println!(
        "reshard: Redis memory grew {grown} bytes for {} messages: {} bytes per retained message",
        ids.len(),
        grown / ids.len().max(1) as u64
    );
    sampler.abort();
    let rate = max_rate(&samples.lock().await, Duration::from_secs(5), n as u64);
    println!(
        "slot {slot}: {moved} keys moved in {took:.1?}; max rate {rate:.0}/s over 5 s (limit {RATE})"
    );
    assert!(
        rate <= f64::from(RATE) * 1.1,
        "{rate:.0} sends/s over 5 s with perSecond {RATE}: the limit stayed shared"
    );
    let owner = masters(cluster.nodes[0].port, slot);
    assert!(owner.iter().any(|m| m.2), "the slot has an owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_slots_master_under_load_loses_nothing_acknowledged() {
    let n = messages().min(2000);
    let mut cluster = RedisCluster::start().await;
    let url = cluster.url();
    let (_sb, sb_url) = sandbox::spawn(&["--daily-quota", "unlimited"]);
    let wx = WxClient::new(sb_url.clone());
    let rx = EventReceiver::start(0).await;
    let cb = format!("http://{}/hooks", rx.addr);
    let mut pods = vec![
        start_pod(&sb_url, &url, &cb).await,
        start_pod(&sb_url, &url, &cb).await,
    ];
    let apis = Arc::new(Mutex::new(
        pods.iter().map(|p| p.proc.api.clone()).collect::<Vec<_>>(),
    ));
    let producer = tokio::spawn(produce(Arc::clone(&apis), n, "restart"));
    wait_for("a tenth delivered", Duration::from_secs(60), || async {
        (wx.stats().await.delivered_unique >= n as u64 / 10).then_some(())
    })
    .await;
    let slot = key_slot(cluster.nodes[0].port, STREAM);
    let owner_port = masters(cluster.nodes[0].port, slot)
        .into_iter()
        .find(|m| m.2)
        .expect("an owner")
        .1;
    let owner = cluster
        .nodes
        .iter()
        .position(|n| n.port == owner_port)
        .expect("the owner is one of ours");
    cluster.nodes[owner].kill();
    let mut victim = pods.remove(0);
    victim.proc.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes[owner].restart().await;
    let port = cluster.nodes[owner].port;
    wait_for("cluster_state:ok", Duration::from_secs(30), || async move {
        cli(port, &["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
            .then_some(())
    })
    .await;
    let fresh = start_pod(&sb_url, &url, &cb).await;
    *apis.lock().await = vec![pods[0].proc.api.clone(), fresh.proc.api.clone()];
    pods.push(fresh);
    let ids = producer.await.expect("the producer ends");
    let mut logs: Vec<PathBuf> = pods.iter().map(|p| p.log.clone()).collect();
    logs.push(victim.log.clone());
    // While the master is down the limiter cannot be shared; a half-done script is never fine.
    verify(
        "master restart",
        &ids,
        (&wx, &rx),
        &cluster,
        &logs,
        &["non local key"],
        2,
    )
    .await;
}
