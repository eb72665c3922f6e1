//! Reconcile tier: `reconcile` against a scripted API server (kube-rs's `tower-test` pattern,
//! as in controller-rs). Each test answers the requests the way an API server would and then
//! asserts the exact requests made: method, path, field manager and the bodies' key fields.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use wxpush_operator::crd::PushChannel;
use wxpush_operator::metrics::Metrics;
use wxpush_operator::reconcile::{Context, Error, Settings, error_policy, reconcile};

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    fn field_manager(&self) -> Option<String> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldManager="))
            .map(str::to_string)
    }
}

type Answer = Box<dyn Fn(&Seen) -> (StatusCode, Value) + Send + Sync>;

/// Starts a scripted API server; returns a client for it and the log of what it saw.
fn api_server(answer: Answer) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen_log = log.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let seen = Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                },
            };
            let (status, value) = answer(&seen);
            seen_log.lock().expect("log").push(seen);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).expect("json")))
                .expect("response");
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), log)
}

fn not_found(what: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn secret(name: &str, keys: &[&str]) -> Value {
    let data: BTreeMap<&str, &str> = keys.iter().map(|k| (*k, "c2VjcmV0")).collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "42"},
           "data": data})
}

/// Answers like an API server for a server-side apply: the applied object, with metadata added.
fn echo(seen: &Seen) -> (StatusCode, Value) {
    let mut body = seen.body.clone();
    body["metadata"]["resourceVersion"] = json!("1");
    body["metadata"]["uid"] = json!("child-uid");
    if seen.path.ends_with("/status") {
        // The API server answers a status patch with the whole object.
        body["metadata"]["name"] = json!(seen.path.rsplit('/').nth(1));
        body["spec"] = json!({"credentials": {"secretRef": {"name": "x"}},
                              "auth": {"secretRef": {"name": "x", "key": "k"}}});
    }
    (StatusCode::OK, body)
}

fn example(name: &str) -> PushChannel {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let mut pc: PushChannel =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("example")).expect("parses");
    pc.metadata.uid = Some("pc-uid".into());
    pc.metadata.generation = Some(3);
    pc.metadata.resource_version = Some("100".into());
    pc
}

fn settings() -> Settings {
    Settings {
        requeue_after: Duration::from_secs(300),
        requeue_waiting: Duration::from_secs(60),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        ..Settings::default()
    }
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        settings(),
        Arc::new(Metrics::new()),
        Some("test".into()),
    ))
}

async fn run(pc: PushChannel, ctx: Arc<Context>) -> Result<Action, Error> {
    tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(pc), ctx))
        .await
        .expect("reconcile finishes")
}

fn lines(log: &Arc<Mutex<Vec<Seen>>>) -> Vec<String> {
    log.lock().expect("log").iter().map(Seen::line).collect()
}

fn find<'a>(log: &'a [Seen], method: &str, path: &str) -> &'a Seen {
    log.iter()
        .find(|s| s.method.as_str() == method && s.path == path)
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

const NS: &str = "/api/v1/namespaces/shop";
const APPS: &str = "/apis/apps/v1/namespaces/shop";
const STATUS_MINIMAL: &str =
    "/apis/wxpush.io/v1alpha1/namespaces/shop/pushchannels/order-notify/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

