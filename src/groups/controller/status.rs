//! A group's status as the API shows it, and its power and state series, from its record and
//! what was observed on the tick.

use super::group::GroupRuntime;
use super::handle::{
    DrainStatus, DrainWitness, EfficiencyStatus, EnergyStatus, GroupStatus, HashingMiner,
    PowerStatus,
};
use super::ledger::{Account, JOULES_PER_KWH, Ledger};
use super::machines::{PowerSource, Watts};
use super::observe::Observed;
use crate::downstream::{Refusals, SessionRegistry};
use crate::groups::capacity::{Candidate, EfficiencySource};
use crate::groups::state::{Claim, GroupRecord, GroupState};
use crate::metrics::Metrics;

/// Miners listed as still hashing in a group's status (the API pages the rest by group).
const MAX_LISTED_HASHING: usize = 100;

/// Watts a group draws now: measured where its machines were read, declared for the rest.
pub(super) fn power_watts(runtime: &GroupRuntime, observed: &Observed) -> f64 {
    watts(runtime, observed).total
}

/// A group's draw now, by source.
pub(super) fn watts(runtime: &GroupRuntime, observed: &Observed) -> Watts {
    runtime
        .power
        .watts(observed.mining, runtime.policy.watts_per_worker)
}

/// Watts a non-active group has given back: what it drew before the drain minus what it draws.
pub(super) fn released_watts(record: &GroupRecord, power_now: f64) -> f64 {
    match (&record.state, &record.drain) {
        (GroupState::Active, _) | (_, None) => 0.0,
        (_, Some(drain)) => (drain.watts_before - power_now).max(0.0),
    }
}

/// Since when a group's refused miners are listed: its drain's start, while it is not active.
pub(super) fn refused_listed_since(record: &GroupRecord) -> Option<u64> {
    record
        .drain
        .as_ref()
        .filter(|_| record.state != GroupState::Active)
        .map(|d| d.started_at_ms)
}

/// Sets the group's power (by source), released power and state series.
pub(super) fn publish_metrics(metrics: &Metrics, name: &str, record: &GroupRecord, watts: Watts) {
    for (source, part) in watts.by_source() {
        metrics
            .groups
            .power_watts
            .with_label_values(&[name, source.as_str()])
            .set(part);
    }
    let power = watts.total;
    metrics
        .groups
        .released_watts
        .with_label_values(&[name])
        .set(released_watts(record, power));
    for state in GroupState::ALL {
        metrics
            .groups
            .state
            .with_label_values(&[name, state.as_str()])
            .set(i64::from(state == record.state));
    }
}

/// Every group's status now, and its draw by source (for the metrics published after).
pub(super) fn statuses(
    groups: &[GroupRuntime],
    records: &[GroupRecord],
    observed: &[Observed],
    (registry, ledger): (&SessionRegistry, &Ledger),
    now_ms: u64,
) -> (Vec<GroupStatus>, Vec<Watts>) {
    groups
        .iter()
        .zip(records)
        .zip(observed)
        .map(|((runtime, record), observed)| {
            let watts = watts(runtime, observed);
            let refusals = registry.refusals(&runtime.name, refused_listed_since(record));
            let efficiency = runtime.efficiency(watts.total);
            let mut status = group_status(runtime, record, observed, &refusals, efficiency, now_ms);
            status.energy = energy_status(ledger, &runtime.name);
            (status, watts)
        })
        .unzip()
}

/// A group's energy as the ledger holds it.
fn energy_status(ledger: &Ledger, group: &str) -> EnergyStatus {
    let drain = ledger.drain_of(group);
    let total = ledger.total_of(group);
    EnergyStatus {
        energy_released_kwh: drain.map_or(0.0, Account::released_kwh),
        energy_drawn_kwh: drain.map_or(0.0, Account::drawn_kwh),
        energy_kwh_by_source: PowerSource::ALL
            .iter()
            .map(|s| (*s, total.of(*s) / JOULES_PER_KWH))
            .collect(),
        energy_as_of_ms: ledger.state.as_of_ms,
    }
}

/// Carries a restarted process's counters on from the ledger's totals.
pub(super) fn continue_energy(metrics: &Metrics, groups: &[GroupRuntime], ledger: &Ledger) {
    for group in groups {
        let total = ledger.total_of(&group.name);
        for source in PowerSource::ALL {
            metrics
                .groups
                .energy_joules
                .with_label_values(&[&group.name, source.as_str()])
                .inc_by(total.of(source));
        }
    }
}

