//! [`Machine`]'s outputs (`poll_*` but the timeout, which is in `timers.rs`): bytes to
//! write and events.

use bytes::Bytes;

use super::event::Event;
use super::machine::{Machine, Protocol};

impl<P: Protocol> Machine<P> {
    /// Appends the bytes to write, as segments (payloads are shared, not copied);
    /// returns how many bytes were appended. Call until it returns 0 or the socket is
    /// full; what was returned must be written in order before the next call's output.
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        let first = out.len();
        let mut head = std::mem::take(&mut self.ctrl);
        if self.state.is_open() {
            P::transmit(self, &mut head, out);
        }
        if !head.is_empty() {
            out.push(head.split().freeze());
        }
        // Keep the allocation for the next round when it was not handed out.
        self.ctrl = head;
        let total = out[first..].iter().map(Bytes::len).sum();
        if total > 0 {
            log::trace!(target: P::LOG, "{self}: {total} bytes out");
        }
        if let Some(fault) = self.deferred_fault.take() {
            let now = self.now;
            self.fault(now, fault);
        }
        total
    }

    /// The next event, if any. Drain after every input or command.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether events are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }
}
