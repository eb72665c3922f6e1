//! Pure: from a pod, the ConfigMaps and Secrets it mounts, and two free ports, to what to write
//! and what to run (a [`ProcessSpec`]). No I/O here.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, Volume};
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;

/// The last path segment of the pusher's image repository.
pub const PUSHER_IMAGE_NAME: &str = "wxpush-pusher";
/// Mode of a file from a ConfigMap or Secret volume that names none.
const DEFAULT_MODE: i32 = 0o644;

/// Why a pod cannot be run (yet).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No container of the pod runs the pusher image.
    #[error("no container runs the {PUSHER_IMAGE_NAME} image")]
    NotPusher,
    /// The pod has no name or namespace.
    #[error("the pod has no {0}")]
    Missing(&'static str),
    /// A mount names a volume the pod does not have.
    #[error("mount {0} names no volume of the pod")]
    NoVolume(String),
    /// A volume of a kind the runner does not materialise.
    #[error("volume {0} is of a kind the pod runner does not support")]
    UnsupportedVolume(String),
    /// A referenced ConfigMap or Secret does not exist (yet).
    #[error("{kind} {name} does not exist")]
    NotFound {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An item names a key the object lacks.
    #[error("{kind} {name} has no key {key}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// The container has no `--config FILE` argument.
    #[error("the container's args have no --config FILE")]
    NoConfigArg,
    /// `--config` names a file no mount provides.
    #[error("--config {0} is not a file of a mounted volume")]
    ConfigNotMounted(String),
    /// The config file is not YAML (the pusher would refuse it too).
    #[error("the config file is not YAML")]
    BadConfig(#[source] serde_yaml_ng::Error),
}

/// The two ports the pusher listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The API (`listen`).
    pub http: u16,
    /// `/metrics` (`metricsListen`).
    pub metrics: u16,
}

/// One file to write before starting the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Where, on the host.
    pub path: PathBuf,
    /// Its bytes.
    pub contents: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// Everything needed to run one pod's pusher on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// Folders to create (mount points, `emptyDir`s, claims).
    pub dirs: Vec<PathBuf>,
    /// Files to write (volumes' keys, the rewritten config).
    pub files: Vec<FileSpec>,
    /// Arguments of the pusher binary.
    pub args: Vec<String>,
    /// Environment: the container's literal `env` values and `HOSTNAME`.
    pub env: Vec<(String, String)>,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_listen: SocketAddr,
    /// The Prometheus `file_sd` document for this pod.
    pub sd_target: Json,
    /// The pod's termination grace period in seconds (default 30, as in Kubernetes).
    pub grace_period_secs: u64,
}

/// The container that runs the pusher image, if any.
pub fn pusher_container(pod: &Pod) -> Option<&Container> {
    pod.spec.as_ref()?.containers.iter().find(|c| {
        c.image
            .as_deref()
            .is_some_and(|i| image_name(i) == PUSHER_IMAGE_NAME)
    })
}

/// The repository's last path segment of an image reference (`ghcr.io/x/y:1` → `y`).
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// Whether the pod is Ready and not being deleted: the only pods that get a process.
pub fn is_running_pod(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The ConfigMaps and Secrets the pusher container's mounts read, by name.
pub fn referenced_objects(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    let Some(container) = pusher_container(pod) else {
        return (cms, secrets);
    };
    for m in container.volume_mounts.iter().flatten() {
        let Some(v) = volume(pod, &m.name) else {
            continue;
        };
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(name);
        }
    }
    (cms, secrets)
}

fn volume<'a>(pod: &'a Pod, name: &str) -> Option<&'a Volume> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == name)
}

