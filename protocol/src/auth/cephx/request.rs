//! Request and response framing of the cephx MAuth exchange (cephx.md 3.1, 3.3, 3.6).

use std::fmt;

use crate::auth::crypto::{xor_fold_u64, CryptoKey};
use crate::auth::error::AuthError;
use crate::encoding::{Decoder, Encoder};
use crate::types::EntityType;

use super::ticket::TicketBlob;

/// `CEPHX_GET_*`: what a cephx request asks for (`CephXRequestHeader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestType(pub u16);

impl RequestType {
    /// The auth ticket (first authentication, renewal, reclaim).
    #[doc(alias = "CEPHX_GET_AUTH_SESSION_KEY")]
    pub const GET_AUTH_SESSION_KEY: RequestType = RequestType(0x0100);
    /// Service tickets, presenting the auth ticket.
    #[doc(alias = "CEPHX_GET_PRINCIPAL_SESSION_KEY")]
    pub const GET_PRINCIPAL_SESSION_KEY: RequestType = RequestType(0x0200);
    /// A daemon's rotating service secrets.
    #[doc(alias = "CEPHX_GET_ROTATING_KEY")]
    pub const GET_ROTATING_KEY: RequestType = RequestType(0x0400);

    /// Appends the `CephXRequestHeader` (`le16 request_type`).
    pub fn encode(self, e: &mut Encoder) {
        e.u16(self.0);
    }

    /// Reads a `CephXRequestHeader`.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        Ok(RequestType(d.u16()?))
    }
}

/// A set of services as entity-type bits (`other_keys`, `keys`, `want_keys`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceMask(pub u32);

impl ServiceMask {
    /// No service.
    pub const NONE: ServiceMask = ServiceMask(0);
    /// The tickets the `ceph` CLI and librados want: mon, osd, mgr (`0x15`; a cephfs
    /// client adds mds).
    pub const CLIENT_SERVICES: ServiceMask = ServiceMask(0x01 | 0x04 | 0x10);
    /// The monitor's authentication service (the auth ticket).
    pub const AUTH: ServiceMask = ServiceMask(0x20);
    /// The service types, in bit order.
    const SERVICES: [EntityType; 6] = [
        EntityType::MON,
        EntityType::MDS,
        EntityType::OSD,
        EntityType::CLIENT,
        EntityType::MGR,
        EntityType::AUTH,
    ];

    /// The mask of one service.
    pub const fn of(service: EntityType) -> Self {
        ServiceMask(service.0 as u32)
    }

    /// Whether `service` is in the set.
    pub fn contains(self, service: EntityType) -> bool {
        service.0 != 0 && self.0 & u32::from(service.0) == u32::from(service.0)
    }

    /// The union.
    pub fn with(self, other: ServiceMask) -> Self {
        ServiceMask(self.0 | other.0)
    }

    /// The set without `other`.
    pub fn without(self, other: ServiceMask) -> Self {
        ServiceMask(self.0 & !other.0)
    }

    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The known services in the set.
    pub fn iter(self) -> impl Iterator<Item = EntityType> {
        Self::SERVICES.into_iter().filter(move |s| self.contains(*s))
    }
}

impl fmt::Display for ServiceMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(EntityType::name).collect();
        write!(f, "{:#x}[{}]", self.0, names.join(","))
    }
}

/// `CephXResponseHeader`: the request type echoed and a status (0 or negative errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request answered.
    pub request_type: RequestType,
    /// 0 or a negative errno.
    pub status: i32,
}

impl ResponseHeader {
    /// Appends the header.
    pub fn encode(&self, e: &mut Encoder) {
        e.u16(self.request_type.0).i32(self.status);
    }

    /// Reads the header.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        Ok(ResponseHeader { request_type: RequestType(d.u16()?), status: d.i32()? })
    }
}

/// `CephXServerChallenge`: the monitor's round-1 answer (`u8 1`, `le64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerChallenge {
    /// Random, never 0.
    pub server_challenge: u64,
}

impl ServerChallenge {
    /// Encoded form.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(1).u64(self.server_challenge);
    }

    /// Reads it; trailing bytes are ignored.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let _v = d.u8()?;
        Ok(ServerChallenge { server_challenge: d.u64()? })
    }
}

