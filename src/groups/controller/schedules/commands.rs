//! The API's window and capacity commands: creating and ending them, heartbeats, and the
//! `Idempotency-Key` replay. Each answer is HTTP-shaped (status and JSON body) because that is
//! what a retry with the same key must get again; what a command needs done to groups comes back
//! as [`Intent`]s for the engine.

use serde_json::json;
use tracing::{info, warn};

use tokio::sync::oneshot;

use super::{
    Answer, ClaimsView, Intent, MAX_API_WINDOWS, MAX_ENDED_CAPACITY, Save, ScheduleCommand,
    Schedules,
};
use crate::config::DrainMode;
use crate::config::windows::{Window, WindowSpec, check_reason, format_time, parse_time};
use crate::groups::capacity::{Candidate, Capacity, CapacityRequest, plan};
use crate::groups::controller::handle::DrainRequest;
use crate::groups::state::Claim;

/// A command's answer, or the capacity request whose view (after the intents are carried out)
/// is the answer.
#[derive(Debug)]
pub(in crate::groups::controller) enum Reply {
    /// Sent as it is.
    Now(Answer),
    /// `status` with the view of this capacity request once its releases are made.
    CapacityView(u16, Box<Capacity>),
}

/// What a command answers and what it asks of the engine.
#[derive(Debug)]
pub(in crate::groups::controller) struct Outcome {
    /// The answer.
    pub reply: Reply,
    /// Drains and releases to make, in order.
    pub intents: Vec<Intent>,
}

impl Schedules {
    /// Carries out one API command; returns its outcome and where its answer goes.
    /// `candidates` are the groups a new capacity request may drain (empty for the others).
    pub(in crate::groups::controller) fn take(
        &mut self,
        command: ScheduleCommand,
        now_ms: u64,
        view: &ClaimsView,
        candidates: Vec<Candidate>,
        save: &mut Save<'_>,
    ) -> (Outcome, oneshot::Sender<Answer>) {
        match command {
            ScheduleCommand::CreateWindow { spec, key, reply } => {
                (self.create_window(spec, key, now_ms, view, save), reply)
            }
            ScheduleCommand::DeleteWindow { name, reply } => {
                (self.delete_window(&name, view, save), reply)
            }
            ScheduleCommand::CreateCapacity {
                request,
                key,
                reply,
            } => {
                let outcome = self.create_capacity(request, key, candidates, now_ms, view, save);
                (outcome, reply)
            }
            ScheduleCommand::EndCapacity { id, reply } => {
                (self.end_capacity(&id, "deleted", now_ms, view, save), reply)
            }
            ScheduleCommand::Heartbeat { id, reply } => (self.heartbeat(&id, now_ms, save), reply),
        }
    }
}

impl Outcome {
    fn answer(answer: Answer) -> Outcome {
        Outcome {
            reply: Reply::Now(answer),
            intents: Vec::new(),
        }
    }
}

/// What an idempotency key is bound to: the endpoint and its body.
fn fingerprint(endpoint: &str, body: &impl serde::Serialize) -> String {
    format!(
        "{endpoint} {}",
        serde_json::to_string(body).unwrap_or_default()
    )
}

