//! Reconcile as a pipeline: *dereference* (the Secrets the PushChannel points to) →
//! *validate* (pure) → *check credentials* (one token request per credential change) → *build*
//! (pure) → *apply* (server-side apply) → *status* (+ Events).

pub mod apply;
pub mod build;
pub mod credentials;
pub mod dereference;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::crd::PushChannel;
use crate::metrics::Metrics;
use crate::unknown_fields::UnknownFields;
use apply::Prune;
use build::BuildInput;
use status::{Observation, Outcome};
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
    /// `CredentialsValid` ([`credentials`]). Off: the condition only says the Secrets exist.
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
    pub credential_checks: Option<Arc<credentials::CredentialChecks>>,
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
            .then(|| credentials::CredentialChecks::new(Duration::from_secs(10)))
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

    fn succeeded(&self, key: &str) {
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

/// Why a reconcile failed. An invalid spec or a missing Secret is not an error: it is
/// reported in status and waits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a referenced Secret failed (not: it does not exist).
    #[error("cannot read Secret {name}: {source}")]
    ReadSecret {
        /// The Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Applying a child failed.
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting an autoscaler that is no longer wanted failed.
    #[error("cannot delete {kind} {name}: {source}")]
    Delete {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("cannot write the PushChannel's status: {source}")]
    Status {
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The objects could not be built.
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

impl Error {
    /// Short label for `wxpush_operator_reconcile_errors_total{kind}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ReadSecret { .. } => "read_secret",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Status { .. } => "status",
            Self::Build(_) => "build",
        }
    }
}

fn key(pc: &PushChannel) -> String {
    format!("{}/{}", pc.namespace().unwrap_or_default(), pc.name_any())
}

/// Reconciles one PushChannel.
#[instrument(skip_all, fields(namespace = pc.namespace().unwrap_or_default(), name = pc.name_any()))]
pub async fn reconcile(pc: Arc<PushChannel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = Box::pin(run(&pc, &ctx)).await;
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok((label, _)) => {
            ctx.succeeded(&key(&pc));
            ctx.metrics.reconciled(label, seconds);
        }
        Err(e) => {
            ctx.metrics.reconciled("error", seconds);
            ctx.metrics.failed(e.metric_label());
        }
    }
    result.map(|(_, action)| action)
}

/// Maps a failure to a retry: exponential per object, from `backoff_base` to `backoff_max`.
// The signature is the one `Controller::run` calls.
#[allow(clippy::needless_pass_by_value)]
pub fn error_policy(pc: Arc<PushChannel>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(&key(&pc));
    warn!(
        namespace = pc.namespace().unwrap_or_default(),
        name = pc.name_any(),
        error = %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn run(pc: &PushChannel, ctx: &Context) -> Result<(&'static str, Action), Error> {
    let namespace = pc
        .namespace()
        .ok_or(build::BuildError::Missing("namespace"))?;
    let name = pc.name_any();
    report_unknown_fields(pc, ctx).await;
    let found = dereference::dereference(&ctx.client, &namespace, &pc.spec).await?;
    let credentials = dereference::check(&pc.spec, &namespace, &found);
    let mut problems = validate::validate(pc);
    problems.extend(validate::image(
        pc,
        &ctx.settings.default_image,
        &ctx.settings.allowed_images,
    ));
    let mut obs = Observation {
        channel: pc,
        credentials: credentials.as_ref().map(|_| ()).map_err(Clone::clone),
        outcome: Outcome::WaitingForSecrets,
        endpoint: build::endpoint(&name, &namespace),
        config_hash: None,
        token_check: None,
        events_url: None,
    };
    if !problems.is_empty() {
        info!(
            problems = problems.len(),
            "invalid spec: waiting for a change"
        );
        obs.outcome = Outcome::Invalid(problems);
        finish(ctx, &obs).await?;
        return Ok(("invalid", Action::await_change()));
    }
    let versions = match credentials {
        Ok(v) => v,
        Err(missing) => {
            info!(missing = missing.len(), "waiting for Secrets");
            finish(ctx, &obs).await?;
            return Ok((
                "waiting_for_secrets",
                Action::requeue(ctx.settings.requeue_waiting),
            ));
        }
    };
    if let Some(checks) = &ctx.credential_checks {
        obs.token_check = checks
            .check(
                &ctx.metrics,
                &ctx.client,
                &key(pc),
                &namespace,
                &pc.spec,
                &found,
            )
            .await?;
    }
    let owner = pc
        .controller_owner_ref(&())
        .ok_or(build::BuildError::Missing("uid"))?;
    let desired = build::build(&BuildInput {
        channel: pc,
        owner,
        secret_versions: &versions,
        default_image: &ctx.settings.default_image,
    })?;
    obs.config_hash = Some(desired.config_hash.clone());
    obs.events_url.clone_from(&desired.events_url);
    let prune = Prune {
        keda_available: ctx.settings.keda_available,
        pod_monitors_available: ctx.settings.pod_monitors_available,
        prometheus_rules_available: ctx.settings.prometheus_rules_available,
        events_ingress_may_exist: pc.status.as_ref().is_some_and(|s| s.events_url.is_some()),
        autoscalers_gone: pc.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == status::types::AUTOSCALING_ACTIVE && c.reason == status::REASON_DISABLED
            })
        }),
    };
    match apply::apply_all(&ctx.client, &namespace, &name, &desired, prune).await {
        Ok(applied) => {
            obs.outcome = Outcome::Applied(Box::new(applied));
            finish(ctx, &obs).await?;
            Ok(("applied", Action::requeue(ctx.settings.requeue_after)))
        }
        Err(e) => {
            obs.outcome = Outcome::ApplyFailed(e.to_string());
            if let Err(status_error) = finish(ctx, &obs).await {
                warn!(error = %status_error, "cannot report the apply failure in status");
            }
            Err(e)
        }
    }
}

/// Warns, once per generation, about spec fields this version ignored (read by the watch): in
/// the log and as a Warning Event on the PushChannel.
async fn report_unknown_fields(pc: &PushChannel, ctx: &Context) {
    let generation = pc.metadata.generation;
    let Some(paths) = ctx.unknown_fields.to_report(&key(pc), generation) else {
        return;
    };
    warn!(
        fields = %paths.join(", "),
        generation,
        "the spec has fields this operator version does not know: ignored (the CRD is newer \
         than the operator)"
    );
    let event = crate::unknown_fields::event(&paths, generation);
    // The reference names the object's version, so that the Recorder publishes a new Event for
    // a new generation rather than counting it as a repeat of the last one (with its old note).
    let mut reference = pc.object_ref(&());
    reference
        .resource_version
        .clone_from(&pc.metadata.resource_version);
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(reason = %event.reason, error = %e, "cannot publish Event");
    }
}

/// Writes the status and publishes the Events its changes call for.
async fn finish(ctx: &Context, obs: &Observation<'_>) -> Result<(), Error> {
    let next = status::desired_status(obs, Timestamp::now());
    let pc = obs.channel;
    if !status::write(&ctx.client, pc, &next).await? {
        return Ok(());
    }
    let reference = pc.object_ref(&());
    for event in status::transitions(pc.status.as_ref(), &next) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(reason = %event.reason, error = %e, "cannot publish Event");
        }
    }
    Ok(())
}
