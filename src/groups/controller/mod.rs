//! The group controller: the one task that moves groups through
//! `active -> draining -> drained -> resuming -> active`.
//!
//! It owns every [`GroupRecord`]; the API sends it commands through a [`GroupsHandle`], and
//! windows and capacity requests (`schedules/`) hold groups through claims reconciled each tick
//! (they decide, this engine carries out their [`schedules::Intent`]s). Each tick it reads the
//! session registry, measures the groups' machines once a second (`power_link.rs`: the poller
//! reads, sleeps and wakes them), publishes a status and the metrics, and makes the automatic
//! transitions (drained on measured power, or once every miner is quiet, or at the timeout;
//! active once the ramp is done). Hooks run in their own tasks and report back. A transition is
//! committed only after its required hooks succeeded and its new state is durable (see
//! [`super::store`]); then the group's [`crate::downstream::Gate`] is published.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

mod audit;
mod durable;
mod group;
mod handle;
mod hook_runs;
mod ledger;
mod machines;
mod observe;
mod parts;
mod policy;
mod power_link;
mod schedule_link;
mod schedules;
mod status;
mod transition;

pub use handle::{
    ControlError, DrainRequest, DrainStatus, DrainWitness, EfficiencyStatus, EnergyStatus,
    GroupStatus, GroupsHandle, HashingMiner, PowerStatus,
};
pub use machines::{MachineIssue, PowerSource};
pub use parts::ControllerParts;
pub use schedules::{Answer, ScheduleViews};

use self::durable::StateFile;
use self::group::{GroupRuntime, Pending, Progress};
use self::handle::{Control, Reply, Step, lock};
use self::hook_runs::HookRuns;
use self::ledger::Ledger;
use self::observe::{MinerView, Observed};
use self::policy::{Ramp, RampPace};
use self::power_link::PowerLink;
use self::schedules::Schedules;

use super::events::EventLog;
use super::hooks::HookFailure;
use super::state::{Claim, GroupRecord, GroupState};
use super::store::PersistedState;
use crate::clock::unix_ms;
use crate::config::DrainMode;
use crate::config::windows::check_reason;
use crate::downstream::{Gate, SessionControl};
use crate::metrics::Metrics;

/// How often the controller looks at the sessions.
const TICK: Duration = Duration::from_millis(200);

/// The controller task's state.
pub struct GroupController {
    rx: mpsc::Receiver<Control>,
    groups: Vec<GroupRuntime>,
    records: BTreeMap<String, GroupRecord>,
    /// Records of groups no longer configured: kept in the state file, not acted on.
    orphans: BTreeMap<String, GroupRecord>,
    /// The sessions: the gates this task sets, and the snapshot it reads each tick.
    sessions: SessionControl,
    /// Where transitions' hooks run.
    hook_runs: HookRuns,
    /// The state file: every transition and schedule change is durable before it acts.
    state_file: StateFile,
    events: Arc<Mutex<EventLog>>,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    metrics: Metrics,
    cancel: CancellationToken,
    /// Hook runs started and transitions committed.
    progress: Progress,
    /// Windows and capacity requests.
    sched: Schedules,
    /// The power poller: machines watched, measured, slept and woken.
    power: PowerLink,
    /// Energy drawn and released, by group, drain, window and capacity request.
    ledger: Ledger,
}

