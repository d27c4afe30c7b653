//! Tickets (cephx.md 3.2, 3.4, 3.5): the opaque blob a client presents, what only the
//! service can open, and the ticket reply that carries them.

use std::time::Duration;

use crate::auth::crypto::CryptoKey;
use crate::auth::error::AuthError;
use crate::auth::provider::AuthPeer;
use crate::encoding::{Decoder, Encoder, UTime};
use crate::types::{AuthEntityName, EntityType};

/// The `secret_id` of a blob sealed with the service's own long-term key instead of a
/// rotating secret (monitors between themselves).
pub const SECRET_ID_OWN_KEY: u64 = u64::MAX;
/// `CEPH_AUTH_UID_DEFAULT`, the old auid field every Pacific ticket carries.
const AUTH_UID_DEFAULT: u64 = u64::MAX;
/// Most tickets one reply may carry: one per service type, with room to spare. A
/// count above it is refused before anything is decoded.
pub const MAX_TICKETS_PER_REPLY: usize = 16;
/// Longest validity (`expires - created`) a ticket may claim: Ceph's ttls are 1 h
/// (service tickets) and 72 h (auth tickets) by default, and a key server here issues
/// none longer. Tickets are sealed without a MAC: this bound is part of what refuses a
/// block its holder garbled (see [`AuthTicket::decode`]).
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far in the future of the verifier's clock a ticket may have been created
/// (clock skew between monitor and daemon).
pub const MAX_TICKET_CREATED_AHEAD: Duration = Duration::from_secs(24 * 3600);
/// Smallest encoding of one ticket reply entry (service id, version, empty sealed
/// ticket, `ticket_enc`, empty blob).
const MIN_TICKET_ENTRY: usize = 4 + 1 + 4 + 1 + 4;

/// `CephXTicketBlob`: `u8 1`, `le64 secret_id`, `blob`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketBlob {
    /// The rotating secret that sealed `blob` ([`SECRET_ID_OWN_KEY`]: the service's key).
    pub secret_id: u64,
    /// The sealed [`ServiceTicketInfo`]; opaque to a client. Empty = no ticket.
    pub blob: Vec<u8>,
}

impl TicketBlob {
    /// Whether this is the empty ticket ("no old ticket").
    pub fn is_empty(&self) -> bool {
        self.blob.is_empty()
    }

    /// Appends the encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(1).u64(self.secret_id).blob(&self.blob);
    }

    /// Reads it.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let _v = d.u8()?;
        let secret_id = d.u64()?;
        let blob = d.blob()?.to_vec();
        Ok(TicketBlob { secret_id, blob })
    }
}

/// A `utime_t` used as a duration (ticket validity).
pub fn utime_to_duration(t: UTime) -> Duration {
    Duration::new(u64::from(t.sec), t.nsec.min(999_999_999))
}

/// A duration as a `utime_t` (seconds saturate at `u32::MAX`).
pub fn duration_to_utime(d: Duration) -> UTime {
    UTime::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX), d.subsec_nanos())
}

/// `utime_t` plus a duration, saturating.
pub fn utime_add(t: UTime, d: Duration) -> UTime {
    let nanos = u64::from(t.nsec) + u64::from(d.subsec_nanos());
    let secs = u64::from(t.sec).saturating_add(d.as_secs()).saturating_add(nanos / 1_000_000_000);
    UTime::new(u32::try_from(secs).unwrap_or(u32::MAX), (nanos % 1_000_000_000) as u32)
}

/// `AuthCapsInfo`: `u8 1`, `u8 allow_all`, `blob caps`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthCapsInfo {
    /// Everything allowed.
    pub allow_all: bool,
    /// The entity's caps for the service: an encoded `string` (`07 00 00 00 allow *`),
    /// or empty (mon tickets).
    pub caps: Vec<u8>,
}

impl AuthCapsInfo {
    /// Everything allowed, no cap string (what auth none grants).
    pub fn allow_all() -> Self {
        AuthCapsInfo { allow_all: true, caps: Vec::new() }
    }

    /// Caps holding `cap` as an encoded string (what a service ticket carries).
    pub fn from_cap_string(cap: &str) -> Self {
        let mut e = Encoder::new();
        e.string(cap);
        AuthCapsInfo { allow_all: false, caps: e.into_vec() }
    }

    /// The cap string, when the blob holds one.
    pub fn cap_string(&self) -> Option<String> {
        Decoder::new(&self.caps).string().ok()
    }

