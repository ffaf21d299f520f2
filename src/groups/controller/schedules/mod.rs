//! Windows and capacity requests: what the controller holds of them, what goes into the state
//! file, the answers an `Idempotency-Key` replays, and the views the API reads.
//!
//! [`Schedules`] owns its data and decides; it never drains or resumes a group itself. Its API
//! commands (`commands.rs`) and its per-tick reconciliation (`reconcile.rs`) read the groups'
//! claims through a [`ClaimsView`] and return [`Intent`]s (drain this group for this claim,
//! release that claim) that the transition engine carries out; a drain that could not be made is
//! handed back with [`Schedules::forget_attempt`] and tried again on a later tick. Durable writes
//! go through a `save` callback the engine passes in (the state file holds the groups' records
//! too), so every rule here is tested with plain data and an explicit clock (`now_ms`).

mod commands;
mod reconcile;
mod views;

pub(super) use commands::{Outcome, Reply};
pub use views::ScheduleViews;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::warn;

use std::time::Instant;

use super::group::GroupRuntime;
use super::handle::DrainRequest;
use crate::config::windows::{Window, WindowSpec};
use crate::groups::capacity::{Capacity, CapacityRequest};
use crate::groups::state::{Claim, GroupRecord};
use crate::groups::store::{PersistedState, StoreError, StoredAnswer};

/// Idempotency keys remembered (the oldest are forgotten first); every state write carries them.
pub(super) const MAX_IDEMPOTENCY_KEYS: usize = 200;
/// Idempotency keys are forgotten after this.
pub(super) const IDEMPOTENCY_KEPT_MS: u64 = 24 * 3600 * 1000;
/// Ended capacity requests kept for the API.
pub(super) const MAX_ENDED_CAPACITY: usize = 100;
/// Windows the API may hold (config windows are not counted).
pub(super) const MAX_API_WINDOWS: usize = 1000;
/// Ended one-off API windows are forgotten this long after their end.
pub(super) const ENDED_WINDOW_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

/// An HTTP-shaped answer: what the API sends, and what an idempotent retry gets again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Answer {
    pub(super) fn new(status: u16, body: impl Serialize) -> Answer {
        Answer {
            status,
            body: serde_json::to_value(body).unwrap_or(Value::Null),
        }
    }

    pub(super) fn error(status: u16, message: impl std::fmt::Display) -> Answer {
        Answer {
            status,
            body: json!({ "error": message.to_string() }),
        }
    }
}

/// Window and capacity commands.
pub(super) enum ScheduleCommand {
    CreateWindow {
        spec: WindowSpec,
        key: Option<String>,
        reply: oneshot::Sender<Answer>,
    },
    DeleteWindow {
        name: String,
        reply: oneshot::Sender<Answer>,
    },
    CreateCapacity {
        request: CapacityRequest,
        key: Option<String>,
        reply: oneshot::Sender<Answer>,
    },
    EndCapacity {
        id: String,
        reply: oneshot::Sender<Answer>,
    },
    Heartbeat {
        id: String,
        reply: oneshot::Sender<Answer>,
    },
}

/// What schedules ask of the transition engine.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Intent {
    /// Drain `group` for `request.claim`; if it cannot be made now, hand it back with
    /// [`Schedules::forget_attempt`].
    Drain {
        /// The group.
        group: String,
        /// Mode, reason and the claim.
        request: DrainRequest,
    },
    /// Release `claim` on `group` (it resumes once no claim is left).
    Release {
        /// The group.
        group: String,
        /// The claim let go.
        claim: Claim,
    },
    /// `claim`'s scheduler stopped renewing its lease: an audit event on `group`, which stays
    /// drained.
    Lapsed {
        /// The group.
        group: String,
        /// The capacity request's claim.
        claim: Claim,
    },
}

/// One group as schedules see it: the claims it holds, and whether it can take a step now
/// (false while its hooks run or a failed transition waits for its retry).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct GroupClaims {
    /// The claims holding it.
    pub claims: BTreeSet<Claim>,
    /// Its hooks are running, or a failed transition waits for its retry.
    pub waiting: bool,
}

/// The configured groups' claims, taken by the engine before a schedule decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ClaimsView {
    /// By group name.
    pub groups: BTreeMap<String, GroupClaims>,
}

impl ClaimsView {
    /// The configured groups' claims (from their `records`) and whether each can take a step
    /// at `now`.
    pub(in crate::groups::controller) fn of(
        groups: &[GroupRuntime],
        records: &BTreeMap<String, GroupRecord>,
        now: Instant,
    ) -> ClaimsView {
        let groups = groups
            .iter()
            .map(|g| {
                let claims = GroupClaims {
                    claims: records
                        .get(&*g.name)
                        .map(|r| r.claims.clone())
                        .unwrap_or_default(),
                    waiting: g.pending.is_some() || g.retry_at.is_some_and(|at| now < at),
                };
                (g.name.to_string(), claims)
            })
            .collect();
        ClaimsView { groups }
    }

