//! The chart the docs show: requests/s, CPU per request and p99 per setup (bars per worker
//! count), and requests/s against the number of rules and of hosts.
//!
//! Drawn with plotters' bitmap backend; text uses a TrueType font read from disk through
//! ab_glyph (no fontconfig): `BENCH_FONT=<file.ttf>`, else DejaVu Sans or Liberation Sans from the
//! usual Debian, Fedora and Arch places.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::matrix::{Scale, Setup};
use crate::report::{Report, RowSummary};

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1800;
const HEIGHT: u32 = 1150;
/// Bar colours by worker count (1, 2, more) and for the upstream row.
const WORKER_COLORS: [RGBColor; 3] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
];
const UPSTREAM_COLOR: RGBColor = RGBColor(0x8c, 0x8c, 0x8c);
const LINE_COLORS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb3),
];

/// Writes the chart of `report` to `path` (PNG).
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(90);
    title.draw(&Text::new(
        "Forward proxies side by side: upstream alone, Envoy (DFP, no-op wasm, dfp_filter.wasm, RBAC), host-sim",
        (20, 12),
        (FONT, 28).into_font(),
    ))?;
    title.draw(&Text::new(
        format!(
            "{} | {} | Envoy {} | load avg {:.1} at start | {} x {} s rounds, {} connections",
            report.date,
            report.machine.describe(),
            report.envoy_version,
            report.machine.load_at_start[0],
            report.settings.rounds,
            report.settings.duration_s,
            report.settings.connections
        ),
        (20, 52),
        (FONT, 18).into_font().color(&RGBColor(0x44, 0x44, 0x44)),
    ))?;
    legend(&title, report)?;
    let (top, bottom) = body.split_vertically(640);
    let panels = top.split_evenly((1, 3));
    let base: Vec<&RowSummary> = report
        .rows
        .iter()
        .filter(|r| r.row.scale == Scale::BASE && r.clean_rounds > 0)
        .collect();
    bars(&panels[0], &base, "requests/s (higher is better)", |r| {
        r.requests_per_s
    })?;
    bars(
        &panels[1],
        &base,
        "proxy CPU seconds per 10k requests (lower is better)",
        |r| r.cpu_s_per_10k,
    )?;
    bars(
        &panels[2],
        &base,
        "p99 latency, ms (lower is better)",
        |r| r.p99_ms,
    )?;
    let lower = bottom.split_evenly((1, 2));
    scale_lines(
        &lower[0],
        report,
        "proxy CPU s per 10k requests vs allowlist rules (1 host; log-log)",
        "rules",
        |s| s.hosts == 1,
        |s| s.rules,
    )?;
    scale_lines(
        &lower[1],
        report,
        "proxy CPU s per 10k requests vs distinct hosts (10 rules; log-log)",
        "hosts",
        |s| s.rules == Scale::BASE.rules,
        |s| s.hosts,
    )?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Which colour is which worker count, once for the three bar panels (top right).
fn legend(area: &DrawingArea<BitMapBackend<'_>, Shift>, report: &Report) -> anyhow::Result<()> {
    let mut workers: Vec<u32> = report.rows.iter().filter_map(|r| r.row.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    let mut entries: Vec<(String, RGBColor)> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let plural = if *w == 1 { "" } else { "s" };
            (
                format!("{w} worker{plural}"),
                WORKER_COLORS[i.min(WORKER_COLORS.len() - 1)],
            )
        })
        .collect();
    entries.push(("upstream alone".into(), UPSTREAM_COLOR));
    let mut x = WIDTH as i32 - 160 * entries.len() as i32;
    for (label, color) in entries {
        area.draw(&Rectangle::new([(x, 58), (x + 16, 74)], color.filled()))?;
        area.draw(&Text::new(label, (x + 22, 57), (FONT, 17).into_font()))?;
        x += 160;
    }
    Ok(())
}

