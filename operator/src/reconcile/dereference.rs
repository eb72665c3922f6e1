//! *Dereference*: the Secrets a PushChannel points to. Only their existence, key names,
//! `resourceVersion` and a SHA-256 digest of each value are kept; values are dropped as soon as
//! a Secret is read and never reach a log, an error, an event or the status.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::error::Error;
use crate::crd::PushChannelSpec;

/// Each referenced Secret, by name, with the keys the pusher needs from it and why.
pub fn referenced_keys(spec: &PushChannelSpec) -> BTreeMap<String, BTreeSet<String>> {
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let creds = &spec.credentials.secret_ref;
    let mut add = |secret: &str, key: &str| {
        refs.entry(secret.to_string())
            .or_default()
            .insert(key.to_string());
    };
    for (_, key) in creds.keys(spec.provider) {
        add(&creds.name, key);
    }
    for key in [&creds.event_token_key, &creds.encoding_aes_key_key]
        .into_iter()
        .flatten()
    {
        add(&creds.name, key);
    }
    add(&spec.auth.secret_ref.name, &spec.auth.secret_ref.key);
    if let Some(r) = &spec.queue.redis {
        add(&r.url.name, &r.url.key);
    }
    if let Some(k) = &spec.callbacks.signing_key {
        add(&k.name, &k.key);
    }
    refs
}

/// What is known of one Secret, without its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// Its `resourceVersion` (part of the config hash).
    pub resource_version: String,
    /// The names of its keys.
    pub keys: BTreeSet<String>,
    /// SHA-256 (hex) of each key's value: tells a changed value without keeping it (the
    /// credentials check is keyed on it).
    pub digests: BTreeMap<String, String>,
}

impl SecretMeta {
    /// Keeps the name-level facts of a Secret and drops the values.
    pub fn of(secret: Secret) -> Self {
        use sha2::{Digest as _, Sha256};
        let mut digests: BTreeMap<String, String> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, hex::encode(Sha256::digest(&v.0))))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            digests
                .entry(k)
                .or_insert_with(|| hex::encode(Sha256::digest(v.as_bytes())));
        }
        Self {
            resource_version: secret.metadata.resource_version.unwrap_or_default(),
            keys: digests.keys().cloned().collect(),
            digests,
        }
    }
}

/// The referenced Secrets as found: `None` for a Secret that does not exist.
pub type Found = BTreeMap<String, Option<SecretMeta>>;

/// Reads each referenced Secret once.
pub async fn dereference(
    client: &Client,
    namespace: &str,
    spec: &PushChannelSpec,
) -> Result<Found, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut found = Found::new();
    for name in referenced_keys(spec).into_keys() {
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|source| Error::ReadSecret {
                name: name.clone(),
                source,
            })?;
        found.insert(name, secret.map(SecretMeta::of));
    }
    Ok(found)
}

/// Whether every referenced Secret and key exists: `Ok(versions)` (name → resourceVersion) or
/// the list of what is missing, in words a person can act on.
pub fn check(
    spec: &PushChannelSpec,
    namespace: &str,
    found: &Found,
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut missing = Vec::new();
    let mut versions = BTreeMap::new();
    for (name, keys) in referenced_keys(spec) {
        match found.get(&name).and_then(Option::as_ref) {
            None => missing.push(format!(
                "Secret {namespace}/{name} not found: create it with key(s) {}",
                join(&keys)
            )),
            Some(meta) => {
                let absent: BTreeSet<String> = keys.difference(&meta.keys).cloned().collect();
                if absent.is_empty() {
                    versions.insert(name, meta.resource_version.clone());
                } else {
                    missing.push(format!(
                        "Secret {namespace}/{name} has no key(s) {} (it has: {})",
                        join(&absent),
                        if meta.keys.is_empty() {
                            "none".into()
                        } else {
                            join(&meta.keys)
                        }
                    ));
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(versions)
    } else {
        Err(missing)
    }
}

fn join(keys: &BTreeSet<String>) -> String {
    keys.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PushChannelSpec {
        serde_yaml_ng::from_str(
            "
credentials: {secretRef: {name: wx, eventTokenKey: serverToken}}
auth: {secretRef: {name: wx, key: token}}
queue: {redis: {url: {name: redis, key: url}}}
",
        )
        .expect("spec")
    }

    fn meta(keys: &[&str]) -> Option<SecretMeta> {
        Some(SecretMeta {
            resource_version: "7".into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            digests: BTreeMap::new(),
        })
    }

    #[test]
    fn keys_are_grouped_by_secret() {
        let refs = referenced_keys(&spec());
        assert_eq!(refs.len(), 2);
        assert_eq!(
            refs["wx"].iter().map(String::as_str).collect::<Vec<_>>(),
            ["appId", "appSecret", "serverToken", "token"]
        );
    }

    #[test]
    fn missing_secrets_and_keys_are_named() {
        let found = Found::from([
            ("wx".to_string(), meta(&["appId", "token", "serverToken"])),
            ("redis".to_string(), None),
        ]);
        let missing = check(&spec(), "shop", &found).expect_err("missing");
        assert_eq!(
            missing,
            [
                "Secret shop/redis not found: create it with key(s) url",
                "Secret shop/wx has no key(s) appSecret (it has: appId, serverToken, token)"
            ]
        );
        let found = Found::from([
            (
                "wx".to_string(),
                meta(&["appId", "appSecret", "token", "serverToken"]),
            ),
            ("redis".to_string(), meta(&["url"])),
        ]);
        let versions = check(&spec(), "shop", &found).expect("complete");
        assert_eq!(versions.len(), 2);
    }

    #[test]
    fn values_are_dropped() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "wx", "resourceVersion": "12"},
            "data": {"appSecret": "aHVudGVyMg=="}
        }))
        .expect("secret");
        let meta = SecretMeta::of(secret);
        assert!(!format!("{meta:?}").contains("aHVudGVyMg"));
        assert!(!format!("{meta:?}").contains("hunter2"));
        assert_eq!(meta.resource_version, "12");
        assert_eq!(meta.digests["appSecret"].len(), 64);
    }
}
