//! What the center calls: the [`Handler`] trait, its [`HandlerId`] and the [`Ready`] set.

use crate::{Context, TimerId};

/// A generation-tagged token naming one handler on one center.
///
/// The `index` is a slab slot; the `generation` changes every time that slot is freed, so
/// an id kept after [`Context::remove`] never reaches the handler that later reuses the slot
/// (not for readiness, timers or [`CenterHandle::notify`](crate::CenterHandle::notify)).
/// Ids are only meaningful on the center that issued them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HandlerId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

// The mio token carries both halves of the id, so a readiness event that was already
// collected for a removed handler is recognised as stale even after the slot is reused.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("event_center packs (generation, index) into a 64-bit mio::Token");

/// The token of the center's `mio::Waker`; never produced by a [`HandlerId`] because slot
/// indices stay below `u32::MAX`.
pub(crate) const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX);

impl HandlerId {
    /// The slab slot this id names (shared with earlier and later ids of other
    /// generations); for logs and tests.
    pub fn slot(&self) -> u32 {
        self.index
    }

    pub(crate) fn token(self) -> mio::Token {
        mio::Token(((self.generation as usize) << 32) | self.index as usize)
    }

    pub(crate) fn from_token(token: mio::Token) -> HandlerId {
        HandlerId { index: (token.0 & 0xffff_ffff) as u32, generation: (token.0 >> 32) as u32 }
    }
}

/// Readiness of a handler's source, as reported by one `poll`.
///
/// Readiness is edge-like (mio's contract): after `readable` the handler must read until
/// `WouldBlock` (likewise write until `WouldBlock` after `writable`), or remember that it
/// stopped early and resume on its own (e.g. through [`CenterHandle::notify`](crate::CenterHandle::notify)),
/// because no new event arrives for data that was already there.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Ready {
    /// The source may be read from.
    pub readable: bool,
    /// The source may be written to.
    pub writable: bool,
    /// The read or write half was closed by the peer, or the source has an error pending;
    /// a read or write will tell which.
    pub closed: bool,
}

impl Ready {
    pub(crate) fn from_event(event: &mio::event::Event) -> Ready {
        Ready {
            readable: event.is_readable(),
            writable: event.is_writable(),
            closed: event.is_read_closed() || event.is_write_closed() || event.is_error(),
        }
    }
}

/// Code owned by a center and run on its worker thread.
///
/// The center keeps each handler in a slab and takes it out while one of these methods
/// runs, so a handler never sees itself through [`Context::with_handler`]. Each call runs
/// under `catch_unwind`: a handler that panics is logged (target `msgr::center`), counted
/// ([`CenterHandle::panics`](crate::CenterHandle::panics)) and dropped, since it may be
/// left half-updated; the worker keeps running.
pub trait Handler: AsAny + Send + 'static {
    /// Readiness for the handler's registered source (see [`Ready`] for the edge contract).
    fn ready(&mut self, cx: &mut Context<'_>, ready: Ready);

    /// A timer armed with [`TimerTarget::Handler`](crate::TimerTarget::Handler) for this
    /// handler fired.
    fn timer(&mut self, cx: &mut Context<'_>, id: TimerId) {
        let _ = (cx, id);
    }

    /// [`CenterHandle::notify`](crate::CenterHandle::notify) was called for this handler
    /// (several notifies before delivery are delivered once).
    fn notify(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The center is stopping. The handler is dropped after this returns; its source is
    /// deregistered by the center.
    fn shutdown(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }
}

/// Lets [`Context::with_handler_as`](crate::Context::with_handler_as) downcast a
/// `dyn Handler` to its concrete type. Implemented for every `'static` type; never
/// implement it yourself.
pub trait AsAny {
    /// `self` as `&dyn Any`.
    fn as_any(&self) -> &dyn std::any::Any;
    /// `self` as `&mut dyn Any`.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_both_halves() {
        let id = HandlerId { index: 7, generation: u32::MAX - 1 };
        assert_eq!(HandlerId::from_token(id.token()), id);
        assert_ne!(id.token(), WAKER_TOKEN);
    }
}
