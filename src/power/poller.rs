//! The poller: one task that keeps every watched machine's power reading fresh and carries out
//! sleep and wake commands, without anyone waiting on a firmware.
//!
//! Each machine is read at `power.poll_interval` (at `fast_poll_interval` while its group drains
//! or resumes), first reads spread over the interval so 20,000 machines do not all ask at once;
//! at most `power.concurrency` calls are in flight, each bounded by `power.request_timeout`. A
//! machine whose calls fail backs off alone (doubling up to `power.max_backoff`); one that is
//! not recognised is detected again on its next turn. What is known lands in the [`PowerBook`],
//! which the group controller reads on its tick.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::detect::detect;
use super::driver::{DriverError, ManagementAddress, MinerDriver, Reading};
use crate::clock::unix_ms;
use crate::config::{Credentials, PowerConfig};

/// A machine to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its worker name (errors and the API name the machine by it).
    pub worker: String,
    /// Its group.
    pub group: Arc<str>,
    /// Where its management API is.
    pub address: ManagementAddress,
    /// Its group drains or resumes: read at the fast interval.
    pub fast: bool,
    /// The group's firmware credentials, for makes whose API needs them.
    pub credentials: Option<Arc<Credentials>>,
}

/// Sleep or wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Stop hashing, power the hashboards down.
    Sleep,
    /// Power up and hash again.
    Wake,
}

impl Switch {
    /// `sleep` or `wake`.
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::Sleep => "sleep",
            Switch::Wake => "wake",
        }
    }
}

/// The last sleep or wake sent to a machine and how it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandOutcome {
    /// Which.
    pub switch: Switch,
    /// Sent, no answer yet.
    pub pending: bool,
    /// The firmware's or the driver's error, once it failed.
    pub error: Option<String>,
    /// When it was sent (Unix ms).
    pub sent_at_ms: u64,
}

/// What is known of one machine's power.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MachinePower {
    /// Its worker name.
    pub worker: String,
    /// Its group.
    pub group: String,
    /// The firmware, once detected.
    pub firmware: Option<String>,
    /// Whether it can sleep through its driver, once detected.
    pub can_sleep: Option<bool>,
    /// The last good reading.
    pub watts: Option<f64>,
    /// Its own hashrate, TH/s, from the last good reading.
    pub hashrate_ths: Option<f64>,
    /// Whether the firmware said it sleeps, from the last good reading.
    pub asleep: Option<bool>,
    /// When the last good reading was taken (Unix ms).
    pub read_at_ms: Option<u64>,
    /// The last call's error, if it failed (cleared by a success).
    pub error: Option<String>,
    /// Calls failed in a row.
    pub failures: u32,
    /// The last sleep or wake command and its outcome.
    pub last_command: Option<CommandOutcome>,
}

/// Every watched machine's power, by management address; read by the group controller.
#[derive(Debug, Default)]
pub struct PowerBook {
    machines: Mutex<HashMap<ManagementAddress, MachinePower>>,
}

impl PowerBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ManagementAddress, MachinePower>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One machine.
    pub fn get(&self, address: &ManagementAddress) -> Option<MachinePower> {
        self.lock().get(address).cloned()
    }

    /// Every machine (a copy: the lock is held only for it).
    pub fn snapshot(&self) -> Vec<(ManagementAddress, MachinePower)> {
        self.lock()
            .iter()
            .map(|(address, power)| (*address, power.clone()))
            .collect()
    }

    /// Reads the machines under the lock, without copying them (the controller looks up a
    /// group's machines once a second).
    pub fn read<T>(&self, look: impl FnOnce(&HashMap<ManagementAddress, MachinePower>) -> T) -> T {
        look(&self.lock())
    }

    fn update(&self, address: ManagementAddress, change: impl FnOnce(&mut MachinePower)) {
        if let Some(machine) = self.lock().get_mut(&address) {
            change(machine);
        }
    }
}

/// What the group controller asks of machines: sleep or wake these.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerCommand {
    /// Which.
    pub switch: Switch,
    /// The machines.
    pub machines: Vec<ManagementAddress>,
}

/// How the poller is reached.
#[derive(Debug, Clone)]
pub struct PowerHandle {
    /// What is known.
    pub book: Arc<PowerBook>,
    /// The machines to watch (replaced whole).
    pub targets: watch::Sender<Vec<Target>>,
    /// Sleep and wake.
    pub commands: mpsc::Sender<PowerCommand>,
}

/// One watched machine's schedule.
struct Slot {
    target: Target,
    driver: Option<Arc<dyn MinerDriver>>,
    due: Instant,
    busy: bool,
    failures: u32,
}

/// A finished read.
struct Outcome {
    address: ManagementAddress,
    driver: Option<Arc<dyn MinerDriver>>,
    result: Result<Reading, DriverError>,
}

