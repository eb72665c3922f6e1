//! A real `redis-server` for the tests: on a free loopback port, with AOF on (`appendfsync
//! always`, so that a SIGKILL loses nothing acknowledged) in a temp folder, killed when
//! dropped. Also a 3-master Redis Cluster on loopback.
//!
//! `scripts/setup.sh` installs `redis-server`; a missing binary fails the test with a clear
//! message rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ChildGuard, free_port, wait_for};

/// Every server the tests start persists each write before it answers (AOF, fsync always) and
/// takes no RDB snapshots, so that a SIGKILL loses nothing Redis acknowledged.
const AOF: [&str; 6] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
];

fn redis_server() -> PathBuf {
    let path = which("redis-server");
    assert!(
        path.is_some(),
        "redis-server is not installed: run scripts/setup.sh (apt-get install redis-server redis-tools)"
    );
    path.unwrap_or_default()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Answers `PING` over RESP, or `None`.
pub async fn ping(port: u16) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"PING\r\n").await.ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf[..n].starts_with(b"+PONG").then_some(())
}

/// Runs one command with `redis-cli` against `port`, returning its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(which("redis-cli").expect("redis-cli is installed (redis-tools)"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    /// The process (killed on drop).
    pub guard: ChildGuard,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data folder (the AOF lives here).
    pub dir: PathBuf,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server with AOF on in a new temp folder.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::spawn(&dir, free_port(), Vec::new()).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server with extra arguments (e.g. `--requirepass`), AOF on, in a new temp
    /// folder. Readiness is awaited with an unauthenticated `PING`, which answers `-NOAUTH`
    /// when a password is set: only the server's listening is awaited then.
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_listening(extra, false).await
    }

    /// Starts a server that speaks TLS only (`rediss://`), with a certificate for 127.0.0.1
    /// signed by a CA (`ca.pem` in its folder), both made by `openssl`.
    pub async fn start_tls() -> Self {
        Self::start_listening(&[], true).await
    }

    async fn start_listening(extra: &[&str], tls: bool) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let mut cmd = Command::new(redis_server());
        if tls {
            let openssl = |args: &[&str]| {
                let ok = Command::new("openssl")
                    .current_dir(&dir)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("openssl runs");
                assert!(ok.success(), "openssl {args:?}");
            };
            // A CA (ca.pem, what a client trusts) and a server certificate for 127.0.0.1.
            openssl(
                &[
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ]
                .into_iter()
                .chain([
                    "-subj",
                    "/CN=wxpush-test-ca",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                ])
                .collect::<Vec<_>>(),
            );
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
            ]);
            std::fs::write(
                dir.join("server.ext"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .expect("extensions file");
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "cert.pem",
            ]);
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("key.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(AOF)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null());
        let guard = ChildGuard::spawn("redis-server", cmd);
        crate::wait_for_port(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(15),
        )
        .await;
        Self {
            guard,
            port,
            dir,
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
            _tmp: Some(tmp),
        }
    }

    async fn spawn(dir: &Path, port: u16, extra: Vec<String>) -> Self {
        let mut cmd = Command::new(redis_server());
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(AOF)
            .arg("--dir")
            .arg(dir)
            .args(&extra)
            .stdout(Stdio::null());
        let guard = ChildGuard::spawn("redis-server", cmd);
        wait_for(
            &format!("redis-server on port {port}"),
            Duration::from_secs(15),
            || ping(port),
        )
        .await;
        Self {
            guard,
            port,
            dir: dir.to_path_buf(),
            extra,
            _tmp: None,
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (nothing flushed beyond what the AOF already has).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Starts the server again on the same port and folder (it loads the AOF).
    pub async fn restart(&mut self) {
        self.guard.kill();
        let again = Self::spawn(&self.dir, self.port, self.extra.clone()).await;
        let Self { guard, .. } = again;
        self.guard = guard;
    }

    /// Makes sure the server dies with this process even if it is never dropped (a server
    /// shared by a whole test binary lives in a static): a small shell watches this process.
    pub fn reap_with_this_process(&self) {
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
            std::process::id(),
            self.guard.child.id()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = tmp.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let extra = vec![
                "--cluster-enabled".to_string(),
                "yes".to_string(),
                "--cluster-config-file".to_string(),
                dir.join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".to_string(),
                "2000".to_string(),
            ];
            nodes.push(RedisServer::spawn(&dir, free_port(), extra).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new(which("redis-cli").expect("redis-cli is installed (redis-tools)"))
            .args(&args)
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let port = nodes[0].port;
        wait_for("cluster_state:ok", Duration::from_secs(20), || async move {
            cli(port, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
                .then_some(())
        })
        .await;
        Self { nodes, _tmp: tmp }
    }

    /// See [`RedisServer::reap_with_this_process`].
    pub fn reap_with_this_process(&self) {
        for n in &self.nodes {
            n.reap_with_this_process();
        }
    }

    /// The seed URLs, comma-separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The Redis store's options for a test: one pod (`consumer`) of channel `c` under
/// `key_prefix` on the plain (not cluster) server at `url`, 10 messages at most, a minute's
/// retention and `claimIdle`, no default callback, no replica wait, events indexes on. A test
/// changes what it needs with `RedisOptions { field, ..store_options(…) }`.
pub fn store_options(
    url: String,
    key_prefix: &str,
    consumer: &str,
) -> wxpush_pusher::store::redis::RedisOptions {
    wxpush_pusher::store::redis::RedisOptions {
        url,
        cluster: false,
        key_prefix: key_prefix.into(),
        channel: "c".into(),
        consumer_group: "pushers".into(),
        consumer: consumer.into(),
        claim_idle: Duration::from_secs(60),
        max_messages: 10,
        retention: Duration::from_secs(60),
        default_callback: false,
        min_replicas_acked: 0,
        event_indexes: true,
    }
}

/// Waits (at most 20 s, while work in flight settles) for a clean consistency check of the
/// test channel's keys (`RedisStore::check_consistency`: leases without a pending entry,
/// final records without their indexes or callback, counters that disagree), through a store
/// of its own, and panics with the findings otherwise.
pub async fn assert_consistent(url: &str, cluster: bool, what: &str) {
    use wxpush_pusher::store::Store;
    use wxpush_pusher::store::redis::{RedisOptions, RedisStore};
    let check = || async {
        let store = RedisStore::connect(RedisOptions {
            url: url.to_string(),
            cluster,
            key_prefix: "wxpush".into(),
            channel: "engine-test".into(),
            consumer_group: "pushers".into(),
            consumer: format!(
                "checker-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            claim_idle: Duration::from_secs(60),
            max_messages: 1_000_000,
            retention: Duration::from_secs(3600),
            default_callback: true,
            min_replicas_acked: 0,
            // The test pushers take no events (no `events.token`), so they write no events
            // indexes, and the check must not look for them.
            event_indexes: false,
        })
        .await
        .expect("the checker connects");
        let findings = store.check_consistency().await.expect("the check runs");
        store.close().await;
        findings
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let findings = check().await;
        if findings.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the consistency check still finds {findings:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