#[tokio::test]
async fn happy_path_applies_every_child_then_the_status() {
    let (client, log) = api_server(Box::new(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", p) if p.ends_with("/secrets/order-notify-wechat") => (
            StatusCode::OK,
            secret("order-notify-wechat", &["appId", "appSecret"]),
        ),
        ("GET", p) if p.ends_with("/secrets/order-notify-auth") => {
            (StatusCode::OK, secret("order-notify-auth", &["token"]))
        }
        ("GET", p) if p.contains("/horizontalpodautoscalers/") => {
            not_found("horizontalpodautoscalers")
        }
        _ => echo(s),
    }));
    let ctx = context(client);
    let action = run(example("pushchannel-minimal.yaml"), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        lines(&log),
        [
            format!("GET {NS}/secrets/order-notify-auth"),
            format!("GET {NS}/secrets/order-notify-wechat"),
            format!("PATCH {NS}/configmaps/order-notify-pusher"),
            format!("PATCH {NS}/persistentvolumeclaims/order-notify-pusher-data"),
            format!("PATCH {APPS}/deployments/order-notify-pusher"),
            format!("PATCH {NS}/services/order-notify-pusher"),
            "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/order-notify-pusher".into(),
            "GET /apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/order-notify-pusher"
                .into(),
            format!("PATCH {STATUS_MINIMAL}"),
            format!("POST {EVENTS}"),
        ]
    );
    let log = log.lock().expect("log").clone();
    for s in log.iter().filter(|s| s.method == Method::PATCH) {
        assert_eq!(
            s.field_manager().as_deref(),
            Some("wxpush-operator"),
            "{}",
            s.line()
        );
        assert!(s.query.contains("force=true"), "{}: {}", s.line(), s.query);
        assert_eq!(
            s.content_type,
            "application/apply-patch+yaml",
            "{}",
            s.line()
        );
    }
    let deployment = &find(
        &log,
        "PATCH",
        &format!("{APPS}/deployments/order-notify-pusher"),
    )
    .body;
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"],
        "pc-uid"
    );
    let hash = deployment["spec"]["template"]["metadata"]["annotations"]["wxpush.io/config-hash"]
        .as_str()
        .expect("config hash");
    let status = &find(&log, "PATCH", STATUS_MINIMAL).body;
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(status["status"]["configHash"], hash);
    assert_eq!(
        status["status"]["endpoint"],
        "http://order-notify-pusher.shop.svc:8080"
    );
    assert_eq!(condition(status, "CredentialsValid")["status"], "True");
    assert_eq!(condition(status, "Reconciled")["status"], "True");
    assert_eq!(condition(status, "Ready")["reason"], "PodsNotReady");
    assert_eq!(condition(status, "AutoscalingActive")["reason"], "Disabled");
    let event = &find(&log, "POST", EVENTS).body;
    assert_eq!(event["reason"], "Applied");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["name"], "order-notify");
    // No value of a Secret reached any write.
    for s in &log {
        assert!(
            !s.body.to_string().contains("c2VjcmV0"),
            "{} carries a secret",
            s.line()
        );
    }
}

#[tokio::test]
async fn missing_secret_reports_credentials_and_applies_nothing() {
    let (client, log) = api_server(Box::new(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", p) if p.ends_with("/secrets/order-notify-auth") => {
            (StatusCode::OK, secret("order-notify-auth", &["token"]))
        }
        ("GET", _) => not_found("secrets \"order-notify-wechat\""),
        _ => echo(s),
    }));
    let action = run(example("pushchannel-minimal.yaml"), context(client))
        .await
        .expect("a missing Secret is not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(
        lines(&log),
        [
            format!("GET {NS}/secrets/order-notify-auth"),
            format!("GET {NS}/secrets/order-notify-wechat"),
            format!("PATCH {STATUS_MINIMAL}"),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ]
    );
    let log = log.lock().expect("log").clone();
    let status = &find(&log, "PATCH", STATUS_MINIMAL).body;
    let creds = condition(status, "CredentialsValid");
    assert_eq!(creds["status"], "False");
    assert_eq!(creds["reason"], "SecretsMissing");
    let message = creds["message"].as_str().expect("message");
    assert!(
        message.contains("Secret shop/order-notify-wechat not found")
            && message.contains("appId, appSecret"),
        "{message}"
    );
    assert_eq!(
        condition(status, "Reconciled")["reason"],
        "WaitingForSecrets"
    );
    let reasons: Vec<&Value> = log
        .iter()
        .filter(|s| s.method == Method::POST)
        .map(|s| &s.body["reason"])
        .collect();
    assert_eq!(
        reasons,
        [&json!("SecretsMissing"), &json!("WaitingForSecrets")]
    );
}

fn full_secrets(s: &Seen) -> Option<(StatusCode, Value)> {
    let name = s.path.rsplit('/').next()?;
    let keys: &[&str] = match name {
        "payment-notify-wechat" => &["appId", "appSecret", "serverToken", "encodingAesKey"],
        "payment-notify-auth" => &["token"],
        "payment-notify-redis" => &["url"],
        "payment-notify-callbacks" => &["signingKey"],
        _ => return None,
    };
    (s.method == Method::GET && s.path.contains("/secrets/"))
        .then(|| (StatusCode::OK, secret(name, keys)))
}

