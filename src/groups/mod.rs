//! Hardware groups and the power handover: drain a group's mining, hand its power to AI work
//! through hooks, bring it back only when told to, at a safe ramp.
//!
//! A farm groups machines the way they are wired (a container, a row, a PDU) because that is the
//! unit whose power moves between mining and AI. The pieces, one job each:
//!
//! - which group a miner is in is decided at authorize by the session, from the compiled rules
//!   of [`crate::config::Groups`]; the group's gate is [`crate::downstream::Gate`].
//! - [`state`]: the lifecycle `active -> draining -> drained -> resuming -> active` as data, and
//!   the `downstream::Gate` each state sets for a group's sessions.
//! - [`controller`]: the one task that moves groups between states, witnesses drains (who is
//!   still submitting), ramps resumes, and publishes power and state.
//! - [`hooks`]: commands and webhooks run on transitions (the actual power switch).
//! - [`capacity`] (and the windows of [`crate::config::windows`]): capacity requests from an AI
//!   scheduler (least efficient groups first) and scheduled maintenance windows; both hold groups
//!   through claims.
//! - [`store`], [`events`]: the state that survives a restart or a crash, and the audit log.
//!
//! Only a machine's firmware or its PDU can cut its power: a miner without new work keeps hashing
//! its last job, a disconnected one fails over to its backup pools. So hashgate never calls a
//! group drained while its miners still hash through it, and never gives a drained group work
//! again except by an explicit resume.

pub mod capacity;
pub mod controller;
pub mod events;
pub mod hooks;
pub mod state;
pub mod store;

pub use controller::{
    ControlError, ControllerParts, DrainRequest, GroupController, GroupStatus, GroupsHandle,
    HashingMiner, MachineIssue, PowerSource, PowerStatus,
};
pub use state::{Claim, GroupRecord, GroupState};
