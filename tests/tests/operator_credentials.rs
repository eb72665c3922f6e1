//! The operator's credentials check, end to end: the real `wxpush-operator` against the
//! Kubernetes API emulator, with the PushChannel's `apiBaseUrl` pointing at an in-process
//! `wxpush-sandbox`. `CredentialsValid` shows WeChat's answer; the sandbox's token-call counter
//! proves one call per credential change, however often the operator reconciles.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use serde_json::Value;
use wxpush_tests::kube::{KubeEmulator, Kubectl, OperatorProcess};
use wxpush_tests::sandbox::{APPID, SECRET, config, start};
use wxpush_tests::wait_for;
use wxpush_tests::wecom::{AGENT_ID, CORP_ID, CORP_SECRET, ROBOT_KEY};

fn wait() -> Duration {
    Duration::from_secs(
        std::env::var("WXPUSH_E2E_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    )
}

fn secrets(app_secret: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: order-notify-wechat}}\nstringData:\n  \
         appId: {APPID}\n  appSecret: {app_secret}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: order-notify-auth}}\nstringData:\n  \
         token: {token}\n"
    )
}

fn channel(api_base_url: &str) -> String {
    format!(
        "apiVersion: wxpush.io/v1alpha1\nkind: PushChannel\nmetadata: {{name: order-notify, \
         namespace: default}}\nspec:\n  apiBaseUrl: {api_base_url}\n  credentials: {{secretRef: \
         {{name: order-notify-wechat}}}}\n  auth: {{secretRef: {{name: order-notify-auth, key: \
         token}}}}\n"
    )
}

