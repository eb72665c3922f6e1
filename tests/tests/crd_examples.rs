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
