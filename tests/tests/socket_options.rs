//! Socket options a messenger sets on its connections, read back from the sockets
//! themselves (both ends live in this process, found through `/proc/self/fd`).

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use bytes::Bytes;
use messenger::{Messenger, MessengerConfig, Policy};
use protocol::types::{EntityName, EntityType};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

fn proc_line(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// Every TCP socket of this process that is connected to or from `addr`, with what
/// `read` reads of it (those it reads nothing of left out).
fn sockets_of_with<T>(
    addr: SocketAddr,
    read: impl Fn(&socket2::SockRef<'_>) -> Option<T>,
) -> Vec<(SocketAddr, SocketAddr, T)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return found };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor was open a moment ago and belongs to a messenger whose
        // connections stay up until the test shuts it down; it is only borrowed for a
        // few getsockopt-style calls, and a descriptor reused meanwhile would be some
        // other socket, which the address filter below leaves out.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else { continue };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else { continue };
        if local != addr && peer != addr {
            continue;
        }
        let Some(value) = read(&sock) else { continue };
        found.push((local, peer, value));
    }
    found
}

/// Every TCP socket of this process that is connected to or from `addr`, with its
/// congestion control.
fn sockets_of(addr: SocketAddr) -> Vec<(SocketAddr, SocketAddr, String)> {
    sockets_of_with(addr, |sock| {
        let cc = sock.tcp_congestion().ok()?;
        Some(String::from_utf8_lossy(&cc).trim_end_matches('\0').to_string())
    })
}

/// `SO_PRIORITY` of `sock`.
fn so_priority(sock: &socket2::SockRef<'_>) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut prio: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `prio`, a live `c_int` on this
    // stack frame, and `len` back; the descriptor is borrowed for the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            std::ptr::from_mut(&mut prio).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(prio)
}

/// An OSD server and a `cli_type` client, both with `config`, after one message each way
/// on loopback: the two messengers and the server's address.
fn one_exchange(
    config: MessengerConfig,
    cli_type: EntityType,
    nonce: u32,
) -> (Messenger, Messenger, SocketAddr) {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, addr, _srv_rx) = server_on(
        EntityType::OSD,
        nonce,
        Policy::stateless_server(),
        true,
        loopback,
        config.clone(),
    );
    let (cli, cli_rx) = client_with(cli_type, nonce + 1, Policy::lossy_client(), config);
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (_, reply) = next_message(&cli_rx);
    assert_eq!(reply.tid(), 1);
    (srv, cli, addr)
}

/// Both ends of a connection between a server and a client with `socket_priority` as
/// given, after one message each way: each socket's `SO_PRIORITY` and `IP_TOS`.
fn priorities_with(prio: Option<u32>, nonce: u32) -> Vec<(SocketAddr, SocketAddr, (i32, u32))> {
    let config = MessengerConfig { socket_priority: prio, ..test_config(1) };
    let (srv, cli, addr) = one_exchange(config, EntityType::OSD, nonce);
    let found = sockets_of_with(addr, |sock| Some((so_priority(sock)?, sock.tos().ok()?)));
    cli.shutdown();
    srv.shutdown();
    found
}

/// `socket_priority` (Ceph's `set_socket_priority`, an OSD's heartbeat messengers with
/// `osd_heartbeat_use_min_delay_socket`) gives the dialled socket and the accepted one
/// that priority and marks their packets CS6, as Ceph's `NetHandler::set_priority`; a
/// messenger without it leaves the kernel's defaults (priority 0, TOS 0).
#[test]
fn socket_priority_is_set_on_both_ends_of_a_connection() {
    const SOCKET_PRIORITY_MIN_DELAY: u32 = 6;
    let set = priorities_with(Some(SOCKET_PRIORITY_MIN_DELAY), 30);
    assert!(set.len() >= 2, "both ends of the connection, found {set:?}");
    let marked = (SOCKET_PRIORITY_MIN_DELAY as i32, messenger::config::IPTOS_CLASS_CS6);
    assert!(set.iter().all(|(_, _, p)| *p == marked), "{marked:?} everywhere: {set:?}");
    let unset = priorities_with(None, 40);
    assert!(unset.len() >= 2, "both ends of the connection, found {unset:?}");
    assert!(unset.iter().all(|(_, _, p)| *p == (0, 0)), "the defaults everywhere: {unset:?}");
}

/// A priority that does not fit the socket option fails at startup, naming the option.
#[test]
fn a_socket_priority_out_of_range_fails_at_startup() {
    let config = MessengerConfig { socket_priority: Some(u32::MAX), ..test_config(1) };
    let err = Messenger::new(EntityName::new(EntityType::OSD, 1), 1, config)
        .err()
        .unwrap_or_else(|| panic!("u32::MAX accepted"));
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("socket_priority"), "{err}");
}

/// A server and a client with `cc` as their `tcp_congestion`, one message each way;
/// returns both ends' sockets.
fn ping_with(cc: Option<&str>, nonce: u32) -> Vec<(SocketAddr, SocketAddr, String)> {
    let config = MessengerConfig { tcp_congestion: cc.map(str::to_string), ..test_config(1) };
    let (srv, cli, addr) = one_exchange(config, EntityType::CLIENT, nonce);
    let found = sockets_of(addr);
    cli.shutdown();
    srv.shutdown();
    found
}

/// `tcp_congestion` is set on the dialled socket and on the accepted one, and a messenger
/// without it leaves the host's default.
#[test]
fn tcp_congestion_is_set_on_both_ends_of_a_connection() {
    let default = proc_line("/proc/sys/net/ipv4/tcp_congestion_control");
    let allowed = proc_line("/proc/sys/net/ipv4/tcp_allowed_congestion_control");
    let Some(other) = allowed.split_whitespace().find(|cc| *cc != default) else {
        eprintln!("only {default:?} is allowed here ({allowed:?}): nothing to tell apart");
        return;
    };
    let set = ping_with(Some(other), 10);
    assert!(set.len() >= 2, "both ends of the connection, found {set:?}");
    assert!(set.iter().all(|(_, _, cc)| cc == other), "{other} everywhere: {set:?}");
    let unset = ping_with(None, 20);
    assert!(unset.len() >= 2, "both ends of the connection, found {unset:?}");
    assert!(unset.iter().all(|(_, _, cc)| *cc == default), "{default} everywhere: {unset:?}");
}

/// A name the kernel does not offer fails at startup, naming the option.
#[test]
fn a_congestion_control_the_kernel_refuses_fails_at_startup() {
    for bad in ["no-such-cc", "", "a-name-too-long-x", "cu bic"] {
        let config = MessengerConfig { tcp_congestion: Some(bad.to_string()), ..test_config(1) };
        let err = Messenger::new(EntityName::new(EntityType::CLIENT, 1), 1, config)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}: {err}");
        assert!(err.to_string().contains("tcp_congestion"), "{bad:?}: {err}");
    }
}
