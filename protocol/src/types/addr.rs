//! Entity addresses: the 136-byte legacy `ceph_entity_addr` (banner phase), the
//! `entity_addr_t` / `entity_addrvec_t` forms inside messages, and the race tie-break key.

use std::fmt;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::encoding::{DecodeBudget, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::types::Features;

/// Size of the legacy `ceph_entity_addr`: u32 type + u32 nonce + 128-byte sockaddr_storage.
pub const LEGACY_ADDR_LEN: usize = 136;

/// Size of [`EntityAddr::race_key`]: Ceph's in-memory `entity_addr_t`.
///
/// `u32 type` + `u32 nonce` + the `sockaddr` union, whose largest member is
/// `sockaddr_in6` (28 bytes): 36 bytes hold an IPv6 address completely (family 2, port 2,
/// flowinfo 4, address 16, scope id 4), so no longer key is needed for IPv6.
pub const RACE_KEY_LEN: usize = 36;

const AF_INET: u16 = 2;
/// Linux's `AF_INET6` (Ceph writes the host's value; every Ceph peer we meet is Linux).
const AF_INET6: u16 = 10;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;
const SOCKADDR_STORAGE_LEN: usize = 128;

/// `addr` with port `port`, the rest kept: an IPv6 scope id and flowinfo too, as Ceph's
/// `set_port` on a copied sockaddr (`SocketAddr::new(ip, port)` would drop them, and a
/// link-local address without its scope id names no interface).
pub(crate) fn with_port(mut addr: SocketAddr, port: u16) -> SocketAddr {
    addr.set_port(port);
    addr
}

/// A local socket address as an IPv4 peer dialled it: a connection accepted by a
/// dual-stack listener on `[::]` from an IPv4 peer has the local address
/// `[::ffff:a.b.c.d]`, which the peer knows as `a.b.c.d` (announced as it is, the peer's
/// dialled-address check refuses it: the families differ).
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `entity_addr_t::type`: which messenger protocol an address speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrType(pub u32);

impl AddrType {
    /// No address.
    pub const NONE: AddrType = AddrType(0);
    /// msgr v1 ("v1:").
    pub const LEGACY: AddrType = AddrType(1);
    /// msgr v2 ("v2:").
    pub const MSGR2: AddrType = AddrType(2);
    /// Either.
    pub const ANY: AddrType = AddrType(3);

    /// Ceph's prefix name ("v1", "v2", "any", "none"), or "unknown".
    pub fn name(self) -> &'static str {
        match self {
            AddrType::NONE => "none",
            AddrType::LEGACY => "v1",
            AddrType::MSGR2 => "v2",
            AddrType::ANY => "any",
            _ => "unknown",
        }
    }
}

/// `entity_addr_t`: type, nonce and an optional socket address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityAddr {
    /// The protocol this address speaks.
    pub ty: AddrType,
    /// Distinguishes processes on the same ip:port (random for clients, 0 for monitors).
    pub nonce: u32,
    /// The socket address; `None` for `AF_UNSPEC` (a blank address), and for a family
    /// other than inet and inet6, which Ceph decodes and treats as a blank IP with port 0.
    pub addr: Option<SocketAddr>,
}

impl EntityAddr {
    /// A v1 (legacy) address.
    pub fn legacy(addr: SocketAddr, nonce: u32) -> Self {
        EntityAddr { ty: AddrType::LEGACY, nonce, addr: Some(addr) }
    }

    /// True if the IP is unspecified (0.0.0.0 / ::) or there is no address at all.
    pub fn is_blank_ip(&self) -> bool {
        self.addr.is_none_or(|a| a.ip().is_unspecified())
    }

    /// The port, 0 without an address.
    pub fn port(&self) -> u16 {
        self.addr.map_or(0, |a| a.port())
    }