const DEPLOY_FULL: &str = "/apis/apps/v1/namespaces/shop/deployments/payment-notify-pusher";
const HPA_FULL: &str =
    "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/payment-notify-pusher";

#[tokio::test]
async fn autoscaling_never_writes_replicas_and_reports_the_hpa() {
    let (client, log) = api_server(Box::new(|s| {
        if let Some(answer) = full_secrets(s) {
            return answer;
        }
        match (s.method.as_str(), s.path.as_str()) {
            ("GET", DEPLOY_FULL) => not_found("deployments"),
            ("PATCH", HPA_FULL) => {
                let (code, mut body) = echo(s);
                body["status"] = json!({"currentReplicas": 2, "desiredReplicas": 2, "conditions": [
                    {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
                     "message": "unable to get metric wxpush_inflight_requests"}]});
                (code, body)
            }
            _ => echo(s),
        }
    }));
    let action = run(example("pushchannel-full.yaml"), context(client))
        .await
        .expect("reconciles");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let all = lines(&log);
    assert_eq!(
        all.iter()
            .filter(|l| l.starts_with("GET") && l.contains("/secrets/"))
            .count(),
        4
    );
    let applied: Vec<&String> = all.iter().filter(|l| !l.contains("/secrets/")).collect();
    assert_eq!(
        applied,
        [
            "PATCH /api/v1/namespaces/shop/configmaps/payment-notify-pusher",
            &format!("GET {DEPLOY_FULL}"),
            &format!("PATCH {DEPLOY_FULL}"),
            "PATCH /api/v1/namespaces/shop/services/payment-notify-pusher",
            "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/payment-notify-pusher",
            // The full example asks for the events Ingress.
            "PATCH /apis/networking.k8s.io/v1/namespaces/shop/ingresses/payment-notify-pusher-events",
            &format!("PATCH {HPA_FULL}"),
            "PATCH /apis/wxpush.io/v1alpha1/namespaces/shop/pushchannels/payment-notify/status",
            &format!("POST {EVENTS}"),
            &format!("POST {EVENTS}"),
        ]
    );
    let log = log.lock().expect("log").clone();
    let deployment = &find(&log, "PATCH", DEPLOY_FULL).body;
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the operator never writes replicas"
    );
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let hpa = &find(&log, "PATCH", HPA_FULL).body;
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 20);
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "wxpush_inflight_requests"
    );
    assert_eq!(
        hpa["spec"]["metrics"][1]["external"]["metric"]["name"],
        "wxpush_queue_messages"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    let status = &find(
        &log,
        "PATCH",
        "/apis/wxpush.io/v1alpha1/namespaces/shop/pushchannels/payment-notify/status",
    )
    .body;
    let auto = condition(status, "AutoscalingActive");
    assert_eq!(auto["status"], "False");
    assert_eq!(auto["reason"], "FailedGetPodsMetric");
    assert!(
        auto["message"]
            .as_str()
            .expect("msg")
            .contains("metrics adapter")
    );
}

#[tokio::test]
async fn switching_to_autoscaling_hands_replicas_over_first() {
    let (client, log) = api_server(Box::new(|s| {
        if let Some(answer) = full_secrets(s) {
            return answer;
        }
        match (s.method.as_str(), s.path.as_str()) {
            // The Deployment as left by an earlier reconcile with fixed replicas.
            ("GET", DEPLOY_FULL) => (
                StatusCode::OK,
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "payment-notify-pusher", "namespace": "shop",
                                    "resourceVersion": "9",
                                    "managedFields": [{"manager": "wxpush-operator", "operation": "Apply",
                                                       "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                                                       "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
                       "spec": {"replicas": 3, "selector": {}, "template": {}}}),
            ),
            _ => echo(s),
        }
    }));
    run(example("pushchannel-full.yaml"), context(client))
        .await
        .expect("reconciles");
    let log = log.lock().expect("log").clone();
    let deploy_patches: Vec<&Seen> = log
        .iter()
        .filter(|s| s.method == Method::PATCH && s.path == DEPLOY_FULL)
        .collect();
    assert_eq!(deploy_patches.len(), 2, "hand-over, then the apply");
    assert_eq!(
        deploy_patches[0].field_manager().as_deref(),
        Some("wxpush-operator-handover")
    );
    assert_eq!(deploy_patches[0].body["spec"], json!({"replicas": 3}));
    assert_eq!(
        deploy_patches[1].field_manager().as_deref(),
        Some("wxpush-operator")
    );
    assert!(deploy_patches[1].body["spec"].get("replicas").is_none());
}

