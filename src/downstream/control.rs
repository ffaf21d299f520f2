//! The one handle on the sessions that others hold.

use std::sync::Arc;

use super::gate::{Gate, GroupGates};
use super::registry::SessionRegistry;

/// The narrow handle on the sessions that group control and the API hold: set a group's gate,
/// read the sessions, command one of them. Nothing else of a session is reachable from outside.
#[derive(Clone)]
pub struct SessionControl {
    sessions: Arc<SessionRegistry>,
    gates: Arc<GroupGates>,
}

impl SessionControl {
    /// A handle on `sessions` and the groups' `gates`.
    pub fn new(sessions: Arc<SessionRegistry>, gates: Arc<GroupGates>) -> Self {
        Self { sessions, gates }
    }

    /// The live sessions (stats, commands, refusals).
    pub fn registry(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Sets a group's gate: every session of the group acts on it in its own task.
    pub fn set_gate(&self, group: &str, gate: Gate) {
        self.gates.set(group, gate);
    }

    /// The gates, for a session joining its group (subscribe, take a ramp ticket).
    pub(super) fn gates(&self) -> &GroupGates {
        &self.gates
    }

    /// A group's gate now.
    pub fn gate(&self, group: &str) -> Option<Gate> {
        self.gates.current(group)
    }
}
