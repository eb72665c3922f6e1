//! The pusher's Service, PodDisruptionBudget and, when asked for, the Ingress in front of
//! `/wechat/events`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::layout::{HTTP_PORT, METRICS_PORT};
use super::metadata::{child_name, meta, selector_labels};
use super::types::BuildInput;

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

/// The path WeChat posts delivery reports to.
pub const EVENTS_PATH: &str = "/wechat/events";

/// Name of the events Ingress.
pub fn events_ingress_name(channel: &str) -> String {
    format!("{}-events", child_name(channel))
}

/// `NAME-pusher-events`: `HOST/wechat/events` (exact path, nothing else) to the Service's
/// `http` port, with TLS by reference to the named Secret. `None` without `eventsIngress`.
pub fn events_ingress(input: &BuildInput<'_>, name: &str, namespace: &str) -> Option<Ingress> {
    let spec = input.channel.spec.events_ingress.as_ref()?;
    let mut metadata = meta(input, events_ingress_name(name), namespace, name);
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(EVENTS_PATH.into()),
                        path_type: "Exact".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: child_name(name),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    })
}

/// The server URL the Ingress serves, for the status.
pub fn events_url(input: &BuildInput<'_>) -> Option<String> {
    let spec = input.channel.spec.events_ingress.as_ref()?;
    let scheme = if spec.tls_secret_name.is_some() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{}{EVENTS_PATH}", spec.host))
}