impl Schedules {
    /// Adds a window from the API (`POST /windows`, with its idempotency key). Its drains start
    /// at the next reconciliation once its span is open.
    pub(in crate::groups::controller) fn create_window(
        &mut self,
        spec: WindowSpec,
        key: Option<String>,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Outcome {
        let fingerprint = fingerprint("window", &spec);
        let answer = self.idempotent(key, fingerprint, now_ms, save, |s, key, save| {
            s.add_window(spec, key, now_ms, view, save)
        });
        Outcome::answer(answer)
    }

    /// Adds a capacity request (`POST /capacity`) planned over `candidates`, and drains its
    /// groups once it is durable.
    pub(in crate::groups::controller) fn create_capacity(
        &mut self,
        request: CapacityRequest,
        key: Option<String>,
        candidates: Vec<Candidate>,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Outcome {
        let fingerprint = fingerprint("capacity", &request);
        let mut intents = Vec::new();
        let answer = self.idempotent(key, fingerprint, now_ms, save, |s, key, save| {
            let (answer, claims) = s.add_capacity(request, key, candidates, now_ms, view, save);
            intents = claims;
            answer
        });
        Outcome {
            reply: Reply::Now(answer),
            intents,
        }
    }

    /// Renews a capacity request's heartbeat lease.
    pub(in crate::groups::controller) fn heartbeat(
        &mut self,
        id: &str,
        now_ms: u64,
        save: &mut Save<'_>,
    ) -> Outcome {
        let answer = match self.capacity.iter_mut().find(|c| c.id == id) {
            Some(capacity) if capacity.state == "active" => {
                capacity.last_heartbeat_ms = now_ms;
                self.lapsed.remove(id);
                match save(self) {
                    Ok(()) => Answer::new(200, json!({"id": id, "heartbeat": format_time(now_ms)})),
                    Err(error) => Answer::error(500, error),
                }
            }
            Some(_) => Answer::error(409, format!("capacity request {id} has ended")),
            None => Answer::error(404, format!("no capacity request {id:?}")),
        };
        Outcome::answer(answer)
    }

    /// Runs `make` unless `key` was seen: then its first answer is returned again (422 if the
    /// key was used for another request). `make` gets the key to remember its answer in the
    /// same write that makes its change durable, so a crash between the two cannot let a retry
    /// drain twice.
    fn idempotent(
        &mut self,
        key: Option<String>,
        fingerprint: String,
        now_ms: u64,
        save: &mut Save<'_>,
        make: impl FnOnce(&mut Schedules, Option<(&str, &str)>, &mut Save<'_>) -> Answer,
    ) -> Answer {
        if let Some(stored) = key.as_ref().and_then(|k| self.idempotency.get(k)) {
            if stored.fingerprint != fingerprint {
                return Answer::error(422, "this Idempotency-Key was used for a different request");
            }
            return Answer {
                status: stored.status,
                body: stored.body.clone(),
            };
        }
        let answer = make(
            self,
            key.as_deref().map(|k| (k, fingerprint.as_str())),
            save,
        );
        // Answers that decided something are replayed; a refusal that may succeed on a retry
        // (busy, not enough capacity yet, state not saved) is not.
        if let Some(key) = key
            && !self.idempotency.contains_key(&key)
            && answer.status < 500
            && answer.status != 409
        {
            self.remember(&key, &fingerprint, &answer, now_ms);
            if let Err(error) = save(self) {
                warn!(%error, "idempotency key not saved");
            }
        }
        answer
    }

    fn add_window(
        &mut self,
        mut spec: WindowSpec,
        key: Option<(&str, &str)>,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Answer {
        let api_windows = self.windows.iter().filter(|w| !w.from_config).count();
        if api_windows >= MAX_API_WINDOWS {
            return Answer::error(
                409,
                format!("{MAX_API_WINDOWS} windows exist: delete ended ones first"),
            );
        }
        if spec.name.is_empty() {
            spec.name = self.next_id("win");
        }
        if self.windows.iter().any(|w| w.spec.name == spec.name)
            || self.broken.iter().any(|(b, _)| b.name == spec.name)
        {
            return Answer::error(409, format!("a window {:?} exists", spec.name));
        }
        let window = match Window::new(spec, false, |g| view.known(g)) {
            Ok(window) => window,
            Err(error) => return Answer::error(400, error),
        };
        let window_view = window.view(now_ms);
        let answer = Answer::new(201, &window_view);
        self.windows.push(window);
        if let Some((key, fingerprint)) = key {
            self.remember(key, fingerprint, &answer, now_ms);
        }
        if let Err(error) = save(self) {
            self.windows.pop();
            if let Some((key, _)) = key {
                self.idempotency.remove(key);
            }
            return Answer::error(500, error);
        }
        info!(window = %window_view.spec.name, start = ?window_view.next_start, "window added");
        answer
    }

    /// Deletes an API window (or a saved one that no longer validates); its claims are
    /// released now where the group can take the step, by later reconciliations elsewhere.
    pub(in crate::groups::controller) fn delete_window(
        &mut self,
        name: &str,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Outcome {
        let claim = Claim::Window(name.to_owned());
        let deleted = Answer::new(200, json!({"name": name, "state": "deleted"}));
        if let Some(position) = self.broken.iter().position(|(spec, _)| spec.name == name) {
            let broken = self.broken.remove(position);
            if let Err(error) = save(self) {
                self.broken.insert(position, broken);
                return Outcome::answer(Answer::error(500, error));
            }
            return Outcome {
                reply: Reply::Now(deleted),
                intents: view.releases(&claim),
            };
        }
        let Some(position) = self.windows.iter().position(|w| w.spec.name == name) else {
            return Outcome::answer(Answer::error(404, format!("no window {name:?}")));
        };
        if self.windows[position].from_config {
            return Outcome::answer(Answer::error(
                409,
                format!("window {name:?} is in the config file: remove it there"),
            ));
        }
        let window = self.windows.remove(position);
        let prefix = format!("{name}/");
        let acted = self.window_acted.clone();
        self.window_acted.retain(|key, _| !key.starts_with(&prefix));
        if let Err(error) = save(self) {
            self.windows.insert(position, window);
            self.window_acted = acted;
            return Outcome::answer(Answer::error(500, error));
        }
        info!(window = name, "window deleted");
        Outcome {
            reply: Reply::Now(deleted),
            intents: view.releases(&claim),
        }
    }

    fn add_capacity(
        &mut self,
        request: CapacityRequest,
        key: Option<(&str, &str)>,
        candidates: Vec<Candidate>,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> (Answer, Vec<Intent>) {
        let refuse =
            |status, message: &dyn std::fmt::Display| (Answer::error(status, message), Vec::new());
        if !request.watts.is_finite() || request.watts <= 0.0 {
            return refuse(400, &"watts: must be a number of watts above zero");
        }
        if request.mode == Some(DrainMode::Reconnect) {
            return refuse(
                400,
                &"mode: reconnect needs a target per group; use pause or disconnect",
            );
        }
        if let Err(error) = check_reason("reason", &request.reason) {
            return refuse(400, &error);
        }
        let tolerance = request.tolerance.unwrap_or(self.tolerance);
        if !(0.0..1.0).contains(&tolerance) {
            return refuse(400, &"tolerance: must be a fraction in [0, 1)");
        }
        if let Some(until) = &request.until {
            match parse_time("until", until) {
                Ok(ms) if ms <= now_ms => return refuse(400, &"until: must be in the future"),
                Ok(_) => {}
                Err(error) => return refuse(400, &error),
            }
        } else if request.resume_at_until {
            return refuse(400, &"resume_at_until: needs until");
        }
        if request.heartbeat.is_some_and(|h| h.is_zero()) {
            return refuse(400, &"heartbeat: must be above zero");
        }
        // A group planned by an active request is its, even before (or after a failed) drain.
        let planned = self.planned_groups();
        let candidates = candidates
            .into_iter()
            .filter(|c| !planned.contains(&c.group))
            .collect();
        let plan = plan(request.watts, tolerance, candidates);
        if request.dry_run {
            return (
                Answer::new(200, json!({ "dry_run": true, "plan": plan })),
                Vec::new(),
            );
        }
        if !plan.feasible {
            let answer = Answer::new(
                409,
                json!({
                    "error": if plan.watts_planned < request.watts * (1.0 - tolerance) {
                        format!(
                            "not enough mining capacity to free {} W: {} W can be drained now",
                            request.watts, plan.watts_planned
                        )
                    } else {
                        format!(
                            "no plan frees {} W within {}%: the closest drains {} W ({:.0}% over); ask again with a wider tolerance",
                            request.watts,
                            tolerance * 100.0,
                            plan.watts_planned,
                            plan.overshoot_percent
                        )
                    },
                    "plan": plan,
                }),
            );
            return (answer, Vec::new());
        }
        let id = self.next_id("cap");
        let capacity = Capacity {
            id: id.clone(),
            request,
            plan,
            created: format_time(now_ms),
            state: "active".into(),
            ended: None,
            last_heartbeat_ms: now_ms,
            claimed: Vec::new(),
        };
        // Its groups' states as the request is taken: all still mining.
        let answer = Answer::new(
            201,
            self.capacity_view(&capacity, &[], &Default::default(), now_ms),
        );
        self.capacity.push(capacity.clone());
        if let Some((key, fingerprint)) = key {
            self.remember(key, fingerprint, &answer, now_ms);
        }
        // Durable (with its idempotency key) before any group is touched: after a crash the
        // claims have an owner and a retry gets this answer.
        if let Err(error) = save(self) {
            self.capacity.pop();
            if let Some((key, _)) = key {
                self.idempotency.remove(key);
            }
            return (Answer::error(500, error), Vec::new());
        }
        info!(id = %id, watts = capacity.request.watts, groups = ?capacity.plan.groups.iter().map(|g| &g.group).collect::<Vec<_>>(), "capacity request accepted");
        let intents = self.claim_capacity_groups(&id, view, save);
        (answer, intents)
    }

    /// Ends an active capacity request (`DELETE`, or `until` reached with `resume_at_until`);
    /// its groups are released. Ending an ended one answers its view again.
    pub(in crate::groups::controller) fn end_capacity(
        &mut self,
        id: &str,
        why: &str,
        now_ms: u64,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Outcome {
        let Some(capacity) = self.capacity.iter_mut().find(|c| c.id == id) else {
            return Outcome::answer(Answer::error(404, format!("no capacity request {id:?}")));
        };
        if capacity.state != "active" {
            return Outcome {
                reply: Reply::CapacityView(200, Box::new(capacity.clone())),
                intents: Vec::new(),
            };
        }
        capacity.state = "ended".into();
        capacity.ended = Some(format_time(now_ms));
        let ended = capacity.clone();
        if let Err(error) = save(self) {
            if let Some(capacity) = self.capacity.iter_mut().find(|c| c.id == id) {
                capacity.state = "active".into();
                capacity.ended = None;
            }
            return Outcome::answer(Answer::error(500, error));
        }
        info!(id, why, "capacity request ended");
        self.lapsed.remove(id);
        let ended_count = self.capacity.iter().filter(|c| c.state != "active").count();
        if ended_count > MAX_ENDED_CAPACITY
            && let Some(position) = self.capacity.iter().position(|c| c.state != "active")
        {
            self.capacity.remove(position);
        }
        Outcome {
            reply: Reply::CapacityView(200, Box::new(ended)),
            intents: view.releases(&Claim::Capacity(id.to_owned())),
        }
    }

    /// Drains of the planned groups of the active request `id` that do not hold its claim yet
    /// (a drain that could not be made, busy or refused by a hook, is handed back and tried
    /// again on a later tick).
    pub(super) fn claim_capacity_groups(
        &mut self,
        id: &str,
        view: &ClaimsView,
        save: &mut Save<'_>,
    ) -> Vec<Intent> {
        let Some(index) = self.capacity.iter().position(|c| c.id == id) else {
            return Vec::new();
        };
        let claim = Claim::Capacity(id.to_owned());
        let mut intents = Vec::new();
        let mut bookkeeping = false;
        let planned: Vec<String> = self.capacity[index]
            .plan
            .groups
            .iter()
            .map(|g| g.group.clone())
            .collect();
        for group in planned {
            let capacity = &mut self.capacity[index];
            let claimed = capacity.claimed.contains(&group);
            if view.holds(&group, &claim) {
                if !claimed {
                    capacity.claimed.push(group);
                    bookkeeping = true;
                }
                continue;
            }
            if claimed || view.waiting(&group) {
                continue;
            }
            // Recorded before the drain, so the drain's own save keeps it; handed back with
            // forget_attempt if the drain is refused.
            capacity.claimed.push(group.clone());
            let request = DrainRequest {
                mode: capacity.request.mode.unwrap_or(DrainMode::Pause),
                reason: if capacity.request.reason.is_empty() {
                    format!("capacity request {id}")
                } else {
                    capacity.request.reason.clone()
                },
                reconnect_to: None,
                claim: claim.clone(),
            };
            self.inflight.insert((group.clone(), claim.clone()));
            intents.push(Intent::Drain { group, request });
        }
        if bookkeeping && let Err(error) = save(self) {
            warn!(id, %error, "capacity bookkeeping not saved");
        }
        intents
    }

    /// A drain for `claim` was not made (refused, or a required hook failed): its window or
    /// capacity request tries again later. Returns whether there was bookkeeping to save.
    pub(in crate::groups::controller) fn forget_attempt(
        &mut self,
        group: &str,
        claim: &Claim,
    ) -> bool {
        self.inflight.remove(&(group.to_owned(), claim.clone()));
        match claim {
            Claim::Window(name) => {
                self.window_acted.remove(&format!("{name}/{group}"));
            }
            Claim::Capacity(id) => {
                if let Some(c) = self.capacity.iter_mut().find(|c| &c.id == id) {
                    c.claimed.retain(|g| g != group);
                }
            }
            Claim::Manual => return false,
        }
        true
    }

    /// Groups planned by an active capacity request: not candidates for another.
    pub(in crate::groups::controller) fn planned_groups(
        &self,
    ) -> std::collections::HashSet<String> {
        self.capacity
            .iter()
            .filter(|c| c.state == "active")
            .flat_map(|c| c.plan.groups.iter().map(|g| g.group.clone()))
            .collect()
    }
}
