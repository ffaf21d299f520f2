//! Capacity requests: an AI scheduler asks for N watts; hashgate drains the least efficient
//! groups until they are free.
//!
//! The plan takes mining groups (active, held by nothing, drawing power) least efficient first:
//! highest J/TH, measured where hashgate can (the group's watts over its hashrate from verified
//! shares across `capacity.efficiency_window`) and declared (`efficiency_j_per_th`) otherwise,
//! then by `drain_priority`. It stops once the freed watts reach the request within the
//! tolerance and says by how much it overshoots. Each planned group is held by a
//! [`super::Claim::Capacity`] until the request ends: by `DELETE`, or at `until` when the request
//! says `resume_at_until`. A scheduler that goes silent leaves its groups drained (the safe side
//! for the breakers); its optional heartbeat lease only raises an alert when it lapses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::DrainMode;

/// `POST /api/v1/capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityRequest {
    /// Watts to free.
    pub watts: f64,
    /// RFC 3339 time the scheduler expects to be done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Why (audit log, hooks).
    #[serde(default)]
    pub reason: String,
    /// Plan only: change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// End the request at `until` (otherwise only DELETE ends it).
    #[serde(default)]
    pub resume_at_until: bool,
    /// Lease the scheduler renews with `POST .../heartbeat`; a lapse raises an alert only.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat: Option<Duration>,
    /// How the groups stop (default pause: the draining hooks put the machines to sleep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DrainMode>,
    /// Accepted shortfall as a fraction of `watts` (default `capacity.tolerance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
}

/// Where a group's J/TH came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EfficiencySource {
    /// Watts over the hashrate from verified shares.
    Measured,
    /// `efficiency_j_per_th` in the config.
    Declared,
    /// Neither: drained after every group with a figure.
    Unknown,
}

/// A group that could be drained for a request.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Group name.
    pub group: String,
    /// Watts it draws now.
    pub watts: f64,
    /// J/TH.
    pub efficiency_j_per_th: Option<f64>,
    /// Where that came from.
    pub source: EfficiencySource,
    /// `drain_priority` (lower first).
    pub drain_priority: Option<i32>,
    /// Seconds until it is expected to be drained (its miners' longest quiet period).
    pub expected_drained_seconds: f64,
}

/// One group of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedGroup {
    /// Group name.
    pub group: String,
    /// Watts it frees.
    pub watts: f64,
    /// J/TH used to order it.
    pub efficiency_j_per_th: Option<f64>,
    /// Where that came from.
    pub efficiency_source: EfficiencySource,
    /// Seconds until it is expected to be drained.
    pub expected_drained_seconds: f64,
}

/// What a request would drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Groups, in drain order.
    pub groups: Vec<PlannedGroup>,
    /// Watts asked for.
    pub watts_requested: f64,
    /// Watts the plan frees.
    pub watts_planned: f64,
    /// Planned minus requested (negative: short, within the tolerance).
    pub overshoot_watts: f64,
    /// The same as a percentage of the request.
    pub overshoot_percent: f64,
    /// Accepted shortfall fraction.
    pub tolerance: f64,
    /// Whether the plan meets the request within the tolerance.
    pub feasible: bool,
    /// Seconds until every planned group is expected to be drained.
    pub expected_drained_seconds: f64,
}

