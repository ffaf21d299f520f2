//! A group's machines and what they draw: each miner's Stratum session (and, while a drain is in
//! force, each machine of the drain's roster, whose session may have ended) mapped to its
//! management address, and the group's power from the poller's readings, by source.
//!
//! The controller refreshes this once a second, not on every tick: a farm of 20,000 machines is
//! looked up in the [`PowerBook`] under one lock, without copies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::observe::{MinerView, Observed};
use crate::config::{Group, Management, PowerSourceChoice};
use crate::groups::state::{GroupRecord, GroupState};
use crate::power::{ManagementAddress, PowerBook, Switch, Target};

/// Machines named in a group's status as not off (the API pages nothing more).
const MAX_LISTED: usize = 100;

/// The pre-drain baseline: the mean draw over this long before the drain.
const BASELINE: Duration = Duration::from_secs(60);

/// Where a power figure comes from, best first (Foreman's ranking).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum PowerSource {
    /// A meter of the group.
    Meter,
    /// The machines' own firmware readings.
    Firmware,
    /// `watts_per_worker` x mining workers: a nameplate figure.
    #[default]
    Declared,
}

impl PowerSource {
    /// The name in the API, metrics, hooks and events.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerSource::Meter => "meter",
            PowerSource::Firmware => "firmware",
            PowerSource::Declared => "declared",
        }
    }

    /// Every source, for metric series.
    pub const ALL: [PowerSource; 3] = [
        PowerSource::Meter,
        PowerSource::Firmware,
        PowerSource::Declared,
    ];
}

/// A machine of a group that is not off, and why: what the status names while a drain waits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineIssue {
    /// A worker of the machine.
    pub worker: String,
    /// Its management address.
    pub address: String,
    /// Its last fresh reading.
    pub watts: Option<f64>,
    /// Why it does not count as off (the driver's error, or its draw).
    pub problem: String,
}

/// One machine of a group.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Machine {
    /// A worker of it (the first seen).
    pub worker: String,
    pub address: ManagementAddress,
    /// The lowest ramp ticket of its live sessions (none: no session now).
    pub ticket: Option<u64>,
    /// Any of its sessions mining.
    pub mining: bool,
}

/// How one machine stands, as measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum MachineState {
    /// At or below the idle level (or asleep, as its firmware says).
    Off,
    /// Drawing power.
    On,
    /// No fresh reading.
    Unread,
}

/// What a group's machines draw, by the firmware's readings.
#[derive(Debug, Clone, Default)]
pub(super) struct Measure {
    /// Sum of the fresh readings.
    pub firmware_watts: f64,
    /// Mining workers whose machine has a fresh reading (their declared watts are replaced).
    pub read_mining_workers: usize,
    pub machines: usize,
    /// Machines with a fresh reading.
    pub read: usize,
    pub off: usize,
    /// Parallel to the machines.
    pub states: Vec<MachineState>,
    /// Each machine's fresh reading (W), parallel to the machines.
    pub readings: Vec<Option<f64>>,
    /// The first machines that are not off, and why.
    pub not_off: Vec<MachineIssue>,
}

/// A group's power settings and what the controller knows of its machines.
pub(super) struct GroupPower {
    pub choice: PowerSourceChoice,
    pub sleep: bool,
    pub idle_watts_per_worker: Option<f64>,
    pub management: Management,
    /// Refreshed once a second.
    pub machines: Vec<Machine>,
    pub measure: Measure,
    /// (when, watts) over the last minute: the pre-drain baseline.
    pub minute: VecDeque<(Instant, f64)>,
    /// When the group's machines were all measured off, continuously since.
    pub off_since: Option<Instant>,
    /// When sleep was last sent to each machine of this drain.
    pub slept_at: HashMap<ManagementAddress, Instant>,
    /// The resume's wakes.
    pub wakes: Option<Wakes>,
    /// The group's meter's last fresh reading (W), when it has one and it counts.
    pub meter_watts: Option<f64>,
}

/// A resume's wakes: batches sent in order, the next at `next_at`.
#[derive(Debug)]
pub(super) struct Wakes {
    pub queue: VecDeque<ManagementAddress>,
    /// Every machine this resume wakes (asked on every tick for every waiting session: a set,
    /// not a scan of the queue).
    pub all: std::collections::HashSet<ManagementAddress>,
    pub sent: std::collections::HashSet<ManagementAddress>,
    pub next_at: Instant,
    pub batch: usize,
}

