//! Builder tier: every object the operator builds for the example PushChannels, compared with
//! golden files and validated against the Kubernetes 1.33 schemas in strict mode by the PyPI
//! package `kubernetes-validate` (installed into `.venv` by `scripts/setup.sh`).
//!
//! `UPDATE_GOLDEN=1 cargo test -p wxpush-operator --test builders` rewrites the golden files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use wxpush_operator::crd::{AutoscalingProvider, PushChannel};
use wxpush_operator::reconcile::build::{Autoscaler, BuildInput, Desired, build};
use wxpush_operator::reconcile::dereference::referenced_keys;
use wxpush_operator::reconcile::validate::validate;

/// The Kubernetes version the project targets (k8s-openapi's `v1_33` feature).
const KUBERNETES_VERSION: &str = "1.33.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

fn example(name: &str) -> PushChannel {
    let path = workspace().join("examples").join(name);
    let text = std::fs::read_to_string(&path).expect("example readable");
    let mut pc: PushChannel = serde_yaml_ng::from_str(&text).expect("example parses");
    // What the API server adds.
    pc.metadata.uid = Some("5f1c0e5e-0000-4000-8000-000000000001".into());
    pc.metadata.generation = Some(1);
    pc
}

fn build_all(pc: &PushChannel) -> Desired {
    assert_eq!(validate(pc), vec![], "the example is valid");
    let versions: BTreeMap<String, String> = referenced_keys(&pc.spec)
        .into_keys()
        .enumerate()
        .map(|(i, name)| (name, format!("{}", 1001 + i)))
        .collect();
    let owner = OwnerReference {
        api_version: "wxpush.io/v1alpha1".into(),
        kind: "PushChannel".into(),
        name: pc.metadata.name.clone().expect("name"),
        uid: pc.metadata.uid.clone().expect("uid"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    build(&BuildInput {
        channel: pc,
        owner,
        secret_versions: &versions,
        default_image: wxpush_operator::crd::DEFAULT_IMAGE,
    })
    .expect("builds")
}

/// Every object as a JSON value, in apply order.
fn objects(d: &Desired) -> Vec<serde_json::Value> {
    let mut out = vec![serde_json::to_value(&d.config_map).expect("json")];
    if let Some(pvc) = &d.volume_claim {
        out.push(serde_json::to_value(pvc).expect("json"));
    }
    out.push(serde_json::to_value(&d.deployment).expect("json"));
    out.push(serde_json::to_value(&d.service).expect("json"));
    out.push(serde_json::to_value(&d.disruption_budget).expect("json"));
    match &d.autoscaler {
        Some(Autoscaler::Hpa(h)) => out.push(serde_json::to_value(h).expect("json")),
        Some(Autoscaler::Keda(k)) => out.push(serde_json::to_value(k).expect("json")),
        None => {}
    }
    out
}

fn check_golden(name: &str, objs: &[serde_json::Value]) {
    let text: String = objs
        .iter()
        .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).expect("yaml")))
        .collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if golden != text {
        let first = golden
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(golden.lines().count().min(text.lines().count()));
        panic!(
            "{} drifted from what the builders produce (first difference at line {}: golden {:?}, built {:?}); \
             review and run `UPDATE_GOLDEN=1 cargo test -p wxpush-operator --test builders`",
            path.display(),
            first + 1,
            golden.lines().nth(first),
            text.lines().nth(first)
        );
    }
}

fn kubernetes_validate() -> PathBuf {
    let bin = workspace().join(".venv/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (it installs tests/requirements.txt into .venv)",
        bin.display()
    );
    bin
}

/// Runs `kubernetes-validate --strict` on every core object (not the KEDA ScaledObject, whose
/// schema it does not have).
fn strict_validate(name: &str, objs: &[serde_json::Value]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        if o["apiVersion"] == "keda.sh/v1alpha1" {
            continue;
        }
        let path = dir.path().join(format!(
            "{name}-{i}-{}.yaml",
            o["kind"].as_str().unwrap_or("x")
        ));
        std::fs::write(&path, serde_yaml_ng::to_string(o).expect("yaml")).expect("write");
        files.push(path);
    }
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: kubernetes-validate refused:\n{stdout}\n{stderr}"
    );
    // One "passed" line per file, so nothing was skipped.
    let valid = stdout
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(
        valid,
        files.len(),
        "{name}: expected every file reported valid:\n{stdout}\n{stderr}"
    );
}

