//! Schemathesis (PyPI, installed into `.venv` by `scripts/setup.sh`) against the running pusher's
//! own `/openapi.json`, with the bearer token and a bounded number of examples per operation:
//! no 5xx answer, and every answer matches the document (status code, content type, schema).

use std::process::Command;

use serde_json::json;
use wxpush_tests::pusher::{PusherProc, TOKEN, config, tempdir};
use wxpush_tests::sandbox;

/// Examples per operation (`WXPUSH_SCHEMATHESIS_EXAMPLES` overrides).
fn examples() -> String {
    std::env::var("WXPUSH_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let python = wxpush_tests::python();
    let st = python.with_file_name("schemathesis");
    assert!(
        st.exists(),
        "{} is missing: run scripts/setup.sh (it installs tests/requirements.txt into .venv)",
        st.display()
    );
    let (_sb, sb_url) = sandbox::spawn(&[]);
    let dir = tempdir();
    let pusher = PusherProc::start(
        dir.path(),
        &config(&sb_url, dir.path(), &json!({"api": {"maxBatch": 20}})),
    )
    .await;
    let report = dir.path().join("schemathesis");
    let schema = format!("{}/openapi.json", pusher.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["run", &schema])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--max-examples", &examples()])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--seed", "12"])
            .arg("--report-dir")
            .arg(&report)
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("joins");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?})",
        out.status.code()
    );
}
