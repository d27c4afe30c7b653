//! [`Connection`]: a msgr2 [`Machine`], and [`V2`], what msgr2 plugs into it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::auth::ConMode;
use crate::session::{
    later, AuthVerdict, Config, Decision, Fault, Machine, Policy, Protocol, Session, Side, State,
};
use crate::types::{unmapped, EntityAddr, EntityType};

use super::banner::Banner;
use super::framing::{FrameDecoder, FrameEncoder};
use super::link::{frame_limits, LOG, V2};
use super::state::{Handshake, OpenRx, Transcript};
use super::{accept, open, receive, send};

crate::session::machine_newtype!(
    /// One msgr2 connection (connect or accept side) and the session it carries: a
    /// [`Machine`] running [`V2`] (its inputs, commands, outputs and queries are
    /// [`Machine`]'s; the accessors here are msgr2's own).
    Connection,
    V2
);

impl Connection {
    /// A connect-side machine for the peer at `peer_addr` (a v2 address) of type
    /// `peer_type`. The driver dials and calls [`Machine::handle_transport_connected`].
    pub fn connect(
        config: Arc<Config>,
        policy: Policy,
        peer_addr: EntityAddr,
        peer_type: EntityType,
        now: Instant,
    ) -> Self {
        let proto = V2::new(&config);
        let m = Machine::connecting(config, policy, proto, peer_addr, peer_type, now);
        log::debug!(target: LOG, "{m}: connecting");
        Connection(m)
    }

    /// An accept-side machine for a socket accepted from `socket_peer` on
    /// `socket_local`. Our banner is ready in [`Machine::poll_transmit`] at once
    /// (Ceph's acceptor writes first).
    pub fn accept(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        let deadline = later(now, config.handshake_timeout);
        let mut transcript = Transcript::default();
        let banner = Banner::OURS.to_bytes();
        transcript.tx.extend_from_slice(&banner);
        let state = State::Handshake { deadline, step: Handshake::AwaitPeerBanner(transcript) };
        let mut proto = V2::new(&config);
        // An IPv4 peer of a dual-stack `[::]` listener reached `a.b.c.d` (its CLIENT_IDENT
        // names that), not the socket's `[::ffff:a.b.c.d]`.
        proto.socket_local = Some(unmapped(socket_local));
        let mut m = Machine::new(config, Side::Accept, Policy::default(), state, proto, now);
        // Likewise its HELLO tells the peer `a.b.c.d`, the address the peer learns its
        // IP from and announces in its idents (see the v1 acceptor).
        m.socket_peer = Some(unmapped(socket_peer));
        m.ctrl.extend_from_slice(&banner);
        log::debug!(target: LOG, "{m}: accepted");
        Connection(m)
    }
}

impl Protocol for V2 {
    type Handshake = Handshake;
    type OpenRx = OpenRx;
    const LOG: &'static str = LOG;
    const NAME: &'static str = "v2";
    const TIMED_PAYLOAD: bool = true;
    const PROGRESS_ON_ARRIVAL: bool = true;
    // ProtocolV2::_fault: "server, going to standby, even though i have stuff queued".
    const SERVER_ALWAYS_PARKS: bool = true;

    fn step_name(step: &Handshake) -> &'static str {
        step.name()
    }

    fn step_wants_read(step: &Handshake) -> bool {
        !matches!(step, Handshake::AwaitAcceptDecision(_))
    }

    fn step_awaits_decision(step: &Handshake) -> bool {
        matches!(step, Handshake::AwaitAcceptDecision(_))
    }

    fn start_handshake(m: &mut Machine<V2>) -> Handshake {
        let mut transcript = Transcript::default();
        send::send_raw(m, Some(&mut transcript), &Banner::OURS.to_bytes());
        Handshake::AwaitBanner(transcript)
    }

    fn read_handshake(m: &mut Machine<V2>, now: Instant) -> bool {
        match m.state.step() {
            Some(Handshake::AwaitBanner(_) | Handshake::AwaitPeerBanner(_)) => {
                receive::read_banner(m, now)
            }
            Some(Handshake::AwaitAcceptDecision(_)) | None => false,
            Some(_) => receive::read_frame(m, now),
        }
    }

    fn read_open(m: &mut Machine<V2>, now: Instant) -> bool {
        receive::read_frame(m, now)
    }

    fn accept_decision(
        m: &mut Machine<V2>,
        now: Instant,
        decision: Decision,
        transferred: Option<Session>,
    ) {
        accept::handle_decision(m, now, decision, transferred);
    }

    fn authorizer_verdict(m: &mut Machine<V2>, _now: Instant, _verdict: AuthVerdict) {
        log::warn!(target: LOG, "{m}: authorizer verdict for msgr2 (it authenticates in its AUTH frames)");
    }

    fn grant(m: &mut Machine<V2>, _bytes: u64, first: bool) -> Result<(), Fault> {
        // The first window resumes the decoder paused at the message's head; later
        // windows only let more of the payload be read.
        if first {
            m.proto.decoder.proceed().map_err(Fault::Decode)
        } else {
            Ok(())
        }
    }

    fn direct_read_buffer(m: &mut Machine<V2>) -> Option<(&mut BytesMut, usize)> {
        let allowed = super::receive::window_left(m)?;
        m.proto.decoder.assembly_buffer(allowed)
    }

    fn message_in_progress(rx: &OpenRx) -> bool {
        matches!(rx, OpenRx::Reading { skipped: false, .. })
    }

    fn between_messages(m: &Machine<V2>) -> bool {
        super::receive::between_messages(m)
    }

    fn receive_held_bytes(m: &Machine<V2>) -> usize {
        // The frame decoder assembles the message (its segments and a large segment's
        // buffer), not the session's receive state; secure mode takes the payload's
        // block from the receive buffer only once it is all there, so while a message
        // is read what waits there counts too.
        let reading = m.state.open().is_some_and(|o| matches!(o.rx, OpenRx::Reading { .. }));
        m.proto.decoder.held_bytes() + if reading { m.rx.len() } else { 0 }
    }

    fn transmit(m: &mut Machine<V2>, head: &mut BytesMut, out: &mut Vec<Bytes>) {
        open::transmit(m, head, out);
    }

    fn queue_close(_m: &mut Machine<V2>, _was_open: bool) {
        // msgr2 has no CLOSE frame: the driver flushes what is queued and closes.
    }

    fn reset_transport(m: &mut Machine<V2>) {
        m.proto.decoder = FrameDecoder::new(frame_limits(&m.config));
        m.proto.encoder = FrameEncoder::crc();
        m.proto.con_mode = ConMode::UNKNOWN;
        m.proto.rounds = 0;
    }

    fn bumps_connect_seq(m: &Machine<V2>, _past_connecting: bool) -> bool {
        // Ceph's ProtocolV2::_fault: connect_seq counts attempts within a session.
        m.session.cookies.server != 0
    }

    fn wake_bumps_connect_seq(m: &Machine<V2>) -> bool {
        m.session.cookies.server != 0
    }

    fn describe(m: &Machine<V2>) -> Option<&'static str> {
        Some(m.proto.con_mode.name())
    }

    fn lossy_handshake_ends(_m: &Machine<V2>, fault: &Fault) -> bool {
        // Ceph's handle_wait enters WAIT before it faults, and WAIT lies outside the
        // connector's states in which a lossy connect is retried; every other fault of
        // the connector's handshake happens inside them.
        matches!(fault, Fault::Wait)
    }
}
