//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas only one reconciles. The holder renews the Lease every `renew_every`; another
//! replica takes it over once `renewTime + leaseDurationSeconds` has passed. Every write carries
//! the `resourceVersion` it read, so two candidates cannot both win (the loser gets 409).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// What a candidate should do with the Lease as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// The pure rule: who may write the Lease `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == identity => Decision::Renew,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match &spec.renew_time {
                Some(MicroTime(t)) if *t + duration > now => Decision::Wait,
                _ => Decision::Acquire,
            }
        }
    }
}

/// Why leading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The Lease could not be renewed in time, or another replica holds it.
    Lost,
}

/// One candidate for the Lease.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
}

impl LeaderElection {
    /// A candidate called `identity` for Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_every: lease_duration / 3,
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt to take or renew the Lease. `Ok(true)` while we hold it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let call = async {
            let now = Timestamp::now();
            let current = self.api.get_opt(&self.name).await?;
            let decision = decide(
                current.as_ref().and_then(|l| l.spec.as_ref()),
                &self.identity,
                now,
            );
            let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_secs()),
                acquire_time: acquired.or(Some(MicroTime(now))),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            };
            let result = match (current, decision) {
                (_, Decision::Wait) => return Ok(false),
                (None, _) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(mine(0, None)),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
                (Some(mut lease), decision) => {
                    let old = lease.spec.take().unwrap_or_default();
                    let transitions = old.lease_transitions.unwrap_or(0);
                    lease.spec = Some(if decision == Decision::Renew {
                        mine(transitions, old.acquire_time)
                    } else {
                        mine(transitions.saturating_add(1), None)
                    });
                    // Carries the resourceVersion read above: a concurrent writer makes this 409.
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await
                }
            };
            match result {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(self.renew_every.max(Duration::from_secs(1)), call).await {
            Ok(r) => r,
            Err(_) => Ok(false),
        }
    }

    /// Waits until this candidate holds the Lease (`true`) or shutdown is asked for (`false`).
    pub async fn acquire(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        info!(lease = %self.name, identity = %self.identity, "waiting to become leader");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot read or write the leader Lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.renew_every) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Renews the Lease until shutdown (`Ended::Shutdown`) or until it cannot be renewed for
    /// two thirds of its duration, or another holder appears (`Ended::Lost`).
    pub async fn keep(&self, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let deadline = self.lease_duration * 2 / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.renew_every) => {}
                _ = shutdown.wait_for(|s| *s) => return Ended::Shutdown,
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another replica holds the Lease");
                    return Ended::Lost;
                }
                Err(e) => warn!(error = %e, "cannot renew the leader Lease"),
            }
            if last_renewed.elapsed() > deadline {
                warn!(lease = %self.name, "leader Lease not renewed in time");
                return Ended::Lost;
            }
        }
    }

    /// Gives the Lease up so that a standby takes over at once rather than after it expires.
    pub async fn release(&self) {
        let call = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(())) => info!(lease = %self.name, "released the leader Lease"),
            Ok(Err(e)) => warn!(error = %e, "cannot release the leader Lease"),
            Err(_) => warn!("releasing the leader Lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&spec(None, 0)), "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&spec(Some("a"), 100)), "a", now),
            Decision::Renew
        );
        assert_eq!(decide(Some(&spec(Some("b"), 1)), "a", now), Decision::Wait);
        assert_eq!(
            decide(Some(&spec(Some("b"), 16)), "a", now),
            Decision::Acquire
        );
    }
}
