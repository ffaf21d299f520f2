//! A drain with sleep at farm size: from the drain call until the group is drained on measured
//! power, for groups of simulated Bitaxes whose firmware draws its sleep power 1 s after the
//! sleep command, and the group controller's tick time meanwhile.
//!
//! Each machine is its own loopback address: its miner connects to hashgate from it and its
//! ESP-Miner REST API answers on it (one listener on 0.0.0.0 serves the fleet, by the address
//! called). The machines live in a child process (this binary again, as the farm), so hashgate's
//! process holds only its own sockets: 19,000 machines fit the 20,000 open files one process
//! may have. hashgate runs with its defaults (machines polled every 3 s while the group drains,
//! drained after 10 s measured off), except that machines are polled every 5 s rather than 30 s
//! while the group mines, so that every machine has been read before the drain without a long
//! warm-up. The floor is the firmware's 1 s plus the 10 s settle: the rest is hashgate's
//! dispatch of the sleeps and the poll that sees them.
//!
//! Run: `cargo bench --bench power_drain` (about 4 min). `POWER_DRAIN_SIZES=200,2000,19000`
//! and `POWER_DRAIN_RUNS=3` (runs per size) are the defaults.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hashgate::clock::unix_ms;
use hashgate::config::{Config, DrainMode};
use hashgate::groups::{Claim, DrainRequest, GroupState};
use hashgate::proxy::Proxy;
use hashgate::sim::{DeviceProfile, SimDevice, SimEspMiner, SimPool, SimPoolConfig};
use prometheus::core::Collector;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Set in the child: the number of machines the farm runs.
const FARM: &str = "HASHGATE_BENCH_FARM";

/// Machine `i`'s address: 127.1.0.1 onwards, 250 to a /24.
fn machine_ip(i: usize) -> IpAddr {
    IpAddr::from([
        127,
        1 + (i / 62_500) as u8,
        (i / 250 % 250) as u8,
        (i % 250) as u8 + 1,
    ])
}

/// A Bitaxe whose firmware draws its sleep power 1 s after the command.
fn profile() -> DeviceProfile {
    DeviceProfile {
        sleep_delay: Duration::from_secs(1),
        ..DeviceProfile::bitaxe()
    }
}

fn main() {
    if let Some(machines) = std::env::var(FARM).ok().and_then(|n| n.parse().ok()) {
        farm(machines);
        return;
    }
    let sizes: Vec<usize> = std::env::var("POWER_DRAIN_SIZES")
        .unwrap_or_else(|_| "200,2000,19000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("POWER_DRAIN_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "drain with sleep: drain call -> drained on measured power (defaults: fast poll 3 s, settle 10 s; firmware sleeps 1 s after the command)"
    );
    println!(
        "{:>7} {:>4} {:>10} {:>10} {:>10} {:>10} {:>8} | {:>22} | {:>22}",
        "machines",
        "run",
        "sleeps",
        "fw off",
        "seen off",
        "drained",
        "/floor",
        "tick mining mean/p99",
        "tick draining mean/p99"
    );
    for &machines in &sizes {
        for run in 1..=runs {
            let r = runtime.block_on(drain_once(machines));
            println!(
                "{machines:>8} {run:>4} {:>9.2}s {:>9.2}s {:>9.2}s {:>9.2}s {:>7.2}x | {:>9.2} ms {:>9} | {:>9.2} ms {:>9}",
                r.sleeps_sent,
                r.firmware_off,
                r.seen_off,
                r.drained,
                r.drained / FLOOR.as_secs_f64(),
                r.tick_mining.mean_ms,
                r.tick_mining.p99,
                r.tick_draining.mean_ms,
                r.tick_draining.p99,
            );
        }
    }
}

/// The firmware's sleep delay plus hashgate's default settle.
const FLOOR: Duration = Duration::from_secs(11);

/// One drain's times from the drain call (seconds) and the controller's ticks.
struct DrainRun {
    /// Every machine had its sleep command.
    sleeps_sent: f64,
    /// Every machine drew its sleep power (the farm's own view).
    firmware_off: f64,
    /// hashgate counted every machine off.
    seen_off: f64,
    /// The group was drained, verified.
    drained: f64,
    tick_mining: Ticks,
    tick_draining: Ticks,
}

