//! What the controller sees of a group's sessions on a tick: one pass over the registry's
//! snapshot (no nested locks), each group's miners judged against its drain.

use std::collections::HashMap;

use super::group::GroupRuntime;
use crate::clock::unix_ms;
use crate::downstream::SessionRegistry;
use crate::groups::state::{GroupRecord, GroupState};

/// One authorized miner as the controller sees it on a tick.
pub(super) struct MinerView {
    pub id: u64,
    pub name: std::sync::Arc<str>,
    /// Where it connects from (formatted only where shown: this is built for every miner of a
    /// draining group five times a second). Its IP is its machine's management address by
    /// default.
    pub address: std::net::SocketAddr,
    pub paused: bool,
    /// Mining now: given work, or still submitting after being told to stop.
    pub mining: bool,
    pub last_submit_ms: Option<u64>,
    pub difficulty: f64,
    pub hashrate: f64,
    /// Its ramp ticket (the resume ramp admits in ticket order).
    pub ticket: u64,
}

/// A group's miners on a tick, judged against its drain.
#[derive(Default)]
pub(super) struct Observed {
    /// Authorized miners connected.
    pub workers: usize,
    /// Their details (groups in a drain, or when asked for).
    pub miners: Vec<MinerView>,
    pub mining: usize,
    pub hashing: Vec<usize>,
}

/// Every group's miners, judged. Active groups are only counted (a farm of 20,000 miners is
/// looked at five times a second); groups in a drain, and those `detailed` names, list
/// their miners.
pub(super) fn observe(
    registry: &SessionRegistry,
    groups: &[GroupRuntime],
    records: &[GroupRecord],
    detailed: impl Fn(usize) -> bool,
) -> Vec<Observed> {
    let by_group: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (&*g.name, i))
        .collect();
    let detail: Vec<bool> = records
        .iter()
        .enumerate()
        .map(|(i, r)| r.state != GroupState::Active || detailed(i))
        .collect();
    let mut observed: Vec<Observed> = (0..groups.len()).map(|_| Observed::default()).collect();
    registry.visit(|id, stats| {
        let Some(name) = &stats.name else { return };
        let Some(&index) = by_group.get(&*stats.group) else {
            return;
        };
        let group = &mut observed[index];
        group.workers += 1;
        if detail[index] {
            group.miners.push(MinerView {
                id,
                name: name.clone(),
                address: stats.remote,
                paused: stats.paused,
                mining: true,
                last_submit_ms: stats.last_submit_unix_ms,
                difficulty: stats.difficulty,
                hashrate: stats.hashrate_15m(),
                ticket: stats.ramp_ticket,
            });
        }
    });
    let now_ms = unix_ms();
    for (index, group) in observed.iter_mut().enumerate() {
        let record = &records[index];
        let policy = &groups[index].policy;
        let Some(drain) = record
            .drain
            .as_ref()
            .filter(|_| record.state != GroupState::Active)
        else {
            group.mining = group.workers;
            continue;
        };
        group.miners.sort_by_key(|m| m.id);
        for (i, miner) in group.miners.iter_mut().enumerate() {
            let mining = if record.state == GroupState::Resuming {
                !miner.paused
            } else {
                let reference = miner.last_submit_ms.unwrap_or(0).max(drain.started_at_ms);
                let quiet = policy.quiet_period(miner.difficulty, miner.hashrate);
                let still = now_ms.saturating_sub(reference) < quiet.as_millis() as u64;
                if still {
                    group.hashing.push(i);
                }
                still
            };
            miner.mining = mining;
            if mining {
                group.mining += 1;
            }
        }
    }
    observed
}
