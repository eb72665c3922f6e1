//! The CRD, the examples and the operator on a real control plane (`scripts/cluster.sh`):
//!
//! - the CRD is accepted (so its CEL rules pass the API server's cost estimation);
//! - every example PushChannel is accepted by `kubectl apply --dry-run=server --validate=strict`, and every file
//!   in `examples/invalid/` is refused by the API server with a message naming its field;
//! - the full example, with its Secrets, a real `redis-server` and the sandbox as WeChat, is
//!   reconciled by the real `wxpush-operator` into its ConfigMap, Deployment, Service, PDB, HPA
//!   and PodMonitor (prometheus-operator's CRDs installed); the Deployment controller creates
//!   the pods, kwok makes them Ready, the pod runner runs a real pusher for each, and the
//!   PushChannel's `Ready` condition follows;
//! - the HPA owns `spec.replicas`: over a minute of reconciles (a short requeue and spec
//!   changes that roll the pods) the operator never writes it, and it never changes but by the
//!   HPA;
//! - a deleted Service is restored, and deleting the PushChannel removes every child (the real
//!   garbage collector).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use wxpush_tests::cluster::{
    CHILDREN, WAIT, example_secrets, full_example, up_with_namespace, wait_for_config,
};
use wxpush_tests::kube::{Kubectl, OperatorProcess, condition_status, owned_by};
use wxpush_tests::redis::RedisServer;
use wxpush_tests::{sandbox, wait_for, workspace_root};

