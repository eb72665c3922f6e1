//! The builders' input, their output and their error.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;

use crate::crd::PushChannel;

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
