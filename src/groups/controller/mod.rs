//! The group controller: the one task that moves groups through
//! `active -> draining -> drained -> resuming -> active`.
//!
//! It owns every [`GroupRecord`]; the API sends it commands through a [`GroupsHandle`] and gets
//! the outcome back, and windows and capacity requests (`schedule.rs`) hold groups through claims
//! reconciled on every tick. Each tick it also looks at
//! the session registry (who of a group is still submitting, who the ramp may admit next),
//! publishes power and state metrics and a status snapshot for the API, and makes the automatic
//! transitions (drained once every miner is quiet or the drain timed out; active once the ramp
//! is done). Hooks run in their own tasks and report back, so a slow PDU script never stalls
//! another group's drain or the miners. A transition is committed only after its required hooks
//! succeeded and its new state is durable (see [`super::store`]); then the group's [`super::Gate`] is
//! published and the sessions act on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

mod schedule;

pub use schedule::{Answer, ScheduleViews};

use super::capacity::{CapacityRequest, CapacityView, EfficiencySource, HashrateWindow};
use super::events::{Event, EventLog, now_rfc3339};
use super::hooks::{HookContext, HookFailure, HookRunner};
use super::state::{Claim, Drain, GroupRecord, GroupState, RosterEntry};
use super::store::{PersistedState, Store, StoreError};
use crate::clock::unix_ms;
use crate::config::Groups;
use crate::config::windows::{WindowSpec, WindowView, check_reason};
use crate::config::{Config, DrainMode, HookEvent};
use crate::downstream::{Gate, RefusedMiner, SessionControl};
use crate::metrics::Metrics;

/// How often the controller looks at the sessions.
const TICK: Duration = Duration::from_millis(200);
/// Miners listed as still hashing in a group's status (the API pages the rest by group).
const MAX_LISTED_HASHING: usize = 100;

/// Why a group command was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such group.
    #[error("no group {0:?}")]
    UnknownGroup(String),
    /// A transition of the group is under way (its hooks are running).
    #[error("group {group}: {what} is in progress; retry when it is done")]
    Busy {
        /// The group.
        group: String,
        /// What is running.
        what: String,
    },
    /// Others still hold the drain (the caller's own hold, if it had one, was released).
    #[error("group {group} stays drained: {}held by {claims}: end those first (or resume with force)", released.as_ref().map(|r| format!("{r} released; still ")).unwrap_or_default())]
    Held {
        /// The group.
        group: String,
        /// The hold that was released, if the caller had one.
        released: Option<String>,
        /// Who holds it.
        claims: String,
    },
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A required hook failed: the group stayed where it was.
    #[error("group {group} stayed {state}: {failure}")]
    HookFailed {
        /// The group.
        group: String,
        /// Where it stayed.
        state: GroupState,
        /// What failed.
        failure: HookFailure,
    },
    /// The new state could not be saved: the change was not applied.
    #[error("group {group}: change not applied: {source}")]
    Store {
        /// The group.
        group: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// hashgate is stopping.
    #[error("hashgate is stopping")]
    Stopped,
}

/// A drain as asked for.
#[derive(Debug, Clone)]
pub struct DrainRequest {
    /// How.
    pub mode: DrainMode,
    /// Why (shown to miners, hooks, the audit log).
    pub reason: String,
    /// `host:port` for `reconnect` mode.
    pub reconnect_to: Option<String>,
    /// Who asks.
    pub claim: Claim,
}

type Reply = oneshot::Sender<Result<GroupStatus, ControlError>>;

/// Where a group command stands once the controller has taken it.
enum Step {
    /// Made (or nothing to do).
    Done,
    /// Its hooks are running; the transition is committed when they succeed.
    Pending,
}

/// What the controller is asked.
enum Control {
    Drain {
        group: String,
        request: DrainRequest,
        reply: Reply,
    },
    Resume {
        group: String,
        claim: Claim,
        force: bool,
        reply: Reply,
    },
    HooksDone {
        group: String,
        token: u64,
        result: Result<(), HookFailure>,
    },
    Schedule(schedule::ScheduleCommand),
}

/// A miner still hashing through a group that was told to stop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HashingMiner {
    /// Worker name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Seconds since its last submit (null: none since it connected).
    pub last_submit_seconds_ago: Option<f64>,
}