impl GroupController {
    /// The controller and its handle.
    pub fn new(parts: ControllerParts) -> (GroupController, GroupsHandle) {
        let (tx, rx) = mpsc::channel(64);
        let groups: Vec<GroupRuntime> = parts
            .groups
            .iter()
            .map(|g| GroupRuntime::new(&parts.config, g))
            .collect();
        let sched = Schedules::new(&parts.config, &parts.restored, |g| {
            groups.iter().any(|runtime| &*runtime.name == g)
        });
        let mut records = BTreeMap::new();
        let mut orphans = BTreeMap::new();
        for (name, record) in parts.restored.groups {
            if groups.iter().any(|g| *g.name == *name) {
                if record.state != GroupState::Active {
                    info!(group = %name, state = %record.state, "restored group state");
                }
                records.insert(name, record);
            } else {
                warn!(group = %name, state = %record.state, "state file names a group that is no longer configured; kept, not acted on");
                orphans.insert(name, record);
            }
        }
        let events = Arc::new(Mutex::new(EventLog::new(parts.events)));
        let ledger = Ledger::open(parts.store.dir());
        status::continue_energy(&parts.metrics, &groups, &ledger);
        let power = PowerLink::new(parts.power, parts.meters, &parts.config, &parts.metrics);
        let status = Arc::new(Mutex::new(Vec::new()));
        let handle = GroupsHandle {
            tx: tx.clone(),
            status: Arc::clone(&status),
            events: Arc::clone(&events),
            schedules: Arc::clone(&sched.views),
        };
        let controller = GroupController {
            rx,
            groups,
            records,
            orphans,
            sessions: parts.sessions,
            hook_runs: HookRuns {
                hooks: Arc::new(parts.hooks),
                tracker: parts.tracker,
                runtime: parts.runtime,
                controller: tx,
            },
            state_file: StateFile::new(parts.store, parts.metrics.clone()),
            events,
            status,
            metrics: parts.metrics,
            cancel: parts.cancel,
            progress: Progress {
                next_token: 1,
                commits: 0,
            },
            sched,
            power,
            ledger,
        };
        controller.publish(&controller.observe_all());
        (controller, handle)
    }

