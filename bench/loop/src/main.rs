//! Load tools of `bench/perf/run.sh`. Every command prints one JSON object on stdout.
//!
//! - `loop`: the baseline, a bare reqwest loop: `--tasks` tasks send `--n` template messages
//!   straight to the sandbox (no queue, no durability), retrying a failed send at most
//!   `--retries` times at once, then counting it lost.
//! - `e2e`: feeds `--n` messages to a running pusher through the batch route and watches the
//!   sandbox until all are delivered: rate, CPU of the pusher (`/proc/<pid>/stat`), the
//!   delivery timeline, the pusher's send-duration histogram.
//! - `accept`: single-message accepts at a fixed rate (open loop): latency percentiles.
//! - `fill`: feeds `--n` messages through the batch route as fast as it can: accept rate.
//! - `proc`: CPU seconds and RSS of a process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The bare reqwest loop against the sandbox.
    Loop {
        #[arg(long)]
        sandbox: String,
        #[arg(long, default_value_t = 50_000)]
        n: u64,
        #[arg(long, default_value_t = 256)]
        tasks: usize,
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// Per-request timeout of the loop's client.
        #[arg(long, default_value = "2s", value_parser = humantime_like)]
        timeout: Duration,
        #[arg(long, default_value = "wxbench000000000")]
        appid: String,
        #[arg(long, default_value = "bench-secret")]
        secret: String,
        #[arg(long, default_value = "loop")]
        prefix: String,
    },
    /// Messages through a pusher, end to end.
    E2e {
        #[arg(long)]
        pusher: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 50_000)]
        n: u64,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, default_value = "e2e")]
        prefix: String,
        /// Give up after this long.
        #[arg(long, default_value = "300s", value_parser = humantime_like)]
        timeout: Duration,
    },
    /// Single-message accepts at a fixed rate.
    Accept {
        #[arg(long)]
        pusher: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value = "5s", value_parser = humantime_like)]
        duration: Duration,
    },
    /// Batch accepts as fast as possible.
    Fill {
        #[arg(long)]
        pusher: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 100_000)]
        n: u64,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        producers: usize,
    },
    /// CPU seconds and RSS of a process.
    Proc {
        #[arg(long)]
        pid: u32,
    },
}

fn humantime_like(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|e| format!("{s}: {e}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// utime + stime of a process in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3; utime 14 and stime 15 are at 11 and 12 here.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

/// VmRSS in KiB.
fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()
        .map_err(Into::into)
}

fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": at(1.0)})
}

/// Up to `keep` evenly spread samples, sorted (for a CDF).
fn thin(mut v: Vec<f64>, keep: usize) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    if v.len() <= keep {
        return v;
    }
    let step = v.len() as f64 / keep as f64;
    (0..keep).map(|i| v[(i as f64 * step) as usize]).collect()
}

fn message(prefix: &str, i: u64) -> Value {
    json!({
        "touser": format!("{prefix}{i}"),
        "template_id": "TPL_BENCH",
        "data": {"keyword1": {"value": "Shipped"}, "keyword2": {"value": "2026-11-28"}},
    })
}

/// The sandbox's connection counts since its last reset: connections that carried an API
/// request, and the most sends it served at once (nulls while it is away: an outage).
async fn sandbox_connections(client: &reqwest::Client, sandbox: &str) -> Result<Value> {
    let stats: Value = match client
        .get(format!("{sandbox}/__stats?per_openid=false"))
        .send()
        .await
    {
        Ok(answer) => answer.json().await?,
        Err(_) => Value::Null,
    };
    Ok(json!({
        "api_connections": stats["api_connections"],
        "sends_max_in_flight": stats["sends_max_in_flight"],
    }))
}

