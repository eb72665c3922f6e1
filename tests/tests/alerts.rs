//! The alert rules (`charts/wxpush-operator/alerts/wxpush.rules.yaml`, runbook docs/alerts.md):
//! - `promtool check rules` and `promtool test rules` (every alert has series that fire it and
//!   series that must not), on the committed file and on the rules the operator builds for one
//!   channel;
//! - a real `prometheus` on loopback loads them, and a real pusher whose secret the sandbox
//!   refuses fires `WxpushChannelPausedByConfiguration`.
//!
//! The firing run loads, besides the committed rules, a copy whose `for:` is `0s`, with scrapes
//! and evaluations every second: the real `for: 3m` would make the test wait minutes, and
//! promtool's unit tests already check the `for:` timing. The expressions are the committed
//! ones. Needs `promtool` and `prometheus` (Debian's `prometheus` package; scripts/setup.sh
//! installs it) and the built binaries (`cargo build --workspace --bins`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use wxpush_tests::pusher::{PusherProc, config as pusher_config};
use wxpush_tests::sandbox::{config, start};
use wxpush_tests::{ChildGuard, free_port, wait_for, workspace_root};

fn alerts_dir() -> PathBuf {
    workspace_root().join("charts/wxpush-operator/alerts")
}

fn rules_file() -> PathBuf {
    alerts_dir().join("wxpush.rules.yaml")
}

fn alert_names(rules: &Value) -> BTreeSet<String> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

fn committed_rules() -> Value {
    let text = std::fs::read_to_string(rules_file()).expect("the rules file");
    serde_yaml_ng::from_str(&text).expect("the rules are YAML")
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's prometheus package (scripts/setup.sh)"
            )
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_unit_tests_cover_every_alert_and_pass() {
    let names = alert_names(&committed_rules());
    assert_eq!(
        names,
        [
            "WxpushChannelPausedByConfiguration",
            "WxpushCircuitOpen",
            "WxpushDailyQuotaNearlySpent",
            "WxpushDeadLetters",
            "WxpushNoPusherReady",
            "WxpushOldestReadyMessageOld",
            "WxpushTokenRefreshFailing",
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    let tests = std::fs::read_to_string(alerts_dir().join("wxpush.rules.test.yaml"))
        .expect("the promtool tests");
    let runbook =
        std::fs::read_to_string(workspace_root().join("docs/alerts.md")).expect("runbook");
    for name in &names {
        // Each alert is expected to fire somewhere and expected silent somewhere.
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []"))
                && cases.iter().any(|c| c.contains("exp_labels")),
            "{name}: the promtool tests need a case where it fires and one where it does not"
        );
        assert!(
            runbook.contains(&format!("## {name}\n")),
            "docs/alerts.md has no runbook section for {name}"
        );
    }
    let (ok, out) = promtool(&["check", "rules", "wxpush.rules.yaml"], &alerts_dir());
    assert!(ok, "promtool check rules: {out}");
    let (ok, out) = promtool(&["test", "rules", "wxpush.rules.test.yaml"], &alerts_dir());
    assert!(ok && out.contains("SUCCESS"), "promtool test rules: {out}");
}

#[test]
fn the_rules_the_operator_builds_for_a_channel_pass_promtool() {
    let groups = wxpush_operator::reconcile::build::alert_groups("order-notify", "shop");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("channel.rules.yaml");
    std::fs::write(&path, json!({"groups": groups}).to_string()).expect("write");
    let (ok, out) = promtool(&["check", "rules", "channel.rules.yaml"], dir.path());
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "{out}");
}

/// The committed rules with every `for:` set to 0s, the group renamed, and a `copy` label on
/// each alert so that its alerts are told apart from the committed rules' ones.
fn fast_copy() -> Value {
    let mut rules = committed_rules();
    for g in rules["groups"].as_array_mut().expect("groups") {
        g["name"] = json!(format!("{}-fast", g["name"].as_str().unwrap_or("wxpush")));
        for r in g["rules"].as_array_mut().expect("rules") {
            if r.get("for").is_some() {
                r["for"] = json!("0s");
            }
            r["labels"]["copy"] = json!("for-0s");
        }
    }
    rules
}

