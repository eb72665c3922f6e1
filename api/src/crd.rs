//! The `PushChannel` custom resource (`wxpush.io/v1alpha1`).
//!
//! Its policy sections are the pusher's own [`crate::policy`] types, so the CRD and the
//! pusher's config file cannot drift apart. `crds/pushchannel.yaml` is generated from these types
//! by `crdgen` ([`crd_yaml`]); a test fails when the committed file differs.

use std::collections::BTreeMap;

use crate::config::{EventsMode, Shutdown};
use crate::policy::wecom::Credential;
use crate::policy::with_policy_fields;
use crate::policy::{Provider, SecretKeyRef};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default WeChat API endpoint.
pub const DEFAULT_API_BASE_URL: &str = "https://api.weixin.qq.com";

/// Default pusher image ([`crate::images::DEFAULT_PUSHER_IMAGE`]).
pub const DEFAULT_IMAGE: &str = crate::images::DEFAULT_PUSHER_IMAGE;

with_policy_fields! {
    /// One WeChat account's delivery channel: where its credentials are, how to reach WeChat, and
    /// the policies of the pusher that the operator runs for it.
    #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "wxpush.io",
        version = "v1alpha1",
        kind = "PushChannel",
        plural = "pushchannels",
        shortname = "pch",
        namespaced,
        status = "PushChannelStatus",
        printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )]
    #[serde(rename_all = "camelCase")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "!self.autoscaling.enabled || has(self.queue.redis)",
            "message": "autoscaling needs queue.redis: an embedded store belongs to one pod",
            "fieldPath": ".autoscaling.enabled",
        },
        {
            "rule": "!has(self.replicas) || self.replicas <= 1 || has(self.queue.redis)",
            "message": "more than one replica needs queue.redis: an embedded store belongs to one pod",
            "fieldPath": ".replicas",
        },
        {
            "rule": "!has(self.provider) || self.provider != 'wecomApp' || (has(self.credentials.secretRef.corpIdKey) && has(self.credentials.secretRef.corpSecretKey) && has(self.credentials.secretRef.agentIdKey))",
            "message": "provider wecomApp needs credentials.secretRef.corpIdKey, corpSecretKey and agentIdKey",
            "fieldPath": ".credentials.secretRef",
        },
        {
            "rule": "(has(self.provider) && self.provider == 'wecomApp') || !(has(self.credentials.secretRef.corpIdKey) || has(self.credentials.secretRef.corpSecretKey) || has(self.credentials.secretRef.agentIdKey))",
            "message": "corpIdKey, corpSecretKey and agentIdKey belong to provider wecomApp only",
            "fieldPath": ".credentials.secretRef",
        },
        {
            "rule": "!has(self.provider) || self.provider != 'wecomRobot' || has(self.credentials.secretRef.webhookKeyKey)",
            "message": "provider wecomRobot needs credentials.secretRef.webhookKeyKey",
            "fieldPath": ".credentials.secretRef",
        },
        {
            "rule": "(has(self.provider) && self.provider == 'wecomRobot') || !has(self.credentials.secretRef.webhookKeyKey)",
            "message": "webhookKeyKey belongs to provider wecomRobot only",
            "fieldPath": ".credentials.secretRef.webhookKeyKey",
        },
        {
            "rule": "!has(self.provider) || !(self.provider in ['wecomApp', 'wecomRobot']) || self.apiBaseUrl != 'https://api.weixin.qq.com'",
            "message": "a WeCom channel sends to WeCom's API: set apiBaseUrl (https://qyapi.weixin.qq.com)",
            "fieldPath": ".apiBaseUrl",
        },
        {
            "rule": "!has(self.provider) || self.provider != 'wecomRobot' || (!has(self.credentials.secretRef.eventTokenKey) && !has(self.credentials.secretRef.encodingAesKeyKey) && !has(self.eventsIngress))",
            "message": "a wecomRobot channel has no events: remove eventTokenKey, encodingAesKeyKey and eventsIngress",
            "fieldPath": ".credentials.secretRef",
        },
    ]))]
    pub struct PushChannelSpec (secret = SecretKeyRef) {
        /// Which product the channel sends through: `wechatOfficialAccount` (the default),
        /// `wechatMiniProgram`, `wecomApp` or `wecomRobot`.
        #[serde(default)]
        pub provider: Provider,
        /// Where the channel's credentials are kept: the appid and secret (WeChat), the corp id,
        /// application secret and AgentId (`wecomApp`), or the robot's webhook key (`wecomRobot`). Values are never copied into this
        /// resource, its status, or the pusher's ConfigMap.
        pub credentials: ChannelCredentials,
        /// Base URL of the WeChat API. Default `https://api.weixin.qq.com`; point it at a
        /// `wxpush-sandbox` for tests.
        #[serde(default = "default_api_base_url")]
        #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
        pub api_base_url: String,
        /// The bearer token producers must present to the pusher.
        pub auth: ChannelAuth,
    }
    after {
        /// WeChat's delivery events (server-URL callback). Their token and EncodingAESKey are
        /// keys of the credentials Secret.
        #[serde(default)]
        pub events: ChannelEvents,
        /// Replicas when autoscaling is off. Default `1`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 0, max = 1000))]
        pub replicas: Option<i32>,
        /// Horizontal autoscaling of the pusher.
        #[serde(default)]
        pub autoscaling: Autoscaling,
        /// Settings of the pusher's pods.
        #[serde(default)]
        pub pod: PodSettings,
        /// Graceful shutdown of the pusher (its `shutdown` config section). The operator sets the
        /// pods' `terminationGracePeriodSeconds` to `drainTimeout` plus a margin.
        #[serde(default)]
        pub shutdown: Shutdown,
        /// Exposes `/wechat/events` (WeChat's delivery reports) outside the cluster through an
        /// Ingress the operator creates, `NAME-pusher-events`, routing only that path. Unset: no
        /// Ingress (the pusher's Service stays cluster-internal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub events_ingress: Option<EventsIngress>,
    }
}

