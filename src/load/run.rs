//! One load run: the embedded pool, the swarm against the target, then the phases a report
//! states: the ramp (connections opened at the set rate until every miner has a job), a warm-up,
//! the measured window, and the end (submits stopped, every share's fate settled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::procstat::{self, ProcSample};
use super::report::{LoadReport, Resources};
use super::swarm::{self, JobClock, Record, SharedRecord, Stops, SwarmPlan};
use crate::sim::{SimPool, SimPoolConfig};

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Where the miners connect; `None`: straight to the embedded pool (the baseline of what a
    /// proxy adds).
    pub target: Option<SocketAddr>,
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
    /// The measured process (the proxy), for its memory, CPU and open files.
    pub proxy_pid: Option<u32>,
    /// Print progress to stderr during the ramp (a line rewritten in place: for a terminal).
    pub progress: bool,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// More sockets than this process may open (each miner is one; straight to the embedded
    /// pool, its end of each connection is another).
    #[error(
        "{miners} miners need {needed} open files in this process, its limit is {limit} (ulimit -n); straight to the embedded pool both ends of each connection count"
    )]
    OpenFiles {
        /// Miners asked for.
        miners: usize,
        /// Files they need.
        needed: u64,
        /// RLIMIT_NOFILE.
        limit: u64,
    },
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

/// Runs the plan; the report of what was measured.
pub async fn run_load(plan: &LoadPlan) -> Result<LoadReport, LoadError> {
    let per_miner = if plan.target.is_none() { 2 } else { 1 };
    let needed = plan.miners as u64 * per_miner + SPARE_FILES;
    let limit = open_file_limit();
    if needed > limit {
        return Err(LoadError::OpenFiles {
            miners: plan.miners,
            needed,
            limit,
        });
    }
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
    let target = plan.target.unwrap_or(pool.addr);
    let stats = Arc::clone(&pool.stats);
    let clock: JobClock = Arc::new(move |sequence| stats.job_sent_ns(sequence));
    let record: SharedRecord = Arc::default();
    let sample = |pid: Option<u32>| pid.and_then(procstat::sample);
    let proxy_start = sample(plan.proxy_pid);
    let tool_start = procstat::sample(std::process::id());

    let swarm_plan = SwarmPlan {
        target,
        miners: plan.miners,
        first: 0,
        connect_rate: plan.connect_rate,
        shares_per_second: plan.shares_per_second,
        version_rolling: plan.version_rolling,
        worker_prefix: "load".into(),
    };
    let stops = Stops::default();
    let ramp_started = Instant::now();
    let starter = {
        let (record, clock, stops) = (Arc::clone(&record), Arc::clone(&clock), stops.clone());
        tokio::spawn(async move { swarm::start(&swarm_plan, &record, &clock, &stops).await })
    };
    // The ramp: until every miner has a job, or the connect schedule plus 30 s passed.
    let ramp_limit = Duration::from_secs_f64(plan.miners as f64 / plan.connect_rate.max(1.0))
        + Duration::from_secs(30);
    loop {
        let (ready, connected, closed) = {
            let r = swarm::lock(&record);
            (r.ready, r.connected, r.closed)
        };
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
    let proxy_ramped = sample(plan.proxy_pid);

    tokio::time::sleep(plan.warmup).await;
    swarm::lock(&record).restart_window();
    let first_job = pool.stats.jobs_published() + 1;
    let proxy_window = sample(plan.proxy_pid);
    let pool_window = pool
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let window_started = Instant::now();
    tokio::time::sleep(plan.duration).await;
    let window = window_started.elapsed();
    let proxy_end = sample(plan.proxy_pid);
    let pool_end = pool
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let snapshot = take_window(&record, &pool, first_job);

    // The end: no more submits, the replies still read; then every share's fate is known.
    stops.submits.cancel();
    tokio::time::sleep(IN_FLIGHT).await;
    stops.all.cancel();
    let _ = starter.await;
    let tool_end = procstat::sample(std::process::id());
    let pool_accepted_total = pool
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let pool_stale_total = pool.stats.stale.load(std::sync::atomic::Ordering::Relaxed);
    let r = swarm::lock(&record);
    let proxy = match (proxy_start, proxy_ramped, proxy_window, proxy_end) {
        (Some(start), Some(after_ramp), Some(window_start), Some(end)) => Some(Resources::of(
            start,
            after_ramp,
            window_start,
            end,
            r.ready,
            pool_end.saturating_sub(pool_window),
            window,
        )),
        _ => None,
    };
    Ok(LoadReport::new(
        target,
        plan,
        &r,
        snapshot,
        (ramp, window),
        (pool_accepted_total, pool_stale_total),
        proxy,
        tool_start
            .zip(tool_end)
            .map(|(a, b)| tool_cpu(a, b, ramp + window)),
    ))
}

/// The job receipts of the window, counted before the swarm stops.
pub(super) struct WindowJobs {
    /// Jobs published in the window and old enough to have arrived.
    pub jobs: u64,
    /// (miner, job) pairs of those jobs that never arrived.
    pub missing: u64,
}

fn take_window(record: &SharedRecord, pool: &SimPool, first_job: u64) -> WindowJobs {
    let last_published = pool.stats.jobs_published();
    let now = crate::clock::unix_ns();
    let settled = |sequence: u64| {
        pool.stats
            .job_sent_ns(sequence)
            .is_some_and(|sent| sent + IN_FLIGHT.as_nanos() as u64 <= now)
    };
    let r: std::sync::MutexGuard<'_, Record> = swarm::lock(record);
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