#[tokio::test]
async fn invalid_spec_writes_status_only_and_waits_for_a_change() {
    let mut pc = example("pushchannel-minimal.yaml");
    // What CEL refuses, in case a cluster let it through: autoscaling with the embedded store.
    pc.spec.autoscaling.enabled = true;
    let status_written = Arc::new(Mutex::new(None::<Value>));
    let keep = status_written.clone();
    let (client, log) = api_server(Box::new(move |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("GET", p) if p.ends_with("/secrets/order-notify-wechat") => (
                StatusCode::OK,
                secret("order-notify-wechat", &["appId", "appSecret"]),
            ),
            ("GET", p) if p.ends_with("/secrets/order-notify-auth") => {
                (StatusCode::OK, secret("order-notify-auth", &["token"]))
            }
            ("PATCH", STATUS_MINIMAL) => {
                *keep.lock().expect("lock") = Some(s.body["status"].clone());
                echo(s)
            }
            _ => echo(s),
        }
    }));
    let ctx = context(client);
    let action = run(pc.clone(), ctx.clone())
        .await
        .expect("invalid is not an error");
    assert_eq!(
        action,
        Action::await_change(),
        "no requeue: waits for the spec to change"
    );
    assert_eq!(
        lines(&log),
        [
            format!("GET {NS}/secrets/order-notify-auth"),
            format!("GET {NS}/secrets/order-notify-wechat"),
            format!("PATCH {STATUS_MINIMAL}"),
            format!("POST {EVENTS}"),
        ]
    );
    let written = status_written
        .lock()
        .expect("lock")
        .clone()
        .expect("status written");
    let reconciled = written["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Reconciled")
        .expect("Reconciled")
        .clone();
    assert_eq!(reconciled["status"], "False");
    assert_eq!(reconciled["reason"], "InvalidSpec");
    assert!(
        reconciled["message"]
            .as_str()
            .expect("msg")
            .contains("spec.autoscaling.enabled"),
        "{reconciled}"
    );

    // The watch event of that very status write brings the object back: nothing more is written.
    pc.status = Some(serde_json::from_value(written).expect("status parses"));
    log.lock().expect("log").clear();
    let action = run(pc, ctx).await.expect("still invalid");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        lines(&log),
        [
            format!("GET {NS}/secrets/order-notify-auth"),
            format!("GET {NS}/secrets/order-notify-wechat"),
        ],
        "an unchanged invalid PushChannel causes no write and no event"
    );
}

#[tokio::test]
async fn apply_failures_are_reported_and_back_off_per_object() {
    let (client, log) = api_server(Box::new(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", p) if p.ends_with("/secrets/order-notify-wechat") => (
            StatusCode::OK,
            secret("order-notify-wechat", &["appId", "appSecret"]),
        ),
        ("GET", p) if p.ends_with("/secrets/order-notify-auth") => {
            (StatusCode::OK, secret("order-notify-auth", &["token"]))
        }
        ("PATCH", p) if p.ends_with("/configmaps/order-notify-pusher") => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
        ),
        _ => echo(s),
    }));
    let ctx = context(client);
    let pc = Arc::new(example("pushchannel-minimal.yaml"));
    let err = run((*pc).clone(), ctx.clone())
        .await
        .expect_err("apply fails");
    assert_eq!(err.metric_label(), "apply");
    let log_now = log.lock().expect("log").clone();
    let status = &find(&log_now, "PATCH", STATUS_MINIMAL).body;
    let reconciled = condition(status, "Reconciled");
    assert_eq!(reconciled["reason"], "ApplyFailed");
    assert!(
        reconciled["message"]
            .as_str()
            .expect("msg")
            .contains("etcdserver")
    );
    // Exponential per object, capped, and independent between objects.
    let delays: Vec<Action> = (0..5)
        .map(|_| error_policy(pc.clone(), &err, ctx.clone()))
        .collect();
    let secs = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8), secs(8)]);
    let mut other = (*pc).clone();
    other.metadata.name = Some("other".into());
    assert_eq!(error_policy(Arc::new(other), &err, ctx.clone()), secs(1));
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains(r#"wxpush_operator_reconcile_errors_total{kind="apply"} 1"#),
        "{metrics}"
    );
}

