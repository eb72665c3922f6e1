//! Secrets of the pusher's config (issue 25): `check-config` reads every secret source exactly
//! as `serve` does and fails wherever `serve` would; secrets are trimmed alike from every
//! source; a token file swapped as the kubelet swaps a mounted Secret (symlink flip, same
//! modification time) takes effect within one reload period.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpush_tests::pusher::{Api, PusherProc, TOKEN, config, merge, tempdir, template};
use wxpush_tests::{binary, capability, wait_for};

const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const UNSET_VAR: &str = "WXPUSH_TEST_SURELY_UNSET_VARIABLE";

/// `wxpush-pusher check-config`: (exit code, stderr).
fn check_config(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove(UNSET_VAR)
        .output()
        .expect("check-config runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wxpush-pusher serve`, which must exit by itself: (exit code, stderr). A pusher that starts
/// serving instead is killed and reported as such.
fn serve_must_exit(path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(binary("wxpush-pusher"))
        .args(["serve", "--config"])
        .arg(path)
        .env_remove(UNSET_VAR)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (Some(0), "serve kept running".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every secret field of the config, each with the sources `serve` refuses: a missing file,
/// an empty value, an unset variable, and values that cannot be used. `check-config` must
/// fail on each, naming the field, exactly where `serve` does.
#[test]
fn check_config_fails_wherever_serve_would_for_every_secret_field() {
    let dir = tempdir();
    let empty = dir.path().join("empty-file");
    std::fs::write(&empty, "\n").expect("write");
    let missing = "/nonexistent/wxpush-secret";
    let redis = |url: Value| json!({"queue": {"embedded": null, "redis": {"url": url}}});
    let events =
        |token: Value, key: Value| json!({"events": {"token": token, "encodingAesKey": key}});
    let cases: Vec<(&str, Value)> = vec![
        ("credentials.appId", json!({"credentials": {"appId": ""}})),
        (
            "credentials.appId",
            json!({"credentials": {"appId": null, "appIdFile": missing}}),
        ),
        (
            "credentials.appSecret",
            json!({"credentials": {"appSecret": " "}}),
        ),
        (
            "credentials.appSecret",
            json!({"credentials": {"appSecret": null, "appSecretFile": missing}}),
        ),
        (
            "credentials.appSecret",
            json!({"credentials": {"appSecret": null, "appSecretFile": empty}}),
        ),
        (
            "auth.token",
            json!({"auth": {"token": null, "tokenFile": missing}}),
        ),
        (
            "auth.token",
            json!({"auth": {"token": null, "tokenFile": empty}}),
        ),
        (
            "events.token",
            json!({"events": {"token": {"file": missing}}}),
        ),
        ("events.token", json!({"events": {"token": ""}})),
        (
            "events.token",
            json!({"events": {"token": {"env": UNSET_VAR}}}),
        ),
        (
            "events.encodingAesKey",
            events(json!("t"), json!({"file": missing})),
        ),
        ("events.encodingAesKey", events(json!("t"), json!(""))),
        (
            "events.encodingAesKey",
            events(json!("t"), json!("too-short")),
        ),
        (
            "events.encodingAesKey",
            json!({"events": {"token": "t", "mode": "safe"}}),
        ),
        (
            "events.mode",
            json!({"events": {"token": "t", "mode": "plain", "encodingAesKey": AES_KEY}}),
        ),
        (
            "callbacks.signingKey",
            json!({"callbacks": {"signingKey": ""}}),
        ),
        (
            "callbacks.signingKey",
            json!({"callbacks": {"signingKey": {"file": missing}}}),
        ),
        (
            "callbacks.signingKey",
            json!({"callbacks": {"signingKey": {"env": UNSET_VAR}}}),
        ),
        ("queue.redis.url", redis(json!({"file": missing}))),
        ("queue.redis.url", redis(json!(""))),
        (
            "queue.redis.url",
            redis(json!("redis://:p@ss#word@127.0.0.1:1")),
        ),
    ];
    // The base config is valid: each case breaks exactly one field.
    let base = config("http://127.0.0.1:9", dir.path(), &json!({}));
    let path = dir.path().join("base.yaml");
    std::fs::write(&path, base.to_string()).expect("write");
    let (code, err) = check_config(&path);
    assert_eq!(code, Some(0), "the base config: {err}");

    for (i, (field, patch)) in cases.iter().enumerate() {
        let mut cfg = base.clone();
        merge(&mut cfg, patch);
        let path = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&path, cfg.to_string()).expect("write");
        let (served, serve_err) = serve_must_exit(&path);
        assert_ne!(
            served,
            Some(0),
            "case {i} ({field}): serve did not fail: {serve_err}"
        );
        assert!(
            serve_err.contains(field),
            "case {i}: serve does not name {field}: {serve_err}"
        );
        let (checked, check_err) = check_config(&path);
        assert_eq!(
            checked,
            Some(1),
            "case {i} ({field}): check-config passed: {patch}"
        );
        assert!(
            check_err.contains(field),
            "case {i}: check-config does not name {field}: {check_err}"
        );
        for secret in ["p@ss#word", "too-short"] {
            assert!(
                !check_err.contains(secret) && !serve_err.contains(secret),
                "case {i}: a secret value was printed"
            );
        }
        if patch.to_string().contains("nonexistent") {
            assert!(
                check_err.contains("No such file or directory"),
                "case {i}: no reason given: {check_err}"
            );
        }
    }
}

/// `WXPUSH_AUTH_TOKEN` with a trailing newline (what `kubectl create secret --from-file` and
/// many CI systems produce) is trimmed like a file token: producers presenting the token get
/// in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_token_from_the_environment_with_a_trailing_newline_works() {
    let (_sb, sb_url) = wxpush_tests::sandbox::spawn(&["--daily-quota", "unlimited"]);
    let dir = tempdir();
    let mut cfg = config(&sb_url, dir.path(), &json!({}));
    merge(
        &mut cfg,
        &json!({"auth": {"token": "a-different-token-in-the-file"}}),
    );
    let path = dir.path().join("pusher.yaml");
    std::fs::write(&path, cfg.to_string()).expect("write");
    let with_newline = format!("{TOKEN}\n");
    let pusher = PusherProc::start_with(&path, &[("WXPUSH_AUTH_TOKEN", &with_newline)]).await;
    let (code, body) = pusher.api.send(&template("env-token-user")).await;
    assert_eq!(code, 202, "{body}");
}

/// Lays out `dir` as the kubelet does for a mounted Secret and publishes `value` as a new
/// version: `token -> ..data/token`, `..data -> ..VERSION`, swapped by renaming a fresh
/// `..data_tmp` symlink over `..data`. Every version's file gets the same modification time.
fn publish(dir: &Path, version: &str, value: &str) {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir(&v).expect("version dir");
    let f = v.join("token");
    std::fs::write(&f, value).expect("write");
    let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .and_then(|h| h.set_modified(mtime))
        .expect("set mtime");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("flip ..data");
    let link = dir.join("token");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/token", &link).expect("key symlink");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_swapped_as_kubernetes_swaps_it_takes_effect_within_a_reload_period() {
    let (_sb, sb_url) = wxpush_tests::sandbox::spawn(&["--daily-quota", "unlimited"]);
    let dir = tempdir();
    let mount = dir.path().join("auth");
    std::fs::create_dir(&mount).expect("mount dir");
    publish(&mount, "2026_01_01_00_00_00.1", &format!("{TOKEN}\n"));
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"auth": {"token": null, "tokenFile": mount.join("token")}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let (code, _) = pusher.api.send(&template("rotation-a")).await;
    assert_eq!(code, 202);

    let rotated = "a-rotated-token-9876543210";
    publish(&mount, "2026_01_01_00_00_00.2", rotated);
    let new_api = Api::new(&pusher.base, rotated);
    // The reload period is 1 s; allow a few for a loaded machine.
    wait_for("the rotated token accepted", Duration::from_secs(5), || {
        let api = new_api.clone();
        async move {
            let (code, _) = api.send(&template("rotation-b")).await;
            (code == 202).then_some(())
        }
    })
    .await;
    let (code, _) = pusher.api.send(&template("rotation-c")).await;
    assert_eq!(code, 401, "the old token still works after the swap");
}

/// Issue 25: `/healthz` needs no token, so it must not show WeChat's errmsg (for 40164 it
/// names the caller's IP). A pusher with a wrong app secret is held by 40125: `/healthz` and
/// `/readyz` say one word; `/v1/status` (token) and the metrics carry the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_health_carries_no_errmsg() {
    let (_sb, sb_url) = wxpush_tests::sandbox::spawn(&["--daily-quota", "unlimited"]);
    let dir = tempdir();
    let cfg = config(
        &sb_url,
        dir.path(),
        &json!({"credentials": {"appSecret": "a-wrong-secret"}}),
    );
    let pusher = PusherProc::start(dir.path(), &cfg).await;
    let (code, _) = pusher.api.send(&template("held-user")).await;
    assert_eq!(code, 202);
    let api = pusher.api.clone();
    let body = wait_for("sending on hold", Duration::from_secs(20), || {
        let api = api.clone();
        async move {
            let (_, body) = api.raw_get("/healthz").await;
            body.contains("on_hold").then_some(body)
        }
    })
    .await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v, json!({"status": "on_hold"}), "{body}");
    let (code, body) = pusher.api.raw_get("/readyz").await;
    assert_eq!((code, body.trim()), (200, r#"{"status":"ok"}"#));

    let anonymous = reqwest::get(format!("{}/v1/status", pusher.base))
        .await
        .expect("answers");
    assert_eq!(anonymous.status().as_u16(), 401);
    let (code, status) = pusher.api.get("/v1/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["sending"], "on_hold", "{status}");
    assert_eq!(status["hold"]["errcode"], 40125, "{status}");
    assert!(
        status["hold"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("40125")),
        "{status}"
    );
    assert_eq!(
        pusher.api.metric("wxpush_channel_hold_errcode", &[]).await,
        40125.0
    );
}

/// Issue 23 ("Config"): `check-config` lists every missing required field in one run (here
/// three, with no made-up line), names a misspelt nested key with the nearest known key and its
/// line, and says why a file cannot be read.
#[test]
fn check_config_lists_every_missing_field_suggests_keys_and_says_why_a_file_fails() {
    let dir = tempdir();
    let path = dir.path().join("pusher.yaml");
    std::fs::write(
        &path,
        "# listen and the API address only\nlisten: 127.0.0.1:0\napiBaseUrl: http://127.0.0.1:9\n",
    )
    .expect("write");
    let (code, err) = check_config(&path);
    assert_eq!(code, Some(1), "{err}");
    for field in ["credentials.appId", "credentials.appSecret", "auth.token"] {
        assert!(
            err.contains(&format!("{field}: required, not set")),
            "{field}: {err}"
        );
    }
    assert!(!err.contains("line"), "a missing field has no line: {err}");

    // The environment alone supplies them: no `credentials: {}` / `auth: {}` stubs.
    let out = Command::new(binary("wxpush-pusher"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env("WXPUSH_APP_ID", "wx0123456789abcdef")
        .env("WXPUSH_APP_SECRET", "s3cret")
        .env("WXPUSH_AUTH_TOKEN", "a-long-enough-token-from-env\n")
        .env("WXPUSH_QUEUE_PATH", dir.path().join("queue"))
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let typo = dir.path().join("typo.yaml");
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str(
        "credentials: {appId: wx1, appSecret: s}\nauth: {token: a-long-enough-token-123}\n",
    );
    text.push_str("retry:\n  initialBackof: 1s\n");
    std::fs::write(&typo, text).expect("write");
    let (code, err) = check_config(&typo);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("retry.initialBackof: unknown field; did you mean `initialBackoff`? (line 7)"),
        "{err}"
    );

    let (code, err) = check_config(&dir.path().join("nope.yaml"));
    assert_eq!(code, Some(1));
    assert!(err.contains("No such file or directory"), "{err}");

    // Permission denied needs another user than root to be seen.
    std::fs::set_permissions(&typo, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let Some(()) = capability::require(
        "root (the permission-denied case runs the pusher as another user)",
        capability::root(),
    ) else {
        return;
    };
    let out = std::os::unix::process::CommandExt::uid(
        Command::new(binary("wxpush-pusher"))
            .args(["check-config", "--config"])
            .arg(&typo),
        65534,
    )
    .output()
    .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}
