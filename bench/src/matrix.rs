//! Many cells (size, depth, connections) × every peer × `--runs` runs, run alternately
//! (each run visits every peer before the next run starts, so a noisy neighbour hurts
//! all peers alike), reported as medians in one markdown table with ratios.

use std::io;

use crate::args::{Args, Peer};
use crate::machine::Load;
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
    /// `4 KiB / 32`, with ` × N conns` past one connection.
    pub fn label(&self) -> String {
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
    /// Each run's round trips per second, in run order.
    pub rates: Vec<f64>,
    /// CPU µs per round trip.
    pub cpu_us: f64,
    /// p50 and p99 in µs.
    pub p50_us: f64,
    /// p99 in µs.
    pub p99_us: f64,
    /// Resets over all runs.
    pub resets: u64,
    /// The rest of the machine's load in each run.
    pub machine: Vec<Load>,
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
        rates: runs.iter().map(Report::rate).collect(),
        cpu_us: m(Report::cpu_us_per_rt),
        p50_us: m(|r| r.pct_us(0.5)),
        p99_us: m(|r| r.pct_us(0.99)),
        resets: runs.iter().map(|r| r.resets).sum(),
        machine: runs.iter().filter_map(|r| r.machine).collect(),
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
            // Every other run goes in reverse order: a peer is not always the one that
            // runs first (or after a given other), and a drift of the machine's speed
            // over the cell weighs on every peer alike.
            let order: Vec<usize> = if run % 2 == 0 {
                (0..args.peers.len()).collect()
            } else {
                (0..args.peers.len()).rev().collect()
            };
            for i in order {
                let peer = args.peers[i];
                eprintln!("{} run {}/{}: {peer}", cell.label(), run + 1, args.runs);
                let report =
                    crate::run_quiet(&a, peer, &mut run_one).map_err(|e| format!("{peer}: {e}"))?;
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

/// `reference ÷ other` run by run: run k of one against run k of the other (they ran side
/// by side), skipping runs where `other` did nothing.
fn run_ratios(reference: &Medians, other: &Medians) -> Vec<f64> {
    reference.rates.iter().zip(&other.rates).filter(|(_, &b)| b > 0.0).map(|(a, b)| a / b).collect()
}

/// `reference ÷ other` run by run (see `run_ratios`): their median and range; `None`
/// without a usable pair.
pub fn paired(reference: &Medians, other: &Medians) -> Option<(f64, f64, f64)> {
    let ratios = run_ratios(reference, other);
    if ratios.is_empty() {
        return None;
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((median(ratios), lo, hi))
}

/// [`paired`] as the table shows it: the median, with the range when there are several.
fn paired_ratio(reference: &Medians, other: &Medians) -> String {
    let several = run_ratios(reference, other).len() > 1;
    match paired(reference, other) {
        None => "-".into(),
        Some((m, lo, hi)) if several => format!("{m:.2} ({lo:.2}–{hi:.2})"),
        Some((m, _, _)) => format!("{m:.2}"),
    }
}

/// The results as a markdown table: per cell, every peer's rt/s, the first peer's rt/s
/// divided by each other's (the median of run-by-run ratios, with their range), every
/// peer's CPU µs per round trip and p50; below it, what the rest of the machine did.
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
        row.extend(m[1..].iter().map(|o| paired_ratio(&m[0], o)));
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
    let loads: Vec<Load> = results
        .iter()
        .flat_map(|(_, m)| m.iter().flat_map(|m| m.machine.iter().copied()))
        .collect();
    out += &crate::machine::summary(&loads);
    out.push('\n');
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
#[allow(clippy::unwrap_used)]
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

    fn with_rates(rates: &[f64]) -> Medians {
        Medians {
            rate: median(rates.to_vec()),
            rates: rates.to_vec(),
            cpu_us: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            resets: 0,
            machine: Vec::new(),
        }
    }

    /// Run k is divided by run k: a slow patch of the machine that hit both peers' run 2
    /// does not move the ratio, while a ratio of medians would mix runs.
    #[test]
    fn ratios_pair_runs_and_show_their_range() {
        let a = with_rates(&[100.0, 50.0, 120.0]);
        let b = with_rates(&[80.0, 40.0, 100.0]);
        // Ratios 1.25, 1.25, 1.2; a ratio of medians would say 100 / 80 = 1.25 too, so
        // make the medians disagree with the pairs.
        assert_eq!(paired_ratio(&a, &b), "1.25 (1.20–1.25)");
        let c = with_rates(&[100.0, 200.0, 100.0]);
        let d = with_rates(&[200.0, 100.0, 200.0]);
        // Medians 100 and 200 (0.50), but the middle pair ran 2.0 and the others 0.5.
        assert_eq!(paired_ratio(&c, &d), "0.50 (0.50–2.00)");
        assert_eq!(paired_ratio(&with_rates(&[90.0]), &with_rates(&[60.0])), "1.50");
        assert_eq!(paired_ratio(&with_rates(&[90.0]), &with_rates(&[0.0])), "-");
    }

    /// Runs alternate the peers' order, so no peer always runs first.
    #[test]
    fn runs_alternate_the_order_of_the_peers() {
        let mut args = Args::parse(
            ["--peers", "asyncmsgr,tokio,std", "--runs", "3"].iter().map(|s| s.to_string()),
        )
        .unwrap();
        args.runs = 3;
        let mut order = Vec::new();
        let cell = Cell { size: 64, depth: 1, conns: 1 };
        let out = run(&args, &[cell], |_, peer| {
            order.push(peer.to_string());
            let mut h = crate::report::new_histogram();
            h.record(1000).unwrap();
            Ok(Report::new(
                peer.to_string(),
                10,
                64,
                std::time::Duration::from_secs(1),
                std::time::Duration::ZERO,
                h,
            ))
        })
        .unwrap();
        let names: Vec<String> = args.peers.iter().map(|p| p.to_string()).collect();
        let forward = names.clone();
        let backward: Vec<String> = names.iter().rev().cloned().collect();
        assert_eq!(order, [forward.clone(), backward, forward].concat());
        assert_eq!(out[0].1.len(), 3, "medians per peer, in the peers' order");
        assert!(out[0].1.iter().all(|m| m.rates.len() == 3));
    }
}
