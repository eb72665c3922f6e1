//! Schemathesis (PyPI, installed into `.venv` by `scripts/setup.sh`) against the running pusher's
//! own `/openapi.json`, with the bearer token and a bounded number of examples per operation:
//! no 5xx answer, and every answer matches the document (status code, content type, schema,
//! headers).
//!
//! Generated messages may carry any `callback_url` the pusher accepts, so the sandbox, the
//! pusher and Schemathesis run together in a network namespace of their own with only loopback
//! up (`unshare -n`): nothing the run makes the pusher do can reach another host.

use std::process::Command;

use serde_json::json;
use wxpush_tests::pusher::{TOKEN, config, tempdir};
use wxpush_tests::sandbox::{APPID, SECRET};
use wxpush_tests::{binary, capability};

/// Examples per operation (`WXPUSH_SCHEMATHESIS_EXAMPLES` overrides).
fn examples() -> String {
    std::env::var("WXPUSH_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into())
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = wxpush_tests::python().with_file_name("schemathesis");
    assert!(
        st.exists(),
        "{} is missing: run scripts/setup.sh (it installs tests/requirements.txt into .venv)",
        st.display()
    );
    // Without a namespace of its own the run could reach other hosts: it never runs outside one.
    let Some(()) = capability::require(
        "a network namespace (unshare -n needs root)",
        capability::runs("unshare", &["-n", "true"]),
    ) else {
        return;
    };
    let dir = tempdir();
    // A fresh namespace: these ports are free there.
    let cfg = config(
        "http://127.0.0.1:18081",
        dir.path(),
        &json!({"listen": "127.0.0.1:18080", "api": {"maxBatch": 20}}),
    );
    let cfg_path = dir.path().join("pusher.yaml");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write the config");
    let report = dir.path().join("schemathesis");
    let script = format!(
        r#"set -u
ip link set lo up
"{sandbox}" --listen 127.0.0.1:18081 --appid {APPID} --secret {SECRET} >/dev/null 2>&1 &
sb=$!
RUST_LOG=warn "{pusher}" serve --config "{cfg}" >/dev/null &
px=$!
"{st}" run http://127.0.0.1:18080/openapi.json --wait-for-schema 30 \
  -H "Authorization: Bearer {TOKEN}" --max-examples {n} --seed 12 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --phases examples,coverage,fuzzing --report-dir "{report}"
rc=$?
kill $px $sb
wait
exit $rc
"#,
        sandbox = binary("wxpush-sandbox").display(),
        pusher = binary("wxpush-pusher").display(),
        cfg = cfg_path.display(),
        st = st.display(),
        n = examples(),
        report = report.display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("unshare runs (checked above)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?})",
        out.status.code()
    );
    assert!(stdout.contains("passed"), "no summary: {stdout}");
}
