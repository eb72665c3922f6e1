//! The operator end to end: the real `wxpush-operator` binary and the real `kubectl` against the
//! Kubernetes API emulator (`tests/kube_emulator`). A PushChannel applied with kubectl turns into
//! owned children with the right contents; a spec change rolls the pods; the status reads back
//! through kubectl; a missing CRD stops the operator at once. (A deleted child's return and the
//! garbage collection of the children are checked on the real control plane, k8s_operator.rs.)
//!
//! Build the binaries first: `cargo build -p wxpush-operator --bins` (same target dir).

use std::time::Duration;

use serde_json::Value;
use wxpush_pusher::config::PusherConfig;
use wxpush_tests::kube::{KubeEmulator, Kubectl, OperatorProcess, condition_status, owned_by};
use wxpush_tests::{wait_for, workspace_root};

/// Reconcile waits; generous for a loaded 2-core machine, never reached when things work.
fn wait() -> Duration {
    Duration::from_secs(
        std::env::var("WXPUSH_E2E_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    )
}

/// Secret values that must never show up in anything the operator writes.
const APP_SECRET: &str = "s3cr3t-app-secret-e2e";
const AUTH_TOKEN: &str = "s3cr3t-bearer-token-e2e";
const REDIS_URL: &str = "redis://:s3cr3t-redis-password@redis.default.svc:6379";
const SIGNING_KEY: &str = "s3cr3t-signing-key-e2e";

fn secrets() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-wechat}}\nstringData:\n  \
         appId: wx0123456789abcdef\n  appSecret: {APP_SECRET}\n  serverToken: event-token\n  \
         encodingAesKey: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-auth}}\nstringData:\n  token: {AUTH_TOKEN}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-redis}}\nstringData:\n  url: \"{REDIS_URL}\"\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-callbacks}}\nstringData:\n  signingKey: {SIGNING_KEY}\n"
    )
}

/// The full example, moved to the emulator's `default` namespace.
fn full_example() -> String {
    std::fs::read_to_string(workspace_root().join("examples/pushchannel-full.yaml"))
        .expect("the full example")
        .replace("namespace: shop", "namespace: default")
}

async fn get(kubectl: &Kubectl, resource: &str, name: &str) -> Option<Value> {
    kubectl.get_json(resource, name).await.expect("kubectl get")
}

fn annotation(obj: &Value, path: &[&str], key: &str) -> Option<String> {
    let mut node = obj;
    for p in path {
        node = &node[*p];
    }
    node["annotations"][key].as_str().map(str::to_string)
}

const CHILDREN: [(&str, &str); 5] = [
    ("configmap", "payment-notify-pusher"),
    ("deployment.apps", "payment-notify-pusher"),
    ("service", "payment-notify-pusher"),
    ("poddisruptionbudget.policy", "payment-notify-pusher"),
    (
        "horizontalpodautoscaler.v2.autoscaling",
        "payment-notify-pusher",
    ),
];

#[tokio::test]
async fn operator_fails_fast_without_the_crd() {
    let api = KubeEmulator::start().await;
    let (code, stderr) = OperatorProcess::run_to_exit(
        &api,
        &["--leader-election", "false"],
        Duration::from_secs(30),
    )
    .await;
    assert_ne!(code, Some(0), "the operator must not run without its CRD");
    assert!(
        stderr.contains("pushchannels.wxpush.io") && stderr.contains("not installed"),
        "the message names the CRD and says what is wrong: {stderr}"
    );
}

