//! A load run's report: what the JSON file holds and the table printed at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::procstat::ProcSample;
use super::run::{LoadPlan, WindowJobs};
use super::stats::LatencySummary;
use super::swarm::Record;

/// The measured process's resources over a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// Before the first connection.
    pub start: ProcSample,
    /// Once every miner had a job.
    pub after_ramp: ProcSample,
    /// At the window's end.
    pub end: ProcSample,
    /// (after ramp - start) / miners with a job.
    pub rss_per_miner_kib: f64,
    /// Its CPU time in the window per share the pool accepted in it (0 shares: 0).
    pub cpu_per_forwarded_share_us: f64,
    /// Its CPU time in the window per second of it (1.0 = one core).
    pub cores: f64,
}

impl Resources {
    /// The figures from the samples, the miners held, and the pool's accepted shares over the
    /// window.
    pub fn of(
        start: ProcSample,
        after_ramp: ProcSample,
        window_start: ProcSample,
        end: ProcSample,
        miners: u64,
        forwarded: u64,
        window: Duration,
    ) -> Resources {
        let cpu = (end.cpu_seconds - window_start.cpu_seconds).max(0.0);
        Resources::from_samples([start, after_ramp, end], cpu, miners, forwarded, window)
    }

    /// The figures from (start, after ramp, end) samples and the CPU seconds of the window.
    fn from_samples(
        [start, after_ramp, end]: [ProcSample; 3],
        cpu: f64,
        miners: u64,
        forwarded: u64,
        window: Duration,
    ) -> Resources {
        Resources {
            start,
            after_ramp,
            end,
            rss_per_miner_kib: if miners == 0 {
                0.0
            } else {
                after_ramp.rss_kib.saturating_sub(start.rss_kib) as f64 / miners as f64
            },
            cpu_per_forwarded_share_us: if forwarded == 0 {
                0.0
            } else {
                cpu / forwarded as f64 * 1e6
            },
            cores: cpu / window.as_secs_f64().max(1e-9),
        }
    }
}

/// The measured processes (added up) at one moment of the window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SeriesPoint {
    /// Since the window began.
    pub seconds: f64,
    /// RSS, CPU and open files then.
    pub sample: ProcSample,
}

/// How much a series moved: (highest - lowest) / lowest, in percent, of `pick` over `points`.
pub fn spread_percent(points: &[SeriesPoint], pick: fn(&ProcSample) -> u64) -> f64 {
    let values = points.iter().map(|p| pick(&p.sample));
    let (Some(low), Some(high)) = (values.clone().min(), values.max()) else {
        return 0.0;
    };
    if low == 0 {
        return 0.0;
    }
    (high - low) as f64 / low as f64 * 100.0
}

/// One proxy instance of a run against several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    /// Where its miners connected.
    pub target: String,
    /// Its process.
    pub pid: u32,
    /// Its resources; per miner and per share by its own miners and their shares.
    pub resources: Resources,
    /// Fan-out to its own miners.
    pub fan_out: LatencySummary,
}

