//! The Kubernetes API emulator itself, driven by the real kubectl and by kube-rs: the semantics
//! the operator's end-to-end tests rely on (versions, generation, server-side apply, 409s, the
//! status subresource, watches, label selectors, garbage collection, CRD discovery).

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use wxpush_operator::crd::PushChannel;
use wxpush_tests::kube::KubeEmulator;
use wxpush_tests::workspace_root;

const WAIT: Duration = Duration::from_secs(20);

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a numeric resourceVersion")
}

fn api_status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn kubectl_apply_sets_server_fields_and_selects_by_label() {
    let api = KubeEmulator::start().await;
    let kubectl = api.kubectl();
    let cm = |value: &str, tier: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: demo, labels: {{tier: {tier}}}}}\n\
             data: {{key: \"{value}\"}}\n"
        )
    };
    kubectl.apply(&cm("one", "a")).await.expect("create");
    let first = kubectl
        .get_json("configmap", "demo")
        .await
        .expect("get")
        .expect("exists");
    let meta = &first["metadata"];
    assert!(
        meta["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{meta}"
    );
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["namespace"], "default");
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    kubectl.apply(&cm("two", "b")).await.expect("update");
    let second = kubectl
        .get_json("cm", "demo")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(second["data"]["key"], "two");
    assert_eq!(second["metadata"]["uid"], first["metadata"]["uid"]);
    assert!(rv(&second) > rv(&first), "resourceVersion grows on change");
    assert_eq!(
        second["metadata"]["generation"], 2,
        "a data change bumps generation"
    );

    // Re-applying the same manifest changes nothing, not even the resourceVersion.
    kubectl.apply(&cm("two", "b")).await.expect("no-op apply");
    let third = kubectl
        .get_json("cm", "demo")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(rv(&third), rv(&second));

    let list = kubectl
        .list_json("configmaps", Some("tier=b"))
        .await
        .expect("list");
    assert_eq!(list.len(), 1);
    assert!(
        kubectl
            .list_json("configmaps", Some("tier in (a,c)"))
            .await
            .expect("list")
            .is_empty()
    );
    assert!(kubectl.get_json("cm", "nope").await.expect("get").is_none());

    // Lists carry kind/apiVersion (kube-rs needs them).
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let listed = cms
        .list(&ListParams::default().labels("tier=b"))
        .await
        .expect("kube-rs list");
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());
}

#[tokio::test]
async fn server_side_apply_creates_merges_removes_and_conflicts() {
    let api = KubeEmulator::start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let pp = PatchParams::apply("wxpush-operator").force();
    let applied = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    // Apply of a missing object creates it.
    let created = cms
        .patch(
            "ssa",
            &pp,
            &Patch::Apply(applied(json!({"a": "1", "b": "2"}))),
        )
        .await
        .expect("apply creates");
    assert_eq!(created.data.as_ref().map(|d| d.len()), Some(2));
    let managed = created.metadata.managed_fields.expect("managedFields");
    assert_eq!(managed[0].manager.as_deref(), Some("wxpush-operator"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));

    // Another writer (an Update) takes "c"; the operator drops "b": "b" goes, "c" stays.
    cms.patch(
        "ssa",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"c": "3"}})),
    )
    .await
    .expect("merge patch");
    let after = cms
        .patch("ssa", &pp, &Patch::Apply(applied(json!({"a": "1"}))))
        .await
        .expect("apply again");
    let data = after.data.expect("data");
    assert_eq!(data.keys().cloned().collect::<Vec<_>>(), ["a", "c"]);

    // A different manager setting "a" to another value conflicts unless forced.
    let err = cms
        .patch(
            "ssa",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(applied(json!({"a": "9"}))),
        )
        .await
        .expect_err("conflict");
    assert_eq!(api_status(err), (409, "Conflict".to_string()));

    // A replace with a stale resourceVersion is refused with 409.
    let mut stale = cms.get("ssa").await.expect("get");
    stale.metadata.resource_version = Some("1".into());
    let err = cms
        .replace("ssa", &PostParams::default(), &stale)
        .await
        .expect_err("stale replace");
    assert_eq!(api_status(err).0, 409);
    // And with the current one it goes through.
    let mut fresh = cms.get("ssa").await.expect("get");
    fresh
        .data
        .get_or_insert_default()
        .insert("d".into(), "4".into());
    cms.replace("ssa", &PostParams::default(), &fresh)
        .await
        .expect("replace with the current version");

    // Create of an existing name: 409 AlreadyExists.
    let err = cms
        .create(&PostParams::default(), &fresh)
        .await
        .expect_err("exists");
    assert_eq!(api_status(err), (409, "AlreadyExists".to_string()));
}