fn credentials_condition(pch: &Value) -> Option<(String, String, String)> {
    pch["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "CredentialsValid")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

async fn wait_for_reason(kubectl: &Kubectl, reason: &str) -> (String, String, String) {
    kubectl
        .wait_for_object(
            &format!("CredentialsValid reason {reason}"),
            "pch",
            "order-notify",
            wait(),
            |o| credentials_condition(o).is_some_and(|c| c.1 == reason),
        )
        .await;
    let pch = kubectl
        .get_json("pch", "order-notify")
        .await
        .expect("get")
        .expect("exists");
    credentials_condition(&pch).expect("the condition")
}

/// `wxpush_operator_reconciles_total{result="applied"}` from the operator's /metrics.
async fn applied_reconciles(operator: &OperatorProcess) -> u64 {
    let text = wxpush_tests::sandbox::http()
        .get(format!("http://{}/metrics", operator.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with("wxpush_operator_reconciles_total{result=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Lets the operator reconcile `n` more times (it requeues every second here).
async fn reconciles(operator: &OperatorProcess, n: u64) {
    let start = applied_reconciles(operator).await;
    wait_for(&format!("{n} more reconciles"), wait(), || async move {
        (applied_reconciles(operator).await >= start + n).then_some(())
    })
    .await;
}

/// An API emulator with the CRD, `secrets` and then `channel` applied, and an operator that
/// checks credentials online (reconciling every second when `requeue`).
async fn checked(
    secrets: &str,
    channel: &str,
    requeue: bool,
) -> (KubeEmulator, Kubectl, OperatorProcess) {
    let (api, kubectl) = KubeEmulator::start_with_crd().await;
    kubectl.apply(secrets).await.expect("Secrets");
    let mut args = vec!["--leader-election", "false"];
    if requeue {
        args.extend(["--requeue", "1s"]);
    }
    let operator = OperatorProcess::start(
        &api,
        &args,
        &[("WXPUSH_OPERATOR_CHECK_CREDENTIALS", "true")],
    )
    .await;
    kubectl.apply(channel).await.expect("PushChannel");
    (api, kubectl, operator)
}

#[tokio::test]
async fn credentials_valid_costs_one_token_call_per_credential_change() {
    let sandbox = start(config()).await;
    let (_api, kubectl, operator) = checked(
        &secrets(SECRET, "producer-token-1"),
        &channel(&sandbox.handle.base_url()),
        true,
    )
    .await;

    let (status, _, message) = wait_for_reason(&kubectl, "TokenIssued").await;
    assert_eq!(status, "True");
    assert!(message.contains(APPID), "{message}");
    let stable = || sandbox.handle.stats().token_calls.stable;
    assert_eq!(stable(), 1, "one token call for the first check");

    // Periodic reconciles and a change of another Secret reuse the answer.
    reconciles(&operator, 5).await;
    kubectl
        .apply(&secrets(SECRET, "producer-token-2"))
        .await
        .expect("rotate the producers' token");
    reconciles(&operator, 3).await;
    assert_eq!(stable(), 1, "no token call without a credential change");

    // A wrong secret: one call, the condition names it.
    let wrong = "rotated-wrong-secret";
    kubectl
        .apply(&secrets(wrong, "producer-token-2"))
        .await
        .expect("wrong secret");
    let (status, _, message) = wait_for_reason(&kubectl, "InvalidAppSecret").await;
    assert_eq!(status, "False");
    assert!(message.contains("errcode 40125"), "{message}");
    reconciles(&operator, 3).await;
    assert_eq!(stable(), 2, "one token call for the change");

    // Fixed again: one more call.
    kubectl
        .apply(&secrets(SECRET, "producer-token-2"))
        .await
        .expect("fixed secret");
    wait_for_reason(&kubectl, "TokenIssued").await;
    reconciles(&operator, 3).await;
    assert_eq!(stable(), 3);

    // The operator counts its token requests by answer.
    let text = wxpush_tests::sandbox::http()
        .get(format!("http://{}/metrics", operator.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (reason, n) in [("TokenIssued", 2), ("InvalidAppSecret", 1)] {
        let line = format!("wxpush_operator_credential_checks_total{{result=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }

    // Nothing the operator wrote carries the secret.
    let pch = kubectl
        .get_json("pch", "order-notify")
        .await
        .expect("get")
        .expect("exists");
    assert!(!pch.to_string().contains(SECRET) && !pch.to_string().contains(wrong));
}

#[tokio::test]
async fn an_address_off_the_allowlist_is_named_in_the_condition() {
    let sandbox = start(wxpush_sandbox::SandboxConfig {
        ip_allowlist: Some(vec!["203.0.113.7".parse().expect("ip")]),
        ..config()
    })
    .await;
    let (_api, kubectl, _operator) = checked(
        &secrets(SECRET, "producer-token"),
        &channel(&sandbox.handle.base_url()),
        false,
    )
    .await;
    let (status, _, message) = wait_for_reason(&kubectl, "IPNotAllowed").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("add 127.0.0.1 to the IP allowlist"),
        "{message}"
    );
    assert_eq!(sandbox.handle.stats().token_calls.stable, 1);
}

fn wecom_secret(corp_secret: &str, robot_key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: ops-wecom}}\nstringData:\n  \
         corpId: {CORP_ID}\n  corpSecret: {corp_secret}\n  agentId: \"{AGENT_ID}\"\n  \
         webhookKey: \"{robot_key}\"\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: order-notify-auth}}\nstringData:\n  \
         token: producer-token\n"
    )
}

fn wecom_channel(provider: &str, api_base_url: &str) -> String {
    let keys = if provider == "wecomApp" {
        "corpIdKey: corpId, corpSecretKey: corpSecret, agentIdKey: agentId"
    } else {
        "webhookKeyKey: webhookKey"
    };
    format!(
        "apiVersion: wxpush.io/v1alpha1\nkind: PushChannel\nmetadata: {{name: order-notify, \
         namespace: default}}\nspec:\n  provider: {provider}\n  apiBaseUrl: {api_base_url}\n  \
         credentials: {{secretRef: {{name: ops-wecom, {keys}}}}}\n  auth: {{secretRef: {{name: \
         order-notify-auth, key: token}}}}\n"
    )
}

/// A `wecomApp` channel is checked with one `gettoken` (corp id and application secret)
/// against its `apiBaseUrl`, once per credential change; a wrong secret and an address off the
/// application's trusted IPs are named in the condition.
#[tokio::test]
async fn a_wecom_app_channel_is_checked_with_one_gettoken_per_change() {
    let mut cfg = config();
    let sandbox = start(cfg.clone()).await;
    let (_api, kubectl, operator) = checked(
        &wecom_secret(CORP_SECRET, ROBOT_KEY),
        &wecom_channel("wecomApp", &sandbox.handle.base_url()),
        true,
    )
    .await;
    let (status, _, message) = wait_for_reason(&kubectl, "TokenIssued").await;
    assert_eq!(status, "True");
    assert!(message.contains(CORP_ID), "{message}");
    let gettoken = || {
        sandbox
            .handle
            .stats()
            .requests
            .get("wecom_gettoken")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(gettoken(), 1, "one gettoken for the first check");
    assert_eq!(sandbox.handle.stats().token_calls.stable, 0, "not WeChat's");
    reconciles(&operator, 3).await;
    assert_eq!(gettoken(), 1, "no call without a credential change");

    let wrong = "rotated-wrong-corp-secret";
    kubectl
        .apply(&wecom_secret(wrong, ROBOT_KEY))
        .await
        .expect("wrong secret");
    let (status, _, message) = wait_for_reason(&kubectl, "InvalidCorpSecret").await;
    assert_eq!(status, "False");
    assert!(message.contains("errcode 40001"), "{message}");
    reconciles(&operator, 3).await;
    assert_eq!(gettoken(), 2, "one call for the change");
    let pch = kubectl
        .get_json("pch", "order-notify")
        .await
        .expect("get")
        .expect("exists");
    assert!(!pch.to_string().contains(CORP_SECRET) && !pch.to_string().contains(wrong));
    drop(operator);

    // The operator's address is not on the application's trusted IPs: 60020, named.
    cfg.wecom.trusted_ips = Some(vec!["203.0.113.7".parse().expect("ip")]);
    let strict = start(cfg).await;
    let (_api, kubectl, _operator) = checked(
        &wecom_secret(CORP_SECRET, ROBOT_KEY),
        &wecom_channel("wecomApp", &strict.handle.base_url()),
        false,
    )
    .await;
    let (status, _, message) = wait_for_reason(&kubectl, "IPNotAllowed").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("add 127.0.0.1 to the application's trusted IPs"),
        "{message}"
    );
}

/// A `wecomRobot` channel has no token call: the operator checks the webhook key's shape only,
/// sends nothing, and says so; a pasted webhook URL is refused without quoting it.
#[tokio::test]
async fn a_wecom_robot_key_is_checked_for_shape_without_a_request() {
    let sandbox = start(config()).await;
    let (_api, kubectl, operator) = checked(
        &wecom_secret(CORP_SECRET, ROBOT_KEY),
        &wecom_channel("wecomRobot", &sandbox.handle.base_url()),
        true,
    )
    .await;
    let (status, _, message) = wait_for_reason(&kubectl, "WebhookKeyWellFormed").await;
    assert_eq!(status, "True");
    assert!(message.contains("first send"), "{message}");
    let pasted = format!(
        "{}/cgi-bin/webhook/send?key={ROBOT_KEY}",
        sandbox.handle.base_url()
    );
    kubectl
        .apply(&wecom_secret(CORP_SECRET, &pasted))
        .await
        .expect("a pasted URL");
    let (status, _, message) = wait_for_reason(&kubectl, "WebhookKeyMalformed").await;
    assert_eq!(status, "False");
    assert!(message.contains("after `key=`"), "{message}");
    assert!(!message.contains(ROBOT_KEY), "{message}");
    reconciles(&operator, 2).await;
    assert_eq!(
        sandbox.handle.stats().requests_total,
        0,
        "nothing was sent to WeCom"
    );
}
