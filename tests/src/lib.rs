//! Shared harness for wxpush's end-to-end tests: find the workspace's real binaries, spawn them
//! on loopback ports the OS picks, and wait for conditions instead of sleeping.
//!
//! Each area of the product keeps its own helpers in a module of its own below.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

/// The folder cargo writes this profile's binaries to (`target/debug` for `cargo test`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("a test knows its own path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, built by `cargo build --workspace --bins` (`scripts/test.sh` does
/// it before `cargo test`: cargo builds a package's binaries only for its own integration tests).
///
/// Panics with a clear message when the binary was not built, instead of running a stale one.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests \
         (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The Python interpreter for the tests' Python tools (verifiers, the Kubernetes API
/// emulator): `$WXPUSH_PYTHON`, else the workspace's `.venv` (made by `scripts/setup.sh`), else
/// `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WXPUSH_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A port on 127.0.0.1 that was free a moment ago. Prefer letting a server bind port 0 and
/// report its address; use this only for programs that cannot.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a loopback port")
}

/// Polls `cond` every 20 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    wait_for(&format!("a listener on {addr}"), timeout, || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// A spawned process that is killed when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct ChildGuard {
    /// The running process.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl ChildGuard {
    /// Spawns `cmd`, inheriting stderr so its logs show up in a failing test's output.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            name: name.to_string(),
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

pub mod capability;
pub mod cluster;
pub mod crd_schema;
pub mod docs;
pub mod hpa;
pub mod kube;
pub mod pod_runner;
pub mod pusher;
pub mod redis;
pub mod sandbox;
pub mod wecom;