const HPA_MINIMAL: &str =
    "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/order-notify-pusher";

fn minimal_secrets(s: &Seen) -> Option<(StatusCode, Value)> {
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", p) if p.ends_with("/secrets/order-notify-wechat") => Some((
            StatusCode::OK,
            secret("order-notify-wechat", &["appId", "appSecret"]),
        )),
        ("GET", p) if p.ends_with("/secrets/order-notify-auth") => {
            Some((StatusCode::OK, secret("order-notify-auth", &["token"])))
        }
        _ => None,
    }
}

fn hpa(owner_uid: Option<&str>) -> Value {
    let mut h = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "order-notify-pusher", "namespace": "shop", "uid": "hpa-uid",
                     "resourceVersion": "5"},
        "spec": {"maxReplicas": 3, "scaleTargetRef": {"apiVersion": "apps/v1",
                 "kind": "Deployment", "name": "something-else"}}});
    if let Some(uid) = owner_uid {
        h["metadata"]["ownerReferences"] = json!([{"apiVersion": "wxpush.io/v1alpha1",
            "kind": "PushChannel", "name": "order-notify", "uid": uid, "controller": true}]);
    }
    h
}

/// Issue 12, finding "It deletes a same-named HPA without checking that it owns it": an HPA of
/// the PushChannel's child name that the PushChannel does not own is left alone; one it owns is
/// deleted with its uid as a precondition.
#[tokio::test]
async fn deletes_a_same_named_hpa_without_checking_it_owns_it() {
    for (owner, deleted) in [
        (None, false),
        (Some("someone-else"), false),
        (Some("pc-uid"), true),
    ] {
        let (client, log) = api_server(Box::new(move |s| {
            if let Some(a) = minimal_secrets(s) {
                return a;
            }
            match (s.method.as_str(), s.path.as_str()) {
                ("GET", HPA_MINIMAL) => (StatusCode::OK, hpa(owner)),
                ("DELETE", HPA_MINIMAL) => (StatusCode::OK, hpa(owner)),
                _ => echo(s),
            }
        }));
        run(example("pushchannel-minimal.yaml"), context(client))
            .await
            .expect("reconciles");
        let log = log.lock().expect("log").clone();
        let delete = log
            .iter()
            .find(|s| s.method == Method::DELETE && s.path == HPA_MINIMAL);
        assert_eq!(delete.is_some(), deleted, "owner {owner:?}");
        if let Some(d) = delete {
            assert_eq!(d.body["preconditions"]["uid"], "hpa-uid", "{}", d.body);
        }
    }
}

