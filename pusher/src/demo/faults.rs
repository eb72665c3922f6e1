//! `demo --faults MODE`: the same load with the WeChat sandbox misbehaving, through the
//! sandbox's own fault injection ([`FaultConfig`], [`OutageSpec`]). Each mode also tightens the
//! pusher's timeouts, backoff and breaker so that a run at the default count ends in seconds,
//! and paces sends so that the fault meets traffic in flight.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use wxpush_sandbox::{FaultConfig, OutageSpec};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// A slow tail: 3% of sends are processed, then answered only after 3 s — past the
    /// pusher's 1 s response timeout, so the pusher retries and the sandbox de-duplicates.
    Tail,
    /// A flaky link: 3% connection resets, 3% HTTP 502, 6% errcode -1 (system busy).
    Flaky,
    /// An outage: the sandbox refuses every connection for 3 s, starting 1 s into the run.
    Outage,
    /// Token trouble: every access_token is revoked every 700 ms, so sends get 40001.
    Tokens,
    /// Template checks: the sandbox knows the account's templates and every 5th message breaks
    /// its template; the pusher refuses those at accept, and no send is spent on them.
    Templates,
}

/// The template the demo sends in `templates` mode (the sandbox's catalogue holds it).
pub const DEMO_TEMPLATE: &str = "ORDER_SHIPPED";

/// The sandbox's template catalogue in `templates` mode.
pub fn demo_catalogue() -> Vec<wxpush_sandbox::TemplateDef> {
    vec![wxpush_sandbox::TemplateDef {
        template_id: DEMO_TEMPLATE.into(),
        kind: wxpush_sandbox::TemplateKind::Template,
        title: "Order shipped".into(),
        keywords: vec!["character_string1".into(), "thing2".into()],
        one_time: false,
        const_values: BTreeMap::new(),
    }]
}

/// Message `i` of the run: in `templates` mode every 5th one breaks its template, in turn by
/// an unknown template, a missing keyword, a 21-character `thing`, Chinese in a
/// `character_string` and a line break (their `touser` starts with `demo-bad-`).
pub fn demo_message(mode: Option<FaultMode>, i: usize) -> Value {
    if mode != Some(FaultMode::Templates) {
        return json!({
            "touser": format!("demo-user-{}", i % 997),
            "template_id": "ORDER_SHIPPED",
            "url": "https://example.com/orders",
            "data": {"keyword1": {"value": format!("order {i}")},
                     "keyword2": {"value": "shipped"}},
        });
    }
    let mut m = json!({
        "touser": format!("demo-user-{}", i % 997),
        "template_id": DEMO_TEMPLATE,
        "url": "https://example.com/orders",
        "data": {"character_string1": {"value": format!("order-{i}")},
                 "thing2": {"value": "已发货"}},
    });
    if i % 5 == 4 {
        m["touser"] = json!(format!("demo-bad-{i}"));
        match (i / 5) % 5 {
            0 => m["template_id"] = json!("NOT_A_TEMPLATE"),
            1 => {
                if let Some(d) = m["data"].as_object_mut() {
                    d.remove("thing2");
                }
            }
            2 => m["data"]["thing2"]["value"] = json!("已".repeat(21)),
            3 => m["data"]["character_string1"]["value"] = json!(format!("订单{i}")),
            _ => m["data"]["thing2"]["value"] = json!("已发货\n明天到"),
        }
    }
    m
}

/// When the outage starts, after the faults are applied (just before the first send).
pub const OUTAGE_AFTER: Duration = Duration::from_secs(1);
/// How long the outage lasts.
pub const OUTAGE_FOR: Duration = Duration::from_secs(3);
/// How long a hanging send hangs in `tail`.
pub const TAIL_HANG: Duration = Duration::from_secs(3);
/// The token revocation period in `tokens`.
pub const TOKEN_EVERY: Duration = Duration::from_millis(700);