#[tokio::test]
async fn crd_discovery_status_subresource_generation_and_gc() {
    let api = KubeEmulator::start().await;
    let kubectl = api.kubectl();
    let client = api.client().await;
    let channels: Api<PushChannel> = Api::default_namespaced(client.clone());

    // Before the CRD: the resource does not exist.
    let err = channels
        .list(&ListParams::default())
        .await
        .expect_err("no CRD yet");
    assert_eq!(api_status(err).0, 404);

    kubectl
        .apply_file(&workspace_root().join("crds/pushchannel.yaml"))
        .await
        .expect("apply the CRD");
    let established = kubectl
        .jsonpath(
            "crd",
            "pushchannels.wxpush.io",
            r#"{.status.conditions[?(@.type=="Established")].status}"#,
        )
        .await
        .expect("crd status");
    assert_eq!(established, "True");
    let resources = kubectl
        .run(
            &["api-resources", "--api-group=wxpush.io", "-o", "name"],
            None,
        )
        .await
        .expect("discovery");
    assert_eq!(resources.trim(), "pushchannels.wxpush.io");

    let manifest = "apiVersion: wxpush.io/v1alpha1\nkind: PushChannel\nmetadata: {name: orders}\n\
        spec:\n  credentials: {secretRef: {name: orders-wechat}}\n  auth: {secretRef: {name: orders-auth, key: token}}\n";
    kubectl.apply(manifest).await.expect("apply a PushChannel");
    let pch = channels.get("orders").await.expect("kube-rs reads it back");
    assert_eq!(pch.metadata.generation, Some(1));
    assert_eq!(
        pch.spec.api_base_url.as_str().trim_end_matches('/'),
        "https://api.weixin.qq.com",
        "the CRD's schema defaults are applied"
    );

    // Status goes through the subresource only, and does not bump generation.
    let status = json!({"apiVersion": "wxpush.io/v1alpha1", "kind": "PushChannel",
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True",
        "reason": "Reconciled", "message": "ok", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
    channels
        .patch_status(
            "orders",
            &PatchParams::apply("op").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status apply");
    let ready = kubectl
        .jsonpath(
            "pch",
            "orders",
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        )
        .await
        .expect("kubectl reads the condition");
    assert_eq!(ready, "True");
    let pch = channels.get("orders").await.expect("get");
    assert_eq!(pch.metadata.generation, Some(1));
    // A status in a main-resource write is ignored; a spec change bumps generation.
    channels
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"apiBaseUrl": "http://127.0.0.1:9"}, "status": {"observedGeneration": 99}})),
        )
        .await
        .expect("spec patch");
    let pch = channels.get("orders").await.expect("get");
    assert_eq!(pch.metadata.generation, Some(2));
    assert_eq!(pch.status.and_then(|s| s.observed_generation), Some(1));

    // Children owned by the PushChannel go when it goes.
    let uid = pch.metadata.uid.expect("uid");
    let child = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: orders-pusher\n  ownerReferences:\n  \
         - {{apiVersion: wxpush.io/v1alpha1, kind: PushChannel, name: orders, uid: {uid}, controller: true}}\n\
         data: {{a: b}}\n"
    );
    kubectl.apply(&child).await.expect("child");
    kubectl.delete("pch", "orders").await.expect("delete");
    kubectl
        .wait_for_absent(
            "the owned ConfigMap to be collected",
            "cm",
            "orders-pusher",
            WAIT,
        )
        .await;

    // Deleting the CRD removes its resource from discovery.
    kubectl
        .delete("crd", "pushchannels.wxpush.io")
        .await
        .expect("delete crd");
    let err = channels
        .list(&ListParams::default())
        .await
        .expect_err("CRD gone");
    assert_eq!(api_status(err).0, 404);
}

#[tokio::test]
async fn kube_runtime_watcher_sees_adds_changes_and_deletes() {
    let api = KubeEmulator::start().await;
    let kubectl = api.kubectl();
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    kubectl
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before, labels: {w: 'yes'}}\n")
        .await
        .expect("seed");
    let mut events = watcher(cms.clone(), watcher::Config::default().labels("w=yes"))
        .map_ok(|ev| match ev {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                format!("apply {}", o.metadata.name.unwrap_or_default())
            }
            watcher::Event::Delete(o) => format!("delete {}", o.metadata.name.unwrap_or_default()),
            watcher::Event::Init => "init".into(),
            watcher::Event::InitDone => "init-done".into(),
        })
        .boxed();
    let mut next = async || {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event within the timeout")
            .expect("the stream goes on")
            .expect("no watch error")
    };
    assert_eq!(next().await, "init");
    assert_eq!(next().await, "apply before");
    assert_eq!(next().await, "init-done");
    kubectl
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after, labels: {w: 'yes'}}\n")
        .await
        .expect("add");
    assert_eq!(next().await, "apply after");
    // Losing the label looks like a delete to a label-selected watch.
    cms.patch(
        "after",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "no"}}})),
    )
    .await
    .expect("relabel");
    assert_eq!(next().await, "delete after");
    cms.delete("before", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(next().await, "delete before");
}
