//! What a demo run did, and the closing table. The table's last line is the summary that
//! `scripts/readme-commands.sh` checks: `delivered N/N, 0 lost`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::FaultMode;

/// HTTP attempts to WeChat by result (`wxpush_send_attempts_total`), during the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Attempts {
    /// errcode 0.
    pub ok: u64,
    /// A retryable errcode or HTTP status.
    pub retryable: u64,
    /// A permanent errcode.
    pub permanent: u64,
    /// A timeout ran out.
    pub timeout: u64,
    /// Refused, reset and other transport errors.
    pub transport: u64,
}

impl Attempts {
    /// All attempts.
    pub fn total(&self) -> u64 {
        self.ok + self.retryable + self.permanent + self.timeout + self.transport
    }
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The fault mode, if any.
    pub faults: Option<FaultMode>,
    /// What the sandbox was told to do wrong.
    pub fault_description: Option<String>,
    /// Messages refused at accept by the template check (400 `template_rule`).
    pub refused: u64,
    /// Those refusals by rule.
    pub refused_by_rule: BTreeMap<String, u64>,
    /// Requests that reached WeChat (the sandbox) for refused messages: 0, as nothing refused
    /// at accept is sent.
    pub sends_for_refused: u64,
    /// Messages answered 202.
    pub accepted: usize,
    /// Messages the pusher reports delivered.
    pub delivered: u64,
    /// Messages that ended otherwise (failed + expired + dead-lettered).
    pub not_delivered: u64,
    /// Ended with a permanent errcode.
    pub failed: u64,
    /// Ran out of retry budget or `expires_at`.
    pub expired: u64,
    /// Moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Still unsettled when the demo stopped waiting.
    pub pending: u64,
    /// Accepted, yet neither received by WeChat (the sandbox's unique count) nor ended
    /// otherwise nor still pending.
    pub lost: u64,
    /// Whether every accepted message settled before the timeout.
    pub settled: bool,
    /// Unique deliveries the sandbox counted during the run.
    pub sandbox_delivered_unique: u64,
    /// Repeated sends the sandbox de-duplicated by `client_msg_id`.
    pub duplicates_suppressed: u64,
    /// HTTP attempts by result.
    pub attempts: Attempts,
    /// Attempts beyond the one that settled each message.
    pub retries: u64,
    /// Hedged requests (`wxpush_hedged_sends_total`): second attempts under the same
    /// `client_msg_id` when the first one is slow.
    pub hedges: u64,
    /// Times the circuit breaker opened (`wxpush_circuit_opens_total`).
    pub breaker_opens: u64,
    /// access_token fetches that succeeded (`wxpush_token_requests_total{result="ok"}`).
    pub token_requests: u64,
    /// Token calls the sandbox answered (classic + stable).
    pub sandbox_token_calls: u64,
    /// Errcodes the sandbox answered other than 0, by code.
    pub sandbox_errcodes: BTreeMap<String, u64>,
    /// Faults the sandbox injected, by kind.
    pub sandbox_faults: BTreeMap<String, u64>,
    /// Seconds spent accepting.
    pub accept_seconds: f64,
    /// Seconds from the first request until the last message settled.
    pub total_seconds: f64,
    /// Accepted messages per second.
    pub accept_rate: f64,
    /// Delivered messages per second, end to end.
    pub delivery_rate: f64,
    /// Accepted → delivered latency percentiles in milliseconds (p50, p90, p99, max).
    pub latency_ms: Value,
    /// Where to look: metrics, the sandbox's stats, some status URLs.
    pub urls: Vec<String>,
    /// The first few message ids.
    pub sample_ids: Vec<String>,
}

fn map_line(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DemoReport {
    /// Every accepted message delivered, none lost.
    pub fn ok(&self) -> bool {
        self.settled
            && self.lost == 0
            && self.delivered == self.accepted as u64
            && self.sends_for_refused == 0
    }

    /// The one-line summary: `delivered N/N, 0 lost, in S s (R messages/s)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "delivered {}/{}, {} lost, in {:.2} s ({:.0} messages/s end to end)",
            self.delivered, self.accepted, self.lost, self.total_seconds, self.delivery_rate
        );
        if self.pending > 0 {
            let _ = write!(s, "; {} still pending", self.pending);
        }
        s
    }

    /// The closing table, ending with [`DemoReport::summary`].
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = Vec::new();
        if let Some(d) = &self.fault_description {
            rows.push(("fault injected", d.clone()));
        }
        if self.refused > 0 || self.faults == Some(FaultMode::Templates) {
            rows.push((
                "refused at accept (400 template_rule)",
                format!("{} ({})", self.refused, map_line(&self.refused_by_rule)),
            ));
            rows.push((
                "sends to WeChat for refused messages",
                format!("{} (no quota spent on them)", self.sends_for_refused),
            ));
        }
        rows.push(("accepted (202, stored)", self.accepted.to_string()));
        rows.push((
            "delivered (pusher)",
            format!("{}/{}", self.delivered, self.accepted),
        ));
        rows.push((
            "received by WeChat (sandbox, unique)",
            self.sandbox_delivered_unique.to_string(),
        ));
        rows.push((
            "duplicates de-duplicated by client_msg_id",
            self.duplicates_suppressed.to_string(),
        ));
        let a = &self.attempts;
        rows.push((
            "send attempts",
            format!(
                "{} (ok {}, retryable {}, timeout {}, transport {}, permanent {})",
                a.total(),
                a.ok,
                a.retryable,
                a.timeout,
                a.transport,
                a.permanent
            ),
        ));
        rows.push(("retries", self.retries.to_string()));
        rows.push(("hedged requests", self.hedges.to_string()));
        rows.push(("circuit breaker openings", self.breaker_opens.to_string()));
        rows.push((
            "access_token fetches (pusher ok / sandbox calls)",
            format!("{} / {}", self.token_requests, self.sandbox_token_calls),
        ));
        rows.push(("errcodes WeChat answered", map_line(&self.sandbox_errcodes)));
        rows.push((
            "faults the sandbox injected",
            map_line(&self.sandbox_faults),
        ));
        rows.push((
            "failed / expired / dead letters",
            format!(
                "{} / {} / {}",
                self.failed, self.expired, self.dead_lettered
            ),
        ));
        if self.pending > 0 {
            rows.push(("still pending", self.pending.to_string()));
        }
        rows.push(("lost", self.lost.to_string()));
        rows.push((
            "accepting",
            format!(
                "{:.2} s ({:.0} messages/s)",
                self.accept_seconds, self.accept_rate
            ),
        ));
        let l = &self.latency_ms;
        let ms = |k: &str| l[k].as_f64().unwrap_or(0.0);
        rows.push((
            "latency accepted → delivered",
            format!(
                "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} sampled)",
                ms("p50"),
                ms("p90"),
                ms("p99"),
                ms("max"),
                l["sampled"]
            ),
        ));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let pad = width - k.chars().count();
            let _ = writeln!(out, "  {k}{}  {v}", " ".repeat(pad));
        }
        out.push_str(&self.summary());
        out
    }
}
