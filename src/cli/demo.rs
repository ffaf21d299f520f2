//! `hashgate demo`: a simulated pool and simulated miners through the real proxy, with a status
//! line each second and a summary that checks the pool accepted every forwarded share. Each
//! miner runs on a simulated machine (`demo_machines.rs`); once, the demo drains rack-b with
//! sleep, shows its measured watts go down and come back, and resumes it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hashgate::config::Config;
use hashgate::config::DrainMode;
use hashgate::groups::{Claim, DrainRequest, GroupState};
use hashgate::metrics::Metrics;
use hashgate::proxy::Proxy;
use hashgate::sim::{SimMinerConfig, SimMinerStats, SimPool, SimPoolConfig, run_sim_miner};
use tokio_util::sync::CancellationToken;

use super::demo_machines::RACK_A;

/// The demo's configuration, embedded so `hashgate demo` needs no file.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// `hashgate demo`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoOptions {
    /// Simulated miners.
    #[arg(long, default_value_t = 8)]
    miners: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Where miners connect.
    #[arg(long, default_value = "127.0.0.1:3333")]
    listen: SocketAddr,
    /// Where the API and metrics listen.
    #[arg(long, default_value = "127.0.0.1:9100")]
    api: SocketAddr,
    /// Hashes per second of each simulated miner.
    #[arg(long, default_value_t = 200_000.0)]
    hashrate: f64,
    /// Bearer token for the API's mutating endpoints (required with a non-loopback --api).
    #[arg(long)]
    api_token: Option<String>,
    /// Drain rack-b with sleep after this many seconds, resume it once it has been drained
    /// 10 s (0: never; drain it yourself with `hashgate drain rack-b`).
    #[arg(long, default_value_t = 10)]
    power_cycle_after: u64,
}

pub(crate) async fn demo(options: DemoOptions) -> Result<ExitCode> {
    let DemoOptions {
        miners,
        seconds,
        listen,
        api,
        hashrate,
        api_token,
        power_cycle_after,
    } = options;
    let pool = SimPool::start(SimPoolConfig {
        difficulty: 0.0005,
        job_interval: Duration::from_secs(10),
        ..SimPoolConfig::default()
    })
    .await
    .context("cannot start the simulated pool")?;
    let mut config = Config::parse(DEMO_CONFIG, Path::new("config/demo.toml (embedded)"))?;
    config.server.listen = listen;
    config.api.listen = api;
    config.api.token = api_token;
    config.upstreams[0].url = pool.url();
    // The demo's drains are its own: state in a fresh directory, not /var/lib/hashgate.
    let state_dir = std::env::temp_dir().join(format!("hashgate-demo-{}", std::process::id()));
    config.state.dir = state_dir.clone();
    let machines = super::demo_machines::start(miners, &mut config).await?;
    let config = config.validate()?;
    let proxy = Proxy::start(config).await?;

    println!("hashgate demo: {miners} simulated miners at {hashrate:.0} H/s each");
    println!("  miners connect to   stratum+tcp://{}", proxy.miner_addr);
    println!("  simulated pool at   {}", pool.url());
    println!("  metrics             http://{}/metrics", proxy.api_addr);
    println!(
        "  point another miner at stratum+tcp://{} to join",
        proxy.miner_addr
    );
    println!("  Ctrl-C to stop");

    let cancel = CancellationToken::new();
    let mut stats = Vec::new();
    for i in 0..miners {
        let miner_stats = Arc::new(SimMinerStats::default());
        stats.push(Arc::clone(&miner_stats));
        let mut config = SimMinerConfig::new(proxy.miner_addr, format!("demo.rig{i:02}"), hashrate);
        if let Some(machine) = machines.machines.get(i) {
            config.bind = Some(machine.ip);
            config.device = Some(Arc::clone(&machine.device));
        }
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = run_sim_miner(config, miner_stats, cancel).await {
                tracing::warn!(%error, "simulated miner stopped");
            }
        });
    }

    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s));
    let mut cycle = PowerCycle::new(power_cycle_after, miners > RACK_A);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                println!("{}", status_line(&proxy, started));
                cycle.step(&proxy, started.elapsed()).await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    drop(machines);
    cancel.cancel();
    let metrics = proxy.metrics.clone();
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&state_dir);

    let forwarded_accepted = Metrics::sum_counter(&metrics.upstream.shares, "result", "accepted");
    let forwarded_rejected = Metrics::sum_counter(&metrics.upstream.shares, "result", "rejected");
    let forwarded_lost = Metrics::sum_counter(&metrics.upstream.shares, "result", "lost");
    let pool_accepted = pool.stats.accepted.load(Ordering::Relaxed);
    let pool_rejected = pool.stats.rejected.load(Ordering::Relaxed);
    let miner_accepted: u64 = stats
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .sum();
    let miner_rejected: u64 = stats
        .iter()
        .map(|s| s.rejected.load(Ordering::Relaxed))
        .sum();
    println!();
    println!("summary after {:.0} s", started.elapsed().as_secs_f64());
    println!("  miners:   {miner_accepted} shares accepted by hashgate, {miner_rejected} rejected");
    println!(
        "  upstream: {} forwarded: {forwarded_accepted} accepted, {forwarded_rejected} rejected, {forwarded_lost} lost",
        forwarded_accepted + forwarded_rejected + forwarded_lost
    );
    println!(
        "  pool:     {pool_accepted} accepted, {pool_rejected} rejected, {} connection(s)",
        pool.stats.connections.load(Ordering::Relaxed)
    );
    let healthy = pool_rejected == 0
        && forwarded_rejected == 0
        && forwarded_lost == 0
        && pool_accepted == forwarded_accepted
        && miner_accepted > 0;
    if healthy {
        println!("  ok: the pool accepted every share hashgate forwarded");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  NOT OK: the pool and hashgate disagree (see the counts above)");
        Ok(ExitCode::FAILURE)
    }
}

