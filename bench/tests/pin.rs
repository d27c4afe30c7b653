//! `--pin same|apart`: the server side's threads go to CPU 0, the client side's to CPU 0
//! or 1, found by name; other threads are left alone. And every peer of the matrix names
//! its threads so that a pinned run finds both sides.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bench::args::{Args, MsgrVariant, Peer};
use bench::pin::{self, Pin};
use crossbeam_channel::bounded;

/// The CPUs `tid` may run on.
fn allowed(tid: libc::pid_t) -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into
    // it; CPU_ISSET reads inside it (cpu < CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

#[test]
fn pinning_goes_by_thread_name_and_every_peer_has_both_sides() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "--pin apart needs two CPUs");
    let everywhere = allowed(0);
    // Three threads that report their tid and wait until told to end.
    let (end_tx, end_rx) = bounded::<()>(0);
    let (tid_tx, tid_rx) = bounded(3);
    let threads: Vec<_> = ["t-server-0", "t-client-0", "t-other"]
        .into_iter()
        .map(|name| {
            let (end_rx, tid_tx) = (end_rx.clone(), tid_tx.clone());
            pin::spawn_named(name, move || {
                // SAFETY: gettid has no arguments and cannot fail.
                tid_tx.send((name, unsafe { libc::gettid() })).unwrap();
                let _ = end_rx.recv();
            })
        })
        .collect();
    let mut tids: Vec<(&str, libc::pid_t)> =
        (0..3).map(|_| tid_rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    tids.sort();
    let (client, other, server) = (tids[0].1, tids[1].1, tids[2].1);

    assert!(pin::apply(Pin::Apart).unwrap() >= 2, "both named threads pinned");
    assert_eq!(allowed(server), [0], "the server side on CPU 0");
    assert_eq!(allowed(client), [1], "the client side on CPU 1");
    assert_eq!(allowed(other), everywhere, "a thread of neither side is left alone");
    pin::apply(Pin::Same).unwrap();
    assert_eq!(allowed(client), [0], "same: the client side on CPU 0 too");
    drop(end_tx);
    for t in threads {
        t.join().unwrap();
    }

    // Each peer runs pinned (the run fails if it has no thread to pin) and completes.
    for peer in [Peer::Asyncmsgr(MsgrVariant::V1), Peer::Tokio, Peer::StdBatched, Peer::StdNaive] {
        let args = Args {
            depth: 4,
            duration: Some(Duration::from_millis(300)),
            progress: false,
            pin: Some(Pin::Apart),
            ..Args::default()
        };
        let report = bench::run_peer(&args, peer).unwrap_or_else(|e| panic!("{peer}: {e}"));
        assert_eq!(report.failure, None, "{peer}");
        assert!(report.round_trips > 0, "{peer}: no round trip");
    }
}