/// A group's state as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GroupStatus {
    /// Name.
    pub name: String,
    /// Lifecycle state.
    pub state: GroupState,
    /// Unix seconds of the last transition (0: never drained).
    pub since: u64,
    /// The drain's mode.
    pub mode: Option<DrainMode>,
    /// The drain's reason.
    pub reason: Option<String>,
    /// Where `reconnect` mode sends miners.
    pub reconnect_to: Option<String>,
    /// Who holds the drain (`manual`, `window ID`, `capacity ID`).
    pub claims: Vec<String>,
    /// Watts drawn by the group's mining now.
    pub power_watts: f64,
    /// Watts released to other loads now.
    pub released_watts: f64,
    /// Watts the group drew when the drain started.
    pub watts_before: Option<f64>,
    /// Authorized miners connected.
    pub workers: usize,
    /// Of those, miners mining (given work, or still submitting after being paused).
    pub mining_workers: usize,
    /// Miners still submitting although the group is draining or drained.
    pub still_hashing: Vec<HashingMiner>,
    /// Reconnects of this group's miners refused since start (disconnect/reconnect modes).
    pub refused_reconnects: u64,
    /// The miners refused since the drain started, most recent first (at most 100).
    pub refused_miners: Vec<RefusedMiner>,
    /// Unix seconds at which a draining group is called drained regardless.
    pub drain_deadline: Option<u64>,
    /// A transition whose hooks are running.
    pub pending: Option<String>,
    /// The last refused or failed transition.
    pub last_error: Option<String>,
    /// J/TH used to plan capacity requests.
    pub efficiency_j_per_th: Option<f64>,
    /// Whether that figure is measured, declared or unknown.
    pub efficiency_source: Option<EfficiencySource>,
}

/// How the API and schedulers reach the controller.
#[derive(Clone)]
pub struct GroupsHandle {
    tx: mpsc::Sender<Control>,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    events: Arc<Mutex<EventLog>>,
    schedules: Arc<Mutex<ScheduleViews>>,
}

impl GroupsHandle {
    /// Drains a group (idempotent: draining a draining or drained group again changes nothing
    /// but the mode, if another is asked for).
    pub async fn drain(
        &self,
        group: &str,
        request: DrainRequest,
    ) -> Result<GroupStatus, ControlError> {
        self.ask(|reply| Control::Drain {
            group: group.to_owned(),
            request,
            reply,
        })
        .await
    }

    /// Releases `claim` on a group; the group resumes once no claim is left (or with `force`,
    /// which drops every claim).
    pub async fn resume(
        &self,
        group: &str,
        claim: Claim,
        force: bool,
    ) -> Result<GroupStatus, ControlError> {
        self.ask(|reply| Control::Resume {
            group: group.to_owned(),
            claim,
            force,
            reply,
        })
        .await
    }

    async fn ask(
        &self,
        control: impl FnOnce(Reply) -> Control,
    ) -> Result<GroupStatus, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(control(reply))
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)?
    }

    /// Every group's status, configured order, `default` last.
    pub fn statuses(&self) -> Vec<GroupStatus> {
        lock(&self.status).clone()
    }

    /// One group's status.
    pub fn status(&self, group: &str) -> Option<GroupStatus> {
        lock(&self.status).iter().find(|s| s.name == group).cloned()
    }

    async fn schedule(
        &self,
        command: impl FnOnce(oneshot::Sender<Answer>) -> schedule::ScheduleCommand,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped = || Answer {
            status: 503,
            body: serde_json::json!({"error": "hashgate is stopping"}),
        };
        if self
            .tx
            .send(Control::Schedule(command(reply)))
            .await
            .is_err()
        {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }

    /// Adds a maintenance window (`key`: an `Idempotency-Key`).
    pub async fn create_window(&self, spec: WindowSpec, key: Option<String>) -> Answer {
        self.schedule(|reply| schedule::ScheduleCommand::CreateWindow { spec, key, reply })
            .await
    }

    /// Deletes an API window; groups it holds resume.
    pub async fn delete_window(&self, name: &str) -> Answer {
        let name = name.to_owned();
        self.schedule(|reply| schedule::ScheduleCommand::DeleteWindow { name, reply })
            .await
    }

    /// Plans (and unless a dry run, executes) a capacity request.
    pub async fn create_capacity(&self, request: CapacityRequest, key: Option<String>) -> Answer {
        self.schedule(|reply| schedule::ScheduleCommand::CreateCapacity {
            request,
            key,
            reply,
        })
        .await
    }

    /// Ends a capacity request: its groups resume (unless something else holds them).
    pub async fn end_capacity(&self, id: &str) -> Answer {
        let id = id.to_owned();
        self.schedule(|reply| schedule::ScheduleCommand::EndCapacity { id, reply })
            .await
    }

    /// Renews a capacity request's heartbeat lease.
    pub async fn heartbeat(&self, id: &str) -> Answer {
        let id = id.to_owned();
        self.schedule(|reply| schedule::ScheduleCommand::Heartbeat { id, reply })
            .await
    }

    /// Every window.
    pub fn windows(&self) -> Vec<WindowView> {
        lock(&self.schedules).windows.clone()
    }

    /// Every capacity request (active and recently ended).
    pub fn capacity(&self) -> Vec<CapacityView> {
        lock(&self.schedules).capacity.clone()
    }

    /// Events after `after`, optionally of one group, oldest first.
    pub fn events(&self, after: u64, group: Option<&str>, limit: usize) -> Vec<Event> {
        lock(&self.events).query(after, group, limit)
    }
}

