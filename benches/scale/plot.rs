//! The plot the issue asks for: job fan-out p99 and memory per miner against the number of
//! miners, hashgate beside the floor and the pool direct (medians over the runs).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use super::table::{Row, Scenario, floor_for, median, rss_per_miner};

/// Where the text's font comes from (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The goal for an idle miner's memory.
const GOAL_KIB: f64 = 3.0;

/// (miners, median) of each row `pick` selects.
type Series = Vec<(f64, f64)>;

fn series(rows: &[Row], pick: impl Fn(&Row) -> Option<(usize, f64)>) -> Series {
    let mut points: Series = rows
        .iter()
        .filter_map(|r| pick(r).map(|(n, v)| (n as f64, v)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Draws the two panels into `png`.
pub fn draw(rows: &[Row], png: &Path) -> Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("the plot's font {FONT} (Debian: fonts-dejavu-core)"))?;
    // Registered once for the process's life: plotters keeps a 'static reference.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))?;
    if let Some(parent) = png.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let hashgate_p99 = series(rows, |r| match r.scenario {
        Scenario::Idle { miners } => Some((miners, median(&r.fan_out()))),
        _ => None,
    });
    // The write floor at each size hashgate was measured at (the floor: N lines
    // written by one thread, at the per-socket time of the nearest floor run).
    let floor_p99 = series(rows, |r| match r.scenario {
        Scenario::Idle { miners } => {
            floor_for(rows, miners).map(|floor| (miners, median(&floor.write_ms)))
        }
        _ => None,
    });
    let direct_p99 = series(rows, |r| match r.scenario {
        Scenario::DirectIdle { miners } => Some((miners, median(&r.fan_out()))),
        _ => None,
    });
    let memory = series(rows, |r| match r.scenario {
        Scenario::Idle { miners } => Some((miners, median(&r.swarm_values(rss_per_miner)))),
        _ => None,
    });
    let root = BitMapBackend::new(png, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let (left, right) = root.split_horizontally(620);
    let max_miners = [&hashgate_p99, &floor_p99, &direct_p99]
        .iter()
        .flat_map(|s| s.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_ms = [&hashgate_p99, &floor_p99, &direct_p99]
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("Job fan-out p99, idle miners", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_miners * 1.05, 0.0..max_ms * 1.15)
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("miners")
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    for (name, points, color) in [
        ("hashgate", &hashgate_p99, RED),
        ("pool direct", &direct_p99, BLUE),
        (
            "write floor (one thread, a line per socket)",
            &floor_p99,
            BLACK,
        ),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    let max_kib = memory.iter().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("hashgate RSS per idle miner", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_miners * 1.05, 0.0..max_kib.max(GOAL_KIB) * 1.3)
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("miners")
        .y_desc("KiB per miner")
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .draw_series(LineSeries::new(memory.iter().copied(), RED.stroke_width(2)))
        .map_err(|e| anyhow!("plot: {e}"))?
        .label("hashgate")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            [(0.0, GOAL_KIB), (max_miners * 1.05, GOAL_KIB)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| anyhow!("plot: {e}"))?
        .label("goal: 3 KiB")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .draw_series(memory.iter().map(|p| Circle::new(*p, 4, RED.filled())))
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}
