//! The scale issue's standard scenarios with real processes, every figure from the project's own
//! load tool: `cargo bench --bench scale`.
//!
//! Each scenario runs `SCALE_RUNS` times (3 by default) in one session, so every ratio is to a
//! baseline measured beside it: the floor (one thread writing a line to each socket), the same
//! swarm straight against the tool's pool, and aiostratum-proxy in front of the same pool when
//! its venv can be set up (benches/aiostratum). hashgate runs pinned to core 0, the tool to
//! core 1. Reports go to target/scale/; the table replaces the part of BENCHMARKS.md between
//! its markers, and the plot of fan-out p99 and memory against miners is docs/scale.png.
//!
//! `cargo bench --bench scale -- --from-reports` rebuilds the table and the plot from the reports
//! of the last session in target/scale/ without running anything.
//!
//! Under `cargo test` (no `--bench` argument) a small version of every scenario runs into a
//! temporary directory and the run checks that each produced its figures and its plot: the
//! tool, the scenarios and the plot are exercised in CI; BENCHMARKS.md is left alone.

mod farm;
mod plot;
mod procs;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use self::procs::{Proxy, Swarm, floor, free_port};
use self::table::{Row, Scenario};

/// The pool's share difficulty: 2^-28 (about 16 hashes a share), so the tool's own hashing
/// never caps the share rate; the proxy's miners get the same, so every share is forwarded.
const DIFFICULTY: f64 = 1.0 / 268_435_456.0;

/// What a session runs: the full scenarios, or the small check under `cargo test`.
struct Sizes {
    runs: usize,
    floor: Vec<usize>,
    direct: Vec<usize>,
    idle: Vec<usize>,
    /// (miners, shares per second)
    shares: Vec<(usize, f64)>,
    /// The side-by-side scenario: hashgate, aiostratum-proxy and the pool direct.
    peer: (usize, f64),
    idle_window: &'static str,
    shares_window: &'static str,
    job_interval: &'static str,
    floor_rounds: usize,
    with_peer: bool,
    /// The farm: (miners, hashgate instances, the tool's child processes).
    farm: (usize, usize, usize),
    /// The farm's job interval and warm-up (the one view is read in the warm-up).
    farm_job_interval: &'static str,
    farm_warmup: &'static str,
}

impl Sizes {
    fn full() -> Sizes {
        let runs = std::env::var("SCALE_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        Sizes {
            runs,
            // One process holds both ends of each floor socket and of each direct connection:
            // 9,900 is the most the 20,000 open files of one process allow.
            floor: vec![1_000, 9_900],
            direct: vec![1_000, 9_900],
            idle: vec![1_000, 10_000, 19_900],
            shares: vec![(1_000, 2_000.0), (10_000, 20_000.0)],
            peer: (1_000, 200.0),
            idle_window: "10s",
            shares_window: "20s",
            job_interval: "2s",
            floor_rounds: 20,
            with_peer: true,
            // Six instances of 16,667 miners, the tool in six children (20,000 files each).
            farm: (100_000, 6, 6),
            // A job reaches 100,000 miners from one core in about 2 s: one every 5 s.
            farm_job_interval: "5s",
            farm_warmup: "20s",
        }
    }

    fn quick() -> Sizes {
        Sizes {
            runs: 1,
            floor: vec![300],
            direct: vec![300],
            idle: vec![300],
            shares: vec![(300, 200.0)],
            peer: (200, 50.0),
            idle_window: "3s",
            shares_window: "3s",
            job_interval: "1s",
            floor_rounds: 5,
            with_peer: false,
            farm: (600, 3, 2),
            farm_job_interval: "1s",
            farm_warmup: "10s",
        }
    }
}

