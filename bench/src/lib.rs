//! The asyncmsgr benchmark, in the spirit of Ceph's `ceph_perf_msgr_server` /
//! `ceph_perf_msgr_client`: request/reply over loopback, asyncmsgr against a tuned tokio
//! peer and a batched blocking std::net peer doing the same msgr v1 work (same frames,
//! same crcs, every reply verified and matched to its request), and asyncmsgr over msgr2
//! (crc mode, and secure mode with cephx keys from [`cephx`]) beside its v1 row.
//! `bench --help` lists the modes and options; `main.rs` is only the command line around
//! this library, which the tests drive too.

pub mod args;
pub mod cephx;
pub mod crc;
pub mod crypto;
pub mod flame;
pub mod floor;
pub mod goals;
pub mod idle;
pub mod machine;
pub mod matrix;
pub mod msgr;
pub mod naive;
pub mod net;
pub mod pin;
pub mod plot;
#[cfg(feature = "rados")]
pub mod rados_peer;
pub mod report;
pub mod stdnet;
pub mod threads;
pub mod tokio_peer;
pub mod verify;
pub mod wire;

use std::io;

use args::{Args, Peer};
use report::Report;

/// Runs `peer` with `run_one` and, while the run ran beside other work
/// ([`machine::Load::is_busy`]: other processes' CPU plus the hypervisor's steal) and
/// `args.busy_retries` allows, runs it again; returns the last run (a failed run at once).
/// A busy run is the other regime README describes, not a noisier sample of this one.
pub fn run_quiet(
    args: &Args,
    peer: Peer,
    mut run_one: impl FnMut(&Args, Peer) -> io::Result<Report>,
) -> io::Result<Report> {
    let mut left = args.busy_retries;
    loop {
        let report = run_one(args, peer)?;
        match report.machine {
            Some(load) if load.is_busy() && left > 0 && report.failure.is_none() => {
                left -= 1;
                eprintln!(
                    "{peer}: the run had other processes at {:.2} CPU and steal at {:.2} CPU; \
                     running it again ({left} more allowed)",
                    load.other_cpus, load.steal_cpus
                );
            }
            _ => return Ok(report),
        }
    }
}

/// Runs one peer with `args` in this process.
pub fn run_peer(args: &Args, peer: Peer) -> io::Result<Report> {
    match peer {
        Peer::Asyncmsgr(v) => msgr::run(args, v, &peer.to_string()),
        Peer::Tokio => tokio_peer::run(args),
        Peer::StdBatched => stdnet::run(args),
        Peer::StdNaive => naive::run(args),
        #[cfg(feature = "rados")]
        Peer::Rados => rados_peer::run(args),
        #[cfg(not(feature = "rados"))]
        Peer::Rados => Err(io::Error::other("bench was built without its `rados` feature")),
    }
}

/// Runs every peer of `args.peers` in order, profiling the first asyncmsgr run when
/// `--flamegraph` is given; stops at the first failed run.
pub fn compare(args: &Args) -> io::Result<Vec<Report>> {
    let mut reports: Vec<Report> = Vec::with_capacity(args.peers.len());
    let mut profiled = false;
    for &peer in &args.peers {
        let report = match (&args.flamegraph, peer) {
            (Some(path), Peer::Asyncmsgr(_)) if !profiled => {
                profiled = true;
                flame::profile(path, || run_peer(args, peer))?
            }
            _ => run_quiet(args, peer, run_peer)?,
        };
        let failed = report.failure.is_some();
        reports.push(report);
        if failed {
            break;
        }
    }
    Ok(reports)
}
