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

/// Every TCP socket of this process that is connected to or from `addr`, with its
/// congestion control.
fn sockets_of(addr: SocketAddr) -> Vec<(SocketAddr, SocketAddr, String)> {
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
        // connections stay up until the test shuts it down; it is only borrowed for three
        // getsockopt-style calls, and a descriptor reused meanwhile would be some other
        // socket, which the address filter below leaves out.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else { continue };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else { continue };
        if local != addr && peer != addr {
            continue;
        }
        let Ok(cc) = sock.tcp_congestion() else { continue };
        let cc = String::from_utf8_lossy(&cc).trim_end_matches('\0').to_string();
        found.push((local, peer, cc));
    }
    found
}

/// A server and a client with `cc` as their `tcp_congestion`, one message each way;
/// returns both ends' sockets.
fn ping_with(cc: Option<&str>, nonce: u32) -> Vec<(SocketAddr, SocketAddr, String)> {
    let config = MessengerConfig { tcp_congestion: cc.map(str::to_string), ..test_config(1) };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, addr, _srv_rx) = server_on(
        EntityType::OSD,
        nonce,
        Policy::stateless_server(),
        true,
        loopback,
        config.clone(),
    );
    let (cli, cli_rx) = client_with(EntityType::CLIENT, nonce + 1, Policy::lossy_client(), config);
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (_, reply) = next_message(&cli_rx);
    assert_eq!(reply.tid(), 1);
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
