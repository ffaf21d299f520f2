//! One load run: the embedded pool, the swarm against the target, then the phases a report
//! states: the ramp (connections opened at the set rate until every miner has a job), a warm-up,
//! the measured window, and the end (submits stopped, every share's fate settled).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::procstat::{self, ProcSample};
use super::report::{Instance, LoadReport, Resources, SeriesPoint};
use super::slices::{SliceError, Slices};
use super::swarm::{self, JobClock, Record, SharedRecord, Stops, SwarmPlan};
use crate::sim::{SimPool, SimPoolConfig};

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Where the miners connect, miner `i` to `targets[i % targets.len()]` (several proxy
    /// instances); empty: straight to the embedded pool (the baseline of what a proxy adds).
    pub targets: Vec<SocketAddr>,
    /// Miners.
    pub miners: usize,
    /// New connections per second.
    pub connect_rate: f64,
    /// Shares per second over all miners (0: none, an idle swarm).
    pub shares_per_second: f64,
    /// Miners ask for version rolling first.
    pub version_rolling: bool,
    /// Where the embedded pool listens (the proxy's upstream).
    pub pool_listen: SocketAddr,
    /// The pool's share difficulty.
    pub pool_difficulty: f64,
    /// A new job this often.
    pub job_interval: Duration,
    /// After the ramp, before the window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// The measured processes (the proxy instances, in the order of `targets`), for their
    /// memory, CPU and open files.
    pub proxy_pids: Vec<u32>,
    /// Child processes the swarm is spread over (0: as many as the open-file limit needs, none
    /// when this process can hold every miner).
    pub processes: usize,
    /// The program the children run (`hashgate` itself: `hashgate load swarm-slice`).
    pub program: Option<PathBuf>,
    /// Sample the measured processes this often in the window (their RSS and open files over
    /// a long run: flat, or growing).
    pub sample_every: Option<Duration>,
    /// Print progress to stderr during the ramp (a line rewritten in place: for a terminal).
    pub progress: bool,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// More sockets than this process may open (each miner is one; straight to the embedded
    /// pool, its end of each connection is another).
    #[error(
        "{miners} miners need {needed} open files in one process, the limit is {limit} (ulimit -n): spread them over more --processes; straight to the embedded pool, its ends of every connection are in the parent process"
    )]
    OpenFiles {
        /// Miners asked for.
        miners: usize,
        /// Files they need.
        needed: u64,
        /// RLIMIT_NOFILE.
        limit: u64,
    },
    /// The swarm needs child processes and no program to run them was given.
    #[error("{miners} miners need {processes} child processes and no program to run them")]
    NoProgram {
        /// Miners asked for.
        miners: usize,
        /// Children needed.
        processes: usize,
    },
    /// The children failed.
    #[error(transparent)]
    Slices(#[from] SliceError),
    /// The embedded pool could not listen.
    #[error("the embedded pool cannot listen on {addr}: {source}")]
    Pool {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Jobs whose miners are counted as missing only after this long (one still in flight at the
/// window's end is not missing).
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// Files the tool needs beyond its miners' sockets (the pool's listener and upstream side,
/// stdio, /proc reads).
const SPARE_FILES: u64 = 64;

/// This process's open-file limit (RLIMIT_NOFILE, soft).
fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        u64::MAX
    }
}

/// Child processes a swarm of `miners` needs under an open-file `limit` (0: it fits here).
fn processes_needed(miners: usize, limit: u64) -> usize {
    let per_process = limit.saturating_sub(SPARE_FILES).max(1) as usize;
    if miners <= per_process {
        0
    } else {
        miners.div_ceil(per_process)
    }
}

/// The swarm, in this process or spread over children.
enum Running {
    Here {
        record: SharedRecord,
        stops: Stops,
        starter: tokio::task::JoinHandle<()>,
    },
    Children(Slices),
}

impl Running {
    /// (connected, ready, closed).
    fn progress(&self) -> (u64, u64, u64) {
        match self {
            Running::Here { record, .. } => {
                let r = swarm::lock(record);
                (r.connected, r.ready, r.closed)
            }
            Running::Children(slices) => slices.progress(),
        }
    }

    fn restart_window(&self) {
        match self {
            Running::Here { record, .. } => swarm::lock(record).restart_window(),
            Running::Children(slices) => slices.tell("window"),
        }
    }

    async fn snapshot(&mut self) -> Result<Record, LoadError> {
        match self {
            Running::Here { record, .. } => Ok(swarm::lock(record).clone()),
            Running::Children(slices) => Ok(slices.record("snapshot").await?),
        }
    }

    fn stop_submits(&self) {
        match self {
            Running::Here { stops, .. } => stops.submits.cancel(),
            Running::Children(slices) => slices.tell("stop-submits"),
        }
    }

    /// Closes every miner; the final record.
    async fn stop(self) -> Result<Record, LoadError> {
        match self {
            Running::Here {
                record,
                stops,
                starter,
            } => {
                stops.all.cancel();
                let _ = starter.await;
                Ok(swarm::lock(&record).clone())
            }
            Running::Children(mut slices) => {
                let record = slices.record("stop").await?;
                slices.wait().await;
                Ok(record)
            }
        }
    }

    /// The tool's processes: this one and its children.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        if let Running::Children(slices) = self {
            pids.extend(slices.pids());
        }
        pids
    }
}

