//! The group lifecycle as data: states, drain modes, who holds a drain, and the gate sessions obey.
//!
//! `active -> draining -> drained -> resuming -> active`. These types are what the state file
//! stores and the API shows; the controller ([`super::controller`]) is the only code that moves a
//! group between states. Sessions never see a [`GroupRecord`]: they watch their group's [`Gate`],
//! the one thing they need to know (may I hand out work, must I close, where do I send miners).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{DrainMode, Groups, split_host_port};
use crate::downstream::Gate;

/// Where a group is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    /// Mining.
    #[default]
    Active,
    /// Told to stop: hashgate waits until every miner is gone or quiet.
    Draining,
    /// Stopped: its power is handed over.
    Drained,
    /// Getting work again at the ramp.
    Resuming,
}

impl GroupState {
    /// Every state, for metric series.
    pub const ALL: [GroupState; 4] = [
        GroupState::Active,
        GroupState::Draining,
        GroupState::Drained,
        GroupState::Resuming,
    ];

    /// The name in the API, metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Active => "active",
            GroupState::Draining => "draining",
            GroupState::Drained => "drained",
            GroupState::Resuming => "resuming",
        }
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str()) // honours widths: the CLI prints states in columns
    }
}

/// Who asked for a group to be drained. A group mines again only when no claim is left, so a
/// window ending does not resume a group a capacity request still needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Claim {
    /// An operator (API or command line).
    Manual,
    /// A maintenance window, by id.
    Window(String),
    /// A capacity request, by id.
    Capacity(String),
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Manual => f.write_str("manual"),
            Claim::Window(id) => write!(f, "window {id}"),
            Claim::Capacity(id) => write!(f, "capacity {id}"),
        }
    }
}

/// A miner of the group when the drain started: what hooks get in `HASHGATE_WORKERS_FILE`, and
/// whom the resume waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// Authorized worker name.
    pub name: String,
    /// Address the miner connected from (`ip:port`).
    pub address: String,
}

/// A drain in force (from `draining` until the group is `active` again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// How the group stops.
    pub mode: DrainMode,
    /// Why, shown to miners (`client.show_message`), hooks and the audit log.
    pub reason: String,
    /// `host:port` miners are sent to in `reconnect` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_to: Option<String>,
    /// Unix milliseconds the drain started (quiet periods are measured from it).
    pub started_at_ms: u64,
    /// Watts the group drew when the drain started.
    pub watts_before: f64,
    /// The group's miners when the drain started (shared: the controller reads its records
    /// on every tick, and a farm's roster holds thousands of miners).
    #[serde(default)]
    pub roster: Arc<[RosterEntry]>,
    /// The drained state rests on measured power (false: on share silence or a timeout).
    #[serde(default)]
    pub verified: bool,
}

/// A group's persistent state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GroupRecord {
    /// Lifecycle state.
    pub state: GroupState,
    /// Unix seconds of the last transition.
    pub since: u64,
    /// The drain in force (not in `active`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// Who holds the drain.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub claims: BTreeSet<Claim>,
}

impl GroupRecord {
    /// The gate sessions of this group obey in this state.
    pub fn gate(&self) -> Gate {
        let Some(drain) = &self.drain else {
            // Not reachable through the controller; a hand-edited state file could say so.
            // Not active means no work: the safe side for the breakers.
            return if self.state == GroupState::Active {
                Gate::Open
            } else {
                Gate::Paused
            };
        };
        match (self.state, drain.mode) {
            (GroupState::Active, _) => Gate::Open,
            // Resuming: only miners the ramp admits get work; the controller raises the watermark.
            (GroupState::Resuming, _) => Gate::Ramp {
                epoch: drain.started_at_ms,
                admit_through: 0,
            },
            (_, DrainMode::Pause) => Gate::Paused,
            (_, DrainMode::Disconnect) => Gate::Closed {
                message: Arc::from(drain_message(&drain.reason)),
            },
            (_, DrainMode::Reconnect) => {
                let (host, port) = drain
                    .reconnect_to
                    .as_deref()
                    .and_then(split_host_port)
                    .map_or((None, None), |(h, p)| (Some(h), Some(p)));
                Gate::Redirect {
                    host: host.map(Arc::from),
                    port,
                    message: Arc::from(drain_message(&drain.reason)),
                }
            }
        }
    }
}

impl GroupRecord {
    /// An active group with no drain.
    pub fn default_active(since: u64) -> GroupRecord {
        GroupRecord {
            state: GroupState::Active,
            since,
            ..GroupRecord::default()
        }
    }
}

/// The gate each configured group starts with, from the records the state directory held.
pub fn restored_gates(
    groups: &Groups,
    records: &std::collections::BTreeMap<String, GroupRecord>,
) -> Vec<(Arc<str>, Gate)> {
    groups
        .iter()
        .map(|g| {
            let gate = records
                .get(&*g.name)
                .map(GroupRecord::gate)
                .unwrap_or_default();
            (Arc::clone(&g.name), gate)
        })
        .collect()
}

/// What a miner is shown when its group is taken off mining.
fn drain_message(reason: &str) -> String {
    if reason.is_empty() {
        "hashgate: this machine's group is drained for maintenance".to_owned()
    } else {
        format!("hashgate: this machine's group is drained for maintenance: {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(mode: DrainMode, reconnect_to: Option<&str>) -> GroupRecord {
        GroupRecord {
            state: GroupState::Drained,
            since: 1,
            drain: Some(Drain {
                mode,
                reason: "AI job 42".into(),
                reconnect_to: reconnect_to.map(str::to_owned),
                started_at_ms: 1000,
                watts_before: 6500.0,
                roster: Arc::from([]),
                verified: false,
            }),
            claims: [Claim::Manual].into(),
        }
    }

    #[test]
    fn gates_follow_state_and_mode() {
        assert_eq!(GroupRecord::default().gate(), Gate::Open);
        assert_eq!(drained(DrainMode::Pause, None).gate(), Gate::Paused);
        match drained(DrainMode::Disconnect, None).gate() {
            Gate::Closed { message } => assert!(message.contains("AI job 42"), "{message}"),
            other => panic!("{other:?}"),
        }
        match drained(DrainMode::Reconnect, Some("[2001:db8::1]:3334")).gate() {
            Gate::Redirect { host, port, .. } => {
                assert_eq!(host.as_deref(), Some("2001:db8::1"));
                assert_eq!(port, Some(3334));
            }
            other => panic!("{other:?}"),
        }
        let mut resuming = drained(DrainMode::Disconnect, None);
        resuming.state = GroupState::Resuming;
        assert_eq!(
            resuming.gate(),
            Gate::Ramp {
                epoch: 1000,
                admit_through: 0
            }
        );
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = drained(DrainMode::Reconnect, Some("backup:3333"));
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""claims":[{"kind":"manual"}]"#), "{text}");
        let back: GroupRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        assert_eq!(split_host_port("pool:0"), None);
        assert_eq!(split_host_port(":3333"), None);
    }
}