/// Orders candidates least efficient first and takes them until the watts are met, skipping a
/// group that would overshoot `watts` by more than `tolerance` (a smaller, more efficient one
/// may fit instead). Feasible only when the plan is within `tolerance` either way; when that
/// finds none, the plan shown is the plain least-efficient-first cover, marked infeasible with
/// its overshoot (the scheduler may ask again with a wider `tolerance`).
pub fn plan(watts: f64, tolerance: f64, mut candidates: Vec<Candidate>) -> Plan {
    candidates.retain(|c| c.watts > 0.0);
    candidates.sort_by(|a, b| {
        // Highest J/TH first; unknown efficiency after every known one.
        let efficiency = match (a.efficiency_j_per_th, b.efficiency_j_per_th) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        let priority = a
            .drain_priority
            .unwrap_or(i32::MAX)
            .cmp(&b.drain_priority.unwrap_or(i32::MAX));
        efficiency
            .then(priority)
            .then_with(|| a.group.cmp(&b.group))
    });
    let enough = watts * (1.0 - tolerance);
    let most = watts * (1.0 + tolerance);
    let cover = |skip_over: Option<f64>| {
        let mut planned = 0.0;
        let mut groups = Vec::new();
        for candidate in &candidates {
            if planned >= enough {
                break;
            }
            if skip_over.is_some_and(|most| planned + candidate.watts > most) {
                continue;
            }
            planned += candidate.watts;
            groups.push(PlannedGroup {
                group: candidate.group.clone(),
                watts: candidate.watts,
                efficiency_j_per_th: candidate.efficiency_j_per_th,
                efficiency_source: candidate.source,
                expected_drained_seconds: candidate.expected_drained_seconds,
            });
        }
        (planned, groups)
    };
    let (planned, groups) = match cover(Some(most)) {
        (planned, groups) if planned >= enough => (planned, groups),
        _ => cover(None),
    };
    let overshoot = planned - watts;
    Plan {
        expected_drained_seconds: groups
            .iter()
            .map(|g| g.expected_drained_seconds)
            .fold(0.0, f64::max),
        groups,
        watts_requested: watts,
        watts_planned: planned,
        overshoot_watts: overshoot,
        overshoot_percent: if watts > 0.0 {
            overshoot / watts * 100.0
        } else {
            0.0
        },
        tolerance,
        feasible: planned >= enough && planned <= most,
    }
}

/// A capacity request hashgate has accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Its id (`cap-N`).
    pub id: String,
    /// What was asked.
    pub request: CapacityRequest,
    /// What was planned (and executed).
    pub plan: Plan,
    /// RFC 3339 time it was accepted.
    pub created: String,
    /// `active` or `ended`.
    pub state: String,
    /// RFC 3339 time it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Unix ms of the last heartbeat (or of creation).
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    /// Planned groups that have held this request's claim: one an operator then resumed by
    /// force is not drained again by it.
    #[serde(default)]
    pub claimed: Vec<String>,
}

/// A capacity request with what its groups are doing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityView {
    /// The request.
    #[serde(flatten)]
    pub capacity: Capacity,
    /// Each planned group's state now.
    pub group_states: Vec<(String, String)>,
    /// Watts its groups have released now.
    pub released_watts: f64,
    /// Energy its groups have not drawn against their pre-drain baselines so far (kWh).
    pub energy_released_kwh: f64,
    /// Energy its groups drew while held by it (kWh).
    pub energy_drawn_kwh: f64,
    /// Every planned group is drained.
    pub satisfied: bool,
    /// `until` has passed and the request does not resume by itself.
    pub overdue: bool,
    /// The heartbeat lease lapsed.
    pub heartbeat_lapsed: bool,
}

/// A group's accepted difficulty over a sliding window: its hashrate from verified shares.
#[derive(Debug)]
pub struct HashrateWindow {
    window: Duration,
    samples: VecDeque<(Instant, f64)>,
}

