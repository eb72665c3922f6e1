//! The autoscaling metric pipeline, for real (issue #10): a real `prometheus` (the Debian
//! package) scrapes three real `wxpush-pusher serve` processes that share one Redis queue, as
//! the pods of one Deployment do, under load from the WeChat sandbox. Each scrape target carries
//! the labels the operator's PodMonitor relabelling produces (computed here from the builder's
//! own relabel rules). The test runs the exact PromQL of `charts/wxpush-operator/adapter/queries.yaml`
//! (the prometheus-adapter rules and the KEDA triggers) against Prometheus's HTTP API, reads the
//! consumer group's lag as KEDA's `redis-streams` trigger does, and feeds every answer into the
//! HPA algorithm (`wxpush_tests::hpa`): with load, the desired replicas rise above the
//! current three; once the load is gone, they fall to `minReplicas`, not before the scale-down
//! stabilisation window has passed.
//!
//! Needs `prometheus` and `redis-server` on `PATH` (`scripts/setup.sh` installs both).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_operator::reconcile::build::{redis_stream, relabelings};
use wxpush_tests::hpa::{self, Hpa};
use wxpush_tests::pusher::{PusherProc, config, tempdir, template};
use wxpush_tests::redis::RedisServer;
use wxpush_tests::{ChildGuard, free_port, sandbox, wait_for, workspace_root};

const NAMESPACE: &str = "shop";
const CHANNEL: &str = "order-notify";
const PODS: usize = 3;
/// The HPA's targets in this test (the PushChannel's `targetInflightPerPod`,
/// `targetBacklogPerPod`) and bounds.
const TARGET_INFLIGHT: f64 = 4.0;
const TARGET_BACKLOG: f64 = 50.0;
const MIN_REPLICAS: u32 = 1;
const MAX_REPLICAS: u32 = 20;
/// The scale-down stabilisation window, small for the test (300 s by default).
const WINDOW: Duration = Duration::from_secs(3);
/// Sandbox latency per WeChat request while loaded: keeps requests in flight long enough to be
/// scraped.
const LATENCY: &str = "400ms";
const MESSAGES: usize = 1500;

fn pod_name(i: usize) -> String {
    format!("{CHANNEL}-pusher-{i}")
}

/// The target labels Prometheus would give pod `i` through the PodMonitor: the builder's
/// relabel rules applied to the Kubernetes service-discovery labels of that pod.
fn podmonitor_labels(i: usize) -> BTreeMap<String, String> {
    let meta = BTreeMap::from([
        (
            "__meta_kubernetes_namespace".to_string(),
            NAMESPACE.to_string(),
        ),
        ("__meta_kubernetes_pod_name".to_string(), pod_name(i)),
        (
            "__meta_kubernetes_pod_label_wxpush_io_channel".to_string(),
            CHANNEL.to_string(),
        ),
    ]);
    let mut out = BTreeMap::new();
    for rule in relabelings().as_array().expect("rules") {
        assert_eq!(rule["action"], "replace", "only replace rules are modelled");
        let source: Vec<&str> = rule["sourceLabels"]
            .as_array()
            .expect("sourceLabels")
            .iter()
            .map(|s| meta[s.as_str().expect("label")].as_str())
            .collect();
        out.insert(
            rule["targetLabel"].as_str().expect("target").to_string(),
            source.join(";"),
        );
    }
    out
}

struct Prometheus {
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(targets: &[String]) -> Self {
        let dir = tempdir();
        let statics: Vec<Value> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"targets": [t], "labels": podmonitor_labels(i)}))
            .collect();
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "wxpush-pusher",
                "metrics_path": "/metrics",
                // As the PodMonitor's honorLabels: the pusher's own `channel` label is kept.
                "honor_labels": true,
                "static_configs": statics,
            }],
        });
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config.to_string()).expect("write prometheus.yml");
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let guard = ChildGuard::spawn("prometheus", cmd);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let probe = (http.clone(), format!("{base}/-/ready"));
        wait_for("prometheus /-/ready", Duration::from_secs(60), || {
            let (http, url) = probe.clone();
            async move {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        Self {
            _guard: guard,
            _dir: dir,
            base,
            http,
        }
    }

    /// `GET /api/v1/query`: the vector result as (labels, value) pairs.
    async fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let r: Value = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("query JSON");
        assert_eq!(r["status"], "success", "{promql}: {r}");
        assert_eq!(r["data"]["resultType"], "vector", "{promql}: {r}");
        r["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| {
                let labels = serde_json::from_value(s["metric"].clone()).expect("labels");
                let v = s["value"][1].as_str().expect("value").parse().expect("f64");
                (labels, v)
            })
            .collect()
    }
}

