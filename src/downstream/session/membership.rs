//! Who the miner is (the workers it authorized) and which group it is in: the group's counters,
//! its gate, and whether the gate holds the miner without work.

use std::sync::Arc;

use tokio::sync::watch;

use super::counters::{GroupCounters, WorkerMetrics};
use crate::downstream::Gate;

/// Worker names one connection may authorize (rigs behind one socket use a few; more is abuse).
pub(super) const MAX_WORKERS_PER_CONNECTION: usize = 64;

/// The miner's identity and group.
pub(super) struct Membership {
    /// The miner's group (`default` until authorize).
    pub group: Arc<str>,
    pub counters: GroupCounters,
    /// The group's gate, watched from authorize on.
    pub gate: Option<watch::Receiver<Gate>>,
    /// Held without new work by the gate.
    pub paused: bool,
    /// The ramp ticket taken when it joined the group.
    pub ticket: u64,
    /// Authorized worker names, the first one names the miner (shared with each forwarded
    /// share: no copy of the name per share).
    pub workers: Vec<Arc<str>>,
    /// Per-worker series, resolved at authorize when `api.per_worker_metrics` is on.
    pub worker_metrics: Option<WorkerMetrics>,
}

impl Membership {
    pub fn new(group: Arc<str>, counters: GroupCounters) -> Self {
        Self {
            group,
            counters,
            gate: None,
            paused: false,
            ticket: 0,
            workers: Vec::new(),
            worker_metrics: None,
        }
    }

    /// The name the miner is known by (its first worker).
    pub fn name(&self) -> Option<&str> {
        self.workers.first().map(|w| &**w)
    }

    /// Whether `worker` was authorized on this connection.
    pub fn authorized(&self, worker: &str) -> bool {
        self.worker(worker).is_some()
    }

    /// The authorized name `worker`, if it is one.
    pub fn worker(&self, worker: &str) -> Option<&Arc<str>> {
        self.workers.iter().find(|w| ***w == *worker)
    }

    /// The gate now, marking it seen.
    pub fn gate_changed(&mut self) -> Option<Gate> {
        self.gate.as_mut().map(|rx| rx.borrow_and_update().clone())
    }
}
