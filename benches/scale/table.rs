//! The scenarios' figures: collected per run, stated as ranges over the runs, ratios taken run
//! by run against the floor or peer measured in the same run, and written into BENCHMARKS.md
//! between its markers.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use hashgate::load::{FloorReport, LoadReport};

const BEGIN: &str = "<!-- scale-table:begin (written by `cargo bench --bench scale`) -->";
const END: &str = "<!-- scale-table:end -->";

/// A scenario of the goals table.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// The raw write loop over `sockets` loopback sockets.
    Floor { sockets: usize },
    /// Idle miners straight against the pool.
    DirectIdle { miners: usize },
    /// Idle miners through hashgate: fan-out and memory.
    Idle { miners: usize },
    /// Miners submitting through hashgate.
    Shares { miners: usize, rate: f64 },
    /// Idle miners spread over several hashgate instances (the swarm over child processes).
    Farm { miners: usize, instances: usize },
    /// The side-by-side scenario, one row per target.
    Peer {
        who: &'static str,
        miners: usize,
        rate: f64,
    },
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scenario::Floor { sockets } => write!(f, "floor, {sockets} sockets"),
            Scenario::DirectIdle { miners } => write!(f, "pool direct, {miners} idle miners"),
            Scenario::Idle { miners } => write!(f, "hashgate, {miners} idle miners"),
            Scenario::Shares { miners, rate } => {
                write!(f, "hashgate, {miners} miners at {rate} shares/s")
            }
            Scenario::Peer { who, miners, rate } => {
                write!(f, "{who}, {miners} miners at {rate} shares/s")
            }
            Scenario::Farm { miners, instances } => {
                write!(f, "hashgate x{instances}, {miners} idle miners")
            }
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct RunFigures {
    pub fan_out_p99_ms: f64,
    pub swarm: Option<LoadReport>,
    /// The floor's write time per socket (median round): the floor is N times it.
    pub write_us_per_socket: Option<f64>,
    /// The farm scenario's one view.
    pub farm: Option<super::farm::FarmView>,
}

impl From<LoadReport> for RunFigures {
    fn from(report: LoadReport) -> Self {
        RunFigures {
            fan_out_p99_ms: report.fan_out.p99_ms,
            swarm: Some(report),
            write_us_per_socket: None,
            farm: None,
        }
    }
}

impl From<FloorReport> for RunFigures {
    fn from(report: FloorReport) -> Self {
        RunFigures {
            fan_out_p99_ms: report.fan_out.p99_ms,
            swarm: None,
            write_us_per_socket: Some(report.write_us_per_socket),
            farm: None,
        }
    }
}

/// A scenario and its runs, in run order.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub runs: Vec<RunFigures>,
}

impl Row {
    /// Each run's value of `figure` (runs without a swarm report are skipped).
    pub fn swarm_values(&self, figure: impl Fn(&LoadReport) -> f64) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.swarm.as_ref().map(&figure))
            .collect()
    }

    /// Each run's fan-out p99.
    pub fn fan_out(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.fan_out_p99_ms).collect()
    }
}

/// Adds one run's figures to its scenario's row.
pub fn add(rows: &mut Vec<Row>, scenario: Scenario, figures: RunFigures) {
    match rows.iter_mut().find(|r| r.scenario == scenario) {
        Some(row) => row.runs.push(figures),
        None => rows.push(Row {
            scenario,
            runs: vec![figures],
        }),
    }
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// "a-b" over the runs (or "a" for one run, or one value).
fn range(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (high - low).abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
        format!("{low:.decimals$}")
    } else {
        format!("{low:.decimals$}-{high:.decimals$}")
    }
}

/// Run-by-run ratios `a[i] / b[i]`.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

/// The floor for `miners` sockets, run by run, from the floor measured at the nearest size:
/// its receive-stamp p99 (only where it was measured at that size, within 2%) and the write
/// floor, `miners` times its write time per socket (the definition: one thread writing
/// a line to each socket; a fan-out cannot end before its last line was written). Also the
/// sockets it was measured at.
pub struct Floor {
    pub p99_ms: Option<Vec<f64>>,
    pub write_ms: Vec<f64>,
    pub sockets: usize,
}

pub fn floor_for(rows: &[Row], miners: usize) -> Option<Floor> {
    let (sockets, r) = rows
        .iter()
        .filter_map(|r| match r.scenario {
            Scenario::Floor { sockets } => Some((sockets, r)),
            _ => None,
        })
        .min_by_key(|(sockets, _)| sockets.abs_diff(miners))?;
    let same_size = sockets.abs_diff(miners) * 50 <= miners;
    Some(Floor {
        p99_ms: same_size.then(|| r.fan_out()),
        write_ms: r
            .runs
            .iter()
            .filter_map(|run| run.write_us_per_socket)
            .map(|us| us * miners as f64 / 1000.0)
            .collect(),
        sockets,
    })
}