impl Resources {
    /// Several instances as one: their samples added up, per miner over all miners held, per
    /// share over all shares forwarded.
    pub fn total(
        instances: &[Instance],
        miners: u64,
        forwarded: u64,
        window: Duration,
    ) -> Resources {
        let add = |pick: fn(&Resources) -> ProcSample| {
            instances
                .iter()
                .map(|i| pick(&i.resources))
                .fold(ProcSample::default(), |a, b| ProcSample {
                    rss_kib: a.rss_kib + b.rss_kib,
                    cpu_seconds: a.cpu_seconds + b.cpu_seconds,
                    open_files: a.open_files + b.open_files,
                })
        };
        let samples = [add(|r| r.start), add(|r| r.after_ramp), add(|r| r.end)];
        let cores: f64 = instances.iter().map(|i| i.resources.cores).sum();
        Resources::from_samples(
            samples,
            cores * window.as_secs_f64(),
            miners,
            forwarded,
            window,
        )
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Where the miners connected (the first target when several).
    pub target: String,
    /// Every target, when the miners were spread over several proxy instances.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Child processes the swarm ran in (0: the tool's own process).
    #[serde(default)]
    pub processes: usize,
    /// Straight to the pool (the baseline).
    pub direct: bool,
    /// Miners asked for.
    pub miners: usize,
    /// Connected.
    pub connected: u64,
    /// Authorized and given a job.
    pub ready: u64,
    /// Connections that ended before the run did.
    pub closed: u64,
    /// From the first connection until every miner had a job (or the ramp gave up).
    pub ramp_seconds: f64,
    /// TCP connect time.
    pub connect: LatencySummary,
    /// Subscribe to authorize answered.
    pub handshake: LatencySummary,
    /// The measured window.
    pub window_seconds: f64,
    /// Shares per second asked for.
    pub shares_per_second_planned: f64,
    /// Shares submitted in the window.
    pub submitted: u64,
    /// Answered true in the window.
    pub accepted: u64,
    /// Answered otherwise, by Stratum error code.
    pub rejected: BTreeMap<String, u64>,
    /// Accepted per second of the window.
    pub shares_per_second: f64,
    /// Submit to reply.
    pub round_trip: LatencySummary,
    /// Jobs the pool published in the window (old enough to have arrived).
    pub jobs: u64,
    /// Notifies received in the window.
    pub notifies: u64,
    /// (miner, job) pairs that never arrived.
    pub missing_notifies: u64,
    /// Notifies of a job the miner already had.
    pub duplicate_notifies: u64,
    /// Pool send to the kernel's receive stamp at each miner.
    pub fan_out: LatencySummary,
    /// Shares answered true over the whole run.
    pub accepted_total: u64,
    /// Shares the pool accepted over the whole run.
    pub pool_accepted_total: u64,
    /// Shares the pool refused as stale over the whole run: forwarded for a job the pool had
    /// just replaced with a clean one (the race every proxy has; counted, not lost).
    pub pool_stale_total: u64,
    /// Answered true, yet neither accepted nor refused as stale by the pool (meaningful when
    /// the pool's difficulty is at most the miners': then every share is forwarded).
    pub lost_shares: u64,
    /// What went wrong, by kind.
    pub errors: BTreeMap<String, u64>,
    /// The measured process (with `--proxy-pid`); with several, all of them added up.
    pub proxy: Option<Resources>,
    /// Each measured process, with several `--proxy-pid`s.
    #[serde(default)]
    pub instances: Vec<Instance>,
    /// The tool's own CPU over the run (1.0 = one core): near 1.0, the tool was the limit.
    pub tool_cores: Option<f64>,
    /// The measured processes sampled through the window (with `--sample-every`).
    #[serde(default)]
    pub series: Vec<SeriesPoint>,
}

impl LoadReport {
    /// The report of a run from its record.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        target: SocketAddr,
        plan: &LoadPlan,
        record: &Record,
        window_jobs: WindowJobs,
        (ramp, window): (Duration, Duration),
        (pool_accepted_total, pool_stale_total): (u64, u64),
        (proxy, instances): (Option<Resources>, Vec<Instance>),
        tool_cores: Option<f64>,
    ) -> LoadReport {
        LoadReport {
            target: target.to_string(),
            targets: plan.targets.iter().map(ToString::to_string).collect(),
            processes: plan.processes,
            direct: plan.targets.is_empty(),
            miners: plan.miners,
            connected: record.connected,
            ready: record.ready,
            closed: record.closed,
            ramp_seconds: ramp.as_secs_f64(),
            connect: record.connect.summary(),
            handshake: record.handshake.summary(),
            window_seconds: window.as_secs_f64(),
            shares_per_second_planned: plan.shares_per_second,
            submitted: record.submitted,
            accepted: record.accepted,
            rejected: record
                .rejected
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            shares_per_second: record.accepted as f64 / window.as_secs_f64().max(1e-9),
            round_trip: record.round_trip.summary(),
            jobs: window_jobs.jobs,
            notifies: record.notifies,
            missing_notifies: window_jobs.missing,
            duplicate_notifies: record.duplicate_notifies,
            fan_out: record.fan_out.summary(),
            accepted_total: record.accepted_total,
            pool_accepted_total,
            pool_stale_total,
            lost_shares: record
                .accepted_total
                .saturating_sub(pool_accepted_total + pool_stale_total),
            errors: record.errors.clone(),
            proxy,
            instances,
            tool_cores,
            series: Vec::new(),
        }
    }
}

