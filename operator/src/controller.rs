//! The watches that drive reconciles: PushChannels (as raw JSON, read with the spec fields
//! this version ignores noted: [`crate::unknown_fields`]), the children they own (metadata only,
//! selected by the operator's label) and the Secrets they reference (metadata only: Secret
//! values never enter the operator's memory through a watch).

use std::future::Future;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject, ListParams, PartialObjectMeta};
use kube::core::NamespaceResourceScope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::crd::PushChannel;
use crate::reconcile::build::{
    MANAGED_BY, keda_api_resource, pod_monitor_api_resource, prometheus_rule_api_resource,
};
use crate::reconcile::dereference::referenced_keys;
use crate::reconcile::{Context, error_policy, reconcile};

/// Why the operator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The PushChannel CRD is not installed.
    #[error(
        "the PushChannel CRD (pushchannels.wxpush.io) is not installed in this cluster: \
         install it with `kubectl apply -f crds/pushchannel.yaml` (or the Helm chart) and restart"
    )]
    CrdMissing,
    /// Listing PushChannels failed for another reason (RBAC, connectivity).
    #[error("cannot list PushChannels: {0}")]
    List(#[source] kube::Error),
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Fails fast, with a message that says what to do, when the CRD is missing.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), StartupError> {
    match api::<PushChannel>(client, namespace)
        .list(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(StartupError::CrdMissing),
        Err(e) => Err(StartupError::List(e)),
    }
}

/// Whether KEDA's `ScaledObject` is served (then the operator watches and prunes them).
pub async fn keda_available(client: &Client) -> bool {
    client
        .list_api_group_resources("keda.sh/v1alpha1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "scaledobjects"))
}

/// Whether prometheus-operator's `PodMonitor` is served (then every channel gets one, and the
/// operator watches them), found through API discovery like KEDA.
pub async fn pod_monitors_available(client: &Client) -> bool {
    client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "podmonitors"))
}

/// Whether prometheus-operator's `PrometheusRule` is served (then every channel gets its
/// alerts, and the operator watches them).
pub async fn prometheus_rules_available(client: &Client) -> bool {
    client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "prometheusrules"))
}

/// The PushChannels (from the controller's cache) that reference Secret `namespace/name`.
pub fn channels_referencing(
    store: &Store<PushChannel>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<PushChannel>> {
    store
        .state()
        .into_iter()
        .filter(|pc| pc.namespace().as_deref() == Some(namespace))
        .filter(|pc| referenced_keys(&pc.spec).contains_key(name))
        .map(|pc| ObjectRef::from_obj(pc.as_ref()))
        .collect()
}

/// Runs the controller until `shutdown` completes (then lets running reconciles finish): over
/// all namespaces when `namespaces` is empty, else one controller per namespace, each with
/// namespaced watches only (PushChannels, children, Secrets), so that the operator needs no
/// right outside them and never reads a Secret elsewhere.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt as _;
    if namespaces.is_empty() {
        return run_one(ctx, None, concurrency, shutdown).await;
    }
    let shutdown = Box::pin(shutdown).shared();
    let runs = namespaces
        .into_iter()
        .map(|ns| run_one(Arc::clone(&ctx), Some(ns), concurrency, shutdown.clone()));
    futures::future::join_all(runs).await;
}

/// Namespaces from `--watch-namespaces` (a comma list) and `--namespace`: their union, in
/// order, without blanks or repeats; empty means all namespaces.
pub fn watched_namespaces(watch: &[String], namespace: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ns in watch.iter().map(String::as_str).chain(namespace) {
        let ns = ns.trim();
        if !ns.is_empty() && !out.iter().any(|o| o == ns) {
            out.push(ns.to_string());
        }
    }
    out
}

