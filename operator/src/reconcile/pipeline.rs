//! The reconcile itself: one pass of the pipeline for one PushChannel, and the retry policy
//! after a failure.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::apply::{self, Prune};
use super::build::{self, BuildInput};
use super::context::Context;
use super::error::Error;
use super::status::{self, Observation, Outcome};
use super::{dereference, validate};
use crate::crd::PushChannel;

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
