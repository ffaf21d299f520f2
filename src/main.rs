//! The `hashgate` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hashgate::config::Config;
use hashgate::metrics::Metrics;
use hashgate::protocol::Difficulty;
use hashgate::proxy::Proxy;
use hashgate::sim::{SimMinerConfig, SimMinerStats, SimPool, SimPoolConfig, run_sim_miner};
use hashgate::work::{
    DuplicateFilter, JobBook, ShareContext, ShareVector, Threshold, Verdict, check_share, sha256,
};
use tokio_util::sync::CancellationToken;

/// The demo's configuration, embedded so `hashgate demo` needs no file.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Stratum V1 proxy for mining farms that hand power between Bitcoin mining and AI workloads.
#[derive(Parser)]
#[command(name = "hashgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Check a configuration file and exit (0 when valid).
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// A local pool and simulated miners through the real proxy, in one process.
    Demo {
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
    },
    /// Show upstreams, groups and the busiest workers of a running hashgate (read from its API).
    Status {
        /// The API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        api: String,
        /// Workers to list (the busiest by 1-minute hashrate).
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// List groups: state, power, and who is still hashing in a drained one (read from the API).
    Groups {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Drain a group: its hooks run, its miners stop mining (through the API).
    Drain {
        /// The group.
        group: String,
        /// pause (keep connections, no new work), disconnect (close and refuse), or reconnect
        /// (send the miners to --reconnect-to).
        #[arg(long, default_value = "pause")]
        mode: String,
        /// Why (shown to miners and hooks, kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// host:port for --mode reconnect.
        #[arg(long)]
        reconnect_to: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resume a drained group: its resuming hooks run, then its miners get work at the ramp.
    Resume {
        /// The group.
        group: String,
        /// Resume even if windows or capacity requests still hold the group.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Check one share against its job with hashgate's verifier and print the verdict.
    ///
    /// FILE is a share vector (JSON: a job's notify fields, the miner's extranonce1/size/mask and
    /// the submit), the format of ../shared/testdata/stratum_job_mainnet_block.json. Use it to
    /// replay a disputed share.
    VerifyShare {
        /// The share vector file.
        file: PathBuf,
        /// The miner's share difficulty to check against.
        #[arg(long, default_value_t = 1.0)]
        difficulty: f64,
    },
}

/// Where a running hashgate's API is, and its token.
#[derive(clap::Args)]
struct ApiArgs {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9100")]
    api: String,
    /// Bearer token for the API's mutating endpoints.
    #[arg(long, env = "HASHGATE_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, log_json } => {
            init_logging(log_json, "info");
            runtime().and_then(|rt| rt.block_on(run(&config)))
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Demo {
            miners,
            seconds,
            listen,
            api,
            hashrate,
            api_token,
        } => {
            init_logging(false, "warn");
            runtime()
                .and_then(|rt| rt.block_on(demo(miners, seconds, listen, api, hashrate, api_token)))
        }
        Command::Status { api, top } => status(&api, top),
        Command::Groups { api } => groups(&api.api),
        Command::Drain {
            group,
            mode,
            reason,
            reconnect_to,
            api,
        } => {
            let body = serde_json::json!({
                "mode": mode,
                "reason": reason,
                "reconnect_to": reconnect_to,
            });
            group_command(&api, &group, "drain", body)
        }
        Command::Resume { group, force, api } => group_command(
            &api,
            &group,
            "resume",
            serde_json::json!({ "force": force }),
        ),
        Command::VerifyShare { file, difficulty } => verify_share(&file, difficulty),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("hashgate: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already
/// contains (library errors name their cause in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn init_logging(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(path: &Path) -> Result<ExitCode> {
    let config = Config::load(path)?;
    // Signal handlers first: a SIGTERM that arrives while the proxy starts must stop it
    // gracefully, not kill it.
    let mut signals = StopSignal::install()?;
    let proxy = Proxy::start(config).await?;
    tracing::info!(miners = %proxy.miner_addr, api = %proxy.api_addr, "hashgate running");
    match signals.next().await {
        Stop::Graceful => {
            tracing::info!(
                "SIGTERM: no new miners, sessions end, then in-flight upstream submits are answered (a second signal exits at once)"
            );
            tokio::select! {
                () = proxy.shutdown() => {}
                _ = signals.next() => {
                    tracing::warn!("second signal: exiting without waiting");
                    return Ok(ExitCode::from(130));
                }
            }
        }
        Stop::Fast => {
            tracing::info!("SIGINT: stopping at once");
            proxy.abort().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How the operator asked hashgate to stop (pingora's split: SIGTERM graceful, SIGINT fast).
enum Stop {
    Graceful,
    Fast,
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct StopSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next stop signal.
    async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Stop::Graceful,
                _ = self.interrupt.recv() => Stop::Fast,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Fast
        }
    }
}

fn check_config(path: &Path) -> Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} upstream(s), {} group(s), {} hook(s), {} window(s), miners on {}, api on {}, state in {})",
                path.display(),
                config.upstreams.len(),
                config.groups.len(),
                config.hooks.len(),
                config.windows.len(),
                config.server.listen,
                config.api.listen,
                config.state.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn demo(
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

    let forwarded_accepted = Metrics::sum_counter(&metrics.upstream_shares, "result", "accepted");
    let forwarded_rejected = Metrics::sum_counter(&metrics.upstream_shares, "result", "rejected");
    let forwarded_lost = Metrics::sum_counter(&metrics.upstream_shares, "result", "lost");
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
    let accepted = Metrics::sum_counter(&m.shares, "result", "accepted");
    let rejected: Vec<String> = [
        "stale",
        "duplicate",
        "low_difficulty",
        "invalid",
        "unauthorized",
    ]
    .iter()
    .map(|r| (r, Metrics::sum_counter(&m.shares, "result", r)))
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| format!("{r} {n}"))
    .collect();
    let difficulty: f64 = {
        use prometheus::core::Collector;
        m.accepted_difficulty
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
        m.connections.get(),
        accepted,
        if rejected.is_empty() {
            "0".into()
        } else {
            rejected.join(", ")
        },
        hashrate / 1e6,
        upstream,
        Metrics::sum_counter(&m.upstream_shares, "result", "accepted")
            + Metrics::sum_counter(&m.upstream_shares, "result", "rejected")
            + Metrics::sum_counter(&m.upstream_shares, "result", "lost"),
        Metrics::sum_counter(&m.upstream_shares, "result", "accepted"),
        proxy.api_addr
    )
}

/// Fetches one API document.
fn api_get<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> Result<T> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut response = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("GET {url}: reading the body"))?;
    serde_json::from_str(&body).with_context(|| format!("GET {url}: unexpected answer"))
}

fn status(api: &str, top: usize) -> Result<ExitCode> {
    use hashgate::api::{GroupView, UpstreamReport, WorkersPage};
    let upstreams: Vec<UpstreamReport> = api_get(api, "/api/v1/upstreams")?;
    let groups: Vec<GroupView> = api_get(api, "/api/v1/groups")?;
    let mut page: WorkersPage = api_get(api, "/api/v1/workers?limit=10000")?;
    println!(
        "{:<16} {:<11} {:>5} {:>12} {:>7} {:>9} {:>9} {:>6} {:>8}  URL",
        "UPSTREAM",
        "STATE",
        "PRIO",
        "DIFFICULTY",
        "MINERS",
        "ACCEPTED",
        "REJECTED",
        "LOST",
        "JOB AGE"
    );
    for u in &upstreams {
        let v = &u.view;
        println!(
            "{:<16} {:<11} {:>5} {:>12} {:>7} {:>9} {:>9} {:>6} {:>8}  {}",
            v.name,
            v.state,
            v.priority,
            v.difficulty.map_or("-".into(), |d| format!("{d}")),
            v.miners,
            u.accepted,
            u.rejected,
            u.lost,
            v.last_job_age_seconds
                .map_or("-".into(), |a| format!("{a:.0}s")),
            v.url
        );
    }
    println!();
    println!(
        "{:<16} {:<10} {:>8} {:>14} {:>14} {:>9} {:>9}",
        "GROUP", "STATE", "WORKERS", "HASHRATE 1M", "HASHRATE 15M", "ACCEPTED", "REJECTED"
    );
    for g in &groups {
        println!(
            "{:<16} {:<10} {:>8} {:>14} {:>14} {:>9} {:>9}",
            g.status.name,
            g.status.state,
            g.status.workers,
            human_rate(g.hashrate_1m),
            human_rate(g.hashrate_15m),
            g.accepted,
            g.rejected
        );
    }
    println!();
    page.workers
        .sort_by(|a, b| b.hashrate_1m.total_cmp(&a.hashrate_1m));
    println!(
        "{:<24} {:<10} {:<21} {:>14} {:>12} {:>9} {:>9}  AGENT",
        "WORKER", "GROUP", "REMOTE", "HASHRATE 1M", "DIFFICULTY", "ACCEPTED", "REJECTED"
    );
    for w in page.workers.iter().take(top) {
        println!(
            "{:<24} {:<10} {:<21} {:>14} {:>12} {:>9} {:>9}  {}",
            w.name.as_deref().unwrap_or("-"),
            w.group,
            w.remote,
            human_rate(w.hashrate_1m),
            format!("{:.6}", w.difficulty),
            w.accepted,
            w.rejected,
            w.user_agent.as_deref().unwrap_or("-")
        );
    }
    if page.total > top {
        println!("... {} workers in all", page.total);
    }
    Ok(ExitCode::SUCCESS)
}

/// POSTs a group command and prints the group's state after it.
fn group_command(
    api: &ApiArgs,
    group: &str,
    action: &str,
    body: serde_json::Value,
) -> Result<ExitCode> {
    let url = format!(
        "{}/api/v1/groups/{group}/{action}",
        api.api.trim_end_matches('/')
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(&url).header("Content-Type", "application/json");
    if let Some(token) = &api.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request
        .send(body.to_string().as_bytes())
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("POST {url}: reading the body"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        eprintln!(
            "hashgate: {action} {group}: {message} (HTTP {})",
            status.as_u16()
        );
        return Ok(ExitCode::FAILURE);
    }
    let group: hashgate::groups::GroupStatus =
        serde_json::from_str(&text).with_context(|| format!("POST {url}: unexpected answer"))?;
    println!(
        "{}: {}{}",
        group.name,
        group.state,
        group
            .pending
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn groups(api: &str) -> Result<ExitCode> {
    use hashgate::api::GroupView;
    let groups: Vec<GroupView> = api_get(api, "/api/v1/groups")?;
    println!(
        "{:<16} {:<9} {:<10} {:>7} {:>7} {:>11} {:>11}  {:<18} REASON",
        "GROUP", "STATE", "MODE", "WORKERS", "MINING", "POWER W", "RELEASED W", "CLAIMS"
    );
    for g in &groups {
        let s = &g.status;
        println!(
            "{:<16} {:<9} {:<10} {:>7} {:>7} {:>11.0} {:>11.0}  {:<18} {}",
            s.name,
            s.state,
            s.mode.map_or("-", |m| m.as_str()),
            s.workers,
            s.mining_workers,
            s.power_watts,
            s.released_watts,
            if s.claims.is_empty() {
                "-".to_owned()
            } else {
                s.claims.join(",")
            },
            s.reason.as_deref().unwrap_or("")
        );
        if let Some(error) = &s.last_error {
            println!("    last error: {error}");
        }
        for miner in &s.refused_miners {
            println!(
                "    came back, refused: {} ({}), {} time(s)",
                miner.name, miner.address, miner.count
            );
        }
        for miner in &s.still_hashing {
            println!(
                "    still hashing: {} ({}), last submit {}",
                miner.name,
                miner.address,
                miner
                    .last_submit_seconds_ago
                    .map_or("never".into(), |a| format!("{a:.0}s ago"))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Hashes per second with an SI prefix.
fn human_rate(rate: f64) -> String {
    let units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
    let mut value = rate;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}", units[unit])
}

/// Exit 0 when the share is accepted, 1 when rejected or unreadable.
fn verify_share(file: &Path, difficulty: f64) -> Result<ExitCode> {
    let vector = ShareVector::load(file)?;
    let difficulty = Difficulty::new(difficulty).context("--difficulty")?;
    let notify = vector.notify()?;
    let extranonce1 = vector.extranonce1()?;
    let share = vector.share()?;
    let mask = vector.version_mask()?;
    let mut book = JobBook::new(1);
    book.push(notify);
    let share_target = difficulty.to_threshold();
    let context = ShareContext {
        extranonce1: &extranonce1,
        extranonce2_size: vector.extranonce2_size,
        version_mask: mask,
        share_target: &share_target,
        upstream_target: &Threshold::MAX,
    };
    println!("sha256 backend: {}", sha256::backend());
    println!("job:            {}", share.job_id);
    println!("extranonce1:    {extranonce1}");
    println!("extranonce2:    {}", share.extranonce2);
    match check_share(&book, &mut DuplicateFilter::new(), &context, &share) {
        Verdict::Accepted(accepted) => {
            println!("verdict:        accepted at difficulty {difficulty}");
            println!("hash:           {}", accepted.block_hash());
            println!("version:        {:08x}", accepted.version);
            println!("hash difficulty {:.6e}", accepted.hash_difficulty());
            println!("block:          {}", accepted.is_block);
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Rejected(reject) => {
            println!(
                "verdict:        rejected ({}): {reject}",
                hashgate::downstream::reject_code(&reject)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
