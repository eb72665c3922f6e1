//! Validates manifests against the generated CRD the way the API server would: structural
//! OpenAPI checks (types, enums, patterns, ranges, required, unknown fields), then defaulting,
//! then the CEL rules (`x-kubernetes-validations`). Errors carry Kubernetes-style field paths
//! such as `spec.autoscaling.minReplicas`.
//!
//! The OpenAPI checks run through the `jsonschema` crate after translating the few OpenAPI
//! dialect points Kubernetes uses (`nullable`, pruning of unknown fields); CEL runs through
//! kube-rs's `kube-cel`.

use serde_json::{Map, Value};

/// One reason a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Kubernetes-style path of the offending field (`spec.retry.jitter`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The `openAPIV3Schema` of the CRD's served version `version`.
pub fn crd_schema(crd_yaml: &str, version: &str) -> Value {
    let crd: Value = serde_yaml_ng::from_str(crd_yaml).expect("the CRD is YAML");
    crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == version))
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .expect("the CRD serves that version")
}

/// Validates `object` against `schema`; an empty list means the API server would accept it.
pub fn validate(schema: &Value, object: &Value) -> Vec<SchemaError> {
    // The API server validates apiVersion, kind and metadata itself; the CRD schema leaves them out.
    let mut root = schema.clone();
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, ty) in [
            ("apiVersion", "string"),
            ("kind", "string"),
            ("metadata", "object"),
        ] {
            props
                .entry(name)
                .or_insert_with(|| serde_json::json!({"type": ty}));
        }
    }
    let json_schema = to_json_schema(&root);
    let validator = jsonschema::validator_for(&json_schema).expect("the CRD schema compiles");
    let mut errors: Vec<SchemaError> = validator
        .iter_errors(object)
        .map(|e| SchemaError {
            field: pointer_to_path(&e.instance_path().to_string(), &e.to_string()),
            message: e.to_string(),
        })
        .collect();
    if !errors.is_empty() {
        // The API server stops before CEL when the structure is wrong, and so do we.
        return errors;
    }
    let mut defaulted = object.clone();
    apply_defaults(schema, &mut defaulted);
    let cel = kube_cel::Validator::new();
    let cel_errors = cel
        .validate(schema, &defaulted, None)
        .err()
        .map(|e| e.into_vec());
    for e in cel_errors.unwrap_or_default() {
        errors.push(SchemaError {
            field: e.field_path.trim_start_matches('.').to_string(),
            message: e.message.clone(),
        });
    }
    errors
}

/// `/spec/retry/jitter` → `spec.retry.jitter`; for an unknown or a missing property the error's
/// path is its parent, so the property's name is appended.
fn pointer_to_path(pointer: &str, message: &str) -> String {
    let mut path: Vec<&str> = pointer.split('/').filter(|s| !s.is_empty()).collect();
    let unknown = message
        .split('\'')
        .nth(1)
        .filter(|_| message.contains("Additional properties are not allowed"));
    // Like the API server ("spec.x.name: Required value"), name the missing property itself.
    let missing = message
        .split('"')
        .nth(1)
        .filter(|_| message.ends_with("is a required property"));
    if let Some(name) = unknown.or(missing) {
        path.push(name);
    }
    path.join(".")
}

/// Translates a Kubernetes structural schema into plain JSON Schema: `nullable` becomes a type
/// union, and objects with declared properties refuse others (what `kubectl --validate=strict`
/// and the API server's strict field validation do with unknown fields).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let v = match k.as_str() {
                    "properties" => Value::Object(
                        v.as_object()
                            .map(|props| {
                                props
                                    .iter()
                                    .map(|(n, s)| (n.clone(), to_json_schema(s)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    "items" | "additionalProperties" => to_json_schema(v),
                    "allOf" | "anyOf" | "oneOf" => Value::Array(
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .map(to_json_schema)
                            .collect(),
                    ),
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type")
            {
                out.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(t.clone()), "null".into()]),
                );
            }
            if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                out.insert("type".into(), serde_json::json!(["integer", "string"]));
            }
            let preserve =
                map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !preserve
            {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Fills in schema defaults the way the API server does before CEL runs: a missing property
/// with a `default` gets it, then defaulting recurses into objects and arrays.
pub fn apply_defaults(schema: &Value, object: &mut Value) {
    match object {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    if !map.contains_key(name)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(name.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(name) {
                        apply_defaults(sub, child);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                map.values_mut().for_each(|v| apply_defaults(sub, v));
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                items.iter_mut().for_each(|v| apply_defaults(sub, v));
            }
        }
        _ => {}
    }
}