/// `CephXAuthenticate`: the GET_AUTH_SESSION_KEY request body (cephx.md 3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticate {
    /// 3 from Pacific clients ("I always send my old ticket"); 1 and 2 are older.
    pub struct_v: u8,
    /// Random per request.
    pub client_challenge: u64,
    /// [`challenge_proof`] of the server and client challenges under the client's key.
    pub key: u64,
    /// The current auth ticket when renewing or reclaiming; empty for a new client.
    pub old_ticket: TicketBlob,
    /// Service tickets wanted in the same round trip (struct_v ≥ 2).
    pub other_keys: ServiceMask,
}

impl Authenticate {
    /// The version Pacific clients send.
    pub const STRUCT_V: u8 = 3;

    /// Appends the encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(self.struct_v).u64(self.client_challenge).u64(self.key);
        self.old_ticket.encode(e);
        if self.struct_v >= 2 {
            e.u32(self.other_keys.0);
        }
    }

    /// Reads it (struct_v 1 has no `other_keys`).
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let struct_v = d.u8()?;
        let client_challenge = d.u64()?;
        let key = d.u64()?;
        let old_ticket = TicketBlob::decode(d)?;
        let other_keys = if struct_v >= 2 { ServiceMask(d.u32()?) } else { ServiceMask::NONE };
        Ok(Authenticate { struct_v, client_challenge, key, old_ticket, other_keys })
    }
}

/// The proof of knowing the secret (cephx.md 3.3): `encode_encrypt` of
/// `{server_challenge, client_challenge}` under `secret`, its le64 words (length prefix
/// included, trailing partial word skipped) XORed.
#[doc(alias = "cephx_calc_client_server_challenge")]
pub fn challenge_proof(secret: &CryptoKey, server_challenge: u64, client_challenge: u64) -> u64 {
    let mut e = Encoder::with_capacity(36);
    secret.seal_blob(&mut e, |e| {
        e.u64(server_challenge).u64(client_challenge);
    });
    xor_fold_u64(e.as_slice())
}

/// `CephXServiceTicketRequest`: `u8 1`, `le32 keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceTicketRequest {
    /// The services wanted.
    pub keys: ServiceMask,
}

impl ServiceTicketRequest {
    /// Appends the encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(1).u32(self.keys.0);
    }

    /// Reads it.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let _v = d.u8()?;
        Ok(ServiceTicketRequest { keys: ServiceMask(d.u32()?) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encoding::UTime;

    pub(crate) fn key_k() -> CryptoKey {
        let mut secret = [0u8; 16];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8;
        }
        CryptoKey::new(UTime::new(0x5f5e_1000, 0), secret)
    }

    #[test]
    fn challenge_proof_vector_of_cephx_md_11() {
        assert_eq!(
            challenge_proof(&key_k(), 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            0xda40_f592_32ab_17c2
        );
    }

    #[test]
    fn challenge_proof_of_the_live_exchange_in_cephx_md_10() {
        let k = CryptoKey::from_base64("AQCF8QxrWLGNNRAAAkt5SuYycYocSr6XQk9dLg==").unwrap();
        // The monitor logged expected_key=75faf55a9f4b408f.
        assert_eq!(
            challenge_proof(&k, 0xc475_ad8f_81d7_f3fd, 0x1596_7293_a478_e2f2),
            0x75fa_f55a_9f4b_408f
        );
    }

    #[test]
    fn authenticate_matches_round_2_of_cephx_md_4_2() {
        let a = Authenticate {
            struct_v: 3,
            client_challenge: 0x1596_7293_a478_e2f2,
            key: 0x75fa_f55a_9f4b_408f,
            old_ticket: TicketBlob::default(),
            other_keys: ServiceMask(0x35),
        };
        let mut e = Encoder::new();
        RequestType::GET_AUTH_SESSION_KEY.encode(&mut e);
        a.encode(&mut e);
        let want: [u8; 36] = [
            0x00, 0x01, 0x03, 0xf2, 0xe2, 0x78, 0xa4, 0x93, 0x72, 0x96, 0x15, 0x8f, 0x40, 0x4b,
            0x9f, 0x5a, 0xf5, 0xfa, 0x75, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x35, 0, 0, 0,
        ];
        assert_eq!(e.as_slice(), &want[..]);
        let mut d = Decoder::new(&want[2..]);
        assert_eq!(Authenticate::decode(&mut d).unwrap(), a);
        assert!(d.is_empty());
        let mask = ServiceMask(0x35);
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            [EntityType::MON, EntityType::OSD, EntityType::MGR, EntityType::AUTH]
        );
        assert_eq!(mask.to_string(), "0x35[mon,osd,mgr,auth]");
    }
}