    /// Writes the sockaddr bytes (family in the given byte order, then port BE, IP...)
    /// into `out`, which must be at least 28 bytes; returns the sockaddr length used.
    ///
    /// No address is the whole zeroed union, as Ceph's `get_sockaddr_len` gives it for
    /// family 0: a blank new-form `entity_addr_t` carries 28 zero bytes, never length 0.
    fn write_sockaddr(&self, out: &mut [u8], family_be: bool) -> usize {
        let fam = |f: u16| if family_be { f.to_be_bytes() } else { f.to_le_bytes() };
        match self.addr {
            None => SOCKADDR_IN6_LEN,
            Some(SocketAddr::V4(a)) => {
                out[0..2].copy_from_slice(&fam(AF_INET));
                out[2..4].copy_from_slice(&a.port().to_be_bytes());
                out[4..8].copy_from_slice(&a.ip().octets());
                SOCKADDR_IN_LEN
            }
            Some(SocketAddr::V6(a)) => {
                out[0..2].copy_from_slice(&fam(AF_INET6));
                out[2..4].copy_from_slice(&a.port().to_be_bytes());
                out[4..8].copy_from_slice(&a.flowinfo().to_le_bytes());
                out[8..24].copy_from_slice(&a.ip().octets());
                out[24..28].copy_from_slice(&a.scope_id().to_le_bytes());
                SOCKADDR_IN6_LEN
            }
        }
    }

