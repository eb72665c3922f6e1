//! Installing through Helm, into the Kubernetes API emulator, and **RBAC equals the calls**.
//!
//! helm-python-sdk's `install` cannot target the emulator (it serves no OpenAPI document, and
//! client-go sends core objects as protobuf, which kmock cannot decode), so the chart is
//! rendered with the real Helm library (`tests/helm/check_chart.py --render`, default values)
//! and the rendered manifests are applied with `kubectl apply`. The real operator binary then
//! runs with the flags and environment the rendered Deployment gives it, reconciles a
//! PushChannel into its children, a PodMonitor and a PrometheusRule (prometheus-operator's CRDs
//! are served), the events Ingress (deleted when the spec drops it) and, after a switch of
//! provider, a KEDA ScaledObject.
//!
//! Every request the operator made is taken from the emulator's request log and mapped to
//! (verb, group, resource, namespace). Each must be granted by the rendered Roles/ClusterRoles
//! bound to the chart's ServiceAccount, and each granted (group, resource, verb) must have been
//! used, except the short, commented list in [`NOT_EXERCISED`].

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wxpush_tests::kube::{KubeEmulator, OperatorProcess, condition_status};
use wxpush_tests::{wait_for, workspace_root};

const RELEASE_NAMESPACE: &str = "wxpush-system";
const WAIT: Duration = Duration::from_secs(60);

/// Rights the chart grants that this run may not exercise, and why.
const NOT_EXERCISED: &[(&str, &str, &str)] = &[
    // Events are patched only when the same Event repeats within kube-rs's series window, which
    // depends on timing (a run usually does repeat one).
    ("events.k8s.io", "events", "patch"),
];

fn helm_python() -> std::path::PathBuf {
    std::env::var_os("WXPUSH_HELM_PYTHON").map_or_else(
        || workspace_root().join(".venv-helm/bin/python"),
        std::path::PathBuf::from,
    )
}

/// The chart rendered with its default values, by the real Helm library.
fn render() -> Vec<Value> {
    let python = helm_python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/helm/check_chart.py"))
        .arg("--render")
        .current_dir(workspace_root())
        .output()
        .expect("check_chart.py --render runs");
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list of objects")
}

/// A CRD the operator detects (served, schema-less).
fn crd(group: &str, version: &str, kind: &str, plural: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.{group}}}\n\
         spec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: {plural}, singular: {s}, kind: {kind}, listKind: {kind}List}}\n  \
         versions:\n  - name: {version}\n    served: true\n    storage: true\n    subresources: {{status: {{}}}}\n    \
         schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n",
        s = kind.to_lowercase()
    )
}

fn secrets() -> &'static str {
    "apiVersion: v1\nkind: Secret\nmetadata: {name: payment-notify-wechat}\nstringData: {appId: wx0123456789abcdef, appSecret: s3cr3t, serverToken: t, encodingAesKey: k}\n---\n\
     apiVersion: v1\nkind: Secret\nmetadata: {name: payment-notify-auth}\nstringData: {token: tok}\n---\n\
     apiVersion: v1\nkind: Secret\nmetadata: {name: payment-notify-redis}\nstringData: {url: 'redis://r:6379'}\n---\n\
     apiVersion: v1\nkind: Secret\nmetadata: {name: payment-notify-callbacks}\nstringData: {signingKey: sk}\n"
}

type Call = (String, String, String, Option<String>);

/// (verb, group, resource incl. subresource, namespace) of every API request in `log`, as the
/// API server authorises it; discovery and other non-resource URLs are left out. A server-side
/// apply that creates its object needs `create` as well as `patch` on a real API server; the
/// emulator answers such an apply with 200, so the first successful apply of each object path
/// counts as a create (the operator is the only writer of its children).
fn calls_in(log: &[Value]) -> Vec<Call> {
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for req in log {
        let Some((verb, group, resource, ns)) = call_of(req) else {
            continue;
        };
        let ok = req["status"].as_u64().is_some_and(|s| s < 300);
        let path = req["path"].as_str().unwrap_or_default().to_string();
        if verb == "patch" && ok && !resource.contains('/') && applied.insert(path) {
            out.push(("create".into(), group.clone(), resource.clone(), ns.clone()));
        }
        out.push((verb, group, resource, ns));
    }
    out
}

fn call_of(req: &Value) -> Option<Call> {
    let path = req["path"].as_str()?;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _g, _v, rest @ ..] => rest,
        _ => return None,
    };
    let group = if parts[0] == "api" { "" } else { parts[1] };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return None,
    };
    let watch = req["query"]["watch"] == "true" || req["query"]["watch"] == "1";
    let verb = match (req["method"].as_str()?, name) {
        ("GET", _) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => return None,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    Some((verb.into(), group.into(), resource, namespace))
}

