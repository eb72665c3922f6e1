//! The generated CRD, the example manifests and configs, and the manifests it must refuse.

use std::path::PathBuf;

use wxpush_tests::crd_schema::{crd_schema, validate};
use wxpush_tests::workspace_root;

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn schema() -> serde_json::Value {
    crd_schema(&read("crds/pushchannel.yaml"), "v1alpha1")
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = wxpush_operator::crd::crd_yaml();
    let committed = read("crds/pushchannel.yaml");
    assert!(
        generated == committed,
        "crds/pushchannel.yaml has drifted from the Rust types: run \
         `cargo run -p wxpush-operator --bin crdgen` and commit the result"
    );
}

#[test]
fn crd_names_and_shape_follow_the_design() {
    let crd: serde_json::Value =
        serde_yaml_ng::from_str(&read("crds/pushchannel.yaml")).expect("yaml");
    assert_eq!(crd["metadata"]["name"], "pushchannels.wxpush.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "pch");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(
        v["subresources"]["status"].is_object(),
        "status subresource"
    );
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Provider", "Ready", "Replicas", "Age"]);
    let text = read("crds/pushchannel.yaml");
    for refused in ["uint32", "uint64", "int8", "additionalProperties: false"] {
        assert!(
            !text.contains(refused),
            "the CRD must not carry {refused:?}"
        );
    }
}

#[test]
fn valid_examples_pass_schema_and_cel() {
    let schema = schema();
    for name in [
        "examples/pushchannel-minimal.yaml",
        "examples/pushchannel-full.yaml",
        "examples/pushchannel-wecom-app.yaml",
        "examples/pushchannel-wecom-robot.yaml",
    ] {
        let obj: serde_json::Value = serde_yaml_ng::from_str(&read(name)).expect("yaml");
        let errors = validate(&schema, &obj);
        assert!(errors.is_empty(), "{name} should be valid, got: {errors:?}");
        // And the operator's own types read it.
        let typed: wxpush_operator::crd::PushChannel =
            serde_json::from_value(obj).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!typed.spec.credentials.secret_ref.name.is_empty());
    }
}

#[test]
fn invalid_manifests_are_refused_naming_the_field() {
    let schema = schema();
    let dir = workspace_root().join("examples/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/invalid exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the negative cases, found {files:?}"
    );
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-field: "))
            .unwrap_or_else(|| panic!("{} lacks an expect-field line", path.display()))
            .trim();
        let obj: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
        let errors = validate(&schema, &obj);
        assert!(
            errors
                .iter()
                .any(|e| e.field == expected || e.field.starts_with(&format!("{expected}."))),
            "{}: expected an error naming {expected}, got {errors:?}",
            path.display()
        );
    }
}

#[test]
fn minimal_example_gets_documented_defaults() {
    let schema = schema();
    let mut obj: serde_json::Value =
        serde_yaml_ng::from_str(&read("examples/pushchannel-minimal.yaml")).expect("yaml");
    wxpush_tests::crd_schema::apply_defaults(&schema, &mut obj);
    let spec = &obj["spec"];
    assert_eq!(spec["apiBaseUrl"], "https://api.weixin.qq.com");
    assert_eq!(spec["timeouts"]["connect"], "5s");
    assert_eq!(spec["timeouts"]["request"], "10s");
    assert_eq!(spec["retry"]["maxAge"], "9m");
    assert_eq!(spec["queue"]["embedded"]["path"], "/var/lib/wxpush");
    assert_eq!(spec["token"]["api"], "stable");
}

