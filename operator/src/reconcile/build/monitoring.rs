//! The pusher's monitoring for prometheus-operator, applied when `monitoring.coreos.com/v1` is
//! served: a PodMonitor (the scrape configuration) and a PrometheusRule (the alerts of
//! `charts/wxpush-operator/alerts/wxpush.rules.yaml`, narrowed to the channel).
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

use super::metadata::{child_name, meta, selector_labels};
use super::types::BuildInput;

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

/// The alert rules, the one definition the chart renders too (docs/alerts.md is the runbook).
pub const ALERT_RULES: &str =
    include_str!("../../../../charts/wxpush-operator/alerts/wxpush.rules.yaml");

/// The PrometheusRule's API resource.
pub fn prometheus_rule_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    )
}

/// The rule groups of [`ALERT_RULES`] for one channel: every pusher series selector
/// (`channel!=""`) narrowed to `namespace="NS",channel="NAME"`, and the Deployment selector
/// (`deployment=~".+-pusher"`) to `namespace="NS",deployment="NAME-pusher"`; the group is named
/// after the channel. Names and namespaces are DNS labels, so they need no PromQL escaping.
pub fn alert_groups(name: &str, namespace: &str) -> serde_json::Value {
    let narrowed = ALERT_RULES
        .replace(
            r#"channel!="""#,
            &format!(r#"namespace="{namespace}",channel="{name}""#),
        )
        .replace(
            r#"deployment=~".+-pusher""#,
            &format!(
                r#"namespace="{namespace}",deployment="{}""#,
                child_name(name)
            ),
        );
    let mut rules: serde_json::Value =
        serde_yaml_ng::from_str(&narrowed).unwrap_or(serde_json::Value::Null);
    if let Some(groups) = rules["groups"].as_array_mut() {
        for g in groups {
            g["name"] = json!(format!("wxpush-{namespace}-{name}"));
        }
    }
    rules["groups"].take()
}

/// `NAME-pusher`: the wxpush alerts for this channel only.
pub fn prometheus_rule(input: &BuildInput<'_>, name: &str, namespace: &str) -> DynamicObject {
    let mut obj = DynamicObject::new(&child_name(name), &prometheus_rule_api_resource());
    obj.metadata = meta(input, child_name(name), namespace, name);
    obj.data = json!({"spec": {"groups": alert_groups(name, namespace)}});
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_rules_parse_and_every_selector_is_narrowed() {
        let groups = alert_groups("order-notify", "shop");
        let rules = groups[0]["rules"].as_array().expect("rules");
        assert_eq!(groups[0]["name"], "wxpush-shop-order-notify");
        assert_eq!(rules.len(), 7);
        for r in rules {
            let expr = r["expr"].as_str().expect("expr");
            assert!(
                !expr.contains(r#"channel!="""#) && !expr.contains(".+-pusher"),
                "{expr}"
            );
            assert!(
                expr.contains(r#"namespace="shop",channel="order-notify""#)
                    || expr.contains(r#"namespace="shop",deployment="order-notify-pusher""#),
                "{expr}"
            );
        }
    }
}
