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

/// The problems found so far, each naming its field.
#[derive(Default)]
struct Findings(Vec<Problem>);

impl Findings {
    fn bad(&mut self, field: &str, message: String) {
        self.0.push(Problem {
            field: field.into(),
            message,
        });
    }

    /// Reads `secret` with its source; a missing one is a problem only when `required` says
    /// what to set.
    fn read(
        &mut self,
        field: &str,
        secret: Option<LocalSecret>,
        required: &str,
    ) -> Option<(LocalSecret, String)> {
        match secret {
            None => {
                if !required.is_empty() {
                    self.bad(field, required.into());
                }
                None
            }
            Some(s) => match s.read() {
                Ok(v) => Some((s, v)),
                Err(e) => {
                    self.bad(field, describe(&e));
                    None
                }
            },
        }
    }

    /// `Some(value)`, or `None` with `field`'s problem noted.
    fn ok<T, E>(
        &mut self,
        field: &str,
        result: Result<T, E>,
        say: impl Fn(E) -> String,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.bad(field, say(e));
                None
            }
        }
    }
}

/// The provider's credentials, read to check them. Returns the appid (WeChat) or the corp id
/// (WeCom): also the receive id of the event envelopes.
fn read_credentials(config: &PusherConfig, found: &mut Findings) -> Option<(LocalSecret, String)> {
    let mut app_id = None;
    for &which in config.provider.credentials() {
        let name = which.name();
        let got = found.read(
            &format!("credentials.{name}"),
            config.credentials.get(which),
            &format!("set exactly one of {name} and {name}File"),
        );
        if matches!(which, Credential::AppId | Credential::CorpId) {
            app_id = got;
        }
    }
    app_id
}

/// The events' cipher, when the mode seals messages and the EncodingAESKey and the receive
/// id are both at hand.
fn event_cipher(
    config: &PusherConfig,
    aes_key: Option<&(LocalSecret, String)>,
    app_id: Option<&(LocalSecret, String)>,
    found: &mut Findings,
) -> Option<Cipher> {
    let mode = config.events.effective_mode();
    match (aes_key, mode.sealed()) {
        (Some(_), false) => {
            found.bad("events.mode", "plain mode takes no encodingAesKey".into());
            None
        }
        (None, true) if config.events.encoding_aes_key.is_none() => {
            found.bad(
                "events.encodingAesKey",
                format!("{} mode needs the EncodingAESKey", mode.as_str()),
            );
            None
        }
        (Some((_, key)), true) => match app_id {
            Some((_, appid)) => found.ok("events.encodingAesKey", Cipher::new(key, appid), |e| {
                e.to_string()
            }),
            // Reported with credentials.appId (or corpId).
            None => None,
        },
        _ => None,
    }
}

/// Reads and checks every secret of `config`, collecting every problem.
pub fn resolve(config: &PusherConfig) -> Result<Resolved, Problems> {
    let mut found = Findings::default();
    let app_id = read_credentials(config, &mut found);
    let auth = found.read(
        "auth.token",
        config.auth.token(),
        "set exactly one of token and tokenFile",
    );
    let events_token = found.read("events.token", config.events.token.clone(), "");
    let aes_key = found.read(
        "events.encodingAesKey",
        config.events.encoding_aes_key.clone(),
        "",
    );
    let signing = found.read(
        "callbacks.signingKey",
        config.callbacks.signing_key.clone(),
        "",
    );
    let redis_url = match config.queue.kind() {
        Some(QueueKind::Redis(r)) => found.read("queue.redis.url", Some(r.url.clone()), ""),
        _ => None,
    };
    let cipher = event_cipher(config, aes_key.as_ref(), app_id.as_ref(), &mut found);
    let redis = match (config.queue.kind(), redis_url) {
        (Some(QueueKind::Redis(r)), Some((_, url))) => {
            found.ok("queue.redis.url", redis_options(config, r, &url), |e| e)
        }
        _ => None,
    };
    let auth = auth
        .and_then(|(source, _)| found.ok("auth.token", AuthToken::new(source), |e| describe(&e)));
    let signing_key = signing.and_then(|(source, _)| {
        found.ok(
            "callbacks.signingKey",
            WatchedSecret::new("callbacks.signingKey", source).map(Arc::new),
            |e| describe(&e),
        )
    });
    if !found.0.is_empty() {
        return Err(Problems(found.0));
    }
    let Some(auth) = auth else {
        return Err(Problems(vec![Problem {
            field: "auth.token".into(),
            message: "set exactly one of token and tokenFile".into(),
        }]));
    };
    let events = events_token.map(|(_, token)| EventSecrets {
        token,
        cipher: if config.events.effective_mode().sealed() {
            cipher
        } else {
            None
        },
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
        event_indexes: config.events.token.is_some(),
    })
}