/// The queries of `charts/wxpush-operator/adapter/queries.yaml`.
struct Queries {
    /// The custom (Pods) rule's query for our three pods, expanded from its template exactly as
    /// prometheus-adapter does.
    inflight_per_pod: String,
    /// The same rule's `expanded` query, verbatim (the example's two pods).
    inflight_example: String,
    /// The external rule's `expanded` query, verbatim.
    backlog: String,
    keda_inflight: String,
    keda_backlog: String,
}

fn expand(template: &str, series: &str, matchers: &str, group_by: &str) -> String {
    template
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
}

fn load_queries() -> Queries {
    let path = workspace_root().join("charts/wxpush-operator/adapter/queries.yaml");
    let doc: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("queries.yaml"))
            .expect("queries.yaml parses");
    assert_eq!(doc["example"]["namespace"], NAMESPACE);
    assert_eq!(doc["example"]["channel"], CHANNEL);
    let find = |source: &str, metric: &str| -> Value {
        doc["queries"]
            .as_array()
            .expect("queries")
            .iter()
            .find(|q| q["source"] == source && q["metric"] == metric)
            .unwrap_or_else(|| panic!("{source} {metric} in queries.yaml"))
            .clone()
    };
    let custom = find("prometheus-adapter", "wxpush_inflight_requests");
    let external = find("prometheus-adapter", "wxpush_queue_messages");
    let text = |v: &Value| v.as_str().expect("string").to_string();
    // The template, expanded with the file's own matchers, gives the file's query: so our
    // expansion for three pods is the adapter's.
    assert_eq!(
        expand(
            &text(&custom["metricsQuery"]),
            "wxpush_inflight_requests",
            &text(&custom["labelMatchers"]),
            &text(&custom["groupBy"])
        ),
        text(&custom["expanded"])
    );
    assert_eq!(
        expand(
            &text(&external["metricsQuery"]),
            "wxpush_queue_messages",
            &text(&external["labelMatchers"]),
            &text(&external["groupBy"])
        ),
        text(&external["expanded"])
    );
    let pods: Vec<String> = (0..PODS).map(pod_name).collect();
    Queries {
        inflight_per_pod: expand(
            &text(&custom["metricsQuery"]),
            "wxpush_inflight_requests",
            &format!(r#"namespace="{NAMESPACE}",pod=~"{}""#, pods.join("|")),
            "pod",
        ),
        inflight_example: text(&custom["expanded"]),
        backlog: text(&external["expanded"]),
        keda_inflight: text(&find("keda", "wxpush_inflight_requests")["expanded"]),
        keda_backlog: text(&find("keda", "wxpush_queue_messages")["expanded"]),
    }
}

/// One look at every signal, and each one's replica proposal for `current` replicas.
#[derive(Debug, Clone)]
struct Reading {
    inflight_per_pod: BTreeMap<String, f64>,
    backlog: f64,
    keda_inflight: f64,
    keda_backlog: f64,
    stream_lag: Option<f64>,
    /// HPA: Pods metric, External metric. KEDA: inflight, backlog, stream lag.
    proposals: [u32; 5],
}

fn single(v: &[(BTreeMap<String, String>, f64)], what: &str) -> f64 {
    match v {
        [] => 0.0,
        [(_, x)] => *x,
        _ => panic!("{what}: expected at most one series, got {v:?}"),
    }
}

