//! The audit log of group transitions: `GET /api/v1/events`, exportable as CSV.
//!
//! A farm that sells its power by contract settles on when each group stopped and started and how
//! many watts moved: every transition records the watts before and after, who asked, and why.
//! Events are appended to `events.jsonl` in the state directory as they happen (see
//! [`super::store`]); the newest are kept in memory for the API.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::state::GroupState;

/// Events kept in memory for `GET /api/v1/events` (the file keeps them all).
pub const EVENTS_IN_MEMORY: usize = 10_000;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing across restarts.
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// The group.
    pub group: String,
    /// `transition`, `hook_failed`, `mode_changed`, `drain_timeout`, `ramp_timeout`.
    pub kind: String,
    /// State before.
    pub from: GroupState,
    /// State after (the same as `from` when the transition was refused).
    pub to: GroupState,
    /// Who or what caused it (`manual`, `window ID`, `capacity ID`, `quiet`, `timeout`, `ramp`).
    pub trigger: String,
    /// The drain's mode, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The drain's reason, if any.
    #[serde(default)]
    pub reason: String,
    /// Watts drawn by the group's mining before.
    pub watts_before: f64,
    /// Watts drawn after.
    pub watts_after: f64,
    /// Watts released to other loads after.
    pub released_watts: f64,
    /// The group's connected miners.
    pub workers: usize,
    /// Anything else (a hook's error, the miners still hashing at a timeout).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Where `watts_after` comes from: `firmware` or `declared` (events written before power
    /// was measured say `declared`).
    #[serde(default = "declared")]
    pub watts_source: String,
    /// The drained state rests on measured power (only on events of a drained group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// Energy the drain in force had released when this happened (kWh; none outside a drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_released_kwh: Option<f64>,
}

fn declared() -> String {
    "declared".into()
}

impl Event {
    /// A filled-in event for tests.
    #[cfg(test)]
    pub fn example(seq: u64) -> Event {
        Event {
            seq,
            time: "2026-12-01T19:00:00Z".into(),
            group: "c07".into(),
            kind: "transition".into(),
            from: GroupState::Active,
            to: GroupState::Draining,
            trigger: "manual".into(),
            mode: Some("pause".into()),
            reason: "AI job, \"batch 7\"".into(),
            watts_before: 6500.0,
            watts_after: 6500.0,
            released_watts: 0.0,
            workers: 2,
            detail: String::new(),
            watts_source: declared(),
            verified: None,
            energy_released_kwh: None,
        }
    }
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The newest events, in order.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<Event>,
    next_seq: u64,
}

impl EventLog {
    /// A log continuing after `restored` (read from the state directory).
    pub fn new(restored: Vec<Event>) -> Self {
        let next_seq = restored.last().map_or(1, |e| e.seq.saturating_add(1));
        Self {
            events: restored.into(),
            next_seq,
        }
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds an event (its `seq` must be [`Self::next_seq`]).
    pub fn push(&mut self, event: Event) {
        self.next_seq = event.seq.saturating_add(1);
        if self.events.len() == EVENTS_IN_MEMORY {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Events with `seq > after`, optionally of one group, at most `limit`, oldest first.
    pub fn query(&self, after: u64, group: Option<&str>, limit: usize) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq > after)
            .filter(|e| group.is_none_or(|g| e.group == g))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Events as CSV (RFC 4180 quoting), one header line.
pub fn to_csv(events: &[Event]) -> String {
    let mut out = String::from(
        "seq,time,group,kind,from,to,trigger,mode,reason,watts_before,watts_after,released_watts,workers,detail,watts_source,verified,energy_released_kwh\n",
    );
    for e in events {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            e.seq,
            csv_field(&e.time),
            csv_field(&e.group),
            csv_field(&e.kind),
            e.from,
            e.to,
            csv_field(&e.trigger),
            csv_field(e.mode.as_deref().unwrap_or("")),
            csv_field(&e.reason),
            e.watts_before,
            e.watts_after,
            e.released_watts,
            e.workers,
            csv_field(&e.detail),
            csv_field(&e.watts_source),
            e.verified.map_or("", |v| if v { "true" } else { "false" }),
            e.energy_released_kwh
                .map_or(String::new(), |k| k.to_string()),
        );
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let csv = to_csv(&[Event::example(3)]);
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("seq,time,group"));
        assert_eq!(
            lines.next().unwrap(),
            "3,2026-12-01T19:00:00Z,c07,transition,active,draining,manual,pause,\"AI job, \"\"batch 7\"\"\",6500,6500,0,2,,declared,,"
        );
    }

    #[test]
    fn the_log_continues_its_sequence_and_filters() {
        let mut log = EventLog::new(vec![Event::example(4)]);
        assert_eq!(log.next_seq(), 5);
        let mut other = Event::example(5);
        other.group = "gpu".into();
        log.push(other);
        assert_eq!(log.query(0, Some("gpu"), 10).len(), 1);
        assert_eq!(log.query(4, None, 10)[0].seq, 5);
        assert_eq!(log.query(0, None, 1).len(), 1);
        assert!(now_rfc3339().ends_with('Z'));
    }
}
