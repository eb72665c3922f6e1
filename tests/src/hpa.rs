//! The HorizontalPodAutoscaler's replica calculation, as the Kubernetes documentation describes
//! it ("Algorithm details" of the HPA walkthrough), written as pure functions so that a test can
//! feed it the answers of a real Prometheus and check what the HPA the operator writes would do.
//! The operator never runs it (the cluster's HPA controller, or KEDA's, does), so it lives with
//! the tests.
//!
//! - Per metric: `desired = ceil(current × value / target)`, where `value` is the metric's
//!   average per pod (`AverageValue`); no change while `|value / target − 1| ≤ tolerance`
//!   (default 0.1).
//! - Several metrics: the largest proposal wins.
//! - Stabilisation: every evaluation's proposal is remembered; scaling down uses the *highest*
//!   proposal of the last `scaleDown.stabilizationWindowSeconds` (default 300 s), scaling up the
//!   *lowest* of the last `scaleUp.stabilizationWindowSeconds` (default 0 s).
//! - The result is kept within `[minReplicas, maxReplicas]`.
//!
//! Not modelled: the rate policies (`policies`, `selectPolicy`), missing or unready pods, and
//! CPU initialisation; none of them changes where the calculation ends up under steady load.

use std::collections::VecDeque;
use std::time::Duration;

/// The documented default tolerance.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// One metric's proposal: `ceil(current × value / target)`, or `current` within the tolerance
/// (and for a target that is not a positive number, or a value that is not a number).
pub fn replicas_for(current: u32, value_per_pod: f64, target_per_pod: f64, tolerance: f64) -> u32 {
    if target_per_pod.is_nan()
        || target_per_pod <= 0.0
        || !value_per_pod.is_finite()
        || value_per_pod < 0.0
    {
        return current;
    }
    let ratio = value_per_pod / target_per_pod;
    if (ratio - 1.0).abs() <= tolerance {
        return current;
    }
    let desired = (f64::from(current) * ratio).ceil();
    if desired >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // Non-negative and below u32::MAX: the cast is exact after ceil.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let d = desired as u32;
        d
    }
}

/// An `External` metric with an `AverageValue` target (the backlog, and every KEDA trigger):
/// the metric is a total, divided by the current replicas.
pub fn replicas_for_total(current: u32, total: f64, target_per_pod: f64, tolerance: f64) -> u32 {
    if current == 0 {
        return 0;
    }
    replicas_for(
        current,
        total / f64::from(current),
        target_per_pod,
        tolerance,
    )
}

/// A `Pods` metric with an `AverageValue` target: one value per pod, averaged.
pub fn replicas_for_pods(
    current: u32,
    per_pod: &[f64],
    target_per_pod: f64,
    tolerance: f64,
) -> u32 {
    if per_pod.is_empty() {
        return current;
    }
    #[allow(clippy::cast_precision_loss)]
    let average = per_pod.iter().sum::<f64>() / per_pod.len() as f64;
    replicas_for(current, average, target_per_pod, tolerance)
}

/// One HPA's state across evaluations: bounds, tolerance, stabilisation windows and the
/// proposals it remembers.
#[derive(Debug, Clone)]
pub struct Hpa {
    /// `minReplicas`.
    pub min_replicas: u32,
    /// `maxReplicas`.
    pub max_replicas: u32,
    /// The tolerance around a ratio of 1.
    pub tolerance: f64,
    /// `behavior.scaleDown.stabilizationWindowSeconds`.
    pub scale_down_window: Duration,
    /// `behavior.scaleUp.stabilizationWindowSeconds`.
    pub scale_up_window: Duration,
    history: VecDeque<(Duration, u32)>,
}

impl Hpa {
    /// An HPA with the documented defaults for tolerance (0.1) and windows (300 s down, 0 up).
    pub fn new(min_replicas: u32, max_replicas: u32) -> Self {
        Self {
            min_replicas,
            max_replicas,
            tolerance: DEFAULT_TOLERANCE,
            scale_down_window: Duration::from_secs(300),
            scale_up_window: Duration::ZERO,
            history: VecDeque::new(),
        }
    }

    /// With another scale-down stabilisation window.
    #[must_use]
    pub fn with_scale_down_window(mut self, window: Duration) -> Self {
        self.scale_down_window = window;
        self
    }

