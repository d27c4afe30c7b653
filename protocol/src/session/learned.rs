//! [`LearnedAddr`]: the IP a messenger with a blank address (a pure client, or a
//! listener on `0.0.0.0` / `[::]`) learns from its first peer, shared by every machine
//! of that messenger (Ceph's `AsyncMessenger::learned_addr` and `need_addr`, and
//! `set_addr_unknowns`).
//!
//! Ceph's rules, followed here (`src/msg/async/AsyncMessenger.cc`, `ProtocolV1.cc`
//! `handle_server_banner_and_identify`, `ProtocolV2.cc` `handle_hello`):
//!
//! * Only the connect side learns, from the acceptor's view of us (v1's banner reply
//!   `peer_addr_for_me`, msgr2's HELLO `peer_addr`), and only while our address has a
//!   blank IP (`ms_learn_addr_from_peer`, on by default).
//! * Only once (`need_addr`, under the messenger's lock): the first connection that
//!   tells us wins, a later or racing one changes nothing and announces the winner's IP.
//! * Only the IP: port, nonce and address type stay ours (`set_port`, `set_nonce`,
//!   `set_type`). A bound messenger's blank address takes it only from the same family
//!   (`a.get_family() == peer_addr_for_me.get_family()`), though the one chance is used
//!   up all the same; a messenger never bound (Ceph's empty address vector) takes any.
//! * `set_addr_unknowns` fills the blank IPs of a bound messenger's addresses from
//!   addresses it is given (of the same family); an address no longer blank learns
//!   nothing more.
//!
//! Stricter than Ceph: a peer that says we are at `0.0.0.0` or `[::]` teaches nothing
//! and does not use up the chance (Ceph would adopt the blank IP for good).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::types::{with_port, EntityAddr, EntityAddrVec};

/// The IP our blank addresses take (learned from a peer, or set), once for good.
#[derive(Debug)]
pub struct LearnedAddr {
    /// The IP (with a port we ignore) our blank addresses take, set once.
    ip: OnceLock<SocketAddr>,
    /// Ceph's `need_addr`: no peer has told us yet.
    need: AtomicBool,
}

impl Default for LearnedAddr {
    fn default() -> Self {
        LearnedAddr { ip: OnceLock::new(), need: AtomicBool::new(true) }
    }
}

/// Whether our blank address `a` takes the IP of `ip`: it has a blank IP, and either it
/// was never bound (port 0: a pure client, Ceph's empty vector, takes any family) or
/// `ip` is of its family.
fn takes(a: &EntityAddr, ip: &SocketAddr) -> bool {
    if !a.is_blank_ip() || ip.ip().is_unspecified() {
        return false;
    }
    match a.addr {
        None => true,
        Some(mine) => a.port() == 0 || mine.is_ipv4() == ip.is_ipv4(),
    }
}

impl LearnedAddr {
    /// Nothing learned yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The IP our blank addresses took, if any.
    pub fn ip(&self) -> Option<SocketAddr> {
        self.ip.get().copied()
    }

    /// A connection we dialled was told by its acceptor that it sees us at `seen` while
    /// our addresses `mine` have a blank IP (Ceph's `learned_addr`). The first such
    /// report decides (a racing one waits for it and takes its IP); returns whether this
    /// one was it, so that the messenger updates its loopback connection as Ceph's
    /// `_init_local_connection` does. A blank `seen` teaches nothing.
    pub fn learn(&self, seen: SocketAddr, mine: &EntityAddrVec) -> bool {
        if seen.ip().is_unspecified() || !self.need.load(Ordering::Acquire) {
            return false;
        }
        if mine.addrs.iter().any(|a| takes(a, &seen)) {
            let mut won = false;
            self.ip.get_or_init(|| {
                won = true;
                with_port(seen, 0)
            });
            self.need.store(false, Ordering::Release);
            won
        } else {
            // Another family: Ceph's learned_addr fills nothing, but the chance is gone.
            self.need.swap(false, Ordering::AcqRel)
        }
    }

