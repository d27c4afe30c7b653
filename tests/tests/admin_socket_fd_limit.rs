//! The admin socket out of file descriptors: a client whose accept failed with EMFILE is
//! served once a descriptor is free, without another client connecting to raise a new
//! edge on the listener (Ceph's admin socket thread loops on its poll; ours retries after
//! a pause).
//!
//! A test binary of its own, with one test: it lowers the process's `RLIMIT_NOFILE` and
//! uses up every descriptor below it, which would fail any other test running beside it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use messenger::Policy;
use protocol::types::EntityType;
use tests::loopback::*;

/// Descriptors free above the highest open one once the limit is lowered: a few, so
/// using them all up takes a few calls.
const SPARE: u64 = 16;

/// The process's soft and hard `RLIMIT_NOFILE`.
fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, which lives across the call.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(r, 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit
}

fn set_nofile(limit: libc::rlimit) {
    // SAFETY: setrlimit reads the struct it is given, which lives across the call.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(r, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// The highest descriptor this process has open.
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("some descriptor is open")
}

/// Opens `/dev/null` until the process is out of descriptors; returns them.
fn use_up_descriptors() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return held,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
}

/// A client connects while the process has no descriptor free, so the admin socket's
/// accept fails with EMFILE and the client stays in the listener's backlog. Once a
/// descriptor is freed (and no other client ever connects), the client gets its answer.
#[test]
fn an_admin_client_queued_while_out_of_descriptors_is_served_once_one_is_free() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path =
        std::env::temp_dir().join(format!("asyncmsgr-asok-fd-limit-{}.asok", std::process::id()));
    srv.start_admin_socket(&path).expect("admin socket");

    let saved = nofile();
    let cur = (highest_fd() + 1 + SPARE).min(saved.rlim_cur);
    set_nofile(libc::rlimit { rlim_cur: cur, rlim_max: saved.rlim_max });
    let mut held = use_up_descriptors();
    // One descriptor free: the client's socket takes it, and the server has none left.
    drop(held.pop());
    let mut client = UnixStream::connect(&path).expect("connect admin socket");
    client.write_all(b"{\"prefix\": \"version\"}\0").expect("command");
    // Every worker has run its file events since the connect (the listener's edge came
    // before these were posted, and a loop runs its file events before the external
    // ones): the accept was tried, with no descriptor to take.
    for worker in srv.pool().handles() {
        worker.submit_to(|_| ()).expect("worker");
    }
    drop(held.pop());

    client.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut len = [0u8; 4];
    let read = client.read_exact(&mut len);
    drop(held);
    set_nofile(saved);
    read.expect("no answer: the queued client was never accepted");
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    client.read_exact(&mut answer).expect("answer");
    let v: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(v["release"], "asyncmsgr", "{v}");
    srv.shutdown();
}
