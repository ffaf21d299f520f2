//! The energy ledger: per group, per drain, and per window or capacity request, the energy
//! drawn (by source) and the energy not drawn against the drain's pre-drain baseline, integrated
//! from the measured samples the controller takes once a second. It is what a power contract
//! settles on, so it survives a `kill -9`: `energy.json` in the state directory is replaced
//! (write, rename) after every sample and fsynced once a minute; a restart loses at most the
//! sample being taken, and a gap while hashgate was down is not credited to anyone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::machines::{PowerSource, Watts};
use crate::groups::state::{Claim, GroupRecord, GroupState};

/// Joules per kilowatt-hour.
pub const JOULES_PER_KWH: f64 = 3.6e6;

/// A gap between samples longer than this (hashgate was down, or its thread stalled) is not
/// integrated: nobody knows what was drawn meanwhile.
const MAX_GAP_MS: u64 = 10_000;

/// Window and capacity accounts kept (the oldest go first: the events keep every drain's
/// figures, and the file must not grow with every request a scheduler ever made).
const MAX_CLAIMS: usize = 1_000;

/// How often the ledger file is fsynced (it is replaced after every sample).
const FSYNC_EVERY: Duration = Duration::from_secs(60);

/// Joules by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Joules {
    /// Measured at the group's meter.
    pub meter: f64,
    /// Measured by the machines' firmware.
    pub firmware: f64,
    /// From `watts_per_worker`.
    pub declared: f64,
}

impl Joules {
    fn add(&mut self, watts: &Watts, seconds: f64) {
        self.meter += watts.meter * seconds;
        self.firmware += watts.firmware * seconds;
        self.declared += watts.declared * seconds;
    }

    /// All sources.
    pub fn total(&self) -> f64 {
        self.meter + self.firmware + self.declared
    }

    /// The part of `source`.
    pub fn of(&self, source: PowerSource) -> f64 {
        match source {
            PowerSource::Meter => self.meter,
            PowerSource::Firmware => self.firmware,
            PowerSource::Declared => self.declared,
        }
    }
}

/// Energy over a drain, or over a window's or capacity request's drains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Drawn meanwhile, by source.
    pub drawn: Joules,
    /// Not drawn against the pre-drain baseline (baseline minus draw, never below zero).
    pub released_joules: f64,
    /// When it began (Unix ms).
    pub since_ms: u64,
}

impl Account {
    fn add(&mut self, watts: &Watts, baseline: f64, seconds: f64) {
        self.drawn.add(watts, seconds);
        self.released_joules += (baseline - watts.total).max(0.0) * seconds;
    }

    /// Released, in kWh.
    pub fn released_kwh(&self) -> f64 {
        self.released_joules / JOULES_PER_KWH
    }

    /// Drawn, in kWh.
    pub fn drawn_kwh(&self) -> f64 {
        self.drawn.total() / JOULES_PER_KWH
    }
}

/// One group's energy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupEnergy {
    /// Drawn since the ledger began, by source.
    pub total: Joules,
    /// The drain in force.
    pub drain: Option<Account>,
    /// The draw at the last sample, held until the next (by source).
    #[serde(default)]
    last: LastWatts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct LastWatts {
    meter: f64,
    firmware: f64,
    declared: f64,
}

impl LastWatts {
    fn watts(&self) -> Watts {
        Watts {
            total: self.meter + self.firmware + self.declared,
            meter: self.meter,
            firmware: self.firmware,
            declared: self.declared,
            source: PowerSource::Declared,
        }
    }
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerState {
    /// By group.
    pub groups: BTreeMap<String, GroupEnergy>,
    /// By window or capacity request (`window NAME`, `capacity ID`).
    pub claims: BTreeMap<String, Account>,
    /// The last sample (Unix ms).
    pub as_of_ms: u64,
}

/// The ledger and its file.
pub(super) struct Ledger {
    pub state: LedgerState,
    path: PathBuf,
    synced: Option<Instant>,
}

/// What one sample added to a group, for the counters.
pub(super) struct Added {
    pub group: String,
    pub drawn: Joules,
    pub released_joules: f64,
}

impl Ledger {
    /// The ledger kept in `dir` (an unreadable or corrupt file starts a fresh one, loudly: the
    /// audit log still holds every transition).
    pub fn open(dir: &Path) -> Ledger {
        let path = dir.join("energy.json");
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
                warn!(path = %path.display(), %error, "energy ledger unreadable; a new one starts");
                LedgerState::default()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => LedgerState::default(),
            Err(error) => {
                warn!(path = %path.display(), %error, "energy ledger unreadable; a new one starts");
                LedgerState::default()
            }
        };
        Ledger {
            state,
            path,
            synced: None,
        }
    }