/// Takes one ledger sample of every group's draw now and adds it to the energy counters.
pub(super) fn sample_energy(
    ledger: &mut Ledger,
    metrics: &Metrics,
    (groups, records, observed): (&[GroupRuntime], &[GroupRecord], &[Observed]),
    now_ms: u64,
) {
    let samples: Vec<_> = (groups.iter().zip(records).zip(observed))
        .map(|((g, r), o)| (&*g.name, r, watts(g, o)))
        .collect();
    for sample in ledger.sample(now_ms, &samples) {
        for source in PowerSource::ALL {
            let joules = sample.drawn.of(source);
            if joules > 0.0 {
                metrics
                    .groups
                    .energy_joules
                    .with_label_values(&[&sample.group, source.as_str()])
                    .inc_by(joules);
            }
        }
        if sample.released_joules > 0.0 {
            metrics
                .groups
                .energy_released_joules
                .with_label_values(&[&sample.group])
                .inc_by(sample.released_joules);
        }
    }
}

/// The group's status now.
pub(super) fn group_status(
    runtime: &GroupRuntime,
    record: &GroupRecord,
    observed: &Observed,
    refusals: &Refusals,
    efficiency: (Option<f64>, EfficiencySource),
    now_ms: u64,
) -> GroupStatus {
    let watts = watts(runtime, observed);
    let power = watts.total;
    let drain = record.drain.as_ref();
    let measure = &runtime.power.measure;
    let in_drain = matches!(record.state, GroupState::Draining | GroupState::Drained);
    GroupStatus {
        name: runtime.name.to_string(),
        state: record.state,
        since: record.since,
        claims: record.claims.iter().map(Claim::to_string).collect(),
        power_watts: power,
        released_watts: released_watts(record, power),
        workers: observed.workers,
        mining_workers: observed.mining,
        drain: DrainStatus {
            mode: drain.map(|d| d.mode),
            reason: drain.map(|d| d.reason.clone()),
            reconnect_to: drain.and_then(|d| d.reconnect_to.clone()),
            watts_before: drain.map(|d| d.watts_before),
            drain_deadline: (record.state == GroupState::Draining)
                .then(|| {
                    drain.map(|d| (d.started_at_ms / 1000) + runtime.policy.drain_timeout.as_secs())
                })
                .flatten(),
        },
        witness: DrainWitness {
            still_hashing: observed
                .hashing
                .iter()
                .take(MAX_LISTED_HASHING)
                .map(|&i| {
                    let m = &observed.miners[i];
                    HashingMiner {
                        name: m.name.to_string(),
                        address: m.address.to_string(),
                        last_submit_seconds_ago: m
                            .last_submit_ms
                            .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
                    }
                })
                .collect(),
            refused_reconnects: refusals.total,
            // Those since the drain's start, already (none outside a drain).
            refused_miners: refusals.miners.clone(),
        },
        pending: runtime
            .pending
            .as_ref()
            .map(|p| format!("{} hooks running", p.next.state)),
        last_error: runtime.last_error.clone(),
        efficiency: EfficiencyStatus {
            efficiency_j_per_th: efficiency.0,
            efficiency_source: Some(efficiency.1),
        },
        energy: EnergyStatus::default(),
        power: PowerStatus {
            power_source: watts.source,
            power_by_source: watts.by_source(),
            verified: record.state == GroupState::Drained && drain.is_some_and(|d| d.verified),
            sleep: runtime.power.sleep,
            machines: measure.machines,
            machines_read: measure.read,
            machines_off: measure.off,
            machines_not_off: if in_drain {
                measure.not_off.clone()
            } else {
                Vec::new()
            },
        },
    }
}

/// Groups a capacity request may drain: mining, held by nothing, no transition under way,
/// drawing power (groups planned by another active request are left out by the schedules).
pub(super) fn candidates(
    groups: &[GroupRuntime],
    records: &[GroupRecord],
    observed: &[Observed],
) -> Vec<Candidate> {
    groups
        .iter()
        .zip(records)
        .zip(observed)
        .filter(|((g, record), _)| {
            record.state == GroupState::Active && record.claims.is_empty() && g.pending.is_none()
        })
        .map(|((g, _), o)| {
            let watts = power_watts(g, o);
            let (efficiency, source) = g.efficiency(watts);
            let expected = o
                .miners
                .iter()
                .map(|m| {
                    g.policy
                        .quiet_period(m.difficulty, m.hashrate)
                        .as_secs_f64()
                })
                .fold(g.policy.quiet_min.as_secs_f64(), f64::max);
            Candidate {
                group: g.name.to_string(),
                watts,
                efficiency_j_per_th: efficiency,
                source,
                drain_priority: g.drain_priority,
                expected_drained_seconds: expected,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DrainMode;
    use crate::groups::state::Drain;

    #[test]
    fn released_watts_only_while_not_active() {
        let mut record = GroupRecord {
            state: GroupState::Drained,
            drain: Some(Drain {
                mode: DrainMode::Pause,
                reason: String::new(),
                reconnect_to: None,
                started_at_ms: 0,
                watts_before: 6500.0,
                roster: Vec::new().into(),
                verified: false,
            }),
            ..GroupRecord::default()
        };
        assert_eq!(released_watts(&record, 0.0), 6500.0);
        assert_eq!(released_watts(&record, 3250.0), 3250.0);
        record.state = GroupState::Active;
        assert_eq!(released_watts(&record, 0.0), 0.0);
    }
}
