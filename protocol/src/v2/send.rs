//! Writing on one msgr2 TCP connection, and what the handshake steps share: control
//! frames in the current mode (recorded in the pre-auth transcript), the switch to the
//! negotiated mode after AUTH_DONE with our AUTH_SIGNATURE, handshake rounds, and the
//! fault for a frame out of place.

use std::time::Instant;

use bytes::BytesMut;

use crate::auth::{AuthClient, AuthOutcome, ConMode};
use crate::session::{Fault, Machine, Side, State};

use super::frames::{AuthSignature, ControlFrame};
use super::framing::{FrameEncoder, GcmStream};
use super::link::V2;
use super::state::{Handshake, PeerSignature, Transcript};
use super::tag::Tag;

/// A frame that does not belong to the current state (Ceph faults on these).
pub(crate) fn unexpected(tag: Tag) -> Fault {
    if tag.0 == 0 || tag.0 > Tag::ACK.0 {
        Fault::UnknownTag(tag.0)
    } else {
        Fault::Misbehaved("frame not allowed in this state")
    }
}

/// Counts one handshake round; too many fault the connection.
pub(crate) fn count_round(m: &mut Machine<V2>) -> Result<(), Fault> {
    m.proto.rounds += 1;
    if m.proto.rounds > m.config.max_auth_rounds {
        return Err(Fault::Misbehaved("too many handshake rounds"));
    }
    Ok(())
}

/// After AUTH_DONE (read by a connector, written by an acceptor): stop recording the
/// transcript, switch to the negotiated mode and sign what we received (Ceph's
/// `finish_auth` / the tail of `handle_auth_done`). The next step checks the peer's
/// signature.
///
/// An acceptor sends its signature at once (as Ceph's does). A connector (`client`
/// given) holds its own until the acceptor's matched, where Ceph's sends it at once: an
/// AUTH_DONE replayed from another connection (its payload sealed under our long-term
/// key, so it decrypts) would otherwise make us seal our first secure frame with that
/// connection's key and first nonce again, and keep its stale tickets. A replayed
/// AUTH_DONE comes with no signature over this connection's bytes, so nothing is sealed
/// or kept. A Ceph acceptor sends its signature without waiting for ours.
pub(crate) fn finish_auth(
    m: &mut Machine<V2>,
    deadline: Instant,
    transcript: Transcript,
    outcome: AuthOutcome,
    client: Option<Box<dyn AuthClient>>,
) -> Result<(), Fault> {
    let sig = AuthSignature::compute(outcome.session_key.as_deref(), &transcript.rx);
    install_mode(m, &outcome.connection_secret)?;
    let held = match client {
        Some(client) => Some((sig, client)),
        None => {
            send_control(m, None, &sig);
            None
        }
    };
    let check = PeerSignature { session_key: outcome.session_key, sent: transcript.tx, held };
    m.set_state(State::Handshake { deadline, step: Handshake::AwaitAuthSignature(check) });
    Ok(())
}

/// Switches both directions to the negotiated mode (after AUTH_DONE).
fn install_mode(m: &mut Machine<V2>, secret: &[u8]) -> Result<(), Fault> {
    if m.proto.con_mode != ConMode::SECURE {
        return Ok(());
    }
    let connector = m.side == Side::Connect;
    let (rx, tx) = GcmStream::pair_from_secret(secret, connector).map_err(Fault::Decode)?;
    m.proto.decoder.set_secure(rx).map_err(Fault::Decode)?;
    m.proto.encoder = FrameEncoder::secure(tx);
    Ok(())
}

/// Raw bytes (the banner), recorded in `transcript` while pre-auth.
pub(crate) fn send_raw(m: &mut Machine<V2>, transcript: Option<&mut Transcript>, b: &[u8]) {
    if let Some(t) = transcript {
        t.tx.extend_from_slice(b);
    }
    m.ctrl.extend_from_slice(b);
}

/// Encodes a control frame in the current mode and queues it (recorded in
/// `transcript` while pre-auth). A frame that cannot be encoded (secure mode out of
/// nonces) faults the connection before anything more is read or written.
pub(crate) fn send_control<F: ControlFrame>(
    m: &mut Machine<V2>,
    transcript: Option<&mut Transcript>,
    f: &F,
) {
    let seg = f.to_segment();
    // Exactly the frame: an empty buffer would grow by a batch of messages' worth.
    let mut buf = BytesMut::with_capacity(m.proto.encoder.wire_len(&[seg.len()]));
    let mut spill = Vec::new();
    match m.proto.encoder.encode(F::TAG, &[&seg], &mut buf, &mut spill) {
        Ok(_) => {
            let mut transcript = transcript;
            for s in spill.iter().chain(std::iter::once(&buf.freeze())) {
                if let Some(t) = transcript.as_deref_mut() {
                    t.tx.extend_from_slice(s);
                }
                m.ctrl.extend_from_slice(s);
            }
        }
        Err(e) => m.deferred_fault = Some(Fault::Decode(e)),
    }
}
