//! The farm scenario: several hashgate instances in front of one pool (a farm bigger than one
//! process's 20,000 open files), the swarm spread over the tool's child processes, and the one
//! view of them all: `hashgate status` given every instance's API, and Prometheus scraping
//! every instance from one scrape config (when `prometheus` is installed), both read while the
//! miners are connected.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::procs::{Proxy, Swarm, free_port, hashgate};

/// What the one view showed while every miner was connected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FarmView {
    /// Miners `hashgate status --api A,B,...` counted over all instances (its total line).
    pub status_miners: Option<u64>,
    /// Instances it reached.
    pub status_instances: Option<u64>,
    /// `count(up{job="hashgate"} == 1)` from the one scrape config.
    pub prometheus_up: Option<f64>,
    /// `sum(hashgate_workers_connected)` from it.
    pub prometheus_workers: Option<f64>,
    /// Why Prometheus was not read, when it was not.
    pub prometheus_note: Option<String>,
}

/// Runs the swarm against `proxies` and reads the one view while the miners are held.
pub fn run(
    swarm: &Swarm<'_>,
    proxies: &[Proxy],
    dir: &Path,
) -> Result<(hashgate::load::LoadReport, FarmView)> {
    let apis: Vec<String> = proxies
        .iter()
        .filter_map(|p| p.api)
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let miners = swarm.miners as u64;
    swarm.run_with(|tool| {
        let mut view = FarmView::default();
        // The ramp: until the one command counts every miner (or the tool ended).
        let deadline = Instant::now() + Duration::from_secs(miners / 2_000 + 60);
        while Instant::now() < deadline && matches!(tool.try_wait(), Ok(None)) {
            if let Some((reached, counted)) = status_total(&apis) {
                view.status_instances = Some(reached);
                view.status_miners = Some(counted);
                if counted >= miners {
                    break;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        match prometheus_view(&apis, dir, tool) {
            Ok((up, workers)) => {
                view.prometheus_up = up;
                view.prometheus_workers = workers;
            }
            Err(error) => view.prometheus_note = Some(format!("{error:#}")),
        }
        view
    })
}

/// `hashgate status` over every API: (instances reached, miners counted) from its total line.
fn status_total(apis: &[String]) -> Option<(u64, u64)> {
    let output = Command::new(hashgate())
        .arg("status")
        .arg("--api")
        .arg(apis.join(","))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "total (6 of 6)   100000   0   0   0"
    let line = text.lines().find(|l| l.starts_with("total ("))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reached = words.get(1)?.trim_start_matches('(').parse().ok()?;
    let miners = words.get(4)?.parse().ok()?;
    Some((reached, miners))
}

/// Starts Prometheus with one scrape config listing every instance, waits for a scrape of all
/// of them (or 30 s, or the tool's end), and reads (instances up, workers connected).
fn prometheus_view(
    apis: &[String],
    dir: &Path,
    tool: &mut Child,
) -> Result<(Option<f64>, Option<f64>)> {
    let home = dir.join("farm-prometheus");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home)?;
    let targets: Vec<String> = apis
        .iter()
        .map(|a| format!("\"{}\"", a.trim_start_matches("http://")))
        .collect();
    let config = home.join("prometheus.yml");
    // The same job as deploy/prometheus/prometheus.yml, every instance one target of it.
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hashgate\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n        labels:\n          farm: bench\n",
            targets.join(", ")
        ),
    )?;
    let port = free_port()?;
    let mut server = Command::new("taskset")
        .args(["-c", "1", "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            home.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.join("prometheus.log"))?)
        .spawn()
        .context("prometheus is not installed (Debian's `prometheus` package)")?;
    let query = |q: &str| -> Option<f64> {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let mut response = ureq::get(&url).query("query", q).call().ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        let body: serde_json::Value = serde_json::from_str(&text).ok()?;
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = (None, None);
    while Instant::now() < deadline && matches!(tool.try_wait(), Ok(None)) {
        seen = (
            query("count(up{job=\"hashgate\"} == 1)"),
            query("sum(hashgate_workers_connected{job=\"hashgate\"})"),
        );
        if seen.0 == Some(apis.len() as f64) && seen.1.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(seen)
}
