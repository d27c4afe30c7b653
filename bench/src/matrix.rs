//! Many cells (size, depth, connections) × every peer × `--runs` runs, run alternately
//! (each run visits every peer before the next run starts, so a noisy neighbour hurts
//! all peers alike), reported as medians in one markdown table with ratios.

use std::io;

use crate::args::{Args, Peer};
use crate::report::Report;

/// One set of parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Request data bytes.
    pub size: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Client connections.
    pub conns: usize,
}

/// The performance issue's table, one connection each.
pub const ISSUE_CELLS: [Cell; 6] = [
    Cell { size: 4 << 10, depth: 1, conns: 1 },
    Cell { size: 4 << 10, depth: 32, conns: 1 },
    Cell { size: 4 << 10, depth: 128, conns: 1 },
    Cell { size: 64, depth: 128, conns: 1 },
    Cell { size: 1 << 20, depth: 1, conns: 1 },
    Cell { size: 1 << 20, depth: 16, conns: 1 },
];

/// The cells of the `modes` comparison (lossless and queued against lossy + fast).
pub const MODE_CELLS: [Cell; 2] =
    [Cell { size: 4 << 10, depth: 32, conns: 1 }, Cell { size: 64, depth: 128, conns: 1 }];

/// Connections in the reference cell of the `conns` comparison.
pub const CONNS_REFERENCE: usize = 16;
/// Depth per connection in the `conns` comparison.
pub const CONNS_DEPTH: usize = 4;

fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

impl Cell {
    fn label(&self) -> String {
        let conns =
            if self.conns == 1 { String::new() } else { format!(" × {} conns", self.conns) };
        format!("{} / {}{conns}", human_size(self.size), self.depth)
    }
}

/// Medians of one peer in one cell.
#[derive(Clone, Debug)]
pub struct Medians {
    /// Round trips per second.
    pub rate: f64,
    /// CPU µs per round trip.
    pub cpu_us: f64,
    /// p50 and p99 in µs.
    pub p50_us: f64,
    /// p99 in µs.
    pub p99_us: f64,
    /// Resets over all runs.
    pub resets: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn medians(runs: &[Report]) -> Medians {
    let m = |f: fn(&Report) -> f64| median(runs.iter().map(f).collect());
    Medians {
        rate: m(Report::rate),
        cpu_us: m(Report::cpu_us_per_rt),
        p50_us: m(|r| r.pct_us(0.5)),
        p99_us: m(|r| r.pct_us(0.99)),
        resets: runs.iter().map(|r| r.resets).sum(),
    }
}

/// Runs every cell for every peer of `args.peers`; the first failed run stops it.
/// `run_one` runs one peer with the given parameters.
pub fn run(
    args: &Args,
    cells: &[Cell],
    mut run_one: impl FnMut(&Args, Peer) -> io::Result<Report>,
) -> Result<Vec<(Cell, Vec<Medians>)>, String> {
    let mut out = Vec::with_capacity(cells.len());
    for &cell in cells {
        let a = Args { size: cell.size, depth: cell.depth, conns: cell.conns, ..args.clone() };
        let mut runs: Vec<Vec<Report>> = vec![Vec::new(); args.peers.len()];
        for run in 0..args.runs {
            for (i, &peer) in args.peers.iter().enumerate() {
                eprintln!("{} run {}/{}: {peer}", cell.label(), run + 1, args.runs);
                let report = run_one(&a, peer).map_err(|e| format!("{peer}: {e}"))?;
                if let Some(why) = &report.failure {
                    return Err(format!("{} {peer}: {why}", cell.label()));
                }
                runs[i].push(report);
            }
        }
        out.push((cell, runs.iter().map(|r| medians(r)).collect()));
    }
    Ok(out)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// The results as a markdown table: per cell, every peer's rt/s, the first peer's rt/s
/// divided by each other's, every peer's CPU µs per round trip and p50.
pub fn table(args: &Args, results: &[(Cell, Vec<Medians>)]) -> String {
    let names: Vec<String> = args.peers.iter().map(|p| p.to_string()).collect();
    let reference = &names[0];
    let mut head = vec!["size / depth".to_string()];
    head.extend(names.iter().map(|n| format!("{n} rt/s")));
    head.extend(names[1..].iter().map(|n| format!("{reference} ÷ {n}")));
    head.extend(names.iter().map(|n| format!("{n} CPU µs/rt")));
    head.extend(names.iter().map(|n| format!("{n} p50 µs")));
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for (cell, m) in results {
        let mut row = vec![cell.label()];
        row.extend(m.iter().map(|m| format!("{:.0}", m.rate)));
        row.extend(m[1..].iter().map(|o| ratio(m[0].rate, o.rate)));
        row.extend(m.iter().map(|m| format!("{:.2}", m.cpu_us)));
        row.extend(m.iter().map(|m| format!("{:.1}", m.p50_us)));
        out += &format!("| {} |\n", row.join(" | "));
    }
    let resets: u64 = results.iter().flat_map(|(_, m)| m.iter().map(|m| m.resets)).sum();
    out += &format!(
        "\n{} run(s) per cell, medians; {:.0} s each; crc {}; resets seen: {resets}\n",
        args.runs,
        args.duration().as_secs_f64(),
        if args.crc { "on" } else { "off" }
    );
    out
}

/// For the `conns` comparison: each peer's aggregate rt/s at the last cell divided by
/// its rt/s at the first.
pub fn scaling(args: &Args, results: &[(Cell, Vec<Medians>)]) -> String {
    let (Some((first, a)), Some((last, b))) = (results.first(), results.last()) else {
        return String::new();
    };
    let mut out = format!("rt/s at {} conns ÷ rt/s at {} conns:", last.conns, first.conns);
    for (i, p) in args.peers.iter().enumerate() {
        out += &format!(" {p} {}", ratio(b[i].rate, a[i].rate));
    }
    out + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_labels() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(ISSUE_CELLS[4].label(), "1 MiB / 1");
        assert_eq!(ISSUE_CELLS[3].label(), "64 B / 128");
        assert_eq!(Cell { size: 4096, depth: 4, conns: 1000 }.label(), "4 KiB / 4 × 1000 conns");
    }
}