    /// Parses sockaddr bytes whose family is in the given byte order: `b` is zero-filled
    /// past what the peer sent, as Ceph's freshly zeroed address is.
    ///
    /// A family other than inet and inet6 is no address: Ceph keeps its bytes, which it
    /// treats as a blank IP with port 0 (`is_blank_ip`, `get_port`), and its legacy
    /// decoder drops them (`set_sockaddr` refuses the family).
    fn read_sockaddr(b: &[u8; SOCKADDR_IN6_LEN], family_be: bool) -> Option<SocketAddr> {
        let fam = [b[0], b[1]];
        let family = if family_be { u16::from_be_bytes(fam) } else { u16::from_le_bytes(fam) };
        let port = u16::from_be_bytes([b[2], b[3]]);
        let word = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        match family {
            AF_INET => Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(word(4)), port))),
            AF_INET6 => {
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&b[8..24]);
                let flowinfo = u32::from_le_bytes(word(4));
                let scope = u32::from_le_bytes(word(24));
                Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope)))
            }
            _ => None,
        }
    }

    /// The 136-byte legacy `ceph_entity_addr` (banner phase).
    ///
    /// Like Pacific, the type field is written as 0; the family is big-endian.
    pub fn encode_legacy(&self) -> [u8; LEGACY_ADDR_LEN] {
        let mut out = [0u8; LEGACY_ADDR_LEN];
        out[4..8].copy_from_slice(&self.nonce.to_le_bytes());
        self.write_sockaddr(&mut out[8..], true);
        out
    }

    /// Decodes a legacy address from exactly [`LEGACY_ADDR_LEN`] bytes.
    pub fn decode_legacy(b: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(b);
        let addr = Self::decode_legacy_from(&mut d)?;
        d.finish()?;
        Ok(addr)
    }

    /// Decodes a legacy address at the decoder's position.
    ///
    /// The first byte is a marker and must be 0; bytes 1-3 of the type are ignored, as
    /// in Ceph. The result has type [`AddrType::LEGACY`], whatever the family. Ceph's
    /// `decode_legacy_addr_after_marker` gives `TYPE_NONE` to a sockaddr that is neither
    /// inet nor inet6 (its `set_sockaddr` leaves such an address unspecified); ours has
    /// no address (`addr: None`) there, which every user treats as blank, and keeps the
    /// legacy type because a v1 peer's banner address is keyed and compared as a v1
    /// address once its blank IP is filled in from the socket.
    pub fn decode_legacy_from(d: &mut Decoder<'_>) -> Result<Self> {
        if d.u8()? != 0 {
            return Err(Error::Malformed("legacy entity_addr marker is not 0"));
        }
        d.skip(3)?;
        Self::decode_legacy_after_marker(d)
    }

    fn decode_legacy_after_marker(d: &mut Decoder<'_>) -> Result<Self> {
        let nonce = d.u32()?;
        let storage: [u8; SOCKADDR_STORAGE_LEN] = d.array()?;
        let mut sa = [0u8; SOCKADDR_IN6_LEN];
        sa.copy_from_slice(&storage[..SOCKADDR_IN6_LEN]);
        let addr = Self::read_sockaddr(&sa, true);
        Ok(EntityAddr { ty: AddrType::LEGACY, nonce, addr })
    }

    /// Encodes as `entity_addr_t` inside a message, for a peer with `features`.
    ///
    /// Without `MSG_ADDR2`: the legacy 136-byte form. With it: marker 1, a versioned
    /// block (v1, compat 1) holding type, nonce, sockaddr length and the sockaddr with a
    /// little-endian family. A peer without `SERVER_NAUTILUS` sees type ANY as LEGACY.
    pub fn encode(&self, e: &mut Encoder, features: Features) {
        if !features.contains(Features::MSG_ADDR2) {
            e.bytes(&self.encode_legacy());
            return;
        }
        let ty = if self.ty == AddrType::ANY && !features.contains(Features::SERVER_NAUTILUS_MASK) {
            AddrType::LEGACY
        } else {
            self.ty
        };
        e.u8(1);
        e.versioned(1, 1, |e| {
            let mut sa = [0u8; SOCKADDR_IN6_LEN];
            let len = self.write_sockaddr(&mut sa, false);
            e.u32(ty.0).u32(self.nonce).u32(len as u32).bytes(&sa[..len]);
        });
    }

    /// Decodes an `entity_addr_t` inside a message: marker 0 (legacy) or 1 (new form).
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        match d.u8()? {
            0 => {
                d.skip(3)?;
                Self::decode_legacy_after_marker(d)
            }
            1 => Self::decode_new_after_marker(d),
            _ => Err(Error::Malformed("entity_addr_t marker is not 0 or 1")),
        }
    }

    /// The new form's sockaddr, as Ceph's `entity_addr_t::decode` takes it: length 0 is
    /// no address; else a family (LE) and at most as many bytes as that family's
    /// sockaddr holds (16 for inet; 28, the union's size, for inet6 and any other
    /// family), shorter ones zero-filled.
    fn decode_new_after_marker(d: &mut Decoder<'_>) -> Result<Self> {
        d.versioned("entity_addr_t", 1, |d, _v| {
            let ty = AddrType(d.u32()?);
            let nonce = d.u32()?;
            let len = d.u32()?;
            if len == 0 {
                return Ok(EntityAddr { ty, nonce, addr: None });
            }
            if len < 2 {
                return Err(Error::Malformed("sockaddr shorter than its family"));
            }
            // No family's sockaddr is longer: refused before the family is read.
            let too_large = |limit: usize| Error::TooLarge {
                what: "entity_addr_t sockaddr",
                len: u64::from(len),
                limit: limit as u64,
            };
            if len as usize > SOCKADDR_IN6_LEN {
                return Err(too_large(SOCKADDR_IN6_LEN));
            }
            let family = u16::from_le_bytes(d.array()?);
            let limit = if family == AF_INET { SOCKADDR_IN_LEN } else { SOCKADDR_IN6_LEN };
            if len as usize > limit {
                return Err(too_large(limit));
            }
            let mut sa = [0u8; SOCKADDR_IN6_LEN];
            let [lo, hi] = family.to_le_bytes();
            sa[0] = lo;
            sa[1] = hi;
            // At most 26 bytes (the limit above): the zip never runs past `sa`.
            for (to, from) in sa[2..].iter_mut().zip(d.bytes(len as usize - 2)?) {
                *to = *from;
            }
            let addr = Self::read_sockaddr(&sa, false);
            Ok(EntityAddr { ty, nonce, addr })
        })
    }

    /// The key Ceph compares (`memcmp`) to break a connection race (msgr-v1.md 3.7).
    ///
    /// Ceph's in-memory `entity_addr_t`: `u32 type` LE, `u32 nonce` LE (so nonces are not
    /// compared numerically), then the sockaddr union with the family in host order (LE),
    /// port BE, IP, zero padding. Compare two keys byte-wise (`<` on arrays does that).
    /// Ceph compares the *legacy* addresses, so pass addresses of type LEGACY.
    pub fn race_key(&self) -> [u8; RACE_KEY_LEN] {
        let mut out = [0u8; RACE_KEY_LEN];
        out[0..4].copy_from_slice(&self.ty.0.to_le_bytes());
        out[4..8].copy_from_slice(&self.nonce.to_le_bytes());
        self.write_sockaddr(&mut out[8..], false);
        out
    }
}

