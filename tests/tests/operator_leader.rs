//! Leader election with real processes and skewed clocks: two `wxpush-operator`s with
//! `--leader-election` share one Lease on the Kubernetes API emulator, one of them with its wall
//! clock 30 s ahead (`WXPUSH_CLOCK_OFFSET=30s`, honoured by debug builds only: it moves the times
//! that operator writes into the Lease). Both `wxpush_operator_leader` gauges are sampled
//! repeatedly: after the first election exactly one leads at every sample, and after the leader
//! is killed (SIGKILL: the Lease is not released) the other takes over within a bounded time.
//! Run both ways: the skewed operator as the standby and as the first leader.
//!
//! Build the binaries first: `cargo build -p wxpush-operator --bins` (same target dir).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use wxpush_tests::kube::{KubeEmulator, Kubectl, OperatorProcess};
use wxpush_tests::wait_for;

/// The Lease's duration: the standby takes over once the Lease stayed unchanged this long.
const LEASE_SECS: u64 = 6;
/// How far the skewed operator's clock runs ahead (more than the Lease's duration, so that an
/// election comparing `renewTime` with the local clock would take a live Lease over at once).
const SKEW: &str = "30s";
const SKEW_SECS: i64 = 30;
/// How long exactly one leader is asserted, sample after sample.
const STEADY: Duration = Duration::from_secs(3 * LEASE_SECS);
/// The longest a takeover after the leader's death may take: the Lease's duration from the
/// standby's last look, plus its retry period (a third of it), plus slack for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(4 * LEASE_SECS);
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

struct Candidate {
    name: &'static str,
    process: Option<OperatorProcess>,
    addr: SocketAddr,
    skewed: bool,
}

async fn start(api: &KubeEmulator, name: &'static str, skewed: bool) -> Candidate {
    let lease = format!("{LEASE_SECS}s");
    let env: &[(&str, &str)] = if skewed {
        &[("WXPUSH_CLOCK_OFFSET", SKEW)]
    } else {
        &[]
    };
    let process = OperatorProcess::start(
        api,
        &[
            "--leader-election",
            "true",
            "--lease-duration",
            &lease,
            "--lease-namespace",
            "default",
            "--identity",
            name,
        ],
        env,
    )
    .await;
    Candidate {
        name,
        addr: process.addr,
        process: Some(process),
        skewed,
    }
}

/// Whether the candidate's `wxpush_operator_leader` gauge reads 1 (a dead one does not lead).
async fn leads(http: &reqwest::Client, c: &Candidate) -> bool {
    if c.process.is_none() {
        return false;
    }
    let Ok(resp) = http
        .get(format!("http://{}/metrics", c.addr))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return false;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("wxpush_operator_leader "))
        .is_some_and(|v| v.trim() == "1")
}

/// The names of the candidates that lead, sampled one after the other.
async fn leaders(http: &reqwest::Client, cands: &[Candidate]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for c in cands {
        if leads(http, c).await {
            out.push(c.name);
        }
    }
    out
}

/// Samples both gauges for `how_long`: every sample must show exactly `expected` leading.
async fn exactly_one_leads(
    http: &reqwest::Client,
    cands: &[Candidate],
    expected: &str,
    how_long: Duration,
) -> usize {
    let start = Instant::now();
    let mut samples = 0;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    while start.elapsed() < how_long {
        tick.tick().await;
        let now = leaders(http, cands).await;
        samples += 1;
        assert_eq!(
            now,
            [expected],
            "sample {samples} at {:?}: exactly {expected} leads",
            start.elapsed()
        );
    }
    samples
}

/// Checks that the Lease names `c` and, for the skewed one, carries its skewed clock.
async fn lease_is_held_by(kubectl: &Kubectl, c: &Candidate) {
    let lease = kubectl
        .get_json("lease", "wxpush-operator")
        .await
        .expect("kubectl get lease")
        .expect("the Lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], c.name, "{lease}");
    let renewed: Timestamp = lease["spec"]["renewTime"]
        .as_str()
        .expect("renewTime")
        .parse()
        .expect("a timestamp");
    let ahead = renewed.duration_since(Timestamp::now()).as_secs();
    if c.skewed {
        assert!(
            ahead > SKEW_SECS - 10,
            "the skewed operator writes its clock, {SKEW} ahead: renewTime is {ahead}s ahead"
        );
    } else {
        assert!(
            ahead < 10,
            "renewTime is {ahead}s ahead of the unskewed clock"
        );
    }
}

/// Starts `first`, awaits its election, starts `second`; asserts exactly one (the first) leads
/// throughout; kills it; awaits the second's takeover; asserts exactly one (the second) leads.
async fn skewed_pair(skewed_first: bool) {
    let (api, kubectl) = KubeEmulator::start_with_crd().await;
    let http = reqwest::Client::new();
    let (first_name, second_name) = if skewed_first {
        ("op-skewed", "op-plain")
    } else {
        ("op-plain", "op-skewed")
    };

    let first = start(&api, first_name, skewed_first).await;
    wait_for(
        &format!("{first_name} elected"),
        Duration::from_secs(30),
        || async { leads(&http, &first).await.then_some(()) },
    )
    .await;
    let second = start(&api, second_name, !skewed_first).await;
    let mut cands = [first, second];

    // Both run; the second has seen the Lease renewed by the first for longer than its duration
    // long before this ends, whatever the clocks say.
    let samples = exactly_one_leads(&http, &cands, first_name, STEADY).await;
    lease_is_held_by(&kubectl, &cands[0]).await;
    assert!(
        cands[1].process.is_some() && !leads(&http, &cands[1]).await,
        "the standby still runs"
    );

    // The leader dies without releasing the Lease.
    drop(cands[0].process.take());
    let killed = Instant::now();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let now = leaders(&http, &cands).await;
        assert!(now.len() <= 1, "two leaders during the handover: {now:?}");
        if now == [second_name] {
            break;
        }
        assert!(
            killed.elapsed() < TAKEOVER,
            "{second_name} did not take over within {TAKEOVER:?} of {first_name}'s death"
        );
    }
    let took = killed.elapsed();
    // The standby saw the last renewal at most a retry period (a third of the duration) after
    // it was written, and waits the whole duration from then: not less than two thirds of it.
    assert!(
        took >= Duration::from_secs(LEASE_SECS * 2 / 3) - Duration::from_millis(500),
        "{second_name} waited for the Lease to expire on its own clock, took {took:?}"
    );
    exactly_one_leads(&http, &cands, second_name, Duration::from_secs(LEASE_SECS)).await;
    lease_is_held_by(&kubectl, &cands[1]).await;
    eprintln!(
        "{first_name} led for {samples} samples; {second_name} took over {took:?} after its death"
    );
    let second = cands[1].process.take().expect("the second runs");
    assert_eq!(second.terminate(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test]
async fn a_standby_whose_clock_is_30s_ahead_never_takes_a_live_lease() {
    skewed_pair(false).await;
}

#[tokio::test]
async fn a_leader_whose_clock_is_30s_ahead_is_replaced_only_after_it_dies() {
    skewed_pair(true).await;
}