/// Issue 12, finding "Anyone who may edit a PushChannel may set `spec.pod.image` and run any
/// image with that channel's Secrets mounted": an image outside the operator's allowlist is
/// refused with a status condition naming `spec.pod.image`, and nothing is applied; an allowed
/// prefix is applied.
#[tokio::test]
async fn spec_pod_image_runs_any_image() {
    let mut pc = example("pushchannel-minimal.yaml");
    pc.spec.pod.image = Some("docker.io/attacker/miner:latest".into());
    let (client, log) = api_server(Box::new(|s| minimal_secrets(s).unwrap_or_else(|| echo(s))));
    let action = run(pc.clone(), context(client))
        .await
        .expect("invalid is no error");
    assert_eq!(action, Action::await_change());
    let log = log.lock().expect("log").clone();
    assert!(
        !log.iter().any(|s| s.path.contains("/deployments/")),
        "a Deployment was written"
    );
    let status = &find(&log, "PATCH", STATUS_MINIMAL).body;
    let reconciled = condition(status, "Reconciled");
    assert_eq!(reconciled["reason"], "InvalidSpec");
    assert!(
        reconciled["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.pod.image")),
        "{reconciled}"
    );

    // Allowed by the operator's prefix: applied with that image.
    pc.spec.pod.image = Some("registry.example/wxpush/pusher:1.2".into());
    let (client, log) = api_server(Box::new(|s| {
        if let Some(a) = minimal_secrets(s) {
            return a;
        }
        match s.method.as_str() {
            "GET" => not_found("horizontalpodautoscalers"),
            _ => echo(s),
        }
    }));
    let ctx = Arc::new(Context::new(
        client,
        Settings {
            allowed_images: vec!["registry.example/wxpush/*".into()],
            ..settings()
        },
        Arc::new(Metrics::new()),
        Some("test".into()),
    ));
    run(pc, ctx).await.expect("reconciles");
    let log = log.lock().expect("log").clone();
    let deployment = &find(
        &log,
        "PATCH",
        &format!("{APPS}/deployments/order-notify-pusher"),
    )
    .body;
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/wxpush/pusher:1.2"
    );
}

/// A spec field this version does not know (noted by the PushChannel watch) is named in a
/// Warning Event before anything else, once per generation: not again on the next reconcile of
/// the same generation, again when the spec changes.
#[tokio::test]
async fn unknown_spec_fields_are_named_in_one_event_per_generation() {
    let (client, log) = api_server(Box::new(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", p) if p.ends_with("/secrets/order-notify-auth") => {
            (StatusCode::OK, secret("order-notify-auth", &["token"]))
        }
        ("GET", p) if p.ends_with("/secrets/order-notify-wechat") => (
            StatusCode::OK,
            secret("order-notify-wechat", &["appId", "appSecret"]),
        ),
        ("GET", p) if p.contains("/horizontalpodautoscalers/") => {
            not_found("horizontalpodautoscalers")
        }
        _ => echo(s),
    }));
    let ctx = context(client);
    let mut pc = example("pushchannel-minimal.yaml");
    let paths = vec![
        "spec.fieldFromANewerCrd".to_string(),
        "spec.retry.newerRetryKnob".to_string(),
    ];
    ctx.unknown_fields
        .observe("shop/order-notify", Some(3), paths.clone());
    for _ in 0..2 {
        run(pc.clone(), ctx.clone())
            .await
            .expect("reconciles all the same");
    }
    let unknown_events = || -> Vec<Value> {
        log.lock()
            .expect("log")
            .iter()
            .filter(|s| s.path.starts_with(EVENTS) && s.body["reason"] == "UnknownFields")
            .map(|s| s.body.clone())
            .collect()
    };
    let events = unknown_events();
    assert_eq!(events.len(), 1, "once for generation 3: {events:?}");
    assert_eq!(events[0]["type"], "Warning");
    let note = events[0]["note"].as_str().expect("note");
    assert!(
        note.contains("spec.fieldFromANewerCrd, spec.retry.newerRetryKnob")
            && note.contains("generation 3"),
        "{note}"
    );
    assert_eq!(
        lines(&log)[0],
        format!("POST {EVENTS}"),
        "the warning comes first"
    );
    assert!(
        lines(&log).contains(&format!("PATCH {APPS}/deployments/order-notify-pusher")),
        "the rest of the spec is applied"
    );

    pc.metadata.generation = Some(4);
    pc.metadata.resource_version = Some("101".into());
    ctx.unknown_fields
        .observe("shop/order-notify", Some(4), paths);
    run(pc, ctx.clone()).await.expect("reconciles");
    let events = unknown_events();
    assert_eq!(events.len(), 2, "once more for generation 4: {events:?}");
    assert!(events[1]["series"].is_null(), "a new Event: {events:?}");
    assert!(
        events[1]["note"]
            .as_str()
            .is_some_and(|n| n.contains("generation 4")),
        "{events:?}"
    );
}
