//! Workspace integration tests and their fixtures (loopback peers, a real `ceph-mon`).
//!
//! Never: part of any shipped library; only `tests/` and `bench` use it.

pub mod ceph;
pub mod cephx;
pub mod chaos;
pub mod counting;
pub mod hostile;
pub mod hostile_v2;
pub mod loopback;
pub mod mon;
pub mod nat;
pub mod soak;
pub mod synthetic;
pub mod watchdog;

/// `Read::read`, called again while it is interrupted (`EINTR`). The kernel does not
/// restart a blocking socket read that has a timeout (`SO_RCVTIMEO`, which these tests
/// set everywhere) after a signal or a freeze of the process, as it restarts other
/// reads: a test must not take that for the peer's error or close (a CI run failed on
/// it).
pub fn read_some(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// [`TcpStream::peek`](std::net::TcpStream::peek), called again while it is
/// interrupted, as [`read_some`].
pub fn peek_some(s: &std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.peek(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