/// Horizontal bars: one category per setup, one bar per worker count.
fn bars(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    rows: &[&RowSummary],
    caption: &str,
    value: impl Fn(&RowSummary) -> f64,
) -> anyhow::Result<()> {
    let mut setups: Vec<Setup> = rows.iter().map(|r| r.row.setup).collect();
    setups.sort();
    setups.dedup();
    let mut workers: Vec<u32> = rows.iter().filter_map(|r| r.row.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    // The scale follows the proxies; the upstream alone (far faster) is clipped and labelled.
    let max = rows
        .iter()
        .filter(|r| r.row.setup != Setup::Upstream)
        .map(|r| value(r))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let n = setups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(if setups.is_empty() { 10 } else { 235 })
        .build_cartesian_2d(0.0..max * 1.18, -0.5..(n as f64 - 0.5))?;
    let labels: Vec<&'static str> = setups.iter().map(|s| s.label()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y: &f64| {
            let i = y.round();
            if (y - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            // Top to bottom in setup order.
            labels
                .get(n.saturating_sub(1).saturating_sub(i as usize))
                .map_or(String::new(), |l| l.to_string())
        })
        .x_labels(6)
        .x_label_formatter(&|x: &f64| short_number(*x))
        .label_style((FONT, 15))
        .draw()?;
    let groups = workers.len().max(1) as f64;
    let band = 0.8;
    for row in rows {
        let Some(position) = setups.iter().position(|s| *s == row.row.setup) else {
            continue;
        };
        let center = (n - 1 - position) as f64;
        let (slot, color) = match row.row.workers {
            // The upstream has no worker count: one full-height bar.
            None => (None, UPSTREAM_COLOR),
            Some(w) => {
                let i = workers.iter().position(|x| *x == w).unwrap_or(0);
                (Some(i), WORKER_COLORS[i.min(WORKER_COLORS.len() - 1)])
            }
        };
        let (y0, y1) = match slot {
            None => (center - band / 2.0, center + band / 2.0),
            Some(i) => {
                // Worker count 1 on top.
                let h = band / groups;
                let top = center + band / 2.0 - h * i as f64;
                (top - h, top)
            }
        };
        let v = value(row);
        if !v.is_finite() {
            continue;
        }
        let clipped = v > max * 1.18;
        let end = if clipped { max * 1.1 } else { v };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y0 + 0.02), (end, y1 - 0.02)],
            color.filled(),
        )))?;
        let text = if clipped {
            format!("{} (off scale)", short_number(v))
        } else {
            short_number(v)
        };
        let at = if clipped { max * 0.55 } else { v + max * 0.01 };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (at, (y0 + y1) / 2.0 + 0.12),
            (FONT, 13).into_font(),
        )))?;
    }
    Ok(())
}

/// Cost (proxy CPU per request) against a scale dimension, log-log, one line per setup: flat is
/// the goal, and RBAC's linear growth needs the log axis to share a panel with it.
fn scale_lines(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    report: &Report,
    caption: &str,
    x_name: &str,
    other_at_base: impl Fn(&Scale) -> bool,
    x_of: impl Fn(&Scale) -> u32,
) -> anyhow::Result<()> {
    // Setups with at least one non-base point on this dimension.
    let mut setups: Vec<(Setup, u32)> = report
        .rows
        .iter()
        .filter(|r| r.row.scale != Scale::BASE && other_at_base(&r.row.scale))
        .filter_map(|r| r.row.workers.map(|w| (r.row.setup, w)))
        .collect();
    setups.sort();
    setups.dedup();
    let series: Vec<(String, Vec<(f64, f64)>)> = setups
        .iter()
        .map(|&(setup, workers)| {
            let mut points: Vec<(f64, f64)> = report
                .rows
                .iter()
                .filter(|r| r.row.setup == setup && r.row.workers == Some(workers))
                .filter(|r| other_at_base(&r.row.scale) && r.clean_rounds > 0)
                .map(|r| (f64::from(x_of(&r.row.scale)), r.cpu_s_per_10k))
                .filter(|(_, y)| y.is_finite() && *y > 0.0)
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let name = format!(
                "{} ({workers} worker{})",
                setup.label(),
                if workers == 1 { "" } else { "s" }
            );
            (name, points)
        })
        .collect();
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(10.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.01, f64::max);
    let y_min = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(y_max, f64::min);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0..x_max * 2.0).log_scale(),
            (y_min / 1.5..y_max * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_name)
        .y_desc("CPU s / 10k requests")
        .x_label_formatter(&|x: &f64| short_number(*x))
        .y_label_formatter(&|y: &f64| short_number(*y))
        .label_style((FONT, 15))
        .draw()?;
    if series.is_empty() {
        chart.draw_series(std::iter::once(Text::new(
            "not measured in this run",
            (2.0, y_max),
            (FONT, 18).into_font(),
        )))?;
        return Ok(());
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(3),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}

fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Registers the first usable TrueType font as "sans-serif" (once per process).
fn load_font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut candidates: Vec<PathBuf> = Vec::new();
            if let Some(path) = std::env::var_os("BENCH_FONT") {
                candidates.push(PathBuf::from(path));
            }
            candidates.extend(
                [
                    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
                    "/usr/share/fonts/TTF/DejaVuSans.ttf",
                    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
                ]
                .map(PathBuf::from),
            );
            for path in &candidates {
                let Ok(bytes) = std::fs::read(path) else {
                    continue;
                };
                // plotters keeps fonts for the process's lifetime; this happens once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return Ok(path.clone());
                }
            }
            Err(format!(
                "no TrueType font found for the chart (tried {}); set BENCH_FONT=<file.ttf> \
                 or install fonts-dejavu-core",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
        .clone()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::short_number;

    #[test]
    fn numbers_stay_short() {
        assert_eq!(short_number(12_345.0), "12k");
        assert_eq!(short_number(2_500.0), "2.5k");
        assert_eq!(short_number(0.1234), "0.123");
        assert_eq!(short_number(3.0), "3");
        assert_eq!(short_number(1_500_000.0), "1.5M");
    }
}