    fn encode(&self, e: &mut Encoder) {
        e.u8(1).bool(self.allow_all).blob(&self.caps);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let _v = d.u8()?;
        Ok(AuthCapsInfo { allow_all: d.bool()?, caps: d.blob()?.to_vec() })
    }
}

/// `AuthTicket`: who the holder is, until when, with which caps (cephx.md 3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthTicket {
    /// The holder (`client.admin`).
    pub name: AuthEntityName,
    /// The holder's global id.
    pub global_id: u64,
    /// Issued at (monitor clock).
    pub created: UTime,
    /// Valid until (monitor clock): `created` + ttl.
    pub expires: UTime,
    /// Caps for the service the ticket is for.
    pub caps: AuthCapsInfo,
    /// Flags (0).
    pub flags: u32,
}

impl AuthTicket {
    /// Who holds the ticket, as a connection's authenticated peer.
    pub fn peer(&self) -> AuthPeer {
        AuthPeer { name: self.name.clone(), global_id: self.global_id, caps: self.caps.clone() }
    }

    /// The version we write.
    const STRUCT_V: u8 = 2;

    /// Appends the encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(Self::STRUCT_V);
        self.name.encode(e);
        e.u64(self.global_id).u64(AUTH_UID_DEFAULT).utime(self.created).utime(self.expires);
        self.caps.encode(e);
        e.u32(self.flags);
    }

    /// Reads it (version 1 has no auid field).
    ///
    /// A ticket is sealed with AES-CBC and no MAC (Ceph's design), so its holder can
    /// flip chosen bits of one plaintext block (allow_all, the expiry) by garbling the
    /// block before. What a key server always writes is checked so that garbled blocks
    /// are refused: the old auid (`CEPH_AUTH_UID_DEFAULT`), and a `created` no later
    /// than `expires`, both with valid nanoseconds, at most [`MAX_TICKET_LIFETIME`]
    /// apart (the verifier also refuses a `created` far ahead of its clock): a block
    /// holding nothing but `created` and `expires` is garbled by a holder whose name
    /// puts it there, and random bytes passed the other checks once in 60.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let v = d.u8()?;
        let name = AuthEntityName::decode(d)?;
        let global_id = d.u64()?;
        if v >= 2 && d.u64()? != AUTH_UID_DEFAULT {
            return Err(AuthError::Malformed("ticket with an old auid no key server writes"));
        }
        let created = d.utime()?;
        let expires = d.utime()?;
        let valid = |t: UTime| t.nsec < 1_000_000_000;
        let too_long =
            || u64::from(expires.sec) - u64::from(created.sec) > MAX_TICKET_LIFETIME.as_secs();
        if !valid(created) || !valid(expires) || created > expires || too_long() {
            return Err(AuthError::Malformed("ticket whose validity no key server writes"));
        }
        let caps = AuthCapsInfo::decode(d)?;
        let flags = d.u32()?;
        Ok(AuthTicket { name, global_id, created, expires, caps, flags })
    }
}

/// `CephXServiceTicketInfo`: what the ticket blob seals (only the service can open it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTicketInfo {
    /// Who holds it.
    pub ticket: AuthTicket,
    /// The session key shared by holder and service.
    pub session_key: CryptoKey,
}

impl ServiceTicketInfo {
    /// Seals this info with a service secret (`encode_encrypt_enc_bl`) into a blob.
    pub fn seal(&self, secret_id: u64, service_secret: &CryptoKey) -> TicketBlob {
        let blob = service_secret.seal(|e| {
            e.u8(1);
            self.ticket.encode(e);
            self.session_key.encode(e);
        });
        TicketBlob { secret_id, blob }
    }

    /// Opens a ticket blob with the service secret that sealed it.
    pub fn open(blob: &TicketBlob, service_secret: &CryptoKey) -> Result<Self, AuthError> {
        let plain = service_secret.open(&blob.blob)?;
        let mut d = Decoder::new(&plain);
        let _v = d.u8()?;
        let ticket = AuthTicket::decode(&mut d)?;
        let session_key = CryptoKey::decode(&mut d)?;
        Ok(ServiceTicketInfo { ticket, session_key })
    }
}

/// A ticket as its holder sees it: the decrypted `CephXServiceTicket` ("msg_a") and
/// the opaque blob to present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedTicket {
    /// The service this ticket is for.
    pub service: EntityType,
    /// The session key shared with that service.
    pub session_key: CryptoKey,
    /// How long it is valid from when it was received.
    pub validity: Duration,
    /// What to present to the service.
    pub blob: TicketBlob,
}

