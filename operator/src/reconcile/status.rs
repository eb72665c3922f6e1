//! *Status*: the conditions a person reads (pure), the Events on their transitions (pure), and
//! the one write of the status subresource (server-side apply).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};
use serde_json::json;

use super::apply::{Applied, FIELD_MANAGER};
use super::error::Error;
use super::validate::Problem;
use crate::crd::{PushChannel, PushChannelStatus};

/// Condition types.
pub mod types {
    /// The pusher's pods are up and serving at the endpoint.
    pub const READY: &str = "Ready";
    /// Every referenced Secret and key exists and, with the credentials check on, WeChat
    /// issued an access_token for them.
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    /// The children match the spec.
    pub const RECONCILED: &str = "Reconciled";
    /// An autoscaler drives the replicas and can read its metrics.
    pub const AUTOSCALING_ACTIVE: &str = "AutoscalingActive";
}

/// Reason of `AutoscalingActive=False` when autoscaling is off.
pub const REASON_DISABLED: &str = "Disabled";

/// How far this reconcile got.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The spec is invalid; nothing was applied.
    Invalid(Vec<Problem>),
    /// A referenced Secret or key is missing; nothing was applied.
    WaitingForSecrets,
    /// Everything was applied.
    Applied(Box<Applied>),
    /// Applying failed (transient or refused); the message is the API server's.
    ApplyFailed(String),
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The resource as last seen (its status holds the previous conditions).
    pub channel: &'a PushChannel,
    /// `Ok` or the missing Secrets and keys, in words.
    pub credentials: Result<(), Vec<String>>,
    /// See [`Outcome`].
    pub outcome: Outcome,
    /// In-cluster URL of the pusher.
    pub endpoint: String,
    /// The config hash, when objects were built.
    pub config_hash: Option<String>,
    /// The credentials check's answer, when it ran.
    pub token_check: Option<super::credentials::Checked>,
    /// The events Ingress's server URL, when one was applied.
    pub events_url: Option<String>,
}

struct Cond {
    type_: &'static str,
    status: &'static str,
    reason: String,
    message: String,
}

fn cond(type_: &'static str, ok: Option<bool>, reason: &str, message: String) -> Cond {
    Cond {
        type_,
        status: match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        },
        reason: reason.into(),
        message,
    }
}

fn truncate(mut s: String) -> String {
    // The API server refuses condition messages over 32768 bytes.
    if s.len() > 4000 {
        let mut end = 4000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn deployment_counts(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (desired, ready)
}

fn autoscaling_condition(pc: &PushChannel, applied: &Applied, ns: &str) -> Cond {
    let t = types::AUTOSCALING_ACTIVE;
    let name = format!(
        "{ns}/{}-pusher",
        pc.metadata.name.as_deref().unwrap_or_default()
    );
    if let Some(hpa) = &applied.hpa {
        let found = hpa
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "ScalingActive"));
        return match found {
            None => cond(
                t,
                None,
                "Pending",
                format!("HorizontalPodAutoscaler {name} has not evaluated its metrics yet"),
            ),
            Some(c) => {
                let ok = c.status == "True";
                let mut message = format!(
                    "HorizontalPodAutoscaler {name}: {}",
                    c.message.as_deref().unwrap_or("")
                );
                if !ok {
                    message.push_str(
                        " — check that the metrics adapter serves wxpush_inflight_requests \
                         (pods) and wxpush_queue_messages (external); see docs/operator.md",
                    );
                }
                cond(
                    t,
                    Some(ok),
                    c.reason.as_deref().unwrap_or("ScalingActive"),
                    message,
                )
            }
        };
    }
    if let Some(so) = &applied.scaled_object {
        let ready = so.data["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        return match ready {
            None => cond(
                t,
                None,
                "Pending",
                format!("KEDA has not reported on ScaledObject {name} yet; is KEDA running?"),
            ),
            Some(c) => {
                let ok = c["status"] == "True";
                cond(
                    t,
                    Some(ok),
                    c["reason"].as_str().unwrap_or("ScaledObjectReady"),
                    format!(
                        "ScaledObject {name}: {}",
                        c["message"].as_str().unwrap_or("")
                    ),
                )
            }
        };
    }
    let (desired, _) = deployment_counts(&applied.deployment);
    cond(
        t,
        Some(false),
        REASON_DISABLED,
        format!(
            "autoscaling.enabled is false: the Deployment runs spec.replicas ({desired}); set \
             autoscaling.enabled (with queue.redis) to scale on load"
        ),
    )
}

/// CredentialsValid: the token check's answer when one ran, else whether the Secrets exist.
fn credentials_condition(obs: &Observation<'_>) -> Cond {
    match (&obs.credentials, &obs.token_check) {
        (Ok(()), Some(checked)) => cond(
            types::CREDENTIALS_VALID,
            checked.ok,
            checked.reason,
            checked.message.clone(),
        ),
        (Ok(()), None) => cond(
            types::CREDENTIALS_VALID,
            Some(true),
            "SecretsFound",
            "every referenced Secret and key exists".into(),
        ),
        (Err(missing), _) => cond(
            types::CREDENTIALS_VALID,
            Some(false),
            "SecretsMissing",
            format!(
                "{}; the operator applies nothing until they exist and retries on their creation",
                missing.join("; ")
            ),
        ),
    }
}

