//! `--mode secure` (issue 15): the bench's asyncmsgr peer over msgr2 with cephx keys
//! from the in-process key server really runs secure mode — the run fails unless every
//! client connection negotiated SECURE — and moves verified payload both ways.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use bench::args::{Args, MsgrVariant, Peer};

/// A short run: long enough for the cephx handshake and some 64 KiB round trips.
fn short(depth: usize) -> Args {
    Args {
        size: 64 << 10,
        reply_size: 4 << 10,
        depth,
        duration: Some(Duration::from_millis(500)),
        progress: false,
        ..Args::default()
    }
}

#[test]
fn secure_mode_run_negotiates_secure_and_moves_payload() {
    let args = short(4);
    let peer = Peer::Asyncmsgr(MsgrVariant::V2_SECURE);
    let report = bench::run_peer(&args, peer).expect("the run speaks msgr2 in secure mode");
    assert_eq!(report.name, "asyncmsgr-v2-secure");
    assert_eq!(report.failure, None);
    assert_eq!(report.resets, 0);
    assert!(report.round_trips > 0, "no round trip completed in {:?}", report.elapsed);
    assert_eq!(report.bytes, report.round_trips * args.rt_bytes() as u64);
}

// The command line: `--proto v2 --mode secure` runs the secure row (and the crc row
// beside it when asked), exit 0; `--mode secure` over v1 is refused with exit 2.
#[test]
fn command_line_secure_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--proto", "v2", "--mode", "secure", "--peers", "asyncmsgr,v2"])
        .args(["--size", "16k", "--depth", "8", "--duration", "0.5", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = |name: &str| stdout.lines().any(|l| l.starts_with(&format!("{name} ")));
    assert!(row("asyncmsgr-v2-secure") && row("asyncmsgr-v2"), "{stdout}");

    let out =
        Command::new(env!("CARGO_BIN_EXE_bench")).args(["--mode", "secure"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --proto v2"));
}
