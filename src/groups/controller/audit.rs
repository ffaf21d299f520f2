//! The audit log's entries: one per transition or notable step, with the watts before and after,
//! appended durably and kept in memory for the API.

use std::sync::Mutex;

use tracing::error;

use super::group::GroupRuntime;
use super::handle::lock;
use super::observe::Observed;
use super::status::{released_watts, watts};
use crate::groups::events::{Event, EventLog, now_rfc3339};
use crate::groups::state::{GroupRecord, GroupState};
use crate::groups::store::Store;
use crate::metrics::Metrics;

/// What happened, as the controller says it.
pub(super) struct Entry<'a> {
    pub kind: &'a str,
    /// (from, to); equal for a step within a state.
    pub change: (GroupState, GroupState),
    pub trigger: &'a str,
    pub detail: &'a str,
    /// Watts drawn when the transition started (the last published status).
    pub watts_before: f64,
    /// Energy released so far by the drain in force (kWh).
    pub released_kwh: Option<f64>,
}

/// The event for `entry` of a group in `record`, as observed now (its sequence number is set
/// when it is appended).
pub(super) fn event(
    runtime: &GroupRuntime,
    record: &GroupRecord,
    observed: &Observed,
    entry: Entry<'_>,
) -> Event {
    let now = watts(runtime, observed);
    let watts_after = now.total;
    let drain = record.drain.as_ref();
    Event {
        seq: 0,
        time: now_rfc3339(),
        group: runtime.name.to_string(),
        kind: entry.kind.to_owned(),
        from: entry.change.0,
        to: entry.change.1,
        trigger: entry.trigger.to_owned(),
        mode: drain.map(|d| d.mode.as_str().to_owned()),
        reason: drain.map(|d| d.reason.clone()).unwrap_or_default(),
        watts_before: entry.watts_before,
        watts_after,
        released_watts: released_watts(record, watts_after),
        workers: observed.workers,
        detail: entry.detail.to_owned(),
        watts_source: now.source.as_str().to_owned(),
        energy_released_kwh: entry.released_kwh,
        verified: (record.state == GroupState::Drained).then(|| drain.is_some_and(|d| d.verified)),
    }
}

/// Appends `event` to the file, then to the in-memory log. Only the controller adds events, so
/// the sequence number cannot change between the two locks, and the API's readers are not held
/// up by the fsync. A failed write is loud and counted; the line stays in memory.
pub(super) fn append(store: &Store, log: &Mutex<EventLog>, metrics: &Metrics, event: Event) {
    let event = Event {
        seq: lock(log).next_seq(),
        ..event
    };
    if let Err(error) = store.append_event(&event) {
        // The transition itself is saved; the audit line is kept in memory.
        error!(%error, "audit event not saved");
        metrics.groups.state_save_failures.inc();
    }
    lock(log).push(event);
}
