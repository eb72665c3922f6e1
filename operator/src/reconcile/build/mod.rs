//! *Build*: pure functions from a PushChannel (and the versions of the Secrets it references) to
//! the objects the operator applies. No I/O here: everything is unit-tested from YAML fixtures.

mod autoscaler;
mod config;
mod layout;
mod metadata;
mod monitoring;
mod network;
mod types;
mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use crate::crd::AutoscalingProvider;

pub use autoscaler::{keda_api_resource, redis_stream, scaled_object};
pub use config::{config_map, pusher_config};
pub use layout::{CONFIG_FILE, HTTP_PORT, METRICS_PORT};
pub use metadata::{MANAGED_BY, child_name, labels, selector_labels, volume_claim_name};
pub use monitoring::{
    ALERT_RULES, METRICS_PORT_NAME, SCRAPE_INTERVAL, alert_groups, pod_monitor,
    pod_monitor_api_resource, prometheus_rule, prometheus_rule_api_resource, relabelings,
};
pub use network::{EVENTS_PATH, events_ingress_name};
pub use types::{Autoscaler, BuildError, BuildInput, Desired};
pub use workload::{CONFIG_HASH_ANNOTATION, GRACE_MARGIN_SECS};

/// In-cluster URL of the pusher's API.
pub fn endpoint(channel: &str, namespace: &str) -> String {
    format!("http://{}.{namespace}.svc:{HTTP_PORT}", child_name(channel))
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
