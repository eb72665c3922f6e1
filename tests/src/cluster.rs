//! The real control plane for the operator's, the chart's and the autoscaling tests:
//! `scripts/cluster.sh up --state <temp dir>` (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok, prometheus, the metrics adapter and the pod runner on 127.0.0.1), and
//! `down` when the [`Cluster`] is dropped, also when a test fails.
//!
//! The first `up` on a machine builds the control plane from its Go modules (cached outside the
//! clone); a cluster that cannot be built or started fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::kube::{Kubectl, OperatorProcess};
use crate::workspace_root;

/// A running control plane; `scripts/cluster.sh down` when dropped.
#[derive(Debug)]
pub struct Cluster {
    state: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

fn cluster_sh() -> PathBuf {
    workspace_root().join("scripts/cluster.sh")
}

fn run_script(args: &[&str], state: &Path) -> Output {
    Command::new(cluster_sh())
        .args(args)
        .arg("--state")
        .arg(state)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/cluster.sh: {e}"))
}

impl Cluster {
    /// Starts a cluster in a fresh state folder and waits until every part is healthy.
    pub fn up() -> Self {
        let state = tempfile::Builder::new()
            .prefix("wxpush-cluster-")
            .tempdir()
            .expect("a temporary directory");
        let started = std::time::Instant::now();
        let out = run_script(&["up"], state.path());
        // From here on, Drop runs `down`, also when `up` failed half-way.
        let mut cluster = Self {
            state,
            env: BTreeMap::new(),
        };
        assert!(
            out.status.success(),
            "scripts/cluster.sh up failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("cluster up in {:.1?}", started.elapsed());
        let out = run_script(&["env"], cluster.state.path());
        assert!(
            out.status.success(),
            "scripts/cluster.sh env failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for key in ["KUBECONFIG", "WXPUSH_CLUSTER_BIN", "WXPUSH_PROMETHEUS_URL"] {
            assert!(
                cluster.env.contains_key(key),
                "scripts/cluster.sh env printed no {key}: {:?}",
                cluster.env
            );
        }
        cluster
    }

    /// A value `scripts/cluster.sh env` printed.
    pub fn env(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("scripts/cluster.sh env printed no {key}"))
    }

    /// The state folder (`<state>/pods/<namespace>/<pod>/` holds the pod runner's files).
    pub fn state(&self) -> &Path {
        self.state.path()
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.env("KUBECONFIG"))
    }

