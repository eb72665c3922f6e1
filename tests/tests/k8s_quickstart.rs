//! The README's quick start on a real control plane (`scripts/cluster.sh`): the operator, two
//! Secrets and `examples/pushchannel-minimal.yaml` as written, with only `apiBaseUrl` pointed at
//! the sandbox (WeChat itself is never called from a test).
//!
//! - The cluster has no default StorageClass, so the test makes the one PersistentVolume that a
//!   provisioner would have made; the real PV controller binds the example's claim to it.
//! - The real operator runs with its credentials check on: `CredentialsValid` turns `True` after
//!   one token call to the sandbox, as the README shows.
//! - The Deployment controller creates the pod, kwok makes it Ready, the pod runner runs its
//!   pusher, and the PushChannel turns `Ready`; a message sent to that pusher is delivered once.

use serde_json::{Value, json};
use wxpush_tests::cluster::{WAIT, up_with_namespace};
use wxpush_tests::kube::{OperatorProcess, condition_status};
use wxpush_tests::sandbox::{self, WxClient};
use wxpush_tests::{wait_for, workspace_root};

const NS: &str = "shop";
const TOKEN: &str = "quick-start-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_example_reaches_ready_with_only_the_operator_and_two_secrets() {
    let cluster = up_with_namespace(NS).await;
    let kubectl = cluster.kubectl();

    // What a default StorageClass's provisioner would do: one volume for the queue's claim.
    let volume_dir = cluster.state().join("pv-quickstart");
    std::fs::create_dir_all(&volume_dir).expect("volume folder");
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "quickstart-queue"},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": volume_dir.to_string_lossy()},
        },
    });
    kubectl
        .apply(&serde_json::to_string(&pv).expect("JSON"))
        .await
        .expect("the PersistentVolume");

    let (_wx_process, wx_base) = sandbox::spawn(&[]);
    let secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: order-notify-wechat, namespace: {NS}}}\n\
         stringData: {{appId: {}, appSecret: {}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: order-notify-auth, namespace: {NS}}}\n\
         stringData: {{token: {TOKEN}}}\n",
        sandbox::APPID,
        sandbox::SECRET
    );
    kubectl.apply(&secrets).await.expect("the two Secrets");

    let home = cluster.state().join("operator-home");
    std::fs::create_dir_all(&home).expect("HOME");
    let operator = OperatorProcess::start_with_kubeconfig(
        &cluster.kubeconfig(),
        &home,
        &["--leader-election=false"],
        &[("WXPUSH_OPERATOR_CHECK_CREDENTIALS", "true")],
    )
    .await;

    // The example as written, but for apiBaseUrl.
    let mut pc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/pushchannel-minimal.yaml"))
            .expect("the minimal example"),
    )
    .expect("YAML");
    assert_eq!(pc["metadata"]["namespace"], NS, "the example's namespace");
    pc["spec"]["apiBaseUrl"] = wx_base.clone().into();
    kubectl
        .run(
            &["apply", "--validate=strict", "-f", "-"],
            Some(&serde_yaml_ng::to_string(&pc).expect("YAML")),
        )
        .await
        .expect("the minimal example");
    let name = pc["metadata"]["name"].as_str().expect("name").to_string();

    let pc = wait_for("the PushChannel Ready", WAIT * 2, || async {
        let out = kubectl
            .run(&["get", "pushchannel", &name, "-n", NS, "-o", "json"], None)
            .await
            .ok()?;
        let pc: Value = serde_json::from_str(&out).ok()?;
        (condition_status(&pc, "Ready") == Some("True")).then_some(pc)
    })
    .await;
    assert_eq!(
        condition_status(&pc, "CredentialsValid"),
        Some("True"),
        "the credentials check against the sandbox: {}",
        pc["status"]
    );

    // The claim is bound to the volume, and one pod runs a pusher that takes a message.
    let pvc = kubectl
        .run(&["get", "pvc", "-n", NS, "-o", "json"], None)
        .await
        .expect("claims");
    let pvc: Value = serde_json::from_str(&pvc).expect("JSON");
    let phases: Vec<&str> = pvc["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["status"]["phase"].as_str())
        .collect();
    assert_eq!(phases, ["Bound"], "the queue's claim: {pvc}");
    let ready = cluster.ready_pods(NS, None).await;
    assert_eq!(ready.len(), 1, "one replica: {ready:?}");
    let listen = cluster.pusher_ready(NS, &ready[0]).await;
    let http = sandbox::http();
    let r = http
        .post(format!("http://{listen}/v1/messages"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "touser": "o-quickstart", "template_id": "TPL",
            "data": {"thing1": {"value": "Shipped"}},
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 202, "accepted");
    let wx = WxClient::new(wx_base);
    wait_for("the message delivered", WAIT, || async {
        let s = wx.stats().await;
        s.per_openid
            .get("o-quickstart")
            .is_some_and(|c| c.delivered == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        operator.terminate(std::time::Duration::from_secs(30)).await,
        Some(0)
    );
}
