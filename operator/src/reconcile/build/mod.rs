//! *Build*: pure functions from a PushChannel (and the versions of the Secrets it references) to
//! the objects the operator applies. No I/O here: everything is unit-tested from YAML fixtures.

mod autoscaler;
mod config;
mod monitoring;
mod network;
mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use sha2::{Digest, Sha256};

use crate::crd::{AutoscalingProvider, PushChannel};

pub use autoscaler::{keda_api_resource, redis_stream, scaled_object};
pub use config::{CONFIG_FILE, config_map, pusher_config};
pub use monitoring::{
    ALERT_RULES, METRICS_PORT_NAME, SCRAPE_INTERVAL, alert_groups, pod_monitor,
    pod_monitor_api_resource, prometheus_rule, prometheus_rule_api_resource, relabelings,
};
pub use network::{EVENTS_PATH, events_ingress_name};
pub use workload::{HTTP_PORT, METRICS_PORT};

/// The label every child carries, and the one the operator's watches select on.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "wxpush-operator");
/// Pod-template annotation holding [`Desired::config_hash`]; a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "wxpush.io/config-hash";
/// Seconds added to the pusher's `shutdown.drainTimeout` for the pod's grace period, so the
/// pusher finishes its own drain (and flushes the store) before the kubelet's SIGKILL.
pub const GRACE_MARGIN_SECS: i64 = 10;

/// What the builders need besides the PushChannel.
#[derive(Debug, Clone)]
pub struct BuildInput<'a> {
    /// The resource.
    pub channel: &'a PushChannel,
    /// The controller owner reference to put on every child.
    pub owner: OwnerReference,
    /// `resourceVersion` of each referenced Secret, by name: part of the config hash, so a
    /// rotated Secret rolls the pods.
    pub secret_versions: &'a BTreeMap<String, String>,
    /// The image used when the spec names none.
    pub default_image: &'a str,
}

/// The autoscaler the spec asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Autoscaler {
    /// An `autoscaling/v2` HorizontalPodAutoscaler.
    Hpa(Box<HorizontalPodAutoscaler>),
    /// A KEDA `keda.sh/v1alpha1` ScaledObject.
    Keda(Box<DynamicObject>),
}

/// Every object one PushChannel needs, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// `NAME-pusher`: the pusher's config file.
    pub config_map: ConfigMap,
    /// `NAME-pusher-data`: the embedded store's volume (embedded queue only).
    pub volume_claim: Option<PersistentVolumeClaim>,
    /// `NAME-pusher`.
    pub deployment: Deployment,
    /// `NAME-pusher`: API, events and metrics ports.
    pub service: Service,
    /// `NAME-pusher`.
    pub disruption_budget: PodDisruptionBudget,
    /// When `autoscaling.enabled`.
    pub autoscaler: Option<Autoscaler>,
    /// `NAME-pusher`: a prometheus-operator PodMonitor, applied only where
    /// `monitoring.coreos.com/v1` is served.
    pub pod_monitor: DynamicObject,
    /// `NAME-pusher`: the channel's alerts as a PrometheusRule, applied only where
    /// `monitoring.coreos.com/v1` serves PrometheusRules.
    pub prometheus_rule: DynamicObject,
    /// `NAME-pusher-events`, when `eventsIngress` is set.
    pub events_ingress: Option<Ingress>,
    /// The server URL that Ingress serves.
    pub events_url: Option<String>,
    /// Hash of the config file and the Secrets' versions (the pod-template annotation).
    pub config_hash: String,
}

/// Why objects could not be built. Validation catches these first; they are a bug otherwise.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource has no name, namespace or uid.
    #[error("the PushChannel has no {0}")]
    Missing(&'static str),
    /// The pusher config did not serialise.
    #[error("cannot serialise the pusher config")]
    Serialize(#[source] serde_yaml_ng::Error),
    /// A value (e.g. a volume size) is not what the API accepts.
    #[error("invalid value for {field}: {message}")]
    Invalid {
        /// The spec field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Name of every child but the volume claim.
pub fn child_name(channel: &str) -> String {
    format!("{channel}-pusher")
}

/// Name of the embedded store's volume claim.
pub fn volume_claim_name(channel: &str) -> String {
    format!("{channel}-pusher-data")
}

/// In-cluster URL of the pusher's API.
pub fn endpoint(channel: &str, namespace: &str) -> String {
    format!("http://{}.{namespace}.svc:{HTTP_PORT}", child_name(channel))
}

/// Labels that select the pusher's pods.
pub fn selector_labels(channel: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "wxpush-pusher".into()),
        ("app.kubernetes.io/instance".into(), channel.into()),
    ])
}

/// Labels on every child (and on the pods).
pub fn labels(channel: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(channel);
    l.insert("app.kubernetes.io/component".into(), "pusher".into());
    l.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    l.insert("wxpush.io/channel".into(), channel.into());
    l
}

/// Builds every object the PushChannel needs.
pub fn build(input: &BuildInput<'_>) -> Result<Desired, BuildError> {
    let pc = input.channel;
    let name = pc
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::Missing("name"))?;
    let namespace = pc
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::Missing("namespace"))?;
    let config_map = config_map(input, name, namespace)?;
    let config_hash = config_hash(&config_map, input.secret_versions);
    let autoscaler = if pc.spec.autoscaling.enabled {
        Some(match pc.spec.autoscaling.provider {
            AutoscalingProvider::Hpa => {
                Autoscaler::Hpa(Box::new(autoscaler::hpa(input, name, namespace)))
            }
            AutoscalingProvider::Keda => {
                Autoscaler::Keda(Box::new(scaled_object(input, name, namespace)))
            }
        })
    } else {
        None
    };
    Ok(Desired {
        volume_claim: workload::volume_claim(input, name, namespace)?,
        deployment: workload::deployment(input, name, namespace, &config_hash),
        service: network::service(input, name, namespace),
        disruption_budget: network::disruption_budget(input, name, namespace),
        pod_monitor: pod_monitor(input, name, namespace),
        prometheus_rule: prometheus_rule(input, name, namespace),
        events_ingress: network::events_ingress(input, name, namespace),
        events_url: network::events_url(input),
        config_map,
        autoscaler,
        config_hash,
    })
}

/// The metadata every child shares.
fn meta(input: &BuildInput<'_>, name: String, namespace: &str, channel: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.into()),
        labels: Some(labels(channel)),
        owner_references: Some(vec![input.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// SHA-256 over the ConfigMap's data and each referenced Secret's `name=resourceVersion`,
/// shortened to 16 hex digits.
fn config_hash(cm: &ConfigMap, secret_versions: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in cm.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    for (name, version) in secret_versions {
        h.update(format!("secret/{name}={version}\n").as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests;