/// The scenarios as markdown tables.
pub fn markdown(rows: &[Row], runs: usize) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Ranges over {runs} run(s) of `cargo bench --bench scale`; hashgate pinned to core 0, the \
         tool to core 1; ratios taken run by run against the figure measured in the same run.\n\n"
    ));
    out.push_str(
        "**Job fan-out, idle miners** (pool send to the kernel's receive stamp at each miner)\n\n",
    );
    out.push_str("| miners | held | write floor (ms) | floor p99, receive stamps (ms) | pool direct p99 (ms) | hashgate p99 (ms) | hashgate / write floor | RSS per miner after the ramp / at the end (KiB) |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let Scenario::Idle { miners } = r.scenario else {
            continue;
        };
        let held = r.swarm_values(|s| s.ready as f64);
        let p99 = r.fan_out();
        let (write_text, p99_text, write) = match floor_for(rows, miners) {
            Some(floor) => (
                if floor.sockets == miners {
                    range(&floor.write_ms, 1)
                } else {
                    format!(
                        "{} (per-socket time at {})",
                        range(&floor.write_ms, 1),
                        floor.sockets
                    )
                },
                floor
                    .p99_ms
                    .map_or_else(|| "-".into(), |p99| range(&p99, 1)),
                floor.write_ms,
            ),
            None => ("-".into(), "-".into(), Vec::new()),
        };
        // Straight to the pool one process holds both ends: 9,900 stands for 10,000.
        let direct = rows
            .iter()
            .find(|r| matches!(r.scenario, Scenario::DirectIdle { miners: m } if m.abs_diff(miners) * 50 <= miners))
            .map(|d| range(&d.fan_out(), 1))
            .unwrap_or_else(|| "- (one process holds at most 9,900)".into());
        out.push_str(&format!(
            "| {miners} | {} | {write_text} | {p99_text} | {direct} | {} | {}x | {} / {} |\n",
            range(&held, 0),
            range(&p99, 1),
            range(&ratios(&p99, &write), 2),
            range(&r.swarm_values(rss_per_miner), 2),
            range(&r.swarm_values(rss_per_miner_at_end), 2),
        ));
    }
    out.push_str("\n**Shares** (every share forwarded: the miners' difficulty is the pool's)\n\n");
    out.push_str("| miners | shares/s asked | accepted/s | round trip p50 / p99 / p99.9 (ms) | proxy CPU per forwarded share (us) | proxy cores | lost | tool cores |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let Scenario::Shares { miners, rate } = r.scenario else {
            continue;
        };
        out.push_str(&format!(
            "| {miners} | {rate} | {} | {} / {} / {} | {} | {} | {} | {} |\n",
            range(&r.swarm_values(|s| s.shares_per_second), 0),
            range(&r.swarm_values(|s| s.round_trip.p50_ms), 2),
            range(&r.swarm_values(|s| s.round_trip.p99_ms), 2),
            range(&r.swarm_values(|s| s.round_trip.p999_ms), 2),
            range(&r.swarm_values(cpu_per_share), 1),
            range(&r.swarm_values(proxy_cores), 2),
            range(&r.swarm_values(|s| s.lost_shares as f64), 0),
            range(&r.swarm_values(|s| s.tool_cores.unwrap_or(0.0)), 2),
        ));
    }
    out.push_str("\n**A farm over several instances** (one pool; every instance pinned to core 0, the tool's child processes to core 1; a job reaches all instances at once)\n\n");
    out.push_str("| miners, instances | held | fan-out p99, all (ms) | write floor (ms) | all / write floor | fan-out p99 per instance (ms) | RSS per miner, each instance after the ramp; all at the end (KiB) | open files per instance | `hashgate status` total | Prometheus: instances up, workers |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let Scenario::Farm { miners, instances } = r.scenario else {
            continue;
        };
        let write = floor_for(rows, miners)
            .map(|f| f.write_ms)
            .unwrap_or_default();
        let p99 = r.fan_out();
        let per_instance = |pick: fn(&hashgate::load::report::Instance) -> f64| -> Vec<f64> {
            r.runs
                .iter()
                .filter_map(|run| run.swarm.as_ref())
                .flat_map(|s| s.instances.iter().map(pick))
                .collect()
        };
        let views: Vec<&super::farm::FarmView> =
            r.runs.iter().filter_map(|run| run.farm.as_ref()).collect();
        let status: Vec<f64> = views
            .iter()
            .filter_map(|v| v.status_miners.map(|m| m as f64))
            .collect();
        let up: Vec<f64> = views.iter().filter_map(|v| v.prometheus_up).collect();
        let workers: Vec<f64> = views.iter().filter_map(|v| v.prometheus_workers).collect();
        out.push_str(&format!(
            "| {miners}, {instances} | {} | {} | {} | {}x | {} | {}; {} | {} | {} | {}, {} |\n",
            range(&r.swarm_values(|s| s.ready as f64), 0),
            range(&p99, 1),
            range(&write, 1),
            range(&ratios(&p99, &write), 2),
            range(&per_instance(|i| i.fan_out.p99_ms), 1),
            range(&per_instance(|i| i.resources.rss_per_miner_kib), 2),
            range(&r.swarm_values(rss_per_miner_at_end), 2),
            range(&per_instance(|i| i.resources.end.open_files as f64), 0),
            range(&status, 0),
            range(&up, 0),
            range(&workers, 0),
        ));
    }
    out.push_str("\n**Side by side** (the same swarm and pool)\n\n");
    out.push_str("| target | miners, shares/s | held | RSS per miner (KiB) | fan-out p99 (ms) | round trip p99 (ms) | CPU per share (us) | lost |\n|---|---|---|---|---|---|---|---|\n");
    let mut hashgate = None;
    let mut peer = None;
    for r in rows {
        let Scenario::Peer { who, miners, rate } = r.scenario else {
            continue;
        };
        match who {
            "hashgate" => hashgate = Some(r),
            "aiostratum-proxy" => peer = Some(r),
            _ => {}
        }
        let proxied = who != "pool direct";
        out.push_str(&format!(
            "| {who} | {miners}, {rate} | {} | {} | {} | {} | {} | {} |\n",
            range(&r.swarm_values(|s| s.ready as f64), 0),
            if proxied {
                range(&r.swarm_values(rss_per_miner), 2)
            } else {
                "-".into()
            },
            range(&r.fan_out(), 1),
            range(&r.swarm_values(|s| s.round_trip.p99_ms), 2),
            if proxied {
                range(&r.swarm_values(cpu_per_share), 1)
            } else {
                "-".into()
            },
            range(&r.swarm_values(|s| s.lost_shares as f64), 0),
        ));
    }
    if let (Some(h), Some(p)) = (hashgate, peer) {
        out.push_str(&format!(
            "\nhashgate / aiostratum-proxy, run by run: memory per miner {}x, fan-out p99 {}x, round trip p99 {}x.\n",
            range(
                &ratios(&h.swarm_values(rss_per_miner), &p.swarm_values(rss_per_miner)),
                2
            ),
            range(&ratios(&h.fan_out(), &p.fan_out()), 2),
            range(
                &ratios(
                    &h.swarm_values(|s| s.round_trip.p99_ms),
                    &p.swarm_values(|s| s.round_trip.p99_ms)
                ),
                2
            ),
        ));
    } else {
        out.push_str("\n(aiostratum-proxy could not be set up in this session: no peer rows.)\n");
    }
    out
}