struct Prometheus {
    _guard: ChildGuard,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, target: &str) -> Self {
        let fast = dir.join("fast.rules.yaml");
        std::fs::write(&fast, fast_copy().to_string()).expect("write the fast copy");
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [rules_file().display().to_string(), fast.display().to_string()],
            "scrape_configs": [{
                "job_name": "wxpush-pusher",
                "honor_labels": true,
                "static_configs": [{"targets": [target], "labels": {"namespace": "shop", "pod": "p1"}}],
            }],
        });
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config.to_string()).expect("write prometheus.yml");
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let guard = ChildGuard::spawn("prometheus", cmd);
        let base = format!("http://127.0.0.1:{port}");
        let http = wxpush_tests::sandbox::http();
        let probe = (http.clone(), format!("{base}/-/ready"));
        wait_for("prometheus /-/ready", Duration::from_secs(60), || {
            let (http, url) = probe.clone();
            async move {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        Self {
            _guard: guard,
            base,
            http,
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("JSON")
    }
}

#[tokio::test]
async fn a_real_prometheus_loads_the_rules_and_a_wrong_secret_fires_the_configuration_alert() {
    let sandbox = start(config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pusher_cfg = pusher_config(
        &sandbox.handle.base_url(),
        dir.path(),
        &json!({
            "credentials": {"appSecret": "a-secret-wechat-refuses"},
            "retry": {"throttledBackoff": "1s"},
            "rateLimit": {"dailyQuota": 5000},
        }),
    );
    let pusher = PusherProc::start(dir.path(), &pusher_cfg).await;
    let (status, _) = pusher
        .api
        .send(&json!({"touser": "o-user-1", "template_id": "TPL", "data": {"k": {"value": "v"}}}))
        .await;
    assert_eq!(
        status, 202,
        "the message is accepted while credentials are wrong"
    );

    let target = pusher.base.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(dir.path(), &target).await;

    // Every committed alert is loaded and evaluates without error.
    let expected = alert_names(&committed_rules());
    wait_for(
        "every rule loaded and healthy",
        Duration::from_secs(60),
        || async {
            let rules = prom.get("/api/v1/rules").await;
            let groups = rules["data"]["groups"].as_array()?.clone();
            let group = groups.iter().find(|g| g["name"] == "wxpush")?;
            let healthy: BTreeSet<String> = group["rules"]
                .as_array()?
                .iter()
                .filter(|r| r["type"] == "alerting" && r["health"] == "ok")
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect();
            (healthy == expected).then_some(())
        },
    )
    .await;

    // The configuration fault fires for this channel.
    let firing = wait_for(
        "WxpushChannelPausedByConfiguration firing",
        Duration::from_secs(90),
        || async {
            let alerts = prom.get("/api/v1/alerts").await;
            let list = alerts["data"]["alerts"].as_array()?.clone();
            let names: BTreeSet<String> = list
                .iter()
                .filter(|a| a["state"] == "firing")
                .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
                .collect();
            let hit = list.iter().find(|a| {
                a["labels"]["alertname"] == "WxpushChannelPausedByConfiguration"
                    && a["labels"]["copy"] == "for-0s"
                    && a["state"] == "firing"
            })?;
            assert_eq!(hit["labels"]["channel"], "engine-test");
            assert_eq!(hit["labels"]["namespace"], "shop");
            assert_eq!(hit["labels"]["severity"], "critical");
            Some(names)
        },
    )
    .await;
    for quiet in [
        "WxpushDeadLetters",
        "WxpushCircuitOpen",
        "WxpushDailyQuotaNearlySpent",
        "WxpushNoPusherReady",
    ] {
        assert!(!firing.contains(quiet), "{quiet} fired: {firing:?}");
    }
    // The committed rule (for: 3m) is pending meanwhile, not firing.
    wait_for(
        "the committed WxpushChannelPausedByConfiguration pending",
        Duration::from_secs(30),
        || async {
            let alerts = prom.get("/api/v1/alerts").await;
            let mine: Vec<Value> = alerts["data"]["alerts"]
                .as_array()?
                .iter()
                .filter(|a| {
                    a["labels"]["alertname"] == "WxpushChannelPausedByConfiguration"
                        && a["labels"].get("copy").is_none()
                })
                .cloned()
                .collect();
            assert!(
                mine.iter().all(|a| a["state"] != "firing"),
                "the committed rule fired before its for: 3m: {mine:?}"
            );
            mine.iter().any(|a| a["state"] == "pending").then_some(())
        },
    )
    .await;

    // The two gauges the rules read that exist for them: the configured quota, and the age of
    // the oldest ready message (here the paused channel's message moves between leased and
    // delayed between probes, so its value is not asserted; the store's unit test checks it).
    let metrics = pusher.api.metrics().await;
    assert!(
        metrics.contains("wxpush_daily_quota{channel=\"engine-test\"} 5000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wxpush_queue_oldest_ready_age_seconds{channel=\"engine-test\"} "),
        "{metrics}"
    );
}