#[test]
fn pusher_config_example_loads_and_validates() {
    let path = workspace_root().join("examples/pusher.yaml");
    let text = read("examples/pusher.yaml");
    let config = wxpush_pusher::config::PusherConfig::from_yaml(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(config.channel, "order-notify");
}

/// Fields the full example leaves out on purpose, with why.
const NOT_IN_THE_FULL_EXAMPLE: &[(&str, &str)] = &[
    (
        "spec.credentials.secretRef.corpIdKey",
        "wecomApp only (examples/pushchannel-wecom-app.yaml); the full example is WeChat's",
    ),
    (
        "spec.credentials.secretRef.corpSecretKey",
        "wecomApp only (examples/pushchannel-wecom-app.yaml)",
    ),
    (
        "spec.credentials.secretRef.agentIdKey",
        "wecomApp only (examples/pushchannel-wecom-app.yaml)",
    ),
    (
        "spec.credentials.secretRef.webhookKeyKey",
        "wecomRobot only (examples/pushchannel-wecom-robot.yaml)",
    ),
    (
        "spec.autoscaling.behavior.scaleDown.tolerance",
        "alpha in Kubernetes (the HPAConfigurableTolerance feature gate)",
    ),
    (
        "spec.autoscaling.behavior.scaleUp.tolerance",
        "alpha in Kubernetes (the HPAConfigurableTolerance feature gate)",
    ),
    (
        "spec.pod.resources.claims",
        "dynamic resource allocation: a claim must name one of the pod's resourceClaims, which \
         the operator does not create",
    ),
];

/// Every leaf of an object schema, as `spec.a.b`; arrays of objects are walked through their
/// items; maps and arrays of scalars are leaves.
fn schema_leaves(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            schema_leaves(sub, &format!("{path}.{name}"), out);
        }
    } else if schema["items"]["properties"].is_object() {
        schema_leaves(&schema["items"], path, out);
    } else {
        out.push(path.to_string());
    }
}

fn has_path(value: &serde_json::Value, path: &[&str]) -> bool {
    match path.split_first() {
        None => true,
        Some((first, rest)) => match value {
            serde_json::Value::Array(items) => items.iter().any(|i| has_path(i, path)),
            serde_json::Value::Object(map) => map.get(*first).is_some_and(|v| has_path(v, rest)),
            _ => false,
        },
    }
}

/// The commented alternative in the full example: `#   embedded: {…}` and the comment lines
/// that continue it, as YAML.
fn commented_embedded_queue(text: &str) -> serde_json::Value {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("#   embedded:"));
    let mut yaml = String::new();
    if let Some(first) = lines.next() {
        yaml.push_str(first.trim_start().trim_start_matches('#'));
        for l in lines {
            let t = l.trim_start();
            if !t.starts_with("#  ") {
                break;
            }
            yaml.push('\n');
            yaml.push_str(t.trim_start_matches('#'));
        }
    }
    serde_yaml_ng::from_str(&yaml).unwrap_or(serde_json::Value::Null)
}

#[test]
fn full_example_sets_every_field_of_the_crd() {
    let schema = schema();
    let text = read("examples/pushchannel-full.yaml");
    let example: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let embedded = commented_embedded_queue(&text);
    assert!(
        embedded["embedded"].is_object(),
        "the full example shows the embedded queue in a comment (`#   embedded: {{…}}`)"
    );
    // The commented alternative is valid where it stands: the example with it instead of redis.
    let mut alternative = example.clone();
    alternative["spec"]["queue"] = embedded.clone();
    alternative["spec"]["autoscaling"]["enabled"] = false.into();
    alternative["spec"]["replicas"] = 1.into();
    let errors = validate(&schema, &alternative);
    assert!(errors.is_empty(), "the embedded alternative: {errors:?}");

    let mut leaves = Vec::new();
    schema_leaves(&schema["properties"]["spec"], "spec", &mut leaves);
    assert!(leaves.len() > 90, "the walk found {} fields", leaves.len());
    let mut missing = Vec::new();
    for leaf in &leaves {
        if NOT_IN_THE_FULL_EXAMPLE
            .iter()
            .any(|(p, _)| leaf == p || leaf.starts_with(&format!("{p}.")))
        {
            continue;
        }
        let parts: Vec<&str> = leaf.split('.').collect();
        let found = if let Some(rest) = leaf.strip_prefix("spec.queue.embedded.") {
            embedded["embedded"].get(rest).is_some()
        } else {
            has_path(&example, &parts)
        };
        if !found {
            missing.push(leaf.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "examples/pushchannel-full.yaml lacks these CRD fields (add them, or list them in \
         NOT_IN_THE_FULL_EXAMPLE with the reason): {missing:?}"
    );
    // The exceptions are real fields, so the list cannot go stale.
    for (p, _) in NOT_IN_THE_FULL_EXAMPLE {
        assert!(
            leaves
                .iter()
                .any(|l| l == p || l.starts_with(&format!("{p}."))),
            "{p} is no longer a CRD field"
        );
    }
}