/// Reconciled, Ready and AutoscalingActive when nothing was applied: Reconciled says why
/// (`reason`, `message`); Ready (with `ready`) and AutoscalingActive share `cause` and `see`.
fn not_applied_conditions(
    reason: &str,
    message: String,
    ready: Option<bool>,
    cause: &str,
    see: &str,
) -> [Cond; 3] {
    [
        cond(types::RECONCILED, Some(false), reason, message),
        cond(types::READY, ready, cause, see.into()),
        cond(types::AUTOSCALING_ACTIVE, None, cause, see.into()),
    ]
}

/// Ready, from the Deployment's desired and ready pods.
fn ready_condition(obs: &Observation<'_>, desired: i32, ready: i32, ns: &str, name: &str) -> Cond {
    if ready >= 1 {
        cond(
            types::READY,
            Some(true),
            "PodsReady",
            format!(
                "{ready}/{desired} pusher pods ready; producers send to {}",
                obs.endpoint
            ),
        )
    } else if desired == 0 {
        cond(
            types::READY,
            Some(false),
            "ScaledToZero",
            format!("Deployment {ns}/{name}-pusher has 0 replicas"),
        )
    } else {
        cond(
            types::READY,
            Some(false),
            "PodsNotReady",
            format!(
                "0/{desired} pusher pods ready: see `kubectl -n {ns} describe deployment \
                 {name}-pusher` and its pods' events and logs"
            ),
        )
    }
}

/// Reconciled, Ready and AutoscalingActive for what the reconcile did; with the Deployment's
/// desired and ready pods when it applied.
fn outcome_conditions(
    obs: &Observation<'_>,
    ns: &str,
    name: &str,
) -> ([Cond; 3], Option<(i32, i32)>) {
    match &obs.outcome {
        Outcome::Invalid(problems) => {
            let list = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let conds = not_applied_conditions(
                "InvalidSpec",
                format!("{list}. Fix the spec: nothing is applied until it changes"),
                Some(false),
                "InvalidSpec",
                "the spec is invalid: see the Reconciled condition",
            );
            (conds, None)
        }
        Outcome::WaitingForSecrets => {
            let conds = not_applied_conditions(
                "WaitingForSecrets",
                "a referenced Secret or key is missing: see the CredentialsValid condition".into(),
                Some(false),
                "SecretsMissing",
                "see the CredentialsValid condition",
            );
            (conds, None)
        }
        Outcome::ApplyFailed(message) => {
            let conds = not_applied_conditions(
                "ApplyFailed",
                format!("{message}; retrying with backoff"),
                None,
                "ApplyFailed",
                "see the Reconciled condition",
            );
            (conds, None)
        }
        Outcome::Applied(applied) => {
            let (desired, ready) = deployment_counts(&applied.deployment);
            let conds = [
                cond(
                    types::RECONCILED,
                    Some(true),
                    "Applied",
                    "ConfigMap, Deployment, Service, PodDisruptionBudget and autoscaler match the spec".into(),
                ),
                ready_condition(obs, desired, ready, ns, name),
                autoscaling_condition(obs.channel, applied, ns),
            ];
            (conds, Some((desired, ready)))
        }
    }
}

/// The conditions as written, each keeping its `lastTransitionTime` from `previous` when its
/// status did not change.
fn with_transitions(conds: [Cond; 4], pc: &PushChannel, now: Timestamp) -> Vec<Condition> {
    let previous = pc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    conds
        .into_iter()
        .map(|c| {
            let kept = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone());
            Condition {
                type_: c.type_.into(),
                status: c.status.into(),
                reason: c.reason,
                message: truncate(c.message),
                observed_generation: pc.metadata.generation,
                last_transition_time: kept.unwrap_or(Time(now)),
            }
        })
        .collect()
}

/// The status this observation calls for. `lastTransitionTime` is kept from `previous` for
/// conditions whose status did not change.
pub fn desired_status(obs: &Observation<'_>, now: Timestamp) -> PushChannelStatus {
    let pc = obs.channel;
    let ns = pc.metadata.namespace.as_deref().unwrap_or_default();
    let name = pc.metadata.name.as_deref().unwrap_or_default();
    let creds = credentials_condition(obs);
    let ([reconciled, ready, autoscaling], counts) = outcome_conditions(obs, ns, name);
    let conditions = with_transitions([ready, creds, reconciled, autoscaling], pc, now);
    let applied = counts.is_some();
    let previous_status = pc.status.clone().unwrap_or_default();
    PushChannelStatus {
        observed_generation: pc.metadata.generation,
        conditions,
        endpoint: Some(obs.endpoint.clone()),
        replicas: counts
            .map(|(desired, _)| desired)
            .or(previous_status.replicas.filter(|_| !applied)),
        ready_replicas: counts
            .map(|(_, ready)| ready)
            .or(previous_status.ready_replicas.filter(|_| !applied)),
        config_hash: if applied {
            obs.config_hash.clone()
        } else {
            previous_status.config_hash
        },
        events_url: if applied {
            obs.events_url.clone()
        } else {
            previous_status.events_url
        },
    }
}