fn latency(f: &mut fmt::Formatter<'_>, name: &str, l: &LatencySummary) -> fmt::Result {
    writeln!(
        f,
        "  {name:<22} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = if self.direct {
            "the pool, direct"
        } else {
            "target"
        };
        writeln!(f, "load run against {} ({to})", self.target)?;
        writeln!(
            f,
            "  miners {} asked, {} connected, {} with a job, {} closed; ramp {:.1} s",
            self.miners, self.connected, self.ready, self.closed, self.ramp_seconds
        )?;
        writeln!(
            f,
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p99", "p99.9", "max"
        )?;
        latency(f, "connect", &self.connect)?;
        latency(f, "handshake", &self.handshake)?;
        latency(f, "submit round trip", &self.round_trip)?;
        latency(f, "job fan-out", &self.fan_out)?;
        writeln!(
            f,
            "  window {:.1} s: {} submitted, {} accepted ({:.0}/s of {:.0}/s planned), rejected {:?}",
            self.window_seconds,
            self.submitted,
            self.accepted,
            self.shares_per_second,
            self.shares_per_second_planned,
            self.rejected
        )?;
        writeln!(
            f,
            "  jobs {}: {} notifies, {} missing, {} duplicate",
            self.jobs, self.notifies, self.missing_notifies, self.duplicate_notifies
        )?;
        writeln!(
            f,
            "  run: {} accepted by the target, {} by the pool, {} stale at the pool, {} lost",
            self.accepted_total, self.pool_accepted_total, self.pool_stale_total, self.lost_shares
        )?;
        if !self.errors.is_empty() {
            writeln!(f, "  errors: {:?}", self.errors)?;
        }
        if let Some(p) = &self.proxy {
            writeln!(
                f,
                "  proxy: RSS {} -> {} -> {} KiB ({:.2} KiB per miner), open files {} -> {} -> {}",
                p.start.rss_kib,
                p.after_ramp.rss_kib,
                p.end.rss_kib,
                p.rss_per_miner_kib,
                p.start.open_files,
                p.after_ramp.open_files,
                p.end.open_files
            )?;
            writeln!(
                f,
                "  proxy CPU in the window: {:.3} cores, {:.1} us per forwarded share",
                p.cores, p.cpu_per_forwarded_share_us
            )?;
        }
        if self.instances.len() > 1 {
            writeln!(
                f,
                "  {:<21} {:>8} {:>10} {:>10} {:>11} {:>7} {:>14}",
                "instance", "pid", "RSS KiB", "KiB/miner", "open files", "cores", "fan-out p99 ms"
            )?;
            for i in &self.instances {
                let r = &i.resources;
                writeln!(
                    f,
                    "  {:<21} {:>8} {:>10} {:>10.2} {:>11} {:>7.3} {:>14.1}",
                    i.target,
                    i.pid,
                    r.end.rss_kib,
                    r.rss_per_miner_kib,
                    r.end.open_files,
                    r.cores,
                    i.fan_out.p99_ms
                )?;
            }
        }
        if let (Some(first), Some(last)) = (self.series.first(), self.series.last()) {
            writeln!(
                f,
                "  over the window ({} samples, {:.0} s to {:.0} s): RSS {} -> {} KiB, spread {:.1}%; open files {} -> {}, spread {:.1}%",
                self.series.len(),
                first.seconds,
                last.seconds,
                first.sample.rss_kib,
                last.sample.rss_kib,
                spread_percent(&self.series, |s| s.rss_kib),
                first.sample.open_files,
                last.sample.open_files,
                spread_percent(&self.series, |s| s.open_files),
            )?;
        }
        if let Some(cores) = self.tool_cores {
            writeln!(f, "  load tool CPU: {cores:.3} cores")?;
        }
        Ok(())
    }
}