const NS: &str = "shop";

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join(dir))
        .expect("the folder exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubectl get RESOURCE NAME -n NS -o json`, if it exists.
async fn get(kubectl: &Kubectl, resource: &str, name: &str) -> Option<Value> {
    let out = kubectl
        .run(&["get", resource, name, "-n", NS, "-o", "json"], None)
        .await
        .ok()?;
    serde_json::from_str(&out).ok()
}

/// The field managers that own `spec.replicas` of a Deployment.
fn replicas_managers(deployment: &Value) -> Vec<String> {
    deployment["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| !m["fieldsV1"]["f:spec"]["f:replicas"].is_null())
        .filter_map(|m| m["manager"].as_str().map(str::to_string))
        .collect()
}

async fn examples_and_invalid_manifests(kubectl: &Kubectl) {
    for path in yaml_files("examples") {
        let text = std::fs::read_to_string(&path).expect("read");
        if !text.contains("kind: PushChannel") {
            continue; // a pusher config, not a manifest
        }
        let p = path.to_string_lossy();
        kubectl
            .run(
                &["apply", "--dry-run=server", "--validate=strict", "-f", &p],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{p} refused: {e}"));
    }
    let invalid = yaml_files("examples/invalid");
    assert!(invalid.len() >= 8, "the negative cases: {invalid:?}");
    for path in invalid {
        let text = std::fs::read_to_string(&path).expect("read");
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-field: "))
            .unwrap_or_else(|| panic!("{} lacks an expect-field line", path.display()))
            .trim();
        let p = path.to_string_lossy();
        let err = kubectl
            .run(
                &["apply", "--dry-run=server", "--validate=strict", "-f", &p],
                None,
            )
            .await
            .expect_err(&format!("{p} must be refused"));
        assert!(
            err.stderr.contains(field),
            "{p}: the API server's refusal does not name {field}: {}",
            err.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_api_server_accepts_the_examples_and_the_operator_reconciles_the_full_one() {
    let cluster = up_with_namespace(NS).await;
    let kubectl = cluster.kubectl();

    examples_and_invalid_manifests(&kubectl).await;

    // The full example, reconciled.
    let redis = RedisServer::start().await;
    let wx = sandbox::start(sandbox::config()).await;
    kubectl
        .apply(&example_secrets(NS, &redis.url()))
        .await
        .expect("Secrets");
    let home = cluster.state().join("operator-home");
    std::fs::create_dir_all(&home).expect("HOME");
    let operator = OperatorProcess::start_with_kubeconfig(
        &cluster.kubeconfig(),
        &home,
        &["--leader-election=false", "--requeue=3s"],
        &[],
    )
    .await;
    let spec = serde_json::json!({
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
        "shutdown": {"drainTimeout": "2s"},
    });
    kubectl
        .run(
            &["apply", "--validate=strict", "-f", "-"],
            Some(&full_example(NS, &wx.handle.base_url(), &spec)),
        )
        .await
        .expect("the full example");
    let pc = wait_for("the PushChannel Ready", WAIT, || async {
        let pc = get(&kubectl, "pushchannel", "payment-notify").await?;
        (condition_status(&pc, "Ready") == Some("True")).then_some(pc)
    })
    .await;
    let uid = pc["metadata"]["uid"].as_str().expect("uid").to_string();
    for resource in CHILDREN {
        let obj = get(&kubectl, resource, "payment-notify-pusher")
            .await
            .unwrap_or_else(|| panic!("{resource} payment-notify-pusher exists"));
        assert!(
            owned_by(&obj, &uid),
            "{resource} is owned by the PushChannel"
        );
    }
    // Ready pods made by the Deployment controller, each with a real pusher that answers.
    let ready = cluster
        .ready_pods(NS, Some("wxpush.io/channel=payment-notify"))
        .await;
    assert!(ready.len() >= 2, "Ready pods: {ready:?}");
    for pod in &ready {
        let listen = cluster.pusher_ready(NS, pod).await;
        eprintln!("{pod}: pusher ready on {listen}");
    }

    // A minute of reconciles: replicas are the HPA's alone.
    let start = Instant::now();
    let mut last: Option<i64> = None;
    let mut changes = Vec::new();
    let mut rolls = 0;
    while start.elapsed() < Duration::from_secs(60) {
        if start.elapsed() > Duration::from_secs(rolls * 20) && rolls < 3 {
            rolls += 1;
            // A spec change the operator applies (and that rolls the pods).
            kubectl
                .run(
                    &[
                        "patch",
                        "pushchannel",
                        "payment-notify",
                        "-n",
                        NS,
                        "--type=merge",
                        "-p",
                        &format!(
                            r#"{{"spec":{{"rateLimit":{{"perSecond":{}}}}}}}"#,
                            500 + rolls
                        ),
                    ],
                    None,
                )
                .await
                .expect("patch");
        }
        let d = get(&kubectl, "deployment", "payment-notify-pusher")
            .await
            .expect("the Deployment");
        let managers = replicas_managers(&d);
        assert!(
            !managers.iter().any(|m| m == "wxpush-operator"),
            "the operator owns spec.replicas: {managers:?}"
        );
        let replicas = d["spec"]["replicas"].as_i64().expect("replicas");
        if last != Some(replicas) {
            // A change of replicas is the HPA's: its status says so (it writes the scale
            // first, then its status, so give it a moment).
            let hpa_status = wait_for(
                &format!("the HPA's desiredReplicas to be {replicas}"),
                Duration::from_secs(20),
                || async {
                    let hpa =
                        get(&kubectl, "horizontalpodautoscaler", "payment-notify-pusher").await?;
                    (hpa["status"]["desiredReplicas"].as_i64() == Some(replicas))
                        .then(|| hpa["status"].clone())
                },
            )
            .await;
            changes.push((start.elapsed(), replicas, hpa_status));
            last = Some(replicas);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("replicas over the minute: {changes:?}");
    // The operator has applied the last change.
    wait_for_config(
        &kubectl,
        NS,
        "payment-notify",
        "perSecond: 503",
        "the last spec change applied",
    )
    .await;

    // A deleted child is restored; the deleted PushChannel's children go with it (the real
    // garbage collector, following the owner references).
    kubectl
        .run(
            &["delete", "service", "payment-notify-pusher", "-n", NS],
            None,
        )
        .await
        .expect("delete the Service");
    wait_for("the Service restored", WAIT, || async {
        get(&kubectl, "service", "payment-notify-pusher")
            .await
            .filter(|svc| owned_by(svc, &uid))
            .map(|_| ())
    })
    .await;
    kubectl
        .run(&["delete", "pushchannel", "payment-notify", "-n", NS], None)
        .await
        .expect("delete the PushChannel");
    for resource in CHILDREN {
        wait_for(&format!("{resource} garbage-collected"), WAIT, || async {
            match kubectl
                .run(&["get", resource, "payment-notify-pusher", "-n", NS], None)
                .await
            {
                Err(e) if e.is_not_found() => Some(()),
                _ => None,
            }
        })
        .await;
    }
    assert_eq!(operator.terminate(Duration::from_secs(30)).await, Some(0));
}