    /// Whether `group` holds `claim`.
    fn holds(&self, group: &str, claim: &Claim) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.claims.contains(claim))
    }

    /// Whether `group` cannot take a step now (an unknown group never can).
    fn waiting(&self, group: &str) -> bool {
        self.groups.get(group).is_none_or(|g| g.waiting)
    }

    /// Whether `group` is configured.
    fn known(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Releases of `claim` on every group holding it that can take a step now (the others are
    /// released by a later reconciliation).
    fn releases(&self, claim: &Claim) -> Vec<Intent> {
        self.groups
            .iter()
            .filter(|(_, g)| g.claims.contains(claim) && !g.waiting)
            .map(|(group, _)| Intent::Release {
                group: group.clone(),
                claim: claim.clone(),
            })
            .collect()
    }
}

/// Makes the state durable: the engine's, as it is now, with these schedules in it.
pub(super) type Save<'a> = dyn FnMut(&Schedules) -> Result<(), StoreError> + 'a;

/// Windows, capacity requests and their bookkeeping, owned by the controller.
pub(super) struct Schedules {
    pub(super) windows: Vec<Window>,
    /// Saved windows that no longer validate (a group renamed, say): kept with their claims so a
    /// restart does not resume their groups early; shown in the API and ended by DELETE.
    pub(super) broken: Vec<(WindowSpec, String)>,
    pub(super) window_acted: BTreeMap<String, u64>,
    pub(super) capacity: Vec<Capacity>,
    pub(super) idempotency: BTreeMap<String, StoredAnswer>,
    pub(super) next_id: u64,
    /// Capacity requests whose lapsed lease was already logged.
    pub(super) lapsed: HashSet<String>,
    /// Drains a window or capacity request has asked for whose hooks are still running: kept
    /// out of the state file until the claim is made, so a crash meanwhile retries them.
    pub(super) inflight: HashSet<(String, Claim)>,
    pub(super) tolerance: f64,
    pub(super) views: Arc<Mutex<ScheduleViews>>,
}

/// What a reconciliation asks of the engine.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reconciled {
    /// Drains and releases, in order.
    pub intents: Vec<Intent>,
    /// Active capacity requests whose heartbeat lease has lapsed.
    pub lapsed: i64,
}

impl Schedules {
    /// From the config's windows (compiled when the config was validated) and what the state
    /// file held.
    pub(super) fn new(
        config: &crate::config::Config,
        restored: &PersistedState,
        known_group: impl Fn(&str) -> bool + Copy,
    ) -> Schedules {
        let mut windows = Vec::new();
        for spec in &config.windows {
            // Validated with the config: an error here cannot happen.
            match Window::new(spec.clone(), true, known_group) {
                Ok(window) => windows.push(window),
                Err(error) => warn!(window = %spec.name, %error, "window skipped"),
            }
        }
        let mut broken = Vec::new();
        for spec in &restored.windows {
            match Window::new(spec.clone(), false, known_group) {
                Ok(window) => windows.push(window),
                Err(error) => {
                    warn!(window = %spec.name, %error, "saved window no longer valid: its groups stay held until it is deleted");
                    broken.push((spec.clone(), error.to_string()));
                }
            }
        }
        Schedules {
            windows,
            broken,
            window_acted: restored.window_acted.clone(),
            capacity: restored.capacity.clone(),
            idempotency: restored.idempotency.clone(),
            next_id: restored.next_id,
            lapsed: HashSet::new(),
            inflight: HashSet::new(),
            tolerance: config.capacity.tolerance,
            views: Arc::default(),
        }
    }

    /// What goes into the state file.
    pub(super) fn persist_into(&self, state: &mut PersistedState) {
        state.windows = self
            .windows
            .iter()
            .filter(|w| !w.from_config)
            .map(|w| w.spec.clone())
            .chain(self.broken.iter().map(|(spec, _)| spec.clone()))
            .collect();
        let inflight =
            |group: &str, claim: Claim| self.inflight.contains(&(group.to_owned(), claim));
        state.window_acted = self
            .window_acted
            .iter()
            .filter(|(key, _)| {
                key.split_once('/').is_none_or(|(window, group)| {
                    !inflight(group, Claim::Window(window.to_owned()))
                })
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        state.capacity = self
            .capacity
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.claimed
                    .retain(|group| !inflight(group, Claim::Capacity(c.id.clone())));
                c
            })
            .collect();
        state.idempotency = self.idempotency.clone();
        state.next_id = self.next_id;
    }

    /// Keeps an answer for its idempotency key (the oldest keys are forgotten first). Saved with
    /// the next write.
    pub(super) fn remember(&mut self, key: &str, fingerprint: &str, answer: &Answer, now: u64) {
        let idempotency = &mut self.idempotency;
        idempotency.retain(|_, a| now.saturating_sub(a.at_ms) < IDEMPOTENCY_KEPT_MS);
        let seq = idempotency.values().map(|a| a.seq).max().unwrap_or(0) + 1;
        idempotency.insert(
            key.to_owned(),
            StoredAnswer {
                seq,
                fingerprint: fingerprint.to_owned(),
                at_ms: now,
                status: answer.status,
                body: answer.body.clone(),
            },
        );
        while idempotency.len() > MAX_IDEMPOTENCY_KEYS {
            let Some(oldest) = idempotency
                .iter()
                .min_by_key(|(_, a)| a.seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            idempotency.remove(&oldest);
        }
    }

    /// A fresh id for a window or capacity request (`win-7`, `cap-8`), saved with the state.
    pub(super) fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }
}

#[cfg(test)]
mod tests;