impl GroupPower {
    pub fn new(group: &Group) -> GroupPower {
        GroupPower {
            choice: group.power_source,
            sleep: group.sleep,
            idle_watts_per_worker: group.idle_watts_per_worker,
            management: group.management.clone(),
            machines: Vec::new(),
            measure: Measure::default(),
            minute: VecDeque::new(),
            off_since: None,
            slept_at: HashMap::new(),
            wakes: None,
            meter_watts: None,
        }
    }

    /// Whether the group's machines are watched at all: for their power, or to sleep them.
    pub fn watched(&self) -> bool {
        self.sleep
            || matches!(
                self.choice,
                PowerSourceChoice::Auto | PowerSourceChoice::Firmware
            )
    }

    /// Whether the group's machines are listed each second: watched, or metered (the meter's
    /// idle level counts them).
    pub fn listed(&self) -> bool {
        self.watched() || self.meter_watts.is_some()
    }

    /// Whether the firmware's readings make the group's figure.
    fn firmware_counts(&self) -> bool {
        matches!(
            self.choice,
            PowerSourceChoice::Auto | PowerSourceChoice::Firmware
        )
    }

    /// Whether a meter reading makes the group's figure (`auto` or `meter`).
    pub fn meter_counts(&self) -> bool {
        matches!(
            self.choice,
            PowerSourceChoice::Auto | PowerSourceChoice::Meter
        )
    }

    /// Whether the group's drained state can rest on measured power: a fresh meter reading, or
    /// the firmware's figure with at least one machine read.
    pub fn measurable(&self) -> bool {
        self.meter_watts.is_some() || (self.firmware_counts() && self.measure.read > 0)
    }

    /// Whether a drain of this group is judged on measured power: hashgate sleeps its machines
    /// (it is the switch, so it must see them off), or a meter sees the whole rack (a PDU hook
    /// included). Other groups keep the share-silence witness, and `verified` says whether the
    /// power agreed when they were drained: a PDU hook's machines stop answering, and a drain
    /// must not wait out its timeout for readings that cannot come.
    pub fn judged_by_power(&self) -> bool {
        self.measurable() && (self.sleep || self.meter_watts.is_some())
    }

    /// The meter's verdict on a drain: off when it reads at or below the idle level of the
    /// group's machines (none: no meter reading, or no `idle_watts_per_worker` to judge by).
    fn meter_off(&self) -> Option<bool> {
        let (watts, idle) = (self.meter_watts?, self.idle_watts_per_worker?);
        Some(watts <= idle * self.machines.len().max(1) as f64)
    }

    /// Names the meter in the machines not off when it reads above the idle level.
    pub fn judge_meter(&mut self, meter: &str) {
        if self.meter_off() == Some(false)
            && let (Some(watts), Some(idle)) = (self.meter_watts, self.idle_watts_per_worker)
        {
            let level = idle * self.machines.len().max(1) as f64;
            self.measure.not_off.insert(
                0,
                MachineIssue {
                    worker: "(meter)".into(),
                    address: meter.to_owned(),
                    watts: Some(watts),
                    problem: format!(
                        "the group's meter reads {watts:.1} W, above its idle level {level:.1} W"
                    ),
                },
            );
        }
    }

    /// Watts drawn now with `mining_workers` mining: the fresh readings, plus the declared
    /// watts of mining workers whose machine has none; by source.
    pub fn watts(&self, mining_workers: usize, watts_per_worker: f64) -> Watts {
        if let Some(meter) = self.meter_watts {
            return Watts {
                total: meter,
                meter,
                firmware: 0.0,
                declared: 0.0,
                source: PowerSource::Meter,
            };
        }
        let (firmware, read_mining) = if self.firmware_counts() {
            (
                self.measure.firmware_watts,
                self.measure.read_mining_workers,
            )
        } else {
            (0.0, 0)
        };
        let declared = mining_workers.saturating_sub(read_mining) as f64 * watts_per_worker;
        let fully_read = self.firmware_counts()
            && self.measure.machines > 0
            && self.measure.read == self.measure.machines;
        Watts {
            total: firmware + declared,
            meter: 0.0,
            firmware,
            declared,
            source: if fully_read {
                PowerSource::Firmware
            } else {
                PowerSource::Declared
            },
        }
    }