impl FaultMode {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tail => "tail",
            Self::Flaky => "flaky",
            Self::Outage => "outage",
            Self::Tokens => "tokens",
            Self::Templates => "templates",
        }
    }

    /// One sentence on what the sandbox does, for the report.
    pub fn describe(self) -> String {
        match self {
            Self::Tail => format!(
                "slow tail: 3% of sends answered only after {} (the pusher's response timeout is 1s)",
                humantime::format_duration(TAIL_HANG)
            ),
            Self::Flaky => {
                "flaky link: 3% connection resets, 3% HTTP 502, 6% errcode -1 (system busy)".into()
            }
            Self::Outage => format!(
                "outage: the WeChat sandbox refused every connection for {}, starting {} into the run",
                humantime::format_duration(OUTAGE_FOR),
                humantime::format_duration(OUTAGE_AFTER)
            ),
            Self::Tokens => format!(
                "token trouble: every access_token revoked every {} (sends get 40001)",
                humantime::format_duration(TOKEN_EVERY)
            ),
            Self::Templates => "template checks: every 5th message breaks its template (unknown \
                                template, missing keyword, 21-character thing, Chinese in a \
                                character_string, a line break)"
                .into(),
        }
    }

    /// What the sandbox injects.
    pub fn sandbox_faults(self) -> FaultConfig {
        let base = FaultConfig::default();
        match self {
            Self::Tail => FaultConfig {
                hang_share: 0.03,
                hang: TAIL_HANG,
                ..base
            },
            Self::Flaky => FaultConfig {
                reset_share: 0.03,
                http_5xx_share: 0.03,
                http_5xx_status: 502,
                errcodes: BTreeMap::from([(-1, 0.06)]),
                ..base
            },
            Self::Outage => FaultConfig {
                outage: Some(OutageSpec {
                    after: OUTAGE_AFTER,
                    duration: OUTAGE_FOR,
                }),
                ..base
            },
            Self::Tokens => FaultConfig {
                token_invalidate_every: Some(TOKEN_EVERY),
                ..base
            },
            Self::Templates => base,
        }
    }

    /// Pusher policy for fault runs (merged into the demo's config): short timeouts, quick
    /// backoff, a breaker that reacts within a second, a retry budget that outlasts the
    /// outage, and 64 requests in flight at most (unless `--max-in-flight` says otherwise).
    pub fn pusher_overrides() -> Value {
        json!({
            "timeouts": {"connect": "1s", "tlsHandshake": "1s", "responseHeader": "1s", "request": "2s"},
            "retry": {"maxAttempts": 40, "initialBackoff": "50ms", "maxBackoff": "1s", "maxAge": "2m"},
            "circuitBreaker": {"enabled": true, "failureRatio": 0.5, "minimumRequests": 10,
                               "window": "2s", "openDuration": "1s", "halfOpenProbes": 3},
            // A ceiling near the load, so that a timed-out send is retried as the report shows:
            // far above it, a hedged request answers first and no timeout is seen.
            "concurrency": {"maxInFlight": 64},
        })
    }

    /// Sends per second to WeChat for `count` messages, so that the run lasts about 4 s and the
    /// fault meets traffic (never below 20/s).
    pub fn paced_rate(count: usize) -> u32 {
        u32::try_from(count / 4).unwrap_or(u32::MAX).max(20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_is_a_valid_sandbox_fault_config() {
        for m in [
            FaultMode::Tail,
            FaultMode::Flaky,
            FaultMode::Outage,
            FaultMode::Tokens,
            FaultMode::Templates,
        ] {
            assert_eq!(m.sandbox_faults().validate(), Ok(()), "{}", m.name());
            assert!(!m.describe().is_empty());
        }
        assert_eq!(FaultMode::paced_rate(2000), 500);
        let bad = (0..25)
            .map(|i| demo_message(Some(FaultMode::Templates), i))
            .filter(|m| {
                m["touser"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("demo-bad-"))
            })
            .count();
        assert_eq!(bad, 5);
        assert_eq!(FaultMode::paced_rate(10), 20);
    }
}
