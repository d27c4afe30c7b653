//! `ms_handle_authentication`: the dispatchers' say on a peer that authenticated, asked
//! on the accept path right before the accept decision, with no lock held.

use dispatch::Authentication;
use event_center::Context;
use protocol::session::{log_limited, WARN_LINES_PER_SECOND};

use super::Driver;
use crate::machine::AcceptRequest;

impl Driver {
    /// The accept decision for `req`, unless the dispatchers refuse the peer
    /// ([`Driver::authentication_refused`]).
    pub(super) fn authenticate_then_decide(&mut self, cx: &mut Context<'_>, req: AcceptRequest) {
        if self.authentication_refused(cx, &req) {
            return;
        }
        self.decide_accept(cx, req);
    }

    /// Asks the dispatchers about the peer of `req` (`ms_handle_authentication`, head
    /// → tail) and closes the connection if one refuses it: the machine faults as on
    /// a lost socket, which ends a connection not yet registered without a reply, an
    /// open or any callback but the reset of one a dispatcher was shown before.
    ///
    /// Called before the decision so that a refused peer never touches the session
    /// table: an existing session of the same address is neither replaced, reset nor
    /// nudged by a connect that is refused.
    fn authentication_refused(&mut self, cx: &mut Context<'_>, req: &AcceptRequest) -> bool {
        {
            // What the hook reads of the peer (and the handle shows from here on, the
            // decision's outcome whatever it is): who it claims to be, and who it proved
            // to be. The session table reads a handle's proof only once the handle is
            // registered (the decision does that), so publishing it here changes no
            // other connection's decision.
            let mut p = self.conn.0.published.lock();
            p.addr = Some(req.peer_addr);
            p.entity_type = Some(req.peer_type);
            if let Some(a) = self.machine.peer_auth() {
                p.peer_auth = Some(a.clone());
            }
        }
        // Named while the hooks run, as for `ms_verify_authorizer`: one that panics may
        // have kept state for the handle it was shown before it did, and the event
        // center then drops this driver, whose `Drop` reports the reset only of a named
        // handle. (A connect again on the socket: an earlier `Accept` stands.)
        let before = self.named;
        self.named = true;
        let answer = self.env.dispatchers().handle_authentication(&self.conn);
        // Only a dispatcher that let the peer in may keep state for it: it hears of the
        // end even if the connection never opens (`report_unopened_end`).
        self.named = before || answer == Authentication::Accept;
        match answer {
            Authentication::Pass | Authentication::Accept => false,
            Authentication::Refuse => {
                // Within the messenger's lines a second for refusals: a refused peer that
                // redials at every backoff is refused each time.
                let peer = req.peer_addr;
                let machine = &self.machine;
                log_limited(
                    self.env.refusal_log.take(cx.now()),
                    log::Level::Info,
                    "msgr::conn",
                    format_args!("{machine}: a dispatcher refused the authenticated peer {peer}"),
                    format_args!("more refusals were not logged: at most {WARN_LINES_PER_SECOND} lines a second"),
                    format_args!("{machine}: a dispatcher refused the authenticated peer {peer}"),
                );
                self.machine.handle_transport_closed(cx.now());
                true
            }
        }
    }
}