/// The files of a ConfigMap or Secret volume: its `items`, or every key.
fn volume_files(
    kind: &'static str,
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    dir: &Path,
) -> Result<Vec<FileSpec>, SpecError> {
    let mode =
        |m: Option<i32>| u32::try_from(m.or(default_mode).unwrap_or(DEFAULT_MODE)).unwrap_or(0o644);
    match items {
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => files.push(FileSpec {
                        path: dir.join(&item.path),
                        contents: bytes.clone(),
                        mode: mode(item.mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(SpecError::MissingKey {
                            kind,
                            name: name.into(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
            Ok(files)
        }
        None => Ok(data
            .iter()
            .map(|(k, v)| FileSpec {
                path: dir.join(k),
                contents: v.clone(),
                mode: mode(None),
            })
            .collect()),
    }
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    data
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

/// Moves `s` from under a mount path to where that mount is on the host (longest mount first).
fn rewrite_path(s: &str, mounts: &[(String, PathBuf)]) -> Option<String> {
    mounts.iter().find_map(|(mount, host)| {
        let rest = s.strip_prefix(mount.as_str())?;
        if rest.is_empty() {
            Some(host.to_string_lossy().into_owned())
        } else {
            let rest = rest.strip_prefix('/')?;
            Some(host.join(rest).to_string_lossy().into_owned())
        }
    })
}

fn rewrite_strings(v: &mut Yaml, mounts: &[(String, PathBuf)]) {
    match v {
        Yaml::String(s) => {
            if let Some(new) = rewrite_path(s, mounts) {
                *s = new;
            }
        }
        Yaml::Sequence(seq) => seq.iter_mut().for_each(|v| rewrite_strings(v, mounts)),
        Yaml::Mapping(map) => map.iter_mut().for_each(|(_, v)| rewrite_strings(v, mounts)),
        Yaml::Tagged(t) => rewrite_strings(&mut t.value, mounts),
        _ => {}
    }
}

/// The config file rewritten to run on this host (see the module doc of `pod_runner`).
fn rewrite_config(
    text: &[u8],
    mounts: &[(String, PathBuf)],
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    pod_dir: &Path,
) -> Result<Vec<u8>, SpecError> {
    let mut config: Yaml = serde_yaml_ng::from_slice(text).map_err(SpecError::BadConfig)?;
    rewrite_strings(&mut config, mounts);
    if let Yaml::Mapping(map) = &mut config {
        map.insert("listen".into(), listen.to_string().into());
        map.insert("metricsListen".into(), metrics_listen.to_string().into());
        if let Some(Yaml::Mapping(embedded)) =
            map.get_mut("queue").and_then(|q| q.get_mut("embedded"))
        {
            let on_host = embedded
                .get("path")
                .and_then(Yaml::as_str)
                .is_some_and(|p| mounts.iter().any(|(_, h)| Path::new(p).starts_with(h)));
            if !on_host {
                embedded.insert(
                    "path".into(),
                    pod_dir.join("store").to_string_lossy().into_owned().into(),
                );
            }
        }
    }
    serde_yaml_ng::to_string(&config)
        .map(String::into_bytes)
        .map_err(SpecError::BadConfig)
}

/// The `file_sd` document: one target labelled as the operator's PodMonitor relabels its pods.
pub fn sd_target(pod: &Pod, metrics_listen: SocketAddr) -> Json {
    let mut labels = serde_json::Map::new();
    let relabelings = wxpush_operator::reconcile::build::relabelings();
    for r in relabelings.as_array().into_iter().flatten() {
        let (Some(source), Some(target)) =
            (r["sourceLabels"][0].as_str(), r["targetLabel"].as_str())
        else {
            continue;
        };
        let value = match source {
            "__meta_kubernetes_namespace" => pod.metadata.namespace.clone(),
            "__meta_kubernetes_pod_name" => pod.metadata.name.clone(),
            other => other
                .strip_prefix("__meta_kubernetes_pod_label_")
                .and_then(|label| {
                    pod.metadata
                        .labels
                        .iter()
                        .flatten()
                        .find_map(|(k, v)| (sanitize_label(k) == label).then(|| v.clone()))
                }),
        };
        if let Some(value) = value {
            labels.insert(target.into(), Json::String(value));
        }
    }
    json!([{"targets": [metrics_listen.to_string()], "labels": labels}])
}

/// A Kubernetes label name as Prometheus' service discovery spells it in `__meta_*` labels.
fn sanitize_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// What to write and run for `pod`, whose folder is `state/<namespace>/<pod>`.
///
/// `config_maps` and `secrets` hold the objects named by [`referenced_objects`].
pub fn process_spec(
    pod: &Pod,
    config_maps: &BTreeMap<String, ConfigMap>,
    secrets: &BTreeMap<String, Secret>,
    state: &Path,
    ports: Ports,
) -> Result<ProcessSpec, SpecError> {
    let container = pusher_container(pod).ok_or(SpecError::NotPusher)?;
    let name = pod
        .metadata
        .name
        .as_deref()
        .ok_or(SpecError::Missing("name"))?;
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .ok_or(SpecError::Missing("namespace"))?;
    let pod_dir = state.join(namespace).join(name);
    let mut dirs = vec![pod_dir.clone()];
    let mut files = Vec::new();
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let v = volume(pod, &m.name).ok_or_else(|| SpecError::NoVolume(m.name.clone()))?;
        let host = if let Some(claim) = &v.persistent_volume_claim {
            state
                .join(namespace)
                .join("volumes")
                .join(&claim.claim_name)
        } else {
            pod_dir.join(m.mount_path.trim_start_matches('/'))
        };
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(SpecError::UnsupportedVolume(m.name.clone()));
        }
        if let Some(cm) = &v.config_map {
            let optional = cm.optional.unwrap_or(false);
            match config_maps.get(&cm.name) {
                Some(obj) => files.extend(volume_files(
                    "ConfigMap",
                    &cm.name,
                    &config_map_data(obj),
                    cm.items.as_ref(),
                    cm.default_mode,
                    optional,
                    &host,
                )?),
                None if optional => {}
                None => {
                    return Err(SpecError::NotFound {
                        kind: "ConfigMap",
                        name: cm.name.clone(),
                    });
                }
            }
        } else if let Some(s) = &v.secret {
            let secret_name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            match secrets.get(&secret_name) {
                Some(obj) => files.extend(volume_files(
                    "Secret",
                    &secret_name,
                    &secret_data(obj),
                    s.items.as_ref(),
                    s.default_mode,
                    optional,
                    &host,
                )?),
                None if optional => {}
                None => {
                    return Err(SpecError::NotFound {
                        kind: "Secret",
                        name: secret_name,
                    });
                }
            }
        } else if v.empty_dir.is_none() && v.persistent_volume_claim.is_none() {
            return Err(SpecError::UnsupportedVolume(v.name.clone()));
        }
        dirs.push(host.clone());
        mounts.push((m.mount_path.trim_end_matches('/').to_string(), host));
    }
    // The longest mount path first, so a nested mount wins over its parent.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));

    let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (listen, metrics_listen) = (loopback(ports.http), loopback(ports.metrics));
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| rewrite_path(a, &mounts).unwrap_or_else(|| a.clone()))
        .collect();
    let config_path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_string))
        })
        .ok_or(SpecError::NoConfigArg)?;
    let config = files
        .iter_mut()
        .find(|f| f.path == Path::new(&config_path))
        .ok_or_else(|| SpecError::ConfigNotMounted(config_path.clone()))?;
    config.contents = rewrite_config(&config.contents, &mounts, listen, metrics_listen, &pod_dir)?;

    let mut env: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect();
    env.push(("HOSTNAME".into(), name.into()));
    let grace_period_secs = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .and_then(|g| u64::try_from(g).ok())
        .unwrap_or(30);
    Ok(ProcessSpec {
        dirs,
        files,
        args,
        env,
        listen,
        metrics_listen,
        sd_target: sd_target(pod, metrics_listen),
        grace_period_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the real Deployment controller makes it from the operator's Deployment.
    fn pod_and_objects() -> (Pod, BTreeMap<String, ConfigMap>, BTreeMap<String, Secret>) {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: payment-notify-pusher-abc-xyz
  namespace: shop
  labels:
    app.kubernetes.io/name: wxpush-pusher
    wxpush.io/channel: payment-notify
spec:
  terminationGracePeriodSeconds: 30
  containers:
    - name: pusher
      image: ghcr.io/wxpush/wxpush-pusher:0.1.0
      args: [serve, --config, /etc/wxpush/config/pusher.yaml]
      volumeMounts:
        - {name: config, mountPath: /etc/wxpush/config, readOnly: true}
        - {name: credentials, mountPath: /etc/wxpush/credentials, readOnly: true}
        - {name: redis, mountPath: /etc/wxpush/redis, readOnly: true}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - name: config
      configMap:
        name: payment-notify-pusher
        items: [{key: pusher.yaml, path: pusher.yaml}]
    - name: credentials
      secret:
        secretName: payment-notify-wechat
        defaultMode: 288
        items:
          - {key: appId, path: appId}
          - {key: appSecret, path: appSecret}
    - name: redis
      secret:
        secretName: payment-notify-redis
        items: [{key: url, path: url}]
    - name: tmp
      emptyDir: {}
status:
  conditions: [{type: Ready, status: "True"}]
"#;
        let pod: Pod = serde_yaml_ng::from_str(yaml).expect("a pod");
        let config = "listen: 0.0.0.0:8080\nmetricsListen: 0.0.0.0:9090\n\
            apiBaseUrl: http://127.0.0.1:9000\n\
            credentials:\n  appIdFile: /etc/wxpush/credentials/appId\n  \
            appSecretFile: /etc/wxpush/credentials/appSecret\n\
            auth: {token: t}\n\
            queue:\n  redis:\n    url: {file: /etc/wxpush/redis/url}\n";
        let cm = ConfigMap {
            data: Some(BTreeMap::from([("pusher.yaml".into(), config.into())])),
            ..ConfigMap::default()
        };
        let secret = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        };
        let secrets = BTreeMap::from([
            (
                "payment-notify-wechat".into(),
                secret(&[("appId", "wx1"), ("appSecret", "s3"), ("unused", "x")]),
            ),
            (
                "payment-notify-redis".into(),
                secret(&[("url", "redis://127.0.0.1:6379")]),
            ),
        ]);
        (
            pod,
            BTreeMap::from([("payment-notify-pusher".into(), cm)]),
            secrets,
        )
    }

    const PORTS: Ports = Ports {
        http: 18080,
        metrics: 19090,
    };

    fn file<'a>(spec: &'a ProcessSpec, path: &str) -> &'a FileSpec {
        spec.files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("no file {path} in {:?}", spec.files))
    }

    #[test]
    fn mounts_are_materialised_and_only_host_specific_fields_rewritten() {
        let (pod, cms, secrets) = pod_and_objects();
        let spec = process_spec(&pod, &cms, &secrets, Path::new("/s"), PORTS).expect("a spec");
        let dir = "/s/shop/payment-notify-pusher-abc-xyz";
        assert_eq!(
            spec.args,
            [
                "serve",
                "--config",
                &format!("{dir}/etc/wxpush/config/pusher.yaml")
            ]
        );
        let app_id = file(&spec, &format!("{dir}/etc/wxpush/credentials/appId"));
        assert_eq!(
            (app_id.contents.as_slice(), app_id.mode),
            (&b"wx1"[..], 0o440)
        );
        assert_eq!(
            file(&spec, &format!("{dir}/etc/wxpush/redis/url")).contents,
            b"redis://127.0.0.1:6379"
        );
        // Only the listed items: the Secret's other key is not written.
        assert!(!spec.files.iter().any(|f| f.path.ends_with("unused")));
        assert!(spec.dirs.contains(&PathBuf::from(format!("{dir}/tmp"))));

        let config: Yaml = serde_yaml_ng::from_slice(
            &file(&spec, &format!("{dir}/etc/wxpush/config/pusher.yaml")).contents,
        )
        .expect("YAML");
        assert_eq!(config["listen"].as_str(), Some("127.0.0.1:18080"));
        assert_eq!(config["metricsListen"].as_str(), Some("127.0.0.1:19090"));
        assert_eq!(
            config["credentials"]["appIdFile"].as_str(),
            Some(format!("{dir}/etc/wxpush/credentials/appId").as_str())
        );
        assert_eq!(
            config["queue"]["redis"]["url"]["file"].as_str(),
            Some(format!("{dir}/etc/wxpush/redis/url").as_str())
        );
        // Not host-specific: left as the operator wrote it.
        assert_eq!(config["apiBaseUrl"].as_str(), Some("http://127.0.0.1:9000"));
        assert_eq!(config["auth"]["token"].as_str(), Some("t"));
        assert!(
            spec.env
                .contains(&("HOSTNAME".into(), "payment-notify-pusher-abc-xyz".into()))
        );
        assert_eq!(spec.grace_period_secs, 30);
    }

    #[test]
    fn the_sd_target_carries_the_pod_monitors_labels() {
        let (pod, cms, secrets) = pod_and_objects();
        let spec = process_spec(&pod, &cms, &secrets, Path::new("/s"), PORTS).expect("a spec");
        assert_eq!(
            spec.sd_target,
            json!([{"targets": ["127.0.0.1:19090"], "labels": {
                "namespace": "shop",
                "pod": "payment-notify-pusher-abc-xyz",
                "channel": "payment-notify",
            }}])
        );
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        let (pod, cms, mut secrets) = pod_and_objects();
        secrets.remove("payment-notify-redis");
        let err = process_spec(&pod, &cms, &secrets, Path::new("/s"), PORTS)
            .expect_err("no Redis Secret");
        assert_eq!(
            err.to_string(),
            "Secret payment-notify-redis does not exist"
        );

        let (pod, cms, mut secrets) = pod_and_objects();
        secrets.insert("payment-notify-redis".into(), Secret::default());
        let err =
            process_spec(&pod, &cms, &secrets, Path::new("/s"), PORTS).expect_err("no url key");
        assert_eq!(
            err.to_string(),
            "Secret payment-notify-redis has no key url"
        );
    }

    #[test]
    fn an_embedded_store_outside_a_volume_moves_into_the_pod_folder() {
        let (pod, mut cms, secrets) = pod_and_objects();
        let config = "listen: 0.0.0.0:8080\napiBaseUrl: http://x\ncredentials: {}\nauth: {}\n\
            queue:\n  embedded: {path: /var/lib/wxpush}\n";
        cms.insert(
            "payment-notify-pusher".into(),
            ConfigMap {
                data: Some(BTreeMap::from([("pusher.yaml".into(), config.into())])),
                ..ConfigMap::default()
            },
        );
        let spec = process_spec(&pod, &cms, &secrets, Path::new("/s"), PORTS).expect("a spec");
        let dir = "/s/shop/payment-notify-pusher-abc-xyz";
        let config: Yaml = serde_yaml_ng::from_slice(
            &file(&spec, &format!("{dir}/etc/wxpush/config/pusher.yaml")).contents,
        )
        .expect("YAML");
        assert_eq!(
            config["queue"]["embedded"]["path"].as_str(),
            Some(format!("{dir}/store").as_str())
        );
    }

    #[test]
    fn only_ready_pusher_pods_run() {
        let (mut pod, _, _) = pod_and_objects();
        assert!(pusher_container(&pod).is_some() && is_running_pod(&pod));
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert!(!is_running_pod(&pod));
        let (mut pod, _, _) = pod_and_objects();
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].image = Some("redis:7".into());
        }
        assert!(pusher_container(&pod).is_none());
        assert_eq!(
            image_name("r.io/a/wxpush-pusher@sha256:ab"),
            "wxpush-pusher"
        );
        assert_eq!(
            image_name("localhost:5000/wxpush-pusher:dev"),
            "wxpush-pusher"
        );
    }
}
