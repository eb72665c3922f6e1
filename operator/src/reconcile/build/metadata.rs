//! Names, labels and metadata every child shares.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::types::BuildInput;

/// The label every child carries, and the one the operator's watches select on.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "wxpush-operator");

/// Name of every child but the volume claim.
pub fn child_name(channel: &str) -> String {
    format!("{channel}-pusher")
}

/// Name of the embedded store's volume claim.
pub fn volume_claim_name(channel: &str) -> String {
    format!("{channel}-pusher-data")
}

/// Labels that select the pusher's pods.
pub fn selector_labels(channel: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "wxpush-pusher".into()),
        ("app.kubernetes.io/instance".into(), channel.into()),
    ])
}

/// Labels on every child (and on the pods).
pub fn labels(channel: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(channel);
    l.insert("app.kubernetes.io/component".into(), "pusher".into());
    l.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    l.insert("wxpush.io/channel".into(), channel.into());
    l
}

/// The metadata every child shares.
pub(super) fn meta(
    input: &BuildInput<'_>,
    name: String,
    namespace: &str,
    channel: &str,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.into()),
        labels: Some(labels(channel)),
        owner_references: Some(vec![input.owner.clone()]),
        ..ObjectMeta::default()
    }
}
