//! The controller's side of windows and capacity requests: creating and ending them, and the
//! per-tick reconciliation that makes each group's claims match them.
//!
//! Reconciliation is level-based, not edge-based: every tick, a window whose span is open wants
//! a claim on each of its groups and a closed or deleted one wants none; an active capacity
//! request wants its planned groups held, an ended one wants them released. A step that cannot
//! be taken now (the group's hooks are running, a required hook failed and waits for its retry)
//! is simply taken on a later tick. The answers to POSTs are HTTP-shaped (status and JSON body)
//! because that is what an `Idempotency-Key` must replay.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;
use tracing::{info, warn};

use super::schedules::{
    Answer, ENDED_WINDOW_KEPT_MS, MAX_API_WINDOWS, MAX_ENDED_CAPACITY, ScheduleCommand,
    ScheduleViews,
};
use super::{ControlError, DrainRequest, GroupController, lock};
use crate::clock::unix_ms;
use crate::config::DrainMode;
use crate::config::windows::{Window, WindowSpec, WindowView, check_reason, parse_time};
use crate::groups::capacity::{
    Candidate, Capacity, CapacityRequest, CapacityView, EfficiencySource, plan,
};
use crate::groups::events::now_rfc3339;
use crate::groups::state::{Claim, GroupState};

impl GroupController {
    pub(super) fn on_schedule(&mut self, command: ScheduleCommand) {
        match command {
            ScheduleCommand::CreateWindow { spec, key, reply } => {
                let fingerprint = format!(
                    "window {}",
                    serde_json::to_string(&spec).unwrap_or_default()
                );
                let answer = self.idempotent(key, fingerprint, |c, key| c.create_window(spec, key));
                let _ = reply.send(answer);
            }
            ScheduleCommand::DeleteWindow { name, reply } => {
                let _ = reply.send(self.delete_window(&name));
            }
            ScheduleCommand::CreateCapacity {
                request,
                key,
                reply,
            } => {
                let fingerprint = format!(
                    "capacity {}",
                    serde_json::to_string(&request).unwrap_or_default()
                );
                let answer =
                    self.idempotent(key, fingerprint, |c, key| c.create_capacity(request, key));
                let _ = reply.send(answer);
            }
            ScheduleCommand::EndCapacity { id, reply } => {
                let _ = reply.send(self.end_capacity(&id, "deleted"));
            }
            ScheduleCommand::Heartbeat { id, reply } => {
                let answer = match self.sched.capacity.iter_mut().find(|c| c.id == id) {
                    Some(capacity) if capacity.state == "active" => {
                        capacity.last_heartbeat_ms = unix_ms();
                        self.sched.lapsed.remove(&id);
                        match self.save() {
                            Ok(()) => {
                                Answer::new(200, json!({"id": id, "heartbeat": now_rfc3339()}))
                            }
                            Err(error) => Answer::error(500, error),
                        }
                    }
                    Some(_) => Answer::error(409, format!("capacity request {id} has ended")),
                    None => Answer::error(404, format!("no capacity request {id:?}")),
                };
                let _ = reply.send(answer);
            }
        }
        self.publish(&self.observe_all());
    }

    /// Runs `make` unless `key` was seen: then its first answer is returned again (422 if the
    /// key was used for another request). `make` gets the key to remember its answer in the
    /// same write that makes its change durable, so a crash between the two cannot let a retry
    /// drain twice.
    fn idempotent(
        &mut self,
        key: Option<String>,
        fingerprint: String,
        make: impl FnOnce(&mut GroupController, Option<(&str, &str)>) -> Answer,
    ) -> Answer {
        if let Some(stored) = key.as_ref().and_then(|k| self.sched.idempotency.get(k)) {
            if stored.fingerprint != fingerprint {
                return Answer::error(422, "this Idempotency-Key was used for a different request");
            }
            return Answer {
                status: stored.status,
                body: stored.body.clone(),
            };
        }
        let answer = make(self, key.as_deref().map(|k| (k, fingerprint.as_str())));
        // Answers that decided something are replayed; a refusal that may succeed on a retry
        // (busy, not enough capacity yet, state not saved) is not.
        if let Some(key) = key {
            if !self.sched.idempotency.contains_key(&key)
                && answer.status < 500
                && answer.status != 409
            {
                self.sched.remember(&key, &fingerprint, &answer);
                if let Err(error) = self.save() {
                    warn!(%error, "idempotency key not saved");
                }
            }
        }
        answer
    }