#[tokio::test]
async fn operator_turns_a_pushchannel_into_owned_children_and_keeps_them() {
    let (api, kubectl) = KubeEmulator::start_with_crd().await;
    kubectl.apply(&secrets()).await.expect("apply the Secrets");
    let operator = OperatorProcess::start(
        &api,
        &["--leader-election", "true", "--lease-duration", "5s"],
        &[],
    )
    .await;

    kubectl
        .apply(&full_example())
        .await
        .expect("apply the PushChannel");
    let pch = get(&kubectl, "pch", "payment-notify")
        .await
        .expect("the PushChannel exists");
    let uid = pch["metadata"]["uid"].as_str().expect("uid").to_string();

    // Every child appears, owned by the PushChannel.
    let mut children = Vec::new();
    for (resource, name) in CHILDREN {
        let obj = kubectl
            .wait_for_object(&format!("{resource}/{name}"), resource, name, wait(), |o| {
                owned_by(o, &uid)
            })
            .await;
        children.push(obj);
    }
    let [config_map, deployment, service, pdb, hpa] = &children[..] else {
        unreachable!("five children")
    };

    // The ConfigMap holds a pusher config that parses and validates, and no secret values.
    let config_text = config_map["data"]["pusher.yaml"]
        .as_str()
        .expect("pusher.yaml");
    let config = PusherConfig::from_yaml(config_text).expect("the ConfigMap holds a pusher config");
    assert_eq!(config.channel, "payment-notify");
    let whole = serde_json::to_string(config_map).expect("json");
    for secret in [APP_SECRET, AUTH_TOKEN, "s3cr3t-redis-password", SIGNING_KEY] {
        assert!(
            !whole.contains(secret),
            "a secret value leaked into the ConfigMap"
        );
        for child in &children {
            assert!(
                !serde_json::to_string(child).expect("json").contains(secret),
                "a secret value leaked into {}",
                child["kind"]
            );
        }
    }

    // The Deployment: hardened pod, config hash, no replicas while the HPA drives it.
    let hash = annotation(
        deployment,
        &["spec", "template", "metadata"],
        "wxpush.io/config-hash",
    )
    .expect("the pod template carries the config hash");
    // The emulator defaults nothing, so an absent field means nobody wrote it.
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "with autoscaling on, the operator leaves spec.replicas to the HPA"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert!(container["readinessProbe"].is_object() && container["livenessProbe"].is_object());
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/instance"],
        "payment-notify"
    );
    assert!(pdb["spec"]["selector"].is_object());
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 20);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        "payment-notify-pusher"
    );

    // The example asks for an events Ingress: it routes only /wechat/events, and the status
    // names the server URL to enter in WeChat.
    let ingress = kubectl
        .wait_for_object(
            "ingress/payment-notify-pusher-events",
            "ingress.networking.k8s.io",
            "payment-notify-pusher-events",
            wait(),
            |o| owned_by(o, &uid),
        )
        .await;
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["path"],
        "/wechat/events"
    );
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "wx-events-tls");
    kubectl
        .wait_for_object("status.eventsUrl", "pch", "payment-notify", wait(), |o| {
            o["status"]["eventsUrl"] == "https://wx-events.payments.example.com/wechat/events"
        })
        .await;

    // Status, read back with kubectl.
    let status_of = |cond: &'static str| {
        let kubectl = kubectl.clone();
        async move {
            kubectl
                .jsonpath(
                    "pch",
                    "payment-notify",
                    &format!(r#"{{.status.conditions[?(@.type=="{cond}")].status}}"#),
                )
                .await
                .expect("kubectl jsonpath")
        }
    };
    wait_for("status.observedGeneration == 1", wait(), || async {
        let pch = get(&kubectl, "pch", "payment-notify").await?;
        (pch["status"]["observedGeneration"] == 1).then_some(())
    })
    .await;
    assert_eq!(status_of("CredentialsValid").await, "True");
    assert_eq!(status_of("Reconciled").await, "True");
    assert_eq!(
        status_of("Ready").await,
        "False",
        "no pods run in the emulator, so the pusher is not ready"
    );
    let pch = get(&kubectl, "pch", "payment-notify")
        .await
        .expect("exists");
    let status_text = serde_json::to_string(&pch["status"]).expect("json");
    for secret in [APP_SECRET, AUTH_TOKEN, SIGNING_KEY] {
        assert!(
            !status_text.contains(secret),
            "a secret value leaked into the status"
        );
    }

    // A spec change rolls the pods: the config hash on the pod template changes.
    change_the_spec(&kubectl).await;
    let rolled = kubectl
        .wait_for_object(
            "a new config hash on the Deployment",
            "deployment.apps",
            "payment-notify-pusher",
            wait(),
            |d| {
                annotation(
                    d,
                    &["spec", "template", "metadata"],
                    "wxpush.io/config-hash",
                )
                .is_some_and(|h| h != hash)
            },
        )
        .await;
    assert!(rolled["metadata"]["resourceVersion"] != deployment["metadata"]["resourceVersion"]);
    let cm = get(&kubectl, "configmap", "payment-notify-pusher")
        .await
        .expect("cm");
    let config = PusherConfig::from_yaml(cm["data"]["pusher.yaml"].as_str().expect("text"))
        .expect("still a pusher config");
    assert_eq!(config.retry.max_attempts, 4);
    wait_for("status.observedGeneration == 2", wait(), || async {
        let pch = get(&kubectl, "pch", "payment-notify").await?;
        (pch["status"]["observedGeneration"] == 2).then_some(())
    })
    .await;

    // A deleted child's return and the garbage collection of the children when the PushChannel
    // is deleted are checked against the real API server (k8s_operator.rs).

    // The operator holds its Lease and shuts down cleanly.
    let holder = kubectl
        .jsonpath("lease", "wxpush-operator", "{.spec.holderIdentity}")
        .await
        .expect("the operator's Lease");
    assert!(!holder.is_empty());
    assert_eq!(operator.terminate(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test]
async fn missing_secret_is_reported_in_status_and_fixed_by_creating_it() {
    let (api, kubectl) = KubeEmulator::start_with_crd().await;
    let _operator = OperatorProcess::start(
        &api,
        &["--leader-election", "false", "--requeue-waiting", "1s"],
        &[],
    )
    .await;
    let minimal =
        std::fs::read_to_string(workspace_root().join("examples/pushchannel-minimal.yaml"))
            .expect("the minimal example")
            .replace("namespace: shop", "namespace: default");
    kubectl.apply(&minimal).await.expect("apply");
    let pch = kubectl
        .wait_for_object(
            "CredentialsValid=False",
            "pch",
            "order-notify",
            wait(),
            |o| condition_status(o, "CredentialsValid") == Some("False"),
        )
        .await;
    let message = pch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "CredentialsValid"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("order-notify-wechat"),
        "the message names the Secret: {message}"
    );
    assert!(
        get(&kubectl, "deployment.apps", "order-notify-pusher")
            .await
            .is_none(),
        "nothing is applied while credentials are missing"
    );
    kubectl
        .apply(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: order-notify-wechat}\nstringData: {appId: wxabc, appSecret: xyz}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: order-notify-auth}\nstringData: {token: tok}\n",
        )
        .await
        .expect("create the Secrets");
    kubectl
        .wait_for_object(
            "CredentialsValid=True",
            "pch",
            "order-notify",
            wait(),
            |o| condition_status(o, "CredentialsValid") == Some("True"),
        )
        .await;
    kubectl
        .wait_for_object(
            "the Deployment",
            "deployment.apps",
            "order-notify-pusher",
            wait(),
            |_| true,
        )
        .await;
}

