//! The operator's end-to-end harness: a Kubernetes API emulator (`tests/kube_emulator`, a layer
//! over the PyPI package `kmock`) started as a subprocess on a loopback port the OS picks, the
//! real `kubectl` pointed at it, and helpers that wait for objects to reach a state. `Kubectl`
//! and `OperatorProcess` also serve the real control plane (`crate::cluster`).
//!
//! ```no_run
//! # async fn demo() {
//! use wxpush_tests::kube::KubeEmulator;
//! let api = KubeEmulator::start().await;
//! let kubectl = api.kubectl();
//! kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").await.expect("apply");
//! let client = api.client().await; // a kube::Client for the same server
//! # drop(client);
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::{binary, python, wait_for, workspace_root};

/// How long the emulator may take to start (Python import plus binding a port).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one kubectl invocation may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);

/// The kubectl binary: `$KUBECTL`, else `kubectl` from `PATH`.
pub fn kubectl_binary() -> PathBuf {
    std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

/// A running emulator; it is killed when this is dropped.
#[derive(Debug)]
pub struct KubeEmulator {
    child: Child,
    // Held open: the emulator exits when it reaches EOF, so it cannot outlive a crashed test.
    _stdin: ChildStdin,
    url: String,
    dir: tempfile::TempDir,
}

impl KubeEmulator {
    /// Starts an emulator and installs this version's CRD (`crds/pushchannel.yaml`) with
    /// kubectl; returns both.
    pub async fn start_with_crd() -> (Self, Kubectl) {
        let api = Self::start().await;
        let kubectl = api.kubectl();
        kubectl
            .apply_file(&crate::workspace_root().join("crds/pushchannel.yaml"))
            .await
            .expect("apply the CRD");
        (api, kubectl)
    }

    /// Starts the emulator and waits until it accepts connections and its kubeconfig exists.
    ///
    /// Set `WXPUSH_EMULATOR_LOG=1` to see every request it serves on stderr.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut cmd = Command::new(python());
        cmd.arg("-m")
            .arg("kube_emulator")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--exit-on-stdin-eof")
            .arg("--request-log")
            .arg(dir.path().join("requests.jsonl"))
            .env("PYTHONPATH", workspace_root().join("tests"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if std::env::var_os("WXPUSH_EMULATOR_LOG").is_some_and(|v| v == "1") {
            cmd.arg("--log-requests");
        }
        if let Ok(interval) = std::env::var("WXPUSH_EMULATOR_BOOKMARK_SECS") {
            cmd.arg("--bookmark-interval").arg(interval);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the Kubernetes API emulator with {}: {e} (run scripts/setup.sh)",
                python().display()
            )
        });
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .expect("the emulator reports its address within 30s")
            .expect("the emulator's stdout is readable")
            .expect("the emulator printed its address (is kmock installed? run scripts/setup.sh)");
        let url = line
            .strip_prefix("kube-emulator listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the emulator: {line}"))
            .to_string();
        // Keep draining stdout so the emulator never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            _stdin: stdin,
            url,
            dir,
        }
    }

    /// The server's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The kubeconfig the emulator wrote for itself (context namespace `default`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubectl wrapper for this server, with a discovery cache of its own.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig(),
            cache_dir: self.dir.path().join("kubectl-cache"),
        }
    }

    /// A kube-rs client for this server, built from its kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("a readable kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a usable kubeconfig");
        kube::Client::try_from(config).expect("a kube client")
    }

    /// The emulator's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Every request served so far, oldest first: one JSON object per request with `method`,
    /// `path`, `query` (an object), `agent` (the User-Agent) and `status`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A running `wxpush-operator` (the real binary) pointed at an emulator or a real cluster; killed
/// when dropped.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    /// Where it serves `/metrics`, `/healthz` and `/readyz`.
    pub addr: std::net::SocketAddr,
}