/// The Ingress in front of `/wechat/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsIngress {
    /// The host name WeChat calls: the host of the server URL set in the account's basic
    /// settings (`https://HOST/wechat/events`).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// The IngressClass. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// A `kubernetes.io/tls` Secret in the channel's namespace with the certificate for
    /// `host`, by name (never copied). Unset: plain HTTP on port 80, which WeChat also accepts;
    /// use safe mode (an EncodingAESKey) then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub tls_secret_name: Option<String>,
    /// Annotations on the Ingress (for the ingress controller, or a certificate manager).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_api_base_url() -> String {
    DEFAULT_API_BASE_URL.into()
}

/// The account's credentials, by reference to a Secret in the same namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelCredentials {
    /// The Secret and the names of its keys.
    pub secret_ref: CredentialsSecretRef,
}

/// A Secret holding the account's credentials, and which key holds what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key holding the appid. Default `appId`.
    #[serde(default = "default_app_id_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub app_id_key: String,
    /// Key holding the app secret. Default `appSecret`.
    #[serde(default = "default_app_secret_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub app_secret_key: String,
    /// Key holding the WeCom corp id (`wecomApp` only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub corp_id_key: Option<String>,
    /// Key holding the WeCom application's secret (`wecomApp` only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub corp_secret_key: Option<String>,
    /// Key holding the WeCom application's AgentId (`wecomApp` only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub agent_id_key: Option<String>,
    /// Key holding the WeCom group robot's webhook key (`wecomRobot` only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub webhook_key_key: Option<String>,
    /// Key holding the server-URL token for WeChat's delivery events; events are off without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub event_token_key: Option<String>,
    /// Key holding the EncodingAESKey, for events in safe mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub encoding_aes_key_key: Option<String>,
}

impl CredentialsSecretRef {
    /// The Secret key of each credential a `provider` channel needs (a WeCom key that is not
    /// set falls back to the credential's own name, `corpId`; the CRD's rules require them).
    pub fn keys(&self, provider: Provider) -> Vec<(Credential, &str)> {
        provider
            .credentials()
            .iter()
            .map(|&which| {
                let set = match which {
                    Credential::AppId => Some(&self.app_id_key),
                    Credential::AppSecret => Some(&self.app_secret_key),
                    Credential::CorpId => self.corp_id_key.as_ref(),
                    Credential::CorpSecret => self.corp_secret_key.as_ref(),
                    Credential::AgentId => self.agent_id_key.as_ref(),
                    Credential::WebhookKey => self.webhook_key_key.as_ref(),
                };
                (which, set.map_or(which.name(), String::as_str))
            })
            .collect()
    }
}

/// How WeChat's delivery events reach the pusher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelEvents {
    /// The message mode chosen at WeChat: `plain`, `compatible` or `safe`. Default: `safe` when
    /// `credentials.secretRef.encodingAesKeyKey` is set, else `plain`. `plain` with a key, or
    /// `safe`/`compatible` without one, is refused in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EventsMode>,
}

fn default_app_id_key() -> String {
    "appId".into()
}
fn default_app_secret_key() -> String {
    "appSecret".into()
}

/// How producers authenticate to the pusher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelAuth {
    /// The Secret key holding the bearer token.
    pub secret_ref: SecretKeyRef,
}

/// Which autoscaler the operator creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalingProvider {
    /// An `autoscaling/v2` HorizontalPodAutoscaler (needs a metrics adapter for the custom
    /// metrics). The default.
    #[default]
    Hpa,
    /// A KEDA `ScaledObject` (needs KEDA installed).
    Keda,
}

