//! The per-tick reconciliation that makes each group's claims match its windows and capacity
//! requests.
//!
//! It is level-based, not edge-based: every tick, a window whose span is open wants a claim on
//! each of its groups and a closed or deleted one wants none; an active capacity request wants
//! its planned groups held, an ended one wants them released. A step that cannot be taken now
//! (the group's hooks are running, a required hook failed and waits for its retry) is simply
//! asked for again on a later tick.

use std::collections::{BTreeSet, HashSet};

use tracing::warn;

use super::{ClaimsView, ENDED_WINDOW_KEPT_MS, Intent, Reconciled, Save, Schedules};
use crate::config::windows::parse_time;
use crate::groups::controller::handle::DrainRequest;
use crate::groups::state::Claim;

impl Schedules {
    /// What the groups need at `now_ms`: windows open and close, capacity requests reach `until`
    /// or lapse, claims of deleted windows and ended requests are let go.
    pub(in crate::groups::controller) fn reconcile(
        &mut self,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Reconciled {
        self.prune_windows(now_ms, save);
        let mut intents = self.reconcile_windows(now_ms, view, save);
        for claim in self.orphaned_claims(view) {
            intents.extend(view.releases(&claim));
        }
        let (capacity, lapsed) = self.reconcile_capacity(now_ms, view, save);
        intents.extend(capacity);
        Reconciled { intents, lapsed }
    }

    /// Forgets one-off API windows a week after their end.
    fn prune_windows(&mut self, now_ms: u64, save: &mut Save<'_>) {
        let before = self.windows.len();
        self.windows
            .retain(|w| w.from_config || !w.ended(now_ms.saturating_sub(ENDED_WINDOW_KEPT_MS)));
        if self.windows.len() == before {
            return;
        }
        let known: HashSet<String> = self
            .windows
            .iter()
            .map(|w| w.spec.name.clone())
            .chain(self.broken.iter().map(|(spec, _)| spec.name.clone()))
            .collect();
        self.window_acted.retain(|key, _| {
            key.split_once('/')
                .is_some_and(|(window, _)| known.contains(window))
        });
        if let Err(error) = save(self) {
            warn!(%error, "pruned windows not saved");
        }
    }

    /// An open span drains each of its groups once (a forced resume during the span is not
    /// undone); a closed one releases them.
    fn reconcile_windows(
        &mut self,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Vec<Intent> {
        let mut intents = Vec::new();
        let mut bookkeeping = false;
        for window in &self.windows {
            let claim = Claim::Window(window.spec.name.clone());
            let open = window.open_at(now_ms);
            for group in &window.spec.groups {
                let key = format!("{}/{group}", window.spec.name);
                let holds = view.holds(group, &claim);
                match open {
                    Some(span) => {
                        let acted = self.window_acted.get(&key) == Some(&span.start_ms);
                        if holds {
                            if !acted {
                                self.window_acted.insert(key, span.start_ms);
                                bookkeeping = true;
                            }
                        } else if !acted && !view.waiting(group) {
                            // Recorded before the drain, so the drain's own save keeps it.
                            // Handed back with forget_attempt if the drain is refused.
                            self.window_acted.insert(key, span.start_ms);
                            self.inflight.insert((group.clone(), claim.clone()));
                            let request = DrainRequest {
                                mode: window.spec.mode,
                                reason: if window.spec.reason.is_empty() {
                                    format!("maintenance window {}", window.spec.name)
                                } else {
                                    window.spec.reason.clone()
                                },
                                reconnect_to: window.spec.reconnect_to.clone(),
                                claim: claim.clone(),
                            };
                            intents.push(Intent::Drain {
                                group: group.clone(),
                                request,
                            });
                        }
                    }
                    None if holds && !view.waiting(group) => intents.push(Intent::Release {
                        group: group.clone(),
                        claim: claim.clone(),
                    }),
                    None => {}
                }
            }
        }
        if bookkeeping && let Err(error) = save(self) {
            warn!(%error, "window bookkeeping not saved");
        }
        intents
    }

    /// Claims whose window was deleted or whose capacity request ended.
    fn orphaned_claims(&self, view: &ClaimsView) -> BTreeSet<Claim> {
        view.groups
            .values()
            .flat_map(|g| g.claims.iter())
            .filter(|c| match c {
                Claim::Window(name) => {
                    !self.windows.iter().any(|w| &w.spec.name == name)
                        && !self.broken.iter().any(|(spec, _)| &spec.name == name)
                }
                Claim::Capacity(id) => !self
                    .capacity
                    .iter()
                    .any(|c| &c.id == id && c.state == "active"),
                Claim::Manual => false,
            })
            .cloned()
            .collect()
    }

    /// Active requests: ended at `until` when they ask for it, their groups drained, their
    /// lease watched (a lapse is logged once per lapse; the groups stay drained).
    fn reconcile_capacity(
        &mut self,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> (Vec<Intent>, i64) {
        let mut intents = Vec::new();
        let mut lapsed = 0;
        let active: Vec<String> = self
            .capacity
            .iter()
            .filter(|c| c.state == "active")
            .map(|c| c.id.clone())
            .collect();
        for id in active {
            let Some(capacity) = self.capacity.iter().find(|c| c.id == id) else {
                continue;
            };
            let until = capacity
                .request
                .until
                .as_deref()
                .and_then(|u| parse_time("until", u).ok());
            if capacity.request.resume_at_until && until.is_some_and(|u| now_ms >= u) {
                intents.extend(
                    self.end_capacity(&id, "until reached", now_ms, view, save)
                        .intents,
                );
                continue;
            }
            let lease_lapsed = capacity.request.heartbeat.is_some_and(|lease| {
                now_ms.saturating_sub(capacity.last_heartbeat_ms) > lease.as_millis() as u64
            });
            let planned: Vec<String> = capacity
                .plan
                .groups
                .iter()
                .map(|g| g.group.clone())
                .collect();
            intents.extend(self.claim_capacity_groups(&id, view, save));
            if lease_lapsed {
                lapsed += 1;
                if self.lapsed.insert(id.clone()) {
                    warn!(id = %id, "capacity request heartbeat lapsed: its groups stay drained");
                    intents.extend(planned.into_iter().map(|group| Intent::Lapsed {
                        group,
                        claim: Claim::Capacity(id.clone()),
                    }));
                }
            }
        }
        (intents, lapsed)
    }
}
