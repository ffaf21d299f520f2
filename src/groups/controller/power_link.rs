//! The controller's side of the power poller: once a second it tells the poller which machines
//! to watch (fast while their group drains or resumes), measures each group against the
//! [`PowerBook`](crate::power::PowerBook), and sends sleep to the machines of draining and
//! drained groups that are not off (again to one whose power drifts back up) and a resume's
//! wakes in batches. Nothing here waits on a firmware: commands are queued with `try_send`,
//! outcomes come back through the book.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::group::GroupRuntime;
use super::observe::Observed;
use crate::clock::unix_ms;
use crate::config::{Config, PowerConfig};
use crate::groups::state::{GroupRecord, GroupState};
use crate::metrics::Metrics;
use crate::power::{ManagementAddress, MeterBook, PowerCommand, PowerHandle, Switch, Target};

/// How often machines are re-listed and groups re-measured.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// The poller's handle and settings, and when the groups were last measured.
pub(super) struct PowerLink {
    pub handle: PowerHandle,
    /// Per-worker power series (`api.per_worker_metrics`), and the ones set last time.
    pub per_worker: Option<(Metrics, HashSet<(String, String)>)>,
    /// The groups' meters.
    pub meters: Arc<MeterBook>,
    pub settings: PowerConfig,
    pub refreshed: Option<Instant>,
}

impl PowerLink {
    /// The controller's side of the poller and the meters, by `[power]` and
    /// `api.per_worker_metrics`.
    pub fn new(
        handle: PowerHandle,
        meters: Arc<MeterBook>,
        config: &Config,
        metrics: &Metrics,
    ) -> PowerLink {
        PowerLink {
            handle,
            per_worker: (config.api.per_worker_metrics).then(|| (metrics.clone(), HashSet::new())),
            meters,
            settings: config.power.clone(),
            refreshed: None,
        }
    }

    /// Whether the machines are due to be listed and measured again.
    pub fn due(&self, now: Instant) -> bool {
        self.refreshed
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH)
    }

    /// A reading older than this is no longer the machine's draw: three polls missed.
    fn stale_ms(&self) -> u64 {
        let limit = self.settings.poll_interval * 3 + self.settings.request_timeout;
        u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }

    /// Lists every group's machines (`observed` lists the miners of watched groups), hands
    /// them to the poller, measures each group, records the draw of mining groups, and sends
    /// sleep where a drain with `sleep` is in force.
    pub fn refresh(
        &mut self,
        groups: &mut [GroupRuntime],
        records: &[GroupRecord],
        observed: &[Observed],
        now: Instant,
    ) {
        self.refreshed = Some(now);
        let now_ms = unix_ms();
        let stale_ms = self.stale_ms();
        let mut targets: Vec<Target> = Vec::new();
        for ((runtime, record), observed) in groups.iter_mut().zip(records).zip(observed) {
            let power = &mut runtime.power;
            let meter = self.meters.get(&runtime.name);
            power.meter_watts = meter
                .as_ref()
                .filter(|_| power.meter_counts())
                .and_then(|m| {
                    m.watts
                        .filter(|_| m.read_at_ms.is_some_and(|t| t + stale_ms >= now_ms))
                });
            if !power.listed() {
                continue;
            }
            power.refresh_machines(observed, record);
            power.remeasure(&self.handle.book, now_ms, stale_ms);
            if let Some(meter) = &meter {
                power.judge_meter(&meter.meter);
            }
            let fast = record.state != GroupState::Active;
            power.targets(&runtime.name, fast, &mut targets);
        }
        for (runtime, (record, observed)) in groups.iter_mut().zip(records.iter().zip(observed)) {
            if record.state == GroupState::Active {
                let watts = runtime
                    .power
                    .watts(observed.mining, runtime.policy.watts_per_worker);
                runtime.power.sample(now, watts);
            }
        }
        self.publish_workers(groups);
        self.handle.targets.send_if_modified(|current| {
            if *current == targets {
                false
            } else {
                *current = targets;
                true
            }
        });
        for (runtime, record) in groups.iter_mut().zip(records) {
            let in_drain = matches!(record.state, GroupState::Draining | GroupState::Drained);
            if runtime.power.sleep && in_drain {
                self.sleep_due(runtime, now);
            }
        }
    }

    /// Sets each read machine's `hashgate_worker_power_watts` and removes the series of
    /// machines no longer read (only with per-worker metrics).
    fn publish_workers(&mut self, groups: &[GroupRuntime]) {
        let Some((metrics, set)) = self.per_worker.as_mut() else {
            return;
        };
        let mut now = HashSet::new();
        for runtime in groups {
            let power = &runtime.power;
            for (machine, reading) in power.machines.iter().zip(&power.measure.readings) {
                if let Some(watts) = reading {
                    let labels = (machine.worker.clone(), runtime.name.to_string());
                    metrics
                        .groups
                        .worker_power_watts
                        .with_label_values(&[&labels.0, &labels.1])
                        .set(*watts);
                    now.insert(labels);
                }
            }
        }
        for (worker, group) in set.difference(&now) {
            let _ = metrics
                .groups
                .worker_power_watts
                .remove_label_values(&[worker, group]);
        }
        *set = now;
    }

    /// Sends sleep to the machines of a draining or drained group with `sleep` on that are not
    /// measured off (each again after `power.redispatch` while it stays on).
    fn sleep_due(&self, runtime: &mut GroupRuntime, now: Instant) {
        let due = runtime
            .power
            .due_sleeps(&self.handle.book, now, self.settings.redispatch);
        if due.is_empty() {
            return;
        }
        let first = runtime.power.slept_at.len() == due.len();
        if first {
            info!(group = %runtime.name, machines = due.len(), "sleeping the group's machines");
        } else {
            info!(group = %runtime.name, machines = due.len(), "machines not off: sleep sent again");
        }
        if !self.send(Switch::Sleep, due.clone(), &runtime.name) {
            for address in &due {
                runtime.power.slept_at.remove(address);
            }
        }
    }

    /// Sends the resume's next batch of wakes when it is due (groups with `sleep`).
    pub fn wake_due(&self, runtime: &mut GroupRuntime, now: Instant) {
        if !runtime.power.sleep {
            return;
        }
        if runtime.power.wakes.is_none() {
            let batch = self.settings.wake_batch(runtime.power.machines.len());
            runtime.power.start_wakes(now, batch);
        }
        let due = runtime.power.due_wakes(now, self.settings.wake_interval);
        if due.is_empty() {
            return;
        }
        info!(group = %runtime.name, machines = due.len(), "waking a batch of the group's machines");
        if !self.send(Switch::Wake, due.clone(), &runtime.name)
            && let Some(wakes) = runtime.power.wakes.as_mut()
        {
            for address in due.iter().rev() {
                wakes.sent.remove(address);
                wakes.queue.push_front(*address);
            }
        }
    }

    /// Queues a command for the poller without waiting; false when its queue is full (tried
    /// again on the next refresh).
    fn send(&self, switch: Switch, machines: Vec<ManagementAddress>, group: &str) -> bool {
        match self
            .handle
            .commands
            .try_send(PowerCommand { switch, machines })
        {
            Ok(()) => true,
            Err(error) => {
                warn!(group, command = switch.as_str(), %error, "power command not queued; tried again");
                false
            }
        }
    }
}