fn kinds(objs: &[serde_json::Value]) -> Vec<String> {
    objs.iter()
        .map(|o| o["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn minimal_example() {
    let d = build_all(&example("pushchannel-minimal.yaml"));
    let objs = objects(&d);
    assert_eq!(
        kinds(&objs),
        [
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "PodDisruptionBudget"
        ]
    );
    for o in &objs {
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "PushChannel");
        assert_eq!(owner["controller"], true);
    }
    check_golden("minimal", &objs);
    strict_validate("minimal", &objs);
}

#[test]
fn full_example() {
    let d = build_all(&example("pushchannel-full.yaml"));
    let objs = objects(&d);
    assert_eq!(
        kinds(&objs),
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler"
        ]
    );
    assert!(
        objs[1]["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    check_golden("full", &objs);
    strict_validate("full", &objs);
}

/// KEDA is not a core API: kubernetes-validate has no schema for it, so the ScaledObject is
/// checked here by shape (and by its golden file); the other objects still go through
/// kubernetes-validate.
#[test]
fn full_example_with_keda() {
    let mut pc = example("pushchannel-full.yaml");
    pc.spec.autoscaling.provider = AutoscalingProvider::Keda;
    // The full example names a TriggerAuthentication; without it the ScaledObject has the
    // three Prometheus/CPU triggers (the lag trigger is checked below, with the reference).
    pc.spec.autoscaling.keda.redis_authentication_ref = None;
    let d = build_all(&pc);
    let objs = objects(&d);
    let so = objs.last().expect("a ScaledObject");
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["kind"], "ScaledObject");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        "payment-notify-pusher"
    );
    assert_eq!(so["spec"]["minReplicaCount"], 2);
    assert_eq!(so["spec"]["maxReplicaCount"], 20);
    let triggers: Vec<&str> = so["spec"]["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .map(|t| t["type"].as_str().expect("type"))
        .collect();
    assert_eq!(triggers, ["prometheus", "prometheus", "cpu"]);
    assert!(objs[1]["spec"].get("replicas").is_none());
    check_golden("full-keda", &objs);
    strict_validate("full-keda", &objs);
}

/// The validator really is strict: an unknown field in a built object is refused.
#[test]
fn strict_validation_refuses_unknown_fields() {
    let d = build_all(&example("pushchannel-minimal.yaml"));
    let mut deployment = serde_json::to_value(&d.deployment).expect("json");
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = serde_json::json!({});
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&deployment).expect("yaml")).expect("write");
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&path)
        .output()
        .expect("kubernetes-validate runs");
    assert!(!out.status.success(), "a typo'd field must be refused");
}

#[test]
fn no_secret_value_or_inline_credential_is_written() {
    for name in ["pushchannel-minimal.yaml", "pushchannel-full.yaml"] {
        let d = build_all(&example(name));
        let cm = &d.config_map.data.as_ref().expect("data")["pusher.yaml"];
        let config = wxpush_api::config::PusherConfig::from_yaml(cm).expect("parses");
        config.validate().expect("valid");
        assert!(config.credentials.app_id.is_none() && config.credentials.app_secret.is_none());
        assert!(config.auth.token.is_none());
        assert!(!cm.contains("redis://"), "the Redis URL is a mounted file");
    }
}