fn status_line(proxy: &Proxy, started: Instant) -> String {
    let m = &proxy.metrics;
    let accepted = Metrics::sum_counter(&m.miners.shares, "result", "accepted");
    let rejected: Vec<String> = [
        "stale",
        "duplicate",
        "low_difficulty",
        "invalid",
        "unauthorized",
    ]
    .iter()
    .map(|r| (r, Metrics::sum_counter(&m.miners.shares, "result", r)))
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| format!("{r} {n}"))
    .collect();
    let difficulty: f64 = {
        use prometheus::core::Collector;
        m.miners
            .accepted_difficulty
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|metric| metric.get_counter().get_value())
            .sum()
    };
    let elapsed = started.elapsed().as_secs_f64().max(1.0);
    let hashrate = difficulty * 4_294_967_296.0 / elapsed;
    let upstream = proxy
        .router
        .serving_upstream()
        .map(|u| format!("{u} up"))
        .unwrap_or_else(|| "no upstream".into());
    let racks: Vec<String> = proxy
        .groups
        .statuses()
        .iter()
        .filter(|g| g.workers > 0)
        .map(|g| {
            format!(
                "{} {} {:.1} kW {}",
                g.name,
                g.state,
                g.power_watts / 1000.0,
                g.power.power_source.as_str()
            )
        })
        .collect();
    format!(
        "[{:>4.0}s] miners {} | shares accepted {} rejected {} | ~{:.2} MH/s | {} | upstream: {} ({} forwarded, {} accepted) | metrics http://{}/metrics",
        elapsed,
        m.miners.connections.get(),
        accepted,
        if rejected.is_empty() {
            "0".into()
        } else {
            rejected.join(", ")
        },
        hashrate / 1e6,
        racks.join(" | "),
        upstream,
        Metrics::sum_counter(&m.upstream.shares, "result", "accepted")
            + Metrics::sum_counter(&m.upstream.shares, "result", "rejected")
            + Metrics::sum_counter(&m.upstream.shares, "result", "lost"),
        Metrics::sum_counter(&m.upstream.shares, "result", "accepted"),
        proxy.api_addr
    )
}

/// The demo's one power cycle of rack-b: drained with sleep after `after`, resumed once it has
/// been drained a while, each step printed with the measured watts.
struct PowerCycle {
    after: Option<Duration>,
    step: CycleStep,
    drained_at: Option<Duration>,
}

#[derive(PartialEq)]
enum CycleStep {
    Waiting,
    Draining,
    Drained,
    Resuming,
    Done,
}

/// How long rack-b stays drained before the demo resumes it.
const DRAINED_FOR: Duration = Duration::from_secs(10);

impl PowerCycle {
    fn new(after: u64, has_rack_b: bool) -> PowerCycle {
        PowerCycle {
            after: (after > 0 && has_rack_b).then(|| Duration::from_secs(after)),
            step: CycleStep::Waiting,
            drained_at: None,
        }
    }

    async fn step(&mut self, proxy: &Proxy, elapsed: Duration) {
        let Some(after) = self.after else { return };
        let Some(rack) = proxy.groups.status("rack-b") else {
            return;
        };
        let watts = |s: &hashgate::groups::GroupStatus| {
            format!(
                "{:.0} W ({}), released {:.0} W",
                s.power_watts,
                s.power.power_source.as_str(),
                s.released_watts
            )
        };
        match self.step {
            CycleStep::Waiting if elapsed >= after => {
                println!(
                    "-> demo: draining rack-b for an AI window, with sleep: {}",
                    watts(&rack)
                );
                let request = DrainRequest {
                    mode: DrainMode::Pause,
                    reason: "demo: AI window".into(),
                    reconnect_to: None,
                    claim: Claim::Manual,
                };
                match proxy.groups.drain("rack-b", request).await {
                    Ok(_) => self.step = CycleStep::Draining,
                    Err(error) => {
                        println!("-> demo: rack-b not drained: {error}");
                        self.step = CycleStep::Done;
                    }
                }
            }
            CycleStep::Draining if rack.state == GroupState::Drained => {
                println!(
                    "-> demo: rack-b drained (verified by measured power: {}; {} of {} machines off): {}; {:.4} kWh released so far",
                    rack.power.verified,
                    rack.power.machines_off,
                    rack.power.machines,
                    watts(&rack),
                    rack.energy.energy_released_kwh
                );
                self.step = CycleStep::Drained;
                self.drained_at = Some(elapsed);
            }
            CycleStep::Drained
                if self
                    .drained_at
                    .is_some_and(|at| elapsed >= at + DRAINED_FOR) =>
            {
                println!(
                    "-> demo: resuming rack-b ({:.4} kWh released): machines woken in batches, then work at the ramp",
                    rack.energy.energy_released_kwh
                );
                match proxy.groups.resume("rack-b", Claim::Manual, false).await {
                    Ok(_) => self.step = CycleStep::Resuming,
                    Err(error) => {
                        println!("-> demo: rack-b not resumed: {error}");
                        self.step = CycleStep::Done;
                    }
                }
            }
            CycleStep::Resuming if rack.state == GroupState::Active => {
                println!("-> demo: rack-b active again: {}", watts(&rack));
                self.step = CycleStep::Done;
            }
            _ => {}
        }
    }
}