fn main() -> Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let (sizes, dir) = if bench {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/scale");
        (Sizes::full(), dir)
    } else {
        let dir = std::env::temp_dir().join(format!("hashgate-scale-{}", std::process::id()));
        (Sizes::quick(), dir)
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let reuse = std::env::args().any(|a| a == "--from-reports");
    let rows = run_all(&sizes, &dir, reuse)?;
    let markdown = table::markdown(&rows, sizes.runs);
    std::fs::write(dir.join("table.md"), &markdown)?;
    print!("{markdown}");
    let png = if bench {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scale.png")
    } else {
        dir.join("scale.png")
    };
    plot::draw(&rows, &png)?;
    if bench {
        let benchmarks = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        table::write_into(&benchmarks, &markdown)?;
        println!(
            "scale: table written into BENCHMARKS.md, plot {}",
            png.display()
        );
    } else {
        check_quick(&rows, &png)?;
        let _ = std::fs::remove_dir_all(&dir);
        println!("scale: every scenario ran and measured (quick version)");
    }
    Ok(())
}

/// Every scenario, `sizes.runs` times; `reuse`: read each run's report from `dir` instead.
fn run_all(sizes: &Sizes, dir: &Path, reuse: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let peer_venv = if reuse {
        dir.join("aiostratum-proxy-1000-200-0.json")
            .exists()
            .then(|| dir.join("aio-venv"))
    } else {
        sizes
            .with_peer
            .then(|| procs::aiostratum_venv(dir))
            .flatten()
    };
    for run in 0..sizes.runs {
        eprintln!("scale: run {} of {}", run + 1, sizes.runs);
        for &sockets in &sizes.floor {
            let name = format!("floor-{sockets}-{run}");
            let report = if reuse {
                read_report(&dir.join(format!("{name}.json")))?
            } else {
                floor(dir, &name, sockets, sizes.floor_rounds)?
            };
            table::add(&mut rows, Scenario::Floor { sockets }, report.into());
        }
        for &miners in &sizes.direct {
            let report = swarm(dir, sizes, Target::Direct, miners, 0.0, run, reuse)?;
            table::add(&mut rows, Scenario::DirectIdle { miners }, report.into());
        }
        for &miners in &sizes.idle {
            let report = swarm(dir, sizes, Target::Hashgate, miners, 0.0, run, reuse)?;
            table::add(&mut rows, Scenario::Idle { miners }, report.into());
        }
        for &(miners, rate) in &sizes.shares {
            let report = swarm(dir, sizes, Target::Hashgate, miners, rate, run, reuse)?;
            table::add(&mut rows, Scenario::Shares { miners, rate }, report.into());
        }
        let (report, view) = farm_run(dir, sizes, run, reuse)?;
        let (miners, instances, _) = sizes.farm;
        let mut figures: table::RunFigures = report.into();
        figures.farm = Some(view);
        table::add(&mut rows, Scenario::Farm { miners, instances }, figures);
        let (miners, rate) = sizes.peer;
        let mut targets = vec![Target::Direct, Target::Hashgate];
        if let Some(venv) = &peer_venv {
            targets.push(Target::Aiostratum(venv.clone()));
        }
        for target in targets {
            let who = target.label();
            let report = swarm(dir, sizes, target, miners, rate, run, reuse)?;
            table::add(
                &mut rows,
                Scenario::Peer { who, miners, rate },
                report.into(),
            );
        }
    }
    Ok(rows)
}

/// What the swarm connects to.
enum Target {
    Direct,
    Hashgate,
    Aiostratum(PathBuf),
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Target::Direct => "pool direct",
            Target::Hashgate => "hashgate",
            Target::Aiostratum(_) => "aiostratum-proxy",
        }
    }
}

fn swarm(
    dir: &Path,
    sizes: &Sizes,
    target: Target,
    miners: usize,
    rate: f64,
    run: usize,
    reuse: bool,
) -> Result<hashgate::load::LoadReport> {
    let who = target.label().replace(' ', "-");
    let name = format!("{who}-{miners}-{rate}-{run}");
    if reuse {
        return read_report(&dir.join(format!("{name}.json")));
    }
    let pool_port = free_port()?;
    let run_dir = dir.join(&name);
    std::fs::create_dir_all(&run_dir)?;
    let proxy = match &target {
        Target::Direct => None,
        Target::Hashgate => Some(Proxy::hashgate(&run_dir, pool_port, DIFFICULTY)?),
        Target::Aiostratum(venv) => Some(Proxy::aiostratum(venv, &run_dir, pool_port)?),
    };
    eprintln!("scale: {name}");
    Swarm {
        dir,
        name,
        miners,
        shares_per_second: rate,
        pool_port,
        pool_difficulty: DIFFICULTY,
        job_interval: sizes.job_interval,
        duration: if rate > 0.0 {
            sizes.shares_window
        } else {
            sizes.idle_window
        },
        warmup: "2s",
        proxies: proxy.iter().collect(),
        processes: None,
    }
    .run()
}