/// The Events that the change from `previous` to `next` deserves: a condition changing status
/// (or `Reconciled` changing reason), a first `Reconciled`, a first failure, a new config.
pub fn transitions(previous: Option<&PushChannelStatus>, next: &PushChannelStatus) -> Vec<Event> {
    let mut events = Vec::new();
    let before = |t: &str| previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == t));
    for c in &next.conditions {
        // Unknown says "see another condition": that one carries the event.
        let emit = c.status != "Unknown"
            && match before(&c.type_) {
                Some(p) => {
                    p.status != c.status || (c.type_ == types::RECONCILED && p.reason != c.reason)
                }
                None => {
                    c.type_ == types::RECONCILED
                        || (c.status == "False"
                            && c.type_ != types::READY
                            && c.reason != REASON_DISABLED)
                }
            };
        if emit {
            events.push(Event {
                type_: if c.status == "False" && c.reason != REASON_DISABLED {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(format!("{}={}: {}", c.type_, c.status, c.message)),
                action: "Reconcile".into(),
                secondary: None,
            });
        }
    }
    if let (Some(old), Some(new)) = (
        previous.and_then(|p| p.config_hash.as_ref()),
        &next.config_hash,
    ) && old != new
    {
        events.push(Event {
            type_: EventType::Normal,
            reason: "ConfigChanged".into(),
            note: Some(format!(
                "pusher config or a referenced Secret changed (hash {old} -> {new}): rolling the pods"
            )),
            action: "RollOut".into(),
            secondary: None,
        });
    }
    events
}

/// Writes the status subresource by server-side apply (skipped when nothing changed).
pub async fn write(
    client: &Client,
    pc: &PushChannel,
    status: &PushChannelStatus,
) -> Result<bool, Error> {
    if pc.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let ns = pc.metadata.namespace.as_deref().unwrap_or_default();
    let name = pc.metadata.name.as_deref().unwrap_or_default();
    let api: Api<PushChannel> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "apiVersion": "wxpush.io/v1alpha1",
        "kind": "PushChannel",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status { source })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PushChannelSpec;

    fn channel() -> PushChannel {
        let spec: PushChannelSpec = serde_yaml_ng::from_str(
            "credentials: {secretRef: {name: wx}}\nauth: {secretRef: {name: a, key: t}}\n",
        )
        .expect("spec");
        let mut pc = PushChannel::new("order-notify", spec);
        pc.metadata.namespace = Some("shop".into());
        pc.metadata.generation = Some(2);
        pc
    }

    fn observe(pc: &PushChannel, outcome: Outcome) -> PushChannelStatus {
        let obs = Observation {
            channel: pc,
            credentials: Ok(()),
            outcome,
            endpoint: "http://x".into(),
            config_hash: Some("h1".into()),
            token_check: None,
            events_url: None,
        };
        desired_status(&obs, Timestamp::UNIX_EPOCH)
    }

    fn get<'a>(s: &'a PushChannelStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let mut pc = channel();
        let first = observe(&pc, Outcome::WaitingForSecrets);
        pc.status = Some(first.clone());
        let later = Timestamp::UNIX_EPOCH + k8s_openapi::jiff::SignedDuration::from_secs(60);
        let obs = Observation {
            channel: &pc,
            credentials: Ok(()),
            outcome: Outcome::Applied(Box::default()),
            endpoint: "http://x".into(),
            config_hash: Some("h1".into()),
            token_check: None,
            events_url: None,
        };
        let second = desired_status(&obs, later);
        // CredentialsValid stayed True: same time. Reconciled went False -> True: new time.
        assert_eq!(
            get(&second, types::CREDENTIALS_VALID).last_transition_time,
            get(&first, types::CREDENTIALS_VALID).last_transition_time
        );
        assert_eq!(
            get(&second, types::RECONCILED).last_transition_time,
            Time(later)
        );
        assert_eq!(second.observed_generation, Some(2));
        assert_eq!(second.config_hash.as_deref(), Some("h1"));
    }

    #[test]
    fn events_follow_transitions_only() {
        let mut pc = channel();
        let first = observe(&pc, Outcome::Applied(Box::default()));
        let reasons = |evs: Vec<Event>| evs.into_iter().map(|e| e.reason).collect::<Vec<_>>();
        assert_eq!(reasons(transitions(None, &first)), ["Applied"]);
        pc.status = Some(first.clone());
        assert!(
            transitions(Some(&first), &first).is_empty(),
            "no change, no event"
        );
        let mut rehashed = first.clone();
        rehashed.config_hash = Some("h2".into());
        assert_eq!(
            reasons(transitions(Some(&first), &rehashed)),
            ["ConfigChanged"]
        );
        let invalid = observe(&pc, Outcome::Invalid(vec![]));
        let evs = transitions(Some(&first), &invalid);
        assert!(evs.iter().all(|e| e.type_ == EventType::Warning));
        assert!(reasons(evs).contains(&"InvalidSpec".to_string()));
    }
}