    /// Records the draw now for the pre-drain baseline, when it is measured in full (a figure
    /// with a nameplate part, or taken while machines were still being found, is no baseline).
    pub fn sample(&mut self, now: Instant, watts: Watts) {
        if watts.source == PowerSource::Firmware {
            self.minute.push_back((now, watts.total));
        }
        while self
            .minute
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > BASELINE)
        {
            self.minute.pop_front();
        }
    }

    /// The mean draw over the last minute (`now` when there is no sample yet).
    pub fn baseline(&self, now: f64) -> f64 {
        if self.minute.is_empty() {
            return now;
        }
        self.minute.iter().map(|(_, w)| w).sum::<f64>() / self.minute.len() as f64
    }

    /// The machine that `worker` connected from `ip` is managed at.
    pub fn address_of(&self, worker: &str, ip: IpAddr) -> ManagementAddress {
        ManagementAddress::of(&self.management, worker, ip)
    }

    /// The group's machines now: its live sessions (ticket order) and, while a drain is in
    /// force, the roster's machines whose session ended.
    pub fn refresh_machines(&mut self, observed: &Observed, record: &GroupRecord) {
        let mut index: HashMap<ManagementAddress, usize> = HashMap::new();
        let mut machines: Vec<Machine> = Vec::with_capacity(observed.miners.len());
        let mut miners: Vec<_> = observed.miners.iter().collect();
        miners.sort_by_key(|m| m.ticket);
        for miner in miners {
            let address = self.address_of(&miner.name, miner.address.ip());
            match index.get(&address) {
                Some(&i) => machines[i].mining |= miner.mining,
                None => {
                    index.insert(address, machines.len());
                    machines.push(Machine {
                        worker: miner.name.to_string(),
                        address,
                        ticket: Some(miner.ticket),
                        mining: miner.mining,
                    });
                }
            }
        }
        if record.state != GroupState::Active
            && let Some(drain) = &record.drain
        {
            for entry in drain.roster.iter() {
                let Some(ip) = roster_ip(&entry.address) else {
                    continue;
                };
                let address = self.address_of(&entry.name, ip);
                if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(address) {
                    slot.insert(machines.len());
                    machines.push(Machine {
                        worker: entry.name.clone(),
                        address,
                        ticket: None,
                        mining: false,
                    });
                }
            }
        }
        self.machines = machines;
    }

    /// What the poller should watch of this group.
    pub fn targets(&self, group: &Arc<str>, fast: bool, into: &mut Vec<Target>) {
        if !self.watched() {
            return;
        }
        into.extend(self.machines.iter().map(|m| Target {
            worker: m.worker.clone(),
            group: Arc::clone(group),
            address: m.address,
            fast,
            credentials: self.management.credentials.clone(),
        }));
    }

    /// Measures the machines against the book: fresh readings (newer than `stale_ms`) count,
    /// each machine judged off or on.
    pub fn remeasure(&mut self, book: &PowerBook, now_ms: u64, stale_ms: u64) {
        let idle = self.idle_watts_per_worker;
        let cutoff = now_ms.saturating_sub(stale_ms);
        self.measure = book.read(|map| {
            let mut measure = Measure {
                machines: self.machines.len(),
                states: Vec::with_capacity(self.machines.len()),
                ..Measure::default()
            };
            for machine in &self.machines {
                let entry = map.get(&machine.address);
                let reading = entry.and_then(|e| {
                    e.watts
                        .filter(|_| e.read_at_ms.is_some_and(|t| t >= cutoff))
                        .map(|w| (w, e))
                });
                let (state, problem, watts) = match reading {
                    Some((watts, entry)) => {
                        measure.firmware_watts += watts;
                        measure.read += 1;
                        if machine.mining {
                            measure.read_mining_workers += 1;
                        }
                        let off = match idle {
                            Some(idle) => watts <= idle,
                            None => entry.asleep == Some(true),
                        };
                        if off {
                            (MachineState::Off, None, Some(watts))
                        } else {
                            let problem = command_error(entry).unwrap_or_else(|| {
                                if idle.is_none() && entry.asleep.is_none() {
                                    format!(
                                        "draws {watts:.1} W; its firmware does not say whether it sleeps (set idle_watts_per_worker)"
                                    )
                                } else {
                                    format!("draws {watts:.1} W")
                                }
                            });
                            (MachineState::On, Some(problem), Some(watts))
                        }
                    }
                    None => {
                        let problem = entry
                            .and_then(|e| command_error(e).or_else(|| e.error.clone()))
                            .unwrap_or_else(|| "not read yet".to_owned());
                        (MachineState::Unread, Some(problem), None)
                    }
                };
                if state == MachineState::Off {
                    measure.off += 1;
                }
                if let Some(problem) = problem
                    && measure.not_off.len() < MAX_LISTED
                {
                    measure.not_off.push(MachineIssue {
                        worker: machine.worker.clone(),
                        address: machine.address.to_string(),
                        watts,
                        problem,
                    });
                }
                measure.states.push(state);
                measure.readings.push(watts);
            }
            measure
        });
    }

    /// Whether the group is measured off: by its meter where it can judge, else every machine.
    pub fn all_off(&self) -> bool {
        let machines_off = self.measure.machines > 0 && self.measure.off == self.measure.machines;
        self.meter_off().unwrap_or(machines_off)
    }

    /// How long every machine has been measured off, as of `now` (none: one is not).
    pub fn off_for(&mut self, now: Instant) -> Option<Duration> {
        self.off_since = if self.all_off() {
            Some(self.off_since.unwrap_or(now))
        } else {
            None
        };
        self.off_since.map(|t| now.saturating_duration_since(t))
    }

    /// A committed transition: a new drain sleeps every machine afresh; a resume starts its
    /// wakes on the ramp's first tick; an active group has nothing asleep to track.
    pub fn on_transition(&mut self, from: GroupState, to: GroupState) {
        match to {
            GroupState::Draining if from != GroupState::Draining => {
                self.slept_at.clear();
                self.off_since = None;
            }
            GroupState::Resuming if from != GroupState::Resuming => self.wakes = None,
            GroupState::Active => {
                self.slept_at.clear();
                self.wakes = None;
            }
            _ => {}
        }
    }

    /// The machines to send sleep to now: not measured off, able to sleep as far as known, and
    /// never told in this drain or told `redispatch` ago (drift re-dispatch). Marks them told.
    pub fn due_sleeps(
        &mut self,
        book: &PowerBook,
        now: Instant,
        redispatch: Duration,
    ) -> Vec<ManagementAddress> {
        let mut due = Vec::new();
        book.read(|map| {
            for (machine, state) in self.machines.iter().zip(&self.measure.states) {
                if *state == MachineState::Off
                    || map
                        .get(&machine.address)
                        .is_some_and(|m| m.can_sleep == Some(false))
                {
                    continue;
                }
                let told = self.slept_at.get(&machine.address);
                if told.is_none_or(|at| now.saturating_duration_since(*at) >= redispatch) {
                    due.push(machine.address);
                }
            }
        });
        for address in &due {
            self.slept_at.insert(*address, now);
        }
        due
    }

    /// Starts a resume's wakes: every machine, sessions in ticket order first.
    pub fn start_wakes(&mut self, now: Instant, batch: usize) {
        self.wakes = Some(Wakes {
            queue: self.machines.iter().map(|m| m.address).collect(),
            all: self.machines.iter().map(|m| m.address).collect(),
            sent: Default::default(),
            next_at: now,
            batch,
        });
    }

    /// The next batch of wakes, when it is due.
    pub fn due_wakes(&mut self, now: Instant, interval: Duration) -> Vec<ManagementAddress> {
        let Some(wakes) = self.wakes.as_mut() else {
            return Vec::new();
        };
        if wakes.queue.is_empty() || now < wakes.next_at {
            return Vec::new();
        }
        let take = wakes.batch.min(wakes.queue.len());
        let batch: Vec<ManagementAddress> = wakes.queue.drain(..take).collect();
        wakes.sent.extend(batch.iter().copied());
        wakes.next_at = now + interval;
        batch
    }

    /// Whether the machine at `address` may get work on this resume: it was woken and the wake
    /// has been answered (taken or failed: a machine that could not be woken is no reason to
    /// keep its sessions without work), or it is not one of the group's machines to wake.
    pub fn awake(&self, book: &PowerBook, address: &ManagementAddress) -> bool {
        let Some(wakes) = &self.wakes else {
            return true;
        };
        if !wakes.sent.contains(address) {
            return !wakes.all.contains(address);
        }
        book.get(address).is_none_or(|m| {
            m.last_command
                .as_ref()
                .is_some_and(|c| c.switch == Switch::Wake && !c.pending)
        })
    }

    /// Whether `miner` may get work on this resume: always without `sleep`; with it, once
    /// its machine is [`GroupPower::awake`].
    pub fn miner_awake(&self, book: &PowerBook, miner: &MinerView) -> bool {
        !self.sleep || self.awake(book, &self.address_of(&miner.name, miner.address.ip()))
    }

    /// Every wake sent and answered (always, without `sleep`).
    pub fn wakes_done(&self, book: &PowerBook) -> bool {
        if !self.sleep {
            return true;
        }
        let Some(wakes) = &self.wakes else {
            return true;
        };
        wakes.queue.is_empty() && wakes.sent.iter().all(|a| self.awake(book, a))
    }
}