/// Horizontal autoscaling on the metrics the pusher exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "minReplicas must not exceed maxReplicas",
    "fieldPath": ".minReplicas",
}]))]
pub struct Autoscaling {
    /// Whether the operator creates an autoscaler (and stops writing `replicas`). Needs the
    /// redis queue. Default `false`.
    pub enabled: bool,
    /// `hpa` or `keda`. Default `hpa`.
    pub provider: AutoscalingProvider,
    /// Fewest replicas. Default `1`.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas. Default `10`.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target of `wxpush_inflight_requests` per pod. Default `32`.
    #[schemars(range(min = 1, max = 100000))]
    pub target_inflight_per_pod: i32,
    /// Target backlog (`wxpush_queue_messages{state="ready"}`) per pod. Default `1000`.
    #[schemars(range(min = 1))]
    pub target_backlog_per_pod: i64,
    /// CPU utilisation target, as the fallback metric. Default `80` (percent).
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Scale-up and scale-down behaviour, passed to the HPA as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
    /// Settings used when `provider` is `keda`.
    pub keda: KedaSettings,
}

/// The KEDA `ScaledObject`'s triggers read the pusher's metrics from Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct KedaSettings {
    /// URL of the Prometheus server that scrapes the pushers. Default
    /// `http://prometheus-operated.monitoring.svc:9090`.
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub prometheus_server_address: String,
    /// Name of a KEDA `TriggerAuthentication` in the channel's namespace that gives the
    /// `redis-streams` trigger the Redis `address` (`host:port`) and, when needed, `password`
    /// (and `tls`) from keys of your own Secret. When set, the ScaledObject gets a third signal:
    /// the lag of the pushers' consumer group on the channel's stream (`queue.redis`). The
    /// operator copies no Secret: KEDA reads it through this reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub redis_authentication_ref: Option<String>,
}

impl Default for KedaSettings {
    fn default() -> Self {
        Self {
            prometheus_server_address: DEFAULT_PROMETHEUS_ADDRESS.into(),
            redis_authentication_ref: None,
        }
    }
}

/// Default Prometheus server the KEDA triggers query.
pub const DEFAULT_PROMETHEUS_ADDRESS: &str = "http://prometheus-operated.monitoring.svc:9090";

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            enabled: false,
            provider: AutoscalingProvider::Hpa,
            min_replicas: 1,
            max_replicas: 10,
            target_inflight_per_pod: 32,
            target_backlog_per_pod: 1000,
            target_cpu_utilization: 80,
            behavior: None,
            keda: KedaSettings::default(),
        }
    }
}

/// Settings of the pusher's pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSettings {
    /// The pusher image. Default: the operator's `--pusher-image`
    /// (`ghcr.io/wxpush/wxpush-pusher:0.1.0` unless the operator was started with another).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`. Default `IfNotPresent`.
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: String,
    /// CPU and memory. Default: requests 100m / 128Mi, limit 512Mi memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must run on.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra annotations on the pods.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            image: None,
            image_pull_policy: "IfNotPresent".into(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// What the operator observed and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushChannelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `CredentialsValid`, `Reconciled`, `AutoscalingActive`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// In-cluster URL of the pusher's API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Replicas wanted (by `replicas` or the autoscaler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Hash of the pusher's config and of the referenced Secrets' versions that the running
    /// pods were rolled out with (the pod template's `wxpush.io/config-hash`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The server URL to enter in the account's basic settings, once `eventsIngress` is
    /// applied (`https://HOST/wechat/events`, `http://` without a TLS Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
}

/// The CRD as Kubernetes takes it: kube's generated definition with what the API server would
/// refuse or not understand taken out (schemars' number formats such as `uint32`, and
/// `additionalProperties: false`, which structural schemas forbid beside `properties`).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut value = serde_json::to_value(PushChannel::crd()).expect("a CRD serialises to JSON");
    clean_schema(&mut value);
    serde_json::from_value(value).expect("cleaning keeps the CRD's shape")
}

/// `crds/pushchannel.yaml`, exactly as committed.
pub fn crd_yaml() -> String {
    let body = serde_yaml_ng::to_string(&crd()).expect("a CRD serialises to YAML");
    format!("# Generated by `cargo run -p wxpush-operator --bin crdgen`; do not edit.\n{body}")
}

const KUBERNETES_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "password",
];

fn clean_schema(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(f)) = map.get("format")
                && !KUBERNETES_FORMATS.contains(&f.as_str())
            {
                map.remove("format");
            }
            if map.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(clean_schema);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clean_schema),
        _ => {}
    }
}
