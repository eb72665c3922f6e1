//! *Apply*: the only step that writes children. Server-side apply, one field manager, `force`
//! (the operator is the source of truth for every field it sets).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::build::{
    Autoscaler, Desired, child_name, events_ingress_name, keda_api_resource,
    pod_monitor_api_resource, prometheus_rule_api_resource,
};
use super::error::Error;

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "wxpush-operator";
/// The manager that holds `spec.replicas` for a moment while the HPA takes it over.
pub const HANDOVER_MANAGER: &str = "wxpush-operator-handover";

/// What the applied objects report back (their status, as the API server returned it).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The Deployment after apply.
    pub deployment: Deployment,
    /// The HPA after apply, when one is wanted.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// The ScaledObject after apply, when one is wanted.
    pub scaled_object: Option<DynamicObject>,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(api: &Api<K>, kind: &str, obj: &K) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj.name_any();
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: kind.to_string(),
            name,
            source,
        })
}

/// Deletes `name` only when it exists and names `owner_uid` among its owner references: a
/// same-named object someone else made is left alone (and reported in the log). The delete
/// carries the object's uid as a precondition, so an object replaced in between is not hit.
async fn delete_if_owned<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let failed = |source| Error::Delete {
        kind: kind.to_string(),
        name: name.to_string(),
        source,
    };
    let Some(live) = api.get_opt(name).await.map_err(failed)? else {
        return Ok(());
    };
    if !owned_by(live.meta(), owner_uid) {
        tracing::warn!(kind, name, "not deleting: the PushChannel does not own it");
        return Ok(());
    }
    let mut params = DeleteParams::background();
    params.preconditions = live.meta().uid.clone().map(|uid| kube::api::Preconditions {
        uid: Some(uid),
        resource_version: None,
    });
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(failed(source)),
    }
}

/// Whether `meta` lists `owner_uid` among its owner references.
pub fn owned_by(meta: &kube::api::ObjectMeta, owner_uid: &str) -> bool {
    !owner_uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid)
}

/// Whether `manager` set `spec.replicas` of the live Deployment by apply.
pub fn applies_replicas(live: &Deployment, manager: &str) -> bool {
    live.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| {
            f.0.get("f:spec")
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
}

/// The documented hand-over of `spec.replicas` to an autoscaler: if the operator's manager
/// still owns it, a second manager first applies the live value, so that the apply without
/// `replicas` that follows releases the operator's claim without resetting the field to 1.
/// The HPA's next scale update then takes it from the hand-over manager.
async fn hand_over_replicas(api: &Api<Deployment>, name: &str) -> Result<(), Error> {
    let live = api.get_opt(name).await.map_err(|source| Error::Apply {
        kind: "Deployment".into(),
        name: name.into(),
        source,
    })?;
    let Some(live) = live else { return Ok(()) };
    if !applies_replicas(&live, FIELD_MANAGER) {
        return Ok(());
    }
    let replicas = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    tracing::info!(
        deployment = name,
        replicas,
        "handing spec.replicas over to the autoscaler"
    );
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: "Deployment".into(),
        name: name.into(),
        source,
    })?;
    Ok(())
}

/// Which optional APIs are served, and which stale autoscalers to look for and delete.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prune {
    /// KEDA's CRD is served, so a ScaledObject may exist.
    pub keda_available: bool,
    /// prometheus-operator's `monitoring.coreos.com/v1` PodMonitor is served: apply one.
    pub pod_monitors_available: bool,
    /// prometheus-operator's `monitoring.coreos.com/v1` PrometheusRule is served: apply one.
    pub prometheus_rules_available: bool,
    /// The last status named an events URL: an events Ingress may exist (deleted when the spec
    /// no longer asks for one).
    pub events_ingress_may_exist: bool,
    /// The last status already said autoscaling was off (so nothing is left to delete).
    pub autoscalers_gone: bool,
}

/// The uid of the PushChannel that owns every desired child (empty when none is set).
fn owner_uid(desired: &Desired) -> String {
    desired
        .config_map
        .metadata
        .owner_references
        .iter()
        .flatten()
        .next()
        .map(|o| o.uid.clone())
        .unwrap_or_default()
}

