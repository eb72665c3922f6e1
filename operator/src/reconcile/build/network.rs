//! The pusher's Service and PodDisruptionBudget.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::workload::{HTTP_PORT, METRICS_PORT};
use super::{BuildInput, child_name, meta, selector_labels};

/// `NAME-pusher`: `http` (API, WeChat events, health) and `metrics`.
pub fn service(input: &BuildInput<'_>, name: &str, namespace: &str) -> Service {
    let port = |port_name: &str, port: u16| ServicePort {
        name: Some(port_name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(port_name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(input, child_name(name), namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(name)),
            ports: Some(vec![port("http", HTTP_PORT), port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `NAME-pusher`: at most one pod voluntarily disrupted at a time.
///
/// `maxUnavailable: 1` rather than `minAvailable`: with the embedded queue there is exactly one
/// pod, and `minAvailable: 1` would block every node drain for good. Unhealthy pods may always
/// be evicted, so a crash-looping pusher never blocks a drain either.
pub fn disruption_budget(
    input: &BuildInput<'_>,
    name: &str,
    namespace: &str,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(input, child_name(name), namespace, name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
