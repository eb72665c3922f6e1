//! What every reconcile shares: the operator's settings, the API client, the Event recorder,
//! the metrics and the per-object failure counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;
use tracing::warn;

use super::credentials::CredentialChecks;
use crate::metrics::Metrics;
use crate::unknown_fields::UnknownFields;
use wxpush_api::policy::{Backoff, HumanDuration};

/// Default of `--requeue`: re-check a reconciled PushChannel this often.
pub const DEFAULT_REQUEUE: HumanDuration = HumanDuration::mins(5);
/// Default of `--requeue-waiting`: re-check a PushChannel waiting for its Secrets this often.
pub const DEFAULT_REQUEUE_WAITING: HumanDuration = HumanDuration::mins(1);
/// Default of `--backoff-base`: the first delay after a failed reconcile.
pub const DEFAULT_BACKOFF_BASE: HumanDuration = HumanDuration::secs(1);
/// Default of `--backoff-max`: the longest delay after failures.
pub const DEFAULT_BACKOFF_MAX: HumanDuration = HumanDuration::mins(5);

/// Tunables of the reconciler (the operator's flags; their defaults are the constants above,
/// which [`Settings::default`] uses too).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image used when a PushChannel names none.
    pub default_image: String,
    /// Re-check a reconciled PushChannel this often even without events.
    pub requeue_after: Duration,
    /// Re-check a PushChannel waiting for its Secrets this often (their watch usually comes
    /// first).
    pub requeue_waiting: Duration,
    /// First delay after a failed reconcile; doubles per consecutive failure of that object.
    pub backoff_base: Duration,
    /// Longest delay after failures.
    pub backoff_max: Duration,
    /// KEDA's ScaledObject CRD is served.
    pub keda_available: bool,
    /// prometheus-operator's PodMonitor CRD is served (then each channel gets a PodMonitor).
    pub pod_monitors_available: bool,
    /// prometheus-operator's PrometheusRule CRD is served (then each channel gets its alerts).
    pub prometheus_rules_available: bool,
    /// Images a PushChannel's `spec.pod.image` may name: exact references, or prefixes ending
    /// in `*`. Empty: only [`Self::default_image`].
    pub allowed_images: Vec<String>,
    /// Fetch one access_token per credential change and show the answer in
    /// `CredentialsValid` ([`super::credentials`]). Off: the condition only says the Secrets exist.
    pub check_credentials: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_image: crate::crd::DEFAULT_IMAGE.into(),
            requeue_after: DEFAULT_REQUEUE.get(),
            requeue_waiting: DEFAULT_REQUEUE_WAITING.get(),
            backoff_base: DEFAULT_BACKOFF_BASE.get(),
            backoff_max: DEFAULT_BACKOFF_MAX.get(),
            keda_available: false,
            pod_monitors_available: false,
            prometheus_rules_available: false,
            allowed_images: Vec::new(),
            check_credentials: false,
        }
    }
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// See [`Settings`].
    pub settings: Settings,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Spec fields this version ignored, per object (filled by the PushChannel watch).
    pub unknown_fields: Arc<UnknownFields>,
    /// The credentials check and its per-object cache (with [`Settings::check_credentials`]).
    pub credential_checks: Option<Arc<CredentialChecks>>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`, publishing Events as `wxpush-operator` (instance `instance`).
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "wxpush-operator".into(),
            instance,
        };
        let credential_checks = settings
            .check_credentials
            .then(|| CredentialChecks::new(Duration::from_secs(10)))
            .and_then(|built| {
                built
                    .map_err(|e| warn!(error = %e, "cannot build the credentials checker: checks are off"))
                    .ok()
            })
            .map(Arc::new);
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            unknown_fields: Arc::default(),
            credential_checks,
            failures: Arc::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only loses backoff counts; keep going with it.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The delay before retrying `key` after one more failure.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let n = {
            let mut f = self.failures();
            let n = f.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        Backoff::doubling(self.settings.backoff_base, self.settings.backoff_max).delay(n, 0.0)
    }

    pub(super) fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    /// Forgets a deleted object's failure count (`namespace/name`), so that the map holds only
    /// objects that exist.
    pub fn forget(&self, key: &str) {
        self.failures().remove(key);
        self.unknown_fields.forget(key);
        if let Some(c) = &self.credential_checks {
            c.forget(key);
        }
    }

    /// Objects with a failure count (for tests).
    pub fn failing(&self) -> usize {
        self.failures().len()
    }
}
