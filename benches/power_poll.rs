//! The cost of power polling at farm size: hashgate's poller watching 20,000 machines (each on
//! its own loopback address, ESP-Miner's REST API on one forwarded port) at the default 30 s
//! interval, 64 calls at once. The simulated firmware answers from another runtime; the
//! poller runs alone on a current-thread runtime, so the CPU time of its thread is the proxy's
//! side only: the figure is CPU per machine read, and the share of one core at 20,000 machines.
//!
//! Run: `cargo bench --bench power_poll` (about 75 s; `POWER_POLL_MACHINES=N` for another size).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashgate::config::PowerConfig;
use hashgate::power::{ManagementAddress, Poller, PowerBook, Target};
use hashgate::sim::{DeviceProfile, SimDevice, SimEspMiner};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// This thread's CPU time (user + system) from /proc, in seconds.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Machines read at least once, and reads so far (every machine's last read time counts once
/// per change).
fn read_machines(book: &PowerBook) -> usize {
    book.read(|machines| machines.values().filter(|m| m.read_at_ms.is_some()).count())
}

fn main() {
    let machines: usize = std::env::var("POWER_POLL_MACHINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    // The firmware: one ESP-Miner API on every local address (0.0.0.0), on its own runtime.
    let firmware = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let device = Arc::new(SimDevice::new(DeviceProfile::bitaxe()));
    let (api, port) = firmware.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (
            SimEspMiner::start(listener, device, "bitaxe").expect("start"),
            port,
        )
    });

    let poller_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let settings = PowerConfig::default();
            let interval = settings.poll_interval;
            let (poller, handle) = Poller::new(settings, TaskTracker::new());
            let cancel = CancellationToken::new();
            let task = tokio::spawn(poller.run(cancel.clone()));
            let targets = (0..machines)
                .map(|i| Target {
                    worker: format!("farm.bx-{i}"),
                    group: Arc::from("rack"),
                    address: ManagementAddress {
                        ip: IpAddr::from([
                            127,
                            1 + (i / 62_500) as u8,
                            (i / 250 % 250) as u8,
                            (i % 250) as u8 + 1,
                        ]),
                        web_port: port,
                        rpc_port: 4028,
                    },
                    fast: false,
                    credentials: None,
                })
                .collect();
            handle.targets.send_replace(targets);
            // First reads (detection included) are spread over one interval.
            let warm = Instant::now();
            while read_machines(&handle.book) < machines {
                if warm.elapsed() > interval * 3 {
                    let errors: Vec<String> = handle
                        .book
                        .read(|m| m.values().filter_map(|m| m.error.clone()).take(3).collect());
                    panic!(
                        "only {} of {machines} machines read after {:?}; errors: {errors:?}",
                        read_machines(&handle.book),
                        warm.elapsed()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let warmup = warm.elapsed();
            // One full interval of steady polling: every machine read once more.
            let started_at: Vec<u64> = handle
                .book
                .read(|m| m.values().filter_map(|m| m.read_at_ms).collect());
            let since = started_at.iter().copied().max().unwrap_or(0);
            let (cpu_start, wall_start) = (thread_cpu(), Instant::now());
            tokio::time::sleep(interval).await;
            let (cpu, wall) = (thread_cpu() - cpu_start, wall_start.elapsed());
            let reads = handle.book.read(|m| {
                m.values()
                    .filter(|m| m.read_at_ms.is_some_and(|t| t > since))
                    .count()
            });
            let failing = handle
                .book
                .read(|m| m.values().filter(|m| m.error.is_some()).count());
            cancel.cancel();
            let _ = task.await;
            (warmup, cpu, wall, reads, failing)
        })
    });
    let (warmup, cpu, wall, reads, failing) = poller_thread.join().expect("poller thread");
    drop(api);
    println!("power polling, {machines} machines at the default 30 s interval, concurrency 64");
    println!("  first reads (detection) of every machine: {warmup:.1?}");
    println!(
        "  steady interval: {reads} reads in {wall:.1?}, {:.0} reads/s, {failing} machines failing",
        reads as f64 / wall.as_secs_f64()
    );
    println!(
        "  poller thread CPU: {cpu:.2} s over {:.1} s = {:.1}% of one core, {:.0} us per read",
        wall.as_secs_f64(),
        cpu / wall.as_secs_f64() * 100.0,
        if reads > 0 {
            cpu / reads as f64 * 1e6
        } else {
            f64::NAN
        }
    );
}
