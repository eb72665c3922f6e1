//! The pusher's scrape configuration for prometheus-operator: a `monitoring.coreos.com/v1`
//! PodMonitor, applied when that API is served.
//!
//! Its relabelling gives every series the labels the chart's prometheus-adapter rules and the
//! KEDA triggers select on (`charts/wxpush-operator/adapter/queries.yaml`):
//! - `namespace` and `pod` from the pod's metadata (the adapter maps them to the Kubernetes
//!   resources `namespace` and `pod`, which is how the HPA's Pods metric finds its pods);
//! - `channel` from the pod's `wxpush.io/channel` label. The pusher already writes `channel` on
//!   each of its own series; `honorLabels: true` keeps the pusher's value (identical) instead of
//!   renaming it to `exported_channel`, and the target label fills it in where a series has none.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{BuildInput, child_name, meta, selector_labels};

/// Name of the pusher container's metrics port (see `workload.rs`).
pub const METRICS_PORT_NAME: &str = "metrics";
/// How often Prometheus scrapes the pushers.
pub const SCRAPE_INTERVAL: &str = "15s";

/// The PodMonitor's API resource.
pub fn pod_monitor_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// The relabelling rules, as prometheus-operator takes them (`sourceLabels`, `targetLabel`).
/// Also the contract of the metric pipeline test, which labels its scrape targets the same way.
pub fn relabelings() -> serde_json::Value {
    json!([
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_wxpush_io_channel"], "targetLabel": "channel"},
    ])
}

/// `NAME-pusher`: scrapes the `metrics` port of every pod of the channel's Deployment.
pub fn pod_monitor(input: &BuildInput<'_>, name: &str, namespace: &str) -> DynamicObject {
    let mut obj = DynamicObject::new(&child_name(name), &pod_monitor_api_resource());
    obj.metadata = meta(input, child_name(name), namespace, name);
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "namespaceSelector": {"matchNames": [namespace]},
            "podMetricsEndpoints": [{
                "port": METRICS_PORT_NAME,
                "path": "/metrics",
                "scheme": "http",
                "interval": SCRAPE_INTERVAL,
                "honorLabels": true,
                "relabelings": relabelings(),
            }],
        }
    });
    obj
}
