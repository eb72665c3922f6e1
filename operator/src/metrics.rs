//! The operator's own Prometheus metrics (`/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set `{result}` of `wxpush_operator_reconciles_total`: `applied`, `invalid`,
/// `waiting_for_secrets` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// How the reconcile ended.
    pub result: &'static str,
}

/// Label set `{kind}` of `wxpush_operator_reconcile_errors_total` (see
/// [`crate::reconcile::Error::metric_label`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's kind.
    pub kind: &'static str,
}

/// All the operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
    credential_checks: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let leader = Gauge::default();
        let credential_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "wxpush_operator_credential_checks",
            "access_token requests made to check a channel's credentials, by the condition's reason",
            credential_checks.clone(),
        );
        registry.register(
            "wxpush_operator_reconciles",
            "Reconciles of PushChannels, by result",
            reconciles.clone(),
        );
        registry.register(
            "wxpush_operator_reconcile_errors",
            "Failed reconciles, by error kind",
            errors.clone(),
        );
        registry.register(
            "wxpush_operator_reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "wxpush_operator_leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            credential_checks,
        }
    }

    /// Counts one reconcile and its duration.
    pub fn reconciled(&self, result: &'static str, seconds: f64) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.duration.observe(seconds);
    }

    /// Counts one failed reconcile.
    pub fn failed(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts one credentials check (one token request) by its reason (`TokenIssued`,
    /// `InvalidAppSecret`, …).
    pub fn credential_checked(&self, reason: &'static str) {
        self.credential_checks
            .get_or_create(&ResultLabels { result: reason })
            .inc();
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
