//! cephx against a real Ceph 16.2.15 OSD at the wire level (issue 14, must-show 6;
//! cephx.md 7, 8, 14.6): a client of ours presents the authorizer built from the osd
//! ticket the real monitor issued, answers the OSD's CHALLENGE_AUTHORIZER, checks its
//! reply, and exchanges signed messages with it — `MCommand {"prefix": "version"}` (what
//! `ceph tell osd.0 version` sends) answered by a signed `MCommandReply`.
//!
//! As `interop_cephx_wire` does against a monitor, these tests drive the v1 socket by
//! hand with `protocol`'s pure codecs (banner, connect, CHALLENGE_AUTHORIZER, SEQ,
//! KEEPALIVE2, messages) and `protocol::auth::cephx` ([`Authorizer`], [`MessageSigner`]),
//! byte by byte; `interop_osd_messenger` does the same through the messenger's cephx
//! provider.
//!
//! Each test starts its own cluster ([`CephOsd`]: a cephx monitor and one memstore OSD,
//! ~1 s idle) and is skipped with a printed reason when Ceph is not installed (a failure in
//! CI).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::MessengerConfig;
use protocol::auth::cephx::ticket::{AuthCapsInfo, ServiceTicketInfo};
use protocol::auth::cephx::{
    AuthTicket, Authorizer, CephxClient, ClientConfig, MessageSigner, SignatureScheme,
};
use protocol::auth::{parse_entity_name, AuthError, CryptoKey, KeyRing};
use protocol::encoding::UTime;
use protocol::message::{DecodeLimits, DecodeOptions, EncodeOptions, MessageDecoder, Progress};
use protocol::messages::{MCommand, MCommandReply, TypedMessage};
use protocol::types::{EntityName, EntityType, Features, AUTH_CEPHX, AUTH_NONE};
use protocol::wire::{
    decode_keepalive_stamp, keepalive2_frame, ConnectReply, FooterFlags, FooterFormat, MsgHeader,
    Tag,
};
use protocol::Message;
use tests::ceph::CephOsd;
use tests::cephx::assert_version_json;
use tests::hostile::{fresh_banner_socket, objecter_connect};
use tests::loopback::init_logging;
use tests::mon::MonClient;

/// How long any single read may take before the test fails instead of hanging (the
/// OSD answers in milliseconds; generous for a loaded machine).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// What `ceph tell osd.N version` sends (cephx.md 14.5).
const VERSION: &str = r#"{"prefix": "version"}"#;
/// Largest segment we accept from the OSD (its version reply is 85 bytes of JSON).
const MAX_SEGMENT: u32 = 1 << 20;

/// client.admin authenticated with the cluster's monitor (over our messenger), holding
/// the osd service ticket the monitor issued.
struct Admin {
    auth: CephxClient,
    fsid: [u8; 16],
}

/// Starts `test`'s cluster and authenticates client.admin; `None` when skipped.
fn cluster(test: &str) -> Option<(CephOsd, Admin)> {
    init_logging();
    let osd = CephOsd::start(test).expect("start ceph-mon and ceph-osd")?;
    let admin = Admin::authenticate(&osd);
    Some((osd, admin))
}

impl Admin {
    fn authenticate(osd: &CephOsd) -> Admin {
        let ring = KeyRing::load(osd.mon().keyring()).expect("keyring");
        let name = parse_entity_name("client.admin").expect("name");
        let key = ring.key(&name).expect("client.admin key").clone();
        let mut auth = CephxClient::new(ClientConfig::new(name, key), Box::new(rand::rngs::OsRng));
        let client = MonClient::new(osd.mon().addr(), MessengerConfig::default()).expect("msgr");
        client.authenticate_cephx(&mut auth).expect("client.admin authenticates");
        client.messenger().shutdown();
        let ticket = auth.service_ticket(EntityType::OSD, Instant::now()).expect("osd ticket");
        assert_eq!(ticket.validity, Duration::from_secs(3600));
        Admin { auth, fsid: osd.mon().fsid_bytes() }
    }

    /// A fresh authorizer from the monitor-issued osd ticket.
    fn authorizer(&mut self) -> Authorizer {
        self.auth.authorizer(EntityType::OSD, Instant::now()).expect("authorizer")
    }

    /// Our messages' source: `client.<global id>`.
    fn src(&self) -> EntityName {
        EntityName::new(EntityType::CLIENT, self.auth.global_id() as i64)
    }

    /// `MCommand {"prefix": "version"}` as message tid `tid`.
    fn version_command(&self, tid: u64, features: Features) -> Message {
        let cmd = MCommand { fsid: self.fsid, cmd: vec![VERSION.to_owned()], data: Bytes::new() };
        let mut msg = cmd.to_message(features);
        msg.set_tid(tid);
        msg
    }
}