    /// `set_addr_unknowns`: the blank IPs of our bound addresses `mine` take the IP of
    /// the first of `given` of their family, unless an IP was already learned or set.
    /// Returns whether they took it.
    pub fn set_unknowns(&self, given: &EntityAddrVec, mine: &EntityAddrVec) -> bool {
        let bound = |a: &&EntityAddr| a.is_blank_ip() && a.port() != 0;
        let Some(ip) = mine
            .addrs
            .iter()
            .filter(bound)
            .find_map(|a| given.addrs.iter().filter_map(|g| g.addr).find(|g| takes(a, g)))
        else {
            return false;
        };
        self.ip.set(with_port(ip, 0)).is_ok()
    }

    /// `addrs` with their blank IPs filled as [`LearnedAddr::ip`] says (port, nonce and
    /// type kept).
    pub fn fill(&self, addrs: &mut EntityAddrVec) {
        for a in &mut addrs.addrs {
            self.fill_one(a);
        }
    }

    /// One address filled as [`LearnedAddr::fill`] does.
    pub fn fill_one(&self, a: &mut EntityAddr) {
        if let Some(ip) = self.ip() {
            if takes(a, &ip) {
                a.addr = Some(with_port(ip, a.port()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::AddrType;

    fn addrs(s: &str, nonce: u32) -> EntityAddrVec {
        let a = EntityAddr::legacy(s.parse().unwrap(), nonce);
        EntityAddrVec { addrs: vec![EntityAddr { ty: AddrType::MSGR2, ..a }, a] }
    }

    // The first report wins for good; a later one (another IP) changes nothing; the
    // port, nonce and type stay ours.
    #[test]
    fn the_first_peer_decides_and_only_the_ip_is_taken() {
        let l = LearnedAddr::new();
        let mine = addrs("0.0.0.0:6800", 7);
        assert!(l.learn("10.1.2.3:40000".parse().unwrap(), &mine));
        assert!(!l.learn("10.9.9.9:1".parse().unwrap(), &mine));
        let mut filled = mine.clone();
        l.fill(&mut filled);
        assert_eq!(filled, addrs("10.1.2.3:6800", 7));
    }

    // A bound IPv4 wildcard does not take an IPv6 view of us (Ceph: same family only),
    // and that report used up the chance; a never-bound client takes any family.
    #[test]
    fn a_bound_address_takes_only_its_family_a_client_any() {
        let l = LearnedAddr::new();
        let mine = addrs("0.0.0.0:6800", 7);
        assert!(l.learn("[2001:db8::1]:5".parse().unwrap(), &mine), "the first report");
        assert!(!l.learn("10.1.2.3:5".parse().unwrap(), &mine), "the chance is gone");
        let mut filled = mine.clone();
        l.fill(&mut filled);
        assert_eq!(filled, mine);

        let l = LearnedAddr::new();
        let client = addrs("0.0.0.0:0", 9);
        assert!(l.learn("[2001:db8::1]:5".parse().unwrap(), &client));
        let mut filled = client.clone();
        l.fill(&mut filled);
        assert_eq!(filled, addrs("[2001:db8::1]:0", 9));
    }

    // A peer saying we are at a blank IP teaches nothing and leaves the chance.
    #[test]
    fn a_blank_view_teaches_nothing() {
        let l = LearnedAddr::new();
        let mine = addrs("0.0.0.0:0", 7);
        assert!(!l.learn("0.0.0.0:1".parse().unwrap(), &mine));
        assert!(!l.learn("[::]:1".parse().unwrap(), &mine));
        assert_eq!(l.ip(), None);
        assert!(l.learn("127.0.0.1:1".parse().unwrap(), &mine));
    }

    // set_addr_unknowns: a bound blank address takes the IP of the first given address
    // of its family; an unbound one, or one already learned, takes nothing.
    #[test]
    fn set_unknowns_fills_bound_blank_addresses_once() {
        let l = LearnedAddr::new();
        let mine = addrs("[::]:6800", 3);
        let given = EntityAddrVec {
            addrs: vec![
                EntityAddr::legacy("10.0.0.1:3300".parse().unwrap(), 0),
                EntityAddr::legacy("[2001:db8::7]:3300".parse().unwrap(), 0),
            ],
        };
        assert!(l.set_unknowns(&given, &mine));
        let mut filled = mine.clone();
        l.fill(&mut filled);
        assert_eq!(filled, addrs("[2001:db8::7]:6800", 3));
        assert!(!l.set_unknowns(&given, &mine), "once");
        assert!(!LearnedAddr::new().set_unknowns(&given, &addrs("0.0.0.0:0", 3)), "unbound");
    }
}
