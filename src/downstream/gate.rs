//! The gate of each group: what its sessions may do, set by group control, watched by sessions.
//!
//! A drain must reach thousands of sessions at once without anyone touching them: each session
//! subscribes to its group's `watch` at authorize and reacts in its own task (pause, close with
//! a message, redirect, or wait for the resume ramp). The gate is the only way group control acts
//! on a group's sessions: one value per group, one direction. What sessions observe goes back
//! through the registry's snapshot ([`super::SessionRegistry`]), never into the gate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// What the sessions of a group may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Gate {
    /// Hand out work.
    #[default]
    Open,
    /// Hand out no new work (keep the connection; shares on old work still count).
    Paused,
    /// The resume ramp: sessions whose ramp ticket is up to `admit_through` get work, the
    /// others wait. A session takes a ticket when it joins its group ([`GroupGates::ticket`]),
    /// and tickets only grow, so a miner that joins during the ramp waits its turn behind those
    /// already waiting; the ramp admits more by raising the watermark: one value, no
    /// per-session command to reconcile with a drain that crosses it.
    Ramp {
        /// Which ramp (its drain's start, unix ms): a new drain is a new gate value.
        epoch: u64,
        /// The highest ticket admitted so far (0: none yet).
        admit_through: u64,
    },
    /// Show the message, close, and refuse reconnects.
    Closed {
        /// `client.show_message` text.
        message: Arc<str>,
    },
    /// Show the message, send `client.reconnect` there, close.
    Redirect {
        /// Where to.
        host: Option<Arc<str>>,
        /// Port.
        port: Option<u16>,
        /// `client.show_message` text.
        message: Arc<str>,
    },
}

impl Gate {
    /// Whether the session with ramp ticket `ticket` is held without new work under this gate
    /// (closing gates end the session instead).
    pub fn holds(&self, ticket: u64) -> bool {
        match self {
            Gate::Open => false,
            Gate::Ramp { admit_through, .. } => ticket > *admit_through,
            Gate::Paused | Gate::Closed { .. } | Gate::Redirect { .. } => true,
        }
    }
}

/// Every group's gate, by name. Built once with the configured groups.
#[derive(Debug, Default)]
pub struct GroupGates {
    gates: HashMap<Arc<str>, watch::Sender<Gate>>,
    /// The last ramp ticket handed out.
    tickets: AtomicU64,
}

impl GroupGates {
    /// Gates for `groups`, each starting where it was left (the state file).
    pub fn new(groups: impl IntoIterator<Item = (Arc<str>, Gate)>) -> Self {
        let gates = groups
            .into_iter()
            .map(|(name, gate)| (name, watch::Sender::new(gate)))
            .collect();
        Self {
            gates,
            tickets: AtomicU64::new(0),
        }
    }

    /// A new ramp ticket (1, 2, ...): a session takes one each time it joins a group, so the
    /// resume ramp admits in the order miners joined, never one that joined after its raise.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A group's gate and its changes, for one of its sessions.
    pub fn subscribe(&self, group: &str) -> Option<watch::Receiver<Gate>> {
        self.gates.get(group).map(watch::Sender::subscribe)
    }

    /// The gate of a group now.
    pub fn current(&self, group: &str) -> Option<Gate> {
        self.gates.get(group).map(|tx| tx.borrow().clone())
    }

    /// Sets a group's gate; every session of the group sees it (even when equal, so a new drain
    /// reaches sessions that acted on the previous value).
    pub fn set(&self, group: &str, gate: Gate) {
        if let Some(tx) = self.gates.get(group) {
            tx.send_replace(gate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_admits_by_watermark() {
        let ramp = Gate::Ramp {
            epoch: 7,
            admit_through: 12,
        };
        assert!(!ramp.holds(3) && !ramp.holds(12));
        assert!(ramp.holds(13), "a miner above the watermark waits");
        assert!(Gate::Paused.holds(1) && !Gate::Open.holds(1));
    }

    #[test]
    fn tickets_grow_so_a_late_joiner_waits_behind_the_watermark() {
        let gates = GroupGates::new([(Arc::from("c07"), Gate::default())]);
        let first = gates.ticket();
        let second = gates.ticket();
        assert!(second > first && first >= 1);
        let ramp = Gate::Ramp {
            epoch: 1,
            admit_through: second,
        };
        assert!(
            ramp.holds(gates.ticket()),
            "joined after the raise: waits its turn"
        );
    }
}