/// The poller task.
pub struct Poller {
    settings: PowerConfig,
    book: Arc<PowerBook>,
    targets: watch::Receiver<Vec<Target>>,
    commands: mpsc::Receiver<PowerCommand>,
    slots: HashMap<ManagementAddress, Slot>,
    /// When each machine is due, soonest first: a read starts without scanning every slot
    /// (an entry whose slot's `due` moved since is stale and skipped).
    queue: BinaryHeap<Reverse<(Instant, ManagementAddress)>>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Poller {
    /// The poller and its handle; nothing runs until [`Poller::run`].
    pub fn new(settings: PowerConfig, tracker: TaskTracker) -> (Poller, PowerHandle) {
        let book = Arc::new(PowerBook::default());
        let (targets_tx, targets) = watch::channel(Vec::new());
        let (commands_tx, commands) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let poller = Poller {
            settings,
            book: Arc::clone(&book),
            targets,
            commands,
            slots: HashMap::new(),
            queue: BinaryHeap::new(),
            permits,
            tracker,
        };
        let handle = PowerHandle {
            book,
            targets: targets_tx,
            commands: commands_tx,
        };
        (poller, handle)
    }

    /// Runs until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let (done_tx, mut done) = mpsc::channel::<Outcome>(1024);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                Ok(()) = self.targets.changed() => self.on_targets(),
                Some(outcome) = done.recv() => {
                    self.on_outcome(outcome);
                    // Its permit is free again: the next due machine need not wait for a tick.
                    self.start_due(&done_tx);
                }
                Some(command) = self.commands.recv() => self.on_command(command),
                _ = tick.tick() => self.start_due(&done_tx),
            }
        }
    }

    fn interval(&self, target: &Target) -> Duration {
        if target.fast {
            self.settings.fast_poll_interval
        } else {
            self.settings.poll_interval
        }
    }

    /// New machines are first read at a random point of their interval; a machine whose group
    /// starts a drain or a resume is read now.
    fn on_targets(&mut self) {
        let targets = self.targets.borrow_and_update().clone();
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for target in targets {
            seen.insert(target.address);
            let interval = self.interval(&target);
            match self.slots.get_mut(&target.address) {
                Some(slot) => {
                    if target.fast && !slot.target.fast && slot.due > now {
                        slot.due = now;
                        self.queue.push(Reverse((now, target.address)));
                    }
                    slot.target = target;
                }
                None => {
                    let spread = interval.mul_f64(fastrand::f64());
                    self.queue.push(Reverse((now + spread, target.address)));
                    self.book.lock().insert(
                        target.address,
                        MachinePower {
                            worker: target.worker.clone(),
                            group: target.group.to_string(),
                            ..MachinePower::default()
                        },
                    );
                    self.slots.insert(
                        target.address,
                        Slot {
                            target,
                            driver: None,
                            due: now + spread,
                            busy: false,
                            failures: 0,
                        },
                    );
                }
            }
        }
        self.slots.retain(|address, _| seen.contains(address));
        self.book.lock().retain(|address, _| seen.contains(address));
    }

    /// Starts the reads that are due, soonest first, as far as the permits go.
    fn start_due(&mut self, done: &mpsc::Sender<Outcome>) {
        let now = Instant::now();
        while let Some(Reverse((due, address))) = self.queue.peek().copied() {
            if due > now {
                return;
            }
            let Some(slot) = self.slots.get_mut(&address) else {
                self.queue.pop(); // no longer watched
                continue;
            };
            if slot.busy || slot.due != due {
                self.queue.pop(); // stale: its outcome or a command rescheduled it
                continue;
            }
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                return; // all permits in use: the next outcome or tick starts it
            };
            self.queue.pop();
            slot.busy = true;
            let (driver, done) = (slot.driver.clone(), done.clone());
            let credentials = slot.target.credentials.clone();
            let timeout = self.settings.request_timeout;
            self.tracker.spawn(async move {
                let _permit = permit;
                let (driver, result) = read_once(address, driver, credentials, timeout).await;
                let _ = done
                    .send(Outcome {
                        address,
                        driver,
                        result,
                    })
                    .await;
            });
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let Some(slot) = self.slots.get_mut(&outcome.address) else {
            return; // no longer watched
        };
        slot.busy = false;
        let now = Instant::now();
        let interval = if slot.target.fast {
            self.settings.fast_poll_interval
        } else {
            self.settings.poll_interval
        };
        match outcome.result {
            Ok(reading) => {
                slot.failures = 0;
                slot.due = now + interval;
                self.queue.push(Reverse((slot.due, outcome.address)));
                let driver = outcome.driver.clone();
                slot.driver = outcome.driver;
                self.book.update(outcome.address, |m| {
                    m.firmware = driver.as_ref().map(|d| d.firmware().to_owned());
                    m.can_sleep = driver.as_ref().map(|d| d.can_sleep());
                    m.watts = Some(reading.watts);
                    m.hashrate_ths = reading.hashrate_ths;
                    m.asleep = reading.asleep;
                    m.read_at_ms = Some(unix_ms());
                    m.error = None;
                    m.failures = 0;
                });
            }
            Err(error) => {
                slot.failures = slot.failures.saturating_add(1);
                let backoff = interval
                    .saturating_mul(1 << slot.failures.min(10))
                    .min(self.settings.max_backoff.max(interval));
                slot.due = now + backoff;
                self.queue.push(Reverse((slot.due, outcome.address)));
                // A driver that keeps failing for a reason a retry cannot fix is detected again.
                slot.driver = outcome.driver.filter(|_| error.transient());
                let (worker, group) = (slot.target.worker.clone(), slot.target.group.clone());
                // A machine with no supported firmware (stock firmware, a GPU rig, a firewalled
                // port) is common on a farm: named at debug, counted in the API, not a warning
                // per machine every poll.
                let not_detected = matches!(error, DriverError::NotDetected { .. });
                if slot.failures == 1 && !not_detected {
                    warn!(%worker, %group, address = %outcome.address, %error, "machine's power not read");
                } else {
                    debug!(%worker, %group, address = %outcome.address, %error, failures = slot.failures, retry_in = ?backoff, "machine's power still not read");
                }
                let failures = slot.failures;
                self.book.update(outcome.address, |m| {
                    m.error = Some(error.to_string());
                    m.failures = failures;
                });
            }
        }
    }

    /// Sends sleep or wake to each machine, bounded like the reads; the outcome goes into the
    /// book, and the machine is read again soon after (its draw shows whether it obeyed).
    fn on_command(&mut self, command: PowerCommand) {
        let PowerCommand {
            switch,
            machines: addresses,
        } = command;
        let what = switch.as_str();
        let now = Instant::now();
        let unknown = addresses
            .iter()
            .filter(|a| !self.slots.contains_key(a))
            .count();
        if unknown > 0 {
            warn!(
                unknown,
                command = what,
                "command for machines no longer watched (their sessions ended): not sent"
            );
        }
        for address in addresses {
            let Some(slot) = self.slots.get_mut(&address) else {
                continue;
            };
            let soon = now + self.settings.fast_poll_interval;
            if soon < slot.due && !slot.busy {
                slot.due = soon;
                self.queue.push(Reverse((soon, address)));
            }
            let (permits, book, driver) = (
                Arc::clone(&self.permits),
                Arc::clone(&self.book),
                slot.driver.clone(),
            );
            let sent_at_ms = unix_ms();
            book.update(address, |m| {
                m.last_command = Some(CommandOutcome {
                    switch,
                    pending: true,
                    error: None,
                    sent_at_ms,
                })
            });
            let (worker, group) = (slot.target.worker.clone(), slot.target.group.clone());
            let credentials = slot.target.credentials.clone();
            let timeout = self.settings.request_timeout;
            self.tracker.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let outcome = command_once(address, driver, credentials, switch, timeout).await;
                let error = match outcome {
                    Ok(()) => {
                        debug!(%worker, %group, %address, command = what, "machine took the command");
                        None
                    }
                    Err(error) => {
                        warn!(%worker, %group, %address, command = what, %error, "machine did not take the command");
                        Some(error.to_string())
                    }
                };
                book.update(address, |m| {
                    m.last_command = Some(CommandOutcome {
                        switch,
                        pending: false,
                        error,
                        sent_at_ms,
                    })
                });
            });
        }
    }
}