impl fmt::Display for EntityAddr {
    /// Ceph's form: `v1:127.0.0.1:6789/0`, `-` for a blank address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{}:{}/{}", self.ty.name(), a, self.nonce),
            None => write!(f, "{}:-/{}", self.ty.name(), self.nonce),
        }
    }
}

/// The smallest `entity_addr_t` on the wire: marker 1, a versioned block header (6) and
/// type, nonce and sockaddr length (12) with an empty sockaddr.
const MIN_ADDR_LEN: usize = 1 + 6 + 12;

/// `entity_addrvec_t`: the addresses an entity listens on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityAddrVec {
    /// The addresses, in preference order.
    pub addrs: Vec<EntityAddr>,
}

impl EntityAddrVec {
    /// A vector holding one address.
    pub fn single(addr: EntityAddr) -> Self {
        EntityAddrVec { addrs: vec![addr] }
    }

    /// The first v1 (LEGACY) address, if any.
    pub fn legacy_addr(&self) -> Option<EntityAddr> {
        self.addrs.iter().copied().find(|a| a.ty == AddrType::LEGACY)
    }

    /// Encodes for a peer with `features`: without `MSG_ADDR2` a single legacy address
    /// (the v1 member, or an all-zero address); with it, marker 2 + count + addresses.
    pub fn encode(&self, e: &mut Encoder, features: Features) {
        if !features.contains(Features::MSG_ADDR2) {
            e.bytes(&self.legacy_addr().unwrap_or_default().encode_legacy());
            return;
        }
        e.u8(2);
        e.vec(&self.addrs, |e, a| a.encode(e, features));
    }

    /// Decodes marker 0 (one legacy address), 1 (one new-form address) or 2 (vector).
    ///
    /// The vector may take at most [`DecodeBudget::for_input`] of the remaining input in
    /// memory (see [`EntityAddrVec::decode_within`]).
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        let budget = &mut DecodeBudget::for_input(d.remaining());
        Self::decode_within(d, budget)
    }

    /// Like [`EntityAddrVec::decode`], with the vector's buffer charged to `budget` before
    /// it is allocated or grown: an address takes 19 bytes on the wire and 40 decoded.
    pub fn decode_within(d: &mut Decoder<'_>, budget: &mut DecodeBudget) -> Result<Self> {
        let one = |budget: &mut DecodeBudget, addr: EntityAddr| {
            budget.charge_heap(size_of::<EntityAddr>())?;
            Ok(Self::single(addr))
        };
        match d.u8()? {
            0 => {
                d.skip(3)?;
                one(budget, EntityAddr::decode_legacy_after_marker(d)?)
            }
            1 => one(budget, EntityAddr::decode_new_after_marker(d)?),
            2 => Ok(EntityAddrVec {
                addrs: d.vec_within(budget, MIN_ADDR_LEN, |d, _| EntityAddr::decode(d))?,
            }),
            _ => Err(Error::Malformed("entity_addrvec_t marker above 2")),
        }
    }
}

