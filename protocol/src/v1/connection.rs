//! [`Connection`]: a msgr v1 [`Machine`], and [`V1`], what v1 plugs into it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::session::{
    v1_still_connecting, AuthVerdict, Config, Decision, Fault, Machine, Policy, Protocol, Session,
    Side, State,
};
use crate::types::{unmapped, with_port, EntityAddr, EntityType};
use crate::wire::{AcceptorBanner, Tag};

use super::state::{Handshake, OpenRx, LOG, V1};
use super::{accept, connect, open};

crate::session::machine_newtype!(
    /// One msgr v1 connection (connect or accept side) and the session it carries: a
    /// [`Machine`] running [`V1`] (its inputs, commands, outputs and queries are
    /// [`Machine`]'s).
    Connection,
    V1
);

impl Connection {
    /// A connect-side machine for `peer_addr` (of type `peer_type`). The driver dials
    /// and calls [`Machine::handle_transport_connected`] when the socket is connected.
    pub fn connect(
        config: Arc<Config>,
        policy: Policy,
        peer_addr: EntityAddr,
        peer_type: EntityType,
        now: Instant,
    ) -> Self {
        let m = Machine::connecting(config, policy, V1::new(), peer_addr, peer_type, now);
        log::debug!(target: LOG, "{m}: connecting");
        Connection(m)
    }

    /// An accept-side machine for a socket just accepted from `socket_peer` on
    /// `socket_local`. Our banner block is ready in [`Machine::poll_transmit`] at once
    /// (Ceph's acceptor writes first).
    pub fn accept(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        let deadline = crate::session::later(now, config.handshake_timeout);
        let state = State::Handshake { deadline, step: Handshake::AwaitPeerBanner };
        let mut m = Machine::new(config, Side::Accept, Policy::default(), state, V1::new(), now);
        // An IPv4 peer of a dual-stack `[::]` listener is `a.b.c.d`, not the socket's
        // `[::ffff:a.b.c.d]`: told that address (our banner), a peer learning its IP from
        // us (`ms_learn_addr_from_peer`) would announce itself at an IPv6 address it is
        // not reached at, and be refused when dialled there.
        let socket_peer = unmapped(socket_peer);
        m.socket_peer = Some(socket_peer);
        let mut me = m.config.v1_addr();
        if me.is_blank_ip() {
            // Announce the address the peer reached us on, keeping our port and nonce,
            // so its dialled-address check passes without the blank-IP exception (an IPv4
            // peer of a dual-stack `[::]` listener reached `a.b.c.d`, not `[::ffff:a.b.c.d]`).
            let socket_local = unmapped(socket_local);
            let port = if me.port() != 0 { me.port() } else { socket_local.port() };
            me.addr = Some(with_port(socket_local, port));
        }
        let block = AcceptorBanner { my_addr: me, peer_addr: EntityAddr::legacy(socket_peer, 0) };
        m.ctrl.extend_from_slice(&block.to_bytes());
        log::debug!(target: LOG, "{m}: accepted");
        Connection(m)
    }
}

impl Protocol for V1 {
    type Handshake = Handshake;
    type OpenRx = OpenRx;
    const LOG: &'static str = LOG;
    const NAME: &'static str = "v1";
    const TIMED_PAYLOAD: bool = true;
    const PROGRESS_ON_ARRIVAL: bool = false;
    // ProtocolV1::fault parks a server only past connecting; its connect attempts back off.
    const SERVER_ALWAYS_PARKS: bool = false;