/// A ticket a key server is about to send (one entry of a ticket reply).
#[derive(Clone, Debug)]
pub struct IssuedTicket {
    /// The service it is for.
    pub service: EntityType,
    /// The session key (also sealed inside `blob`).
    pub session_key: CryptoKey,
    /// Its validity.
    pub validity: Duration,
    /// The sealed [`ServiceTicketInfo`].
    pub blob: TicketBlob,
    /// Encrypt the blob with this key (`ticket_enc = 1`: the previous session key on a
    /// renewal or reclaim), or send it in clear.
    pub encrypt_blob_with: Option<CryptoKey>,
}

/// `cephx_build_service_ticket_reply`: appends a ticket reply whose msg_a parts are
/// sealed with `principal_secret`.
pub fn encode_ticket_reply(
    e: &mut Encoder,
    principal_secret: &CryptoKey,
    tickets: &[IssuedTicket],
) {
    e.u8(1).u32(u32::try_from(tickets.len()).unwrap_or(u32::MAX));
    for t in tickets {
        e.u32(u32::from(t.service.0)).u8(1);
        principal_secret.seal_blob(e, |e| {
            e.u8(1);
            t.session_key.encode(e);
            e.utime(duration_to_utime(t.validity));
        });
        let mut blob = Encoder::new();
        t.blob.encode(&mut blob);
        match &t.encrypt_blob_with {
            None => {
                e.u8(0).blob(blob.as_slice());
            }
            Some(old) => {
                e.u8(1);
                old.seal_blob(e, |e| {
                    e.blob(blob.as_slice());
                });
            }
        }
    }
}