impl HashrateWindow {
    /// A window of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records the group's accepted-difficulty counter at `now` (at most 120 samples a window).
    pub fn sample(&mut self, now: Instant, accepted_difficulty: f64) {
        let spacing = self.window / 120;
        if self
            .samples
            .back()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < spacing)
        {
            return;
        }
        self.samples.push_back((now, accepted_difficulty));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Hashes per second over the window, once it covers at least a twelfth of it.
    pub fn hashrate(&self) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.0.saturating_duration_since(first.0);
        if span < self.window / 12 || span.is_zero() {
            return None;
        }
        Some((last.1 - first.1).max(0.0) * 4_294_967_296.0 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(
        group: &str,
        watts: f64,
        efficiency: Option<f64>,
        priority: Option<i32>,
    ) -> Candidate {
        Candidate {
            group: group.into(),
            watts,
            efficiency_j_per_th: efficiency,
            source: if efficiency.is_some() {
                EfficiencySource::Declared
            } else {
                EfficiencySource::Unknown
            },
            drain_priority: priority,
            expected_drained_seconds: 30.0,
        }
    }

    #[test]
    fn least_efficient_first_then_priority_until_the_watts_are_met() {
        let plan = plan(
            100_000.0,
            0.05,
            vec![
                candidate("s21-row", 80_000.0, Some(17.5), None),
                candidate("s19-c07", 60_000.0, Some(30.0), None),
                candidate("s19-c08", 60_000.0, Some(30.0), Some(1)),
                candidate("unknown", 10_000.0, None, None),
                candidate("idle", 0.0, Some(99.0), None),
            ],
        );
        let order: Vec<&str> = plan.groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(order, ["s19-c08", "s19-c07"]);
        assert_eq!(plan.watts_planned, 120_000.0);
        assert_eq!(plan.overshoot_watts, 20_000.0);
        assert!((plan.overshoot_percent - 20.0).abs() < 1e-9);
        assert!(!plan.feasible, "20% over is outside a 5% tolerance");
    }

    #[test]
    fn a_group_that_would_overshoot_is_skipped_for_one_that_fits() {
        // The field report: 3,000 W asked of a farm whose least efficient group draws 13,000 W
        // used to be planned as that group, 333% over, and called feasible.
        let candidates = vec![
            candidate("container", 13_000.0, Some(35.0), None),
            candidate("rack-a", 1_600.0, Some(30.0), None),
            candidate("rack-b", 1_500.0, Some(28.0), None),
            candidate("rack-c", 1_400.0, Some(25.0), None),
        ];
        let fits = plan(3_000.0, 0.05, candidates.clone());
        let order: Vec<&str> = fits.groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(order, ["rack-a", "rack-b"], "the least efficient that fit");
        assert_eq!(fits.watts_planned, 3_100.0);
        assert!(fits.feasible);
        // Nothing fits 500 W within 5%: the plain cover, infeasible, its overshoot shown.
        let none = plan(500.0, 0.05, candidates);
        assert_eq!(none.groups.len(), 1);
        assert_eq!(none.groups[0].group, "container");
        assert!((none.overshoot_percent - 2_500.0).abs() < 1e-9);
        assert!(!none.feasible);
    }

    #[test]
    fn within_tolerance_stops_and_short_is_infeasible() {
        let plan_a = plan(
            100_000.0,
            0.05,
            vec![
                candidate("a", 96_000.0, Some(30.0), None),
                candidate("b", 50_000.0, Some(20.0), None),
            ],
        );
        assert_eq!(plan_a.groups.len(), 1, "96% is within 5%");
        assert_eq!(plan_a.overshoot_watts, -4_000.0);
        let plan_b = plan(
            100_000.0,
            0.05,
            vec![candidate("a", 50_000.0, Some(30.0), None)],
        );
        assert!(!plan_b.feasible);
    }

    #[test]
    fn hashrate_window_needs_a_twelfth_of_its_span() {
        let start = Instant::now();
        let mut window = HashrateWindow::new(Duration::from_secs(120));
        window.sample(start, 0.0);
        window.sample(start + Duration::from_secs(5), 1.0);
        assert_eq!(window.hashrate(), None, "5 s of 120 s is too little");
        window.sample(start + Duration::from_secs(10), 2.0);
        let rate = window.hashrate().unwrap();
        assert!((rate - 2.0 * 4_294_967_296.0 / 10.0).abs() < 1.0, "{rate}");
    }
}
