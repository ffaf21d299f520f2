//! The load tool works end to end, small (the full scenarios are benches): `hashgate load
//! swarm` drives 2,000 real miners through a `hashgate run` process whose upstream is the
//! tool's own embedded pool, and `hashgate load floor` measures the raw write loop. The JSON
//! reports must show every miner held, every job delivered once, real shares accepted by the
//! proxy and by the pool with none lost, and the proxy's resources read from /proc.

mod common;

use std::net::TcpListener;

use common::daemon::{Daemon, hashgate};
use common::state_dir;
use serde_json::Value;

/// A port free now (the tool's pool binds it a moment later; the daemon retries its upstream
/// until it is there).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn report(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the tool wrote its report");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn n(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn a_swarm_of_2000_miners_mines_through_hashgate_and_every_figure_is_measured() {
    let dir = state_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let pool_port = free_port();
    let config = dir.join("hashgate.toml");
    let difficulty = 1.0 / 1_048_576.0;
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_miners = 5000\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [state]\ndir = \"{}\"\n\
             [difficulty]\ninitial = {difficulty}\nmin = {difficulty}\nmax = {difficulty}\n\
             [[upstream]]\nname = \"pool\"\nurl = \"stratum+tcp://127.0.0.1:{pool_port}\"\nuser = \"load.proxy\"\n",
            dir.join("state").display()
        ),
    )
    .expect("config");
    let daemon = Daemon::start(&config);
    let json = dir.join("swarm.json");
    let output = hashgate()
        .args([
            "load",
            "swarm",
            "--miners",
            "2000",
            "--connect-rate",
            "4000",
        ])
        .args(["--shares-per-second", "100", "--job-interval", "2s"])
        .args(["--warmup", "1s", "--duration", "20s"])
        .arg("--target")
        .arg(daemon.miners.to_string())
        .arg("--pool-listen")
        .arg(format!("127.0.0.1:{pool_port}"))
        .arg("--pool-difficulty")
        .arg(difficulty.to_string())
        .arg("--proxy-pid")
        .arg(daemon.pid().to_string())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("hashgate load runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.contains("job fan-out") && table.contains("submit round trip"),
        "{table}"
    );
    let r = report(&json);
    assert_eq!(
        (n(&r, "connected"), n(&r, "ready"), n(&r, "closed")),
        (2000, 2000, 0),
        "{table}"
    );
    // Jobs every 2 s over a 20 s window: every miner got each of them exactly once, each
    // with its kernel receive stamp.
    let jobs = n(&r, "jobs");
    assert!(jobs >= 8, "{table}");
    assert_eq!(
        (n(&r, "missing_notifies"), n(&r, "duplicate_notifies")),
        (0, 0),
        "{table}"
    );
    assert!(n(&r["fan_out"], "count") >= jobs * 2000, "{table}");
    assert!(r["fan_out"]["p99_ms"].as_f64().unwrap_or(0.0) > 0.0);
    // Real shares at the planned rate, accepted by the proxy and by the pool, none lost. A
    // share for a job a clean job just replaced is stale (21) at the proxy, or at the pool when
    // the proxy had not seen the clean job yet: counted, never lost.
    let accepted = n(&r, "accepted");
    assert!(accepted >= 1800, "about 100/s for 20 s: {table}");
    let rejected = r["rejected"].as_object().cloned().unwrap_or_default();
    assert!(
        rejected.keys().all(|code| code == "21"),
        "only stale shares are refused: {table}"
    );
    let stale =
        n(&r, "pool_stale_total") + rejected.values().filter_map(Value::as_u64).sum::<u64>();
    assert!(stale * 100 <= accepted, "stale shares are rare: {table}");
    assert!(n(&r["round_trip"], "count") >= accepted, "{table}");
    assert_eq!(n(&r, "lost_shares"), 0, "{table}");
    assert_eq!(
        n(&r, "accepted_total"),
        n(&r, "pool_accepted_total") + n(&r, "pool_stale_total"),
        "{table}"
    );
    // The proxy's resources: memory grew with the miners, one file per miner.
    let proxy = &r["proxy"];
    assert!(
        proxy["rss_per_miner_kib"].as_f64().unwrap_or(0.0) > 0.0,
        "{table}"
    );
    assert!(n(&proxy["after_ramp"], "open_files") >= 2000, "{table}");
    assert!(proxy["cpu_per_forwarded_share_us"].as_f64().unwrap_or(0.0) > 0.0);
    drop(daemon);

    // The floor on the same machine: every line of every round stamped.
    let floor = dir.join("floor.json");
    let output = hashgate()
        .args(["load", "floor", "--sockets", "500", "--rounds", "5"])
        .arg("--json")
        .arg(&floor)
        .output()
        .expect("hashgate load floor runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let f = report(&floor);
    assert_eq!(n(&f["fan_out"], "count"), 2500, "{f:#}");
    assert!(f["write_us_per_socket"].as_f64().unwrap_or(0.0) > 0.0);
}