/// How a message we send is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signing {
    /// With the session key; footer flags `SIGNED`.
    Signed,
    /// Not at all: signature 0, no `SIGNED` flag (a peer that does not sign).
    Unsigned,
    /// A valid signature with one bit flipped.
    Corrupted,
    /// The valid signature, but no `SIGNED` flag.
    SignedWithoutFlag,
}

/// What came next on a session.
#[derive(Debug)]
enum Next {
    /// A complete message whose crcs checked, with its header.
    Message(MsgHeader, Box<Message>),
    /// A KEEPALIVE2_ACK and its stamp.
    KeepaliveAck(UTime),
    /// The OSD closed the connection (EOF, reset or `CLOSE`).
    Closed,
}

/// A v1 connection to the OSD, driven by hand.
struct Session {
    stream: TcpStream,
    /// Negotiated: ours ∩ the OSD's.
    features: Features,
    signer: MessageSigner,
    out_seq: u64,
    decoder: MessageDecoder,
}

/// Dials `addr` and exchanges banners and addresses (as a fresh client: any nonce).
/// The first connect with `authorizer`: the reply the OSD gives an authorizer it will
/// not accept (no challenge round).
fn refused(osd: &CephOsd, auth_protocol: u32, authorizer: &[u8]) -> (ConnectReply, Vec<u8>) {
    let mut stream = fresh_banner_socket(osd.v1_addr());
    objecter_connect(&mut stream, Features::PACIFIC_ADVERTISED, auth_protocol, authorizer)
}

impl Session {
    /// The whole cephx handshake (cephx.md 14.6 step 3): connect with the authorizer →
    /// CHALLENGE_AUTHORIZER (32 bytes of ciphertext) → the same connect with the answer
    /// → SEQ (or READY) with the 36-byte reply, whose nonce + 1 we check; then the
    /// in_seq exchange.
    fn open(osd: &CephOsd, mut authorizer: Authorizer) -> Session {
        let ours = Features::PACIFIC_ADVERTISED;
        let mut stream = fresh_banner_socket(osd.v1_addr());
        let (reply, challenge) =
            objecter_connect(&mut stream, ours, AUTH_CEPHX, authorizer.bytes());
        assert_eq!(reply.tag, Tag::CHALLENGE_AUTHORIZER, "{reply:?}");
        assert_eq!(challenge.len(), 32, "raw ciphertext, no length prefix");
        let answer = authorizer.handle_challenge(&challenge).expect("challenge opens");
        let (reply, auth_reply) = objecter_connect(&mut stream, ours, AUTH_CEPHX, &answer);
        assert!(matches!(reply.tag, Tag::SEQ | Tag::READY), "{reply:?}");
        assert!(reply.is_lossy(), "the OSD keeps our lossy policy: {reply:?}");
        assert_eq!(auth_reply.len(), 36);
        assert_eq!(authorizer.verify_reply(&auth_reply), Ok(None), "nonce + 1, no secret over v1");
        if reply.tag == Tag::SEQ {
            let mut their_in_seq = [0u8; 8];
            stream.read_exact(&mut their_in_seq).expect("in_seq");
            assert_eq!(u64::from_le_bytes(their_in_seq), 0, "nothing of ours was received");
            stream.write_all(&0u64.to_le_bytes()).expect("our in_seq");
        }
        let features = Features(reply.features.0 & ours.0);
        assert!(features.contains(Features::CEPHX_V2), "{features:?}");
        let signer = MessageSigner::for_session(authorizer.session_key().clone(), features, true)
            .expect("MSG_AUTH negotiated");
        assert_eq!(signer.scheme(), SignatureScheme::CephxV2);
        let limits = DecodeLimits { max_front: MAX_SEGMENT, max_middle: 0, max_data: MAX_SEGMENT };
        let crc =
            EncodeOptions { footer: FooterFormat::for_features(features), ..Default::default() };
        let decoder = MessageDecoder::new(DecodeOptions { limits, crc });
        Session { stream, features, signer, out_seq: 0, decoder }
    }

    /// Sends `msg` as our next message from `src`, signed as `signing` says.
    fn send(&mut self, msg: &Message, src: EntityName, signing: Signing) {
        self.out_seq += 1;
        let (header, mut footer) = msg.encode_header(self.out_seq, src, true, true);
        match signing {
            Signing::Signed => self.signer.sign(&header, &mut footer),
            Signing::Unsigned => {}
            Signing::Corrupted => {
                self.signer.sign(&header, &mut footer);
                footer.sig ^= 1;
            }
            Signing::SignedWithoutFlag => {
                self.signer.sign(&header, &mut footer);
                footer.flags = FooterFlags::COMPLETE;
            }
        }
        let mut out = vec![Tag::MSG.0];
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(msg.front());
        out.extend_from_slice(msg.middle());
        out.extend_from_slice(msg.data());
        footer.encode(FooterFormat::for_features(self.features), &mut out);
        self.stream.write_all(&out).expect("send message");
    }

    fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        match self.stream.read_exact(&mut buf) {
            Ok(()) => Some(buf),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the OSD neither answered nor closed within {READ_TIMEOUT:?}")
            }
            Err(_) => None,
        }
    }

    /// The next message or keepalive ack (acks skipped), or `Closed`.
    fn next(&mut self) -> Next {
        loop {
            let Some(tag) = self.read_exact(1) else { return Next::Closed };
            match Tag(tag[0]) {
                Tag::ACK => {
                    if self.read_exact(8).is_none() {
                        return Next::Closed;
                    }
                }
                Tag::KEEPALIVE2_ACK => {
                    let Some(raw) = self.read_exact(8) else { return Next::Closed };
                    let (stamp, _) = decode_keepalive_stamp(&raw).expect("stamp");
                    return Next::KeepaliveAck(stamp);
                }
                Tag::MSG => return self.read_message(),
                Tag::CLOSE => return Next::Closed,
                other => panic!("unexpected tag {other:?}"),
            }
        }
    }

    /// The message after a `Tag::MSG`: the decoder checks the lengths against our
    /// limits and the header, front and data crcs.
    fn read_message(&mut self) -> Next {
        let Some(raw) = self.read_exact(MsgHeader::LEN) else { return Next::Closed };
        let mut input = Bytes::from(raw);
        let header = match self.decoder.feed(&mut input).expect("header") {
            Progress::HeaderReady(h) => h,
            other => panic!("expected a header: {other:?}"),
        };
        self.decoder.proceed().expect("proceed");
        let rest =
            header.payload_len() as usize + FooterFormat::for_features(self.features).encoded_len();
        let Some(raw) = self.read_exact(rest) else { return Next::Closed };
        let mut input = Bytes::from(raw);
        match self.decoder.feed(&mut input).expect("message decodes, crcs check") {
            Progress::Message(msg) => Next::Message(header, Box::new(msg)),
            other => panic!("expected the whole message: {other:?}"),
        }
    }

    /// The next message (`None` once the OSD closed the connection).
    fn next_message(&mut self) -> Option<(MsgHeader, Message)> {
        match self.next() {
            Next::Message(header, msg) => Some((header, *msg)),
            Next::Closed => None,
            other => panic!("expected a message: {other:?}"),
        }
    }

    /// Sends `VERSION` as tid `tid`, signed, and returns the OSD's reply after checking
    /// that it is a correctly signed `MCommandReply` to that tid.
    fn version(&mut self, admin: &Admin, tid: u64) -> MCommandReply {
        let msg = admin.version_command(tid, self.features);
        self.send(&msg, admin.src(), Signing::Signed);
        let (header, reply) = self.next_message().expect("the OSD answers a signed MCommand");
        assert_eq!(header.msg_type, MCommandReply::TYPE.0);
        assert_eq!(header.tid, tid);
        assert_eq!(header.src.ty, EntityType::OSD);
        let footer = *reply.footer();
        assert!(footer.flags.contains(FooterFlags::SIGNED), "{footer:?}");
        self.signer.check(&header, &footer).expect("the OSD's signature is ours too");
        // The check is not vacuous: the same reply with its data altered would not pass.
        let mut tampered = footer;
        tampered.data_crc ^= 1;
        let r = self.signer.check(&header, &tampered);
        assert!(matches!(r, Err(AuthError::BadSignature { .. })), "{r:?}");
        MCommandReply::from_message(&reply).expect("MCommandReply decodes")
    }
}

fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The OSD verifies our authorizer (built from the ticket the real monitor sealed with
/// its rotating osd secret), challenges it, and proves itself in its reply; KEEPALIVE2
/// is answered with our stamp; our signed `MCommand {"prefix": "version"}` is answered
/// by an `MCommandReply` the OSD signed with the ticket's session key, carrying the
/// version JSON — twice on one connection.
#[test]
fn osd_accepts_our_cephx_authorizer_and_answers_signed_commands() {
    let Some((osd, mut admin)) = cluster("osd_accepts_our_cephx_authorizer") else {
        return;
    };
    let ticket_key = admin
        .auth
        .service_ticket(EntityType::OSD, Instant::now())
        .expect("osd ticket")
        .session_key
        .clone();
    let authorizer = admin.authorizer();
    assert_eq!(authorizer.session_key(), &ticket_key, "signing uses the ticket's session key");
    let mut session = Session::open(&osd, authorizer);

    let stamp = UTime::new(1_700_000_000, 123_456_789);
    session.stream.write_all(&keepalive2_frame(Tag::KEEPALIVE2, stamp)).expect("keepalive2");
    match session.next() {
        Next::KeepaliveAck(echoed) => assert_eq!(echoed, stamp),
        other => panic!("expected KEEPALIVE2_ACK: {other:?}"),
    }

    for tid in 1..=2 {
        let reply = session.version(&admin, tid);
        assert_version_json(&reply);
    }
    assert!(osd.is_running());
}

/// Authorizers the OSD cannot verify are refused at the handshake with BADAUTHORIZER and
/// no reply bytes (cephx.md 14.6, `--negative`): part B sealed with a wrong key, a
/// ticket sealed with a service secret the OSD does not hold, another global id than
/// the ticket's, and no authorizer at all. A good one still opens a session after them.
#[test]
fn osd_refuses_authorizers_it_cannot_verify() {
    let Some((osd, mut admin)) = cluster("osd_refuses_bad_authorizers") else {
        return;
    };
    let ticket =
        admin.auth.service_ticket(EntityType::OSD, Instant::now()).expect("osd ticket").clone();
    let gid = admin.auth.global_id();
    let mut rng = rand::rngs::OsRng;
    let wrong_key =
        CryptoKey::generate(UTime::new(u32::try_from(wall_secs()).unwrap_or(0), 0), &mut rng);

    let mut wrong_session_key = ticket.clone();
    wrong_session_key.session_key = wrong_key.clone();
    // What an attacker without the OSD's rotating secret would make: a well-formed
    // ticket granting `allow *`, under the real secret id, sealed with another key.
    let now = UTime::new(u32::try_from(wall_secs()).unwrap_or(u32::MAX), 0);
    let forged = ServiceTicketInfo {
        ticket: AuthTicket {
            name: parse_entity_name("client.admin").expect("name"),
            global_id: gid,
            created: now,
            expires: UTime::new(now.sec.saturating_add(3600), 0),
            caps: AuthCapsInfo::from_cap_string("allow *"),
            flags: 0,
        },
        session_key: ticket.session_key.clone(),
    };
    let mut forged_ticket = ticket.clone();
    forged_ticket.blob = forged.seal(ticket.blob.secret_id, &wrong_key);
    let cases = [
        ("part B sealed with a wrong key", Authorizer::new(gid, &wrong_session_key, &mut rng)),
        ("ticket the OSD cannot open", Authorizer::new(gid, &forged_ticket, &mut rng)),
        ("another global id than the ticket's", Authorizer::new(gid + 1, &ticket, &mut rng)),
    ];
    for (case, authorizer) in cases {
        let (reply, auth_reply) = refused(&osd, AUTH_CEPHX, authorizer.bytes());
        assert_eq!(reply.tag, Tag::BADAUTHORIZER, "{case}: {reply:?}");
        assert!(auth_reply.is_empty(), "{case}");
    }
    let (reply, auth_reply) = refused(&osd, AUTH_NONE, &[]);
    assert_eq!(reply.tag, Tag::BADAUTHORIZER, "no authorizer: {reply:?}");
    assert!(auth_reply.is_empty());

    let mut session = Session::open(&osd, admin.authorizer());
    assert_version_json(&session.version(&admin, 1));
}

/// On an authenticated session the OSD checks every message's signature (Ceph's
/// `cephx_require_signatures` for its service): an unsigned `MCommand` and one with a
/// corrupted signature are dropped and the connection closed, unanswered; a correctly
/// signed one is answered even without the `SIGNED` footer flag (only the value is
/// checked, cephx.md 14.6). Each case on a fresh session.
#[test]
fn osd_closes_a_session_whose_message_is_unsigned_or_wrongly_signed() {
    let Some((osd, mut admin)) = cluster("osd_checks_signatures") else {
        return;
    };
    for signing in [Signing::Unsigned, Signing::Corrupted] {
        let mut session = Session::open(&osd, admin.authorizer());
        let msg = admin.version_command(1, session.features);
        session.send(&msg, admin.src(), signing);
        if let Some((header, _)) = session.next_message() {
            panic!("{signing:?}: the OSD answered (type {}) instead of closing", header.msg_type);
        }
    }
    let mut session = Session::open(&osd, admin.authorizer());
    let msg = admin.version_command(1, session.features);
    session.send(&msg, admin.src(), Signing::SignedWithoutFlag);
    let (header, reply) = session.next_message().expect("answered");
    assert_eq!(header.msg_type, MCommandReply::TYPE.0);
    session.signer.check(&header, reply.footer()).expect("signed reply");
    assert_version_json(&MCommandReply::from_message(&reply).expect("decodes"));
    assert!(osd.is_running(), "bad messages fault the session, not the OSD");
}