    /// A program of the control plane (`helm`, `kube-apiserver`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        Path::new(self.env("WXPUSH_CLUSTER_BIN")).join(name)
    }

    /// Prometheus' base URL.
    pub fn prometheus_url(&self) -> &str {
        self.env("WXPUSH_PROMETHEUS_URL")
    }

    /// kubectl as the cluster's admin.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(self.kubeconfig(), self.state().join("kubectl-cache"))
    }

    /// Runs the Helm CLI as the cluster's admin; panics unless it succeeds. Returns stdout.
    pub fn helm(&self, args: &[&str]) -> String {
        let out = self.helm_output(args);
        assert!(
            out.status.success(),
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the Helm CLI as the cluster's admin; whatever it answers.
    pub fn helm_output(&self, args: &[&str]) -> Output {
        let home = self.state().join("helm-home");
        Command::new(self.bin("helm"))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin("helm").display()))
    }

    /// A kubeconfig for the ServiceAccount `namespace/name`, holding a token the API server
    /// issued for it (`kubectl create token`): whoever uses it is under that account's RBAC.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let kubectl = self.kubectl();
        let token = kubectl
            .run(
                &["create", "token", name, "-n", namespace, "--duration=2h"],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("kubectl create token {namespace}/{name}: {e}"));
        let admin: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(self.kubeconfig()).expect("the admin kubeconfig"),
        )
        .expect("the admin kubeconfig is YAML");
        let cluster = admin["clusters"][0]["cluster"].clone();
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "wxpush", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": name, "context": {
                "cluster": "wxpush", "user": name, "namespace": namespace}}],
            "current-context": name,
        });
        let path = self.state().join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(&path, serde_yaml_ng::to_string(&kubeconfig).expect("YAML"))
            .expect("write the ServiceAccount's kubeconfig");
        path
    }

    /// Runs the real `wxpush-operator` on this host with `kubeconfig` (see
    /// [`Cluster::service_account_kubeconfig`]) and the args and environment the chart's
    /// Deployment `namespace/deployment` gives its container (but `--listen`, set to a free
    /// loopback port; `POD_NAME` is `identity`). `extra` args are appended.
    pub async fn operator_as_deployed(
        &self,
        kubeconfig: &Path,
        namespace: &str,
        deployment: &str,
        identity: &str,
        extra: &[&str],
    ) -> OperatorProcess {
        let d = self
            .kubectl()
            .run(
                &[
                    "get",
                    "deployment",
                    deployment,
                    "-n",
                    namespace,
                    "-o",
                    "json",
                ],
                None,
            )
            .await
            .expect("the chart's Deployment exists");
        let d: Value = serde_json::from_str(&d).expect("JSON");
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let mut args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .filter(|a| !a.starts_with("--listen"))
            .map(str::to_string)
            .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace.to_string(),
                Some("metadata.name") => identity.to_string(),
                Some(other) => panic!("the operator's Deployment reads fieldRef {other}"),
                None => e["value"].as_str().unwrap_or_default().to_string(),
            };
            env.push((name, value));
        }
        env.push(("POD_NAME".into(), identity.into()));
        let home = self.state().join(format!("home-{identity}"));
        std::fs::create_dir_all(&home).expect("a HOME for the operator");
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        OperatorProcess::start_with_kubeconfig(kubeconfig, &home, &arg_refs, &env_refs).await
    }

    /// The pod runner's record of a running pusher pod: `listen`, `metricsListen`, `pid`.
    pub fn pod_process(&self, namespace: &str, pod: &str) -> Option<Value> {
        let path = self
            .state()
            .join("pods")
            .join(namespace)
            .join(pod)
            .join("runner.json");
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// The names of the Ready pods in `namespace` (with the label selector `selector`, if any).
    pub async fn ready_pods(&self, namespace: &str, selector: Option<&str>) -> Vec<String> {
        let mut args = vec!["get", "pods", "-n", namespace, "-o", "json"];
        if let Some(s) = selector {
            args.extend(["-l", s]);
        }
        let out = self.kubectl().run(&args, None).await.expect("pods");
        let pods: Value = serde_json::from_str(&out).expect("JSON");
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| crate::kube::condition_status(p, "Ready") == Some("True"))
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until the pusher behind `pod` answers `/readyz`; its API address.
    pub async fn pusher_ready(&self, namespace: &str, pod: &str) -> String {
        let http = crate::sandbox::http();
        crate::wait_for(&format!("the pusher of {pod}"), WAIT, || async {
            let info = self.pod_process(namespace, pod)?;
            let listen = info["listen"].as_str()?.to_string();
            let ok = http
                .get(format!("http://{listen}/readyz"))
                .send()
                .await
                .ok()?
                .status()
                .is_success();
            ok.then_some(listen)
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = run_script(&["down"], self.state.path());
        if !out.status.success() {
            eprintln!(
                "scripts/cluster.sh down failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The objects the operator makes for the full example, all named `<channel>-pusher`.
pub const CHILDREN: [&str; 6] = [
    "configmap",
    "deployment",
    "service",
    "poddisruptionbudget",
    "horizontalpodautoscaler",
    "podmonitor.monitoring.coreos.com",
];

/// A cluster with the CRDs installed ([`install_crds`]) and namespace `ns` created.
pub async fn up_with_namespace(ns: &str) -> Cluster {
    let cluster = Cluster::up();
    install_crds(&cluster).await;
    cluster
        .kubectl()
        .run(&["create", "namespace", ns], None)
        .await
        .expect("namespace");
    cluster
}

/// Sets `spec.rateLimit.perSecond` of the PushChannel `channel` in `ns` (a merge patch) and
/// waits until the operator has written it into the pusher's config.
pub async fn change_rate(kubectl: &Kubectl, ns: &str, channel: &str, per_second: u32, what: &str) {
    let patch = format!(r#"{{"spec":{{"rateLimit":{{"perSecond":{per_second}}}}}}}"#);
    kubectl
        .run(
            &[
                "patch",
                "pushchannel",
                channel,
                "-n",
                ns,
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        )
        .await
        .expect("patch");
    wait_for_config(
        kubectl,
        ns,
        channel,
        &format!("perSecond: {per_second}"),
        what,
    )
    .await;
}

/// Waits until the pusher config that the operator wrote for `channel` in `ns` contains
/// `needle` (a spec change has been applied).
pub async fn wait_for_config(kubectl: &Kubectl, ns: &str, channel: &str, needle: &str, what: &str) {
    let cm = format!("{channel}-pusher");
    crate::wait_for(what, WAIT, || async {
        let data = kubectl
            .run(
                &[
                    "get",
                    "configmap",
                    &cm,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.data.pusher\\.yaml}",
                ],
                None,
            )
            .await
            .ok()?;
        data.contains(needle).then_some(())
    })
    .await;
}

/// How long the API server may take to act on something (a controller's reaction, kwok's
/// Ready, the operator's reconcile).
pub const WAIT: Duration = Duration::from_secs(90);

/// The full example (`examples/pushchannel-full.yaml`) in namespace `ns`, pointed at this host:
/// `apiBaseUrl` is the sandbox, the callback URL (a cluster Service name) and its signing key
/// are left out, and `extra_spec` is merged into the spec.
pub fn full_example(ns: &str, api_base_url: &str, extra_spec: &Value) -> String {
    let mut pc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/pushchannel-full.yaml"))
            .expect("the full example"),
    )
    .expect("YAML");
    pc["metadata"]["namespace"] = ns.into();
    let spec = &mut pc["spec"];
    spec["apiBaseUrl"] = api_base_url.into();
    if let Some(callbacks) = spec["callbacks"].as_object_mut() {
        callbacks.remove("url");
        callbacks.remove("signingKey");
    }
    merge(spec, extra_spec);
    serde_yaml_ng::to_string(&pc).expect("YAML")
}

/// Merges `patch` into `target` (objects key by key, anything else replaced).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The full example's Secrets in `ns`: the sandbox's appid and secret, the producers' token
/// `tok`, and `redis_url`.
pub fn example_secrets(ns: &str, redis_url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-wechat, namespace: {ns}}}\nstringData: {{appId: {}, appSecret: {}, serverToken: t, encodingAesKey: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-auth, namespace: {ns}}}\nstringData: {{token: {EXAMPLE_TOKEN}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-redis, namespace: {ns}}}\nstringData: {{url: '{redis_url}'}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: payment-notify-callbacks, namespace: {ns}}}\nstringData: {{signingKey: sk}}\n",
        crate::sandbox::APPID,
        crate::sandbox::SECRET
    )
}

/// The producers' bearer token in [`example_secrets`].
pub const EXAMPLE_TOKEN: &str = "tok";

/// Applies `crds/pushchannel.yaml` (and waits until it is established) and prometheus-operator's
/// PodMonitor CRD (server-side: it is too large for the last-applied annotation).
pub async fn install_crds(cluster: &Cluster) {
    let kubectl = cluster.kubectl();
    let crd = workspace_root().join("crds/pushchannel.yaml");
    kubectl
        .run(&["apply", "-f", &crd.to_string_lossy()], None)
        .await
        .expect("the API server accepts the CRD (its CEL rules fit the cost budget)");
    kubectl
        .run(
            &[
                "wait",
                "--for=condition=Established",
                "crd/pushchannels.wxpush.io",
                "--timeout=60s",
            ],
            None,
        )
        .await
        .expect("the CRD is established");
    install_pod_monitor_crd(cluster).await;
}

/// prometheus-operator's PodMonitor CRD, from the module `scripts/cluster.sh build` fetched.
pub async fn install_pod_monitor_crd(cluster: &Cluster) {
    let crds = cluster.env("WXPUSH_PROMETHEUS_OPERATOR_CRDS").to_string();
    cluster
        .kubectl()
        .run(
            &[
                "apply",
                "--server-side",
                "-f",
                &format!("{crds}/monitoring.coreos.com_podmonitors.yaml"),
            ],
            None,
        )
        .await
        .expect("the PodMonitor CRD");
}
