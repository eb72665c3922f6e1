//! Scale: N PushChannels against the emulator, the time until the operator has reconciled them
//! all (status.observedGeneration == metadata.generation, `Reconciled=True`, and every channel's
//! Deployment, Service, ConfigMap and PodDisruptionBudget exist) and the operator's peak RSS
//! (`VmHWM`). Reported on stdout, never asserted on.
//!
//! `WXPUSH_SCALE_CHANNELS` sets N (default 50, so the suite stays fast); the figures in
//! docs/operator-testing.md come from
//! `WXPUSH_SCALE_CHANNELS=1000 cargo test -p wxpush-tests --test operator_scale -- --nocapture`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use wxpush_operator::crd::PushChannel;
use wxpush_tests::kube::{KubeEmulator, OperatorProcess, peak_rss_kib};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SELECTOR: &str = "app.kubernetes.io/managed-by=wxpush-operator";

/// Names of the channels that have a child of kind `K` (by the `wxpush.io/channel` label).
async fn channels_with<K>(api: &Api<K>) -> BTreeSet<String>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.list_metadata(&ListParams::default().labels(SELECTOR))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter_map(|o| o.labels().get("wxpush.io/channel").cloned())
                .collect()
        })
        .unwrap_or_default()
}

fn reconciled(pc: &PushChannel) -> bool {
    let Some(status) = pc.status.as_ref() else {
        return false;
    };
    status.observed_generation.is_some()
        && status.observed_generation == pc.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciled" && c.status == "True")
}

#[tokio::test]
async fn operator_reconciles_many_pushchannels() {
    let n: usize = env_or("WXPUSH_SCALE_CHANNELS", 50);
    let timeout = Duration::from_secs(env_or("WXPUSH_SCALE_TIMEOUT_SECS", 900));
    let concurrency: String = env_or("WXPUSH_SCALE_CONCURRENCY", "8".to_string());

    let (api, kubectl) = KubeEmulator::start_with_crd().await;
    kubectl
        .apply(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: scale-wechat}\nstringData: {appId: wxscale, appSecret: s}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: scale-auth}\nstringData: {token: t}\n",
        )
        .await
        .expect("apply the Secrets");

    // Create the channels first, so the measurement is the operator's alone.
    let client = api.client().await;
    let channels: Api<PushChannel> = Api::default_namespaced(client.clone());
    let created = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let channels = channels.clone();
            async move {
                let pc: PushChannel = serde_json::from_value(serde_json::json!({
                    "apiVersion": "wxpush.io/v1alpha1", "kind": "PushChannel",
                    "metadata": {"name": format!("ch-{i:04}")},
                    "spec": {"credentials": {"secretRef": {"name": "scale-wechat"}},
                             "auth": {"secretRef": {"name": "scale-auth", "key": "token"}}}
                }))
                .expect("a PushChannel");
                channels
                    .create(&PostParams::default(), &pc)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .expect("create the PushChannels");
    let creating = created.elapsed();

    let started = Instant::now();
    let operator = OperatorProcess::start(
        &api,
        &["--leader-election", "false", "--concurrency", &concurrency],
        &[("RUST_LOG", "warn,kube=error")],
    )
    .await;
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let budgets: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    let mut done: usize;
    loop {
        let listed = channels.list(&ListParams::default()).await.expect("list");
        let ready: BTreeSet<String> = listed
            .items
            .iter()
            .filter(|pc| reconciled(pc))
            .map(ResourceExt::name_any)
            .collect();
        done = ready.len();
        if done == n {
            let with_all = [
                channels_with(&deployments).await,
                channels_with(&services).await,
                channels_with(&config_maps).await,
                channels_with(&budgets).await,
            ];
            if with_all.iter().all(|set| ready.is_subset(set)) {
                break;
            }
        }
        assert!(
            started.elapsed() < timeout,
            "only {done} of {n} PushChannels reconciled after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciling = started.elapsed();
    let operator_peak = operator.pid().and_then(peak_rss_kib);
    let emulator_peak = api.pid().and_then(peak_rss_kib);
    println!(
        "scale: {n} PushChannels created in {creating:.1?}; the operator reconciled all {done} \
         (status + Deployment, Service, ConfigMap, PDB) in {reconciling:.1?} from its start; \
         operator peak RSS {} MiB (VmHWM); emulator peak RSS {} MiB",
        operator_peak.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        emulator_peak.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
    );
    assert_eq!(operator.terminate(Duration::from_secs(30)).await, Some(0));
}
