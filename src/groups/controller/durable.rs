//! The controller's durable writes: the state file holds every group's record (configured and
//! orphaned) and the schedules, written whole through [`Store::save`] (temp file, fsync, rename,
//! directory fsync). The controller runs on a thread of its own, so these blocking writes never
//! hold up a runtime worker that serves miners.

use std::collections::BTreeMap;

use super::schedules::Schedules;
use crate::groups::state::GroupRecord;
use crate::groups::store::{PersistedState, Store, StoreError};
use crate::metrics::Metrics;

/// The state directory as the controller writes it; failed writes are counted.
pub(super) struct StateFile {
    store: Store,
    metrics: Metrics,
}

impl StateFile {
    pub(super) fn new(store: Store, metrics: Metrics) -> StateFile {
        StateFile { store, metrics }
    }

    /// The state file's content: the groups' records and the schedules.
    pub(super) fn content(
        records: &BTreeMap<String, GroupRecord>,
        orphans: &BTreeMap<String, GroupRecord>,
        sched: &Schedules,
    ) -> PersistedState {
        let mut state = PersistedState {
            groups: records.clone(),
            ..PersistedState::default()
        };
        state.groups.extend(orphans.clone());
        sched.persist_into(&mut state);
        state
    }

    /// Writes `state` durably (acknowledged once it is on disk).
    pub(super) fn write(&mut self, state: &PersistedState) -> Result<(), StoreError> {
        self.store
            .save(state)
            .inspect_err(|_| self.metrics.groups.state_save_failures.inc())
    }

    /// Writes the records and schedules as they are.
    pub(super) fn save(
        &mut self,
        records: &BTreeMap<String, GroupRecord>,
        orphans: &BTreeMap<String, GroupRecord>,
        sched: &Schedules,
    ) -> Result<(), StoreError> {
        self.write(&Self::content(records, orphans, sched))
    }

    /// The directory, for the audit log's appends.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }
}
