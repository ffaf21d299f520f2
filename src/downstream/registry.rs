//! Every live session as others may see it: its stats and its command channel, plus the witness
//! of refused reconnects, which outlives the sessions it records.
//!
//! Locks: the registry's map is a std mutex held only to insert, remove or copy entries; each
//! session's stats have their own std mutex that only that session writes. The two are never held
//! together: a walk copies the entries first, then reads each session's stats on its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::mailbox::Mailbox;
use super::stats::{WorkerSnapshot, WorkerStats};
use crate::clock::unix_ms;

/// Refused miners remembered per group (the most recent; the count covers all).
const MAX_REFUSED_LISTED: usize = 100;

/// A live session as others can see it.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// Where commands go.
    pub commands: Arc<Mailbox>,
    /// What the API shows; written only by the session.
    pub stats: Arc<Mutex<WorkerStats>>,
}

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

/// One group's refused reconnects, as the drain's witness reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refusals {
    /// Refusals since start.
    pub total: u64,
    /// Unix ms of the last one (0: never).
    pub last_unix_ms: u64,
    /// The most recent refused miners, newest first (at most 100).
    pub miners: Vec<RefusedMiner>,
}

impl Refusals {
    /// Those refused since `since_unix_ms`.
    pub fn since(&self, since_unix_ms: u64) -> Vec<RefusedMiner> {
        self.miners
            .iter()
            .filter(|m| m.last_unix_ms >= since_unix_ms)
            .cloned()
            .collect()
    }

    fn record(&mut self, name: &str, address: &str, now: u64) {
        self.total += 1;
        self.last_unix_ms = now;
        if let Some(index) = self.miners.iter().position(|m| m.name == name) {
            let mut miner = self.miners.remove(index);
            miner.count += 1;
            miner.last_unix_ms = now;
            miner.address = address.to_owned();
            self.miners.insert(0, miner);
            return;
        }
        self.miners.truncate(MAX_REFUSED_LISTED - 1);
        self.miners.insert(
            0,
            RefusedMiner {
                name: name.to_owned(),
                address: address.to_owned(),
                count: 1,
                last_unix_ms: now,
            },
        );
    }
}

/// Every live session, by id, and the refusals per group.
#[derive(Debug)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    /// A std mutex: one short update per refusal, never held across an await.
    refusals: Mutex<HashMap<Arc<str>, Refusals>>,
    next_id: AtomicU64,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            refusals: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl SessionRegistry {
    /// Registers a new session; returns its id (ids only grow, which the resume ramp relies on).
    pub(super) fn register(&self, entry: SessionEntry) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(id, entry);
        id
    }

    pub(super) fn remove(&self, id: u64) {
        lock(&self.sessions).remove(&id);
    }

    /// A miner of `group` came back while the group is closed, and was refused.
    pub(super) fn record_refused(&self, group: &Arc<str>, name: &str, address: &str) {
        lock(&self.refusals)
            .entry(Arc::clone(group))
            .or_default()
            .record(name, address, unix_ms());
    }

    /// The refusals of a group: the count and the last one, and the miners refused since
    /// `listed_since` (none when `None`: a group not in a drain lists nobody, and the controller
    /// asks every tick, so the list is only copied when it is shown).
    pub fn refusals(&self, group: &str, listed_since: Option<u64>) -> Refusals {
        let refusals = lock(&self.refusals);
        let Some(found) = refusals.get(group) else {
            return Refusals::default();
        };
        Refusals {
            total: found.total,
            last_unix_ms: found.last_unix_ms,
            miners: listed_since.map_or_else(Vec::new, |since| found.since(since)),
        }
    }

    /// The command channel of a session.
    pub fn commands(&self, id: u64) -> Option<Arc<Mailbox>> {
        lock(&self.sessions)
            .get(&id)
            .map(|entry| Arc::clone(&entry.commands))
    }

    /// Reads every live session's stats, one at a time, after copying the entries (the map's
    /// lock is never held while a session's stats are locked). `visit` must not block.
    pub fn visit(&self, mut visit: impl FnMut(u64, &WorkerStats)) {
        let entries: Vec<(u64, Arc<Mutex<WorkerStats>>)> = lock(&self.sessions)
            .iter()
            .map(|(id, entry)| (*id, Arc::clone(&entry.stats)))
            .collect();
        for (id, stats) in entries {
            visit(id, &lock(&stats));
        }
    }

    /// Tells every live session that hashgate is stopping.
    pub fn shut_down_all(&self) {
        for entry in lock(&self.sessions).values() {
            entry.commands.shut_down();
        }
    }

    /// Snapshots of every live session, by id.
    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        let mut workers = Vec::new();
        self.visit(|id, stats| workers.push(stats.snapshot(id)));
        workers.sort_by_key(|w| w.id);
        workers
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// No live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A std mutex guard whatever a panicking holder left: every value behind these locks is valid
/// after any single update.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_newest_first_and_count_all() {
        let mut refusals = Refusals::default();
        refusals.record("a", "10.0.0.1:1", 10);
        refusals.record("b", "10.0.0.2:1", 20);
        refusals.record("a", "10.0.0.1:2", 30);
        assert_eq!(refusals.total, 3);
        assert_eq!(refusals.last_unix_ms, 30);
        assert_eq!(refusals.miners[0].name, "a");
        assert_eq!(refusals.miners[0].count, 2);
        assert_eq!(refusals.since(25).len(), 1);
        for i in 0..200 {
            refusals.record(&format!("m{i}"), "x", 40 + i);
        }
        assert_eq!(refusals.miners.len(), MAX_REFUSED_LISTED);
        assert_eq!(refusals.total, 203);
    }
}