/// The PodMonitor (applied where `monitoring.coreos.com/v1` is served) selects exactly the
/// channel's pods, scrapes the container's named metrics port, and relabels to the labels the
/// chart's adapter rules and the KEDA queries select on.
#[test]
fn pod_monitor_scrapes_the_named_metrics_port_with_the_adapter_labels() {
    let d = build_all(&example("pushchannel-full.yaml"));
    let pm = serde_json::to_value(&d.pod_monitor).expect("json");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["metadata"]["name"], "payment-notify-pusher");
    assert_eq!(pm["metadata"]["ownerReferences"][0]["kind"], "PushChannel");
    assert_eq!(pm["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        pm["metadata"]["labels"]["app.kubernetes.io/managed-by"], "wxpush-operator",
        "the operator's owned-object watch selects on this label"
    );

    // The selector matches the pod template's labels, and only the Deployment's own selector.
    let dep = serde_json::to_value(&d.deployment).expect("json");
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert_eq!(
        &serde_json::Value::Object(selector.clone()),
        &dep["spec"]["selector"]["matchLabels"]
    );
    for (k, v) in selector {
        assert_eq!(&pod_labels[k], v, "pod label {k}");
    }
    assert_eq!(pm["spec"]["namespaceSelector"]["matchNames"][0], "shop");

    // The endpoint names a port the container declares, and it is the metrics port.
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    let ports = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports");
    let port = ports
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the PodMonitor's port is a named container port");
    assert_eq!(
        port["containerPort"],
        i64::from(wxpush_operator::reconcile::build::METRICS_PORT)
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["honorLabels"], true);

    // Relabelling: namespace and pod from the pod's metadata, channel from its label, whose
    // value on the pod template is the channel's name.
    let targets: Vec<(&str, &str)> = endpoint["relabelings"]
        .as_array()
        .expect("relabelings")
        .iter()
        .map(|r| {
            (
                r["sourceLabels"][0].as_str().expect("source"),
                r["targetLabel"].as_str().expect("target"),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            ("__meta_kubernetes_namespace", "namespace"),
            ("__meta_kubernetes_pod_name", "pod"),
            ("__meta_kubernetes_pod_label_wxpush_io_channel", "channel"),
        ]
    );
    assert_eq!(pod_labels["wxpush.io/channel"], "payment-notify");
    check_golden("full-podmonitor", &[pm]);
}

/// With KEDA, a `queue.redis` and a TriggerAuthentication named, the ScaledObject gains the
/// `redis-streams` lag trigger on the pushers' stream and consumer group; without the
/// reference it keeps the three triggers it had.
#[test]
fn keda_adds_the_redis_streams_lag_trigger() {
    let mut pc = example("pushchannel-full.yaml");
    pc.spec.autoscaling.provider = AutoscalingProvider::Keda;
    pc.spec.autoscaling.keda.redis_authentication_ref = Some("payment-notify-redis".into());
    let d = build_all(&pc);
    let Some(Autoscaler::Keda(so)) = &d.autoscaler else {
        panic!("a ScaledObject")
    };
    let so = serde_json::to_value(so).expect("json");
    let triggers = so["spec"]["triggers"].as_array().expect("triggers");
    let types: Vec<&str> = triggers
        .iter()
        .map(|t| t["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["prometheus", "prometheus", "cpu", "redis-streams"]);
    let redis = &triggers[3];
    assert_eq!(redis["name"], "stream-lag");
    assert_eq!(redis["metadata"]["stream"], "{wxpush:payment-notify}:q");
    assert_eq!(redis["metadata"]["consumerGroup"], "pushers");
    assert_eq!(
        redis["metadata"]["lagCount"],
        pc.spec.autoscaling.target_backlog_per_pod.to_string()
    );
    assert_eq!(redis["authenticationRef"]["name"], "payment-notify-redis");
    // No address, password or URL in the object: KEDA reads them through the reference.
    let text = so.to_string();
    for absent in ["address", "password", "redis://"] {
        assert!(!text.contains(absent), "{absent} must not be written");
    }
    // Every trigger's threshold is a string, as KEDA's CRD requires.
    for t in triggers {
        for (k, v) in t["metadata"].as_object().expect("metadata") {
            assert!(v.is_string(), "{k} of {} is a string", t["name"]);
        }
    }

    // A Redis Cluster gets the cluster variant, same stream and group.
    pc.spec.queue.redis.as_mut().expect("redis").cluster = true;
    let d = build_all(&pc);
    let Some(Autoscaler::Keda(so)) = &d.autoscaler else {
        panic!("a ScaledObject")
    };
    let so = serde_json::to_value(so).expect("json");
    assert_eq!(so["spec"]["triggers"][3]["type"], "redis-cluster-streams");
    assert_eq!(
        so["spec"]["triggers"][3]["metadata"]["stream"],
        "{wxpush:payment-notify}:q"
    );
}

/// `eventsIngress` gives an Ingress that routes only `/wechat/events` to the Service's `http`
/// port, with TLS by reference; the minimal example gets none.
#[test]
fn events_ingress_routes_only_the_events_path() {
    assert!(
        build_all(&example("pushchannel-minimal.yaml"))
            .events_ingress
            .is_none()
    );
    let d = build_all(&example("pushchannel-full.yaml"));
    let ing = serde_json::to_value(d.events_ingress.as_ref().expect("an Ingress")).expect("json");
    assert_eq!(ing["metadata"]["name"], "payment-notify-pusher-events");
    assert_eq!(ing["metadata"]["ownerReferences"][0]["kind"], "PushChannel");
    assert_eq!(
        ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"],
        "letsencrypt"
    );
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ing["spec"]["tls"],
        serde_json::json!([{"hosts": ["wx-events.payments.example.com"], "secretName": "wx-events-tls"}])
    );
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["host"], "wx-events.payments.example.com");
    let paths = rule["http"]["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 1, "only the events path is exposed");
    assert_eq!(paths[0]["path"], "/wechat/events");
    assert_eq!(paths[0]["pathType"], "Exact");
    assert_eq!(
        paths[0]["backend"]["service"],
        serde_json::json!({"name": "payment-notify-pusher", "port": {"name": "http"}})
    );
    let svc = serde_json::to_value(&d.service).expect("json");
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "http")
    );
    assert_eq!(
        d.events_url.as_deref(),
        Some("https://wx-events.payments.example.com/wechat/events")
    );
    strict_validate("events-ingress", &[ing]);
}

/// The PrometheusRule carries the alerts for this channel only.
#[test]
fn prometheus_rule_holds_the_channels_alerts() {
    let d = build_all(&example("pushchannel-full.yaml"));
    let pr = serde_json::to_value(&d.prometheus_rule).expect("json");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["metadata"]["name"], "payment-notify-pusher");
    assert_eq!(pr["metadata"]["ownerReferences"][0]["controller"], true);
    let rules = pr["spec"]["groups"][0]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 7);
    assert!(rules.iter().all(|r| {
        let e = r["expr"].as_str().unwrap_or_default();
        e.contains(r#"namespace="shop",channel="payment-notify""#)
            || e.contains(r#"namespace="shop",deployment="payment-notify-pusher""#)
    }));
}