/// Polled every 20 ms during a run: without the per-openid counts, which grow to megabytes of
/// JSON with one openid per message and took the sandbox's and this tool's CPU from the
/// pusher's.
async fn sandbox_delivered(client: &reqwest::Client, sandbox: &str) -> Result<u64> {
    let stats: Value = client
        .get(format!("{sandbox}/__stats?per_openid=false"))
        .send()
        .await?
        .json()
        .await?;
    stats["delivered_unique"]
        .as_u64()
        .context("delivered_unique in /__stats")
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    sandbox: String,
    n: u64,
    tasks: usize,
    retries: u32,
    timeout: Duration,
    appid: String,
    secret: String,
    prefix: String,
) -> Result<Value> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(tasks)
        .build()?;
    // The sandbox's faults (a share of hung answers, say) apply to the token call too, as a
    // send loop's own fetch would meet them: a few tries, as any sender makes.
    let mut tries = 0;
    let token: Value = loop {
        tries += 1;
        let answer = async {
            client
                .post(format!("{sandbox}/cgi-bin/stable_token"))
                .json(&json!({"grant_type": "client_credential", "appid": appid, "secret": secret}))
                .send()
                .await?
                .json::<Value>()
                .await
        }
        .await;
        match answer {
            Ok(token) => break token,
            Err(e) if tries < 5 => eprintln!("token fetch failed ({e}); trying again"),
            Err(e) => return Err(e.into()),
        }
    };
    let token = token["access_token"]
        .as_str()
        .context("access_token")?
        .to_string();
    let url = Arc::new(format!(
        "{sandbox}/cgi-bin/message/template/send?access_token={token}"
    ));
    let next = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds("self")?;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, url, next, lost, prefix) = (
            client.clone(),
            Arc::clone(&url),
            Arc::clone(&next),
            Arc::clone(&lost),
            prefix.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut body = message(&prefix, i);
                body["client_msg_id"] = json!(format!("{prefix}-{i}"));
                let body = body.to_string();
                let mut ok = false;
                for _ in 0..=retries {
                    let t = Instant::now();
                    let answer = client
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let Ok(answer) = answer else { continue };
                    let Ok(v) = answer.json::<Value>().await else {
                        continue;
                    };
                    if v["errcode"].as_i64() == Some(0) {
                        latencies.push(t.elapsed().as_secs_f64());
                        ok = true;
                        break;
                    }
                }
                if !ok {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self")? - cpu0;
    let delivered = latencies.len() as u64;
    let sandbox = sandbox_connections(&reqwest::Client::new(), &sandbox).await?;
    Ok(json!({
        "tasks": tasks,
        "connections_opened": sandbox["api_connections"],
        "sandbox": sandbox,
        "delivered": delivered,
        "lost": lost.load(Ordering::Relaxed),
        "secs": secs,
        "rate": delivered as f64 / secs,
        "cpu_secs": cpu,
        "cpu_us_per_msg": cpu * 1e6 / delivered.max(1) as f64,
        "latency": percentiles(latencies.clone()),
        "latency_samples": thin(latencies, 5000),
    }))
}

/// Feeds `n` messages in batches; returns when all were accepted (202), with the time taken.
async fn feed(
    pusher: &str,
    token: &str,
    n: u64,
    batch: usize,
    producers: usize,
    prefix: &str,
) -> Result<f64> {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let start = Instant::now();
    let batches: Vec<(u64, u64)> = (0..n)
        .step_by(batch.max(1))
        .map(|from| (from, (from + batch as u64).min(n)))
        .collect();
    let results: Vec<Result<()>> = futures::stream::iter(batches)
        .map(|(from, to)| {
            let client = client.clone();
            async move {
                let msgs: Vec<Value> = (from..to).map(|i| message(prefix, i)).collect();
                loop {
                    let answer = client
                        .post(format!("{pusher}/v1/messages/batch"))
                        .bearer_auth(token)
                        .json(&json!({ "messages": msgs }))
                        .send()
                        .await?;
                    match answer.status().as_u16() {
                        202 => return Ok(()),
                        429 | 503 => tokio::time::sleep(Duration::from_millis(50)).await,
                        s => bail!("batch answered {s}: {}", answer.text().await?),
                    }
                }
            }
        })
        .buffer_unordered(producers.max(1))
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The `wxpush_send_duration_seconds` buckets of a pusher: `[[le, cumulative count], ...]`.
async fn send_duration_buckets(client: &reqwest::Client, pusher: &str) -> Result<Vec<Value>> {
    let text = client
        .get(format!("{pusher}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("wxpush_send_duration_seconds_bucket{")
            && let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next())
            && let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok())
        {
            out.push(json!([le, count]));
        }
    }
    Ok(out)
}

async fn metric(client: &reqwest::Client, pusher: &str, name: &str) -> f64 {
    let Ok(answer) = client.get(format!("{pusher}/metrics")).send().await else {
        return 0.0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A metric's value, or `None` when the pusher does not expose it.
async fn metric_opt(client: &reqwest::Client, pusher: &str, name: &str) -> Option<f64> {
    let answer = client.get(format!("{pusher}/metrics")).send().await.ok()?;
    let text = answer.text().await.ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[allow(clippy::too_many_arguments)]
async fn run_e2e(
    pusher: String,
    token: String,
    sandbox: String,
    pid: u32,
    n: u64,
    batch: usize,
    producers: usize,
    prefix: String,
    timeout: Duration,
) -> Result<Value> {
    let pid = pid.to_string();
    let client = reqwest::Client::new();
    let base = sandbox_delivered(&client, &sandbox).await?;
    // Present only when the pusher was built with the feature `alloc-count`.
    let allocs0 = metric_opt(&client, &pusher, "wxpush_allocations_total").await;
    let bytes0 = metric_opt(&client, &pusher, "wxpush_allocated_bytes_total").await;
    let cpu0 = cpu_seconds(&pid)?;
    let start = Instant::now();
    // When the timeline's clock started, to line it up with faults set before the run (the
    // outage scenario's report: when WeChat returned).
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let feeder = {
        let (pusher, token, prefix) = (pusher.clone(), token.clone(), prefix.clone());
        tokio::spawn(async move { feed(&pusher, &token, n, batch, producers, &prefix).await })
    };
    let mut timeline = Vec::new();
    let mut peak_rss = 0;
    let mut last = 0;
    loop {
        // During an outage the sandbox refuses new connections, its /__stats too, and may
        // close the tool's: a failed poll is skipped (nothing is delivered meanwhile), until
        // the run's timeout.
        let delivered = match sandbox_delivered(&client, &sandbox).await {
            Ok(d) => d - base,
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let t = start.elapsed().as_secs_f64();
        if delivered != last || timeline.is_empty() {
            timeline.push(json!([t, delivered]));
            last = delivered;
        }
        peak_rss = peak_rss.max(rss_kib(&pid).unwrap_or(0));
        if delivered >= n {
            break;
        }
        if start.elapsed() > timeout {
            bail!("only {delivered} of {n} delivered after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&pid)? - cpu0;
    let accept_secs = feeder.await??;
    let allocs = match (
        allocs0,
        metric_opt(&client, &pusher, "wxpush_allocations_total").await,
    ) {
        (Some(a), Some(b)) => Some((b - a) / n as f64),
        _ => None,
    };
    let alloc_bytes = match (
        bytes0,
        metric_opt(&client, &pusher, "wxpush_allocated_bytes_total").await,
    ) {
        (Some(a), Some(b)) => Some((b - a) / n as f64),
        _ => None,
    };
    Ok(json!({
        "allocs_per_msg": allocs,
        "alloc_bytes_per_msg": alloc_bytes,
        "delivered": n,
        "secs": secs,
        "rate": n as f64 / secs,
        "accept_secs": accept_secs,
        "accept_rate": n as f64 / accept_secs,
        "cpu_secs": cpu,
        "cpu_us_per_msg": cpu * 1e6 / n as f64,
        "peak_rss_kib": peak_rss,
        "hedged": metric(&client, &pusher, "wxpush_hedged_sends_total").await,
        "connections_opened": metric(&client, &pusher, "wxpush_wechat_connections_opened_total").await,
        "requests_peak": metric(&client, &pusher, "wxpush_wechat_requests_peak").await,
        "sandbox": sandbox_connections(&client, &sandbox).await?,
        "concurrency_limit": metric(&client, &pusher, "wxpush_concurrency_limit").await,
        "send_duration_buckets": send_duration_buckets(&client, &pusher).await?,
        "timeline": timeline,
        "started_unix": started_unix,
    }))
}

async fn run_accept(pusher: String, token: String, rate: u64, duration: Duration) -> Result<Value> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total as usize);
    let start = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let (client, pusher, token) = (client.clone(), pusher.clone(), token.clone());
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = client
                .post(format!("{pusher}/v1/messages"))
                .bearer_auth(token)
                .json(&message("acc", i))
                .send()
                .await
                .ok()?;
            (answer.status().as_u16() == 202).then(|| t.elapsed().as_secs_f64())
        }));
    }
    let sent_secs = start.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for h in handles {
        match h.await? {
            Some(l) => latencies.push(l),
            None => failed += 1,
        }
    }
    Ok(json!({
        "requests": total,
        "offered_rate": total as f64 / sent_secs,
        "failed": failed,
        "latency": percentiles(latencies),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let out = match Cli::parse().command {
        Command::Loop {
            sandbox,
            n,
            tasks,
            retries,
            timeout,
            appid,
            secret,
            prefix,
        } => run_loop(sandbox, n, tasks, retries, timeout, appid, secret, prefix).await?,
        Command::E2e {
            pusher,
            token,
            sandbox,
            pid,
            n,
            batch,
            producers,
            prefix,
            timeout,
        } => {
            run_e2e(
                pusher, token, sandbox, pid, n, batch, producers, prefix, timeout,
            )
            .await?
        }
        Command::Accept {
            pusher,
            token,
            rate,
            duration,
        } => run_accept(pusher, token, rate, duration).await?,
        Command::Fill {
            pusher,
            token,
            n,
            batch,
            producers,
        } => {
            let secs = feed(&pusher, &token, n, batch, producers, "fill").await?;
            json!({"accepted": n, "secs": secs, "rate": n as f64 / secs})
        }
        Command::Proc { pid } => {
            let pid = pid.to_string();
            json!({"cpu_secs": cpu_seconds(&pid)?, "rss_kib": rss_kib(&pid)?})
        }
    };
    println!("{out}");
    Ok(())
}
