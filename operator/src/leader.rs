//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas only one reconciles. The holder renews the Lease every `renew_every`; another
//! replica takes it over once it has seen the Lease unchanged for `leaseDurationSeconds`, timed
//! on its own monotonic clock from when it last saw the Lease change (as client-go does): the
//! holder's `renewTime` is never compared with the local clock, so clock skew between pods
//! cannot make two leaders. Every write carries the `resourceVersion` it read, so two
//! candidates cannot both win (the loser gets 409).
//!
//! The times written into the Lease (`acquireTime`, `renewTime`) come from [`crate::clock`],
//! which a debug build can skew (`WXPUSH_CLOCK_OFFSET`) for the end-to-end test with skewed
//! clocks. This is not the `kube-leader-election` or `kube-lease-manager` crate: both decide
//! expiry by comparing the Lease's `renewTime` plus its duration with the local wall clock (the
//! latter with a grace period), so a clock 30 s ahead would take a live Lease over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
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

/// The Lease as this candidate last saw it, and when (on its own monotonic clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    record: String,
    at: Instant,
}

/// The longest `leaseDurationSeconds` taken from a Lease (a crafted value cannot overflow
/// anything).
const MAX_LEASE_SECS: u64 = 3600;

/// The pure rule: who may write the Lease at `now` (this candidate's monotonic clock).
/// `observed` is what this candidate saw last; it is updated here. Another holder's Lease
/// counts as expired only once it has not changed for its `leaseDurationSeconds` since this
/// candidate first saw it as it is.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    observed: &mut Option<Observed>,
    now: Instant,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == identity => Decision::Renew,
        Some(h) => {
            let record = format!(
                "{h}|{:?}|{:?}|{:?}|{:?}",
                spec.renew_time.as_ref().map(|t| t.0),
                spec.acquire_time.as_ref().map(|t| t.0),
                spec.lease_transitions,
                spec.lease_duration_seconds
            );
            let seen = match observed {
                Some(o) if o.record == record => o.at,
                _ => {
                    *observed = Some(Observed { record, at: now });
                    return Decision::Wait;
                }
            };
            let secs = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(15)
                .clamp(1, MAX_LEASE_SECS);
            match seen.checked_add(Duration::from_secs(secs)) {
                Some(expiry) if expiry > now => Decision::Wait,
                Some(_) => Decision::Acquire,
                None => Decision::Wait,
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
    observed: std::sync::Arc<Mutex<Option<Observed>>>,
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
            observed: std::sync::Arc::default(),
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt to take or renew the Lease. `Ok(true)` while we hold it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let call = async {
            let now = crate::clock::now();
            let current = self.api.get_opt(&self.name).await?;
            let decision = {
                let mut observed = self
                    .observed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                decide(
                    current.as_ref().and_then(|l| l.spec.as_ref()),
                    &self.identity,
                    &mut observed,
                    Instant::now(),
                )
            };
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
            spec.renew_time = Some(MicroTime(crate::clock::now()));
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
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn spec(holder: Option<&str>, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut seen = None;
        assert_eq!(decide(None, "a", &mut seen, t0), Decision::Acquire);
        assert_eq!(
            decide(Some(&spec(None, wall)), "a", &mut seen, t0),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), wall)), "a", &mut seen, t0),
            Decision::Renew
        );
        // Another holder: expiry is timed from when this candidate saw the Lease as it is,
        // however old its renewTime looks.
        let old = wall - SignedDuration::from_secs(3600);
        let b = spec(Some("b"), old);
        assert_eq!(decide(Some(&b), "a", &mut seen, t0), Decision::Wait);
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(decide(Some(&b), "a", &mut seen, later(14)), Decision::Wait);
        assert_eq!(
            decide(Some(&b), "a", &mut seen, later(15)),
            Decision::Acquire
        );
        // A renewal (any change) restarts the count.
        let b2 = spec(Some("b"), old + SignedDuration::from_secs(5));
        assert_eq!(decide(Some(&b2), "a", &mut seen, later(15)), Decision::Wait);
        assert_eq!(decide(Some(&b2), "a", &mut seen, later(29)), Decision::Wait);
        assert_eq!(
            decide(Some(&b2), "a", &mut seen, later(30)),
            Decision::Acquire
        );
    }

    #[test]
    fn a_crafted_lease_does_not_panic() {
        let now = Instant::now();
        for (t, d) in [
            (Timestamp::MAX, Some(i32::MAX)),
            (Timestamp::MIN, Some(i32::MIN)),
            (Timestamp::MAX, Some(-1)),
            (Timestamp::MIN, None),
        ] {
            let s = LeaseSpec {
                holder_identity: Some("b".into()),
                lease_duration_seconds: d,
                renew_time: Some(MicroTime(t)),
                ..LeaseSpec::default()
            };
            let mut seen = None;
            assert_eq!(decide(Some(&s), "a", &mut seen, now), Decision::Wait);
            let _ = decide(Some(&s), "a", &mut seen, now + Duration::from_secs(4000));
        }
    }

    /// Two candidates share one Lease (compare-and-swap on a version, as the API server does);
    /// B's wall clock runs 30 s ahead of A's. Each runs the same loop as `acquire`/`keep`:
    /// read, decide, write its own wall time as renewTime. At every step at most one leads,
    /// and after the leader stops, the other takes over.
    #[test]
    fn two_candidates_with_skewed_clocks_never_both_lead() {
        struct Cand {
            id: &'static str,
            skew: SignedDuration,
            seen: Option<Observed>,
            leading: bool,
            alive: bool,
        }
        let base_wall = Timestamp::now();
        let base = Instant::now();
        let mut lease: Option<LeaseSpec> = None;
        let mut version = 0u64;
        let mut cands = [
            Cand {
                id: "a",
                skew: SignedDuration::ZERO,
                seen: None,
                leading: false,
                alive: true,
            },
            Cand {
                id: "b",
                skew: SignedDuration::from_secs(30),
                seen: None,
                leading: false,
                alive: true,
            },
        ];
        let mut b_led_after_a_stopped = false;
        // Steps of 1 s; each candidate acts every 5 s (renew_every = 15 s / 3), B offset by 2 s.
        for step in 0u64..120 {
            if step == 60 {
                cands[0].alive = false;
                cands[0].leading = false;
            }
            for (i, c) in cands.iter_mut().enumerate() {
                if !c.alive || !(step + 2 * i as u64).is_multiple_of(5) {
                    continue;
                }
                let now = base + Duration::from_secs(step);
                let wall = base_wall + SignedDuration::from_secs(step as i64) + c.skew;
                let read_version = version;
                let d = decide(lease.as_ref(), c.id, &mut c.seen, now);
                let wrote = match d {
                    Decision::Wait => false,
                    Decision::Acquire | Decision::Renew => {
                        // The write carries the version read: it wins only if nobody wrote since.
                        if read_version == version {
                            lease = Some(LeaseSpec {
                                holder_identity: Some(c.id.into()),
                                lease_duration_seconds: Some(15),
                                renew_time: Some(MicroTime(wall)),
                                ..LeaseSpec::default()
                            });
                            version += 1;
                            true
                        } else {
                            false
                        }
                    }
                };
                c.leading = wrote;
                if wrote && c.id == "b" && step > 60 {
                    b_led_after_a_stopped = true;
                }
            }
            let leaders = cands.iter().filter(|c| c.leading).count();
            assert!(leaders <= 1, "two leaders at step {step}");
            if (5..60).contains(&step) {
                assert!(cands[0].leading, "A keeps leading at step {step}");
            }
        }
        assert!(
            b_led_after_a_stopped,
            "B takes over once A stopped renewing"
        );
    }
}