/// The sum of the samples of several processes (`None` if any could not be read).
fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    pids.iter().try_fold(ProcSample::default(), |sum, &pid| {
        let s = procstat::sample(pid)?;
        Some(ProcSample {
            rss_kib: sum.rss_kib + s.rss_kib,
            cpu_seconds: sum.cpu_seconds + s.cpu_seconds,
            open_files: sum.open_files + s.open_files,
        })
    })
}

/// Runs the plan; the report of what was measured.
pub async fn run_load(plan: &LoadPlan) -> Result<LoadReport, LoadError> {
    let direct = plan.targets.is_empty();
    let limit = open_file_limit();
    let processes = match plan.processes {
        0 => processes_needed(plan.miners, limit),
        n => n,
    };
    // This process holds the miners' sockets unless children do, and the pool's ends of them
    // when the swarm connects straight to it; a child holds its part of the miners.
    let direct_files = if direct { plan.miners as u64 } else { 0 };
    let (here, per_child) = if processes == 0 {
        (plan.miners as u64 + direct_files, 0)
    } else {
        (direct_files, plan.miners.div_ceil(processes) as u64)
    };
    let needed = here.max(per_child) + SPARE_FILES;
    if needed > limit {
        return Err(LoadError::OpenFiles {
            miners: plan.miners,
            needed,
            limit,
        });
    }
    let program = match (&plan.program, processes) {
        (_, 0) => None,
        (Some(program), _) => Some(program.clone()),
        (None, processes) => {
            return Err(LoadError::NoProgram {
                miners: plan.miners,
                processes,
            });
        }
    };
    let pool = SimPool::start(SimPoolConfig {
        listen: plan.pool_listen,
        difficulty: plan.pool_difficulty,
        job_interval: plan.job_interval,
        // Clean jobs only now and then: most jobs are plain updates, as on a real pool.
        clean_every: 10,
        ..SimPoolConfig::default()
    })
    .await
    .map_err(|source| LoadError::Pool {
        addr: plan.pool_listen,
        source,
    })?;
    let targets = if direct {
        vec![pool.addr]
    } else {
        plan.targets.clone()
    };
    let stats = Arc::clone(&pool.stats);
    let clock: JobClock = Arc::new(move |sequence| stats.job_sent_ns(sequence));
    let sample_proxies = || -> Vec<Option<ProcSample>> {
        plan.proxy_pids
            .iter()
            .map(|&pid| procstat::sample(pid))
            .collect()
    };
    let proxy_start = sample_proxies();

    let swarm_plan = SwarmPlan {
        targets: targets.clone(),
        miners: plan.miners,
        first: 0,
        connect_rate: plan.connect_rate,
        shares_per_second: plan.shares_per_second,
        version_rolling: plan.version_rolling,
        worker_prefix: "load".into(),
    };
    let ramp_started = Instant::now();
    let mut running = match program {
        None => {
            let record: SharedRecord = Arc::default();
            let stops = Stops::default();
            let starter = {
                let (record, clock, stops) =
                    (Arc::clone(&record), Arc::clone(&clock), stops.clone());
                tokio::spawn(
                    async move { swarm::start(&swarm_plan, &record, &clock, &stops).await },
                )
            };
            Running::Here {
                record,
                stops,
                starter,
            }
        }
        Some(program) => {
            let stats = Arc::clone(&pool.stats);
            Running::Children(Slices::start(
                &program,
                &swarm_plan,
                processes,
                Arc::clone(&clock),
                Arc::new(move || stats.jobs_published()),
            )?)
        }
    };
    let tool_pids = running.pids();
    let tool_start = sample_all(&tool_pids);
    // The ramp: until every miner has a job, or the connect schedule plus 30 s passed.
    let ramp_limit = Duration::from_secs_f64(plan.miners as f64 / plan.connect_rate.max(1.0))
        + Duration::from_secs(30);
    loop {
        let (connected, ready, closed) = running.progress();
        if plan.progress {
            eprint!(
                "\rramp: {connected:>7} connected, {ready:>7} with a job, {closed} closed of {} ",
                plan.miners
            );
        }
        if ready as usize >= plan.miners || ramp_started.elapsed() >= ramp_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if plan.progress {
        eprintln!();
    }
    let ramp = ramp_started.elapsed();
    let proxy_ramped = sample_proxies();

    tokio::time::sleep(plan.warmup).await;
    running.restart_window();
    let first_job = pool.stats.jobs_published() + 1;
    let proxy_window = sample_proxies();
    let pool_window = pool
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let window_started = Instant::now();
    let mut series = Vec::new();
    match plan.sample_every {
        Some(every) if !plan.proxy_pids.is_empty() => {
            let end = tokio::time::Instant::now() + plan.duration;
            let mut next = tokio::time::Instant::now();
            while next < end {
                tokio::time::sleep_until(next).await;
                if let Some(sample) = sample_all(&plan.proxy_pids) {
                    series.push(SeriesPoint {
                        seconds: window_started.elapsed().as_secs_f64(),
                        sample,
                    });
                }
                next += every.max(Duration::from_millis(100));
            }
            tokio::time::sleep_until(end).await;
        }
        _ => tokio::time::sleep(plan.duration).await,
    }
    let window = window_started.elapsed();
    let proxy_end = sample_proxies();
    let pool_end = pool
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let snapshot = running.snapshot().await?;
    let window_jobs = take_window(&snapshot, &pool, first_job);

    // The end: no more submits, the replies still read; then every share's fate is known.
    running.stop_submits();
    tokio::time::sleep(IN_FLIGHT).await;
    let tool_end = sample_all(&tool_pids);
    let end = running.stop().await?;
    let pool_accepted_total = pool
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let pool_stale_total = pool.stats.stale.load(std::sync::atomic::Ordering::Relaxed);
    let mut record = end;
    record.resolve_unstamped(&clock);
    let forwarded = pool_end.saturating_sub(pool_window);
    let window_accepted = record.accepted.max(1);
    let mut instances = Vec::new();
    for (index, &pid) in plan.proxy_pids.iter().enumerate() {
        let samples = (
            proxy_start.get(index).copied().flatten(),
            proxy_ramped.get(index).copied().flatten(),
            proxy_window.get(index).copied().flatten(),
            proxy_end.get(index).copied().flatten(),
        );
        let (Some(start), Some(after_ramp), Some(window_start), Some(end)) = samples else {
            continue;
        };
        let target = targets
            .get(index)
            .map(ToString::to_string)
            .unwrap_or_default();
        let counts = record.per_target.get(&target).cloned().unwrap_or_default();
        // The pool's accepted shares of the window, apportioned by the instance's part of the
        // shares its miners had accepted (each instance forwards its own miners' shares).
        let forwarded_here = forwarded * counts.accepted / window_accepted;
        instances.push(Instance {
            fan_out: counts.fan_out.summary(),
            target,
            pid,
            resources: Resources::of(
                start,
                after_ramp,
                window_start,
                end,
                counts.ready,
                forwarded_here,
                window,
            ),
        });
    }
    let proxy = match instances.len() {
        0 => None,
        1 => instances.first().map(|i| i.resources.clone()),
        _ => Some(Resources::total(
            &instances,
            record.ready,
            forwarded,
            window,
        )),
    };
    let mut report = LoadReport::new(
        targets.first().copied().unwrap_or(pool.addr),
        plan,
        &record,
        window_jobs,
        (ramp, window),
        (pool_accepted_total, pool_stale_total),
        (proxy, instances),
        tool_start
            .zip(tool_end)
            .map(|(a, b)| tool_cpu(a, b, ramp + window)),
    );
    report.processes = processes;
    if let Some(end) = sample_all(&plan.proxy_pids).filter(|_| !series.is_empty()) {
        series.push(SeriesPoint {
            seconds: window.as_secs_f64(),
            sample: end,
        });
    }
    report.series = series;
    Ok(report)
}

/// The job receipts of the window, counted before the swarm stops.
pub(super) struct WindowJobs {
    /// Jobs published in the window and old enough to have arrived.
    pub jobs: u64,
    /// (miner, job) pairs of those jobs that never arrived.
    pub missing: u64,
}

fn take_window(record: &Record, pool: &SimPool, first_job: u64) -> WindowJobs {
    let last_published = pool.stats.jobs_published();
    let now = crate::clock::unix_ns();
    let settled = |sequence: u64| {
        pool.stats
            .job_sent_ns(sequence)
            .is_some_and(|sent| sent + IN_FLIGHT.as_nanos() as u64 <= now)
    };
    let r = record;
    let mut jobs = 0;
    let mut missing = 0;
    for sequence in first_job..=last_published {
        if !settled(sequence) {
            continue;
        }
        jobs += 1;
        let got = r.receipts.get(&sequence).copied().unwrap_or(0);
        missing += r.ready.saturating_sub(got);
    }
    WindowJobs { jobs, missing }
}

/// The tool's own CPU share over `over` (to show whether the tool was the limit).
fn tool_cpu(start: ProcSample, end: ProcSample, over: Duration) -> f64 {
    (end.cpu_seconds - start.cpu_seconds) / over.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_started_only_beyond_the_open_file_limit() {
        // 20,000 files less the spare: 19,936 miners fit in one process.
        assert_eq!(processes_needed(19_936, 20_000), 0);
        assert_eq!(processes_needed(19_937, 20_000), 2);
        assert_eq!(processes_needed(100_000, 20_000), 6);
        assert_eq!(
            processes_needed(2, 10),
            2,
            "a limit below the spare still leaves one a process"
        );
    }
}
