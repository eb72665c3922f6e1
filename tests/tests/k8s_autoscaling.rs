//! The autoscaling loop on a real control plane: the real HPA controller, reading the pushers'
//! metrics from a real Prometheus through the metrics adapter, scales the real Deployment of
//! the full example up under load and back down after it; the pushers behind the pods (run by
//! the pod runner) share one real `redis-server`, and WeChat is the sandbox answering in 20 ms.
//!
//! Each pusher sends one request at a time (`concurrency.maxInFlight: 1`), so one pod delivers
//! about 40 messages a second and a load of 100 a second builds a backlog that only more pods
//! drain. The HPA's windows are short for a test (scale-down stabilisation 10 s).
//!
//! Checked: the replicas go up during the load and back to the minimum after; pods started by
//! the scale-up delivered messages (their series in Prometheus); every acknowledged message is
//! delivered exactly once at the sandbox, and no unacknowledged one more than once. The replica
//! count over time is written to `target/k8s-autoscaling/replicas.csv`
//! (`WXPUSH_AUTOSCALING_CSV` overrides the path); `tests/k8s/plot_replicas.py` draws it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::cluster::{
    Cluster, EXAMPLE_TOKEN, WAIT, example_secrets, full_example, up_with_namespace,
};
use wxpush_tests::kube::{Kubectl, OperatorProcess, condition_status};
use wxpush_tests::redis::RedisServer;
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::{wait_for, workspace_root};

const NS: &str = "shop";
const LOAD_PER_SECOND: u64 = 100;
const LOAD_SECONDS: u64 = 25;
const MAX_REPLICAS: i64 = 4;

async fn get(kubectl: &Kubectl, resource: &str, name: &str) -> Option<Value> {
    let out = kubectl
        .run(&["get", resource, name, "-n", NS, "-o", "json"], None)
        .await
        .ok()?;
    serde_json::from_str(&out).ok()
}

/// The API addresses of the pushers behind Ready pods, by pod name (what the Service would
/// balance over; there is no kube-proxy on this host).
async fn endpoints(cluster: &Cluster, kubectl: &Kubectl) -> BTreeMap<String, String> {
    let Ok(out) = kubectl
        .run(
            &[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "wxpush.io/channel=payment-notify",
                "-o",
                "json",
            ],
            None,
        )
        .await
    else {
        return BTreeMap::new();
    };
    let pods: Value = serde_json::from_str(&out).unwrap_or_default();
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            condition_status(p, "Ready") == Some("True")
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?.to_string();
            let info = cluster.pod_process(NS, &name)?;
            (info["uid"] == p["metadata"]["uid"])
                .then(|| Some((name, info["listen"].as_str()?.to_string())))?
        })
        .collect()
}

/// One sample of the scaling state.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    replicas: i64,
    ready: i64,
    desired: i64,
    backlog: Option<f64>,
}