/// What the rendered RBAC grants the chart's ServiceAccount: (namespace or None for
/// cluster-wide, group, resource, verb).
fn grants(objs: &[Value], sa: &str) -> BTreeSet<(Option<String>, String, String, String)> {
    let mut out = BTreeSet::new();
    for b in objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let bound = b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == RELEASE_NAMESPACE
        });
        if !bound {
            continue;
        }
        let scope = (b["kind"] == "RoleBinding")
            .then(|| b["metadata"]["namespace"].as_str().expect("ns").to_string());
        let role = objs
            .iter()
            .find(|o| {
                o["kind"] == b["roleRef"]["kind"]
                    && o["metadata"]["name"] == b["roleRef"]["name"]
                    && (scope.is_none() || o["metadata"]["namespace"] == b["metadata"]["namespace"])
            })
            .expect("the bound role is rendered");
        for rule in role["rules"].as_array().expect("rules") {
            for g in rule["apiGroups"].as_array().expect("groups") {
                for r in rule["resources"].as_array().expect("resources") {
                    for v in rule["verbs"].as_array().expect("verbs") {
                        out.insert((
                            scope.clone(),
                            g.as_str().expect("g").to_string(),
                            r.as_str().expect("r").to_string(),
                            v.as_str().expect("v").to_string(),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_by_kubectl_and_its_rbac_equals_the_operators_calls() {
    let objs = render();
    let api = KubeEmulator::start().await;
    let kubectl = api.kubectl();
    // (The emulator needs no Namespace object before objects in it.)
    // prometheus-operator and KEDA are "installed": their CRDs are served.
    kubectl
        .apply(&crd(
            "monitoring.coreos.com",
            "v1",
            "PodMonitor",
            "podmonitors",
        ))
        .await
        .expect("PodMonitor CRD");
    kubectl
        .apply(&crd(
            "monitoring.coreos.com",
            "v1",
            "PrometheusRule",
            "prometheusrules",
        ))
        .await
        .expect("PrometheusRule CRD");
    kubectl
        .apply(&crd("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects"))
        .await
        .expect("ScaledObject CRD");

    // The rendered chart, applied as kubectl applies it.
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("chart.yaml");
    let text: String = objs
        .iter()
        .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).expect("yaml")))
        .collect();
    std::fs::write(&manifest, text).expect("write the manifests");
    kubectl
        .apply_file(&manifest)
        .await
        .expect("kubectl apply the rendered chart");
    let deployment: Value = serde_json::from_str(
        &kubectl
            .run(
                &[
                    "get",
                    "deployment.apps",
                    "wxpush-operator",
                    "-n",
                    RELEASE_NAMESPACE,
                    "-o",
                    "json",
                ],
                None,
            )
            .await
            .expect("the chart's Deployment was created"),
    )
    .expect("JSON");
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("a ServiceAccount");
    let found = kubectl
        .run(
            &[
                "get",
                "serviceaccount",
                sa,
                "-n",
                RELEASE_NAMESPACE,
                "-o",
                "name",
            ],
            None,
        )
        .await
        .expect("the chart's ServiceAccount exists in the release namespace");
    assert_eq!(found.trim(), format!("serviceaccount/{sa}"));
    let container = &pod["containers"][0];

    // The operator, with the Deployment's flags (but --listen, which the harness sets to a free
    // loopback port) and its environment (downward-API values filled in by hand).
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .filter(|a| !a.starts_with("--listen"))
        .collect();
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("name").to_string();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => RELEASE_NAMESPACE.to_string(),
            Some("metadata.name") => "wxpush-operator-7d9f-abcde".to_string(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap_or_default().to_string(),
        };
        env.push((name, value));
    }
    println!("operator args: {args:?}\nenv: {env:?}");
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let operator = OperatorProcess::start(&api, &arg_refs, &env_refs).await;

    kubectl.apply(secrets()).await.expect("Secrets");
    let channel = std::fs::read_to_string(workspace_root().join("examples/pushchannel-full.yaml"))
        .expect("example")
        .replace("namespace: shop", "namespace: default");
    kubectl.apply(&channel).await.expect("PushChannel");
    // And a channel on the embedded queue, whose volume claim the operator creates.
    kubectl
        .apply(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: order-notify-wechat}\nstringData: {appId: wxabc, appSecret: xyz}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: order-notify-auth}\nstringData: {token: tok}\n",
        )
        .await
        .expect("Secrets");
    let minimal =
        std::fs::read_to_string(workspace_root().join("examples/pushchannel-minimal.yaml"))
            .expect("example")
            .replace("namespace: shop", "namespace: default");
    kubectl.apply(&minimal).await.expect("PushChannel");
    kubectl
        .wait_for_object(
            "the volume claim",
            "persistentvolumeclaim",
            "order-notify-pusher-data",
            WAIT,
            |_| true,
        )
        .await;
    let pc = kubectl
        .wait_for_object(
            "Reconciled=True",
            "pushchannel",
            "payment-notify",
            WAIT,
            |o| condition_status(o, "Reconciled") == Some("True"),
        )
        .await;
    let uid = pc["metadata"]["uid"].as_str().expect("uid").to_string();
    let pm = kubectl
        .wait_for_object(
            "the PodMonitor",
            "podmonitor.monitoring.coreos.com",
            "payment-notify-pusher",
            WAIT,
            |_| true,
        )
        .await;
    assert!(wxpush_tests::kube::owned_by(&pm, &uid), "owned: {pm}");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let rule = kubectl
        .wait_for_object(
            "the PrometheusRule",
            "prometheusrule.monitoring.coreos.com",
            "payment-notify-pusher",
            WAIT,
            |_| true,
        )
        .await;
    assert!(wxpush_tests::kube::owned_by(&rule, &uid), "owned: {rule}");
    assert_eq!(
        rule["spec"]["groups"][0]["name"],
        "wxpush-default-payment-notify"
    );
    kubectl
        .wait_for_object(
            "the HPA",
            "horizontalpodautoscaler.v2.autoscaling",
            "payment-notify-pusher",
            WAIT,
            |_| true,
        )
        .await;

    // To KEDA and back: applies a ScaledObject and deletes the HPA, then the reverse.
    for (provider, present, absent) in [
        (
            "keda",
            "scaledobject.keda.sh",
            "horizontalpodautoscaler.v2.autoscaling",
        ),
        (
            "hpa",
            "horizontalpodautoscaler.v2.autoscaling",
            "scaledobject.keda.sh",
        ),
    ] {
        kubectl
            .run(
                &[
                    "patch",
                    "pushchannel",
                    "payment-notify",
                    "--type=merge",
                    "-p",
                    &format!(r#"{{"spec":{{"autoscaling":{{"provider":"{provider}"}}}}}}"#),
                ],
                None,
            )
            .await
            .expect("patch the provider");
        kubectl
            .wait_for_object(present, present, "payment-notify-pusher", WAIT, |_| true)
            .await;
        kubectl
            .wait_for_absent(absent, absent, "payment-notify-pusher", WAIT)
            .await;
    }

    // The events Ingress goes when the PushChannel stops asking for it.
    kubectl
        .wait_for_object(
            "the events Ingress",
            "ingress.networking.k8s.io",
            "payment-notify-pusher-events",
            WAIT,
            |_| true,
        )
        .await;
    kubectl
        .run(
            &[
                "patch",
                "pushchannel",
                "payment-notify",
                "--type=merge",
                "-p",
                r#"{"spec":{"eventsIngress":null}}"#,
            ],
            None,
        )
        .await
        .expect("drop eventsIngress");
    kubectl
        .wait_for_absent(
            "the events Ingress",
            "ingress.networking.k8s.io",
            "payment-notify-pusher-events",
            WAIT,
        )
        .await;

    // The Lease is renewed (update) at least once.
    let is_operator = |r: &Value| !r["agent"].as_str().unwrap_or("").starts_with("kubectl");
    wait_for("a Lease renewal", WAIT, || async {
        let log: Vec<Value> = api
            .requests()
            .into_iter()
            .filter(|r| is_operator(r))
            .collect();
        calls_in(&log)
            .into_iter()
            .any(|(v, _, r, _)| v == "update" && r == "leases")
            .then_some(())
    })
    .await;
    assert_eq!(operator.terminate(Duration::from_secs(30)).await, Some(0));

    // RBAC equals the calls.
    let log: Vec<Value> = api
        .requests()
        .into_iter()
        .filter(|r| is_operator(r))
        .collect();
    let calls: BTreeSet<Call> = calls_in(&log).into_iter().collect();
    assert!(
        !calls.is_empty(),
        "the request log holds the operator's calls"
    );
    let granted = grants(&objs, sa);
    println!("calls:");
    for c in &calls {
        println!("  {c:?}");
    }
    let allowed = |(verb, group, resource, ns): &(String, String, String, Option<String>)| {
        granted.iter().any(|(scope, g, r, v)| {
            g == group && r == resource && v == verb && (scope.is_none() || scope == ns)
        })
    };
    let denied: Vec<_> = calls.iter().filter(|c| !allowed(c)).collect();
    assert!(denied.is_empty(), "calls without a permission: {denied:?}");
    let used: BTreeMap<(String, String, String), usize> =
        calls.iter().fold(BTreeMap::new(), |mut m, (v, g, r, _)| {
            *m.entry((g.clone(), r.clone(), v.clone())).or_default() += 1;
            m
        });
    let unused: Vec<_> = granted
        .iter()
        .filter(|(scope, g, r, v)| {
            let exempt = NOT_EXERCISED.contains(&(g.as_str(), r.as_str(), v.as_str()));
            let hit = calls.iter().any(|(cv, cg, cr, cns)| {
                cg == g && cr == r && cv == v && (scope.is_none() || scope == cns)
            });
            !hit && !exempt
        })
        .collect();
    assert!(
        unused.is_empty(),
        "permissions never used: {unused:?} (used: {used:?})"
    );
}