/// Decodes a ticket reply (cephx.md 3.5). msg_a parts open with `principal_secret`;
/// a blob sent with `ticket_enc = 1` opens with `previous_key(service)`, the session key
/// we held for that service before this reply (read before it is replaced).
pub fn decode_ticket_reply(
    d: &mut Decoder<'_>,
    principal_secret: &CryptoKey,
    previous_key: impl Fn(EntityType) -> Option<CryptoKey>,
) -> Result<Vec<ReceivedTicket>, AuthError> {
    let _v = d.u8()?;
    let n = d.count(MIN_TICKET_ENTRY)?;
    if n > MAX_TICKETS_PER_REPLY {
        return Err(AuthError::Malformed("too many tickets in one reply"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let service = EntityType::from_u32(d.u32()?)
            .ok_or(AuthError::Malformed("ticket for an unknown service id"))?;
        let _service_ticket_v = d.u8()?;
        let plain = principal_secret.open_blob(d)?;
        let mut p = Decoder::new(&plain);
        let _v = p.u8()?;
        let session_key = CryptoKey::decode(&mut p)?;
        let validity = utime_to_duration(p.utime()?);
        let ticket_enc = d.bool()?;
        let blob = if ticket_enc {
            let old = previous_key(service).ok_or(AuthError::UnexpectedReply(
                "encrypted ticket but no previous session key",
            ))?;
            let inner = old.open_blob(d)?;
            let mut i = Decoder::new(&inner);
            let bytes = i.blob()?;
            TicketBlob::decode(&mut Decoder::new(bytes))?
        } else {
            let bytes = d.blob()?;
            TicketBlob::decode(&mut Decoder::new(bytes))?
        };
        out.push(ReceivedTicket { service, session_key, validity, blob });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::cephx::request::ResponseHeader;
    use crate::auth::cephx::testing::{hex, LIVE_RESULT_BL};

    #[test]
    fn live_ticket_reply_of_cephx_md_10_decodes() {
        let client = CryptoKey::from_base64("AQCF8QxrWLGNNRAAAkt5SuYycYocSr6XQk9dLg==").unwrap();
        let bl = hex(LIVE_RESULT_BL);
        assert_eq!(bl.len(), 740);
        let mut d = Decoder::new(&bl);
        let h = ResponseHeader::decode(&mut d).unwrap();
        assert_eq!((h.request_type.0, h.status), (0x0100, 0));
        let auth = decode_ticket_reply(&mut d, &client, |_| None).unwrap();
        assert_eq!(auth.len(), 1);
        let auth = &auth[0];
        assert_eq!(auth.service, EntityType::AUTH);
        assert_eq!(auth.session_key.secret().to_vec(), hex("5aa8af3bb248f27244e9c014edc60a21"));
        assert_eq!(auth.validity, Duration::from_secs(259_200));
        assert_eq!((auth.blob.secret_id, auth.blob.blob.len()), (2, 96));
        assert!(d.blob().unwrap().is_empty(), "connection secret is empty over v1");
        let extra = d.blob().unwrap();
        assert_eq!(extra.len(), 550);
        let tickets =
            decode_ticket_reply(&mut Decoder::new(extra), &auth.session_key, |_| None).unwrap();
        let got: Vec<_> = tickets
            .iter()
            .map(|t| {
                (
                    t.service,
                    t.session_key.secret().to_vec(),
                    t.validity.as_secs(),
                    t.blob.blob.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (EntityType::MON, hex("2c6e0dc0d899bd1a678573dea3ade1a2"), 3600, 96),
                (EntityType::OSD, hex("9a9391204a77f963fa6c44f6e08f6e88"), 3600, 112),
                (EntityType::MGR, hex("496ea46ea07f000a9cd8453db05555d7"), 3600, 112),
            ]
        );
        assert!(d.is_empty());
        // The wrong key is detected by the envelope's magic.
        let wrong = CryptoKey::new(UTime::default(), [9; 16]);
        let mut d = Decoder::new(&bl[6..]);
        assert_eq!(decode_ticket_reply(&mut d, &wrong, |_| None), Err(AuthError::BadMagic));
    }

    #[test]
    fn issued_tickets_round_trip_clear_and_encrypted() {
        let principal = CryptoKey::new(UTime::new(1, 0), [1; 16]);
        let old = CryptoKey::new(UTime::new(2, 0), [2; 16]);
        let service_secret = CryptoKey::new(UTime::new(3, 0), [3; 16]);
        let session = CryptoKey::new(UTime::new(4, 0), [4; 16]);
        let info = ServiceTicketInfo {
            ticket: AuthTicket {
                name: AuthEntityName::new(EntityType::CLIENT, "admin"),
                global_id: 4242,
                created: UTime::new(100, 0),
                expires: UTime::new(3700, 0),
                caps: AuthCapsInfo::from_cap_string("allow *"),
                flags: 0,
            },
            session_key: session.clone(),
        };
        let blob = info.seal(2, &service_secret);
        let issued = [
            IssuedTicket {
                service: EntityType::OSD,
                session_key: session.clone(),
                validity: Duration::from_secs(3600),
                blob: blob.clone(),
                encrypt_blob_with: None,
            },
            IssuedTicket {
                service: EntityType::AUTH,
                session_key: session.clone(),
                validity: Duration::from_secs(60),
                blob: blob.clone(),
                encrypt_blob_with: Some(old.clone()),
            },
        ];
        let mut e = Encoder::new();
        encode_ticket_reply(&mut e, &principal, &issued);
        let mut d = Decoder::new(e.as_slice());
        let got = decode_ticket_reply(&mut d, &principal, |s| {
            (s == EntityType::AUTH).then(|| old.clone())
        })
        .unwrap();
        assert!(d.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].blob, blob);
        assert_eq!(got[1].blob, blob);
        assert_eq!(got[1].validity, Duration::from_secs(60));
        let opened = ServiceTicketInfo::open(&got[0].blob, &service_secret).unwrap();
        assert_eq!(opened, info);
        assert_eq!(opened.ticket.caps.cap_string().as_deref(), Some("allow *"));
        // Without the previous key the encrypted blob is refused, not guessed.
        let mut d = Decoder::new(e.as_slice());
        assert!(matches!(
            decode_ticket_reply(&mut d, &principal, |_| None),
            Err(AuthError::UnexpectedReply(_))
        ));
    }

    #[test]
    fn hostile_ticket_counts_fail_before_allocating() {
        let principal = CryptoKey::new(UTime::new(1, 0), [1; 16]);
        let mut d = Decoder::new(&[1, 0xff, 0xff, 0xff, 0x0f, 0]);
        assert!(decode_ticket_reply(&mut d, &principal, |_| None).is_err());
    }

    #[test]
    fn utime_arithmetic_saturates() {
        assert_eq!(
            utime_add(UTime::new(1, 900_000_000), Duration::from_millis(200)),
            UTime::new(2, 100_000_000)
        );
        assert_eq!(utime_add(UTime::new(u32::MAX, 0), Duration::from_secs(5)).sec, u32::MAX);
        // A user's ttl as large as a `Duration` holds saturates too (it overflowed u64).
        assert_eq!(utime_add(UTime::new(1, 900_000_000), Duration::MAX).sec, u32::MAX);
        assert_eq!(duration_to_utime(Duration::from_secs(3600)), UTime::new(3600, 0));
    }
}
