//! What one msgr2 TCP connection keeps beside the shared session ([`V2`], the
//! protocol's data in its [`Machine`]), and msgr2's own accessors.

use std::net::SocketAddr;

use crate::auth::ConMode;
use crate::session::{Config, Machine};
use crate::types::{EntityAddrVec, EntityName, Features};

use super::framing::{FrameDecoder, FrameEncoder, FrameLimits};

/// The log target of msgr2.
pub(crate) const LOG: &str = "msgr::v2";

/// Ceph's `msgr2_required`: every msgr2 peer must support MSG_ADDR2.
pub(crate) const MSGR2_REQUIRED: Features = Features::MSG_ADDR2;

/// msgr2.1 as a protocol of [`Machine`]: what one TCP connection of it keeps
/// beside the shared session (frame codec, mode, addresses, handshake rounds).
#[derive(Debug)]
pub struct V2 {
    /// Frames in (crc mode until AUTH_DONE negotiates secure).
    pub(crate) decoder: FrameDecoder,
    /// Frames out.
    pub(crate) encoder: FrameEncoder,
    /// The connection mode negotiated by the last AUTH_DONE (UNKNOWN before).
    pub(crate) con_mode: ConMode,
    /// The global id the acceptor's auth assigned (connect side) or accepted.
    pub(crate) global_id: u64,
    /// Our addresses as sent in idents, with the IP learned from the acceptor's HELLO
    /// when ours is blank (`ms_learn_addr_from_peer`).
    pub(crate) my_addrs: EntityAddrVec,
    /// The peer's addresses (from its ident, or the acceptor's SERVER_IDENT).
    pub(crate) peer_addrs: EntityAddrVec,
    /// Accept side: the local address of the socket (our blank-IP addresses match it).
    pub(crate) socket_local: Option<SocketAddr>,
    /// Handshake rounds on this TCP connection (auth requests and replies, refused
    /// idents, session retries and resets), bounded by `Config::max_auth_rounds`.
    pub(crate) rounds: u32,
    /// Accept side: the server cookie a lossless session opened on this connection
    /// gets (0 until the first CLIENT_IDENT). Drawn before the accept decision, as
    /// Ceph's `send_server_ident` draws it before `accept_conn` registers the
    /// connection: the messenger publishes it with the registration.
    pub(crate) offered_cookie: u64,
}

impl V2 {
    pub(crate) fn new(config: &Config) -> Self {
        V2 {
            decoder: FrameDecoder::new(frame_limits(config)),
            encoder: FrameEncoder::crc(),
            con_mode: ConMode::UNKNOWN,
            global_id: 0,
            my_addrs: config.my_addrs.clone(),
            peer_addrs: EntityAddrVec::default(),
            socket_local: None,
            rounds: 0,
            offered_cookie: 0,
        }
    }
}

/// The frame limits of a messenger's config.
pub(crate) fn frame_limits(config: &Config) -> FrameLimits {
    FrameLimits { max_control: config.max_control_frame, message: config.limits }
}

impl Machine<V2> {
    /// The peer's addresses from its ident (empty before).
    pub fn peer_addrs(&self) -> &EntityAddrVec {
        &self.proto.peer_addrs
    }

    /// The peer's entity name (type from HELLO, number from its ident's gid).
    pub fn peer_name(&self) -> Option<EntityName> {
        self.peer_type.map(|t| EntityName::new(t, self.session.peer_gid))
    }

    /// The connection mode negotiated by the last AUTH_DONE (UNKNOWN before).
    pub fn con_mode(&self) -> ConMode {
        self.proto.con_mode
    }

    /// Accept side: the server cookie a lossless session opened by the pending
    /// CLIENT_IDENT gets (0 before the first ident).
    pub fn offered_server_cookie(&self) -> u64 {
        self.proto.offered_cookie
    }

    /// The global id from AUTH_DONE (0 before).
    pub fn global_id(&self) -> u64 {
        self.proto.global_id
    }
}