    fn step_name(step: &Handshake) -> &'static str {
        step.name()
    }

    fn step_wants_read(step: &Handshake) -> bool {
        step.wants_read()
    }

    fn step_awaits_decision(step: &Handshake) -> bool {
        matches!(step, Handshake::AwaitAcceptDecision(..))
    }

    fn start_handshake(m: &mut Machine<V1>) -> Handshake {
        connect::start(m)
    }

    fn read_handshake(m: &mut Machine<V1>, now: Instant) -> bool {
        match m.state.step() {
            Some(Handshake::AwaitBanner) => connect::read_acceptor_banner(m, now),
            Some(Handshake::AwaitConnectReply { .. }) => connect::read_connect_reply(m, now),
            Some(Handshake::AwaitPeerBanner) => accept::read_peer_banner(m, now),
            Some(Handshake::AwaitConnect(_)) => accept::read_connect(m, now),
            Some(Handshake::AwaitPeerInSeq(_)) => accept::read_peer_in_seq(m, now),
            Some(Handshake::AwaitAuthorizerVerdict(..) | Handshake::AwaitAcceptDecision(..))
            | None => false,
        }
    }

    fn read_open(m: &mut Machine<V1>, now: Instant) -> bool {
        open::read(m, now)
    }

    fn accept_decision(
        m: &mut Machine<V1>,
        now: Instant,
        decision: Decision,
        transferred: Option<Session>,
    ) {
        accept::handle_decision(m, now, decision, transferred);
    }

    fn authorizer_verdict(m: &mut Machine<V1>, now: Instant, verdict: AuthVerdict) {
        accept::handle_verdict(m, now, verdict);
    }

    fn grant(m: &mut Machine<V1>, bytes: u64, first: bool) -> Result<(), Fault> {
        let Some(open) = m.state.open_mut() else { return Ok(()) };
        if first {
            open.rx.decoder.proceed_with(bytes).map_err(Fault::Decode)?;
        } else {
            open.rx.decoder.grant(bytes);
        }
        Ok(())
    }

    fn direct_read_buffer(m: &mut Machine<V1>) -> Option<(&mut BytesMut, usize)> {
        let open = m.state.open_mut()?;
        if open.budget.is_waiting() || !matches!(open.rx.next, super::state::Next::Msg { .. }) {
            return None;
        }
        open.rx.decoder.assembly_buffer()
    }

    fn message_in_progress(rx: &OpenRx) -> bool {
        rx.next == (super::state::Next::Msg { discard: false }) && rx.decoder.header().is_some()
    }

    fn between_messages(m: &Machine<V1>) -> bool {
        m.state.open().is_some_and(|open| {
            open.rx.next == super::state::Next::Tag
                && open.rx.decoder.is_idle()
                && !open.budget.is_waiting()
        })
    }

    fn receive_held_bytes(m: &Machine<V1>) -> usize {
        m.state.open().map_or(0, |open| open.rx.decoder.held_bytes())
    }

    fn transmit(m: &mut Machine<V1>, head: &mut BytesMut, out: &mut Vec<Bytes>) {
        open::transmit(m, head, out);
    }

    fn queue_close(m: &mut Machine<V1>, was_open: bool) {
        m.ctrl.clear();
        if was_open {
            m.ctrl.put_u8(Tag::CLOSE.0);
        }
    }

    fn reset_transport(_m: &mut Machine<V1>) {}

    fn bumps_connect_seq(_m: &Machine<V1>, past_connecting: bool) -> bool {
        // Ceph bumps connect_seq when reconnecting a session past connecting (open or
        // accepted), so the acceptor sees a normal reconnect (connect_seq > existing).
        past_connecting
    }

    fn wake_bumps_connect_seq(_m: &Machine<V1>) -> bool {
        false
    }

    fn describe(_m: &Machine<V1>) -> Option<&'static str> {
        None
    }

    fn lossy_handshake_ends(m: &Machine<V1>, fault: &Fault) -> bool {
        let awaiting_banner = matches!(m.state.step(), Some(Handshake::AwaitBanner));
        // The peer's close, read before our banner was even handed out (the driver reads
        // a socket before its first flush): Ceph writes its banner first, which succeeds
        // on a socket that got only a FIN, and then reads that close past CONNECTING.
        let closed_before_writing =
            matches!(fault, Fault::TransportClosed) && m.written.is_nothing();
        let written = m.written.first_out() || closed_before_writing;
        !v1_still_connecting(awaiting_banner, written, fault)
    }
}