/// The farm: `sizes.farm`'s instances in front of one pool, the swarm over child processes,
/// and the one view of them all.
fn farm_run(
    dir: &Path,
    sizes: &Sizes,
    run: usize,
    reuse: bool,
) -> Result<(hashgate::load::LoadReport, farm::FarmView)> {
    let (miners, instances, processes) = sizes.farm;
    let name = format!("farm-{miners}-{instances}-{run}");
    let view_file = dir.join(format!("{name}-view.json"));
    if reuse {
        return Ok((
            read_report(&dir.join(format!("{name}.json")))?,
            read_report(&view_file)?,
        ));
    }
    let pool_port = free_port()?;
    let run_dir = dir.join(&name);
    let mut proxies = Vec::new();
    for instance in 0..instances {
        let instance_dir = run_dir.join(format!("instance-{instance}"));
        std::fs::create_dir_all(&instance_dir)?;
        proxies.push(Proxy::hashgate(&instance_dir, pool_port, DIFFICULTY)?);
    }
    eprintln!("scale: {name}");
    let swarm = Swarm {
        dir,
        name,
        miners,
        shares_per_second: 0.0,
        pool_port,
        pool_difficulty: DIFFICULTY,
        job_interval: sizes.farm_job_interval,
        duration: sizes.idle_window,
        warmup: sizes.farm_warmup,
        proxies: proxies.iter().collect(),
        processes: Some(processes),
    };
    let (report, view) = farm::run(&swarm, &proxies, &run_dir)?;
    std::fs::write(&view_file, serde_json::to_string_pretty(&view)?)?;
    Ok((report, view))
}

fn read_report<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no report {} (run the bench first)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
}

/// The quick version under `cargo test`: every scenario measured what it is for.
fn check_quick(rows: &[Row], png: &Path) -> Result<()> {
    for row in rows {
        let Some(run) = row.runs.first() else {
            bail!("{}: no run", row.scenario);
        };
        if run.fan_out_p99_ms <= 0.0 {
            bail!("{}: no fan-out measured", row.scenario);
        }
        if let Some(report) = &run.swarm {
            if report.ready != report.miners as u64 || report.closed != 0 {
                bail!(
                    "{}: {} of {} miners held",
                    row.scenario,
                    report.ready,
                    report.miners
                );
            }
            if report.missing_notifies != 0 || report.lost_shares != 0 {
                bail!("{}: missing notifies or lost shares", row.scenario);
            }
            if report.shares_per_second_planned > 0.0 && report.accepted == 0 {
                bail!("{}: no share accepted", row.scenario);
            }
            if !report.direct && report.proxy.is_none() {
                bail!("{}: the proxy's resources were not read", row.scenario);
            }
        }
        if let Some(view) = &run.farm {
            let miners = run.swarm.as_ref().map_or(0, |s| s.miners as u64);
            if view.status_miners != Some(miners) {
                bail!(
                    "{}: hashgate status counted {:?}",
                    row.scenario,
                    view.status_miners
                );
            }
            let instances = run.swarm.as_ref().map_or(0, |s| s.instances.len());
            if view.prometheus_up != Some(instances as f64)
                || view.prometheus_workers != Some(miners as f64)
            {
                bail!("{}: Prometheus saw {view:?}", row.scenario);
            }
        }
    }
    let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
    if size < 1_000 {
        bail!("the plot {} was not drawn", png.display());
    }
    Ok(())
}