/// The controller's ticks over a span: mean, and the histogram bucket that holds the 99th
/// percentile (as "<= x ms").
struct Ticks {
    mean_ms: f64,
    p99: String,
}

/// The tick histogram's cumulative buckets, count and sum now.
fn tick_histogram(proxy: &Proxy) -> (Vec<(f64, u64)>, u64, f64) {
    let families = proxy.metrics.groups.controller_tick_seconds.collect();
    let Some(histogram) = families
        .first()
        .and_then(|f| f.get_metric().first())
        .map(|m| m.get_histogram().clone())
    else {
        return (Vec::new(), 0, 0.0);
    };
    let buckets = histogram
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    (
        buckets,
        histogram.get_sample_count(),
        histogram.get_sample_sum(),
    )
}

/// The ticks between two readings of the histogram.
fn ticks_between(a: &(Vec<(f64, u64)>, u64, f64), b: &(Vec<(f64, u64)>, u64, f64)) -> Ticks {
    let count = b.1.saturating_sub(a.1);
    let mean_ms = if count == 0 {
        f64::NAN
    } else {
        (b.2 - a.2) / count as f64 * 1e3
    };
    let wanted = (count as f64 * 0.99).ceil() as u64;
    let p99 =
        b.0.iter()
            .zip(&a.0)
            .find(|((_, after), (_, before))| after - before >= wanted)
            .map_or_else(
                || "> 1 s".to_owned(),
                |((bound, _), _)| format!("<= {} ms", (bound * 1e4).round() / 10.0),
            );
    Ticks { mean_ms, p99 }
}

fn config(pool: &SimPool, state: &Path, web_port: u16) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_miners = 20000
[api]
listen = "127.0.0.1:0"
[state]
dir = "{}"
[power]
poll_interval = "5s"
[[group]]
name = "rack"
workers = ["bench.*"]
watts_per_worker = 18.0
sleep = true
idle_watts_per_worker = 5.0
[group.management]
web_port = {web_port}
[[upstream]]
name = "pool"
url = "{}"
user = "bench.proxy"
"#,
        state.display(),
        pool.url()
    );
    Config::parse(&text, Path::new("bench.toml")).expect("bench config is valid")
}

