//! The autoscaler: an `autoscaling/v2` HPA on the pusher's own metrics, or a KEDA ScaledObject.
//!
//! The HPA expects these metric names (see `docs/operator.md` for adapter rules):
//! - Pods metric `wxpush_inflight_requests` (per pod, averaged), target
//!   `autoscaling.targetInflightPerPod`;
//! - External metric `wxpush_queue_messages` with `{channel: NAME, state: ready}`, target
//!   `autoscaling.targetBacklogPerPod` as an average per pod;
//! - CPU utilisation, `autoscaling.targetCpuUtilization`, the fallback that works without an
//!   adapter.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
    ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::metadata::{child_name, meta};
use super::types::BuildInput;

/// The KEDA ScaledObject's API resource.
pub fn keda_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

fn average_value(v: String) -> MetricTarget {
    MetricTarget {
        type_: "AverageValue".into(),
        average_value: Some(Quantity(v)),
        ..MetricTarget::default()
    }
}

/// `NAME-pusher`: scales the Deployment on in-flight requests, backlog and CPU.
pub fn hpa(input: &BuildInput<'_>, name: &str, namespace: &str) -> HorizontalPodAutoscaler {
    let a = &input.channel.spec.autoscaling;
    let metrics = vec![
        MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: "wxpush_inflight_requests".into(),
                    selector: None,
                },
                target: average_value(a.target_inflight_per_pod.to_string()),
            }),
            ..MetricSpec::default()
        },
        MetricSpec {
            type_: "External".into(),
            external: Some(ExternalMetricSource {
                metric: MetricIdentifier {
                    name: "wxpush_queue_messages".into(),
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([
                            ("channel".into(), name.into()),
                            ("state".into(), "ready".into()),
                        ])),
                        match_expressions: None,
                    }),
                },
                target: average_value(a.target_backlog_per_pod.to_string()),
            }),
            ..MetricSpec::default()
        },
        MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(a.target_cpu_utilization),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
    ];
    HorizontalPodAutoscaler {
        metadata: meta(input, child_name(name), namespace, name),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: child_name(name),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: a.behavior.clone(),
        }),
        status: None,
    }
}

/// The Redis stream and consumer group a channel's pushers share: the stream
/// `{<keyPrefix>:<channel>}:q` and the group `queue.redis.consumerGroup`, as the pusher's Redis
/// store names them (`pusher/src/store/redis/mod.rs`: `key_base` and the `q` stream).
pub fn redis_stream(key_prefix: &str, channel: &str) -> String {
    format!("{{{key_prefix}:{channel}}}:q")
}

/// `NAME-pusher`: a KEDA ScaledObject with Prometheus triggers on the same metrics as the HPA,
/// and a CPU trigger. KEDA creates and owns its own HPA (`keda-hpa-NAME-pusher`).
///
/// With `autoscaling.keda.redisAuthenticationRef` and a `queue.redis`, a fourth trigger reads
/// the backlog straight from Redis: `redis-streams` (`redis-cluster-streams` for a cluster) on
/// the channel's stream and consumer group, `lagCount` = `targetBacklogPerPod` (the group's
/// `lag`, entries not yet delivered to any pusher: Redis 7 or later). The address and password
/// come from the named TriggerAuthentication, so the operator copies no Secret.
pub fn scaled_object(input: &BuildInput<'_>, name: &str, namespace: &str) -> DynamicObject {
    let a = &input.channel.spec.autoscaling;
    let server = &a.keda.prometheus_server_address;
    let selector = format!(r#"channel="{name}",namespace="{namespace}""#);
    let mut advanced = json!({"restoreToOriginalReplicaCount": false});
    if let Some(behavior) = &a.behavior {
        advanced["horizontalPodAutoscalerConfig"] = json!({"behavior": behavior});
    }
    let mut triggers = vec![
        json!({
            "type": "prometheus",
            "name": "inflight",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": server,
                "query": format!("sum(wxpush_inflight_requests{{{selector}}})"),
                "threshold": a.target_inflight_per_pod.to_string(),
            },
        }),
        json!({
            "type": "prometheus",
            "name": "backlog",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": server,
                // Every replica reports the shared stream's backlog: take one, not the sum.
                "query": format!(r#"max(wxpush_queue_messages{{{selector},state="ready"}})"#),
                "threshold": a.target_backlog_per_pod.to_string(),
            },
        }),
        json!({
            "type": "cpu",
            "name": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": a.target_cpu_utilization.to_string()},
        }),
    ];
    if let (Some(redis), Some(auth)) = (
        &input.channel.spec.queue.redis,
        &a.keda.redis_authentication_ref,
    ) {
        triggers.push(json!({
            "type": if redis.cluster { "redis-cluster-streams" } else { "redis-streams" },
            "name": "stream-lag",
            "metricType": "AverageValue",
            "authenticationRef": {"name": auth},
            "metadata": {
                "stream": redis_stream(&redis.key_prefix, name),
                "consumerGroup": redis.consumer_group,
                "lagCount": a.target_backlog_per_pod.to_string(),
            },
        }));
    }
    let mut obj = DynamicObject::new(&child_name(name), &keda_api_resource());
    obj.metadata = meta(input, child_name(name), namespace, name);
    obj.data = json!({
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(name)},
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "advanced": advanced,
            "triggers": triggers,
        }
    });
    obj
}
