//! `wxpush-pusher check-config --online` against the real `wxpush-sandbox` binary: right
//! credentials pass; a wrong secret (40125), a wrong appid (40013), an address that is not on the
//! account's IP allowlist (40164, the sandbox's `--ip-allowlist`) and an endpoint nobody listens
//! on are each named in one line with the fix, and each check costs one token call.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use wxpush_tests::sandbox::{APPID, SECRET, spawn};
use wxpush_tests::{binary, free_port, pusher};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check_online(dir: &Path, sandbox: &str, overrides: &Value) -> Run {
    let config = pusher::config(sandbox, dir, overrides);
    let path = dir.join("pusher.yaml");
    std::fs::write(&path, config.to_string()).expect("write the config");
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--online", "--config"])
        .arg(&path)
        .output()
        .expect("check-config runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn stable_calls(sandbox: &str) -> u64 {
    let stats: Value = wxpush_tests::sandbox::http()
        .get(format!("{sandbox}/__stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    stats["token_calls"]["stable"]
        .as_u64()
        .expect("stable count")
}

/// One failing check: exit 1, exactly one line on stderr that holds every `needles`, and
/// neither the secret nor a token anywhere.
fn assert_one_line(run: &Run, secret: &str, needles: &[&str]) {
    assert_eq!(
        run.code,
        Some(1),
        "stdout: {} stderr: {}",
        run.stdout,
        run.stderr
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in: {}", lines[0]);
    }
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
}

#[tokio::test]
async fn check_config_online_names_each_setup_fault_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sandbox, base) = spawn(&[]);

    let ok = check_online(dir.path(), &base, &json!({}));
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.lines().any(|l| l
            == format!(
                "# credentials: ok: WeChat issued an access_token for appid {APPID}: the \
                 credentials work from here"
            )),
        "{}",
        ok.stdout
    );
    assert!(!ok.stdout.contains(SECRET));
    assert_eq!(stable_calls(&base).await, 1, "one token call per check");

    let wrong = "not-the-secret-0000";
    let run = check_online(
        dir.path(),
        &base,
        &json!({"credentials": {"appSecret": wrong}}),
    );
    assert_one_line(
        &run,
        wrong,
        &[
            "errcode 40125",
            APPID,
            "set the account's current AppSecret",
        ],
    );
    assert_eq!(stable_calls(&base).await, 2);

    let run = check_online(
        dir.path(),
        &base,
        &json!({"credentials": {"appId": "wxnotmyappid00000"}}),
    );
    assert_one_line(
        &run,
        SECRET,
        &["errcode 40013", "wxnotmyappid00000", "copy the appid again"],
    );

    // An account whose allowlist holds another address: WeChat names the caller's.
    let (_strict, strict_base) = spawn(&["--ip-allowlist", "203.0.113.7"]);
    let run = check_online(dir.path(), &strict_base, &json!({}));
    assert_one_line(
        &run,
        SECRET,
        &[
            "errcode 40164",
            "from 127.0.0.1",
            "add 127.0.0.1 to the IP allowlist",
        ],
    );
    assert_eq!(stable_calls(&strict_base).await, 1);

    // Nobody listens there.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let run = check_online(dir.path(), &closed, &json!({}));
    assert_one_line(
        &run,
        SECRET,
        &[
            &format!("cannot reach {closed}/cgi-bin/stable_token"),
            "connection failed",
            "check apiBaseUrl",
        ],
    );
}

#[tokio::test]
async fn check_config_without_online_makes_no_token_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sandbox, base) = spawn(&[]);
    let config = pusher::config(&base, dir.path(), &json!({}));
    let path = dir.path().join("pusher.yaml");
    std::fs::write(&path, config.to_string()).expect("write");
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config runs");
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("# credentials:"));
    assert_eq!(stable_calls(&base).await, 0);
}

/// A `wecomApp` channel's check asks WeCom's `gettoken` once: right credentials pass, a wrong
/// secret is named by WeCom's errcode in one line without the secret.
#[tokio::test]
async fn check_config_online_fetches_one_wecom_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sandbox, base) = spawn(&[]);
    let wecom = |secret: &str| {
        json!({"provider": "wecomApp",
               "credentials": {"appId": null, "appSecret": null, "corpId": "wwcorp",
                               "corpSecret": secret, "agentId": "1000002"}})
    };
    let ok = check_online(dir.path(), &base, &wecom("wecom-secret"));
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout
            .contains("# credentials: ok: WeCom issued an access_token"),
        "{}",
        ok.stdout
    );
    let bad = check_online(dir.path(), &base, &wecom("not-the-wecom-secret"));
    assert_one_line(&bad, "not-the-wecom-secret", &["40001"]);
    let stats: Value = wxpush_tests::sandbox::http()
        .get(format!("{base}/__stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    assert_eq!(
        stats["wecom"]["apps"]["1000002"]["token_fetches"], 1,
        "one fetch for the good check: {stats}"
    );
}