    fn create_window(&mut self, mut spec: WindowSpec, key: Option<(&str, &str)>) -> Answer {
        let api_windows = self.sched.windows.iter().filter(|w| !w.from_config).count();
        if api_windows >= MAX_API_WINDOWS {
            return Answer::error(
                409,
                format!("{MAX_API_WINDOWS} windows exist: delete ended ones first"),
            );
        }
        if spec.name.is_empty() {
            spec.name = self.sched.next_id("win");
        }
        if self.sched.windows.iter().any(|w| w.spec.name == spec.name)
            || self.sched.broken.iter().any(|(b, _)| b.name == spec.name)
        {
            return Answer::error(409, format!("a window {:?} exists", spec.name));
        }
        let window = match Window::new(spec, false, |g| self.index(g).is_some()) {
            Ok(window) => window,
            Err(error) => return Answer::error(400, error),
        };
        let view = window.view(unix_ms());
        let answer = Answer::new(201, &view);
        self.sched.windows.push(window);
        if let Some((key, fingerprint)) = key {
            self.sched.remember(key, fingerprint, &answer);
        }
        if let Err(error) = self.save() {
            self.sched.windows.pop();
            if let Some((key, _)) = key {
                self.sched.idempotency.remove(key);
            }
            return Answer::error(500, error);
        }
        info!(window = %view.spec.name, start = ?view.next_start, "window added");
        answer
    }

    fn delete_window(&mut self, name: &str) -> Answer {
        if let Some(position) = self
            .sched
            .broken
            .iter()
            .position(|(spec, _)| spec.name == name)
        {
            let broken = self.sched.broken.remove(position);
            if let Err(error) = self.save() {
                self.sched.broken.insert(position, broken);
                return Answer::error(500, error);
            }
            self.release_claims(&Claim::Window(name.to_owned()));
            return Answer::new(200, json!({"name": name, "state": "deleted"}));
        }
        let Some(position) = self.sched.windows.iter().position(|w| w.spec.name == name) else {
            return Answer::error(404, format!("no window {name:?}"));
        };
        if self.sched.windows[position].from_config {
            return Answer::error(
                409,
                format!("window {name:?} is in the config file: remove it there"),
            );
        }
        let window = self.sched.windows.remove(position);
        let prefix = format!("{name}/");
        let acted = self.sched.window_acted.clone();
        self.sched
            .window_acted
            .retain(|key, _| !key.starts_with(&prefix));
        if let Err(error) = self.save() {
            self.sched.windows.insert(position, window);
            self.sched.window_acted = acted;
            return Answer::error(500, error);
        }
        // Its claims are released by the next reconciliation; do the first step now.
        self.release_claims(&Claim::Window(name.to_owned()));
        info!(window = name, "window deleted");
        Answer::new(200, json!({"name": name, "state": "deleted"}))
    }

