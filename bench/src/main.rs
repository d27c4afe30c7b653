//! `cargo run --release -p bench`: asyncmsgr, a tuned tokio peer and a batched std::net
//! peer doing the same msgr v1 request/reply work over loopback, one table with ratios.
//! `--help` lists the modes and options. Exits 1 when a run fails (a reset with
//! requests in flight, a bad frame, a reply out of order or missing, traffic stopped).
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use bench::args::{Args, Mode, Peer};
use bench::matrix::{self, Cell};
use bench::report::{self, Report};
use bench::{compare, goals, idle, msgr, plot, run_peer};

fn heading(args: &Args) -> String {
    format!(
        "size {} B, reply {} B, depth {}, conns {}, workers {}, crc {}, {:.1} s{}",
        args.size,
        args.reply_size,
        args.depth,
        args.conns,
        args.workers,
        if args.crc { "on" } else { "off" },
        args.duration().as_secs_f64(),
        args.pin.map_or(String::new(), |p| format!(", {}", p.label()))
    )
}

/// Prints the table (and plots it); the exit code says whether every run passed.
fn finish(args: &Args, reports: &[Report]) -> Result<(), String> {
    println!("\n{}\n{}", heading(args), report::table(reports));
    if let Some(path) = &args.plot {
        plot::latency_svg(path, &heading(args), reports).map_err(|e| e.to_string())?;
        eprintln!("latency plot written to {}", path.display());
    }
    if let Some(path) = &args.flamegraph {
        eprintln!("flamegraph of the asyncmsgr run written to {}", path.display());
    }
    match reports.iter().find_map(|r| r.failure.as_ref().map(|f| (r, f))) {
        Some((r, why)) => Err(format!("{} failed: {why}", r.name)),
        None => Ok(()),
    }
}

fn run_matrix(args: &Args, cells: &[Cell]) -> Result<(), String> {
    let results = matrix::run(args, cells, run_peer)?;
    if let Some(pin) = args.pin {
        println!("\n{}", pin.label());
    }
    println!("\n{}", matrix::table(args, &results));
    if args.mode == Mode::Conns {
        println!("{}", matrix::scaling(args, &results));
    }
    let goals = goals::report(args, &results);
    if !goals.is_empty() {
        println!("{goals}");
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    match args.mode {
        Mode::Compare => finish(args, &compare(args).map_err(io)?),
        Mode::Matrix => run_matrix(args, &matrix::ISSUE_CELLS),
        Mode::Modes => run_matrix(args, &matrix::MODE_CELLS),
        Mode::Conns => {
            let cells = [matrix::CONNS_REFERENCE, args.conns].map(|conns| Cell {
                size: args.size,
                depth: matrix::CONNS_DEPTH,
                conns,
            });
            run_matrix(args, &cells)
        }
        Mode::Floor => {
            let mut reports = vec![bench::floor::run(args).map_err(io)?];
            reports.extend(compare(args).map_err(io)?);
            finish(args, &reports)
        }
        Mode::Server => {
            let server = msgr::server(args, args.addr, args.variant).map_err(io)?;
            eprintln!("asyncmsgr server on {}; Ctrl-C to stop", server.addr);
            // Runs until killed: the workers and dispatch thread do the work.
            loop {
                std::thread::park();
                let _ = &server;
            }
        }
        Mode::Client => {
            let name = Peer::Asyncmsgr(args.variant).to_string();
            let mut report =
                msgr::client(args, args.addr, args.variant, None, &name).map_err(io)?;
            // The server's process is the other load here by design: no machine line.
            report.machine = None;
            finish(args, &[report])
        }
        Mode::Idle => idle::run(args).map_err(io),
        Mode::Crc => {
            println!("{}", bench::crc::run());
            Ok(())
        }
        Mode::Crypto => {
            println!("{}", bench::crypto::run()?);
            Ok(())
        }
        Mode::IdleClients => {
            idle::clients(args.addr, args.conns).map_err(io)?;
            std::process::exit(0);
        }
    }
}

fn main() -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let mut args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = bench::net::choose(args.tcp_congestion.clone()) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    if args.mode == Mode::Floor {
        args.depth = 1;
    }
    if args.addr.port() == 0 && args.mode == Mode::Client {
        eprintln!("client mode needs --addr IP:PORT of a running `bench server`");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("bench FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}
