//! `hashgate load`: the load tool on the command line. `swarm` runs real miners against an
//! endpoint with the embedded pool behind it; `floor` measures the raw write loop that bounds
//! any fan-out from one core. Both print a table and can write the report as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use hashgate::load::swarm::SwarmPlan;
use hashgate::load::timestamp::pin_to_cpu;
use hashgate::load::{FloorPlan, LoadPlan, run_floor, run_load, run_slice};

/// The load tool's modes.
#[derive(clap::Subcommand)]
pub(crate) enum LoadCommand {
    /// Real SV1 miners against an endpoint (hashgate, another proxy, or the embedded pool
    /// itself), the embedded pool sending jobs; prints latencies, fan-out, shares and the
    /// endpoint's resources.
    Swarm(SwarmOptions),
    /// The floor: one thread writing a 320-byte line to each of N loopback sockets.
    Floor(FloorOptions),
    /// A child of `swarm`: one part of a swarm too big for one process, told the job clock
    /// and the phases on stdin by its parent.
    #[command(hide = true)]
    SwarmSlice(SliceOptions),
}

/// `hashgate load swarm-slice` (run by `swarm`, not by hand).
#[derive(clap::Args)]
pub(crate) struct SliceOptions {
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    miners: usize,
    #[arg(long)]
    connect_rate: f64,
    #[arg(long)]
    shares_per_second: f64,
    #[arg(long)]
    no_version_rolling: bool,
    #[arg(long, default_value = "load")]
    worker_prefix: String,
}

/// `hashgate load swarm`.
#[derive(clap::Args)]
pub(crate) struct SwarmOptions {
    /// Where the miners connect (the proxy's miner listener); several (repeated or
    /// comma-separated: proxy instances) share the miners in turn; omitted: straight to the
    /// embedded pool, the baseline of what a proxy adds.
    #[arg(long, value_delimiter = ',')]
    target: Vec<SocketAddr>,
    /// Miners.
    #[arg(long, default_value_t = 1000)]
    miners: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Shares per second over all miners (0: idle miners).
    #[arg(long, default_value_t = 0.0)]
    shares_per_second: f64,
    /// Miners do not ask for version rolling.
    #[arg(long)]
    no_version_rolling: bool,
    /// Where the embedded pool listens (point the proxy's upstream here).
    #[arg(long, default_value = "127.0.0.1:3334")]
    pool_listen: SocketAddr,
    /// The pool's share difficulty. 2^-28 by default: a share per ~16 hashes, so the tool's
    /// own hashing never caps the share rate (a proxy's cost per share does not depend on the
    /// difficulty: it hashes every share once). Set the proxy's miner difficulty to match.
    #[arg(long, default_value_t = 1.0 / 268_435_456.0)]
    pool_difficulty: f64,
    /// A new job this often.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    job_interval: Duration,
    /// After the ramp, before the measured window.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The measured process (the proxy): its RSS, CPU and open files from /proc; one per
    /// target, in the same order, with several.
    #[arg(long, value_delimiter = ',')]
    proxy_pid: Vec<u32>,
    /// Child processes to spread the miners over (0: as many as the open-file limit needs;
    /// 100,000 miners under a 20,000 limit take 6).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Sample the proxies' RSS, CPU and open files this often through the window (a long run's
    /// memory: flat or growing).
    #[arg(long, value_parser = humantime::parse_duration)]
    sample_every: Option<Duration>,
    /// Pin the tool to this core.
    #[arg(long)]
    cpu: Option<usize>,
    /// Also write the report here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `hashgate load floor`.
#[derive(clap::Args)]
pub(crate) struct FloorOptions {
    /// Sockets written to (two file descriptors each).
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Rounds, one line to every socket each.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Between rounds.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Pin the writer to this core (where the proxy would run).
    #[arg(long)]
    writer_cpu: Option<usize>,
    /// Pin the readers to this core (where the load tool runs).
    #[arg(long)]
    cpu: Option<usize>,
    /// Also write the report here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs a load mode; exit 0 once it has measured (the figures say how it went).
pub(crate) fn load(command: LoadCommand) -> Result<ExitCode> {
    let cpu = match &command {
        LoadCommand::Swarm(o) => o.cpu,
        LoadCommand::Floor(o) => o.cpu,
        // A child runs where its parent was pinned (affinity is inherited).
        LoadCommand::SwarmSlice(_) => None,
    };
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu).with_context(|| format!("--cpu {cpu}"))?;
    }
    // One thread: the tool's own cost stays on the core it was given.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match command {
        LoadCommand::Swarm(o) => {
            let plan = LoadPlan {
                targets: o.target,
                miners: o.miners,
                connect_rate: o.connect_rate,
                shares_per_second: o.shares_per_second,
                version_rolling: !o.no_version_rolling,
                pool_listen: o.pool_listen,
                pool_difficulty: o.pool_difficulty,
                job_interval: o.job_interval,
                warmup: o.warmup,
                duration: o.duration,
                proxy_pids: o.proxy_pid,
                processes: o.processes,
                sample_every: o.sample_every,
                program: std::env::current_exe().ok(),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let report = runtime.block_on(run_load(&plan))?;
            print!("{report}");
            write_json(o.json.as_ref(), &report)?;
        }
        LoadCommand::Floor(o) => {
            let plan = FloorPlan {
                sockets: o.sockets,
                rounds: o.rounds,
                interval: o.interval,
                writer_cpu: o.writer_cpu,
            };
            let report = runtime.block_on(run_floor(&plan))?;
            println!(
                "floor: {} sockets, {} rounds: fan-out p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; write {:.2} us per socket, slowest round {:.3} ms",
                report.sockets,
                report.rounds,
                report.fan_out.p50_ms,
                report.fan_out.p99_ms,
                report.fan_out.max_ms,
                report.write_us_per_socket,
                report.slowest_round_ms
            );
            write_json(o.json.as_ref(), &report)?;
        }
        LoadCommand::SwarmSlice(o) => {
            let plan = SwarmPlan {
                targets: o.target,
                miners: o.miners,
                first: o.first,
                connect_rate: o.connect_rate,
                shares_per_second: o.shares_per_second,
                version_rolling: !o.no_version_rolling,
                worker_prefix: o.worker_prefix,
            };
            runtime.block_on(run_slice(plan));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_json(path: Option<&PathBuf>, report: &impl serde::Serialize) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(report).context("report as JSON")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
