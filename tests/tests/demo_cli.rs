//! `wxpush-pusher demo` and the pusher's log output, as a user meets them: the real binary,
//! its output piped (no escape codes), on a terminal (tmux: the progress line moves), every
//! `--faults` mode ending all delivered with `0 lost`, and `serve` logs in a file (plain text,
//! or JSON lines with `--log-json`).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::{ChildGuard, binary, capability, free_port};

fn demo(args: &[&str]) -> Output {
    Command::new(binary("wxpush-pusher"))
        .arg("demo")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run wxpush-pusher demo")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The number in the table row that starts with `label`.
fn row(table: &str, label: &str) -> u64 {
    table
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.trim_start()[label.len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{table}"))
}

#[test]
fn piped_demo_writes_no_escape_codes_and_ends_with_the_summary() {
    let o = demo(&["--count", "300"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{out}\n{err}", o.status);
    assert!(
        !out.contains('\x1b') && !err.contains('\x1b'),
        "escape codes in piped output:\n{out:?}\n{err:?}"
    );
    assert!(
        out.contains("delivered 300/300, 0 lost"),
        "no summary in:\n{out}"
    );
    assert_eq!(row(&out, "lost"), 0);
    assert!(out.contains("--keep-running"), "mentions --keep-running");
}

/// `demo --provider wecomApp`: WeCom application messages through the same path, each one
/// received once by the sandbox's WeCom side.
#[test]
fn the_demo_runs_a_wecom_application_end_to_end() {
    let o = demo(&["--provider", "wecomApp", "--count", "300"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{out}\n{err}", o.status);
    assert!(
        out.contains("delivered 300/300, 0 lost"),
        "no summary in:\n{out}"
    );
    assert_eq!(row(&out, "lost"), 0);
    assert_eq!(row(&out, "received by WeChat (sandbox, unique)"), 300);
    let o = demo(&["--provider", "wecomRobot", "--count", "3"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "a robot is not a demo: {out}");
    assert!(err.contains("wecomRobot"), "{err}");
}

fn faults(mode: &str) -> String {
    let o = demo(&["--faults", mode, "--count", "300"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "--faults {mode}: exit {:?}\n{out}\n{err}",
        o.status
    );
    assert!(!out.contains('\x1b') && !err.contains('\x1b'));
    assert!(
        out.contains("delivered 300/300, 0 lost"),
        "--faults {mode}: no summary in:\n{out}"
    );
    assert_eq!(row(&out, "lost"), 0);
    assert_eq!(row(&out, "received by WeChat (sandbox, unique)"), 300);
    assert!(out.contains("fault injected"), "the table names the fault");
    // Fault runs last a few seconds: the plain progress lines show up on a pipe.
    assert!(
        err.contains("s] sent "),
        "--faults {mode}: no plain progress lines in:\n{err}"
    );
    out
}

#[test]
fn faults_outage_opens_the_breaker_and_loses_nothing() {
    let out = faults("outage");
    assert!(out.contains("outage: the WeChat sandbox refused every connection"));
    assert!(row(&out, "circuit breaker openings") >= 1, "{out}");
    assert!(row(&out, "retries") >= 1, "{out}");
}

#[test]
fn faults_tail_retries_timeouts_and_wechat_deduplicates() {
    let out = faults("tail");
    assert!(out.contains("slow tail"));
    // 3% of 300 sends hang: the chance that none does is 0.97^300 ≈ 1e-4. A hung send is
    // retried after its timeout or rescued by a hedged request (with few hangs, hedging can
    // take them all).
    assert!(
        row(&out, "retries") + row(&out, "hedged requests") >= 1,
        "{out}"
    );
    assert!(
        row(&out, "duplicates de-duplicated by client_msg_id") >= 1,
        "{out}"
    );
}

#[test]
fn faults_flaky_retries_and_loses_nothing() {
    let out = faults("flaky");
    assert!(out.contains("flaky link"));
    assert!(row(&out, "retries") >= 1, "{out}");
}

#[test]
fn faults_tokens_fetches_fresh_tokens() {
    let out = faults("tokens");
    assert!(out.contains("token trouble"));
    assert!(
        row(&out, "access_token fetches (pusher ok / sandbox calls)") >= 2,
        "{out}"
    );
    assert!(out.contains("40001 ×"), "{out}");
}

/// `--faults templates`: every 5th message breaks its template; those are refused at accept
/// (400), none reaches WeChat, and the rest are all delivered.
#[test]
fn faults_templates_refuses_bad_messages_at_accept_with_no_quota_spent() {
    let o = demo(&["--faults", "templates", "--count", "300", "--batch", "20"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{out}\n{err}", o.status);
    assert!(out.contains("template checks"), "{out}");
    assert_eq!(
        row(&out, "refused at accept (400 template_rule)"),
        60,
        "{out}"
    );
    assert_eq!(
        row(&out, "sends to WeChat for refused messages"),
        0,
        "{out}"
    );
    assert_eq!(row(&out, "accepted (202, stored)"), 240, "{out}");
    assert_eq!(
        row(&out, "received by WeChat (sandbox, unique)"),
        240,
        "{out}"
    );
    for rule in [
        "unknown_template ×12",
        "missing_keyword ×12",
        "too_long ×12",
        "bad_characters ×12",
        "line_break ×12",
    ] {
        assert!(out.contains(rule), "{rule} in:\n{out}");
    }
    assert!(out.contains("delivered 240/240, 0 lost"), "{out}");
}

/// A tmux server of this test's own (`-L`), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn capture(&self) -> String {
        let o = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "demo"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The counts on the progress line (`sent A/B · accepted C · delivered D`), if shown.
fn progress_counts(screen: &str) -> Option<(u64, u64)> {
    let line = screen
        .lines()
        .find(|l| l.contains("sent ") && l.contains(" · delivered "))?;
    let num = |key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((num("sent ")?, num(" · delivered ")?))
}

#[test]
fn progress_line_moves_on_a_terminal() {
    let Some(()) = capability::require(
        "tmux (scripts/setup.sh installs it)",
        capability::runs("tmux", &["-V"]),
    ) else {
        return;
    };
    let tmux = Tmux {
        socket: format!("wxpush-demo-test-{}", std::process::id()),
    };
    let bin = binary("wxpush-pusher");
    // Large enough for the debug build to take several seconds.
    let shell = format!(
        "{} demo --count 30000 --batch 100; echo DEMO-EXIT=$?; sleep 600",
        bin.display()
    );
    let ok = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "demo",
            "-x",
            "200",
            "-y",
            "50",
            &shell,
        ])
        .status()
        .expect("tmux new-session");
    assert!(ok.success(), "tmux new-session failed");

    let start = Instant::now();
    let limit = Duration::from_secs(120);
    let mut first = None;
    let mut screens = Vec::new();
    loop {
        let screen = tmux.capture();
        assert!(
            !screen.contains("DEMO-EXIT="),
            "the demo ended before the progress line was seen twice; screens:\n{}",
            screens.join("\n----\n")
        );
        if let Some(counts) = progress_counts(&screen) {
            match first {
                None => first = Some(counts),
                Some(f) if f != counts => {
                    assert!(
                        counts.1 >= f.1 && counts.0 >= f.0,
                        "counts went back: {f:?} then {counts:?}"
                    );
                    break;
                }
                Some(_) => {}
            }
        }
        screens.push(screen);
        assert!(
            start.elapsed() < limit,
            "no changing progress line within {limit:?}; screens:\n{}",
            screens.join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And it ends with the summary, exit 0.
    loop {
        let screen = tmux.capture();
        if screen.contains("DEMO-EXIT=") {
            assert!(screen.contains("DEMO-EXIT=0"), "{screen}");
            assert!(screen.contains("delivered 30000/30000, 0 lost"), "{screen}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "{screen}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pusher_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pusher.yaml");
    let config = json!({
        "listen": "127.0.0.1:0",
        "channel": "log-test",
        // Nothing listens there: the token fetch fails and says so in the log.
        "apiBaseUrl": format!("http://127.0.0.1:{}", free_port()),
        "credentials": {"appId": "wxlogtest", "appSecret": "secret"},
        "auth": {"token": "log-test-token-0123456789"},
        "queue": {"embedded": {"path": dir.join("queue").display().to_string()}},
        "shutdown": {"drainTimeout": "1s"},
    });
    std::fs::write(&path, config.to_string()).expect("write config");
    path
}

/// Runs `serve` with stderr to a file until it has logged `lines` lines, stops it (SIGTERM) and
/// returns the file's text.
fn serve_log(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = pusher_config(dir.path());
    let log_path = dir.path().join("pusher.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(binary("wxpush-pusher"));
    cmd.args(extra)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let mut guard = ChildGuard::spawn("wxpush-pusher serve", cmd);
    let start = Instant::now();
    while std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve logged nothing in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard.terminate();
    let _ = guard.child.wait();
    std::fs::read_to_string(&log_path).expect("read log")
}

#[test]
fn serve_logs_to_a_file_without_escape_codes() {
    let log = serve_log(&[]);
    assert!(
        !log.contains('\x1b'),
        "escape codes in the log file:\n{log:?}"
    );
    assert!(log.contains(" INFO ") || log.contains(" WARN "), "{log}");
}

#[test]
fn serve_log_json_writes_json_lines() {
    let log = serve_log(&["--log-json"]);
    assert!(!log.contains('\x1b'));
    let mut n = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        n += 1;
    }
    assert!(n >= 2, "{log}");
}