async fn run_one(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    // PushChannels are watched as raw JSON and read here, so that the spec fields this version
    // does not know are seen (and named in a warning) before they are dropped.
    let (store, writer) = reflector::store::<PushChannel>();
    let raw_api: Api<DynamicObject> = {
        let ar = ApiResource::erase::<PushChannel>(&());
        match ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        }
    };
    let unknown = Arc::clone(&ctx.unknown_fields);
    let channels = watcher(raw_api, watcher::Config::default())
        .default_backoff()
        .try_filter_map(move |event| futures::future::ready(Ok(unknown.typed(event))))
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(channels, store.clone());
    macro_rules! owned_meta {
        ($k:ty) => {
            watcher(api::<PartialObjectMeta<$k>>(&client, ns), owned.clone())
                .default_backoff()
                .touched_objects()
        };
    }
    let mut controller = controller
        .owns_stream(owned_meta!(ConfigMap))
        .owns_stream(owned_meta!(PersistentVolumeClaim))
        .owns_stream(owned_meta!(Deployment))
        .owns_stream(owned_meta!(Service))
        .owns_stream(owned_meta!(PodDisruptionBudget))
        .owns_stream(owned_meta!(HorizontalPodAutoscaler))
        .watches_stream(
            watcher(
                api::<PartialObjectMeta<Secret>>(&client, ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |secret: PartialObjectMeta<Secret>| {
                let ns = secret.namespace().unwrap_or_default();
                channels_referencing(&store, &ns, &secret.name_any())
            },
        );
    if ctx.settings.keda_available {
        let ar = keda_api_resource();
        let so_api: Api<PartialObjectMeta<DynamicObject>> = match ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_stream_with(
            watcher(so_api, owned.clone())
                .default_backoff()
                .touched_objects(),
            ar,
        );
    }
    if ctx.settings.pod_monitors_available {
        let ar = pod_monitor_api_resource();
        let pm_api: Api<PartialObjectMeta<DynamicObject>> = match ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_stream_with(
            watcher(pm_api, owned.clone())
                .default_backoff()
                .touched_objects(),
            ar,
        );
    }
    if ctx.settings.prometheus_rules_available {
        let ar = prometheus_rule_api_resource();
        let pr_api: Api<PartialObjectMeta<DynamicObject>> = match ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_stream_with(
            watcher(pr_api, owned.clone())
                .default_backoff()
                .touched_objects(),
            ar,
        );
    }
    let cleanup = Arc::clone(&ctx);
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let cleanup = Arc::clone(&cleanup);
            async move {
            match result {
                Ok((obj, _)) => debug!(namespace = obj.namespace.as_deref().unwrap_or_default(), name = %obj.name, "reconciled"),
                // A reconcile queued for an object deleted meanwhile: nothing to do but
                // forgetting its failure count.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    cleanup.forget(&format!(
                        "{}/{}",
                        obj.namespace.as_deref().unwrap_or_default(),
                        obj.name
                    ));
                    debug!(object = %obj, "already deleted")
                }
                Err(e) => warn!(error = %e, "controller"),
            }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn channel(ns: &str, name: &str, creds: &str) -> PushChannel {
        let spec = serde_yaml_ng::from_str(&format!(
            "credentials: {{secretRef: {{name: {creds}}}}}\nauth: {{secretRef: {{name: shared-auth, key: token}}}}\n"
        ))
        .expect("spec");
        let mut pc = PushChannel::new(name, spec);
        pc.metadata.namespace = Some(ns.into());
        pc
    }

    #[test]
    fn a_secret_maps_to_the_channels_that_reference_it_in_its_namespace() {
        let mut writer: Writer<PushChannel> = Writer::default();
        for pc in [
            channel("shop", "a", "wx-a"),
            channel("shop", "b", "wx-b"),
            channel("other", "c", "wx-a"),
        ] {
            writer.apply_watcher_event(&Event::Apply(pc));
        }
        let store = writer.as_reader();
        let names = |ns: &str, secret: &str| {
            let mut v: Vec<String> = channels_referencing(&store, ns, secret)
                .into_iter()
                .map(|r| r.name)
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("shop", "wx-a"), ["a"]);
        assert_eq!(names("shop", "shared-auth"), ["a", "b"]);
        assert_eq!(names("other", "wx-a"), ["c"]);
        assert!(names("shop", "unrelated").is_empty());
    }

    #[test]
    fn watched_namespaces_join_both_flags() {
        assert!(watched_namespaces(&[], None).is_empty(), "all namespaces");
        assert_eq!(watched_namespaces(&[], Some("shop")), ["shop"]);
        let list = vec![
            "a".to_string(),
            " b ".to_string(),
            String::new(),
            "a".to_string(),
        ];
        assert_eq!(watched_namespaces(&list, Some("b")), ["a", "b"]);
    }
}