    /// Integrates the draw held since the last sample into each group's totals, its drain
    /// and its windows' and capacity requests' accounts, then holds `watts` until the next.
    /// `groups` is (name, record, watts now).
    pub fn sample(&mut self, now_ms: u64, groups: &[(&str, &GroupRecord, Watts)]) -> Vec<Added> {
        let previous_ms = self.state.as_of_ms;
        let gap = now_ms.saturating_sub(previous_ms);
        let counted = previous_ms != 0 && gap <= MAX_GAP_MS;
        let seconds = if counted { gap as f64 / 1000.0 } else { 0.0 };
        // The part of the interval after `from` (a drain that began within it).
        let after = |from: u64| {
            if counted {
                now_ms.saturating_sub(previous_ms.max(from)) as f64 / 1000.0
            } else {
                0.0
            }
        };
        self.state.as_of_ms = now_ms;
        let mut added = Vec::with_capacity(groups.len());
        for (name, record, watts) in groups {
            let group = self.state.groups.entry((*name).to_owned()).or_default();
            let held = group.last.watts();
            group.total.add(&held, seconds);
            let mut released_joules = 0.0;
            match (&record.drain, record.state) {
                (Some(drain), state) if state != GroupState::Active => {
                    let account = group.drain.get_or_insert_with(|| Account {
                        since_ms: drain.started_at_ms,
                        ..Account::default()
                    });
                    let in_drain = after(drain.started_at_ms);
                    let before = account.released_joules;
                    account.add(&held, drain.watts_before, in_drain);
                    released_joules = account.released_joules - before;
                    for claim in &record.claims {
                        if matches!(claim, Claim::Manual) {
                            continue;
                        }
                        self.state
                            .claims
                            .entry(claim.to_string())
                            .or_insert_with(|| Account {
                                since_ms: drain.started_at_ms,
                                ..Account::default()
                            })
                            .add(&held, drain.watts_before, in_drain);
                    }
                }
                _ => group.drain = None,
            }
            let group = self.state.groups.entry((*name).to_owned()).or_default();
            group.last = LastWatts {
                meter: watts.meter,
                firmware: watts.firmware,
                declared: watts.declared,
            };
            let mut drawn = Joules::default();
            drawn.add(&held, seconds);
            added.push(Added {
                group: (*name).to_owned(),
                drawn,
                released_joules,
            });
        }
        while self.state.claims.len() > MAX_CLAIMS {
            let oldest = self
                .state
                .claims
                .iter()
                .min_by_key(|(_, account)| account.since_ms)
                .map(|(claim, _)| claim.clone());
            match oldest {
                Some(claim) => self.state.claims.remove(&claim),
                None => break,
            };
        }
        self.save();
        added
    }

    /// Replaces the file (fsynced once a minute); a failure is logged, the ledger goes on.
    fn save(&mut self) {
        let Ok(text) = serde_json::to_vec(&self.state) else {
            return;
        };
        let temp = self.path.with_extension("json.tmp");
        let sync = self.synced.is_none_or(|at| at.elapsed() >= FSYNC_EVERY);
        let result = (|| -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temp)?;
            std::io::Write::write_all(&mut file, &text)?;
            if sync {
                file.sync_all()?;
            }
            std::fs::rename(&temp, &self.path)
        })();
        match result {
            Ok(()) if sync => self.synced = Some(Instant::now()),
            Ok(()) => {}
            Err(error) => {
                warn!(path = %self.path.display(), %error, "energy ledger not saved");
            }
        }
    }

    /// A group's drain account, if a drain is in force.
    pub fn drain_of(&self, group: &str) -> Option<&Account> {
        self.state.groups.get(group)?.drain.as_ref()
    }

    /// A group's totals.
    pub fn total_of(&self, group: &str) -> Joules {
        self.state
            .groups
            .get(group)
            .map(|g| g.total)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DrainMode;
    use crate::groups::state::Drain;

    fn firmware(watts: f64) -> Watts {
        Watts {
            total: watts,
            meter: 0.0,
            firmware: watts,
            declared: 0.0,
            source: PowerSource::Firmware,
        }
    }

    #[test]
    fn samples_integrate_the_held_draw_and_the_release_against_the_baseline() {
        let dir = std::env::temp_dir().join(format!("hashgate-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("energy.json"));
        let mut ledger = Ledger::open(&dir);
        let active = GroupRecord::default();
        let draining = GroupRecord {
            state: GroupState::Draining,
            drain: Some(Drain {
                mode: DrainMode::Pause,
                reason: String::new(),
                reconnect_to: None,
                started_at_ms: 2_000,
                watts_before: 1_000.0,
                roster: Vec::new().into(),
                verified: false,
            }),
            claims: [Claim::Capacity("cap-1".into())].into(),
            ..GroupRecord::default()
        };
        // The first sample only holds its draw.
        ledger.sample(1_000, &[("c07", &active, firmware(1_000.0))]);
        // 1 s at the 1,000 W held, before the drain (which began at 2,000).
        ledger.sample(2_000, &[("c07", &draining, firmware(100.0))]);
        assert_eq!(ledger.drain_of("c07").unwrap().drawn.total(), 0.0);
        // 2 s at the 100 W held: 200 J drawn, 900 W x 2 s not drawn against the baseline.
        let added = ledger.sample(4_000, &[("c07", &draining, firmware(100.0))]);
        assert_eq!(added[0].drawn.firmware, 200.0);
        assert_eq!(added[0].released_joules, 1_800.0);
        assert_eq!(ledger.total_of("c07").firmware, 1_000.0 + 200.0);
        let drain = ledger.drain_of("c07").unwrap();
        assert_eq!(
            (drain.drawn.firmware, drain.released_joules),
            (200.0, 1_800.0)
        );
        assert!((drain.released_kwh() - 0.0005).abs() < 1e-12);
        assert_eq!(
            ledger.state.claims["capacity cap-1"].released_joules,
            1_800.0
        );
        // A restart reads it back; a gap of more than 10 s is not integrated.
        let mut reopened = Ledger::open(&dir);
        assert_eq!(reopened.state, ledger.state);
        reopened.sample(60_000, &[("c07", &draining, firmware(100.0))]);
        assert_eq!(reopened.total_of("c07").firmware, 1_200.0);
        // Active again: the drain's account is closed, the claim's kept.
        reopened.sample(61_000, &[("c07", &active, firmware(1_000.0))]);
        assert!(reopened.drain_of("c07").is_none());
        assert!(reopened.state.claims.contains_key("capacity cap-1"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
