use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use wxpush_api::config::PusherConfig;

use super::*;
use crate::crd::{PushChannel, PushChannelSpec};

fn channel(spec_yaml: &str) -> PushChannel {
    let spec: PushChannelSpec = serde_yaml_ng::from_str(spec_yaml).expect("spec parses");
    let mut pc = PushChannel::new("order-notify", spec);
    pc.metadata.namespace = Some("shop".into());
    pc.metadata.uid = Some("0000-1111".into());
    pc
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "wxpush.io/v1alpha1".into(),
        kind: "PushChannel".into(),
        name: "order-notify".into(),
        uid: "0000-1111".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn build_with(pc: &PushChannel, versions: &BTreeMap<String, String>) -> Desired {
    build(&BuildInput {
        channel: pc,
        owner: owner(),
        secret_versions: versions,
        default_image: "example/pusher:test",
    })
    .expect("builds")
}

const BASE: &str = "
credentials: {secretRef: {name: wx}}
auth: {secretRef: {name: auth, key: token}}
";

const REDIS: &str = "
credentials: {secretRef: {name: wx}}
auth: {secretRef: {name: auth, key: token}}
queue: {redis: {url: {name: redis, key: url}}}
autoscaling: {enabled: true, minReplicas: 2, maxReplicas: 5}
";

fn versions() -> BTreeMap<String, String> {
    BTreeMap::from([("wx".into(), "1".into()), ("auth".into(), "2".into())])
}

#[test]
fn config_map_holds_a_valid_pusher_config_with_file_references_only() {
    let d = build_with(&channel(BASE), &versions());
    let text = &d.config_map.data.as_ref().expect("data")[CONFIG_FILE];
    let config = PusherConfig::from_yaml(text).expect("the pusher parses what the operator writes");
    config.validate().expect("and finds it valid");
    assert_eq!(config.channel, "order-notify");
    assert_eq!(
        config.credentials.app_secret_file.as_deref(),
        Some(std::path::Path::new("/etc/wxpush/credentials/appSecret"))
    );
    assert!(config.credentials.app_secret.is_none() && config.auth.token.is_none());
}

#[test]
fn embedded_queue_gets_one_replica_a_volume_and_recreate() {
    let d = build_with(&channel(BASE), &versions());
    let spec = d.deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let pvc = d.volume_claim.expect("a claim for the store");
    assert_eq!(
        pvc.metadata.name.as_deref(),
        Some("order-notify-pusher-data")
    );
    assert!(d.autoscaler.is_none());
}

#[test]
fn autoscaling_leaves_replicas_to_the_hpa() {
    let d = build_with(&channel(REDIS), &versions());
    let spec = d.deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, None);
    let json = serde_json::to_value(&d.deployment).expect("json");
    assert!(
        json["spec"].get("replicas").is_none(),
        "replicas must not be serialised"
    );
    assert!(d.volume_claim.is_none());
    let Some(Autoscaler::Hpa(hpa)) = &d.autoscaler else {
        panic!("an HPA")
    };
    let hs = hpa.spec.as_ref().expect("hpa spec");
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 5));
    let names: Vec<String> = hs
        .metrics
        .iter()
        .flatten()
        .map(|m| m.type_.clone())
        .collect();
    assert_eq!(names, ["Pods", "External", "Resource"]);
}

#[test]
fn secret_versions_and_config_change_the_hash() {
    let pc = channel(BASE);
    let a = build_with(&pc, &versions()).config_hash;
    let mut rotated = versions();
    rotated.insert("wx".into(), "9".into());
    let b = build_with(&pc, &rotated).config_hash;
    let c = build_with(
        &channel(&format!("{BASE}concurrency: {{maxInFlight: 3}}\n")),
        &versions(),
    )
    .config_hash;
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(a, build_with(&pc, &versions()).config_hash, "stable");
    let annotations = build_with(&pc, &rotated)
        .deployment
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .expect("annotations");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], b);
}

#[test]
fn grace_period_follows_the_drain_timeout() {
    let d = build_with(
        &channel(&format!("{BASE}shutdown: {{drainTimeout: 45s}}\n")),
        &versions(),
    );
    let pod = d
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(45 + GRACE_MARGIN_SECS)
    );
}

#[test]
fn default_image_is_used_when_the_spec_names_none() {
    let d = build_with(&channel(BASE), &versions());
    let pod = d
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("example/pusher:test")
    );
}

/// A WeCom channel's config reads its own credentials from the files the Deployment mounts
/// under the credentials' names, and nothing of WeChat's.
#[test]
fn wecom_channels_mount_and_name_their_own_credentials() {
    for (spec, provider, keys) in [
        (
            "provider: wecomApp\napiBaseUrl: https://qyapi.weixin.qq.com\n\
             credentials: {secretRef: {name: wx, corpIdKey: cid, corpSecretKey: cs, agentIdKey: aid}}\n\
             auth: {secretRef: {name: auth, key: token}}\n",
            wxpush_api::policy::Provider::WecomApp,
            vec![("cid", "corpId"), ("cs", "corpSecret"), ("aid", "agentId")],
        ),
        (
            "provider: wecomRobot\napiBaseUrl: https://qyapi.weixin.qq.com\n\
             credentials: {secretRef: {name: wx, webhookKeyKey: hook}}\n\
             auth: {secretRef: {name: auth, key: token}}\n",
            wxpush_api::policy::Provider::WecomRobot,
            vec![("hook", "webhookKey")],
        ),
    ] {
        let d = build_with(&channel(spec), &versions());
        let text = &d.config_map.data.as_ref().expect("data")[CONFIG_FILE];
        let config = PusherConfig::from_yaml(text).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.provider, provider);
        assert!(config.credentials.app_id_file.is_none(), "{text}");
        let deployment = serde_json::to_value(&d.deployment).expect("json");
        let volumes = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let creds = volumes
            .iter()
            .find(|v| v["secret"]["secretName"] == "wx")
            .expect("the credentials volume");
        let items: Vec<(String, String)> = creds["secret"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap_or("").to_string(),
                    i["path"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for (key, file) in keys {
            assert!(
                items.contains(&(key.to_string(), file.to_string())),
                "{key} → {file}: {items:?}"
            );
            assert!(
                text.contains(&format!("/etc/wxpush/credentials/{file}")),
                "{text}"
            );
        }
    }
}
