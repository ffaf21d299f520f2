//! What the API reads of windows and capacity requests, and their metrics: computed from the
//! schedules and the groups' last published statuses.

use std::collections::BTreeMap;

use super::Schedules;
use crate::config::windows::WindowView;
use crate::groups::capacity::{Capacity, CapacityView};
use crate::groups::controller::handle::{GroupStatus, lock};
use crate::groups::controller::ledger::Account;
use crate::groups::state::{Claim, GroupState};
use crate::metrics::Metrics;

/// What the API reads about windows and capacity requests.
#[derive(Debug, Default, Clone)]
pub struct ScheduleViews {
    /// Every window.
    pub windows: Vec<WindowView>,
    /// Every capacity request (active and recently ended).
    pub capacity: Vec<CapacityView>,
}

impl Schedules {
    /// A capacity request with its groups' states in `statuses` (a group without a status is
    /// shown active).
    pub(in crate::groups::controller) fn capacity_view(
        &self,
        capacity: &Capacity,
        statuses: &[GroupStatus],
        energy: &BTreeMap<String, Account>,
        now_ms: u64,
    ) -> CapacityView {
        let account = energy.get(&Claim::Capacity(capacity.id.clone()).to_string());
        let claim = Claim::Capacity(capacity.id.clone()).to_string();
        let mut group_states = Vec::new();
        let mut released = 0.0;
        let mut satisfied = capacity.state == "active";
        for planned in &capacity.plan.groups {
            let status = statuses.iter().find(|s| s.name == planned.group);
            let state = status.map_or(GroupState::Active, |s| s.state);
            let holds = status.is_some_and(|s| s.claims.contains(&claim));
            if holds {
                released += status.map_or(0.0, |s| s.released_watts);
            }
            satisfied &= holds && state == GroupState::Drained;
            group_states.push((planned.group.clone(), state.as_str().to_owned()));
        }
        let until = capacity
            .request
            .until
            .as_deref()
            .and_then(|u| crate::config::windows::parse_time("until", u).ok());
        CapacityView {
            capacity: capacity.clone(),
            group_states,
            released_watts: released,
            energy_released_kwh: account.map_or(0.0, Account::released_kwh),
            energy_drawn_kwh: account.map_or(0.0, Account::drawn_kwh),
            satisfied,
            overdue: capacity.state == "active"
                && !capacity.request.resume_at_until
                && until.is_some_and(|u| now_ms >= u),
            heartbeat_lapsed: capacity.state == "active"
                && capacity.request.heartbeat.is_some_and(|lease| {
                    now_ms.saturating_sub(capacity.last_heartbeat_ms) > lease.as_millis() as u64
                }),
        }
    }

    /// Publishes the windows' and capacity requests' views for the API, and their metrics.
    pub(in crate::groups::controller) fn publish(
        &self,
        statuses: &[GroupStatus],
        energy: &BTreeMap<String, Account>,
        metrics: &Metrics,
        now_ms: u64,
    ) {
        let windows: Vec<WindowView> = self
            .windows
            .iter()
            .map(|w| w.view(now_ms))
            .chain(self.broken.iter().map(|(spec, error)| WindowView {
                spec: spec.clone(),
                from_config: false,
                state: format!("invalid: {error}"),
                next_drain_at: None,
                next_start: None,
                next_end: None,
            }))
            .collect();
        let capacity: Vec<CapacityView> = self
            .capacity
            .iter()
            .map(|c| self.capacity_view(c, statuses, energy, now_ms))
            .collect();
        let active: Vec<&CapacityView> = capacity
            .iter()
            .filter(|c| c.capacity.state == "active")
            .collect();
        let groups = &metrics.groups;
        groups.capacity_requests.set(active.len() as i64);
        groups
            .capacity_watts_requested
            .set(active.iter().map(|c| c.capacity.request.watts).sum());
        groups
            .capacity_watts_released
            .set(active.iter().map(|c| c.released_watts).sum());
        groups
            .windows_open
            .set(windows.iter().filter(|w| w.state == "open").count() as i64);
        *lock(&self.views) = ScheduleViews { windows, capacity };
    }
}