impl From<EntityAddr> for EntityAddrVec {
    /// A vector of that one address.
    fn from(addr: EntityAddr) -> Self {
        EntityAddrVec::single(addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mon() -> EntityAddr {
        EntityAddr::legacy("127.0.0.1:6789".parse().unwrap(), 0)
    }

    #[test]
    fn legacy_form_matches_the_wire() {
        // msgr-v1.md 2.3: monitor 127.0.0.1:6789, nonce 0.
        let b = mon().encode_legacy();
        assert_eq!(&b[..16], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x1a, 0x85, 127, 0, 0, 1]);
        assert!(b[16..].iter().all(|&x| x == 0));
        assert_eq!(EntityAddr::decode_legacy(&b).unwrap(), mon());
        let mut bad = b;
        bad[0] = 1;
        assert!(matches!(EntityAddr::decode_legacy(&bad), Err(Error::Malformed(_))));
        // Bytes 1-3 of the type are ignored.
        let mut odd = b;
        odd[2] = 7;
        assert_eq!(EntityAddr::decode_legacy(&odd).unwrap(), mon());
        assert!(matches!(EntityAddr::decode_legacy(&b[..135]), Err(Error::Truncated { .. })));
    }

    #[test]
    fn new_form_matches_the_monmap_bytes() {
        // msgr-v1.md 2.4 example: v1:127.0.0.1:6789/0.
        let mut e = Encoder::new();
        mon().encode(&mut e, Features::PACIFIC_ADVERTISED);
        let want = [
            1, 1, 1, 0x1c, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0, 0x1a, 0x85, 127,
            0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(e.as_slice(), &want);
        let mut d = Decoder::new(&want);
        assert_eq!(EntityAddr::decode(&mut d).unwrap(), mon());
        d.finish().unwrap();
    }

    #[test]
    fn ipv6_round_trips_in_every_form() {
        let a6 = EntityAddr {
            ty: AddrType::MSGR2,
            nonce: 0xdead_beef,
            addr: Some("[fe80::1%3]:3300".parse().unwrap()),
        };
        let legacy = EntityAddr { ty: AddrType::LEGACY, ..a6 };
        assert_eq!(EntityAddr::decode_legacy(&a6.encode_legacy()).unwrap(), legacy);
        let v = EntityAddrVec { addrs: vec![a6, mon()] };
        for features in [Features::PACIFIC_ADVERTISED, Features::MSG_ADDR2] {
            let mut e = Encoder::new();
            v.encode(&mut e, features);
            let mut d = Decoder::new(e.as_slice());
            assert_eq!(EntityAddrVec::decode(&mut d).unwrap(), v);
            d.finish().unwrap();
        }
        // Without MSG_ADDR2 the vector collapses to its v1 member.
        let mut e = Encoder::new();
        v.encode(&mut e, Features::NONE);
        assert_eq!(e.len(), LEGACY_ADDR_LEN);
        assert_eq!(EntityAddrVec::decode(&mut Decoder::new(e.as_slice())).unwrap().addrs, [mon()]);
    }

    #[test]
    fn any_becomes_legacy_for_pre_nautilus_peers() {
        let a = EntityAddr { ty: AddrType::ANY, ..mon() };
        let mut e = Encoder::new();
        a.encode(&mut e, Features::MSG_ADDR2);
        let got = EntityAddr::decode(&mut Decoder::new(e.as_slice())).unwrap();
        assert_eq!(got.ty, AddrType::LEGACY);
        // A Jewel peer's bit 2 (MONCLOCKCHECK) without its incarnation is not Nautilus.
        let jewel = Features::MSG_ADDR2 | Features::SERVER_NAUTILUS | Features::SERVER_JEWEL;
        let nautilus = jewel | Features::SERVER_MIMIC;
        for (features, want) in [(jewel, AddrType::LEGACY), (nautilus, AddrType::ANY)] {
            let mut e = Encoder::new();
            a.encode(&mut e, features);
            let got = EntityAddr::decode(&mut Decoder::new(e.as_slice())).unwrap();
            assert_eq!(got.ty, want, "{features:?}");
        }
    }

    #[test]
    fn race_key_compares_nonce_bytes_little_endian() {
        // Nonce 0x100 has LE bytes 00 01.., nonce 1 has 01 00..: 0x100 sorts lower.
        let a = EntityAddr { nonce: 0x100, ..mon() };
        let b = EntityAddr { nonce: 1, ..mon() };
        assert!(a.race_key() < b.race_key());
        assert_eq!(&a.race_key()[..12], &[1, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0x1a, 0x85]);
        let v6 = EntityAddr::legacy("[::1]:1".parse().unwrap(), 0);
        assert_eq!(v6.race_key()[8 + 23], 1, "the whole IPv6 address is inside the key");
    }

    // Ceph's entity_addr_t::encode writes `get_sockaddr_len()` bytes of the union, and
    // that is the union's size (28) for family 0: a blank address is not length 0.
    #[test]
    fn a_blank_address_is_written_as_cephs_zeroed_union() {
        let blank = EntityAddr { ty: AddrType::ANY, nonce: 7, addr: None };
        let mut e = Encoder::new();
        blank.encode(&mut e, Features::MSG_ADDR2 | Features::SERVER_NAUTILUS_MASK);
        let mut want = vec![1, 1, 1, 40, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 28, 0, 0, 0];
        want.extend_from_slice(&[0; 28]);
        assert_eq!(e.as_slice(), &want[..]);
        assert_eq!(EntityAddr::decode(&mut Decoder::new(&want)), Ok(blank));
        // The legacy form and the race key already hold the zeroed union.
        assert_eq!(EntityAddr::default().encode_legacy(), [0; LEGACY_ADDR_LEN]);
    }

    #[test]
    fn blank_ip_and_display() {
        assert!(EntityAddr::default().is_blank_ip());
        assert!(EntityAddr::legacy("0.0.0.0:5".parse().unwrap(), 1).is_blank_ip());
        assert!(!mon().is_blank_ip());
        assert_eq!(mon().to_string(), "v1:127.0.0.1:6789/0");
    }

    /// A new-form v2 `entity_addr_t`, nonce 0, whose sockaddr length field says `len`
    /// and whose sockaddr bytes are `family` (LE) then `rest`.
    fn new_form(len: u32, family: Option<u16>, rest: &[u8]) -> Vec<u8> {
        let mut sa = family.map_or(Vec::new(), |f| f.to_le_bytes().to_vec());
        sa.extend_from_slice(rest);
        let mut e = Encoder::new();
        e.u8(1);
        e.versioned(1, 1, |e| {
            e.u32(AddrType::MSGR2.0).u32(0).u32(len).bytes(&sa);
        });
        e.as_slice().to_vec()
    }

    fn decode_new(b: &[u8]) -> Result<Option<SocketAddr>> {
        let mut d = Decoder::new(b);
        let a = EntityAddr::decode(&mut d)?;
        d.finish()?;
        Ok(a.addr)
    }

    // Ceph's entity_addr_t::decode (Linux): a sockaddr length of 0 is no address, 1 is
    // shorter than the family ("elen smaller than family len"); past the family, at
    // most the family's sockaddr (16 for inet, 28 for inet6 and for any other family,
    // the union's size: "elen exceeds sockaddr len"); shorter ones are zero-filled. An
    // inet length of 17..=28 was accepted.
    #[test]
    fn new_form_sockaddr_lengths_follow_ceph_per_family() {
        let port_ip = [0x1a, 0x85, 127, 0, 0, 1];
        let v4 = |a: &str| Ok(Some(a.parse::<SocketAddr>().unwrap()));
        assert_eq!(decode_new(&new_form(0, None, &[])), Ok(None));
        assert!(matches!(decode_new(&new_form(1, None, &[2])), Err(Error::Malformed(_))));
        let inet = Some(AF_INET);
        assert_eq!(decode_new(&new_form(2, inet, &[])), v4("0.0.0.0:0"));
        assert_eq!(decode_new(&new_form(4, inet, &port_ip[..2])), v4("0.0.0.0:6789"));
        assert_eq!(decode_new(&new_form(8, inet, &port_ip)), v4("127.0.0.1:6789"));
        // sin_zero is read and ignored.
        let mut full = port_ip.to_vec();
        full.extend_from_slice(&[9; 8]);
        assert_eq!(decode_new(&new_form(16, inet, &full)), v4("127.0.0.1:6789"));
        full.push(0);
        let too_long = decode_new(&new_form(17, inet, &full));
        assert!(
            matches!(too_long, Err(Error::TooLarge { len: 17, limit: 16, .. })),
            "{too_long:?}"
        );
        // inet6: 28 bytes, and a shorter one zero-filled.
        let inet6 = Some(AF_INET6);
        let mut six = vec![0x0c, 0xe4, 1, 0, 0, 0];
        six.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        six.extend_from_slice(&3u32.to_le_bytes());
        let want = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 3300, 1, 3));
        assert_eq!(decode_new(&new_form(28, inet6, &six)), Ok(Some(want)));
        let short = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 3300, 0, 0));
        assert_eq!(decode_new(&new_form(4, inet6, &six[..2])), Ok(Some(short)));
        six.push(0);
        assert!(matches!(
            decode_new(&new_form(29, inet6, &six)),
            Err(Error::TooLarge { len: 29, limit: 28, .. })
        ));
        // AF_UNSPEC and families Ceph does not know (AF_UNIX, 9, 0xffff): up to the
        // union's 28 bytes, no address (Ceph: a blank IP, port 0).
        for family in [0, 1, 9, 0xffff] {
            for len in [2, 16, 17, 28] {
                let rest = vec![7; len - 2];
                let got = decode_new(&new_form(len as u32, Some(family), &rest));
                assert_eq!(got, Ok(None), "family {family}, length {len}");
            }
            let rest = [7; 27];
            let got = decode_new(&new_form(29, Some(family), &rest));
            assert!(matches!(got, Err(Error::TooLarge { limit: 28, .. })), "family {family}");
        }
        // A length past the bytes there are is truncated input, not a panic.
        assert!(decode_new(&new_form(16, inet, &port_ip)).is_err());
    }

    // Ceph's legacy decoder takes any family: set_sockaddr copies inet and inet6 and
    // leaves the zeroed address for any other (it was refused). Ceph then types it
    // TYPE_NONE; ours stays LEGACY with no address (decode_legacy_from says why).
    #[test]
    fn legacy_form_takes_any_family_as_ceph_does() {
        for family in [1u16, 9, 0xffff] {
            let mut b = mon().encode_legacy();
            b[8..10].copy_from_slice(&family.to_be_bytes());
            let got = EntityAddr::decode_legacy(&b).unwrap();
            assert_eq!(got, EntityAddr { ty: AddrType::LEGACY, nonce: 0, addr: None });
            let mut d = Decoder::new(&b);
            assert_eq!(EntityAddr::decode(&mut d).unwrap(), got);
        }
    }

    #[test]
    fn hostile_new_form_is_rejected() {
        // sockaddr_len 200 > 28.
        let b = [1, 1, 1, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0];
        assert!(matches!(EntityAddr::decode(&mut Decoder::new(&b)), Err(Error::TooLarge { .. })));
        assert!(EntityAddrVec::decode(&mut Decoder::new(&[3])).is_err());
        assert!(EntityAddrVec::decode(&mut Decoder::new(&[2, 0xff, 0xff, 0xff, 0xff])).is_err());
    }
}