/// A group's power now, by source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Watts {
    pub total: f64,
    pub meter: f64,
    pub firmware: f64,
    pub declared: f64,
    /// Meter when the group's meter makes the figure; else firmware when every machine has a
    /// fresh reading, else declared (the figure holds a nameplate part).
    pub source: PowerSource,
}

impl Watts {
    /// The parts, by source, for the API and the metric series.
    pub fn by_source(&self) -> BTreeMap<PowerSource, f64> {
        BTreeMap::from([
            (PowerSource::Meter, self.meter),
            (PowerSource::Firmware, self.firmware),
            (PowerSource::Declared, self.declared),
        ])
    }
}

/// The last sleep or wake's failure, if it failed.
fn command_error(machine: &crate::power::MachinePower) -> Option<String> {
    let command = machine.last_command.as_ref()?;
    let error = command.error.as_ref()?;
    Some(format!("{}: {error}", command.switch.as_str()))
}

/// The IP of a roster entry's address (`ip:port`, or a bare IP).
fn roster_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn power(choice: PowerSourceChoice, idle: Option<f64>) -> GroupPower {
        let groups = crate::config::Groups::new(&[]).unwrap();
        let mut power = GroupPower::new(groups.default_group());
        power.choice = choice;
        power.idle_watts_per_worker = idle;
        power
    }

    #[test]
    fn declared_watts_fill_in_for_machines_without_a_reading() {
        let mut p = power(PowerSourceChoice::Auto, Some(20.0));
        p.measure = Measure {
            firmware_watts: 6_100.0,
            read_mining_workers: 2,
            machines: 3,
            read: 2,
            ..Measure::default()
        };
        let watts = p.watts(3, 3_250.0);
        assert_eq!((watts.firmware, watts.declared), (6_100.0, 3_250.0));
        assert_eq!(watts.total, 9_350.0);
        assert_eq!(watts.source, PowerSource::Declared, "one machine unread");
        p.measure.read = 3;
        p.measure.read_mining_workers = 3;
        p.measure.firmware_watts = 9_000.0;
        assert_eq!(p.watts(3, 3_250.0).source, PowerSource::Firmware);
        assert_eq!(p.watts(3, 3_250.0).total, 9_000.0);
        // A declared group ignores readings.
        p.choice = PowerSourceChoice::Declared;
        assert_eq!(p.watts(3, 3_250.0).total, 9_750.0);
        assert!(!p.measurable());
    }

    #[test]
    fn the_baseline_is_the_mean_of_the_last_minute() {
        let mut p = power(PowerSourceChoice::Auto, None);
        let start = Instant::now();
        assert_eq!(p.baseline(42.0), 42.0);
        let measured = |total| Watts {
            total,
            meter: 0.0,
            firmware: total,
            declared: 0.0,
            source: PowerSource::Firmware,
        };
        p.sample(start, measured(1_000.0));
        p.sample(start + Duration::from_secs(30), measured(3_000.0));
        let partly_declared = Watts {
            source: PowerSource::Declared,
            ..measured(9_000.0)
        };
        p.sample(start + Duration::from_secs(31), partly_declared);
        assert_eq!(p.baseline(0.0), 2_000.0, "only figures measured in full");
        p.sample(start + Duration::from_secs(61), measured(5_000.0));
        assert_eq!(p.baseline(0.0), 4_000.0, "the first sample aged out");
    }

    #[test]
    fn wakes_go_in_batches_and_only_when_due() {
        let mut p = power(PowerSourceChoice::Auto, None);
        p.machines = (1..=5)
            .map(|i| Machine {
                worker: format!("w{i}"),
                address: ManagementAddress::standard(IpAddr::from([10, 0, 0, i])),
                ticket: Some(u64::from(i)),
                mining: false,
            })
            .collect();
        let start = Instant::now();
        let interval = Duration::from_secs(30);
        p.start_wakes(start, 2);
        let first = p.due_wakes(start, interval);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].ip, IpAddr::from([10, 0, 0, 1]));
        assert!(
            p.due_wakes(start + Duration::from_secs(29), interval)
                .is_empty()
        );
        assert_eq!(p.due_wakes(start + interval, interval).len(), 2);
        assert_eq!(p.due_wakes(start + interval * 2, interval).len(), 1);
        assert!(p.due_wakes(start + interval * 3, interval).is_empty());
        // Not woken yet (no answer in the book): no work; not one of the group's: work.
        let book = PowerBook::default();
        assert!(p.awake(
            &book,
            &ManagementAddress::standard(IpAddr::from([10, 0, 0, 9]))
        ));
    }
}
