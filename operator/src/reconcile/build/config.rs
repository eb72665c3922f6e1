//! The pusher's config file, written with the pusher's own [`PusherConfig`] type so that what
//! the operator writes always parses. Secret values are never in it: each is a file path where
//! the Deployment mounts the referenced Secret key.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use wxpush_api::config::{ApiLimits, Auth, Credentials, Events, PusherConfig};
use wxpush_api::policy::wecom::Credential;
use wxpush_api::policy::{Callbacks, LocalSecret, QueuePolicy, RedisQueue, disk};

use super::layout::{CONFIG_FILE, HTTP_PORT, METRICS_PORT, mounts};
use super::metadata::{child_name, meta};
use super::types::{BuildError, BuildInput};
use crate::crd::PushChannelSpec;

fn file(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("{dir}/{name}"))
}

fn file_secret(dir: &str, name: &str) -> LocalSecret {
    LocalSecret::File {
        file: file(dir, name),
    }
}

/// The pusher config for a channel named `channel` (pure; validated by the caller).
pub fn pusher_config(spec: &PushChannelSpec, channel: &str) -> PusherConfig {
    let creds = &spec.credentials.secret_ref;
    let queue = QueuePolicy {
        // The budget is the volume's unless set: the pusher cannot see the claim's size.
        embedded: spec.queue.embedded.clone().map(|mut e| {
            if e.max_bytes.is_none() {
                e.max_bytes = disk::quantity_bytes(&e.volume_size)
                    .map(|v| format!("{}Mi", disk::budget_of(v) >> 20));
            }
            e
        }),
        redis: spec.queue.redis.as_ref().map(|r| RedisQueue {
            url: file_secret(mounts::REDIS, mounts::REDIS_URL),
            key_prefix: r.key_prefix.clone(),
            consumer_group: r.consumer_group.clone(),
            claim_idle: r.claim_idle,
            max_messages: r.max_messages,
            retention: r.retention,
            min_replicas_acked: r.min_replicas_acked,
            cluster: r.cluster,
        }),
    };
    PusherConfig {
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, HTTP_PORT)),
        metrics_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT))),
        channel: channel.into(),
        provider: spec.provider,
        api_base_url: spec.api_base_url.clone(),
        credentials: credentials(spec),
        auth: Auth {
            token: None,
            token_file: Some(file(mounts::AUTH, mounts::AUTH_TOKEN)),
        },
        events: Events {
            token: creds
                .event_token_key
                .as_ref()
                .map(|_| file_secret(mounts::CREDENTIALS, mounts::EVENT_TOKEN)),
            mode: spec.events.mode,
            encoding_aes_key: creds
                .encoding_aes_key_key
                .as_ref()
                .map(|_| file_secret(mounts::CREDENTIALS, mounts::ENCODING_AES_KEY)),
            ..Events::default()
        },
        queue,
        timeouts: spec.timeouts.clone(),
        pool: spec.pool.clone(),
        retry: spec.retry.clone(),
        circuit_breaker: spec.circuit_breaker.clone(),
        rate_limit: spec.rate_limit.clone(),
        concurrency: spec.concurrency.clone(),
        token: spec.token.clone(),
        templates: spec.templates.clone(),
        callbacks: Callbacks {
            url: spec.callbacks.url.clone(),
            signing_key: spec
                .callbacks
                .signing_key
                .as_ref()
                .map(|_| file_secret(mounts::CALLBACKS, mounts::SIGNING_KEY)),
            timeouts: spec.callbacks.timeouts.clone(),
            retry: spec.callbacks.retry.clone(),
            allow: spec.callbacks.allow.clone(),
        },
        api: ApiLimits::default(),
        shutdown: spec.shutdown.clone(),
    }
}

/// The credential files of the channel's provider, each where the Deployment mounts it.
fn credentials(spec: &PushChannelSpec) -> Credentials {
    let mut c = Credentials::default();
    for (which, _) in spec.credentials.secret_ref.keys(spec.provider) {
        let path = Some(file(mounts::CREDENTIALS, which.name()));
        match which {
            Credential::AppId => c.app_id_file = path,
            Credential::AppSecret => c.app_secret_file = path,
            Credential::CorpId => c.corp_id_file = path,
            Credential::CorpSecret => c.corp_secret_file = path,
            Credential::AgentId => c.agent_id_file = path,
            Credential::WebhookKey => c.webhook_key_file = path,
        }
    }
    c
}

/// `NAME-pusher`: the config file under [`CONFIG_FILE`].
pub fn config_map(
    input: &BuildInput<'_>,
    name: &str,
    namespace: &str,
) -> Result<ConfigMap, BuildError> {
    let config = pusher_config(&input.channel.spec, name);
    let body = serde_yaml_ng::to_string(&config).map_err(BuildError::Serialize)?;
    let text = format!(
        "# Written by wxpush-operator from PushChannel {namespace}/{name}; edits are overwritten.\n\
         # Secret values are not here: each *File / {{file: ...}} is a mounted Secret key.\n{body}"
    );
    Ok(ConfigMap {
        metadata: meta(input, child_name(name), namespace, name),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), text)])),
        ..ConfigMap::default()
    })
}
