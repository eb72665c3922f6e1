//! The chart with the real Helm CLI on a real control plane (`scripts/cluster.sh`), and the real
//! operator binary running under the chart's ServiceAccount, so the API server's RBAC applies:
//!
//! - `helm lint --strict` and `helm template` (default and namespaced values);
//! - `helm install` with default values; the operator, with a token of the chart's
//!   ServiceAccount, reconciles the full example (and its PodMonitor: prometheus-operator's CRDs
//!   are installed); a missing verb fails the reconcile, so this test. The PushChannel turns
//!   Ready, and the HPA reports `ScalingActive=True` with values of its three metrics;
//! - `helm upgrade` with changed values (a shorter Lease), seen in the Deployment; two operator
//!   replicas, one holds the Lease; it is killed and the other takes over and reconciles;
//! - `helm uninstall` leaves no object of the release (the CRD stays, as Helm keeps `crds/`);
//! - namespaced mode: `kubectl auth can-i` with the ServiceAccount's token proves it can read
//!   Secrets in its namespace and in no other, and the operator reconciles there.
//!
//! One cluster for the whole file (starting one takes seconds, building it the first time
//! minutes); it is stopped when the test ends, also on failure.

use std::time::Duration;

use serde_json::Value;
use wxpush_tests::cluster::{
    CHILDREN, Cluster, WAIT, change_rate, example_secrets, full_example, install_pod_monitor_crd,
};
use wxpush_tests::kube::{Kubectl, condition_status, owned_by};
use wxpush_tests::redis::RedisServer;
use wxpush_tests::{sandbox, wait_for};

const CHART: &str = "charts/wxpush-operator";

