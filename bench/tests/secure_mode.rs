//! `--mode secure` and `--auth cephx` (issue 15): the bench's asyncmsgr peer over msgr2
//! with cephx keys from the in-process key server really runs the mode asked for — the
//! run fails unless both ends of every connection negotiated it — and moves verified
//! payload both ways.
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

/// A short in-process run of `variant`: it must pass (both ends in the mode asked for),
/// under `name`, with no reset and every round trip's payload counted.
fn passing_run(variant: MsgrVariant, name: &str) {
    let args = short(4);
    let report = bench::run_peer(&args, Peer::Asyncmsgr(variant)).expect(name);
    assert_eq!(report.name, name);
    assert_eq!(report.failure, None);
    assert_eq!(report.resets, 0);
    assert!(report.round_trips > 0, "no round trip completed in {:?}", report.elapsed);
    assert_eq!(report.bytes, report.round_trips * args.rt_bytes() as u64);
}

#[test]
fn secure_mode_run_negotiates_secure_and_moves_payload() {
    passing_run(MsgrVariant::V2_SECURE, "asyncmsgr-v2-secure");
}

/// Runs the bench binary with `args`; asserts it succeeded and returns the table rows'
/// names.
fn rows_of_successful_run(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_bench")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

// The command line: `--proto v2 --mode secure` runs the secure row (and the crc row
// beside it when asked), exit 0; `--mode secure` over v1 is refused with exit 2.
#[test]
fn command_line_secure_mode() {
    let rows = rows_of_successful_run(&[
        "--proto",
        "v2",
        "--mode",
        "secure",
        "--peers",
        "asyncmsgr,v2",
        "--size",
        "16k",
        "--depth",
        "8",
        "--duration",
        "0.5",
        "--quiet",
    ]);
    let row = |name: &str| rows.iter().any(|r| r == name);
    assert!(row("asyncmsgr-v2-secure") && row("asyncmsgr-v2"), "{rows:?}");

    let out =
        Command::new(env!("CARGO_BIN_EXE_bench")).args(["--mode", "secure"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --proto v2"));
}

// `--auth cephx` in crc mode (issue 15): msgr2 crc mode after a cephx handshake, and the
// run checks the server's end of every connection as well as the client's.
#[test]
fn cephx_crc_mode_is_checked_at_both_ends() {
    passing_run(MsgrVariant::V2_CEPHX, "asyncmsgr-v2-cephx");

    // What the server recorded is what the server negotiated: crc, not secure.
    let args = short(4);
    let keys = bench::cephx::Keys::new().unwrap();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let server =
        bench::msgr::server_with(&args, loopback, MsgrVariant::V2_CEPHX, Some(keys.server))
            .unwrap();
    let report =
        bench::msgr::client(&args, server.addr, MsgrVariant::V2_CEPHX, Some(keys.client), "c")
            .unwrap();
    assert_eq!(report.failure, None);
    server.shutdown();
    server.accepted.check(MsgrVariant::V2_CEPHX, 1).unwrap();
    let secure = server.accepted.check(MsgrVariant::V2_SECURE, 1).unwrap_err().to_string();
    assert!(
        secure.contains("server: asked for msgr2 secure mode, negotiated crc mode"),
        "{secure}"
    );
    let v1 = server.accepted.check(MsgrVariant::V1, 1).unwrap_err().to_string();
    assert!(v1.contains("server: asked for V1"), "{v1}");
    let missing = server.accepted.check(MsgrVariant::V2_CEPHX, 2).unwrap_err().to_string();
    assert!(missing.contains("opened 1 sessions for 2"), "{missing}");
}

// A client without cephx keys (auth none) is not let in by a cephx server: the crc row
// with cephx really authenticates.
#[test]
fn cephx_server_refuses_an_auth_none_client() {
    let args = Args { stall: Duration::from_secs(2), ..short(1) };
    let keys = bench::cephx::Keys::new().unwrap();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let server =
        bench::msgr::server_with(&args, loopback, MsgrVariant::V2_CEPHX, Some(keys.server))
            .unwrap();
    let outcome = bench::msgr::client(&args, server.addr, MsgrVariant::V2, None, "c");
    server.shutdown();
    let failed = match outcome {
        Ok(report) => report.failure.is_some() && report.round_trips == 0,
        Err(_) => true,
    };
    assert!(failed, "an auth none client completed round trips against a cephx-only server");
    assert!(server.accepted.is_empty(), "the server opened a session without cephx");
}

#[test]
fn command_line_cephx_crc_mode() {
    let rows = rows_of_successful_run(&[
        "--proto",
        "v2",
        "--auth",
        "cephx",
        "--peers",
        "asyncmsgr",
        "--size",
        "4k",
        "--depth",
        "1",
        "--duration",
        "0.3",
        "--quiet",
    ]);
    assert!(rows.iter().any(|r| r == "asyncmsgr-v2-cephx"), "{rows:?}");

    for refused in
        [&["--proto", "v2", "--auth", "none", "--mode", "secure"][..], &["--auth", "cephx"]]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_bench")).args(refused).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{refused:?}");
    }
}