    fn create_capacity(&mut self, request: CapacityRequest, key: Option<(&str, &str)>) -> Answer {
        if !request.watts.is_finite() || request.watts <= 0.0 {
            return Answer::error(400, "watts: must be a number of watts above zero");
        }
        if request.mode == Some(DrainMode::Reconnect) {
            return Answer::error(
                400,
                "mode: reconnect needs a target per group; use pause or disconnect",
            );
        }
        if let Err(error) = check_reason("reason", &request.reason) {
            return Answer::error(400, error);
        }
        let tolerance = request.tolerance.unwrap_or(self.sched.tolerance);
        if !(0.0..1.0).contains(&tolerance) {
            return Answer::error(400, "tolerance: must be a fraction in [0, 1)");
        }
        if let Some(until) = &request.until {
            match parse_time("until", until) {
                Ok(ms) if ms <= unix_ms() => {
                    return Answer::error(400, "until: must be in the future");
                }
                Ok(_) => {}
                Err(error) => return Answer::error(400, error),
            }
        } else if request.resume_at_until {
            return Answer::error(400, "resume_at_until: needs until");
        }
        if request.heartbeat.is_some_and(|h| h.is_zero()) {
            return Answer::error(400, "heartbeat: must be above zero");
        }
        let plan = plan(request.watts, tolerance, self.candidates());
        if request.dry_run {
            return Answer::new(200, json!({ "dry_run": true, "plan": plan }));
        }
        if !plan.feasible {
            return Answer::new(
                409,
                json!({
                    "error": format!(
                        "not enough mining capacity to free {} W: {} W can be drained now",
                        request.watts, plan.watts_planned
                    ),
                    "plan": plan,
                }),
            );
        }
        let id = self.sched.next_id("cap");
        let now = unix_ms();
        let capacity = Capacity {
            id: id.clone(),
            request,
            plan,
            created: now_rfc3339(),
            state: "active".into(),
            ended: None,
            last_heartbeat_ms: now,
            claimed: Vec::new(),
        };
        let answer = Answer::new(201, self.capacity_view(&capacity));
        self.sched.capacity.push(capacity.clone());
        if let Some((key, fingerprint)) = key {
            self.sched.remember(key, fingerprint, &answer);
        }
        // Durable (with its idempotency key) before any group is touched: after a crash the
        // claims have an owner and a retry gets this answer.
        if let Err(error) = self.save() {
            self.sched.capacity.pop();
            if let Some((key, _)) = key {
                self.sched.idempotency.remove(key);
            }
            return Answer::error(500, error);
        }
        info!(id = %id, watts = capacity.request.watts, groups = ?capacity.plan.groups.iter().map(|g| &g.group).collect::<Vec<_>>(), "capacity request accepted");
        self.claim_capacity_groups(&capacity);
        answer
    }

    /// Drains the planned groups of an active request that have not held its claim yet (a
    /// drain that could not be made, busy or refused by a hook, is tried again on a later tick).
    fn claim_capacity_groups(&mut self, capacity: &Capacity) {
        let claim = Claim::Capacity(capacity.id.clone());
        for planned in &capacity.plan.groups {
            if self.record(&planned.group).claims.contains(&claim) {
                if !capacity.claimed.contains(&planned.group) {
                    if let Some(c) = self.sched.capacity.iter_mut().find(|c| c.id == capacity.id) {
                        c.claimed.push(planned.group.clone());
                    }
                    if let Err(error) = self.save() {
                        warn!(id = %capacity.id, %error, "capacity bookkeeping not saved");
                    }
                }
                continue;
            }
            if capacity.claimed.contains(&planned.group) || self.waiting(&planned.group) {
                continue;
            }
            // Recorded before the drain, so the drain's own save keeps it; forgotten again if
            // the drain is refused.
            if let Some(c) = self.sched.capacity.iter_mut().find(|c| c.id == capacity.id) {
                c.claimed.push(planned.group.clone());
            }
            self.sched
                .inflight
                .insert((planned.group.clone(), claim.clone()));
            let request = DrainRequest {
                mode: capacity.request.mode.unwrap_or(DrainMode::Pause),
                reason: if capacity.request.reason.is_empty() {
                    format!("capacity request {}", capacity.id)
                } else {
                    capacity.request.reason.clone()
                },
                reconnect_to: None,
                claim: claim.clone(),
            };
            if let Err(error) = self.drain(&planned.group, request) {
                warn!(id = %capacity.id, group = %planned.group, %error, "capacity drain not made yet");
                self.forget_attempt(&planned.group, &claim);
            }
        }
    }

