//! The TCP congestion control every peer's sockets use (`--tcp-congestion`). It is the
//! kernel's, not a peer's, but it decides some cells: BBR, the default of some hosts,
//! paces each segment, and on loopback that bounds 1 MiB messages for every peer. So a
//! run can set one for all peers alike, and every table says which was in effect.

use std::io;
use std::sync::OnceLock;

static CHOSEN: OnceLock<Option<String>> = OnceLock::new();

/// Sets the congestion control of every peer's sockets for this process (once; `None`:
/// the host's default), after trying it on a fresh socket: a name the kernel refuses
/// fails here, once, not as a dropped connection in some peer.
pub fn choose(name: Option<String>) -> io::Result<()> {
    if let Some(name) = &name {
        messenger::config::check_tcp_congestion(name).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("--tcp-congestion {name}: {e}"))
        })?;
    }
    let _ = CHOSEN.set(name);
    Ok(())
}

/// The congestion control chosen with `--tcp-congestion`, if any.
pub fn chosen() -> Option<&'static str> {
    CHOSEN.get().and_then(|c| c.as_deref())
}

/// Applies the chosen congestion control to `sock` (nothing when none was chosen).
pub fn tune<S: std::os::fd::AsFd>(sock: &S) -> io::Result<()> {
    match chosen() {
        Some(name) => socket2::SockRef::from(sock).set_tcp_congestion(name.as_bytes()),
        None => Ok(()),
    }
}

/// The host's default congestion control (`net.ipv4.tcp_congestion_control`).
pub fn host_default() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").ok()?;
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// For the machine line: which congestion control the runs used.
pub fn describe() -> String {
    let host = host_default().unwrap_or_else(|| "unknown".into());
    match chosen() {
        Some(name) => {
            format!("TCP congestion control {name} (--tcp-congestion; host default {host})")
        }
        None => format!("TCP congestion control {host} (the host's default)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name the kernel refuses is refused when chosen, and chooses nothing.
    #[test]
    fn a_refused_name_fails_when_chosen() {
        let err = choose(Some("no-such-cc".into())).expect_err("refused");
        assert!(err.to_string().contains("--tcp-congestion no-such-cc"), "{err}");
        assert_eq!(chosen(), None);
    }

    /// With nothing chosen a socket keeps the host's default, and the line names it.
    #[test]
    fn nothing_chosen_leaves_the_host_default() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        tune(&l).expect("no-op");
        let cc = socket2::SockRef::from(&l).tcp_congestion().expect("getsockopt");
        let cc = String::from_utf8_lossy(&cc).trim_end_matches('\0').to_string();
        if let Some(host) = host_default() {
            assert_eq!(cc, host);
            assert!(describe().contains(&host), "{}", describe());
        }
    }
}
