//! Spec fields this operator version does not know.
//!
//! The `PushChannel` types accept fields they do not know, so that an older operator can read
//! an object written for a newer CRD (whose schema keeps those fields). Such a field is ignored,
//! and the user is told: the operator watches PushChannels as raw JSON, reads each one into the
//! typed `PushChannel` with `serde_ignored` collecting the path of every ignored spec field
//! (`spec.retry.fooBar`), and the next reconcile of that object generation logs a warning and
//! publishes a Warning Event (`UnknownFields`) naming them: once per generation, not on every
//! reconcile.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::DynamicObject;
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use tracing::warn;

use crate::crd::PushChannel;

/// Reason of the Event that names ignored spec fields.
pub const REASON: &str = "UnknownFields";

/// Reads a PushChannel from its JSON, and the paths of the spec fields it ignored
/// (`spec.fieldFromANewerCrd`, `spec.retry.newerRetryKnob`, `spec.pod.tolerations[0].x`).
pub fn read(value: serde_json::Value) -> Result<(PushChannel, Vec<String>), serde_json::Error> {
    let mut ignored = Vec::new();
    let pc: PushChannel = serde_ignored::deserialize(value, |path| {
        let path = dotted(&path);
        if path.starts_with("spec.") {
            ignored.push(path);
        }
    })?;
    Ok((pc, ignored))
}

/// `spec.queue.redis.fooBar`, `spec.pod.tolerations[0].fooBar`: the path as a user writes it
/// (`serde_ignored` would also show where an `Option` or a newtype was entered, as `?`).
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Map { parent, key } => {
            let parent = dotted(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            dotted(parent)
        }
    }
}

/// `namespace/name` of an object (the key of the operator's per-object state).
pub fn key(namespace: Option<&str>, name: Option<&str>) -> String {
    format!(
        "{}/{}",
        namespace.unwrap_or_default(),
        name.unwrap_or_default()
    )
}

#[derive(Debug)]
struct Seen {
    generation: Option<i64>,
    paths: Vec<String>,
    reported: bool,
}

/// The ignored spec fields of each watched PushChannel (only those that have some), filled by
/// the watch and taken by the reconcile, which reports each generation once.
#[derive(Debug, Default)]
pub struct UnknownFields {
    seen: Mutex<HashMap<String, Seen>>,
}

impl UnknownFields {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // A poisoned map only loses warnings; keep going with it.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what the watch read for object `key` at `generation`.
    pub fn observe(&self, key: &str, generation: Option<i64>, paths: Vec<String>) {
        let mut seen = self.seen();
        if paths.is_empty() {
            seen.remove(key);
            return;
        }
        if let Some(s) = seen.get(key)
            && s.generation == generation
            && s.paths == paths
        {
            return;
        }
        seen.insert(
            key.to_string(),
            Seen {
                generation,
                paths,
                reported: false,
            },
        );
    }

    /// The ignored fields of object `key` at `generation`, the first time they are asked for
    /// (`None` when there are none, or they were already reported for this generation).
    pub fn to_report(&self, key: &str, generation: Option<i64>) -> Option<Vec<String>> {
        let mut seen = self.seen();
        let s = seen.get_mut(key)?;
        if s.reported || s.generation != generation {
            return None;
        }
        s.reported = true;
        Some(s.paths.clone())
    }

    /// Forgets a deleted object.
    pub fn forget(&self, key: &str) {
        self.seen().remove(key);
    }

    /// Objects with ignored fields (for tests).
    pub fn len(&self) -> usize {
        self.seen().len()
    }

    /// Whether no object has ignored fields.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One event of the raw PushChannel watch, read into the typed one; the ignored fields are
    /// recorded on the way. An object that cannot be read at all (a known field of another
    /// type) is left out with a warning, instead of failing the whole watch.
    pub fn typed(
        &self,
        event: watcher::Event<DynamicObject>,
    ) -> Option<watcher::Event<PushChannel>> {
        use watcher::Event as E;
        let initial = matches!(event, E::InitApply(_));
        let (obj, deleted) = match event {
            E::Init => return Some(E::Init),
            E::InitDone => return Some(E::InitDone),
            E::Apply(o) | E::InitApply(o) => (o, false),
            E::Delete(o) => (o, true),
        };
        let key = key(
            obj.metadata.namespace.as_deref(),
            obj.metadata.name.as_deref(),
        );
        if deleted {
            self.forget(&key);
        }
        let (pc, paths) = match serde_json::to_value(&obj).and_then(read) {
            Ok(r) => r,
            Err(e) => {
                warn!(object = %key, error = %e, "cannot read a PushChannel: left out");
                return None;
            }
        };
        Some(if deleted {
            E::Delete(pc)
        } else {
            self.observe(&key, pc.metadata.generation, paths);
            if initial {
                E::InitApply(pc)
            } else {
                E::Apply(pc)
            }
        })
    }
}

