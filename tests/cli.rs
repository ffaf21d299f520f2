//! The `hashgate` binary as an operator runs it.

mod common;

use common::daemon::{Daemon, hashgate};

const VECTOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/stratum_job_mainnet_block.json"
);

#[test]
fn verify_share_accepts_the_mainnet_block() {
    let out = hashgate()
        .args(["verify-share", VECTOR, "--difficulty", "65536"])
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae"));
    assert!(stdout.contains("block:          true"));
}

#[test]
fn verify_share_rejects_at_an_impossible_difficulty_and_reports_bad_files() {
    let out = hashgate()
        .args(["verify-share", VECTOR, "--difficulty", "1e17"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected (23)"));

    let out = hashgate()
        .args(["verify-share", "/nonexistent/share.json"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/share.json"));
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hashgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"
[[upstream]]
name = "primary"
url = "stratum+tcp://127.0.0.1:3334"
user = "farm.proxy"
"#;

#[test]
fn check_config_accepts_the_shipped_examples() {
    for file in ["config/farm.toml", "config/demo.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = hashgate().arg("check-config").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn check_config_names_the_file_the_key_and_the_line() {
    let cases = [
        (
            "bad_url.toml",
            VALID.replace("127.0.0.1:3334", "nowhere"),
            "upstream[0].url",
        ),
        (
            "bad_difficulty.toml",
            format!("{VALID}[difficulty]\nmin = -1.0\n"),
            "difficulty.min",
        ),
        (
            "bad_duration.toml",
            VALID.replace("[server]", "[server]\nidle_timeout = \"soon\""),
            ":3:",
        ),
        (
            "unknown_key.toml",
            format!("{VALID}colour = \"blue\"\n"),
            "colour",
        ),
        ("syntax.toml", "[server\nlisten = 1\n".to_string(), ":1:"),
        (
            "open_api.toml",
            format!("{VALID}[api]\nlisten = \"0.0.0.0:9100\"\n"),
            "api.listen",
        ),
        (
            "no_upstream.toml",
            "[server]\nlisten = \"127.0.0.1:0\"\n".to_string(),
            "upstream",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write_config(name, &text);
        let out = hashgate().arg("check-config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} should be rejected");
        assert!(
            stderr.contains(name),
            "{name}: message names the file: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{name}: message names {needle}: {stderr}"
        );
    }
    let out = hashgate()
        .args(["check-config", "/nonexistent/hashgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/hashgate.toml"));
}

/// Runs the demo on free ports with `args`; its stdout, after checking it succeeded.
fn run_demo(args: &[&str]) -> String {
    let out = hashgate()
        .args(["demo", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_runs_and_the_pool_accepts_every_forwarded_share() {
    let stdout = run_demo(&["--seconds", "6", "--miners", "4"]);
    assert!(
        stdout.contains("ok: the pool accepted every share hashgate forwarded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("miners 4"),
        "status lines show the miners: {stdout}"
    );
}

#[test]
fn the_demo_drains_a_rack_with_sleep_on_measured_power_and_brings_it_back() {
    let stdout = run_demo(&[
        "--seconds",
        "45",
        "--miners",
        "8",
        "--power-cycle-after",
        "8",
    ]);
    for line in [
        "rack-a active",
        "kW meter",
        "kW firmware",
        "-> demo: rack-b drained (verified by measured power: true; 4 of 4 machines off)",
        "-> demo: rack-b active again",
        "ok: the pool accepted every share hashgate forwarded",
    ] {
        assert!(stdout.contains(line), "{line:?} not in: {stdout}");
    }
    // Drained after every machine was read: the baseline is the firmware's 5,636 W (two
    // S19k Pros and two Bitaxes), and asleep they draw under 150 W.
    let drained = stdout
        .lines()
        .find(|l| l.starts_with("-> demo: rack-b drained"))
        .unwrap_or_default();
    let released: f64 = drained
        .split("released ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|w| w.parse().ok())
        .unwrap_or(0.0);
    assert!((5_486.0..=5_636.0).contains(&released), "{drained}");
}

#[test]
fn demo_on_a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = hashgate()
        .args([
            "demo",
            "--seconds",
            "1",
            "--listen",
            &addr,
            "--api",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `hashgate run` serves miners and stops cleanly on SIGTERM.
#[test]
fn run_stops_gracefully_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = runtime
        .block_on(hashgate::sim::SimPool::start(
            hashgate::sim::SimPoolConfig::default(),
        ))
        .unwrap();
    let state = std::env::temp_dir().join(format!("hashgate-cli-state-{}", std::process::id()));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n[[upstream]]\nname = \"p\"\nurl = \"{}\"\nuser = \"u\"\n",
        state.display(),
        pool.url()
    );
    let path = write_config("run.toml", &text);
    // It accepts miners once it says it runs (its log names the address it bound).
    let daemon = Daemon::start(&path);
    assert!(std::net::TcpStream::connect(daemon.miners).is_ok());
    let exit = daemon.terminate();
    assert!(exit.success(), "exit status {exit:?}");
    drop(pool);
}

/// `hashgate status` reads a running proxy's API and prints its tables.
#[test]
fn status_prints_upstreams_groups_and_workers() {
    // The demo binds port 0 for both listeners and prints where (no port probed, then lost).
    let mut demo = hashgate()
        .args([
            "demo",
            "--seconds",
            "20",
            "--miners",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let api = loop {
        let line = lines
            .next()
            .expect("the demo prints its addresses")
            .unwrap();
        if let Some(url) = line.trim().strip_prefix("metrics") {
            break url
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned();
        }
    };
    // Keep reading the demo's output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let stdout = loop {
        let out = hashgate()
            .args(["status", "--api", &format!("http://{api}")])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && stdout.contains("serving") && stdout.contains("demo.rig") {
            break stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the demo: {stdout}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(
        stdout.contains("UPSTREAM") && stdout.contains("demo-pool"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GROUP") && stdout.contains("default"),
        "{stdout}"
    );
    assert!(stdout.contains("WORKER"), "{stdout}");
}