/// The farm child: its lines on stdout, its orders on stdin.
struct Farm {
    child: Child,
    orders: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Farm {
    fn start(machines: usize) -> Farm {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(FARM, machines.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the farm starts");
        let orders = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Farm {
            child,
            orders,
            lines,
        }
    }

    /// Waits for the farm's line starting with `word`; the rest of it.
    fn expect(&self, word: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the farm did not say {word:?} within {within:?}"));
            if let Some(rest) = line.strip_prefix(word) {
                return rest.trim().to_owned();
            }
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_status(
    proxy: &Proxy,
    what: &str,
    within: Duration,
    done: impl Fn(&hashgate::groups::GroupStatus) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        if proxy.groups.status("rack").is_some_and(|s| done(&s)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            proxy.groups.status("rack").map(|s| (
                s.state,
                s.power.machines_read,
                s.power.machines_off
            ))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drain_once(machines: usize) -> DrainRun {
    let state = std::env::temp_dir().join(format!(
        "hashgate-bench-power-drain-{}-{machines}-{}",
        std::process::id(),
        unix_ms()
    ));
    let pool = SimPool::start(SimPoolConfig {
        difficulty: 1.0,
        job_interval: Duration::from_secs(30),
        ..SimPoolConfig::default()
    })
    .await
    .expect("pool");
    let mut farm = tokio::task::block_in_place(|| Farm::start(machines));
    let web_port: u16 =
        tokio::task::block_in_place(|| farm.expect("port", Duration::from_secs(30)))
            .parse()
            .expect("a port");
    let proxy = Proxy::start(config(&pool, &state, web_port))
        .await
        .expect("proxy");
    writeln!(farm.orders, "{}", proxy.miner_addr).expect("tell the farm");
    tokio::task::block_in_place(|| farm.expect("ready", Duration::from_secs(300)));
    wait_status(
        &proxy,
        "every machine read",
        Duration::from_secs(120),
        |s| s.workers == machines && s.power.machines_read == machines,
    )
    .await;
    // Five seconds of mining: the controller's tick with every machine watched.
    let before = tick_histogram(&proxy);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mining = tick_histogram(&proxy);

    let started_ms = unix_ms();
    let started = Instant::now();
    proxy
        .groups
        .drain(
            "rack",
            DrainRequest {
                mode: DrainMode::Pause,
                reason: "bench".into(),
                reconnect_to: None,
                claim: Claim::Manual,
            },
        )
        .await
        .expect("drain accepted");
    let mut seen_off = None;
    let deadline = started + Duration::from_secs(600);
    let drained = loop {
        let status = proxy.groups.status("rack").expect("the group");
        if seen_off.is_none() && status.power.machines_off == machines {
            seen_off = Some(started.elapsed());
        }
        if status.state == GroupState::Drained {
            assert!(status.power.verified, "drained on measured power");
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "not drained in 10 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let draining = tick_histogram(&proxy);
    let since = |line: String| {
        let at: u64 = line.parse().expect("unix ms");
        at.saturating_sub(started_ms) as f64 / 1e3
    };
    let (sleeps_sent, firmware_off) = tokio::task::block_in_place(|| {
        let sent = since(farm.expect("sent", Duration::from_secs(60)));
        let off = since(farm.expect("off", Duration::from_secs(60)));
        (sent, off)
    });
    proxy.shutdown().await;
    drop(farm);
    drop(pool);
    let _ = std::fs::remove_dir_all(&state);
    DrainRun {
        sleeps_sent,
        firmware_off,
        seen_off: seen_off.unwrap_or(drained).as_secs_f64(),
        drained: drained.as_secs_f64(),
        tick_mining: ticks_between(&before, &mining),
        tick_draining: ticks_between(&mining, &draining),
    }
}

/// The farm: `machines` simulated Bitaxes, their fleet API and their miners. Says `port P`
/// (the API's), reads the proxy's address, says `ready` once every miner has work, then
/// `sent T` once every machine had its sleep command and `off T` once every machine draws its
/// sleep power (Unix ms); runs until its stdin closes.
fn farm(machines: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let devices: Vec<Arc<SimDevice>> = (0..machines)
            .map(|_| Arc::new(SimDevice::new(profile())))
            .collect();
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .expect("bind the fleet API");
        let port = listener.local_addr().expect("addr").port();
        let fleet = (0..machines).map(|i| (machine_ip(i), Arc::clone(&devices[i])));
        let _api = SimEspMiner::start_fleet(listener, fleet).expect("fleet API");
        println!("port {port}");
        let mut orders = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let proxy: SocketAddr = orders
            .next_line()
            .await
            .ok()
            .flatten()
            .and_then(|l| l.trim().parse().ok())
            .expect("the proxy's address");
        let ready = Arc::new(AtomicUsize::new(0));
        let connecting = Arc::new(tokio::sync::Semaphore::new(256));
        for i in 0..machines {
            let (ready, connecting) = (Arc::clone(&ready), Arc::clone(&connecting));
            tokio::spawn(async move { miner(i, proxy, ready, connecting).await });
        }
        while ready.load(Ordering::Relaxed) < machines {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("ready");
        // Each condition is watched from a cursor: the first machine not there yet.
        let (mut sent, mut off) = (0, 0);
        while sent < machines || off < machines {
            while sent < machines && devices[sent].commands().0 > 0 {
                sent += 1;
            }
            if sent == machines {
                println!("sent {}", unix_ms());
                sent = usize::MAX;
            }
            while off < machines && devices[off].watts() <= devices[off].profile.sleep_watts {
                off += 1;
            }
            if off == machines {
                println!("off {}", unix_ms());
                off = usize::MAX;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while let Ok(Some(_)) = orders.next_line().await {}
    });
}

/// One machine's miner: connects from the machine's address, subscribes and authorizes, counts
/// itself ready at its first job, then reads until the connection ends.
async fn miner(
    i: usize,
    proxy: SocketAddr,
    ready: Arc<AtomicUsize>,
    connecting: Arc<tokio::sync::Semaphore>,
) {
    let mut permit = Some(connecting.acquire().await.expect("open"));
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(machine_ip(i), 0))
        .expect("bind the machine's address");
    let mut stream = socket.connect(proxy).await.expect("connect");
    let hello = format!(
        "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"bench/1.0\"]}}\n{{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"bench.m{i}\",\"x\"]}}\n"
    );
    stream.write_all(hello.as_bytes()).await.expect("write");
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut counted = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if !counted && line.contains("mining.notify") {
            counted = true;
            permit = None;
            ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(permit);
}