/// The PodMonitor and the PrometheusRule, where their CRDs are installed.
async fn apply_monitoring(
    client: &Client,
    namespace: &str,
    desired: &Desired,
    prune: Prune,
) -> Result<(), Error> {
    if prune.pod_monitors_available {
        let ar = pod_monitor_api_resource();
        apply(
            &Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar),
            "PodMonitor",
            &desired.pod_monitor,
        )
        .await?;
    }
    if prune.prometheus_rules_available {
        let ar = prometheus_rule_api_resource();
        apply(
            &Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar),
            "PrometheusRule",
            &desired.prometheus_rule,
        )
        .await?;
    }
    Ok(())
}

/// The events Ingress when the spec asks for one; else the operator's own is deleted.
async fn apply_events_ingress(
    client: &Client,
    namespace: &str,
    channel: &str,
    desired: &Desired,
    prune: Prune,
) -> Result<(), Error> {
    let ingresses = Api::<Ingress>::namespaced(client.clone(), namespace);
    match &desired.events_ingress {
        Some(ingress) => {
            apply(&ingresses, "Ingress", ingress).await?;
        }
        None if prune.events_ingress_may_exist => {
            let owner = owner_uid(desired);
            delete_if_owned(&ingresses, "Ingress", &events_ingress_name(channel), &owner).await?;
        }
        None => {}
    }
    Ok(())
}

/// The autoscaler the spec asks for (an HPA or a KEDA ScaledObject), deleting the operator's
/// other one; with none asked for, deletes both.
async fn apply_autoscaler(
    client: &Client,
    namespace: &str,
    channel: &str,
    desired: &Desired,
    prune: Prune,
    applied: &mut Applied,
) -> Result<(), Error> {
    let keda_available = prune.keda_available;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), namespace);
    let keda: ApiResource = keda_api_resource();
    let scaled_objects = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &keda);
    let name = child_name(channel);
    // Every desired child carries the PushChannel as its owner.
    let owner_uid = owner_uid(desired);
    let owner_uid = owner_uid.as_str();
    match &desired.autoscaler {
        Some(Autoscaler::Hpa(hpa)) => {
            applied.hpa = Some(apply(&hpas, "HorizontalPodAutoscaler", hpa).await?);
            if keda_available {
                delete_if_owned(&scaled_objects, "ScaledObject", &name, owner_uid).await?;
            }
        }
        Some(Autoscaler::Keda(so)) => {
            applied.scaled_object = Some(apply(&scaled_objects, "ScaledObject", so).await?);
            delete_if_owned(&hpas, "HorizontalPodAutoscaler", &name, owner_uid).await?;
        }
        None if prune.autoscalers_gone => {}
        None => {
            delete_if_owned(&hpas, "HorizontalPodAutoscaler", &name, owner_uid).await?;
            if keda_available {
                delete_if_owned(&scaled_objects, "ScaledObject", &name, owner_uid).await?;
            }
        }
    }
    Ok(())
}

/// Applies every desired object in dependency order (config and volume before the Deployment
/// that mounts them) and removes an autoscaler that is no longer wanted.
pub async fn apply_all(
    client: &Client,
    namespace: &str,
    channel: &str,
    desired: &Desired,
    prune: Prune,
) -> Result<Applied, Error> {
    let ns = |c: &Client| c.clone();
    apply(
        &Api::<ConfigMap>::namespaced(ns(client), namespace),
        "ConfigMap",
        &desired.config_map,
    )
    .await?;
    if let Some(pvc) = &desired.volume_claim {
        apply(
            &Api::<PersistentVolumeClaim>::namespaced(ns(client), namespace),
            "PersistentVolumeClaim",
            pvc,
        )
        .await?;
    }
    let deployments = Api::<Deployment>::namespaced(ns(client), namespace);
    let wants_replicas = desired
        .deployment
        .spec
        .as_ref()
        .is_some_and(|s| s.replicas.is_some());
    if !wants_replicas {
        hand_over_replicas(&deployments, &child_name(channel)).await?;
    }
    let deployment = apply(&deployments, "Deployment", &desired.deployment).await?;
    apply(
        &Api::<Service>::namespaced(ns(client), namespace),
        "Service",
        &desired.service,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(ns(client), namespace),
        "PodDisruptionBudget",
        &desired.disruption_budget,
    )
    .await?;
    apply_monitoring(client, namespace, desired, prune).await?;
    apply_events_ingress(client, namespace, channel, desired, prune).await?;
    let mut applied = Applied {
        deployment,
        ..Applied::default()
    };
    apply_autoscaler(client, namespace, channel, desired, prune, &mut applied).await?;
    Ok(applied)
}