    /// One evaluation at time `now` (any monotonic clock), with `current` replicas and each
    /// metric's proposal (from [`replicas_for`] and friends): the replicas the HPA sets.
    pub fn evaluate(&mut self, now: Duration, current: u32, proposals: &[u32]) -> u32 {
        let raw = proposals.iter().copied().max().unwrap_or(current);
        let keep = self.scale_down_window.max(self.scale_up_window);
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > keep)
        {
            self.history.pop_front();
        }
        self.history.push_back((now, raw));
        let within = |w: Duration| {
            self.history
                .iter()
                .filter(move |(t, _)| now.saturating_sub(*t) <= w)
                .map(|(_, r)| *r)
        };
        let up = within(self.scale_up_window).min().unwrap_or(raw);
        let down = within(self.scale_down_window).max().unwrap_or(raw);
        let mut desired = current;
        if desired < up {
            desired = up;
        }
        if desired > down {
            desired = down;
        }
        desired.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_metric_table() {
        // (current, value per pod, target, expected) — the documentation's examples first.
        let table: &[(u32, f64, f64, u32)] = &[
            (1, 200.0, 100.0, 2),  // ratio 2: double
            (1, 50.0, 100.0, 1),   // ratio 0.5 of one replica: ceil(0.5) = 1
            (4, 50.0, 100.0, 2),   // ratio 0.5: halve
            (3, 105.0, 100.0, 3),  // within the tolerance: no change
            (3, 91.0, 100.0, 3),   // within the tolerance (0.09)
            (3, 111.0, 100.0, 4),  // just outside: ceil(3.33)
            (3, 89.0, 100.0, 3),   // just outside: ceil(2.67) = 3
            (10, 89.0, 100.0, 9),  // ceil(8.9)
            (3, 0.0, 100.0, 0),    // nothing to do: the bounds (not this) keep minReplicas
            (3, 32.0, 4.0, 24),    // in-flight 32 per pod against 4
            (2, f64::NAN, 4.0, 2), // no answer: no change
            (2, 10.0, 0.0, 2),     // a zero target is refused by the CRD; no change here
        ];
        for &(current, value, target, want) in table {
            assert_eq!(
                replicas_for(current, value, target, DEFAULT_TOLERANCE),
                want,
                "current {current}, value {value}, target {target}"
            );
        }
    }

    #[test]
    fn totals_and_pods_are_averaged_over_the_current_replicas() {
        // External AverageValue: a backlog of 1000 against 100 per pod wants 10, whatever the
        // current count.
        assert_eq!(replicas_for_total(3, 1000.0, 100.0, 0.1), 10);
        assert_eq!(replicas_for_total(7, 1000.0, 100.0, 0.1), 10);
        assert_eq!(replicas_for_total(3, 0.0, 100.0, 0.1), 0);
        // Pods AverageValue: [30, 10, 2] average 14 against 4 → ceil(3 × 3.5) = 11.
        assert_eq!(replicas_for_pods(3, &[30.0, 10.0, 2.0], 4.0, 0.1), 11);
        assert_eq!(replicas_for_pods(3, &[], 4.0, 0.1), 3);
    }

    #[test]
    fn the_largest_proposal_wins_and_bounds_apply() {
        let mut hpa = Hpa::new(2, 10).with_scale_down_window(Duration::ZERO);
        let t = Duration::from_secs(1);
        assert_eq!(hpa.evaluate(t, 3, &[4, 7, 3]), 7);
        assert_eq!(hpa.evaluate(t * 2, 7, &[40]), 10, "maxReplicas");
        assert_eq!(hpa.evaluate(t * 3, 10, &[0, 1]), 2, "minReplicas");
    }

    #[test]
    fn scale_down_waits_for_the_window_and_uses_its_highest_proposal() {
        let mut hpa = Hpa::new(1, 20).with_scale_down_window(Duration::from_secs(60));
        let s = Duration::from_secs;
        assert_eq!(hpa.evaluate(s(0), 3, &[8]), 8, "scale up at once");
        assert_eq!(hpa.evaluate(s(15), 8, &[5]), 8, "8 is in the window");
        assert_eq!(hpa.evaluate(s(30), 8, &[1]), 8);
        assert_eq!(
            hpa.evaluate(s(61), 8, &[1]),
            5,
            "8 left the window; 5 is the highest"
        );
        assert_eq!(hpa.evaluate(s(76), 5, &[1]), 1, "only 1s left");
        // A burst inside the window is not lost to a short lull.
        assert_eq!(hpa.evaluate(s(80), 1, &[6]), 6);
        assert_eq!(hpa.evaluate(s(85), 6, &[1]), 6);
    }

    #[test]
    fn a_scale_up_window_uses_its_lowest_proposal() {
        let mut hpa = Hpa::new(1, 20).with_scale_down_window(Duration::ZERO);
        hpa.scale_up_window = Duration::from_secs(30);
        let s = Duration::from_secs;
        assert_eq!(hpa.evaluate(s(0), 2, &[2]), 2);
        assert_eq!(
            hpa.evaluate(s(10), 2, &[9]),
            2,
            "2 is still the lowest in the window"
        );
        assert_eq!(hpa.evaluate(s(31), 2, &[9]), 9);
    }
}
