//! The session's one timer (idle limit and a waiting subscribe's deadline) on paused time: a
//! miner active past `server.idle_timeout` stays connected and its task does not spin; a silent
//! one is closed as `idle`.
//!
//! A tokio `Sleep` that has fired stays ready: a session that did not re-arm it would wake at
//! once on every turn from its first idle timeout on. On a paused clock such a task keeps the
//! runtime busy, so the clock never advances again and the scenario never ends: the scenario runs
//! on a thread of its own, watched on the wall clock, and a scenario that does not finish in
//! time is that failure.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{RawMiner, config_for, pool_with, proxy};
use hashgate::metrics::Metrics;
use hashgate::protocol::Id;

/// Wall-clock bound on a scenario that takes well under a second when nothing spins.
const WALL_BOUND: Duration = Duration::from_secs(60);

/// Runs `scenario` on a paused current-thread runtime on its own thread; fails the test when it
/// does not finish within [`WALL_BOUND`] of real time.
fn on_paused_time<F>(scenario: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(scenario());
        let _ = done.send(());
    });
    match finished.recv_timeout(WALL_BOUND) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed (see above)"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "the paused clock stopped advancing for {WALL_BOUND:?} of real time: a task spins"
        ),
    }
}

fn disconnects(metrics: &Metrics, reason: &str) -> u64 {
    Metrics::sum_counter(&metrics.miners.disconnects, "reason", reason)
}

#[test]
fn a_miner_active_past_idle_timeout_stays_and_a_silent_one_is_closed_as_idle() {
    on_paused_time(|| async {
        let pool = pool_with(|c| {
            c.difficulty = 1.0;
            // Jobs keep coming (the upstream is alive) but are not what keeps a miner.
            c.job_interval = Duration::from_secs(10);
        })
        .await;
        let mut config = config_for(&[&pool], "");
        config.server.idle_timeout = Duration::from_secs(5);
        let proxy = proxy(config).await;
        let mut active = RawMiner::connect(&proxy).await;
        active.handshake("farm.active").await;
        let mut silent = RawMiner::connect(&proxy).await;
        silent.handshake("farm.silent").await;

        // Six idle timeouts long, the active miner sends a line every second and is answered.
        for i in 0..30u64 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let id = 100 + i;
            active
                .send(&format!(
                    r#"{{"id":{id},"method":"mining.extranonce.subscribe","params":[]}}"#
                ))
                .await;
            assert!(active.response(Id::from(id)).await.is_ok());
        }
        assert!(silent.closed().await, "the silent miner was closed");
        assert_eq!(disconnects(&proxy.metrics, "idle"), 1);

        // Past its last line, the active one is closed at its own idle timeout, not before.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(disconnects(&proxy.metrics, "idle"), 1);
        assert!(
            active.closed().await,
            "the active miner, silent now, was closed"
        );
        assert_eq!(disconnects(&proxy.metrics, "idle"), 2);
        proxy.shutdown().await;
    });
}
