//! The aggregating proxy end to end: real TCP miners -> hashgate -> real TCP simulated pools.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{RawMiner, config_for, eventually, pool, proxy};
use hashgate::metrics::Metrics;
use hashgate::protocol::{Id, Message, Method};
use hashgate::sim::{
    SimMinerConfig, SimMinerStats, SimPool, SimPoolCommand, SimPoolConfig, run_sim_miner,
};
use tokio_util::sync::CancellationToken;

fn spawn_miners(
    addr: std::net::SocketAddr,
    count: usize,
    hashrate: f64,
    cancel: &CancellationToken,
) -> Vec<Arc<SimMinerStats>> {
    (0..count)
        .map(|i| {
            let stats = Arc::new(SimMinerStats::default());
            let config = SimMinerConfig::new(addr, format!("farm.rig{i}"), hashrate);
            tokio::spawn(run_sim_miner(config, Arc::clone(&stats), cancel.clone()));
            stats
        })
        .collect()
}

fn upstream(metrics: &Metrics, result: &str) -> u64 {
    Metrics::sum_counter(&metrics.upstream.shares, "result", result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_share_one_upstream_connection_and_the_pool_accepts_every_forwarded_share() {
    let pool = pool(0.00002).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let cancel = CancellationToken::new();
    let miners = spawn_miners(proxy.miner_addr, 4, 100_000.0, &cancel);
    eventually("every miner has accepted shares", || {
        miners
            .iter()
            .all(|m| m.accepted.load(Ordering::Relaxed) >= 3)
    })
    .await;
    eventually("some shares reached the pool", || {
        pool.stats.accepted.load(Ordering::Relaxed) >= 3
    })
    .await;
    cancel.cancel();
    // Let answers to shares in flight arrive.
    eventually("every forwarded share answered", || {
        upstream(&proxy.metrics, "accepted") + upstream(&proxy.metrics, "rejected")
            == pool.stats.accepted.load(Ordering::Relaxed)
                + pool.stats.rejected.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(
        pool.stats.connections.load(Ordering::Relaxed),
        1,
        "one upstream connection"
    );
    assert_eq!(
        pool.stats.rejected.load(Ordering::Relaxed),
        0,
        "zero invalid upstream"
    );
    assert_eq!(upstream(&proxy.metrics, "rejected"), 0);
    assert_eq!(upstream(&proxy.metrics, "lost"), 0);
    for m in &miners {
        assert_eq!(m.rejected.load(Ordering::Relaxed), 0);
    }
    // Exactly the shares that meet the pool's difficulty went upstream: the pool saw fewer shares
    // than the miners had accepted (miner difficulty is below the pool's), all under the proxy's
    // worker name.
    let by_worker = pool.stats.accepted_by_worker();
    assert_eq!(by_worker.keys().collect::<Vec<_>>(), vec!["farm.proxy"]);
    let accepted_by_proxy: u64 = miners
        .iter()
        .map(|m| m.accepted.load(Ordering::Relaxed))
        .sum();
    assert!(pool.stats.accepted.load(Ordering::Relaxed) < accepted_by_proxy);
    proxy.shutdown().await;
}

/// Only shares whose hash meets the pool's target are forwarded: checked share by share on the
/// wire with a raw miner whose difficulty is far below the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_shares_meeting_the_pool_target_are_forwarded() {
    let pool = pool(0.001).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner.handshake("farm.a").await;
    let pool_threshold = hashgate::protocol::Difficulty::new(0.001)
        .unwrap()
        .to_threshold();
    let mut expected_forwarded = 0;
    for (i, en2) in (0..40u64).enumerate() {
        let share = miner.find_share(en2 * 7919, true, None);
        // What the pool will think of it: recompute the hash as a third party would.
        let job = miner.book.get(share.job_id.as_str()).unwrap().clone();
        let hash = hashgate::work::hash_share(
            &job,
            &miner.extranonce1.unwrap(),
            miner.extranonce2_size,
            0,
            &share,
        )
        .unwrap()
        .hash;
        if pool_threshold.is_met_by(&hash) {
            expected_forwarded += 1;
        }
        miner
            .send(&RawMiner::submit_line(100 + i as u64, "farm.a", &share))
            .await;
        assert!(miner.response(Id::from(100 + i as u64)).await.is_ok());
    }
    eventually("the pool answered the forwarded shares", || {
        upstream(&proxy.metrics, "accepted") == expected_forwarded
    })
    .await;
    assert_eq!(
        pool.stats.accepted.load(Ordering::Relaxed),
        expected_forwarded
    );
    assert_eq!(pool.stats.rejected.load(Ordering::Relaxed), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_20_to_25_on_the_wire() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;

    // 25: submit before subscribe.
    let mut early = RawMiner::connect(&proxy).await;
    early
        .send(r#"{"id":1,"method":"mining.submit","params":["w","1","00000000","00000000","00000000"]}"#)
        .await;
    let r = early.response(Id::from(1)).await;
    assert_eq!(r.error.map(|e| e.code), Some(25));

    // 24: subscribed but not authorized.
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .send(r#"{"id":1,"method":"mining.subscribe","params":[]}"#)
        .await;
    let r = miner.response(Id::from(1)).await;
    assert!(r.is_ok(), "{r:?}");
    miner
        .send(r#"{"id":2,"method":"mining.submit","params":["w","1","0000000000000000","00000000","00000000"]}"#)
        .await;
    assert_eq!(
        miner.response(Id::from(2)).await.error.map(|e| e.code),
        Some(24)
    );

    // Authorize, get work.
    miner
        .send(r#"{"id":3,"method":"mining.authorize","params":["farm.w1","x"]}"#)
        .await;
    let r = miner.response(Id::from(3)).await;
    assert!(r.is_ok(), "{r:?}");
    miner.latest_job().await;

    // 21: unknown job.
    let mut stale = miner.find_share(1, true, None);
    stale.job_id = hashgate::protocol::JobId::new("no-such-job").unwrap();
    miner
        .send(&RawMiner::submit_line(4, "farm.w1", &stale))
        .await;
    assert_eq!(
        miner.response(Id::from(4)).await.error.map(|e| e.code),
        Some(21)
    );

    // accepted, then 22 for the same share again (with its hex upper-cased: same bytes).
    let good = miner.find_share(2, true, None);
    miner
        .send(&RawMiner::submit_line(5, "farm.w1", &good))
        .await;
    let r = miner.response(Id::from(5)).await;
    assert!(r.is_ok(), "{r:?}");
    miner
        .send(&RawMiner::submit_line(6, "farm.w1", &good).replace(
            &good.extranonce2.to_hex(),
            &good.extranonce2.to_hex().to_uppercase(),
        ))
        .await;
    assert_eq!(
        miner.response(Id::from(6)).await.error.map(|e| e.code),
        Some(22)
    );

    // 23: a real hash above the target.
    let low = miner.find_share(3, false, None);
    miner.send(&RawMiner::submit_line(7, "farm.w1", &low)).await;
    assert_eq!(
        miner.response(Id::from(7)).await.error.map(|e| e.code),
        Some(23)
    );

    // 20: bad hex, wrong extranonce2 size, ntime out of range, unknown method; the id is echoed.
    miner
        .send(r#"{"id":"x8","method":"mining.submit","params":["farm.w1","1","zz","00000000","00000000"]}"#)
        .await;
    let r = miner.response(Id::from("x8")).await;
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(20));
    let mut short = miner.find_share(4, true, None);
    short.extranonce2 = hashgate::protocol::Extranonce2::from_hex("00").unwrap();
    miner
        .send(&RawMiner::submit_line(9, "farm.w1", &short))
        .await;
    let r = miner.response(Id::from(9)).await;
    assert!(
        r.error.as_ref().unwrap().message.contains("extranonce2"),
        "{r:?}"
    );
    let mut future = miner.find_share(5, true, None);
    future.ntime += 7201;
    miner
        .send(&RawMiner::submit_line(10, "farm.w1", &future))
        .await;
    let r = miner.response(Id::from(10)).await;
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(20));
    assert!(r.error.unwrap().message.contains("ntime"));
    miner
        .send(r#"{"id":11,"method":"mining.get_transactions","params":[]}"#)
        .await;
    assert_eq!(
        miner.response(Id::from(11)).await.error.map(|e| e.code),
        Some(20)
    );

    // The shares the pool saw are only the valid one (if it met the pool's difficulty).
    assert_eq!(pool.stats.rejected.load(Ordering::Relaxed), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extranonce_prefixes_are_unique_across_1000_miners() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut extranonces = HashSet::new();
    let mut miners = Vec::new();
    for _ in 0..1000 {
        let mut miner = RawMiner::connect(&proxy).await;
        miner
            .send(r#"{"id":1,"method":"mining.subscribe","params":[]}"#)
            .await;
        miner.response(Id::from(1)).await;
        let extranonce1 = miner.extranonce1.expect("subscribed");
        assert_eq!(miner.extranonce2_size, 6, "pool 8 bytes - 2-byte prefix");
        assert!(
            extranonces.insert(extranonce1),
            "duplicate extranonce1 {extranonce1}"
        );
        miners.push(miner);
    }
    assert_eq!(extranonces.len(), 1000);
    assert_eq!(pool.stats.connections.load(Ordering::Relaxed), 1);
    proxy.shutdown().await;
}

/// A pool with a 3-byte extranonce2 leaves a 1-byte prefix: 256 miners per connection, so the
/// 257th miner makes hashgate open a second connection to the same pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_prefix_space_opens_another_upstream_connection() {
    let pool = common::pool_with(|c| {
        c.extranonce2_size = 3;
    })
    .await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut extranonces = HashSet::new();
    let mut miners = Vec::new();
    for _ in 0..300 {
        let mut miner = RawMiner::connect(&proxy).await;
        miner
            .send(r#"{"id":1,"method":"mining.subscribe","params":[]}"#)
            .await;
        let r = miner.response(Id::from(1)).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(miner.extranonce2_size, 2);
        assert!(extranonces.insert(miner.extranonce1.unwrap()));
        miners.push(miner);
    }
    assert_eq!(pool.stats.connections.load(Ordering::Relaxed), 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_extranonce_cannot_be_shared_is_left_for_the_next_and_tried_again() {
    // One byte of extranonce2: nothing to split between miners.
    let narrow = common::pool_with(|c| c.extranonce2_size = 1).await;
    let backup = pool(1.0).await;
    let proxy = proxy(common::config_with_urls(&[narrow.url(), backup.url()], "")).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .send(r#"{"id":1,"method":"mining.subscribe","params":["cgminer/4.11"]}"#)
        .await;
    assert!(miner.response(Id::from(1)).await.is_ok());
    miner
        .send(r#"{"id":2,"method":"mining.authorize","params":["farm.a","x"]}"#)
        .await;
    assert!(miner.response(Id::from(2)).await.is_ok());
    miner.notification("mining.notify").await;
    let unusable = || {
        proxy
            .metrics
            .upstream
            .disconnects
            .with_label_values(&["pool0", "unusable"])
            .get()
    };
    eventually("the narrow pool counted unusable", || unusable() >= 1).await;
    // Not given up for good: the connection is tried again (slowly, at backoff_max = 1 s).
    eventually("the narrow pool tried again", || {
        narrow.stats.connections.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(backup.stats.connections.load(Ordering::Relaxed), 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_backup_and_back_without_double_counting() {
    let primary = pool(0.00002).await;
    let primary_addr = primary.addr;
    let backup = pool(0.00002).await;
    let proxy = proxy(config_for(&[&primary, &backup], "")).await;
    let cancel = CancellationToken::new();
    let miners = spawn_miners(proxy.miner_addr, 3, 100_000.0, &cancel);
    eventually("the primary receives shares", || {
        primary.stats.accepted.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(
        backup.stats.accepted.load(Ordering::Relaxed),
        0,
        "the farm starts on its primary"
    );

    let jobs_before: u64 = miners.iter().map(|m| m.jobs.load(Ordering::Relaxed)).sum();
    primary.kill();
    let killed = Instant::now();
    eventually("every miner gets a job from the backup", || {
        miners
            .iter()
            .map(|m| m.jobs.load(Ordering::Relaxed))
            .sum::<u64>()
            >= jobs_before + 3
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        killed.elapsed()
    );
    eventually("the backup accepts shares", || {
        backup.stats.accepted.load(Ordering::Relaxed) >= 2
    })
    .await;

    // The primary comes back on its address; after failover.return_after (2 s) miners return.
    let revived = SimPool::start(SimPoolConfig {
        listen: primary_addr,
        difficulty: 0.00002,
        job_interval: Duration::from_secs(30),
        ..SimPoolConfig::default()
    })
    .await
    .expect("rebind the primary's port");
    eventually("shares return to the primary", || {
        revived.stats.accepted.load(Ordering::Relaxed) >= 2
    })
    .await;
    cancel.cancel();
    // The miners are stopped: once the shares in flight are answered, proxy and pools agree.
    let pools_accepted = || {
        primary.stats.accepted.load(Ordering::Relaxed)
            + backup.stats.accepted.load(Ordering::Relaxed)
            + revived.stats.accepted.load(Ordering::Relaxed)
    };
    eventually("proxy and pools agree", || {
        upstream(&proxy.metrics, "accepted") == pools_accepted()
    })
    .await;
    for pool in [&primary, &backup, &revived] {
        assert_eq!(
            pool.stats.duplicates.load(Ordering::Relaxed),
            0,
            "no share counted twice"
        );
        assert_eq!(pool.stats.rejected.load(Ordering::Relaxed), 0);
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_stops_sending_jobs_is_down() {
    // The primary never sends a second job (job_interval far away) and its job_timeout is 2 s.
    let silent = common::pool_with(|c| {
        c.job_interval = Duration::from_secs(3600);
    })
    .await;
    let backup = pool(1.0).await;
    let mut config = config_for(&[&silent, &backup], "");
    config.upstreams[0].job_timeout = Duration::from_secs(2);
    let proxy = proxy(config).await;
    // The silent primary sends one job, then nothing: after its job_timeout hashgate drops the
    // connection (and reconnects), and the backup serves.
    eventually("the silent primary is dropped and reconnected", || {
        silent.stats.connections.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(Metrics::sum_counter(&proxy.metrics.upstream.shares, "result", "lost") == 0);
    eventually("the backup serves", || {
        proxy.router.serving_upstream().as_deref() == Some("pool1")
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_set_extranonce_is_followed() {
    let pool = pool(0.00002).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let cancel = CancellationToken::new();
    let miners = spawn_miners(proxy.miner_addr, 2, 100_000.0, &cancel);
    // A raw miner that did not subscribe to extranonce changes is asked to reconnect.
    let mut plain = RawMiner::connect(&proxy).await;
    plain.handshake("farm.plain").await;
    eventually("shares flow", || {
        pool.stats.accepted.load(Ordering::Relaxed) >= 2
    })
    .await;

    pool.command(SimPoolCommand::SetExtranonce {
        extranonce2_size: 8,
    });
    let reconnect = plain.notification("client.reconnect").await;
    assert!(matches!(reconnect.method, Method::Reconnect(_)));
    assert!(
        plain.closed().await,
        "the proxy closes after asking to reconnect"
    );

    let before = pool.stats.accepted.load(Ordering::Relaxed);
    eventually("shares on the new extranonce are accepted", || {
        pool.stats.accepted.load(Ordering::Relaxed) >= before + 3
    })
    .await;
    cancel.cancel();
    // Every share forwarded so far has its answer from the pool (none is still in flight).
    eventually("the pool answered every forwarded share", || {
        let answered = pool.stats.accepted.load(Ordering::Relaxed)
            + pool.stats.rejected.load(Ordering::Relaxed);
        answered == upstream(&proxy.metrics, "accepted") + upstream(&proxy.metrics, "rejected")
    })
    .await;
    assert_eq!(pool.stats.rejected.load(Ordering::Relaxed), 0);
    for m in &miners {
        let codes = m.rejected_codes();
        assert!(
            codes.keys().all(|c| *c == 21),
            "only stale shares at the switch: {codes:?}"
        );
    }
    proxy.shutdown().await;
}

/// Vardiff on the wire: a simulated miner of known (measured) hashrate settles within +-30% of
/// the target share interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vardiff_converges_for_a_miner_of_known_hashrate() {
    let pool = pool(1.0).await;
    let config = config_for(&[&pool], "");
    let mut config = config;
    config.difficulty.target_share_interval = Duration::from_millis(250);
    config.difficulty.retarget_interval = Duration::from_secs(1);
    config.difficulty.initial = 0.000_000_15; // about 16x too low for 40 kH/s at 0.25 s
    let proxy = proxy(config).await;
    let cancel = CancellationToken::new();
    let stats = Arc::new(SimMinerStats::default());
    let started = Instant::now();
    tokio::spawn(run_sim_miner(
        // Slow enough that a busy 2-core CI machine still delivers it steadily.
        SimMinerConfig::new(proxy.miner_addr, "farm.vardiff", 40_000.0),
        Arc::clone(&stats),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Sample the difficulty over the next 20 seconds, and measure the hashrate over the same span
    // (the machine may be busy: the known hashrate is the one actually delivered). Twenty
    // seconds are ~80 shares: the Poisson noise of a shorter span alone came near the +-30%.
    let hashes_before = stats.hashes.load(Ordering::Relaxed);
    let sampling = Instant::now();
    let mut samples = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(stats.difficulty());
    }
    cancel.cancel();
    let measured_hashrate = (stats.hashes.load(Ordering::Relaxed) - hashes_before) as f64
        / sampling.elapsed().as_secs_f64();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let interval = mean * 4_294_967_296.0 / measured_hashrate;
    assert!(
        (interval / 0.25 - 1.0).abs() < 0.3,
        "share interval {interval:.3}s at difficulty {mean:e} for {measured_hashrate:.0} H/s (started {started:?} ago)",
        started = started.elapsed()
    );
    assert!(stats.difficulty_changes.load(Ordering::Relaxed) >= 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_connecting_before_any_pool_are_answered_and_get_work_when_it_comes() {
    // A port for a pool that is not there yet: bound (nobody else can take it) but not
    // listening (a connection to it is refused), until the pool listens on this same socket.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reserved.local_addr().unwrap().port();
    let config = common::config_with_urls(&[format!("stratum+tcp://127.0.0.1:{port}")], "");
    let proxy = proxy(config).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .write_raw(concat!(
            r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000"}]}"#, "\n",
            r#"{"id":2,"method":"mining.authorize","params":["farm.early","x"]}"#, "\n",
            r#"{"id":3,"method":"mining.subscribe","params":["cgminer/4.11"]}"#, "\n",
        ))
        .await;
    let r = miner.response(Id::from(1)).await;
    assert!(r.is_ok(), "{r:?}");
    let r = miner.response(Id::from(2)).await;
    assert!(r.is_ok(), "{r:?}");
    // The proxy has tried the pool that is not there yet, and the subscribe waits.
    eventually("a failed connection attempt", || {
        proxy
            .metrics
            .upstream
            .disconnects
            .with_label_values(&["pool0", "connect"])
            .get()
            >= 1
    })
    .await;
    let pool = SimPool::start_on(
        reserved.listen(64).unwrap(),
        SimPoolConfig {
            difficulty: 1.0,
            job_interval: Duration::from_secs(30),
            ..SimPoolConfig::default()
        },
    )
    .unwrap();
    let subscribed = miner.response(Id::from(3)).await;
    assert!(subscribed.is_ok(), "{subscribed:?}");
    let job = miner.notification("mining.notify").await;
    assert!(matches!(job.method, Method::Notify(_)));
    drop(pool);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_that_does_not_read_is_dropped_without_slowing_the_others() {
    let pool = common::pool_with(|c| {
        c.job_interval = Duration::from_millis(5);
    })
    .await;
    let mut config = config_for(&[&pool], "");
    config.server.write_buffer_bytes = 16 * 1024;
    let proxy = proxy(config).await;
    // The stuck miner subscribes and authorizes, then never reads again (with a small receive
    // buffer so the kernel does not hide the backlog for minutes).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stuck = socket.connect(proxy.miner_addr).await.unwrap();
    stuck.writable().await.unwrap();
    stuck.try_write(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"farm.stuck\"]}\n").unwrap();
    let mut healthy = RawMiner::connect(&proxy).await;
    healthy.handshake("farm.ok").await;
    let mut jobs = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if let Message::Request(r) = healthy.next().await
            && matches!(r.method, Method::Notify(_))
        {
            jobs += 1;
        }
    }
    assert!(jobs > 200, "the healthy miner kept getting jobs: {jobs}");
    eventually("the stuck miner is disconnected as a slow reader", || {
        Metrics::sum_counter(&proxy.metrics.miners.disconnects, "reason", "slow_reader") == 1
    })
    .await;
    drop(stuck);
    proxy.shutdown().await;
}

/// A departing miner's prefix is not handed to the next miner while the jobs it could have worked
/// on are live: otherwise the newcomer could produce the old miner's shares (stratum PR #2261).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_prefix_is_not_reused_while_its_jobs_are_live() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut first = RawMiner::connect(&proxy).await;
    first.handshake("farm.first").await;
    let first_extranonce = first.extranonce1.unwrap();
    drop(first);
    eventually("the first miner's session ended", || {
        proxy.metrics.miners.connections.get() == 0
    })
    .await;
    let mut second = RawMiner::connect(&proxy).await;
    second.handshake("farm.second").await;
    assert_ne!(
        second.extranonce1.unwrap(),
        first_extranonce,
        "the job the first miner had is still live"
    );
    proxy.shutdown().await;
}