    fn end_capacity(&mut self, id: &str, why: &str) -> Answer {
        let Some(capacity) = self.sched.capacity.iter_mut().find(|c| c.id == id) else {
            return Answer::error(404, format!("no capacity request {id:?}"));
        };
        if capacity.state != "active" {
            let view = capacity.clone();
            return Answer::new(200, self.capacity_view(&view));
        }
        capacity.state = "ended".into();
        capacity.ended = Some(now_rfc3339());
        let ended = capacity.clone();
        if let Err(error) = self.save() {
            if let Some(capacity) = self.sched.capacity.iter_mut().find(|c| c.id == id) {
                capacity.state = "active".into();
                capacity.ended = None;
            }
            return Answer::error(500, error);
        }
        info!(id, why, "capacity request ended");
        self.sched.lapsed.remove(id);
        self.release_claims(&Claim::Capacity(id.to_owned()));
        let ended_count = self
            .sched
            .capacity
            .iter()
            .filter(|c| c.state != "active")
            .count();
        if ended_count > MAX_ENDED_CAPACITY {
            if let Some(position) = self.sched.capacity.iter().position(|c| c.state != "active") {
                self.sched.capacity.remove(position);
            }
        }
        Answer::new(200, self.capacity_view(&ended))
    }

    /// A drain for `claim` was not made (refused, or a required hook failed): its window or
    /// capacity request tries again later.
    pub(super) fn forget_attempt(&mut self, group: &str, claim: &Claim) {
        self.sched
            .inflight
            .remove(&(group.to_owned(), claim.clone()));
        match claim {
            Claim::Window(name) => {
                self.sched.window_acted.remove(&format!("{name}/{group}"));
            }
            Claim::Capacity(id) => {
                if let Some(c) = self.sched.capacity.iter_mut().find(|c| &c.id == id) {
                    c.claimed.retain(|g| g != group);
                }
            }
            Claim::Manual => return,
        }
        if let Err(error) = self.save() {
            warn!(%group, %claim, %error, "drain attempt bookkeeping not saved");
        }
    }