/// A std mutex: held to copy or replace a snapshot, never across an await.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A group's drain and ramp settings, resolved from `[drain]` and its `[[group]]`.
#[derive(Debug, Clone)]
struct Policy {
    watts_per_worker: f64,
    drain_timeout: Duration,
    quiet_min: Duration,
    quiet_shares: f64,
    /// Workers per second the resume admits (the slower of the worker and watt ramps).
    ramp_rate: f64,
    ramp_timeout: Duration,
    hook_retry: Duration,
}

impl Policy {
    fn new(config: &Config, name: &str, watts_per_worker: f64) -> Self {
        let d = &config.drain;
        let group = config.groups.iter().find(|g| g.name == name);
        let workers_rate = group
            .and_then(|g| g.ramp_workers_per_second)
            .unwrap_or(d.ramp_workers_per_second);
        let watts_rate = group
            .and_then(|g| g.ramp_watts_per_second)
            .or(d.ramp_watts_per_second)
            .filter(|_| watts_per_worker > 0.0)
            .map(|w| w / watts_per_worker);
        Self {
            watts_per_worker,
            drain_timeout: group.and_then(|g| g.drain_timeout).unwrap_or(d.timeout),
            quiet_min: d.quiet_min,
            quiet_shares: d.quiet_shares,
            ramp_rate: watts_rate.map_or(workers_rate, |w| w.min(workers_rate)),
            ramp_timeout: d.ramp_timeout,
            hook_retry: d.hook_retry,
        }
    }

    /// How long a miner must be silent to count as no longer hashing: `quiet_shares` of its
    /// expected share intervals (difficulty x 2^32 / hashrate), at least `quiet_min`, at most the
    /// drain timeout.
    fn quiet_period(&self, difficulty: f64, hashrate: f64) -> Duration {
        let interval = if hashrate > 0.0 && difficulty > 0.0 {
            difficulty * 4_294_967_296.0 / hashrate
        } else {
            0.0
        };
        let quiet =
            Duration::try_from_secs_f64(interval * self.quiet_shares).unwrap_or(self.drain_timeout);
        quiet.clamp(self.quiet_min, self.drain_timeout.max(self.quiet_min))
    }
}

/// A transition waiting for its hooks.
struct Pending {
    token: u64,
    next: GroupRecord,
    trigger: String,
    reply: Option<Reply>,
}

/// The resume ramp of one group: a token bucket that fills at the group's rate and holds at most
/// one second of it, so miners that come back late are not admitted all at once. It admits
/// paused sessions in id order by raising the gate's watermark (see [`Gate::Ramp`]).
struct Ramp {
    started: Instant,
    /// Sessions with an id up to this one are admitted.
    admit_through: u64,
    tokens: f64,
    filled: Instant,
}

impl Ramp {
    fn new() -> Ramp {
        let now = Instant::now();
        Ramp {
            started: now,
            admit_through: 0,
            // The first miner at once.
            tokens: 1.0,
            filled: now,
        }
    }

    fn fill(&mut self, rate: f64) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.filled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.filled = now;
    }
}

/// What the controller keeps per group besides its record.
struct GroupRuntime {
    name: Arc<str>,
    policy: Policy,
    pending: Option<Pending>,
    /// A failed automatic transition is tried again from then.
    retry_at: Option<Instant>,
    /// Failures in a row (the retry backs off: a hook that keeps failing is not run, nor
    /// logged, every few seconds for hours).
    failures: u32,
    last_error: Option<String>,
    ramp: Option<Ramp>,
    /// `efficiency_j_per_th` from the config.
    declared_efficiency: Option<f64>,
    /// `drain_priority` from the config.
    drain_priority: Option<i32>,
    /// Accepted difficulty over `capacity.efficiency_window`: the measured hashrate.
    hashrate: HashrateWindow,
}

/// One authorized miner as the controller sees it on a tick.
struct MinerView {
    id: u64,
    name: String,
    address: String,
    paused: bool,
    last_submit_ms: Option<u64>,
    difficulty: f64,
    hashrate: f64,
}

/// A group's miners on a tick, judged against its drain.
#[derive(Default)]
struct Observed {
    /// Authorized miners connected.
    workers: usize,
    /// Their details (groups in a drain, or when asked for).
    miners: Vec<MinerView>,
    mining: usize,
    hashing: Vec<usize>,
}

/// The controller task's state.
pub struct GroupController {
    rx: mpsc::Receiver<Control>,
    tx: mpsc::Sender<Control>,
    groups: Vec<GroupRuntime>,
    records: BTreeMap<String, GroupRecord>,
    /// Records of groups no longer configured: kept in the state file, not acted on.
    orphans: BTreeMap<String, GroupRecord>,
    /// The sessions: the gates this task sets, and the snapshot it reads each tick.
    sessions: SessionControl,
    hooks: Arc<HookRunner>,
    store: Store,
    events: Arc<Mutex<EventLog>>,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    metrics: Metrics,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Hook runs started (their tokens).
    next_token: u64,
    /// Transitions committed.
    commits: u64,
    /// Windows and capacity requests.
    sched: schedule::Schedules,
}

