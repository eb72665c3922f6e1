//! The `wxpush-sandbox` binary: `--help` documents every flag, so does docs/sandbox.md, flags
//! reach the behaviour, and it stops on SIGTERM.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use wxpush_tests::sandbox::{APPID, EventReceiver, WxClient, errcode, python_verify, spawn};
use wxpush_tests::{binary, docs, wait_for};

const FLAGS: &[&str] = &[
    "--listen",
    "--appid",
    "--secret",
    "--account-id",
    "--token-expires-in",
    "--classic-grace",
    "--stable-renew-before",
    "--classic-token-daily-quota",
    "--stable-token-minute-quota",
    "--stable-token-daily-quota",
    "--force-refresh-daily-limit",
    "--force-refresh-interval",
    "--dedup-window",
    "--daily-quota",
    "--minute-quota",
    "--openid-minute-limit",
    "--users",
    "--non-followers",
    "--refused-subscribers",
    "--templates",
    "--event-url",
    "--event-token",
    "--event-aes-key",
    "--event-mode",
    "--event-user-block-share",
    "--event-system-failed-share",
    "--event-delay",
    "--event-timeout",
    "--event-retries",
    "--event-msgid-zero-with-client-msg-id",
    "--fault-latency",
    "--fault-jitter",
    "--fault-hang-share",
    "--fault-hang",
    "--fault-errcode",
    "--fault-5xx-share",
    "--fault-5xx-status",
    "--fault-reset-share",
    "--fault-outage-for",
    "--fault-outage-after",
    "--fault-token-invalidate-every",
];

#[test]
fn help_documents_every_flag() {
    let out = Command::new(binary("wxpush-sandbox"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in FLAGS {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    for route in ["/__stats", "/__reset", "/__faults"] {
        assert!(help.contains(route), "--help does not mention {route}");
    }
    let bad = Command::new(binary("wxpush-sandbox"))
        .args(["--fault-reset-share", "2"])
        .output();
    assert!(
        !bad.expect("runs").status.success(),
        "shares above 1 are refused"
    );
}

/// Every flag `--help` lists is in docs/sandbox.md, and every flag the page names exists.
#[test]
fn docs_sandbox_md_names_every_flag_and_no_other() {
    let help = docs::help("wxpush-sandbox", &[]);
    let flags = docs::flags(&help, false);
    assert!(flags.len() >= FLAGS.len(), "{flags:?}");
    let (undocumented, stale) = docs::flags_against_page(&help, &docs::read("docs/sandbox.md"));
    assert!(
        undocumented.is_empty(),
        "flags missing from docs/sandbox.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/sandbox.md names flags the sandbox does not have: {stale:?}"
    );
}

#[tokio::test]
async fn flags_reach_the_behaviour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "# the account's followers\nu1\nu2\n").expect("write users");
    let rx = EventReceiver::start(0).await;
    let users_arg = format!("@{}", users.display());
    let url = rx.url();
    let (mut child, base) = spawn(&[
        "--users",
        &users_arg,
        "--non-followers",
        "gone",
        "--templates",
        "TPL,TPL2",
        "--dedup-window",
        "300ms",
        "--event-url",
        &url,
        "--event-token",
        "clitoken",
        "--fault-errcode",
        "45011=0",
        "--fault-latency",
        "1ms",
    ]);
    let c = WxClient::new(base);
    let token = c.classic_token().await;
    let send = |to: &'static str, tpl: &'static str| {
        let c = c.clone();
        let token = token.clone();
        async move {
            c.send_template(
                &token,
                &json!({"touser": to, "template_id": tpl, "client_msg_id": "k"}),
            )
            .await
        }
    };
    assert_eq!(errcode(&send("u3", "TPL").await), 40003);
    assert_eq!(errcode(&send("gone", "TPL").await), 43004);
    assert_eq!(errcode(&send("u1", "NOPE").await), 40037);
    let first = send("u1", "TPL").await;
    assert_eq!(errcode(&first), 0);
    assert_eq!(send("u1", "TPL").await["msgid"], first["msgid"]);
    let later = wait_for("the 300ms dedup window", Duration::from_secs(5), || async {
        let v = send("u1", "TPL").await;
        (v["msgid"] != first["msgid"]).then_some(v)
    })
    .await;
    assert_eq!(errcode(&later), 0);
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    let r = python_verify("clitoken", None, APPID, &got);
    assert!(r.iter().all(|r| r["signature_ok"] == true), "{r:?}");
    let stats = c.stats().await;
    assert_eq!(stats.delivered_unique, 2);
    assert!(stats.faults["latency"] >= 6);
    let (_, faults) = c.put_faults(&json!({"http_5xx_share": 1.0})).await;
    assert_eq!(faults["faults"]["http_5xx_share"], 1.0);
    child.terminate();
    let status = wait_for(
        "the sandbox to exit on SIGTERM",
        Duration::from_secs(5),
        || {
            let s = child.child.try_wait().ok().flatten();
            async move { s }
        },
    )
    .await;
    assert!(status.success(), "{status:?}");
}