/// Sends `total` messages at `rate` a second over the Ready pods' pushers, each to its own
/// recipient; returns the acknowledged (202) recipients and those whose request failed in a way
/// that may still have stored it.
async fn load(
    endpoints: Arc<Mutex<Vec<String>>>,
    total: u64,
    rate: u64,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let http = sandbox::http();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_millis(i * 1000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (http, endpoints) = (http.clone(), Arc::clone(&endpoints));
        tasks.push(tokio::spawn(async move {
            let user = format!("o-scale-{i:05}");
            let body = json!({"touser": user, "template_id": "TPL", "data": {"k": {"value": "v"}}});
            let mut unsure = false;
            for attempt in 0..5u64 {
                let target = {
                    let e = endpoints.lock().expect("endpoints");
                    if e.is_empty() {
                        None
                    } else {
                        Some(e[usize::try_from(i + attempt).unwrap_or(0) % e.len()].clone())
                    }
                };
                if let Some(addr) = target {
                    match http
                        .post(format!("http://{addr}/v1/messages"))
                        .bearer_auth(EXAMPLE_TOKEN)
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().as_u16() == 202 => return (user, true, false),
                        // A 503 may follow a write Redis applied (see docs/pusher.md).
                        Ok(r) if r.status().as_u16() == 503 => unsure = true,
                        Ok(_) => {}
                        // Sent but not answered (the pod stopped): maybe stored.
                        Err(e) if !e.is_connect() => unsure = true,
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (user, false, unsure)
        }));
    }
    let (mut acked, mut unsure) = (BTreeSet::new(), BTreeSet::new());
    for t in tasks {
        let (user, ok, maybe) = t.await.expect("a sender task");
        if ok {
            acked.insert(user);
        } else if maybe {
            unsure.insert(user);
        }
    }
    (acked, unsure)
}

async fn prometheus_query(url: &str, query: &str) -> Vec<Value> {
    let r: Value = sandbox::http()
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .expect("Prometheus answers")
        .json()
        .await
        .expect("JSON");
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_scales_the_pushers_up_under_load_and_down_after_and_nothing_is_lost() {
    let cluster = up_with_namespace(NS).await;
    let kubectl = cluster.kubectl();
    let redis = RedisServer::start().await;
    let (_sandbox, base) = sandbox::spawn(&["--fault-latency", "20ms"]);
    let wx = WxClient::new(base.clone());
    kubectl
        .apply(&example_secrets(NS, &redis.url()))
        .await
        .expect("Secrets");
    let home = cluster.state().join("operator-home");
    std::fs::create_dir_all(&home).expect("HOME");
    let operator = OperatorProcess::start_with_kubeconfig(
        &cluster.kubeconfig(),
        &home,
        &["--leader-election=false"],
        &[],
    )
    .await;
    let spec = json!({
        "concurrency": {"maxInFlight": 1, "adaptive": false},
        "queue": {"redis": {"claimIdle": "5s"}},
        "shutdown": {"drainTimeout": "5s"},
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "targetBacklogPerPod": 50,
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 5}]},
                "scaleDown": {"stabilizationWindowSeconds": 10,
                              "policies": [{"type": "Pods", "value": 4, "periodSeconds": 5}]},
            },
        },
    });
    kubectl
        .run(
            &["apply", "--validate=strict", "-f", "-"],
            Some(&full_example(NS, &base, &spec)),
        )
        .await
        .expect("the full example");
    wait_for("the PushChannel Ready", WAIT, || async {
        let pc = get(&kubectl, "pushchannel", "payment-notify").await?;
        (condition_status(&pc, "Ready") == Some("True")).then_some(())
    })
    .await;
    // The HPA reads its metrics through the adapter before the load starts.
    let last_hpa = Mutex::new(Value::Null);
    let hpa = wait_for(
        "the HPA's ScalingActive=True with metric values",
        WAIT,
        || async {
            let hpa = get(&kubectl, "horizontalpodautoscaler", "payment-notify-pusher").await?;
            {
                let mut last = last_hpa.lock().expect("last");
                if *last != hpa["status"] {
                    eprintln!("HPA status: {}", hpa["status"]);
                    *last = hpa["status"].clone();
                }
            }
            let has_values = hpa["status"]["currentMetrics"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["type"] == "External"));
            (condition_status(&hpa, "ScalingActive") == Some("True") && has_values).then_some(hpa)
        },
    )
    .await;
    eprintln!("HPA before the load: {}", hpa["status"]);
    let first = wait_for("a pusher behind a Ready pod", WAIT, || async {
        let e = endpoints(&cluster, &kubectl).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    let initial_pods: BTreeSet<String> = first.keys().cloned().collect();

    // Samplers: the pods' pushers (for the load) and the scaling state (for the CSV).
    let live = Arc::new(Mutex::new(first.values().cloned().collect::<Vec<_>>()));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let all_pods: Arc<Mutex<BTreeSet<String>>> = Arc::new(Mutex::new(initial_pods.clone()));
    let t0 = Instant::now();
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let (live, samples, all_pods, stop) = (
            Arc::clone(&live),
            Arc::clone(&samples),
            Arc::clone(&all_pods),
            Arc::clone(&stop),
        );
        let kubectl = kubectl.clone();
        let prom = cluster.prometheus_url().to_string();
        let cluster = &cluster;
        async move {
            loop {
                let e = endpoints(cluster, &kubectl).await;
                if !e.is_empty() {
                    *live.lock().expect("live") = e.values().cloned().collect();
                }
                all_pods.lock().expect("pods").extend(e.keys().cloned());
                let d = get(&kubectl, "deployment", "payment-notify-pusher").await;
                let h = get(&kubectl, "horizontalpodautoscaler", "payment-notify-pusher").await;
                let backlog = prometheus_query(
                    &prom,
                    "sum(wxpush_queue_messages{namespace=\"shop\",channel=\"payment-notify\",state=\"ready\"})",
                )
                .await
                .first()
                .and_then(|r| r["value"][1].as_str()?.parse().ok());
                if let (Some(d), Some(h)) = (d, h) {
                    samples.lock().expect("samples").push(Sample {
                        at: t0.elapsed(),
                        replicas: d["spec"]["replicas"].as_i64().unwrap_or(0),
                        ready: d["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        desired: h["status"]["desiredReplicas"].as_i64().unwrap_or(0),
                        backlog,
                    });
                }
                tokio::select! {
                    () = stop.notified() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let scenario = async {
        let total = LOAD_PER_SECOND * LOAD_SECONDS;
        let (acked, unsure) = load(Arc::clone(&live), total, LOAD_PER_SECOND).await;
        eprintln!(
            "load done at {:?}: {} acknowledged, {} unsure of {total}",
            t0.elapsed(),
            acked.len(),
            unsure.len()
        );
        let peak = samples
            .lock()
            .expect("samples")
            .iter()
            .map(|s| s.replicas)
            .max()
            .unwrap_or(0);
        // Every acknowledged message delivered (the pods left drain the backlog).
        let n = u64::try_from(acked.len()).unwrap_or(u64::MAX);
        let stats = wait_for("every acknowledged message delivered", WAIT * 2, || async {
            let s = wx.stats().await;
            let done = acked
                .iter()
                .all(|u| s.per_openid.get(u).is_some_and(|c| c.delivered > 0));
            done.then_some(s)
        })
        .await;
        // Back down to the minimum once the backlog is gone.
        wait_for("the HPA scales back down to 1", WAIT * 2, || async {
            let d = get(&kubectl, "deployment", "payment-notify-pusher").await?;
            (d["spec"]["replicas"].as_i64() == Some(1)).then_some(())
        })
        .await;
        // A few more samples, so the record shows the pods going too.
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.notify_one();
        (acked, unsure, n, peak, stats)
    };
    let ((acked, unsure, n, peak, _), ()) = tokio::join!(scenario, sampler);

    // Exactly once: every acknowledged recipient got one delivery, the unsure at most one, and
    // nobody else any.
    let s = wx.stats().await;
    for (user, c) in &s.per_openid {
        if !user.starts_with("o-scale-") {
            continue;
        }
        let expected = if acked.contains(user) {
            1..=1
        } else if unsure.contains(user) {
            0..=1
        } else {
            0..=0
        };
        assert!(
            expected.contains(&c.delivered),
            "{user}: delivered {} times (acknowledged: {})",
            c.delivered,
            acked.contains(user)
        );
    }
    assert!(
        s.delivered_unique >= n,
        "delivered {} < acknowledged {n}",
        s.delivered_unique
    );
    assert!(
        peak >= 3,
        "the HPA scaled up to {peak} replicas only (samples: {:?})",
        samples.lock().expect("samples")
    );

    // Pods the scale-up started took work: Prometheus has their deliveries, labelled by pod.
    let scaled: BTreeSet<String> = all_pods
        .lock()
        .expect("pods")
        .difference(&initial_pods)
        .cloned()
        .collect();
    assert!(!scaled.is_empty(), "no pod was added");
    let delivered_by_pod: BTreeMap<String, f64> = prometheus_query(
        cluster.prometheus_url(),
        "max by (pod) (max_over_time(wxpush_messages_completed_total{namespace=\"shop\",outcome=\"delivered\"}[15m]))",
    )
    .await
    .iter()
    .filter_map(|r| {
        Some((
            r["metric"]["pod"].as_str()?.to_string(),
            r["value"][1].as_str()?.parse().ok()?,
        ))
    })
    .collect();
    let working: Vec<&String> = scaled
        .iter()
        .filter(|p| delivered_by_pod.get(*p).is_some_and(|n| *n > 0.0))
        .collect();
    assert!(
        !working.is_empty(),
        "no added pod delivered anything: added {scaled:?}, by pod {delivered_by_pod:?}"
    );

    // The replica count over time.
    let csv_path = std::env::var_os("WXPUSH_AUTOSCALING_CSV").map_or_else(
        || workspace_root().join("target/k8s-autoscaling/replicas.csv"),
        std::path::PathBuf::from,
    );
    if let Some(dir) = csv_path.parent() {
        std::fs::create_dir_all(dir).expect("the CSV's folder");
    }
    let mut csv = String::from("seconds,replicas,ready,hpa_desired,backlog\n");
    for s in samples.lock().expect("samples").iter() {
        csv.push_str(&format!(
            "{:.1},{},{},{},{}\n",
            s.at.as_secs_f64(),
            s.replicas,
            s.ready,
            s.desired,
            s.backlog.map_or(String::new(), |b| format!("{b:.0}"))
        ));
    }
    std::fs::write(&csv_path, csv).expect("write the CSV");
    eprintln!(
        "peak {peak} replicas; {} acknowledged, delivered once each; added pods that delivered: {working:?}; CSV {}",
        acked.len(),
        csv_path.display()
    );
    assert_eq!(operator.terminate(Duration::from_secs(30)).await, Some(0));
}
