//! How the API and schedulers reach the controller, and what they get back: commands over a
//! channel, the outcome of each, and the snapshots the controller publishes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::machines::{MachineIssue, PowerSource};
use super::schedules::{self as schedule, Answer, ScheduleViews};
use crate::config::DrainMode;
use crate::config::windows::{WindowSpec, WindowView};
use crate::downstream::RefusedMiner;
use crate::groups::capacity::{CapacityRequest, CapacityView, EfficiencySource};
use crate::groups::events::{Event, EventLog};
use crate::groups::hooks::HookFailure;
use crate::groups::state::{Claim, GroupState};
use crate::groups::store::StoreError;

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
#[derive(Debug, Clone, PartialEq)]
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

pub(super) type Reply = oneshot::Sender<Result<GroupStatus, ControlError>>;

/// Where a group command stands once the controller has taken it.
pub(super) enum Step {
    /// Made (or nothing to do).
    Done,
    /// Its hooks are running; the transition is committed when they succeed.
    Pending,
}

/// What the controller is asked.
pub(super) enum Control {
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

/// A group's state as the API shows it (one JSON object: the parts below are flattened into it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GroupStatus {
    /// Name.
    pub name: String,
    /// Lifecycle state.
    pub state: GroupState,
    /// Unix seconds of the last transition (0: never drained).
    pub since: u64,
    /// Who holds the drain (`manual`, `window ID`, `capacity ID`).
    pub claims: Vec<String>,
    /// Watts drawn by the group's mining now.
    pub power_watts: f64,
    /// Watts released to other loads now.
    pub released_watts: f64,
    /// Authorized miners connected.
    pub workers: usize,
    /// Of those, miners mining (given work, or still submitting after being paused).
    pub mining_workers: usize,
    /// The drain, while there is one.
    #[serde(flatten)]
    pub drain: DrainStatus,
    /// Who still hashes through a group told to stop.
    #[serde(flatten)]
    pub witness: DrainWitness,
    /// A transition whose hooks are running.
    pub pending: Option<String>,
    /// The last refused or failed transition.
    pub last_error: Option<String>,
    /// The efficiency capacity requests are planned with.
    #[serde(flatten)]
    pub efficiency: EfficiencyStatus,
    /// Where `power_watts` comes from and what the machines' firmware says.
    #[serde(flatten)]
    pub power: PowerStatus,
    /// The energy ledger's figures for the group.
    #[serde(flatten)]
    pub energy: EnergyStatus,
}

/// A group's energy: over the drain in force, and drawn in all by source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EnergyStatus {
    /// Not drawn against the pre-drain baseline since the drain in force began (kWh; 0 while
    /// active).
    pub energy_released_kwh: f64,
    /// Drawn since the drain in force began (kWh).
    pub energy_drawn_kwh: f64,
    /// Drawn since the ledger began, by source (kWh).
    pub energy_kwh_by_source: BTreeMap<PowerSource, f64>,
    /// The ledger's last sample (Unix ms): the figures are as of then.
    pub energy_as_of_ms: u64,
}

/// A group's power as measured: the source of its figure, the parts by source, and its machines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PowerStatus {
    /// `firmware` when every machine's firmware was read, else `declared` (the figure holds a
    /// nameplate part; see `power_by_source`).
    pub power_source: PowerSource,
    /// `power_watts` by source.
    pub power_by_source: BTreeMap<PowerSource, f64>,
    /// The drained state rests on measured power (false while not drained, or drained on share
    /// silence or a timeout).
    pub verified: bool,
    /// Whether the group's machines sleep when it is drained.
    pub sleep: bool,
    /// The group's machines (its sessions' and, in a drain, its roster's).
    pub machines: usize,
    /// Of those, read by their firmware lately.
    pub machines_read: usize,
    /// Of those, measured off (at or below `idle_watts_per_worker`, or asleep by their firmware).
    pub machines_off: usize,
    /// While a drain is in force, the machines not off and why (at most 100).
    pub machines_not_off: Vec<MachineIssue>,
}

/// The drain of a group (all null while it is active and was never drained).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DrainStatus {
    /// The drain's mode.
    pub mode: Option<DrainMode>,
    /// The drain's reason.
    pub reason: Option<String>,
    /// Where `reconnect` mode sends miners.
    pub reconnect_to: Option<String>,
    /// Watts the group drew when the drain started.
    pub watts_before: Option<f64>,
    /// Unix seconds at which a draining group is called drained regardless.
    pub drain_deadline: Option<u64>,
}

/// The drain's witness: miners still submitting, and miners refused when they came back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DrainWitness {
    /// Miners still submitting although the group is draining or drained.
    pub still_hashing: Vec<HashingMiner>,
    /// Reconnects of this group's miners refused since start (disconnect/reconnect modes).
    pub refused_reconnects: u64,
    /// The miners refused since the drain started, most recent first (at most 100).
    pub refused_miners: Vec<RefusedMiner>,
}

/// A group's efficiency as capacity planning uses it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EfficiencyStatus {
    /// J/TH used to plan capacity requests.
    pub efficiency_j_per_th: Option<f64>,
    /// Whether that figure is measured, declared or unknown.
    pub efficiency_source: Option<EfficiencySource>,
}

/// How the API and schedulers reach the controller.
#[derive(Clone)]
pub struct GroupsHandle {
    pub(super) tx: mpsc::Sender<Control>,
    pub(super) status: Arc<Mutex<Vec<GroupStatus>>>,
    pub(super) events: Arc<Mutex<EventLog>>,
    pub(super) schedules: Arc<Mutex<ScheduleViews>>,
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
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
