//! Everything `serve` reads before it starts, in one function that `check-config` runs too:
//! every secret source the config names (auth token, credentials, events token and
//! EncodingAESKey, callbacks signing key, Redis URL), and what is built from them.
//!
//! `serve` stops at the first start-up error; [`resolve`] collects every problem so that
//! `check-config` can list them all in one run. Neither prints a secret value.

use std::sync::Arc;

use crate::api::AuthToken;
use crate::config::{Problem, PusherConfig, ReadSecret as _};
use crate::policy::RedisQueue;
use crate::policy::wecom::Credential;
use crate::policy::{LocalSecret, QueueKind};
use crate::secrets::{WatchedSecret, describe};
use crate::store::redis::{RedisOptions, consumer_name};
use wxcrypto::Cipher;

/// The secrets of a config, read and checked.
pub struct Resolved {
    /// The producers' bearer token.
    pub auth: AuthToken,
    /// The events token and cipher, when `events.token` is set.
    pub events: Option<EventSecrets>,
    /// The callbacks signing key, when `callbacks.signingKey` is set.
    pub signing_key: Option<Arc<WatchedSecret>>,
    /// The Redis store's settings (its URL read and checked), for the Redis queue.
    pub redis: Option<RedisOptions>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Redis URL may hold a password: only whether there is one.
        f.debug_struct("Resolved")
            .field("auth", &self.auth)
            .field("events", &self.events)
            .field("signing_key", &self.signing_key)
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

/// The `/wechat/events` secrets.
pub struct EventSecrets {
    /// The server-URL token.
    pub token: String,
    /// The cipher in `safe` and `compatible` mode; `None` in `plain` mode.
    pub cipher: Option<Cipher>,
}

impl std::fmt::Debug for EventSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSecrets")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// Every problem found, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
pub struct Problems(pub Vec<Problem>);

/// Reads and checks every secret of `config`, collecting every problem.
pub fn resolve(config: &PusherConfig) -> Result<Resolved, Problems> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, message: String| {
        problems.push(Problem {
            field: field.into(),
            message,
        });
    };
    let mut read = |field: &str, secret: Option<LocalSecret>, required: &str| match secret {
        None => {
            if !required.is_empty() {
                bad(field, required.into());
            }
            None
        }
        Some(s) => match s.read() {
            Ok(v) => Some((s, v)),
            Err(e) => {
                bad(field, describe(&e));
                None
            }
        },
    };
    // The provider's credentials; the appid (WeChat) or the corp id (WeCom) is also the
    // receive id of the event envelopes.
    let mut app_id = None;
    for &which in config.provider.credentials() {
        let name = which.name();
        let got = read(
            &format!("credentials.{name}"),
            config.credentials.get(which),
            &format!("set exactly one of {name} and {name}File"),
        );
        if matches!(which, Credential::AppId | Credential::CorpId) {
            app_id = got;
        }
    }
    let auth = read(
        "auth.token",
        config.auth.token(),
        "set exactly one of token and tokenFile",
    );
    let events_token = read("events.token", config.events.token.clone(), "");
    let aes_key = read(
        "events.encodingAesKey",
        config.events.encoding_aes_key.clone(),
        "",
    );
    let signing = read(
        "callbacks.signingKey",
        config.callbacks.signing_key.clone(),
        "",
    );
    let redis_url = match config.queue.kind() {
        Some(QueueKind::Redis(r)) => read("queue.redis.url", Some(r.url.clone()), ""),
        _ => None,
    };

    let mode = config.events.effective_mode();
    let cipher = match (&aes_key, mode.sealed()) {
        (Some(_), false) => {
            bad("events.mode", "plain mode takes no encodingAesKey".into());
            None
        }
        (None, true) if config.events.encoding_aes_key.is_none() => {
            bad(
                "events.encodingAesKey",
                format!("{} mode needs the EncodingAESKey", mode.as_str()),
            );
            None
        }
        (Some((_, key)), true) => match &app_id {
            Some((_, appid)) => match Cipher::new(key, appid) {
                Ok(c) => Some(c),
                Err(e) => {
                    bad("events.encodingAesKey", e.to_string());
                    None
                }
            },
            // Reported with credentials.appId (or corpId).
            None => None,
        },
        _ => None,
    };
    let redis = match (config.queue.kind(), redis_url) {
        (Some(QueueKind::Redis(r)), Some((_, url))) => match redis_options(config, r, &url) {
            Ok(o) => Some(o),
            Err(e) => {
                bad("queue.redis.url", e);
                None
            }
        },
        _ => None,
    };
    let auth = auth.and_then(|(source, _)| match AuthToken::new(source) {
        Ok(a) => Some(a),
        Err(e) => {
            bad("auth.token", describe(&e));
            None
        }
    });
    let signing_key =
        signing.and_then(
            |(source, _)| match WatchedSecret::new("callbacks.signingKey", source) {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    bad("callbacks.signingKey", describe(&e));
                    None
                }
            },
        );
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let Some(auth) = auth else {
        return Err(Problems(vec![Problem {
            field: "auth.token".into(),
            message: "set exactly one of token and tokenFile".into(),
        }]));
    };
    let events = events_token.map(|(_, token)| EventSecrets {
        token,
        cipher: if mode.sealed() { cipher } else { None },
    });
    Ok(Resolved {
        auth,
        events,
        signing_key,
        redis,
    })
}

/// The Redis store's settings from the config, with the URL already read from its secret.
/// Refuses a URL that cannot be parsed as written (see [`crate::store::redis::check_url`]).
pub fn redis_options(
    config: &PusherConfig,
    r: &RedisQueue<LocalSecret>,
    url: &str,
) -> Result<RedisOptions, String> {
    let url = url.trim();
    for node in crate::store::redis::nodes(url) {
        crate::store::redis::check_url(&node)?;
    }
    Ok(RedisOptions {
        url: url.to_string(),
        cluster: r.cluster,
        key_prefix: r.key_prefix.clone(),
        channel: config.channel.clone(),
        consumer_group: r.consumer_group.clone(),
        consumer: consumer_name(),
        claim_idle: r.claim_idle.get(),
        max_messages: r.max_messages,
        retention: r.retention.get(),
        default_callback: config.callbacks.url.is_some(),
        min_replicas_acked: r.min_replicas_acked,
    })
}
