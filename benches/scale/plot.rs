//! The plot the issue asks for: job fan-out p99 and memory per miner against the number of
//! miners, hashgate beside the floor and the pool direct, and the farm of several instances
//! (medians over the runs). Both axes of the fan-out and the miners axis of the memory are
//! logarithmic: 1,000 to 100,000 miners on one page.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use super::table::{Row, Scenario, floor_for, median, rss_per_miner, rss_per_miner_at_end};

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

/// One named series as a line with a dot at each point, in the legend (a macro: the two
/// panels' charts have different coordinate types).
macro_rules! draw_line {
    ($chart:expr, $name:expr, $points:expr, $color:expr) => {{
        let color = $color;
        $chart
            .draw_series(LineSeries::new(
                $points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label($name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        $chart
            .draw_series($points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| anyhow!("plot: {e}"))?;
    }};
}

/// (lowest, highest) of positive `values` ((1, 2) when there are none: an axis still draws).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    if high > 0.0 { (low, high) } else { (1.0, 2.0) }
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
    let farm_p99 = series(rows, |r| match r.scenario {
        Scenario::Farm { miners, .. } => Some((miners, median(&r.fan_out()))),
        _ => None,
    });
    // The write floor at each size hashgate was measured at (the floor: N lines
    // written by one thread, at the per-socket time of the nearest floor run).
    let floor_p99 = series(rows, |r| match r.scenario {
        Scenario::Idle { miners } | Scenario::Farm { miners, .. } => {
            floor_for(rows, miners).map(|floor| (miners, median(&floor.write_ms)))
        }
        _ => None,
    });
    let direct_p99 = series(rows, |r| match r.scenario {
        Scenario::DirectIdle { miners } => Some((miners, median(&r.fan_out()))),
        _ => None,
    });
    let memory = series(rows, |r| match r.scenario {
        Scenario::Idle { miners } | Scenario::Farm { miners, .. } => {
            Some((miners, median(&r.swarm_values(rss_per_miner))))
        }
        _ => None,
    });
    let memory_at_end = series(rows, |r| match r.scenario {
        Scenario::Idle { miners } | Scenario::Farm { miners, .. } => {
            Some((miners, median(&r.swarm_values(rss_per_miner_at_end))))
        }
        _ => None,
    });
    let root = BitMapBackend::new(png, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let (left, right) = root.split_horizontally(620);
    let all = [&hashgate_p99, &farm_p99, &floor_p99, &direct_p99];
    let (min_miners, max_miners) = bounds(all.iter().flat_map(|s| s.iter().map(|p| p.0)));
    let (min_ms, max_ms) = bounds(all.iter().flat_map(|s| s.iter().map(|p| p.1)));
    let miners_axis = (min_miners * 0.7..max_miners * 1.4).log_scale();
    let mut chart = ChartBuilder::on(&left)
        .caption("Job fan-out p99, idle miners", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            miners_axis.clone(),
            (min_ms * 0.5..max_ms * 2.5).log_scale(),
        )
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
        ("hashgate, six instances on one core", &farm_p99, MAGENTA),
        ("pool direct", &direct_p99, BLUE),
        (
            "write floor (one thread, a line per socket)",
            &floor_p99,
            BLACK,
        ),
    ] {
        draw_line!(chart, name, points, color);
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    let max_kib = memory_at_end
        .iter()
        .chain(&memory)
        .map(|p| p.1)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("hashgate RSS per idle miner", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(miners_axis, 0.0..max_kib.max(GOAL_KIB) * 1.4)
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("miners")
        .y_desc("KiB per miner")
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    for (name, points, color) in [
        ("after the ramp (one job each)", &memory, RED),
        (
            "at the window's end (a job every 2-5 s)",
            &memory_at_end,
            MAGENTA,
        ),
    ] {
        draw_line!(chart, name, points, color);
    }
    chart
        .draw_series(LineSeries::new(
            [(min_miners * 0.7, GOAL_KIB), (max_miners * 1.4, GOAL_KIB)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| anyhow!("plot: {e}"))?
        .label("goal: 3 KiB")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}
