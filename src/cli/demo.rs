//! `hashgate demo`: a simulated pool and simulated miners through the real proxy, with a status
//! line each second and a summary that checks the pool accepted every forwarded share.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hashgate::config::Config;
use hashgate::metrics::Metrics;
use hashgate::proxy::Proxy;
use hashgate::sim::{SimMinerConfig, SimMinerStats, SimPool, SimPoolConfig, run_sim_miner};
use tokio_util::sync::CancellationToken;

/// The demo's configuration, embedded so `hashgate demo` needs no file.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

pub(crate) async fn demo(
    miners: usize,
    seconds: Option<u64>,
    listen: SocketAddr,
    api: SocketAddr,
    hashrate: f64,
    api_token: Option<String>,
) -> Result<ExitCode> {
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
        let config = SimMinerConfig::new(proxy.miner_addr, format!("demo.rig{i:02}"), hashrate);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = run_sim_miner(config, miner_stats, cancel).await {
                tracing::warn!(%error, "simulated miner stopped");
            }
        });
    }

    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                println!("{}", status_line(&proxy, started));
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
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
    format!(
        "[{:>4.0}s] miners {} | shares accepted {} rejected {} | ~{:.2} MH/s | upstream: {} ({} forwarded, {} accepted) | metrics http://{}/metrics",
        elapsed,
        m.miners.connections.get(),
        accepted,
        if rejected.is_empty() {
            "0".into()
        } else {
            rejected.join(", ")
        },
        hashrate / 1e6,
        upstream,
        Metrics::sum_counter(&m.upstream.shares, "result", "accepted")
            + Metrics::sum_counter(&m.upstream.shares, "result", "rejected")
            + Metrics::sum_counter(&m.upstream.shares, "result", "lost"),
        Metrics::sum_counter(&m.upstream.shares, "result", "accepted"),
        proxy.api_addr
    )
}