    /// Releases `claim` on every group holding it (those busy now are retried next tick).
    fn release_claims(&mut self, claim: &Claim) {
        let holders: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.claims.contains(claim))
            .map(|(name, _)| name.clone())
            .collect();
        for group in holders {
            if self.waiting(&group) {
                continue;
            }
            match self.resume(&group, claim.clone(), false) {
                Ok(_) | Err(ControlError::Held { .. }) => {}
                Err(error) => warn!(%group, %claim, %error, "claim not released yet"),
            }
        }
    }

    /// A group whose hooks are running or whose failed transition waits for its retry.
    fn waiting(&self, group: &str) -> bool {
        self.index(group).is_none_or(|i| {
            self.groups[i].pending.is_some()
                || self.groups[i]
                    .retry_at
                    .is_some_and(|at| Instant::now() < at)
        })
    }

    /// Groups a capacity request may drain: mining, held by nothing, drawing power.
    fn candidates(&self) -> Vec<Candidate> {
        let observed = self.observe_with(|_| true);
        // A group planned by an active request is its, even before (or after a failed) drain.
        let planned: HashSet<&str> = self
            .sched
            .capacity
            .iter()
            .filter(|c| c.state == "active")
            .flat_map(|c| c.plan.groups.iter().map(|g| g.group.as_str()))
            .collect();
        self.groups
            .iter()
            .zip(&observed)
            .filter(|(g, _)| {
                let record = self.record(&g.name);
                record.state == GroupState::Active
                    && record.claims.is_empty()
                    && g.pending.is_none()
                    && !planned.contains(&*g.name)
            })
            .map(|(g, o)| {
                let watts = o.mining as f64 * g.policy.watts_per_worker;
                let (efficiency, source) = self.efficiency(g, watts);
                let expected = o
                    .miners
                    .iter()
                    .map(|m| {
                        g.policy
                            .quiet_period(m.difficulty, m.hashrate)
                            .as_secs_f64()
                    })
                    .fold(g.policy.quiet_min.as_secs_f64(), f64::max);
                Candidate {
                    group: g.name.to_string(),
                    watts,
                    efficiency_j_per_th: efficiency,
                    source,
                    drain_priority: g.drain_priority,
                    expected_drained_seconds: expected,
                }
            })
            .collect()
    }

    /// J/TH: measured from verified shares where there is enough history, else declared.
    pub(super) fn efficiency(
        &self,
        group: &super::GroupRuntime,
        watts: f64,
    ) -> (Option<f64>, EfficiencySource) {
        match group.hashrate.hashrate() {
            Some(hashrate) if hashrate > 0.0 && watts > 0.0 => {
                (Some(watts / (hashrate / 1e12)), EfficiencySource::Measured)
            }
            _ => match group.declared_efficiency {
                Some(declared) => (Some(declared), EfficiencySource::Declared),
                None => (None, EfficiencySource::Unknown),
            },
        }
    }

    /// Each tick: windows open and close, capacity requests reach `until` or lapse.
    pub(super) fn reconcile_schedules(&mut self, now_ms: u64) {
        let before = self.sched.windows.len();
        self.sched
            .windows
            .retain(|w| w.from_config || !w.ended(now_ms.saturating_sub(ENDED_WINDOW_KEPT_MS)));
        if self.sched.windows.len() != before {
            let known: HashSet<String> = self
                .sched
                .windows
                .iter()
                .map(|w| w.spec.name.clone())
                .chain(self.sched.broken.iter().map(|(spec, _)| spec.name.clone()))
                .collect();
            self.sched.window_acted.retain(|key, _| {
                key.split_once('/')
                    .is_some_and(|(window, _)| known.contains(window))
            });
            if let Err(error) = self.save() {
                warn!(%error, "pruned windows not saved");
            }
        }
        for w in 0..self.sched.windows.len() {
            let window = self.sched.windows[w].clone();
            let claim = Claim::Window(window.spec.name.clone());
            let open = window.open_at(now_ms);
            for group in &window.spec.groups {
                let key = format!("{}/{group}", window.spec.name);
                let holds = self.record(group).claims.contains(&claim);
                match open {
                    Some(span) => {
                        if holds {
                            if self.sched.window_acted.get(&key) != Some(&span.start_ms) {
                                self.sched.window_acted.insert(key, span.start_ms);
                                if let Err(error) = self.save() {
                                    warn!(window = %window.spec.name, %error, "window bookkeeping not saved");
                                }
                            }
                        } else if self.sched.window_acted.get(&key) != Some(&span.start_ms)
                            && !self.waiting(group)
                        {
                            // Recorded before the drain, so the drain's own save keeps it: a
                            // forced resume during the span is not undone. Forgotten if the
                            // drain is refused, so it is tried again.
                            self.sched.window_acted.insert(key.clone(), span.start_ms);
                            self.sched.inflight.insert((group.clone(), claim.clone()));
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
                            if let Err(error) = self.drain(group, request) {
                                warn!(window = %window.spec.name, %group, %error, "window drain not made yet");
                                self.forget_attempt(group, &claim);
                            }
                        }
                    }
                    None if holds && !self.waiting(group) => {
                        let _ = self.resume(group, claim.clone(), false);
                    }
                    None => {}
                }
            }
        }
        // Claims of deleted windows.
        let orphaned: Vec<Claim> = self
            .records
            .values()
            .flat_map(|r| r.claims.iter())
            .filter(|c| match c {
                Claim::Window(name) => {
                    !self.sched.windows.iter().any(|w| &w.spec.name == name)
                        && !self.sched.broken.iter().any(|(spec, _)| &spec.name == name)
                }
                Claim::Capacity(id) => !self
                    .sched
                    .capacity
                    .iter()
                    .any(|c| &c.id == id && c.state == "active"),
                Claim::Manual => false,
            })
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for claim in orphaned {
            self.release_claims(&claim);
        }
        let mut lapsed = 0;
        for c in 0..self.sched.capacity.len() {
            let capacity = self.sched.capacity[c].clone();
            if capacity.state != "active" {
                continue;
            }
            let until = capacity
                .request
                .until
                .as_deref()
                .and_then(|u| parse_time("until", u).ok());
            if capacity.request.resume_at_until && until.is_some_and(|u| now_ms >= u) {
                self.end_capacity(&capacity.id, "until reached");
                continue;
            }
            self.claim_capacity_groups(&capacity);
            if let Some(lease) = capacity.request.heartbeat {
                if now_ms.saturating_sub(capacity.last_heartbeat_ms) > lease.as_millis() as u64 {
                    lapsed += 1;
                    if self.sched.lapsed.insert(capacity.id.clone()) {
                        warn!(id = %capacity.id, "capacity request heartbeat lapsed: its groups stay drained");
                        for planned in &capacity.plan.groups {
                            if let Some(index) = self.index(&planned.group) {
                                let state = self.record(&planned.group).state;
                                self.log_event(
                                    index,
                                    "heartbeat_lapsed",
                                    (state, state),
                                    &Claim::Capacity(capacity.id.clone()).to_string(),
                                    "the scheduler stopped renewing its lease; the group stays drained",
                                );
                            }
                        }
                    }
                }
            }
        }
        self.metrics.groups.capacity_heartbeat_lapsed.set(lapsed);
    }

    /// A capacity request with its groups' states now.
    pub(super) fn capacity_view(&self, capacity: &Capacity) -> CapacityView {
        let now_ms = unix_ms();
        let statuses = lock(&self.status);
        let mut group_states = Vec::new();
        let mut released = 0.0;
        let mut satisfied = capacity.state == "active";
        for planned in &capacity.plan.groups {
            let status = statuses.iter().find(|s| s.name == planned.group);
            let state = status.map_or(GroupState::Active, |s| s.state);
            let holds = status.is_some_and(|s| {
                s.claims
                    .contains(&Claim::Capacity(capacity.id.clone()).to_string())
            });
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
            .and_then(|u| parse_time("until", u).ok());
        CapacityView {
            capacity: capacity.clone(),
            group_states,
            released_watts: released,
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

    /// Publishes the windows' and capacity requests' views and their metrics.
    pub(super) fn publish_schedules(&self) {
        let now_ms = unix_ms();
        let windows: Vec<WindowView> = self
            .sched
            .windows
            .iter()
            .map(|w| w.view(now_ms))
            .chain(self.sched.broken.iter().map(|(spec, error)| WindowView {
                spec: spec.clone(),
                from_config: false,
                state: format!("invalid: {error}"),
                next_drain_at: None,
                next_start: None,
                next_end: None,
            }))
            .collect();
        let capacity: Vec<CapacityView> = self
            .sched
            .capacity
            .iter()
            .map(|c| self.capacity_view(c))
            .collect();
        let active: Vec<&CapacityView> = capacity
            .iter()
            .filter(|c| c.capacity.state == "active")
            .collect();
        self.metrics
            .groups
            .capacity_requests
            .set(active.len() as i64);
        self.metrics
            .groups
            .capacity_watts_requested
            .set(active.iter().map(|c| c.capacity.request.watts).sum());
        self.metrics
            .groups
            .capacity_watts_released
            .set(active.iter().map(|c| c.released_watts).sum());
        self.metrics
            .groups
            .windows_open
            .set(windows.iter().filter(|w| w.state == "open").count() as i64);
        *lock(&self.sched.views) = ScheduleViews { windows, capacity };
    }
}