impl OperatorProcess {
    /// Starts `wxpush-operator --listen 127.0.0.1:0 ARGS` with `KUBECONFIG` pointing at `api`
    /// and the extra environment `env`, and waits for its "listening" line.
    ///
    /// Panics when it exits before that (use [`OperatorProcess::run_to_exit`] to test refusals).
    pub async fn start(api: &KubeEmulator, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with_kubeconfig(&api.kubeconfig(), api.dir.path(), args, env).await
    }

    /// Like [`OperatorProcess::start`], for any cluster: `KUBECONFIG=kubeconfig`, `HOME=home`.
    pub async fn start_with_kubeconfig(
        kubeconfig: &Path,
        home: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Self::command(kubeconfig, home, args, env);
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("wxpush-operator starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .expect("the operator reports its address within 30s")
            .expect("the operator's stdout is readable")
            .expect("the operator printed its address before exiting");
        let addr = line
            .strip_prefix("wxpush-operator listening on http://")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the operator: {line}"));
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// Runs the operator until it exits (at most `timeout`); returns its exit code and stderr.
    pub async fn run_to_exit(
        api: &KubeEmulator,
        args: &[&str],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let mut cmd = Self::command(&api.kubeconfig(), api.dir.path(), args, &[]);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("wxpush-operator starts");
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the operator did not exit within {timeout:?}"))
            .expect("the operator's output is readable");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(kubeconfig: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(binary("wxpush-operator"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", home)
            // The PushChannels of most tests keep the default apiBaseUrl (WeChat itself), which
            // a test must never call: the credentials check is on only where a test passes
            // WXPUSH_OPERATOR_CHECK_CREDENTIALS=true and points apiBaseUrl at a sandbox.
            .env("WXPUSH_OPERATOR_CHECK_CREDENTIALS", "false")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The operator's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most `timeout`) for a graceful exit; returns the exit code.
    pub async fn terminate(mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => None,
        }
    }
}

/// A failed kubectl invocation.
#[derive(Debug)]
pub struct KubectlError {
    /// The arguments it ran with.
    pub args: Vec<String>,
    /// Its exit status, or `None` when it timed out.
    pub status: Option<i32>,
    /// What it printed on stderr.
    pub stderr: String,
}

impl std::fmt::Display for KubectlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(code) => write!(
                f,
                "kubectl {} exited with {code}: {}",
                self.args.join(" "),
                self.stderr
            ),
            None => write!(
                f,
                "kubectl {} timed out after {KUBECTL_TIMEOUT:?}",
                self.args.join(" ")
            ),
        }
    }
}

impl std::error::Error for KubectlError {}

impl KubectlError {
    /// Whether kubectl reported that the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.stderr.contains("(NotFound)")
    }
}

/// The real `kubectl`, pointed at one emulator.
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

impl Kubectl {
    /// kubectl for the cluster of `kubeconfig`, caching discovery in `cache_dir`.
    pub fn new(kubeconfig: PathBuf, cache_dir: PathBuf) -> Self {
        Self {
            kubeconfig,
            cache_dir,
        }
    }

