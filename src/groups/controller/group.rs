//! What the controller keeps per group besides its record: settings, the transition waiting for
//! its hooks, retries, the ramp, and the measured hashrate.

use std::sync::Arc;
use std::time::Instant;

use super::handle::Reply;
use super::machines::GroupPower;
use super::policy::{Policy, Ramp};
use crate::config::{Config, Group};
use crate::groups::capacity::{EfficiencySource, HashrateWindow};
use crate::groups::state::GroupRecord;

/// A transition waiting for its hooks.
pub(super) struct Pending {
    /// Which hook run (a stale report of an earlier run is ignored).
    pub token: u64,
    /// The record committed when the hooks succeed.
    pub next: GroupRecord,
    pub trigger: String,
    /// The API caller waiting for the outcome, if any.
    pub reply: Option<Reply>,
}

/// What the controller keeps per group besides its record.
pub(super) struct GroupRuntime {
    pub name: Arc<str>,
    pub policy: Policy,
    pub pending: Option<Pending>,
    /// A failed automatic transition is tried again from then.
    pub retry_at: Option<Instant>,
    /// Failures in a row (the retry backs off: a hook that keeps failing is not run, nor
    /// logged, every few seconds for hours).
    pub failures: u32,
    pub last_error: Option<String>,
    pub ramp: Option<Ramp>,
    /// `efficiency_j_per_th` from the config.
    pub declared_efficiency: Option<f64>,
    /// `drain_priority` from the config.
    pub drain_priority: Option<i32>,
    /// Accepted difficulty over `capacity.efficiency_window`: the measured hashrate.
    pub hashrate: HashrateWindow,
    /// Its machines, their power, and their sleep and wake.
    pub power: GroupPower,
}

impl GroupRuntime {
    /// A configured group, nothing under way.
    pub fn new(config: &Config, group: &Group) -> Self {
        Self {
            name: Arc::clone(&group.name),
            policy: Policy::new(config, &group.name, group.watts_per_worker),
            pending: None,
            retry_at: None,
            failures: 0,
            last_error: None,
            ramp: None,
            declared_efficiency: group.efficiency_j_per_th,
            drain_priority: group.drain_priority,
            hashrate: HashrateWindow::new(config.capacity.efficiency_window),
            power: GroupPower::new(group),
        }
    }

    /// J/TH at `watts`: measured from verified shares where there is enough history, else
    /// declared.
    pub fn efficiency(&self, watts: f64) -> (Option<f64>, EfficiencySource) {
        match self.hashrate.hashrate() {
            Some(hashrate) if hashrate > 0.0 && watts > 0.0 => {
                (Some(watts / (hashrate / 1e12)), EfficiencySource::Measured)
            }
            _ => match self.declared_efficiency {
                Some(declared) => (Some(declared), EfficiencySource::Declared),
                None => (None, EfficiencySource::Unknown),
            },
        }
    }
}

/// What the controller has started and committed: a tick that saw either change publish its own
/// status knows not to publish an older one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    /// The token the next hook run gets.
    pub next_token: u64,
    /// Transitions committed.
    pub commits: u64,
}
