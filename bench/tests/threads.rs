//! `--threads`: a run's report carries what each busy thread of the peer did, looked at
//! while those threads still ran (the tokio and std peers' threads end within a
//! millisecond of the deadline), and the table prints it under the peer's row.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bench::args::{Args, MsgrVariant, Peer};

#[test]
fn every_peer_s_busy_threads_of_both_sides_are_in_its_report() {
    for peer in [Peer::Asyncmsgr(MsgrVariant::V1), Peer::Tokio, Peer::StdBatched] {
        let args = Args {
            depth: 8,
            duration: Some(Duration::from_millis(600)),
            progress: false,
            threads: true,
            ..Args::default()
        };
        let report = bench::run_peer(&args, peer).unwrap_or_else(|e| panic!("{peer}: {e}"));
        assert_eq!(report.failure, None, "{peer}");
        let per_thread = report.threads.as_ref().unwrap_or_else(|| panic!("{peer}: no threads"));
        assert!(per_thread.round_trips > 0, "{peer}: no round trip counted");
        assert!(per_thread.round_trips <= report.round_trips, "{peer}: counted before the end");
        let names: Vec<&str> = per_thread.loads.iter().map(|l| l.name.as_str()).collect();
        for side in ["server", "client"] {
            assert!(
                names.iter().any(|n| n.contains(side)),
                "{peer}: no {side} thread in {names:?}"
            );
        }
        let table = bench::report::table(std::slice::from_ref(&report));
        assert!(table.contains(&format!("threads of {}", report.name)), "{table}");
    }
}

#[test]
fn without_the_option_a_report_has_no_threads() {
    let args = Args {
        depth: 4,
        duration: Some(Duration::from_millis(200)),
        progress: false,
        ..Args::default()
    };
    let report = bench::run_peer(&args, Peer::Tokio).unwrap();
    assert_eq!(report.threads, None);
    assert!(!bench::report::table(&[report]).contains("threads of"));
}