    /// The kubeconfig it uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl --kubeconfig … ARGS`, feeding `stdin`; returns stdout.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, KubectlError> {
        let mut cmd = Command::new(kubectl_binary());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let err = |status: Option<i32>, stderr: String| KubectlError {
            args: args.iter().map(|a| a.to_string()).collect(),
            status,
            stderr,
        };
        let mut child = cmd.spawn().map_err(|e| {
            err(
                Some(-1),
                format!("cannot run {}: {e}", kubectl_binary().display()),
            )
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|e| err(Some(-1), format!("writing kubectl's stdin: {e}")))?;
        }
        let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| err(None, String::new()))?
            .map_err(|e| err(Some(-1), e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(err(
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// `kubectl apply --validate=false -f -` (the emulator serves no OpenAPI to validate with).
    pub async fn apply(&self, manifest: &str) -> Result<String, KubectlError> {
        self.run(&["apply", "--validate=false", "-f", "-"], Some(manifest))
            .await
    }

    /// `kubectl apply --validate=false -f PATH`.
    pub async fn apply_file(&self, path: &Path) -> Result<String, KubectlError> {
        let path = path.to_string_lossy();
        self.run(&["apply", "--validate=false", "-f", &path], None)
            .await
    }

    /// `kubectl get RESOURCE NAME -o json`; `None` when it does not exist.
    pub async fn get_json(
        &self,
        resource: &str,
        name: &str,
    ) -> Result<Option<Value>, KubectlError> {
        match self.get_args(&["get", resource, name, "-o", "json"]).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `kubectl get RESOURCE NAME -n NS -o json`.
    pub async fn get_in(
        &self,
        ns: &str,
        resource: &str,
        name: &str,
    ) -> Result<Value, KubectlError> {
        self.get_args(&["get", resource, name, "-n", ns, "-o", "json"])
            .await
    }

    /// Runs `args` (a `get … -o json`) and reads what kubectl printed as JSON.
    async fn get_args(&self, args: &[&str]) -> Result<Value, KubectlError> {
        let out = self.run(args, None).await?;
        serde_json::from_str(&out).map_err(|e| KubectlError {
            args: args.iter().map(|a| (*a).to_string()).collect(),
            status: Some(0),
            stderr: format!("kubectl printed something that is not JSON: {e}"),
        })
    }

    /// `kubectl get RESOURCE [-l SELECTOR] -o json`: the items.
    pub async fn list_json(
        &self,
        resource: &str,
        selector: Option<&str>,
    ) -> Result<Vec<Value>, KubectlError> {
        let mut args = vec!["get", resource, "-o", "json"];
        if let Some(sel) = selector {
            args.extend(["-l", sel]);
        }
        let out = self.run(&args, None).await?;
        let list: Value = serde_json::from_str(&out).map_err(|e| KubectlError {
            args: args.iter().map(|a| a.to_string()).collect(),
            status: Some(0),
            stderr: format!("kubectl printed something that is not JSON: {e}"),
        })?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// `kubectl get RESOURCE NAME -o jsonpath=EXPR`.
    pub async fn jsonpath(
        &self,
        resource: &str,
        name: &str,
        expr: &str,
    ) -> Result<String, KubectlError> {
        let output = format!("jsonpath={expr}");
        self.run(&["get", resource, name, "-o", &output], None)
            .await
    }

    /// `kubectl delete RESOURCE NAME --wait=false`.
    pub async fn delete(&self, resource: &str, name: &str) -> Result<(), KubectlError> {
        self.run(&["delete", resource, name, "--wait=false"], None)
            .await
            .map(|_| ())
    }

    /// Waits until `kubectl get RESOURCE NAME -o json` returns an object for which `pred` is
    /// true, and returns it. Panics after `timeout`, naming `what`.
    pub async fn wait_for_object<F>(
        &self,
        what: &str,
        resource: &str,
        name: &str,
        timeout: Duration,
        pred: F,
    ) -> Value
    where
        F: Fn(&Value) -> bool,
    {
        let pred = &pred;
        wait_for(what, timeout, || async move {
            match self.get_json(resource, name).await {
                Ok(Some(obj)) if pred(&obj) => Some(obj),
                _ => None,
            }
        })
        .await
    }

    /// Waits until `kubectl get RESOURCE NAME` says it does not exist.
    pub async fn wait_for_absent(&self, what: &str, resource: &str, name: &str, timeout: Duration) {
        wait_for(what, timeout, || async move {
            matches!(self.get_json(resource, name).await, Ok(None)).then_some(())
        })
        .await
    }
}

/// Whether `obj` has a controller owner reference to the object with `uid`.
pub fn owned_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["uid"] == uid && r["controller"] == Value::Bool(true))
        })
}

/// The `status` of the condition `type_` on `obj` (`"True"`, `"False"`, `"Unknown"`).
pub fn condition_status<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

/// Peak resident memory of a process in KiB (`VmHWM` in `/proc/PID/status`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
