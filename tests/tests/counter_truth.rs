//! What the messenger reports about itself is what happened: its running-time counters
//! count its own connection handlers' work, not the other work of the workers it shares.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Messenger, Policy};
use protocol::types::EntityType;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// `msgr_running_total_time` of `m`, in seconds, summed over its workers.
fn running_time(m: &Messenger) -> f64 {
    let dump = m.counters_json();
    let sections = dump.as_object().into_iter().flatten();
    let workers = sections.filter(|(k, _)| k.starts_with("AsyncMessenger::Worker-"));
    workers.map(|(_, v)| v["msgr_running_total_time"].as_f64().unwrap_or(0.0)).sum()
}

/// The running times count the messenger's connection handlers only: other work the
/// worker ran just before a driver's pump in the same loop iteration (here a job of
/// 300 ms posted to the worker, as a user's `submit_to`, another subsystem's timer or the
/// admin socket's answer would run there) is not the messenger's. Before, a pump counted
/// from the iteration's clock (or the last pump's end), so the whole job counted as the
/// messenger's running time.
#[test]
fn running_time_counts_no_work_of_others_on_the_worker() {
    const JOB: Duration = Duration::from_millis(300);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), false, loopback, test_config(1));
    let (cli, cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossy_client(), test_config(1));
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (srv_conn, m) = next_message(&srv_rx);
    assert_eq!(m.tid(), 1);
    srv_conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("reply");
    assert_eq!(next_message(&cli_rx).1.tid(), 2);
    let worker = srv.pool().handles()[0].clone();
    worker.submit_to(|_| ()).expect("the worker runs");
    let before = running_time(&srv);

    // The worker is held in one drain of its external events...
    let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
    let (release, held) = crossbeam_channel::bounded::<()>(0);
    worker
        .dispatch_event_external(move |_| {
            let _ = started_tx.send(());
            let _ = held.recv_timeout(WAIT);
        })
        .expect("post");
    started.recv_timeout(WAIT).expect("the worker is held");
    // ...while a job of another kind, then the driver's wake-up for a send, queue for
    // the next one.
    let (took_tx, took) = crossbeam_channel::bounded::<Duration>(1);
    worker
        .dispatch_event_external(move |_| {
            let start = Instant::now();
            let (_never, wait) = crossbeam_channel::bounded::<()>(0);
            let _ = wait.recv_timeout(JOB);
            let _ = took_tx.send(start.elapsed());
        })
        .expect("post");
    srv_conn.send_message(test_message(MSG_TEST, 3, Bytes::new())).expect("send");
    drop(release);
    assert_eq!(next_message(&cli_rx).1.tid(), 3);
    let job = took.recv_timeout(WAIT).expect("the job ran");
    assert!(job >= JOB, "{job:?}");
    // The pump that wrote it has ended (and counted its time) once the worker runs this.
    worker.submit_to(|_| ()).expect("the worker runs");
    let counted = running_time(&srv) - before;
    assert!(
        counted < JOB.as_secs_f64() / 2.0,
        "{counted} s of running time counted for one message and its write; the other job took {job:?}"
    );
    cli.shutdown();
    srv.shutdown();
}