/// The proxy's RSS growth from the start to the window's end per miner held: the miners' steady
/// state (their jobs and buffers after a few jobs), not only what the handshake left.
pub fn rss_per_miner_at_end(report: &LoadReport) -> f64 {
    report.proxy.as_ref().map_or(0.0, |p| {
        p.end.rss_kib.saturating_sub(p.start.rss_kib) as f64 / report.ready.max(1) as f64
    })
}

/// The proxy's RSS growth over the ramp per miner held (0 straight to the pool).
pub fn rss_per_miner(report: &LoadReport) -> f64 {
    report.proxy.as_ref().map_or(0.0, |p| p.rss_per_miner_kib)
}

fn cpu_per_share(report: &LoadReport) -> f64 {
    report
        .proxy
        .as_ref()
        .map_or(0.0, |p| p.cpu_per_forwarded_share_us)
}

fn proxy_cores(report: &LoadReport) -> f64 {
    report.proxy.as_ref().map_or(0.0, |p| p.cores)
}

/// Replaces what lies between the markers in `file` with `table` (the markers are appended,
/// under a heading, when the file has none yet).
pub fn write_into(file: &Path, table: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let block = format!("{BEGIN}\n{table}{END}");
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!("{}{block}{}", &text[..begin], &text[end + END.len()..])
        }
        _ => format!(
            "{text}\n## Farm scale: the standard scenarios\n\n![fan-out p99 and memory per miner against miners](docs/scale.png)\n\n{block}\n"
        ),
    };
    std::fs::write(file, updated).with_context(|| format!("cannot write {}", file.display()))
}