    /// Runs the controller on a thread of its own until cancelled. Its state writes and fsyncs
    /// (and audit appends) are blocking file I/O: on this thread they never hold up a runtime
    /// worker that serves miners, and a slow disk delays only group control. The returned
    /// handle resolves once the controller has stopped; an error is a runtime that could not be
    /// built (no thread or timer could be had). A plain thread, not `spawn_blocking`: a
    /// blocking task that never ends would stop a paused test clock from advancing.
    pub fn spawn(self, tracker: &TaskTracker) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("hashgate-groups".into())
            .spawn(move || {
                runtime.block_on(self.run());
                let _ = stopped.send(());
            })?;
        Ok(tracker.spawn(async move {
            let _ = on_stop.await;
        }))
    }

    /// Runs until cancelled.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(control) = self.rx.recv() => self.on_control(control),
                _ = tick.tick() => {
                    let started = Instant::now();
                    self.on_tick();
                    self.metrics.groups.controller_tick_seconds.observe(started.elapsed().as_secs_f64());
                }
            }
        }
    }

    fn record(&self, group: &str) -> GroupRecord {
        self.records.get(group).cloned().unwrap_or_default()
    }

    fn index(&self, group: &str) -> Option<usize> {
        self.groups.iter().position(|g| &*g.name == group)
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Drain {
                group,
                request,
                reply,
            } => {
                let step = self.drain(&group, request);
                self.reply_to(&group, reply, step);
            }
            Control::Resume {
                group,
                claim,
                force,
                reply,
            } => {
                let step = self.resume(&group, claim, force);
                self.reply_to(&group, reply, step);
            }
            Control::HooksDone {
                group,
                token,
                result,
            } => self.hooks_done(&group, token, result),
            Control::Schedule(command) => self.on_schedule(command),
        }
    }

    /// Answers a group command now, or when its hooks are done.
    fn reply_to(&mut self, group: &str, reply: Reply, step: Result<Step, ControlError>) {
        match step {
            Ok(Step::Pending) => {
                if let Some(pending) = self
                    .index(group)
                    .and_then(|i| self.groups[i].pending.as_mut())
                {
                    pending.reply = Some(reply);
                    return;
                }
                let _ = reply.send(Ok(self.status_of(group)));
            }
            Ok(Step::Done) => {
                let _ = reply.send(Ok(self.status_of(group)));
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Drains a group for `request.claim`. Draining a draining or drained group again only adds
    /// the claim (and changes the mode, if another is asked for).
    fn drain(&mut self, group: &str, request: DrainRequest) -> Result<Step, ControlError> {
        let index = self.ready(group)?;
        check_reason("reason", &request.reason)
            .map_err(|e| ControlError::BadRequest(e.to_string()))?;
        if request.mode == DrainMode::Reconnect
            && request
                .reconnect_to
                .as_deref()
                .and_then(crate::config::split_host_port)
                .is_none()
        {
            return Err(ControlError::BadRequest(
                "mode reconnect needs reconnect_to = \"host:port\"".into(),
            ));
        }
        let current = self.record(group);
        let trigger = request.claim.to_string();
        if matches!(current.state, GroupState::Draining | GroupState::Drained) {
            if let Some((next, kind)) = transition::joined(&current, &request) {
                self.commit(index, next, kind, &trigger, "")?;
            }
            return Ok(Step::Done);
        }
        let observed = self.observe(index);
        let runtime = &self.groups[index];
        let watts_now = status::power_watts(runtime, &observed);
        // Measured groups: the mean of the minute before the drain (a share burst or a miner
        // that just joined is not the baseline a contract settles on).
        let watts_before = if runtime.power.measurable() {
            runtime.power.baseline(watts_now)
        } else {
            watts_now
        };
        let next = transition::draining(&current, request, &observed, watts_before, unix_ms());
        self.begin(index, next, trigger)
    }

    /// Releases `claim` (every claim with `force`); the group resumes once none is left.
    fn resume(&mut self, group: &str, claim: Claim, force: bool) -> Result<Step, ControlError> {
        let index = self.ready(group)?;
        let current = self.record(group);
        if matches!(current.state, GroupState::Active | GroupState::Resuming) {
            return Ok(Step::Done); // already mining or on its way: nothing to do
        }
        let trigger = if force {
            format!("{claim} (force)")
        } else {
            claim.to_string()
        };
        match transition::released(&current, &claim, force, unix_ms()) {
            transition::Release::Resume(next) => self.begin(index, next, trigger),
            transition::Release::Held { released, left } => {
                let released = match released {
                    Some(next) => {
                        self.commit(index, next, "claim_released", &trigger, "")?;
                        Some(trigger)
                    }
                    None => None,
                };
                Err(ControlError::Held {
                    group: group.to_owned(),
                    released,
                    claims: left.join(", "),
                })
            }
        }
    }

    /// The group's index if it exists and no transition of it is under way.
    fn ready(&self, group: &str) -> Result<usize, ControlError> {
        let index = self
            .index(group)
            .ok_or_else(|| ControlError::UnknownGroup(group.to_owned()))?;
        match &self.groups[index].pending {
            None => Ok(index),
            Some(pending) => Err(ControlError::Busy {
                group: group.to_owned(),
                what: format!(
                    "the {} transition (its hooks are running)",
                    pending.next.state
                ),
            }),
        }
    }

    /// Starts a transition to `next`: runs its event's hooks (in a task) and commits when they
    /// succeed, or at once when no hook runs for it.
    fn begin(
        &mut self,
        index: usize,
        next: GroupRecord,
        trigger: String,
    ) -> Result<Step, ControlError> {
        let event = hook_runs::event_for(next.state);
        let name = Arc::clone(&self.groups[index].name);
        if !self.hook_runs.hooks.has_hooks(event, &name) {
            return match self.commit(index, next, "transition", &trigger, "") {
                Ok(()) => Ok(Step::Done),
                Err(error) => {
                    self.failed_automatic(index, &error.to_string());
                    Err(error)
                }
            };
        }
        let observed = self.observe(index);
        let context = hook_runs::context(&self.groups[index], &observed, event, &next, &trigger);
        let token = self.progress.next_token;
        self.progress.next_token += 1;
        self.groups[index].pending = Some(Pending {
            token,
            next,
            trigger,
            reply: None,
        });
        self.hook_runs.spawn(context, token);
        self.publish(&self.observe_all());
        Ok(Step::Pending)
    }

    fn hooks_done(&mut self, group: &str, token: u64, result: Result<(), HookFailure>) {
        let Some(index) = self.index(group) else {
            return;
        };
        let Some(pending) = self.groups[index]
            .pending
            .take_if(|pending| pending.token == token)
        else {
            return;
        };
        match result {
            Ok(()) => {
                let outcome = self.commit(index, pending.next, "transition", &pending.trigger, "");
                if let Err(error) = &outcome {
                    self.failed_automatic(index, &error.to_string());
                }
                if let Some(reply) = pending.reply {
                    let _ = reply.send(outcome.map(|()| self.status_of(group)));
                }
            }
            Err(failure) => {
                let current = self.record(group).state;
                let target = pending.next.state;
                self.metrics
                    .groups
                    .blocked_transitions
                    .with_label_values(&[group, target.as_str()])
                    .inc();
                let error = ControlError::HookFailed {
                    group: group.to_owned(),
                    state: current,
                    failure,
                };
                let message = error.to_string();
                warn!(group, to = %target, %message, "required hook failed: transition not made");
                self.log_event(
                    index,
                    "hook_failed",
                    (current, target),
                    &pending.trigger,
                    &message,
                );
                self.failed_automatic(index, &message);
                let current_claims = self.record(group).claims;
                for claim in pending.next.claims.difference(&current_claims) {
                    self.forget_attempt(group, claim);
                }
                if let Some(reply) = pending.reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
        self.publish(&self.observe_all());
    }

    /// Remembers a failure; an automatic transition (drained, active) is tried again later.
    fn failed_automatic(&mut self, index: usize, message: &str) {
        let runtime = &mut self.groups[index];
        runtime.last_error = Some(message.to_owned());
        let backoff = runtime.policy.retry_after(runtime.failures);
        runtime.failures = runtime.failures.saturating_add(1);
        runtime.retry_at = Instant::now().checked_add(backoff);
    }

    /// Everything the state file holds, as it is now.
    fn persisted(&self) -> PersistedState {
        StateFile::content(&self.records, &self.orphans, &self.sched)
    }

    /// A drain a schedule asked for was not made: its window or capacity request tries again.
    fn forget_attempt(&mut self, group: &str, claim: &Claim) {
        if self.sched.forget_attempt(group, claim) {
            let state = self.persisted();
            if let Err(error) = self.state_file.write(&state) {
                warn!(%group, %claim, %error, "drain attempt bookkeeping not saved");
            }
        }
    }

    /// Makes `next` the group's state: durable first, then the gate, metrics and the event.
    fn commit(
        &mut self,
        index: usize,
        next: GroupRecord,
        kind: &str,
        trigger: &str,
        detail: &str,
    ) -> Result<(), ControlError> {
        let name = Arc::clone(&self.groups[index].name);
        let previous = self.record(&name);
        // A window's or capacity request's attempt on this group becomes durable with the claim
        // it made (never before: a crash while its hooks run must leave it to be tried again).
        let established: Vec<Claim> = next.claims.difference(&previous.claims).cloned().collect();
        for claim in &established {
            self.sched
                .inflight
                .remove(&(name.to_string(), claim.clone()));
        }
        let mut state = self.persisted();
        state.groups.insert(name.to_string(), next.clone());
        if let Err(source) = self.state_file.write(&state) {
            error!(group = %name, %source, "state not saved: transition not applied");
            for claim in &established {
                self.forget_attempt(&name, claim);
            }
            return Err(ControlError::Store {
                group: name.to_string(),
                source,
            });
        }
        let (from, to) = (previous.state, next.state);
        self.sessions.set_gate(&name, next.gate());
        self.records.insert(name.to_string(), next);
        self.progress.commits += 1;
        let runtime = &mut self.groups[index];
        runtime.retry_at = None;
        runtime.failures = 0;
        runtime.last_error = None;
        match to {
            GroupState::Resuming if from != GroupState::Resuming => {
                runtime.ramp = Some(Ramp::new(Instant::now()));
            }
            GroupState::Resuming => {}
            _ => runtime.ramp = None,
        }
        runtime.power.on_transition(from, to);
        info!(group = %name, %from, %to, trigger, kind, "group transition");
        self.log_event(index, kind, (from, to), trigger, detail);
        self.publish(&self.observe_all());
        Ok(())
    }

    /// Appends to the audit log: watts drawn when the transition started (the last published
    /// status), drawn now, and released now.
    fn log_event(
        &mut self,
        index: usize,
        kind: &str,
        change: (GroupState, GroupState),
        trigger: &str,
        detail: &str,
    ) {
        let runtime = &self.groups[index];
        let observed = self.observe(index);
        let record = self.record(&runtime.name);
        let entry = audit::Entry {
            kind,
            change,
            trigger,
            detail,
            watts_before: self.status_of(&runtime.name).power_watts,
            released_kwh: self
                .ledger
                .drain_of(&runtime.name)
                .map(|a| a.released_kwh()),
        };
        let event = audit::event(runtime, &record, &observed, entry);
        audit::append(self.state_file.store(), &self.events, &self.metrics, event);
    }

    fn on_tick(&mut self) {
        let now_ms = unix_ms();
        let now = Instant::now();
        for runtime in &mut self.groups {
            let accepted = self
                .metrics
                .miners
                .accepted_difficulty
                .with_label_values(&[&*runtime.name])
                .get();
            runtime.hashrate.sample(now, accepted);
        }
        self.reconcile_schedules(now_ms, now);
        let refresh = self.power.due(now);
        let observed = if refresh {
            self.observe_with(|i| self.groups[i].power.listed())
        } else {
            self.observe_all()
        };
        if refresh {
            let records = self.records();
            self.power
                .refresh(&mut self.groups, &records, &observed, now);
            let (groups, ledger) = (
                (&self.groups[..], &records[..], &observed[..]),
                &mut self.ledger,
            );
            status::sample_energy(ledger, &self.metrics, groups, now_ms);
        }
        let changes = self.progress;
        for (index, observed) in observed.iter().enumerate() {
            // Hooks running or a failed transition waiting for its retry: no new transition (the
            // ramp still admits miners meanwhile, at its rate).
            let may_transition = self.groups[index].pending.is_none()
                && self.groups[index]
                    .retry_at
                    .is_none_or(|at| Instant::now() >= at);
            let record = self.record(&self.groups[index].name);
            match record.state {
                GroupState::Draining if may_transition => {
                    self.check_drained(index, &record, observed, now_ms)
                }
                GroupState::Resuming => self.ramp(index, &record, observed, may_transition),
                _ => {}
            }
        }
        // A transition published its own fresh status; otherwise this tick's view is current.
        if self.progress == changes {
            self.publish(&observed);
        }
    }

    /// A group with `sleep` or a meter: drained once its measured power has stayed at its idle
    /// level for `power.settle` (verified). Others: once every miner is quiet and none came back
    /// for `quiet_min` (verified if every machine is measured off then). The timeout regardless.
    fn check_drained(
        &mut self,
        index: usize,
        record: &GroupRecord,
        observed: &Observed,
        now_ms: u64,
    ) {
        let Some(drain) = &record.drain else { return };
        let runtime = &mut self.groups[index];
        let decision = if runtime.power.judged_by_power() {
            let off_for = runtime.power.off_for(Instant::now());
            let (settle, not_off) = (self.power.settings.settle, &runtime.power.measure.not_off);
            let policy = &runtime.policy;
            policy.drained_measured(drain.started_at_ms, now_ms, off_for, settle, not_off)
        } else {
            let registry = self.sessions.registry();
            let last_refused = registry.refusals(&runtime.name, None).last_unix_ms;
            let hashing = observed.hashing.iter();
            let names = || hashing.map(|&i| &*observed.miners[i].name).collect();
            let policy = &runtime.policy;
            policy.drained(drain.started_at_ms, now_ms, last_refused, names)
        };
        let Some((trigger, detail)) = decision else {
            return;
        };
        if !detail.is_empty() {
            warn!(group = %self.groups[index].name, %detail, "drained by timeout");
            let change = (GroupState::Draining, GroupState::Draining);
            self.log_event(index, "drain_timeout", change, trigger, &detail);
        }
        let power = &self.groups[index].power;
        let verified = trigger == policy::MEASURED || (power.measurable() && power.all_off());
        let next = transition::drained(record, verified, now_ms);
        let _ = self.begin(index, next, trigger.to_owned());
    }

    /// Admits paused miners at the group's rate; active once everyone is back or the ramp
    /// timed out (see [`Ramp::step`]).
    fn ramp(&mut self, index: usize, record: &GroupRecord, observed: &Observed, may_finish: bool) {
        let epoch = record.drain.as_ref().map_or(0, |d| d.started_at_ms);
        let roster = record.drain.as_ref().map_or(&[][..], |d| &d.roster[..]);
        let now = Instant::now();
        let runtime = &mut self.groups[index];
        self.power.wake_due(runtime, now);
        let (book, power) = (&self.power.handle.book, &runtime.power);
        let awake = |m: &MinerView| power.miner_awake(book, m);
        let may_finish = may_finish && power.wakes_done(book);
        let pace = RampPace {
            rate: runtime.policy.ramp_rate,
            timeout: runtime.policy.ramp_timeout,
        };
        let step = runtime
            .ramp
            .get_or_insert_with(|| Ramp::new(now))
            .step(now, pace, observed, roster, may_finish, awake);
        if let Some(admit_through) = step.admit_through {
            let gate = Gate::Ramp {
                epoch,
                admit_through,
            };
            self.sessions.set_gate(&self.groups[index].name, gate);
        }
        let Some((trigger, detail)) = step.finished else {
            return;
        };
        if let Some(detail) = detail {
            self.log_event(
                index,
                "ramp_timeout",
                (GroupState::Resuming, GroupState::Resuming),
                trigger,
                &detail,
            );
        }
        let next = GroupRecord::default_active(unix_ms() / 1000);
        let _ = self.begin(index, next, trigger.to_owned());
    }

    /// Every group's miners, judged (groups in a drain, and those `detailed` names, list their
    /// miners).
    fn observe_with(&self, detailed: impl Fn(usize) -> bool) -> Vec<Observed> {
        observe::observe(
            self.sessions.registry(),
            &self.groups,
            &self.records(),
            detailed,
        )
    }

    fn observe_all(&self) -> Vec<Observed> {
        self.observe_with(|_| false)
    }

    /// One group, with its miners listed.
    fn observe(&self, index: usize) -> Observed {
        self.observe_with(|i| i == index).swap_remove(index)
    }

    /// Every group's record, in group order.
    fn records(&self) -> Vec<GroupRecord> {
        self.groups.iter().map(|g| self.record(&g.name)).collect()
    }

    fn status_of(&self, group: &str) -> GroupStatus {
        lock(&self.status)
            .iter()
            .find(|s| s.name == group)
            .cloned()
            .unwrap_or_default()
    }

    /// Publishes statuses and metrics.
    fn publish(&self, observed: &[Observed]) {
        let now_ms = unix_ms();
        let records = self.records();
        let (statuses, watts) = status::statuses(
            &self.groups,
            &records,
            observed,
            (self.sessions.registry(), &self.ledger),
            now_ms,
        );
        let claims = &self.ledger.state.claims;
        self.sched.publish(&statuses, claims, &self.metrics, now_ms);
        *lock(&self.status) = statuses;
        // Metrics after the statuses: a reader that saw a metric finds a status at least as new.
        for ((runtime, record), watts) in self.groups.iter().zip(&records).zip(watts) {
            status::publish_metrics(&self.metrics, &runtime.name, record, watts);
        }
    }
}