/// The Warning Event naming the ignored fields of `generation`.
pub fn event(paths: &[String], generation: Option<i64>) -> Event {
    Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(note(paths, generation)),
        action: "Reconcile".into(),
        secondary: None,
    }
}

fn note(paths: &[String], generation: Option<i64>) -> String {
    let generation = generation.map_or_else(String::new, |g| format!(" (generation {g})"));
    format!(
        "ignored spec field(s) this operator version does not know{generation}: {}. The CRD is \
         newer than the operator: upgrade the operator for them to take effect",
        paths.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn channel(spec_extra: serde_json::Value) -> serde_json::Value {
        let mut spec = json!({
            "credentials": {"secretRef": {"name": "wx"}},
            "auth": {"secretRef": {"name": "auth", "key": "token"}},
        });
        if let (Some(spec), serde_json::Value::Object(extra)) = (spec.as_object_mut(), spec_extra) {
            spec.extend(extra);
        }
        json!({
            "apiVersion": "wxpush.io/v1alpha1", "kind": "PushChannel",
            "metadata": {"name": "c", "namespace": "n", "generation": 2},
            "spec": spec,
            "status": {"someNewerStatusField": 1},
        })
    }

    #[test]
    fn unknown_spec_fields_are_named_by_their_path() {
        let (pc, mut paths) = read(channel(json!({
            "fieldFromANewerCrd": {"x": 1},
            "retry": {"maxAttempts": 4, "newerRetryKnob": true},
            "queue": {"redis": {"url": {"name": "r", "key": "url"}, "newerRedisKnob": "x"}},
            "pod": {"tolerations": [{"key": "k", "operator": "Exists", "newerKnob": 1}]},
        })))
        .expect("unknown spec fields are ignored");
        paths.sort();
        assert_eq!(
            paths,
            [
                "spec.fieldFromANewerCrd",
                "spec.pod.tolerations[0].newerKnob",
                "spec.queue.redis.newerRedisKnob",
                "spec.retry.newerRetryKnob"
            ]
        );
        assert_eq!(pc.spec.retry.max_attempts, 4, "the known fields are read");
        let (_, none) = read(channel(json!({"retry": {"maxAttempts": 4}}))).expect("reads");
        assert!(none.is_empty(), "a spec of this version: {none:?}");
    }

    #[test]
    fn ignored_fields_are_reported_once_per_generation() {
        let unknown = UnknownFields::default();
        let paths = vec!["spec.retry.fooBar".to_string()];
        unknown.observe("n/c", Some(1), paths.clone());
        assert_eq!(unknown.to_report("n/c", Some(1)), Some(paths.clone()));
        assert_eq!(
            unknown.to_report("n/c", Some(1)),
            None,
            "once per generation"
        );
        // The same object seen again (a resync, a status write) is not reported again.
        unknown.observe("n/c", Some(1), paths.clone());
        assert_eq!(unknown.to_report("n/c", Some(1)), None);
        // A reconcile of a newer generation than the watch has seen reports nothing yet.
        assert_eq!(unknown.to_report("n/c", Some(2)), None);
        unknown.observe("n/c", Some(2), paths.clone());
        assert_eq!(unknown.to_report("n/c", Some(2)), Some(paths));
        // Fixed in generation 3: nothing left to report, nothing kept.
        unknown.observe("n/c", Some(3), Vec::new());
        assert_eq!(unknown.to_report("n/c", Some(3)), None);
        assert!(unknown.is_empty());
        let note = event(&["spec.a".into(), "spec.b.c".into()], Some(4))
            .note
            .expect("note");
        assert!(
            note.contains("spec.a, spec.b.c") && note.contains("generation 4"),
            "{note}"
        );
    }

    #[test]
    fn the_raw_watch_is_read_into_push_channels() {
        let unknown = UnknownFields::default();
        let raw: DynamicObject =
            serde_json::from_value(channel(json!({"newer": true}))).expect("a dynamic object");
        let Some(watcher::Event::Apply(pc)) = unknown.typed(watcher::Event::Apply(raw.clone()))
        else {
            panic!("an applied PushChannel")
        };
        assert_eq!(pc.metadata.name.as_deref(), Some("c"));
        assert_eq!(
            unknown.to_report("n/c", Some(2)),
            Some(vec!["spec.newer".to_string()])
        );
        assert!(matches!(
            unknown.typed(watcher::Event::Delete(raw)),
            Some(watcher::Event::Delete(_))
        ));
        assert!(unknown.is_empty(), "a deleted object is forgotten");
        // A known field of the wrong type: left out, the watch goes on.
        let bad: DynamicObject =
            serde_json::from_value(channel(json!({"retry": {"maxAttempts": "many"}})))
                .expect("a dynamic object");
        assert!(unknown.typed(watcher::Event::Apply(bad)).is_none());
        assert!(matches!(
            unknown.typed(watcher::Event::InitDone),
            Some(watcher::Event::InitDone)
        ));
    }
}
