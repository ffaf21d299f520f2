//! One [`Gate`] per group, published by the controller and watched by that group's sessions.
//!
//! A drain must reach thousands of sessions at once without the controller touching any of them:
//! each session subscribes to its group's `watch` at authorize and reacts in its own task (pause,
//! close with a message, redirect). Sessions report back the one thing the controller cannot see
//! in the session registry: a miner of a closed group that came back and was refused, i.e. a
//! machine still hashing somewhere (so the group is not drained yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::state::Gate;

/// Refused miners remembered per group (the most recent; the count covers all).
const MAX_REFUSED_LISTED: usize = 100;

/// A miner of a closed group that came back: still hashing somewhere, so the power is not free.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefusedMiner {
    /// Worker name it authorized as.
    pub name: String,
    /// Address it came from.
    pub address: String,
    /// Times it was refused.
    pub count: u64,
    /// Unix ms of the last refusal.
    pub last_unix_ms: u64,
}

/// A group's gate and its refused-reconnect witness.
#[derive(Debug)]
pub struct GroupGate {
    gate: watch::Sender<Gate>,
    refused_total: AtomicU64,
    last_refused_unix_ms: AtomicU64,
    /// A std mutex: a short update per refusal, never held across an await.
    refused: std::sync::Mutex<Vec<RefusedMiner>>,
}

impl GroupGate {
    /// Receives the gate and its changes.
    pub fn subscribe(&self) -> watch::Receiver<Gate> {
        self.gate.subscribe()
    }

    /// The gate now.
    pub fn current(&self) -> Gate {
        self.gate.borrow().clone()
    }

    /// Sets the gate; every session of the group sees it (even when equal, so sessions the ramp
    /// admitted one by one are paused again by a new drain).
    pub fn set(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }

    /// A miner of this group was refused (it came back while the group is closed).
    pub fn record_refused(&self, name: &str, address: &str) {
        let now = unix_ms();
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        self.last_refused_unix_ms.store(now, Ordering::Relaxed);
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(miner) = refused.iter_mut().find(|m| m.name == name) {
            miner.count += 1;
            miner.last_unix_ms = now;
            miner.address = address.to_owned();
            return;
        }
        if refused.len() == MAX_REFUSED_LISTED {
            if let Some(oldest) = refused
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| m.last_unix_ms)
                .map(|(i, _)| i)
            {
                refused.swap_remove(oldest);
            }
        }
        refused.push(RefusedMiner {
            name: name.to_owned(),
            address: address.to_owned(),
            count: 1,
            last_unix_ms: now,
        });
    }

    /// The miners refused since `since_unix_ms` (most recent first).
    pub fn refused_since(&self, since_unix_ms: u64) -> Vec<RefusedMiner> {
        let mut refused: Vec<RefusedMiner> = self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|m| m.last_unix_ms >= since_unix_ms)
            .cloned()
            .collect();
        refused.sort_by_key(|m| std::cmp::Reverse(m.last_unix_ms));
        refused
    }

    /// Miners refused since start.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Unix milliseconds of the last refusal (0: never).
    pub fn last_refused_unix_ms(&self) -> u64 {
        self.last_refused_unix_ms.load(Ordering::Relaxed)
    }
}

/// Every group's gate, by name.
#[derive(Debug, Default)]
pub struct GroupGates {
    gates: HashMap<Arc<str>, Arc<GroupGate>>,
}

impl GroupGates {
    /// Gates for `groups`, each starting at its restored gate.
    pub fn new(groups: impl IntoIterator<Item = (Arc<str>, Gate)>) -> Self {
        let gates = groups
            .into_iter()
            .map(|(name, gate)| {
                let (tx, _) = watch::channel(gate);
                (
                    name,
                    Arc::new(GroupGate {
                        gate: tx,
                        refused_total: AtomicU64::new(0),
                        last_refused_unix_ms: AtomicU64::new(0),
                        refused: std::sync::Mutex::new(Vec::new()),
                    }),
                )
            })
            .collect();
        Self { gates }
    }

    /// The gate of a group.
    pub fn get(&self, group: &str) -> Option<&Arc<GroupGate>> {
        self.gates.get(group)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
