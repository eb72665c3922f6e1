//! The I/O side of the pod runner: watch the pods, read what they mount, write the files, start
//! and stop the pusher processes, and keep the `file_sd` targets in step.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::process::{Child, Command};

use super::spec::{self, Ports, ProcessSpec, SpecError};

/// How often the runner re-checks its pods and processes besides watch events.
const TICK: Duration = Duration::from_secs(1);
/// Wait before retrying a pod that could not start, or restarting one that exited.
const RETRY: Duration = Duration::from_secs(2);
/// Longest wait for a process to exit after SIGTERM when the runner itself stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Where the runner reads and writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder of the pods' files (`<state>/<namespace>/<pod>/…`).
    pub state: PathBuf,
    /// Folder of the Prometheus `file_sd` targets.
    pub prometheus_sd: PathBuf,
    /// The `wxpush-pusher` binary.
    pub pusher_bin: PathBuf,
}

/// What stops the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The watch of the pods ended.
    #[error("the pod watch ended")]
    WatchEnded,
    /// A folder could not be created.
    #[error("cannot create {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Why one pod's process did not start this time (retried).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot read {kind} {name}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
}

struct Running {
    key: String,
    child: Child,
    spec: ProcessSpec,
    sd_file: PathBuf,
}

/// Runs until `shutdown` resolves, then stops every process it started.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    for dir in [&options.state, &options.prometheus_sd] {
        std::fs::create_dir_all(dir).map_err(|e| RunError::Io(dir.clone(), e))?;
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(pods, watcher::Config::default())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut not_before: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    // The store holds every pod once the first list is done.
    let mut listed = false;
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            event = stream.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => listed = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("pod-runner: watch error (retrying): {e}"),
                None => break Err(RunError::WatchEnded),
            },
            _ = tick.tick() => {}
        }
        if !listed {
            continue;
        }
        let wanted: BTreeMap<String, Pod> = store
            .state()
            .iter()
            .filter(|p| spec::pusher_container(p).is_some() && spec::is_running_pod(p))
            .filter_map(|p| Some((p.metadata.uid.clone()?, Pod::clone(p))))
            .collect();
        // Stop what is no longer wanted, and notice processes that exited.
        let uids: Vec<String> = running.keys().cloned().collect();
        for uid in uids {
            let exited = running
                .get_mut(&uid)
                .and_then(|r| r.child.try_wait().ok().flatten());
            if !wanted.contains_key(&uid) {
                if let Some(r) = running.remove(&uid) {
                    eprintln!("pod-runner: stopping {} (pod gone or not Ready)", r.key);
                    remove_file(&r.sd_file);
                    tokio::spawn(stop(r, None));
                }
            } else if let Some(status) = exited
                && let Some(r) = running.remove(&uid)
            {
                eprintln!("pod-runner: {} exited ({status}); restarting", r.key);
                remove_file(&r.sd_file);
                not_before.insert(uid, Instant::now() + RETRY);
            }
        }
        not_before.retain(|uid, _| wanted.contains_key(uid));
        // Start what is wanted and not running.
        for (uid, pod) in &wanted {
            if running.contains_key(uid) || not_before.get(uid).is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            match start(&client, &options, pod, &key).await {
                Ok(r) => {
                    eprintln!(
                        "pod-runner: started {key}: pid {} api {} metrics {}",
                        r.child.id().unwrap_or_default(),
                        r.spec.listen,
                        r.spec.metrics_listen
                    );
                    running.insert(uid.clone(), r);
                }
                Err(e) => {
                    eprintln!("pod-runner: cannot start {key} yet: {}", chain(&e));
                    not_before.insert(uid.clone(), Instant::now() + RETRY);
                }
            }
        }
    };
    let stops: Vec<_> = running
        .drain()
        .map(|(_, r)| {
            eprintln!("pod-runner: stopping {} (runner shutting down)", r.key);
            remove_file(&r.sd_file);
            tokio::spawn(stop(r, Some(SHUTDOWN_GRACE)))
        })
        .collect();
    for s in stops {
        let _ = s.await;
    }
    result
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("pod-runner: cannot remove {}: {e}", path.display());
    }
}

/// SIGTERM, then SIGKILL after the pod's grace period (or `grace`).
async fn stop(mut r: Running, grace: Option<Duration>) {
    let grace = grace.unwrap_or(Duration::from_secs(r.spec.grace_period_secs));
    if let Some(pid) = r.child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(grace, r.child.wait()).await {
        Ok(Ok(status)) => eprintln!("pod-runner: {} stopped ({status})", r.key),
        _ => {
            let _ = r.child.kill().await;
            eprintln!("pod-runner: {} killed after {grace:?}", r.key);
        }
    }
}

async fn read_objects(
    client: &kube::Client,
    namespace: &str,
    pod: &Pod,
) -> Result<(BTreeMap<String, ConfigMap>, BTreeMap<String, Secret>), StartError> {
    let (cm_names, secret_names) = spec::referenced_objects(pod);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut config_maps = BTreeMap::new();
    for name in cm_names {
        let obj = cms
            .get_opt(&name)
            .await
            .map_err(|source| StartError::Read {
                kind: "ConfigMap",
                name: name.clone(),
                source,
            })?;
        if let Some(obj) = obj {
            config_maps.insert(name, obj);
        }
    }
    let mut secret_objs = BTreeMap::new();
    for name in secret_names {
        let obj = secrets
            .get_opt(&name)
            .await
            .map_err(|source| StartError::Read {
                kind: "Secret",
                name: name.clone(),
                source,
            })?;
        if let Some(obj) = obj {
            secret_objs.insert(name, obj);
        }
    }
    Ok((config_maps, secret_objs))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |e| StartError::Write(path.to_path_buf(), e);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("pod-runner-tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, std::io::Error> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

async fn start(
    client: &kube::Client,
    options: &Options,
    pod: &Pod,
    key: &str,
) -> Result<Running, StartError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let (config_maps, secrets) = read_objects(client, namespace, pod).await?;
    let port_err = |e| StartError::Write(PathBuf::from("127.0.0.1:0"), e);
    let ports = Ports {
        http: free_port().map_err(port_err)?,
        metrics: free_port().map_err(port_err)?,
    };
    let spec = spec::process_spec(pod, &config_maps, &secrets, &options.state, ports)?;
    for dir in &spec.dirs {
        std::fs::create_dir_all(dir).map_err(|e| StartError::Write(dir.clone(), e))?;
    }
    for f in &spec.files {
        write_file(&f.path, &f.contents, f.mode)?;
    }
    let pod_dir = options.state.join(namespace).join(name);
    let log_path = pod_dir.join("pusher.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| StartError::Write(log_path.clone(), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| StartError::Write(log_path.clone(), e))?;
    let mut cmd = Command::new(&options.pusher_bin);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&pod_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| StartError::Spawn(options.pusher_bin.clone(), e))?;
    let runner_info = serde_json::json!({
        "pid": child.id(),
        "listen": spec.listen.to_string(),
        "metricsListen": spec.metrics_listen.to_string(),
        "uid": pod.metadata.uid,
    });
    write_file(
        &pod_dir.join("runner.json"),
        runner_info.to_string().as_bytes(),
        0o644,
    )?;
    let sd_file = options
        .prometheus_sd
        .join(format!("{namespace}_{name}.json"));
    write_file(&sd_file, spec.sd_target.to_string().as_bytes(), 0o644)?;
    Ok(Running {
        key: key.to_string(),
        child,
        spec,
        sd_file,
    })
}