/// Every object of a release, as `helm get manifest` lists it: (apiVersion, kind, namespace,
/// name).
fn release_objects(cluster: &Cluster, release: &str, ns: &str) -> Vec<(String, String, String)> {
    let manifest = cluster.helm(&["get", "manifest", release, "-n", ns]);
    serde_yaml_ng::Deserializer::from_str(&manifest)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter_map(|v: Value| {
            let kind = v["kind"].as_str()?.to_string();
            let group = v["apiVersion"]
                .as_str()?
                .split_once('/')
                .map(|(g, _)| g.to_string())
                .unwrap_or_default();
            let resource = if group.is_empty() {
                kind
            } else {
                format!("{kind}.{group}")
            };
            let obj_ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or(ns)
                .to_string();
            Some((
                resource,
                obj_ns,
                v["metadata"]["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

async fn can_i(kubectl: &Kubectl, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    match kubectl.run(&all, None).await {
        Ok(out) => out.trim() == "yes",
        // `can-i` exits 1 when the answer is no.
        Err(e) if e.status == Some(1) => false,
        Err(e) => panic!("{e}"),
    }
}

async fn lease_holder(kubectl: &Kubectl, ns: &str, name: &str) -> Option<String> {
    let out = kubectl
        .run(
            &[
                "get",
                "lease",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
        .await
        .ok()?;
    (!out.is_empty()).then_some(out)
}

async fn wait_reconciled(kubectl: &Kubectl, ns: &str, name: &str) -> Value {
    wait_for(&format!("{ns}/{name} Reconciled=True"), WAIT, || async {
        let out = kubectl
            .run(&["get", "pushchannel", name, "-n", ns, "-o", "json"], None)
            .await
            .ok()?;
        let obj: Value = serde_json::from_str(&out).ok()?;
        (condition_status(&obj, "Reconciled") == Some("True")).then_some(obj)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_upgrades_and_uninstalls_with_helm_and_its_rbac_suffices() {
    let cluster = Cluster::up();
    let kubectl = cluster.kubectl();
    let redis = RedisServer::start().await;
    let wx = sandbox::start(sandbox::config()).await;

    // Lint and render with the real CLI.
    for set in [None, Some("watchNamespaces={shop}")] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(s) = set {
            args.extend(["--set", s]);
        }
        let out = cluster.helm(&args);
        assert!(out.contains("0 chart(s) failed"), "helm lint: {out}");
        let mut args = vec!["template", "wxpush-operator", CHART, "-n", "wxpush-system"];
        if let Some(s) = set {
            args.extend(["--set", s]);
        }
        let rendered = cluster.helm(&args);
        assert!(rendered.contains("kind: Deployment"), "{rendered}");
    }

    // prometheus-operator's CRDs, so the operator applies PodMonitors.
    install_pod_monitor_crd(&cluster).await;

    // Install with default values.
    cluster.helm(&[
        "install",
        "wxpush-operator",
        CHART,
        "-n",
        "wxpush-system",
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
    ]);
    let crd = kubectl
        .get_json("crd", "pushchannels.wxpush.io")
        .await
        .expect("kubectl")
        .expect("the chart installed the CRD");
    assert_eq!(condition_status(&crd, "Established"), Some("True"));
    let deployment = kubectl
        .get_in("wxpush-system", "deployment", "wxpush-operator")
        .await
        .expect("the operator's Deployment");
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("a ServiceAccount")
        .to_string();
    let sa_kubeconfig = cluster
        .service_account_kubeconfig("wxpush-system", &sa)
        .await;
    let as_operator = Kubectl::new(sa_kubeconfig.clone(), cluster.state().join("sa-cache"));
    assert!(can_i(&as_operator, &["list", "secrets", "--all-namespaces"]).await);

    // The operator under that identity reconciles the full example.
    let op_a = cluster
        .operator_as_deployed(
            &sa_kubeconfig,
            "wxpush-system",
            "wxpush-operator",
            "op-a",
            &[],
        )
        .await;
    kubectl
        .run(&["create", "namespace", "shop"], None)
        .await
        .expect("namespace");
    kubectl
        .apply(&example_secrets("shop", &redis.url()))
        .await
        .expect("Secrets");
    kubectl
        .apply(&full_example(
            "shop",
            &wx.handle.base_url(),
            &serde_json::json!({}),
        ))
        .await
        .expect("PushChannel");
    let pc = wait_reconciled(&kubectl, "shop", "payment-notify").await;
    let uid = pc["metadata"]["uid"].as_str().expect("uid").to_string();
    for resource in CHILDREN {
        let obj = kubectl
            .get_in("shop", resource, "payment-notify-pusher")
            .await
            .unwrap_or_else(|e| panic!("{resource}: {e}"));
        assert!(owned_by(&obj, &uid), "{resource} owned by the PushChannel");
    }

    // What a user sees: a Ready PushChannel, and an HPA computing from metric values it read
    // through the adapter.
    wait_for("the PushChannel Ready", WAIT, || async {
        let pc = kubectl
            .get_in("shop", "pushchannel", "payment-notify")
            .await
            .ok()?;
        (condition_status(&pc, "Ready") == Some("True")).then_some(())
    })
    .await;
    wait_for(
        "the HPA ScalingActive=True with metric values",
        WAIT,
        || async {
            let hpa = kubectl
                .get_in("shop", "hpa", "payment-notify-pusher")
                .await
                .ok()?;
            let values = hpa["status"]["currentMetrics"].as_array().is_some_and(|m| {
                ["Pods", "External", "Resource"]
                    .iter()
                    .all(|t| m.iter().any(|x| x["type"] == *t))
            });
            (condition_status(&hpa, "ScalingActive") == Some("True") && values).then_some(())
        },
    )
    .await;

    // helm upgrade with a changed value: a 5 s Lease.
    cluster.helm(&[
        "upgrade",
        "wxpush-operator",
        CHART,
        "-n",
        "wxpush-system",
        "--reuse-values",
        "--set",
        "leaderElection.leaseDuration=5s",
        "--wait",
        "--timeout",
        "3m",
    ]);
    let args = kubectl
        .run(
            &[
                "get",
                "deployment",
                "wxpush-operator",
                "-n",
                "wxpush-system",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].args}",
            ],
            None,
        )
        .await
        .expect("args");
    assert!(
        args.contains("--lease-duration=5s"),
        "upgraded args: {args}"
    );

    // Two replicas with the upgraded args; the leader is killed, the other takes over.
    drop(op_a);
    let op_a = cluster
        .operator_as_deployed(
            &sa_kubeconfig,
            "wxpush-system",
            "wxpush-operator",
            "op-a",
            &[],
        )
        .await;
    let op_b = cluster
        .operator_as_deployed(
            &sa_kubeconfig,
            "wxpush-system",
            "wxpush-operator",
            "op-b",
            &[],
        )
        .await;
    let first = wait_for("a Lease holder", WAIT, || async {
        lease_holder(&kubectl, "wxpush-system", "wxpush-operator")
            .await
            .filter(|h| h == "op-a" || h == "op-b")
    })
    .await;
    let (survivor, other) = if first == "op-a" {
        drop(op_a);
        (op_b, "op-b")
    } else {
        drop(op_b);
        (op_a, "op-a")
    };
    wait_for(&format!("{other} takes the Lease over"), WAIT, || async {
        (lease_holder(&kubectl, "wxpush-system", "wxpush-operator")
            .await
            .as_deref()
            == Some(other))
        .then_some(())
    })
    .await;
    // The new leader reconciles: a spec change reaches the ConfigMap.
    change_rate(
        &kubectl,
        "shop",
        "payment-notify",
        777,
        "the new leader applies the change",
    )
    .await;
    assert_eq!(survivor.terminate(Duration::from_secs(30)).await, Some(0));

    // helm uninstall leaves no object of the release.
    let objects = release_objects(&cluster, "wxpush-operator", "wxpush-system");
    assert!(objects.len() >= 6, "the release's objects: {objects:?}");
    cluster.helm(&[
        "uninstall",
        "wxpush-operator",
        "-n",
        "wxpush-system",
        "--wait",
        "--timeout",
        "2m",
    ]);
    for (resource, ns, name) in &objects {
        wait_for(&format!("{resource} {ns}/{name} deleted"), WAIT, || async {
            match kubectl
                .run(&["get", resource, name, "-n", ns, "-o", "name"], None)
                .await
            {
                Err(e) if e.is_not_found() => Some(()),
                _ => None,
            }
        })
        .await;
    }
    assert!(
        kubectl
            .get_json("crd", "pushchannels.wxpush.io")
            .await
            .expect("kubectl")
            .is_some(),
        "Helm keeps the CRDs of crds/ on uninstall"
    );

    // Namespaced mode: Secrets readable in the watched namespace only.
    kubectl
        .run(&["create", "namespace", "other"], None)
        .await
        .expect("namespace");
    kubectl
        .apply(&example_secrets("other", &redis.url()))
        .await
        .expect("Secrets");
    cluster.helm(&[
        "install",
        "wxpush-operator",
        CHART,
        "-n",
        "wxpush-ns",
        "--create-namespace",
        "--set",
        "watchNamespaces={shop}",
        "--wait",
        "--timeout",
        "3m",
    ]);
    let sa_kubeconfig = cluster.service_account_kubeconfig("wxpush-ns", &sa).await;
    let as_operator = Kubectl::new(sa_kubeconfig.clone(), cluster.state().join("sa-ns-cache"));
    assert!(can_i(&as_operator, &["get", "secrets", "-n", "shop"]).await);
    for args in [
        &["get", "secrets", "-n", "other"][..],
        &["list", "secrets", "-n", "other"],
        &["watch", "secrets", "-n", "other"],
        &["get", "secrets", "-n", "wxpush-system"],
        &["list", "secrets", "--all-namespaces"],
    ] {
        assert!(
            !can_i(&as_operator, args).await,
            "the namespaced operator may {args:?}"
        );
    }
    // And it can do its job there.
    let op = cluster
        .operator_as_deployed(&sa_kubeconfig, "wxpush-ns", "wxpush-operator", "op-ns", &[])
        .await;
    change_rate(
        &kubectl,
        "shop",
        "payment-notify",
        555,
        "the namespaced operator applies the change",
    )
    .await;
    assert_eq!(op.terminate(Duration::from_secs(30)).await, Some(0));
}
