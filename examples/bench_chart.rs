//! Renders the SVG chart of `scripts/compare-etcd.sh`: throughput and p99 latency against the
//! calls in flight, one line per target.
//!
//! Usage: `cargo run --example bench_chart -- MEDIANS.tsv OUT.svg [TITLE]`, where each line of
//! MEDIANS.tsv is `TARGET<TAB>IN_FLIGHT<TAB>OPS_PER_SEC<TAB>P99_US` (the script writes it; lines
//! starting with `#` are skipped). Targets keep the order of their first line.

use std::{error::Error, process::ExitCode};

use plotters::prelude::*;

/// One target's points: (in flight, ops/s, p99 in ms), by in-flight.
struct Series {
    target: String,
    points: Vec<(u32, f64, f64)>,
}

fn read(path: &str) -> Result<Vec<Series>, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut all: Vec<Series> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            format!(
                "{path}:{}: expected TARGET IN_FLIGHT OPS P99_US: {line}",
                n + 1
            )
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let [target, in_flight, ops, p99] = fields[..] else {
            return Err(bad().into());
        };
        let point = (
            in_flight.parse().map_err(|_| bad())?,
            ops.parse().map_err(|_| bad())?,
            p99.parse::<f64>().map_err(|_| bad())? / 1000.0,
        );
        match all.iter_mut().find(|s| s.target == target) {
            Some(series) => series.points.push(point),
            None => all.push(Series {
                target: target.to_owned(),
                points: vec![point],
            }),
        }
    }
    if all.is_empty() {
        return Err(format!("{path}: no data lines").into());
    }
    for series in &mut all {
        series.points.sort_by_key(|p| p.0);
    }
    Ok(all)
}

fn draw(all: &[Series], out: &str, title: &str) -> Result<(), Box<dyn Error>> {
    let points = || all.iter().flat_map(|s| s.points.iter());
    let max_in_flight = points().map(|p| p.0).max().unwrap_or(1).max(2);
    let max_ops = points().map(|p| p.1).fold(1.0, f64::max);
    let (min_p99, max_p99) =
        points().fold((f64::MAX, 0.0f64), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    let root = SVGBackend::new(out, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(550);
    let x_range = (1u32..max_in_flight).log_scale();

    let mut throughput = ChartBuilder::on(&left)
        .caption("throughput (ops/s)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), 0.0..max_ops * 1.1)?;
    throughput
        .configure_mesh()
        .x_desc("calls in flight")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()?;
    let mut latency = ChartBuilder::on(&right)
        .caption("p99 latency (ms, log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            x_range,
            (min_p99.max(0.01) / 1.5..max_p99.max(0.02) * 1.5).log_scale(),
        )?;
    latency
        .configure_mesh()
        .x_desc("calls in flight")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (i, series) in all.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = color.stroke_width(2);
        let ops = series.points.iter().map(|p| (p.0, p.1));
        throughput
            .draw_series(LineSeries::new(ops.clone(), style))?
            .label(&series.target)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        throughput.draw_series(ops.map(|p| Circle::new(p, 3, color.filled())))?;
        let p99 = series.points.iter().map(|p| (p.0, p.2));
        latency.draw_series(LineSeries::new(p99.clone(), style))?;
        latency.draw_series(p99.map(|p| Circle::new(p, 3, color.filled())))?;
    }
    throughput
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, out) = match &args[..] {
        [input, out] | [input, out, _] => (input, out),
        _ => {
            eprintln!("usage: bench_chart MEDIANS.tsv OUT.svg [TITLE]");
            return ExitCode::from(2);
        }
    };
    let title = args
        .get(2)
        .map_or("kvctl bench: update, medians", String::as_str);
    match read(input).and_then(|all| draw(&all, out, title)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_chart: {e}");
            ExitCode::from(1)
        }
    }
}
