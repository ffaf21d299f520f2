//! What the group controller is built from: the validated config, the compiled groups, the
//! sessions' control, the hooks, the state directory and what it held.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Groups};
use crate::downstream::SessionControl;
use crate::groups::events::Event;
use crate::groups::hooks::HookRunner;
use crate::groups::store::{PersistedState, Store};
use crate::metrics::Metrics;
use crate::power::{MeterBook, PowerHandle};

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
    /// Where hook tasks run: the proxy's runtime.
    pub runtime: tokio::runtime::Handle,
    /// The power poller: the machines to watch, their readings, sleep and wake.
    pub power: PowerHandle,
    /// The groups' meters, as last read.
    pub meters: Arc<MeterBook>,
}