/// An operator of this version meets a PushChannel written for a newer CRD (a spec field it
/// does not know, at the top and inside a policy section): the cluster's CRD is the newer one,
/// so the object keeps the fields (on a real API server too, which prunes only what the schema
/// lacks). The operator reconciles what it knows and names the ignored fields in one Warning
/// Event per generation.
#[tokio::test]
async fn a_pushchannel_with_a_spec_field_unknown_to_this_operator_is_reconciled() {
    let api = KubeEmulator::start().await;
    let kubectl = api.kubectl();
    // The newer CRD: this version's schema plus two fields.
    let text =
        std::fs::read_to_string(workspace_root().join("crds/pushchannel.yaml")).expect("the CRD");
    let mut crd: Value = serde_yaml_ng::from_str(&text).expect("CRD YAML");
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    spec["properties"]["fieldFromANewerCrd"] = serde_json::json!({"type": "string"});
    spec["properties"]["retry"]["properties"]["newerRetryKnob"] =
        serde_json::json!({"type": "boolean"});
    let dir = tempfile::tempdir().expect("tempdir");
    let newer = dir.path().join("newer-crd.yaml");
    std::fs::write(&newer, serde_yaml_ng::to_string(&crd).expect("YAML")).expect("write");
    kubectl
        .apply_file(&newer)
        .await
        .expect("apply the newer CRD");
    kubectl.apply(&secrets()).await.expect("apply the Secrets");
    let _operator = OperatorProcess::start(&api, &["--leader-election", "false"], &[]).await;
    let example = full_example()
        .replacen("\nspec:\n", "\nspec:\n  fieldFromANewerCrd: hello\n", 1)
        .replacen("\n  retry:\n", "\n  retry:\n    newerRetryKnob: true\n", 1);
    assert!(example.contains("fieldFromANewerCrd") && example.contains("newerRetryKnob"));
    kubectl
        .apply(&example)
        .await
        .expect("apply the PushChannel");
    let pch = get(&kubectl, "pch", "payment-notify")
        .await
        .expect("the PushChannel exists");
    assert_eq!(
        pch["spec"]["fieldFromANewerCrd"], "hello",
        "kept by the newer CRD"
    );
    let uid = pch["metadata"]["uid"].as_str().expect("uid").to_string();
    let cm = kubectl
        .wait_for_object(
            "the ConfigMap",
            "configmap",
            "payment-notify-pusher",
            wait(),
            |o| owned_by(o, &uid),
        )
        .await;
    let config_text = cm["data"]["pusher.yaml"].as_str().expect("pusher.yaml");
    let config = PusherConfig::from_yaml(config_text).expect("the pusher config parses");
    assert!(!config_text.contains("newerRetryKnob"), "{config_text}");
    assert!(config.retry.max_attempts >= 1);
    kubectl
        .wait_for_object(
            "the Deployment",
            "deployment.apps",
            "payment-notify-pusher",
            wait(),
            |o| owned_by(o, &uid),
        )
        .await;

    // The warning names each ignored field by its path.
    let unknown_events = || {
        let kubectl = kubectl.clone();
        async move {
            kubectl
                .list_json("events.events.k8s.io", None)
                .await
                .expect("kubectl get events")
                .into_iter()
                .filter(|e| {
                    e["reason"] == "UnknownFields" && e["regarding"]["name"] == "payment-notify"
                })
                .collect::<Vec<Value>>()
        }
    };
    let first = wait_for("an UnknownFields Event", wait(), || async {
        let events = unknown_events().await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["type"], "Warning");
    let note = first[0]["note"].as_str().expect("note");
    assert!(
        note.contains("spec.fieldFromANewerCrd")
            && note.contains("spec.retry.newerRetryKnob")
            && note.contains("generation 1"),
        "the Event names the ignored fields: {note}"
    );

    // Another reconcile of the same generation (a deleted child is restored) warns no more:
    // the Event is neither repeated nor counted again (no `series`).
    delete_the_service_and_await_its_return(&kubectl).await;
    let again = unknown_events().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0]["series"].is_null(), "published once: {again:?}");

    // A new generation that still carries them is reported once more.
    change_the_spec(&kubectl).await;
    wait_for(
        "an UnknownFields Event for generation 2",
        wait(),
        || async {
            unknown_events()
                .await
                .iter()
                .any(|e| {
                    e["note"]
                        .as_str()
                        .is_some_and(|n| n.contains("generation 2") && n.contains("newerRetryKnob"))
                })
                .then_some(())
        },
    )
    .await;
}

/// A spec change to the `payment-notify` PushChannel (`retry.maxAttempts: 4`), with kubectl.
async fn change_the_spec(kubectl: &Kubectl) {
    kubectl
        .run(
            &[
                "patch",
                "pch",
                "payment-notify",
                "--type=merge",
                "-p",
                r#"{"spec":{"retry":{"maxAttempts":4}}}"#,
            ],
            None,
        )
        .await
        .expect("change the spec");
}

/// Deletes the `payment-notify-pusher` Service and waits until the operator has made a new
/// one (another uid); returns it.
async fn delete_the_service_and_await_its_return(kubectl: &Kubectl) -> Value {
    let service = get(kubectl, "service", "payment-notify-pusher")
        .await
        .expect("the Service");
    kubectl
        .delete("service", "payment-notify-pusher")
        .await
        .expect("delete the Service");
    kubectl
        .wait_for_object(
            "the Service restored",
            "service",
            "payment-notify-pusher",
            wait(),
            |s| s["metadata"]["uid"] != service["metadata"]["uid"],
        )
        .await
}
