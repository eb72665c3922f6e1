//! The pusher's Deployment, and the volume claim of its embedded store.
//!
//! With the embedded queue the store lives on a `ReadWriteOnce` volume that one pod owns, so the
//! Deployment runs exactly one replica with the `Recreate` strategy (the old pod releases the
//! volume before the new one starts). With Redis the pods are stateless and roll one at a time.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::layout::{CONFIG_FILE, HTTP_PORT, METRICS_PORT, mounts};
use super::metadata::{child_name, labels, meta, selector_labels, volume_claim_name};
use super::types::{BuildError, BuildInput};

/// The user and group the pusher runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// Pod-template annotation holding [`Desired::config_hash`](super::Desired::config_hash); a
/// change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "wxpush.io/config-hash";
/// Seconds added to the pusher's `shutdown.drainTimeout` for the pod's grace period, so the
/// pusher finishes its own drain (and flushes the store) before the kubelet's SIGKILL.
pub const GRACE_MARGIN_SECS: i64 = 10;

fn quantity(s: &str) -> Quantity {
    Quantity(s.into())
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), quantity("100m")),
            ("memory".into(), quantity("128Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), quantity("512Mi"))])),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn secret_volume(name: &str, secret: &str, items: Vec<(&str, &str)>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                items
                    .into_iter()
                    .map(|(key, path)| KeyToPath {
                        key: key.into(),
                        path: path.into(),
                        mode: None,
                    })
                    .collect(),
            ),
            // Owner read-only plus the pod's fsGroup, which the pusher runs in.
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The volumes (and their mounts) of the pusher's pod.
fn volumes(input: &BuildInput<'_>, name: &str) -> (Vec<Volume>, Vec<VolumeMount>) {
    let spec = &input.channel.spec;
    let creds = &spec.credentials.secret_ref;
    // Each credential is mounted under its own name (`appId`, `corpSecret`, ...).
    let mut cred_items: Vec<(&str, &str)> = creds
        .keys(spec.provider)
        .into_iter()
        .map(|(which, key)| (key, which.name()))
        .collect();
    if let Some(k) = &creds.event_token_key {
        cred_items.push((k.as_str(), mounts::EVENT_TOKEN));
    }
    if let Some(k) = &creds.encoding_aes_key_key {
        cred_items.push((k.as_str(), mounts::ENCODING_AES_KEY));
    }
    let auth = &spec.auth.secret_ref;
    let mut vols = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: child_name(name),
                items: Some(vec![KeyToPath {
                    key: CONFIG_FILE.into(),
                    path: CONFIG_FILE.into(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume("credentials", &creds.name, cred_items),
        secret_volume(
            "auth",
            &auth.name,
            vec![(auth.key.as_str(), mounts::AUTH_TOKEN)],
        ),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(quantity("64Mi")),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mnts = vec![
        mount("config", mounts::CONFIG, true),
        mount("credentials", mounts::CREDENTIALS, true),
        mount("auth", mounts::AUTH, true),
        mount("tmp", mounts::TMP, false),
    ];
    if let Some(redis) = &spec.queue.redis {
        vols.push(secret_volume(
            "redis",
            &redis.url.name,
            vec![(redis.url.key.as_str(), mounts::REDIS_URL)],
        ));
        mnts.push(mount("redis", mounts::REDIS, true));
    }
    if let Some(key) = &spec.callbacks.signing_key {
        vols.push(secret_volume(
            "callbacks",
            &key.name,
            vec![(key.key.as_str(), mounts::SIGNING_KEY)],
        ));
        mnts.push(mount("callbacks", mounts::CALLBACKS, true));
    }
    if let Some(embedded) = &spec.queue.embedded {
        vols.push(Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume_claim_name(name),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
        mnts.push(mount("data", &embedded.path, false));
    }
    (vols, mnts)
}

/// `NAME-pusher-data`, when the queue is embedded.
pub fn volume_claim(
    input: &BuildInput<'_>,
    name: &str,
    namespace: &str,
) -> Result<Option<PersistentVolumeClaim>, BuildError> {
    let Some(embedded) = &input.channel.spec.queue.embedded else {
        return Ok(None);
    };
    if embedded.volume_size.is_empty() {
        return Err(BuildError::Invalid {
            field: "queue.embedded.volumeSize",
            message: "must not be empty".into(),
        });
    }
    Ok(Some(PersistentVolumeClaim {
        metadata: meta(input, volume_claim_name(name), namespace, name),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    quantity(&embedded.volume_size),
                )])),
                limits: None,
            }),
            storage_class_name: embedded.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }))
}

/// `NAME-pusher`.
/// The pusher container: image, the `serve` command, ports, probes and a locked-down
/// security context.
fn pusher_container(input: &BuildInput<'_>, volume_mounts: Vec<VolumeMount>) -> Container {
    let pod = &input.channel.spec.pod;
    Container {
        name: "pusher".into(),
        image: Some(
            pod.image
                .clone()
                .unwrap_or_else(|| input.default_image.to_string()),
        ),
        image_pull_policy: Some(pod.image_pull_policy.clone()),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{}/{CONFIG_FILE}", mounts::CONFIG),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(HTTP_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(super::monitoring::METRICS_PORT_NAME.into()),
                container_port: i32::from(METRICS_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(pod.resources.clone().unwrap_or_else(default_resources)),
        startup_probe: Some(http_probe("/healthz", 2, 30)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

/// `Recreate` for the embedded store (one pod owns its volume), else a rolling update that
/// keeps every pod until its successor is up.
fn strategy(embedded: bool) -> DeploymentStrategy {
    if embedded {
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    }
}

/// The pod: its container, non-root security context, spread over nodes, placement and
/// volumes.
fn pod_spec(
    input: &BuildInput<'_>,
    name: &str,
    container: Container,
    volumes: Vec<Volume>,
) -> PodSpec {
    let spec = &input.channel.spec;
    let pod = &spec.pod;
    let drain = i64::try_from(spec.shutdown.drain_timeout.get().as_secs()).unwrap_or(i64::MAX);
    PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(drain.saturating_add(GRACE_MARGIN_SECS)),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                match_expressions: None,
            }),
            match_label_keys: Some(vec!["pod-template-hash".into()]),
            ..TopologySpreadConstraint::default()
        }]),
        node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
        tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

pub fn deployment(
    input: &BuildInput<'_>,
    name: &str,
    namespace: &str,
    config_hash: &str,
) -> Deployment {
    let spec = &input.channel.spec;
    let pod = &spec.pod;
    let embedded = spec.queue.embedded.is_some();
    let (volumes, volume_mounts) = volumes(input, name);
    let mut annotations = pod.annotations.clone();
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert("prometheus.io/port".into(), METRICS_PORT.to_string());
    annotations.insert("prometheus.io/path".into(), "/metrics".into());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    let container = pusher_container(input, volume_mounts);
    Deployment {
        metadata: meta(input, child_name(name), namespace, name),
        spec: Some(DeploymentSpec {
            // Left out when an autoscaler owns it, so the operator never fights the HPA.
            replicas: (!spec.autoscaling.enabled).then(|| spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                match_expressions: None,
            },
            strategy: Some(strategy(embedded)),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(input, name, container, volumes)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}
