//! `--plot FILE.svg`: the round-trip latency distribution of every peer on one chart,
//! as an HDR percentile plot — the x axis counts nines (0 %, 90 %, 99 %, 99.9 %, …) so
//! the tail gets as much room as the median; the y axis is logarithmic.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// Percentiles beyond this many nines are not plotted (99.999 %).
const MAX_NINES: f64 = 5.0;

/// Distinct colours for up to eight peers.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// The (nines, µs) points of one peer's distribution.
fn points(r: &Report) -> Vec<(f64, f64)> {
    let n = r.rtt.len();
    // No percentile finer than one sample: 1,000 samples support 3 nines.
    let max_nines = if n > 1 { (n as f64).log10().min(MAX_NINES) } else { 0.0 };
    r.rtt
        .iter_quantiles(4)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let nines = if q >= 1.0 { max_nines } else { (-(1.0 - q).log10()).min(max_nines) };
            (nines, v.value_iterated_to() as f64 / 1000.0)
        })
        .collect()
}

fn label_nines(x: &f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{pct:.decimals$}%")
}

/// Writes the chart of `reports` to `path`, titled `title`.
pub fn latency_svg(path: &Path, title: &str, reports: &[Report]) -> io::Result<()> {
    let err = |e: String| io::Error::other(format!("plot {}: {e}", path.display()));
    let series: Vec<(String, Vec<(f64, f64)>)> =
        reports.iter().filter(|r| !r.rtt.is_empty()).map(|r| (r.name.clone(), points(r))).collect();
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if series.is_empty() || hi <= 0.0 {
        return Err(err("no latency samples".into()));
    }
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x)).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max.ceil(), ((lo * 0.8).max(0.1)..hi * 1.25).log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("round trip (µs)")
        .x_labels(x_max.ceil() as usize + 1)
        .x_label_formatter(&label_nines)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::report::new_histogram;
    use std::time::Duration;

    #[test]
    fn nines_labels() {
        assert_eq!(label_nines(&0.0), "0%");
        assert_eq!(label_nines(&2.0), "99%");
        assert_eq!(label_nines(&3.0), "99.9%");
    }

    #[test]
    fn writes_an_svg_with_every_peer() {
        let mut reports = Vec::new();
        for (name, base) in [("fast", 10_000u64), ("slow", 30_000)] {
            let mut h = new_histogram();
            for i in 0..10_000u64 {
                h.record(base + i * 7).unwrap();
            }
            reports.push(Report::new(name, 10_000, 0, Duration::from_secs(1), Duration::ZERO, h));
        }
        let path = std::env::temp_dir().join(format!("bench-plot-{}.svg", std::process::id()));
        latency_svg(&path, "test", &reports).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
        // plotters writes each label on a line of its own inside <text>.
        for label in ["fast", "slow", "99.9%", "round trip (µs)"] {
            assert!(svg.contains(&format!("\n{label}\n")), "{label} missing");
        }
    }
}