/// What [`GroupController::new`] needs.
pub struct ControllerParts {
    /// The validated config.
    pub config: Arc<Config>,
    /// The configured groups (compiled).
    pub groups: Groups,
    /// The sessions' gates and registry (the gates built from `restored`).
    pub sessions: SessionControl,
    /// The hooks.
    pub hooks: HookRunner,
    /// The state directory.
    pub store: Store,
    /// What the state directory held.
    pub restored: PersistedState,
    /// The audit log so far.
    pub events: Vec<Event>,
    /// Counters.
    pub metrics: Metrics,
    /// Stops the controller.
    pub cancel: CancellationToken,
    /// Where hook tasks are tracked.
    pub tracker: TaskTracker,
}

impl GroupController {
    /// The controller and its handle.
    pub fn new(parts: ControllerParts) -> (GroupController, GroupsHandle) {
        let (tx, rx) = mpsc::channel(64);
        let groups: Vec<GroupRuntime> = parts
            .groups
            .iter()
            .map(|g| GroupRuntime {
                name: Arc::clone(&g.name),
                policy: Policy::new(&parts.config, &g.name, g.watts_per_worker),
                pending: None,
                retry_at: None,
                failures: 0,
                last_error: None,
                ramp: None,
                declared_efficiency: g.efficiency_j_per_th,
                drain_priority: g.drain_priority,
                hashrate: HashrateWindow::new(parts.config.capacity.efficiency_window),
            })
            .collect();
        let sched = schedule::Schedules::new(&parts.config, &parts.restored, |g| {
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
        let status = Arc::new(Mutex::new(Vec::new()));
        let handle = GroupsHandle {
            tx: tx.clone(),
            status: Arc::clone(&status),
            events: Arc::clone(&events),
            schedules: Arc::clone(&sched.views),
        };
        let controller = GroupController {
            rx,
            tx,
            groups,
            records,
            orphans,
            sessions: parts.sessions,
            hooks: Arc::new(parts.hooks),
            store: parts.store,
            events,
            status,
            metrics: parts.metrics,
            cancel: parts.cancel,
            tracker: parts.tracker,
            next_token: 1,
            commits: 0,
            sched,
        };
        controller.publish(&controller.observe_all());
        (controller, handle)
    }

    /// The gate each configured group starts with, from what the state directory held.
    pub fn restored_gates(
        downstream_groups: &Groups,
        restored: &PersistedState,
    ) -> Vec<(Arc<str>, Gate)> {
        downstream_groups
            .iter()
            .map(|g| {
                let gate = restored
                    .groups
                    .get(&*g.name)
                    .map(GroupRecord::gate)
                    .unwrap_or_default();
                (Arc::clone(&g.name), gate)
            })
            .collect()
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
                _ = tick.tick() => self.on_tick(),
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
            let mut next = current.clone();
            let mut kind = None;
            if next.claims.insert(request.claim.clone()) {
                kind = Some("claim_added");
            }
            // A window or capacity request joining a drain keeps its mode; an operator may change
            // it (pause -> disconnect when machines do not sleep).
            if let Some(drain) = next
                .drain
                .as_mut()
                .filter(|_| request.claim == Claim::Manual)
            {
                if drain.mode != request.mode || drain.reconnect_to != request.reconnect_to {
                    drain.mode = request.mode;
                    drain.reconnect_to = request.reconnect_to.clone();
                    kind = Some("mode_changed");
                }
            }
            if let Some(kind) = kind {
                self.commit(index, next, kind, &trigger, "")?;
            }
            return Ok(Step::Done);
        }
        // Active, or resuming (a new drain stops the ramp; the miners the ramp still waited for
        // stay on the roster).
        let observed = self.observe(index);
        let mut roster: Vec<RosterEntry> = observed
            .miners
            .iter()
            .map(|m| RosterEntry {
                name: m.name.clone(),
                address: m.address.clone(),
            })
            .collect();
        if current.state == GroupState::Resuming {
            for entry in current.drain.iter().flat_map(|d| &d.roster) {
                if !roster.iter().any(|r| r.name == entry.name) {
                    roster.push(entry.clone());
                }
            }
        }
        let now = unix_ms();
        let next = GroupRecord {
            state: GroupState::Draining,
            since: now / 1000,
            drain: Some(Drain {
                mode: request.mode,
                reason: request.reason.clone(),
                reconnect_to: request.reconnect_to.clone(),
                started_at_ms: now,
                watts_before: observed.mining as f64 * self.groups[index].policy.watts_per_worker,
                roster,
            }),
            claims: [request.claim].into(),
        };
        self.begin(index, next, trigger)
    }

    /// Releases `claim` (every claim with `force`); the group resumes once none is left.
    fn resume(&mut self, group: &str, claim: Claim, force: bool) -> Result<Step, ControlError> {
        let index = self.ready(group)?;
        let current = self.record(group);
        if matches!(current.state, GroupState::Active | GroupState::Resuming) {
            return Ok(Step::Done); // already mining or on its way: nothing to do
        }
        let mut claims = current.claims.clone();
        let released = if force {
            let any = !claims.is_empty();
            claims.clear();
            any
        } else {
            claims.remove(&claim)
        };
        let trigger = if force {
            format!("{claim} (force)")
        } else {
            claim.to_string()
        };
        if !claims.is_empty() {
            if released {
                let next = GroupRecord {
                    claims: claims.clone(),
                    ..current
                };
                self.commit(index, next, "claim_released", &trigger, "")?;
            }
            let claims: Vec<String> = claims.iter().map(Claim::to_string).collect();
            return Err(ControlError::Held {
                group: group.to_owned(),
                released: released.then(|| trigger.clone()),
                claims: claims.join(", "),
            });
        }
        let next = GroupRecord {
            state: GroupState::Resuming,
            since: unix_ms() / 1000,
            drain: current.drain.clone(),
            claims,
        };
        self.begin(index, next, trigger)
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
        let event = match next.state {
            GroupState::Draining => HookEvent::Draining,
            GroupState::Drained => HookEvent::Drained,
            GroupState::Resuming => HookEvent::Resuming,
            GroupState::Active => HookEvent::Active,
        };
        let name = Arc::clone(&self.groups[index].name);
        if !self.hooks.has_hooks(event, &name) {
            return match self.commit(index, next, "transition", &trigger, "") {
                Ok(()) => Ok(Step::Done),
                Err(error) => {
                    self.failed_automatic(index, &error.to_string());
                    Err(error)
                }
            };
        }
        let context = self.hook_context(index, event, &next, &trigger);
        let token = self.next_token;
        self.next_token += 1;
        self.groups[index].pending = Some(Pending {
            token,
            next,
            trigger,
            reply: None,
        });
        let hooks = Arc::clone(&self.hooks);
        let tx = self.tx.clone();
        let group = context.group.clone();
        let event_name = event.as_str();
        self.tracker.spawn(async move {
            // In a task of its own: if a hook runner panics, the transition still gets its
            // answer (a failure) instead of staying pending and the group Busy for good.
            let result = tokio::spawn(async move { hooks.run(&context).await })
                .await
                .unwrap_or_else(|error| {
                    Err(HookFailure {
                        hook: "(hook runner)".into(),
                        event: event_name,
                        message: format!("the hook task failed: {error}"),
                    })
                });
            let _ = tx
                .send(Control::HooksDone {
                    group,
                    token,
                    result,
                })
                .await;
        });
        self.publish(&self.observe_all());
        Ok(Step::Pending)
    }

    fn hook_context(
        &self,
        index: usize,
        event: HookEvent,
        next: &GroupRecord,
        trigger: &str,
    ) -> HookContext {
        let observed = self.observe(index);
        let runtime = &self.groups[index];
        let watts_now = observed.mining as f64 * runtime.policy.watts_per_worker;
        let drain = next.drain.as_ref();
        let watts_before = drain.map_or(watts_now, |d| d.watts_before);
        let watts = match event {
            HookEvent::Draining | HookEvent::Resuming => watts_before,
            HookEvent::Drained => (watts_before - watts_now).max(0.0),
            HookEvent::Active => watts_now,
        };
        let roster = match event {
            HookEvent::Draining | HookEvent::Drained | HookEvent::Resuming => {
                drain.map(|d| d.roster.clone()).unwrap_or_default()
            }
            HookEvent::Active => observed
                .miners
                .iter()
                .map(|m| RosterEntry {
                    name: m.name.clone(),
                    address: m.address.clone(),
                })
                .collect(),
        };
        HookContext {
            event,
            group: runtime.name.to_string(),
            reason: drain.map(|d| d.reason.clone()).unwrap_or_default(),
            mode: drain.map(|d| d.mode),
            trigger: trigger.to_owned(),
            watts,
            roster,
        }
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
                    .group_blocked_transitions
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
                    current,
                    target,
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
        // hook_retry, doubling with each failure in a row, at most 10 minutes.
        let backoff = runtime
            .policy
            .hook_retry
            .saturating_mul(1 << runtime.failures.min(6))
            .min(Duration::from_secs(600).max(runtime.policy.hook_retry));
        runtime.failures = runtime.failures.saturating_add(1);
        runtime.retry_at = Instant::now().checked_add(backoff);
    }

    /// Everything the state file holds, as it is now.
    fn persisted(&self) -> PersistedState {
        let mut state = PersistedState {
            groups: self.records.clone(),
            ..PersistedState::default()
        };
        state.groups.extend(self.orphans.clone());
        self.sched.persist_into(&mut state);
        state
    }

    /// Saves the state as it is now (windows and capacity changes; group transitions save in
    /// [`Self::commit`]).
    fn save(&mut self) -> Result<(), super::store::StoreError> {
        let state = self.persisted();
        self.store.save(&state).inspect_err(|_| {
            self.metrics.state_save_failures.inc();
        })
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
        if let Err(source) = self.store.save(&state) {
            error!(group = %name, %source, "state not saved: transition not applied");
            self.metrics.state_save_failures.inc();
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
        self.commits += 1;
        let runtime = &mut self.groups[index];
        runtime.retry_at = None;
        runtime.failures = 0;
        runtime.last_error = None;
        match to {
            GroupState::Resuming if from != GroupState::Resuming => {
                runtime.ramp = Some(Ramp::new());
            }
            GroupState::Resuming => {}
            _ => runtime.ramp = None,
        }
        info!(group = %name, %from, %to, trigger, kind, "group transition");
        self.log_event(index, kind, from, to, trigger, detail);
        self.publish(&self.observe_all());
        Ok(())
    }

    /// Appends to the audit log: watts drawn when the transition started (the last published
    /// status), drawn now, and released now.
    fn log_event(
        &mut self,
        index: usize,
        kind: &str,
        from: GroupState,
        to: GroupState,
        trigger: &str,
        detail: &str,
    ) {
        let name = self.groups[index].name.to_string();
        let observed = self.observe(index);
        let record = self.record(&name);
        let watts_after = observed.mining as f64 * self.groups[index].policy.watts_per_worker;
        let watts_before = self.status_of(&name).power_watts;
        let drain = record.drain.as_ref();
        let event = Event {
            seq: 0,
            time: now_rfc3339(),
            group: name,
            kind: kind.to_owned(),
            from,
            to,
            trigger: trigger.to_owned(),
            mode: drain.map(|d| d.mode.as_str().to_owned()),
            reason: drain.map(|d| d.reason.clone()).unwrap_or_default(),
            watts_before,
            watts_after,
            released_watts: released_watts(&record, watts_after),
            workers: observed.workers,
            detail: detail.to_owned(),
        };
        // Only this task adds events, so the sequence number cannot change between the two
        // locks; the API's readers are not held up by the fsync.
        let event = Event {
            seq: lock(&self.events).next_seq(),
            ..event
        };
        if let Err(error) = self.store.append_event(&event) {
            // The transition itself is saved; the audit line is kept in memory and the
            // failure is loud.
            error!(%error, "audit event not saved");
            self.metrics.state_save_failures.inc();
        }
        lock(&self.events).push(event);
    }

    fn on_tick(&mut self) {
        let now_ms = unix_ms();
        let now = Instant::now();
        for runtime in &mut self.groups {
            let accepted = self
                .metrics
                .accepted_difficulty
                .with_label_values(&[&*runtime.name])
                .get();
            runtime.hashrate.sample(now, accepted);
        }
        self.reconcile_schedules(now_ms);
        let observed = self.observe_all();
        let changes = (self.next_token, self.commits);
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
        if (self.next_token, self.commits) == changes {
            self.publish(&observed);
        }
    }

    /// Drained once every miner is quiet and none came back for `quiet_min`, or at the timeout.
    fn check_drained(
        &mut self,
        index: usize,
        record: &GroupRecord,
        observed: &Observed,
        now_ms: u64,
    ) {
        let Some(drain) = &record.drain else { return };
        let policy = &self.groups[index].policy;
        let elapsed = Duration::from_millis(now_ms.saturating_sub(drain.started_at_ms));
        let quiet_min_ms = policy.quiet_min.as_millis() as u64;
        let last_refused = self
            .sessions
            .registry()
            .refusals(&self.groups[index].name)
            .last_unix_ms;
        let refused_lately = last_refused > drain.started_at_ms
            && now_ms.saturating_sub(last_refused) < quiet_min_ms;
        let quiet = observed.hashing.is_empty() && !refused_lately && elapsed >= policy.quiet_min;
        let timed_out = elapsed >= policy.drain_timeout;
        if !quiet && !timed_out {
            return;
        }
        let (trigger, detail) = if quiet {
            ("quiet".to_owned(), String::new())
        } else {
            let names: Vec<&str> = observed
                .hashing
                .iter()
                .map(|&i| observed.miners[i].name.as_str())
                .collect();
            let detail = format!(
                "drain timeout: {} miner(s) still hashing: {}{}",
                names.len(),
                names
                    .iter()
                    .take(20)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                if refused_lately {
                    "; reconnects still refused"
                } else {
                    ""
                }
            );
            warn!(group = %self.groups[index].name, %detail, "drained by timeout");
            ("timeout".to_owned(), detail)
        };
        let next = GroupRecord {
            state: GroupState::Drained,
            since: now_ms / 1000,
            ..record.clone()
        };
        if !detail.is_empty() {
            self.log_event(
                index,
                "drain_timeout",
                GroupState::Draining,
                GroupState::Draining,
                &trigger,
                &detail,
            );
        }
        let _ = self.begin(index, next, trigger);
    }

    /// Admits paused miners at the group's rate; active once everyone is back. The ramp timeout
    /// only gives up on miners that did not come back: miners waiting for admission are always
    /// admitted at the rate, never all at once.
    fn ramp(&mut self, index: usize, record: &GroupRecord, observed: &Observed, may_finish: bool) {
        let epoch = record.drain.as_ref().map_or(0, |d| d.started_at_ms);
        let rate = self.groups[index].policy.ramp_rate;
        let ramp_timeout = self.groups[index].policy.ramp_timeout;
        let name = Arc::clone(&self.groups[index].name);
        let ramp = self.groups[index].ramp.get_or_insert_with(Ramp::new);
        ramp.fill(rate);
        // Observed miners are sorted by id; those above the watermark wait, in that order.
        let waiting: Vec<u64> = observed
            .miners
            .iter()
            .filter(|m| m.paused && m.id > ramp.admit_through)
            .map(|m| m.id)
            .collect();
        let admit = (ramp.tokens.floor() as usize).min(waiting.len());
        if admit > 0 {
            ramp.tokens -= admit as f64;
            ramp.admit_through = waiting[admit - 1];
            let gate = Gate::Ramp {
                epoch,
                admit_through: ramp.admit_through,
            };
            self.sessions.set_gate(&name, gate);
        }
        let waiting = waiting.len() - admit;
        let admitted = ramp.admit_through;
        let missing: Vec<&str> = record
            .drain
            .iter()
            .flat_map(|d| &d.roster)
            .filter(|entry| {
                !observed
                    .miners
                    .iter()
                    .any(|m| m.name == entry.name && (!m.paused || m.id <= admitted))
            })
            .map(|entry| entry.name.as_str())
            .collect();
        if waiting > 0 || !may_finish {
            return;
        }
        let timed_out = ramp.started.elapsed() >= ramp_timeout;
        if !missing.is_empty() && !timed_out {
            return;
        }
        let trigger = if missing.is_empty() {
            "ramp"
        } else {
            "ramp_timeout"
        };
        if !missing.is_empty() {
            let detail = format!(
                "ramp timeout: {} miner(s) did not come back: {}",
                missing.len(),
                missing
                    .iter()
                    .take(20)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.log_event(
                index,
                "ramp_timeout",
                GroupState::Resuming,
                GroupState::Resuming,
                trigger,
                &detail,
            );
        }
        let next = GroupRecord::default_active(unix_ms() / 1000);
        let _ = self.begin(index, next, trigger.to_owned());
    }

    /// Every group's miners, judged. Active groups are only counted (a farm of 20,000 miners is
    /// looked at five times a second); groups in a drain, and those `detailed` names, list
    /// their miners.
    fn observe_with(&self, detailed: impl Fn(usize) -> bool) -> Vec<Observed> {
        let by_group: HashMap<&str, usize> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (&*g.name, i))
            .collect();
        let records: Vec<GroupRecord> = self.groups.iter().map(|g| self.record(&g.name)).collect();
        let detail: Vec<bool> = records
            .iter()
            .enumerate()
            .map(|(i, r)| r.state != GroupState::Active || detailed(i))
            .collect();
        let mut observed: Vec<Observed> = (0..self.groups.len())
            .map(|_| Observed::default())
            .collect();
        self.sessions.registry().visit(|id, stats| {
            let Some(name) = &stats.name else { return };
            let Some(&index) = by_group.get(&*stats.group) else {
                return;
            };
            let group = &mut observed[index];
            group.workers += 1;
            if detail[index] {
                group.miners.push(MinerView {
                    id,
                    name: name.clone(),
                    address: stats.remote.to_string(),
                    paused: stats.paused,
                    last_submit_ms: stats.last_submit_unix_ms,
                    difficulty: stats.difficulty,
                    hashrate: stats.hashrate_15m(),
                });
            }
        });
        let now_ms = unix_ms();
        for (index, group) in observed.iter_mut().enumerate() {
            let record = &records[index];
            let policy = &self.groups[index].policy;
            let Some(drain) = record
                .drain
                .as_ref()
                .filter(|_| record.state != GroupState::Active)
            else {
                group.mining = group.workers;
                continue;
            };
            group.miners.sort_by_key(|m| m.id);
            for (i, miner) in group.miners.iter().enumerate() {
                let mining = if record.state == GroupState::Resuming {
                    !miner.paused
                } else {
                    let reference = miner.last_submit_ms.unwrap_or(0).max(drain.started_at_ms);
                    let quiet = policy.quiet_period(miner.difficulty, miner.hashrate);
                    let still = now_ms.saturating_sub(reference) < quiet.as_millis() as u64;
                    if still {
                        group.hashing.push(i);
                    }
                    still
                };
                if mining {
                    group.mining += 1;
                }
            }
        }
        observed
    }

    fn observe_all(&self) -> Vec<Observed> {
        self.observe_with(|_| false)
    }

    /// One group, with its miners listed.
    fn observe(&self, index: usize) -> Observed {
        self.observe_with(|i| i == index).swap_remove(index)
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
        let statuses: Vec<GroupStatus> = self
            .groups
            .iter()
            .zip(observed)
            .map(|(runtime, observed)| {
                let record = self.record(&runtime.name);
                let power = observed.mining as f64 * runtime.policy.watts_per_worker;
                let released = released_watts(&record, power);
                let name: &str = &runtime.name;
                self.metrics
                    .group_power_watts
                    .with_label_values(&[name])
                    .set(power);
                self.metrics
                    .group_released_watts
                    .with_label_values(&[name])
                    .set(released);
                for state in GroupState::ALL {
                    self.metrics
                        .group_state
                        .with_label_values(&[name, state.as_str()])
                        .set(i64::from(state == record.state));
                }
                let drain = record.drain.as_ref();
                let efficiency = self.efficiency(runtime, power);
                let refusals = self.sessions.registry().refusals(name);
                GroupStatus {
                    name: name.to_owned(),
                    state: record.state,
                    since: record.since,
                    mode: drain.map(|d| d.mode),
                    reason: drain.map(|d| d.reason.clone()),
                    reconnect_to: drain.and_then(|d| d.reconnect_to.clone()),
                    claims: record.claims.iter().map(Claim::to_string).collect(),
                    power_watts: power,
                    released_watts: released,
                    watts_before: drain.map(|d| d.watts_before),
                    workers: observed.workers,
                    mining_workers: observed.mining,
                    still_hashing: observed
                        .hashing
                        .iter()
                        .take(MAX_LISTED_HASHING)
                        .map(|&i| {
                            let m = &observed.miners[i];
                            HashingMiner {
                                name: m.name.clone(),
                                address: m.address.clone(),
                                last_submit_seconds_ago: m
                                    .last_submit_ms
                                    .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
                            }
                        })
                        .collect(),
                    refused_reconnects: refusals.total,
                    refused_miners: match drain {
                        Some(drain) if record.state != GroupState::Active => {
                            refusals.since(drain.started_at_ms)
                        }
                        _ => Vec::new(),
                    },
                    drain_deadline: (record.state == GroupState::Draining)
                        .then(|| {
                            drain.map(|d| {
                                (d.started_at_ms / 1000) + runtime.policy.drain_timeout.as_secs()
                            })
                        })
                        .flatten(),
                    pending: runtime
                        .pending
                        .as_ref()
                        .map(|p| format!("{} hooks running", p.next.state)),
                    last_error: runtime.last_error.clone(),
                    efficiency_j_per_th: efficiency.0,
                    efficiency_source: Some(efficiency.1),
                }
            })
            .collect();
        *lock(&self.status) = statuses;
        self.publish_schedules();
    }
}

/// Watts a non-active group has given back: what it drew before the drain minus what it draws.
fn released_watts(record: &GroupRecord, power_now: f64) -> f64 {
    match (&record.state, &record.drain) {
        (GroupState::Active, _) | (_, None) => 0.0,
        (_, Some(drain)) => (drain.watts_before - power_now).max(0.0),
    }
}

impl GroupRecord {
    /// An active group with no drain.
    fn default_active(since: u64) -> GroupRecord {
        GroupRecord {
            state: GroupState::Active,
            since,
            ..GroupRecord::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_period_scales_with_the_expected_share_interval() {
        let policy = Policy {
            watts_per_worker: 3250.0,
            drain_timeout: Duration::from_secs(600),
            quiet_min: Duration::from_secs(30),
            quiet_shares: 6.0,
            ramp_rate: 10.0,
            ramp_timeout: Duration::from_secs(300),
            hook_retry: Duration::from_secs(10),
        };
        // An S19 at 100 TH/s on difficulty 230,000 submits every ~9.9 s: quiet after ~59 s.
        let quiet = policy.quiet_period(230_000.0, 100e12);
        assert!((quiet.as_secs_f64() - 59.3).abs() < 0.5, "{quiet:?}");
        // A fast miner is held to quiet_min, a slow one to the drain timeout.
        assert_eq!(policy.quiet_period(1.0, 100e12), Duration::from_secs(30));
        assert_eq!(policy.quiet_period(1e9, 1e9), Duration::from_secs(600));
        // No hashrate known: quiet_min.
        assert_eq!(policy.quiet_period(65536.0, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn released_watts_only_while_not_active() {
        let mut record = GroupRecord {
            state: GroupState::Drained,
            drain: Some(Drain {
                mode: DrainMode::Pause,
                reason: String::new(),
                reconnect_to: None,
                started_at_ms: 0,
                watts_before: 6500.0,
                roster: Vec::new(),
            }),
            ..GroupRecord::default()
        };
        assert_eq!(released_watts(&record, 0.0), 6500.0);
        assert_eq!(released_watts(&record, 3250.0), 3250.0);
        record.state = GroupState::Active;
        assert_eq!(released_watts(&record, 0.0), 0.0);
    }
}
