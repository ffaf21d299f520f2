//! The miner's place in the extranonce space of the work it is on, and the slot it watches.

use std::sync::Arc;

use crate::protocol::{Extranonce1, Id};
use crate::router::{WorkReceiver, WorkState};
use crate::work::ExtranoncePrefix;

/// A prefix on one connection's work, and the extranonce1 it makes for the miner.
pub(super) struct Binding {
    pub work: Arc<WorkState>,
    pub prefix: ExtranoncePrefix,
    pub extranonce1: Extranonce1,
}

impl Binding {
    /// Takes a free prefix on `work`; None when its space is full (or the split cannot make an
    /// extranonce1 of it, which validation of the split rules out).
    pub fn allocate(work: &Arc<WorkState>) -> Option<Binding> {
        let prefix = work.lock_allocator().allocate().ok()?;
        let Some(extranonce1) = work
            .split
            .miner_extranonce1(&work.pool_extranonce1, &prefix)
        else {
            work.lock_allocator().release_unused(prefix);
            return None;
        };
        Some(Binding {
            work: Arc::clone(work),
            prefix,
            extranonce1,
        })
    }

    /// Gives the prefix back, quarantined until `newest_sent` (the newest job the miner was sent)
    /// is stale; at once when the miner was sent no job (it cannot have shares). `latest` is the
    /// slot's work now: the same connection's newer state knows more of its jobs' staleness.
    pub fn release(self, newest_sent: Option<u64>, latest: Option<Arc<WorkState>>) {
        let work = match latest {
            Some(latest) if latest.epoch == self.work.epoch => latest,
            _ => self.work,
        };
        let mut allocator = work.lock_allocator();
        match newest_sent {
            Some(newest) => allocator.release(self.prefix, newest),
            None => allocator.release_unused(self.prefix),
        }
    }
}

/// Where the miner's work comes from: the slot it watches, its binding there, and a subscribe
/// waiting for a pool.
#[derive(Default)]
pub(super) struct WorkLink {
    /// The slot's work channel (watched from subscribe on).
    pub rx: Option<WorkReceiver>,
    pub binding: Option<Binding>,
    /// A subscribe answered once a pool is up, or with an error at this deadline.
    pub pending_subscribe: Option<(Id, tokio::time::Instant)>,
    /// Subscribed and authorized: the miner has been sent work.
    pub started: bool,
    /// Every slot is full: the dispatcher asks the router for another one.
    pub wants_slot: bool,
}

impl WorkLink {
    /// The work the miner is bound to, else the first slot's.
    pub fn current(
        &self,
        slots: impl FnOnce() -> Option<Arc<WorkState>>,
    ) -> Option<Arc<WorkState>> {
        match &self.binding {
            Some(binding) => Some(Arc::clone(&binding.work)),
            None => slots(),
        }
    }

    /// The slot's newest work, if the miner watches one.
    pub fn latest(&self) -> Option<Arc<WorkState>> {
        self.rx.as_ref().and_then(|rx| rx.borrow().clone())
    }
}
