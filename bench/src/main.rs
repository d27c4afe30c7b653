//! `cargo run --release -p bench`: the asyncmsgr loopback benchmark, in the spirit of
//! Ceph's `ceph_perf_msgr_server` / `ceph_perf_msgr_client`, with a plain `std::net`
//! request/reply loop run in the same command for comparison. `--help` lists the options.
#![allow(clippy::print_stdout)]

mod args;
mod floor;
mod idle;
mod msgr;
mod report;
mod stdnet;

use args::{Args, Mode};
use report::Report;

fn print_table(args: &Args, reports: &[Report]) {
    println!();
    println!(
        "size {} B, reply {} B, depth {}, conns {}, workers {}, crc {}, {:.1} s",
        args.size,
        args.reply_size,
        args.depth,
        args.conns,
        args.workers,
        if args.crc { "on" } else { "off" },
        args.duration.as_secs_f64()
    );
    println!("{}", Report::header());
    for r in reports {
        println!("{}", r.row());
    }
}

fn main() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) if a.mode == Mode::Floor => Args { depth: 1, ..a },
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut reports = Vec::new();
    let result = (|| -> std::io::Result<()> {
        match args.mode {
            Mode::Compare => {
                reports.push(msgr::run(&args)?);
                reports.push(stdnet::run(&args)?);
            }
            Mode::Messenger => reports.push(msgr::run(&args)?),
            Mode::Floor => {
                reports.push(floor::run(&args)?);
                reports.push(msgr::run(&args)?);
                reports.push(stdnet::run(&args)?);
            }
            Mode::StdNet => reports.push(stdnet::run(&args)?),
            Mode::Server => {
                let (server, addr) = msgr::server(&args, args.addr)?;
                eprintln!("asyncmsgr server on {addr}; Ctrl-C to stop");
                // Runs until killed: the workers and dispatch thread do the work.
                loop {
                    std::thread::park();
                    let _ = &server;
                }
            }
            Mode::Client => reports.push(msgr::client(&args, args.addr, "asyncmsgr")?),
            Mode::Idle => {
                idle::run(&args)?;
                return Ok(());
            }
            Mode::IdleClients => {
                idle::clients(args.addr, args.conns)?;
                std::process::exit(0);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
    if reports.is_empty() {
        return;
    }
    print_table(&args, &reports);
}