/// `XINFO GROUPS` of the channel's stream: the consumer group's `lag`, as KEDA's
/// `redis-streams` trigger reads it (`None` when Redis cannot tell).
fn stream_lag(redis: &RedisServer, group: &str) -> Option<f64> {
    let out = redis.cli(&["XINFO", "GROUPS", &redis_stream("wxpush", CHANNEL)]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let at = lines.iter().position(|l| *l == group)?;
    let i = lines[at..].iter().position(|l| *l == "lag")? + at;
    lines.get(i + 1).and_then(|v| v.parse().ok())
}

async fn read(prom: &Prometheus, q: &Queries, redis: &RedisServer, current: u32) -> Reading {
    let per_pod: BTreeMap<String, f64> = prom
        .query(&q.inflight_per_pod)
        .await
        .into_iter()
        .map(|(l, v)| (l["pod"].clone(), v))
        .collect();
    let backlog_series = prom.query(&q.backlog).await;
    for (labels, _) in &backlog_series {
        assert_eq!(labels["channel"], CHANNEL);
        assert_eq!(labels["state"], "ready");
    }
    let backlog = single(&backlog_series, "backlog");
    let keda_inflight = single(&prom.query(&q.keda_inflight).await, "keda inflight");
    let keda_backlog = single(&prom.query(&q.keda_backlog).await, "keda backlog");
    let stream_lag = stream_lag(redis, "pushers");
    let tol = hpa::DEFAULT_TOLERANCE;
    let values: Vec<f64> = per_pod.values().copied().collect();
    let proposals = [
        hpa::replicas_for_pods(current, &values, TARGET_INFLIGHT, tol),
        hpa::replicas_for_total(current, backlog, TARGET_BACKLOG, tol),
        hpa::replicas_for_total(current, keda_inflight, TARGET_INFLIGHT, tol),
        hpa::replicas_for_total(current, keda_backlog, TARGET_BACKLOG, tol),
        stream_lag.map_or(MIN_REPLICAS, |lag| {
            hpa::replicas_for_total(current, lag, TARGET_BACKLOG, tol)
        }),
    ];
    Reading {
        inflight_per_pod: per_pod,
        backlog,
        keda_inflight,
        keda_backlog,
        stream_lag,
        proposals,
    }
}

fn pusher_config(sandbox: &str, dir: &Path, url: &str) -> Value {
    config(
        sandbox,
        dir,
        &json!({
            "channel": CHANNEL,
            "queue": {"embedded": null, "redis": {"url": url, "claimIdle": "5s", "retention": "1h"}},
            "concurrency": {"maxInFlight": 16},
            "retry": {"initialBackoff": "50ms", "maxBackoff": "1s"},
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_answers_drive_the_hpa_up_under_load_and_down_to_min_after() {
    let queries = load_queries();
    let wx = sandbox::start(sandbox::config()).await;
    let redis = RedisServer::start().await;
    let mut pods = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..PODS {
        let dir = tempdir();
        let cfg = pusher_config(&wx.handle.base_url(), dir.path(), &redis.url());
        pods.push(PusherProc::start(dir.path(), &cfg).await);
        dirs.push(dir);
    }
    let targets: Vec<String> = pods
        .iter()
        .map(|p| p.base.trim_start_matches("http://").to_string())
        .collect();
    let prom = Prometheus::start(&targets).await;

    // Every pod is scraped, with the PodMonitor's labels on the pusher's own series.
    let started = Instant::now();
    wait_for("three scraped pods", Duration::from_secs(60), || async {
        let up = prom
            .query(r#"up{job="wxpush-pusher",namespace="shop",channel="order-notify"} == 1"#)
            .await;
        let series = prom.query(&queries.inflight_per_pod).await;
        (up.len() == PODS && series.len() == PODS).then_some(())
    })
    .await;
    println!("targets up after {:.1?}", started.elapsed());
    for (labels, _) in prom.query("wxpush_inflight_requests").await {
        assert_eq!(
            labels["channel"], CHANNEL,
            "no exported_channel: {labels:?}"
        );
        assert!(!labels.contains_key("exported_channel"));
        assert_eq!(labels["namespace"], NAMESPACE);
        assert!(labels["pod"].starts_with("order-notify-pusher-"));
    }

    // Idle: nothing to scale for; every proposal is at or below the minimum.
    let current = u32::try_from(PODS).expect("small");
    let idle = read(&prom, &queries, &redis, current).await;
    println!("idle: {idle:?}");
    assert!(
        idle.proposals.iter().all(|p| *p <= MIN_REPLICAS),
        "{idle:?}"
    );

    // Load: WeChat answers slowly, producers send a burst spread over the three pods.
    let (code, _) = wx.admin.patch_faults(&json!({"latency": LATENCY})).await;
    assert_eq!(code, 200);
    let load_started = Instant::now();
    let senders: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let api = p.api.clone();
            tokio::spawn(async move {
                let msgs: Vec<Value> = (0..MESSAGES / PODS)
                    .map(|n| template(&format!("user-{i}-{n}")))
                    .collect();
                for chunk in msgs.chunks(100) {
                    api.batch_ids(chunk).await;
                }
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    let mut hpa = Hpa::new(MIN_REPLICAS, MAX_REPLICAS).with_scale_down_window(WINDOW);
    let t0 = Instant::now();
    let loaded = wait_for(
        "every signal asks for more than three replicas",
        Duration::from_secs(60),
        || async {
            let r = read(&prom, &queries, &redis, current).await;
            // Each pod works at its concurrency limit once the burst reached it.
            let all_busy = r.inflight_per_pod.len() == PODS
                && r.inflight_per_pod.values().all(|v| *v >= TARGET_INFLIGHT);
            (all_busy && r.proposals.iter().all(|p| *p > current)).then_some(r)
        },
    )
    .await;
    let desired_loaded = hpa.evaluate(t0.elapsed(), current, &loaded.proposals);
    println!(
        "loaded after {:.1?}: {loaded:?} → desired {desired_loaded}",
        load_started.elapsed()
    );
    assert!(desired_loaded > current);
    assert!(desired_loaded <= MAX_REPLICAS);
    // Redis 7 can tell the consumer group's lag (the pushers' XDEL of finished entries does
    // not hide it), so KEDA's redis-streams trigger has a value.
    assert!(loaded.stream_lag.is_some_and(|l| l > 0.0), "{loaded:?}");
    // The example's verbatim query (two of the pods) answers per pod too.
    let example = prom.query(&queries.inflight_example).await;
    assert_eq!(example.len(), 2, "{example:?}");
    // Every replica reports the same shared backlog: the KEDA and adapter backlogs agree.
    assert!(loaded.backlog > 0.0 && loaded.keda_backlog > 0.0);

    // The load is gone: WeChat answers at once, the queue drains. Keep evaluating (the HPA
    // controller does, every 15 s by default; here every 250 ms) until the HPA is at minReplicas.
    wx.admin.patch_faults(&json!({"latency": "0ms"})).await;
    let mut replicas = desired_loaded;
    let mut last_high: Option<Duration> = None;
    let mut peak = desired_loaded;
    let drained_by = Instant::now() + Duration::from_secs(120);
    let at_min = loop {
        let r = read(&prom, &queries, &redis, replicas).await;
        let now = t0.elapsed();
        if r.proposals.iter().any(|p| *p > MIN_REPLICAS) {
            last_high = Some(now);
        }
        replicas = hpa.evaluate(now, replicas, &r.proposals);
        peak = peak.max(replicas);
        if replicas == MIN_REPLICAS {
            println!("at minReplicas at {now:.1?}: {r:?}");
            break now;
        }
        assert!(
            Instant::now() < drained_by,
            "the HPA never reached minReplicas: {r:?}, replicas {replicas}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let last_high = last_high.unwrap_or(Duration::ZERO);
    println!(
        "load gone: last proposal above min at {last_high:.1?}, minReplicas at {at_min:.1?} \
         (window {WINDOW:?}); peak {peak}"
    );
    assert!(
        at_min.saturating_sub(last_high) >= WINDOW,
        "scale-down waited for the stabilisation window"
    );
    let after = read(&prom, &queries, &redis, MIN_REPLICAS).await;
    assert_eq!(after.backlog, 0.0, "{after:?}");
    assert_eq!(after.keda_inflight, 0.0, "{after:?}");
    // Every message reached the sandbox, once.
    let stats = wx.admin.stats().await;
    assert_eq!(
        stats.delivered_unique,
        MESSAGES as u64 / PODS as u64 * PODS as u64
    );
    assert_eq!(stats.duplicates_suppressed, 0);
    drop(pods);
}