/// Detects the machine if needed, then reads it, all within `timeout`.
async fn read_once(
    address: ManagementAddress,
    driver: Option<Arc<dyn MinerDriver>>,
    credentials: Option<Arc<Credentials>>,
    timeout: Duration,
) -> (Option<Arc<dyn MinerDriver>>, Result<Reading, DriverError>) {
    let limit = DriverError::Timeout {
        what: "power reading",
        after: timeout,
    };
    // A driver that was known stays known over a timeout (a slow reply is no reason to detect
    // the firmware again).
    let known = driver.clone();
    let work = async {
        let driver = match driver {
            Some(driver) => driver,
            None => match detect(address, credentials.as_deref(), timeout).await {
                Ok(driver) => driver,
                Err(error) => return (None, Err(error)),
            },
        };
        let result = driver.read().await;
        (Some(driver), result)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(done) => done,
        Err(_) => (known, Err(limit)),
    }
}

/// Detects the machine if needed, then sends sleep or wake, within `timeout`.
async fn command_once(
    address: ManagementAddress,
    driver: Option<Arc<dyn MinerDriver>>,
    credentials: Option<Arc<Credentials>>,
    switch: Switch,
    timeout: Duration,
) -> Result<(), DriverError> {
    let work = async {
        let driver = match driver {
            Some(driver) => driver,
            None => detect(address, credentials.as_deref(), timeout).await?,
        };
        match switch {
            Switch::Sleep => driver.sleep().await,
            Switch::Wake => driver.wake().await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| DriverError::Timeout {
            what: switch.as_str(),
            after: timeout,
        })?
}
