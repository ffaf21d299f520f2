//! A group drain at farm size: from the drain command until every miner of the group has been
//! shown the reason and disconnected (`disconnect` mode), over real TCP, for 200 and 2,000 miners
//! in the same run (the small group is the baseline: the ratio shows the per-miner cost of the
//! gate fan-out).
//!
//! Run: `cargo bench --bench drain`

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use hashgate::config::Config;
use hashgate::config::DrainMode;
use hashgate::groups::{Claim, DrainRequest, GroupState};
use hashgate::proxy::Proxy;
use hashgate::sim::{SimPool, SimPoolConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn config(pool: &SimPool, state: &Path) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_miners = 19000
[api]
listen = "127.0.0.1:0"
[state]
dir = "{}"
[difficulty]
initial = 0.001
min = 0.0001
[drain]
quiet_min = "50ms"
ramp_workers_per_second = 100000.0
ramp_timeout = "50ms"
[[group]]
name = "rack"
workers = ["bench.*"]
watts_per_worker = 3250.0
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

/// Connects `n` miners (subscribed and authorized); each counts itself in `closed` when hashgate
/// closes its connection.
async fn connect(proxy: &Proxy, n: usize, closed: &Arc<AtomicUsize>) {
    let mut ready = Vec::with_capacity(n);
    for i in 0..n {
        let addr = proxy.miner_addr;
        let closed = Arc::clone(closed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let hello = format!(
                "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"bench/1.0\"]}}\n{{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"bench.{i}\",\"x\"]}}\n"
            );
            stream.write_all(hello.as_bytes()).await.expect("write");
            let mut lines = BufReader::new(stream).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("mining.notify")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
        });
        ready.push(rx);
    }
    for rx in ready {
        rx.await.expect("every miner gets work");
    }
}

async fn wait_state(proxy: &Proxy, state: GroupState) {
    while proxy.groups.status("rack").map(|s| s.state) != Some(state) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One drain: miners connected first (not timed), then the drain until the last one is closed.
async fn drain_once(proxy: &Proxy, n: usize) -> Duration {
    let closed = Arc::new(AtomicUsize::new(0));
    connect(proxy, n, &closed).await;
    let started = Instant::now();
    proxy
        .groups
        .drain(
            "rack",
            DrainRequest {
                mode: DrainMode::Disconnect,
                reason: "bench".into(),
                reconnect_to: None,
                claim: Claim::Manual,
            },
        )
        .await
        .expect("drain accepted");
    while closed.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    proxy
        .groups
        .resume("rack", Claim::Manual, true)
        .await
        .expect("resume accepted");
    wait_state(proxy, GroupState::Active).await;
    elapsed
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let state = std::env::temp_dir().join(format!("hashgate-bench-drain-{}", std::process::id()));
    let (pool, proxy) = runtime.block_on(async {
        let pool = SimPool::start(SimPoolConfig {
            difficulty: 1.0,
            job_interval: Duration::from_secs(30),
            ..SimPoolConfig::default()
        })
        .await
        .expect("pool");
        let proxy = Proxy::start(config(&pool, &state)).await.expect("proxy");
        (pool, proxy)
    });
    let mut group = c.benchmark_group("drain");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for n in [200, 2000] {
        group.bench_function(format!("disconnect_{n}_miners"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += drain_once(&proxy, n).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
    runtime.block_on(proxy.shutdown());
    drop(pool);
    let _ = std::fs::remove_dir_all(&state);
}

criterion_group!(drain, benches);
criterion_main!(drain);
