//! The deployment files against real tools: promtool on the Prometheus files and on the live
//! `/metrics`, the dashboard's PromQL, and a real Prometheus server scraping a running proxy.
//! `.ci/run` installs Debian's `prometheus` package (prometheus and promtool).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{config_for, eventually, http_get, pool, proxy};
use hashgate::sim::{SimMinerConfig, SimMinerStats, run_sim_miner};
use tokio_util::sync::CancellationToken;

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} not found on PATH: install Debian's `prometheus` package (.ci/run does)")
    })
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("tool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_config_rules_and_alert_tests_pass_promtool() {
    let promtool = tool("promtool");
    run_ok(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(deploy("prometheus/prometheus.yml")),
    );
    // The compose file names alerts.yml by its path inside the container.
    run_ok(
        Command::new(&promtool)
            .args(["check", "config", "--syntax-only"])
            .arg(deploy("docker/prometheus-compose.yml")),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(deploy("prometheus/alerts.yml")),
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(deploy("prometheus")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has at least one unit test.
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    for line in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no promtool test"
        );
    }
}

/// Every PromQL expression of the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/hashgate-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push(
                expr.replace("$group", ".*")
                    .replace("$__rate_interval", "5m"),
            );
        }
    }
    assert!(queries.len() >= 12, "the dashboard has its panels");
    queries
}

/// Metric names a query reads (histogram series map to their family).
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if query[i..].starts_with("hashgate_") || query[i..].starts_with("process_") {
            let end = query[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(query.len(), |e| i + e);
            let name = &query[i..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.push(family.to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

struct Traffic {
    proxy: hashgate::proxy::Proxy,
    cancel: CancellationToken,
    _pool: hashgate::sim::SimPool,
}

async fn proxy_with_traffic() -> Traffic {
    let pool = pool(0.00002).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let cancel = CancellationToken::new();
    let stats = Arc::new(SimMinerStats::default());
    for i in 0..2 {
        tokio::spawn(run_sim_miner(
            SimMinerConfig::new(proxy.miner_addr, format!("farm.rig{i}"), 100_000.0),
            Arc::clone(&stats),
            cancel.clone(),
        ));
    }
    eventually("shares flow", || {
        stats.accepted.load(Ordering::Relaxed) >= 4
            && pool.stats.accepted.load(Ordering::Relaxed) >= 1
    })
    .await;
    Traffic {
        proxy,
        cancel,
        _pool: pool,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_and_dashboard_queries_check_out() {
    let traffic = proxy_with_traffic().await;
    let url = format!("http://{}/metrics", traffic.proxy.api_addr);
    let (status, metrics) = tokio::task::spawn_blocking(move || http_get(&url))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // promtool check metrics on the live exposition.
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every dashboard query is valid PromQL (checked as a recording rule) and names only
    // metrics this proxy exports.
    let queries = dashboard_queries();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(query).unwrap()
        ));
        for name in metric_names(query) {
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "dashboard query {query:?} reads {name}, which hashgate does not export"
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("hashgate-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules_file = dir.join("dashboard_rules.yml");
    std::fs::write(&rules_file, rules).unwrap();
    run_ok(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(&rules_file),
    );

    traffic.cancel.cancel();
    traffic.proxy.shutdown().await;
}

/// A real Prometheus server scrapes the running proxy; the dashboard's hashrate and share-rate
/// queries return data through its HTTP API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_hashgate() {
    let traffic = proxy_with_traffic().await;
    let dir = std::env::temp_dir().join(format!("hashgate-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hashgate\n    static_configs:\n      - targets: [\"{}\"]\n",
            traffic.proxy.api_addr
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let base = format!("http://127.0.0.1:{port}");
    let queries = dashboard_queries();
    let hashrate = queries
        .iter()
        .find(|q| q.contains("hashgate_accepted_difficulty_total"))
        .unwrap()
        .clone();
    let share_rate = queries
        .iter()
        .find(|q| q.starts_with("sum by (result) (rate(hashgate_shares_total"))
        .unwrap()
        .clone();
    let result = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let encode = |q: &str| {
            q.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let mut up = false;
        loop {
            if Instant::now() > deadline {
                return Err(format!("target up: {up}"));
            }
            std::thread::sleep(Duration::from_millis(500));
            let (status, targets) = http_get(&format!("{base}/api/v1/targets"));
            if status != 200 {
                continue;
            }
            up = targets.contains("\"health\":\"up\"");
            if !up {
                continue;
            }
            let non_empty = |query: &str| {
                let (status, body) =
                    http_get(&format!("{base}/api/v1/query?query={}", encode(query)));
                let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                status == 200
                    && value["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
            };
            if non_empty(&hashrate) && non_empty(&share_rate) {
                return Ok(());
            }
        }
    })
    .await
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    traffic.cancel.cancel();
    traffic.proxy.shutdown().await;
    result.expect("Prometheus scraped hashgate and answered the dashboard's queries");
}
