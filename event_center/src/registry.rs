//! The handler registry: a slab of generation-tagged slots, each holding one handler and
//! the registration of its source with the center's `mio::Poll`.
//!
//! Generic over what a slot holds (the center stores `Box<dyn Handler>`), so it knows
//! nothing of callbacks: it allocates and frees slots, lends a handler out while it runs
//! and takes it back, and keeps epoll in step with the slots.

use std::io;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use log::debug;
use mio::unix::SourceFd;
use mio::{Interest, Registry};

const LOG: &str = "msgr::center";

/// A generation-tagged token naming one handler on one center.
///
/// The `index` is a slab slot; the `generation` changes every time that slot is freed, so
/// an id kept after [`Context::remove`](crate::Context::remove) never reaches the handler
/// that later reuses the slot (not for readiness, timers or
/// [`CenterHandle::notify`](crate::CenterHandle::notify)). Ids are only meaningful on the
/// center that issued them.
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

/// The token of the center's timerfd: generation 0 with index `u32::MAX`, which no
/// [`HandlerId`] has (indices saturate one below it).
pub(crate) const TIMER_TOKEN: mio::Token = mio::Token(u32::MAX as usize);

impl HandlerId {
    /// The slab slot this id names (shared with earlier and later ids of other
    /// generations); for logs and tests.
    #[inline]
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

/// A source's registration, kept by the registry while the handler owns the source itself.
struct Registration {
    fd: RawFd,
    /// `None`: deregistered from epoll (mio has no empty interest), re-added on demand.
    interest: Option<Interest>,
}

struct Slot<H> {
    generation: u32,
    /// Allocated to the handler with `generation`.
    live: bool,
    /// `None` while the handler runs (lent out) or when the slot is free.
    handler: Option<H>,
    registration: Option<Registration>,
}

/// The slots of one center and their epoll registrations.
///
/// A slot is free, live and holding its handler, or live with its handler lent out
/// ([`take`](Self::take)) while it runs. A slot freed while its handler is lent out
/// rejoins the free list only when the handler comes back ([`put_back`](Self::put_back)
/// or [`discard`](Self::discard)), so its index is never handed out twice at once.
pub(crate) struct HandlerRegistry<H> {
    poll: Registry,
    /// The center's id, for logs.
    center: usize,
    slots: Vec<Slot<H>>,
    /// Free slot indices.
    free: Vec<u32>,
    /// Live slots (lent out or not).
    live: usize,
}

impl<H> HandlerRegistry<H> {
    /// An empty registry registering sources with `poll`.
    pub(crate) fn new(poll: Registry, center: usize) -> Self {
        HandlerRegistry { poll, center, slots: Vec::new(), free: Vec::new(), live: 0 }
    }

    /// Live handlers.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Ids of every live handler, in slot order.
    pub(crate) fn live_ids(&self) -> Vec<HandlerId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(i, s)| HandlerId { index: i as u32, generation: s.generation })
            .collect()
    }

    fn slot(&self, id: HandlerId) -> Option<&Slot<H>> {
        self.slots.get(id.index as usize).filter(|s| s.live && s.generation == id.generation)
    }

    #[inline]
    fn slot_mut(&mut self, id: HandlerId) -> Option<&mut Slot<H>> {
        self.slots.get_mut(id.index as usize).filter(|s| s.live && s.generation == id.generation)
    }

    /// Whether `id` names a live handler (lent out or not).
    #[inline]
    pub(crate) fn is_live(&self, id: HandlerId) -> bool {
        self.slot(id).is_some()
    }

    /// Whether readiness for `id` should reach its handler: live, with a source whose
    /// interest was not dropped (by an earlier handler of the same poll batch, say).
    #[inline]
    pub(crate) fn wants_readiness(&self, id: HandlerId) -> bool {
        self.slot(id).and_then(|s| s.registration.as_ref()).is_some_and(|r| r.interest.is_some())
    }

    /// Allocates a live slot whose handler is not yet set ([`fill`](Self::fill) it, or
    /// [`abandon`](Self::abandon) it).
    pub(crate) fn allocate(&mut self) -> HandlerId {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.live = true;
                return HandlerId { index, generation: slot.generation };
            }
        }
        // Indices stay below u32::MAX (the waker's token) in practice: that many boxed
        // handlers would need far more memory than any host has.
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX - 1);
        self.slots.push(Slot { generation: 0, live: true, handler: None, registration: None });
        HandlerId { index, generation: 0 }
    }

    /// Stores the handler of a slot from [`allocate`](Self::allocate).
    pub(crate) fn fill(&mut self, id: HandlerId, handler: H) {
        if let Some(slot) = self.slot_mut(id) {
            slot.handler = Some(handler);
        }
    }

    /// Frees a slot from [`allocate`](Self::allocate) that never got its handler.
    pub(crate) fn abandon(&mut self, id: HandlerId) {
        // Without a handler `remove` leaves the index to its caller.
        let _ = self.remove(id);
        self.free.push(id.index);
    }

    /// Allocates a slot for `handler`.
    pub(crate) fn insert(&mut self, handler: H) -> HandlerId {
        let id = self.allocate();
        self.fill(id, handler);
        id
    }

    /// Registers `fd` for `interest` on behalf of `id`, which must not have a source yet.
    pub(crate) fn register_fd(
        &mut self,
        id: HandlerId,
        fd: RawFd,
        interest: Interest,
    ) -> io::Result<()> {
        let slot = self.slot_mut(id).ok_or_else(stale)?;
        if slot.registration.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "handler has a source"));
        }
        self.poll.register(&mut SourceFd(&fd), id.token(), interest)?;
        if let Some(slot) = self.slots.get_mut(id.index as usize) {
            slot.registration = Some(Registration { fd, interest: Some(interest) });
        }
        Ok(())
    }

    /// Changes `id`'s interest; `None` deregisters the source until an interest is set
    /// again (mio has no empty interest).
    pub(crate) fn set_interest(
        &mut self,
        id: HandlerId,
        interest: Option<Interest>,
    ) -> io::Result<()> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)
            .ok_or_else(stale)?;
        let reg = slot.registration.as_mut().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "handler has no registered source")
        })?;
        let fd = reg.fd;
        match (reg.interest, interest) {
            (Some(_), Some(new)) => self.poll.reregister(&mut SourceFd(&fd), id.token(), new)?,
            (None, Some(new)) => self.poll.register(&mut SourceFd(&fd), id.token(), new)?,
            (Some(_), None) => self.poll.deregister(&mut SourceFd(&fd))?,
            (None, None) => {}
        }
        reg.interest = interest;
        Ok(())
    }

    /// Forgets `id`'s source (deregistering it if it is in epoll); the handler stays.
    pub(crate) fn deregister(&mut self, id: HandlerId) -> io::Result<()> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)
            .ok_or_else(stale)?;
        match slot.registration.take() {
            Some(Registration { fd, interest: Some(_) }) => {
                self.poll.deregister(&mut SourceFd(&fd))
            }
            _ => Ok(()),
        }
    }

    /// Frees `id`'s slot: deregisters, bumps the generation. Returns the handler unless it
    /// is lent out (then whoever runs it frees the slot when it returns).
    pub(crate) fn remove(&mut self, id: HandlerId) -> Option<H> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)?;
        if let Some(Registration { fd, interest: Some(_) }) = slot.registration.take() {
            // The handler still owns the source, so the fd is still the one we registered.
            if let Err(e) = self.poll.deregister(&mut SourceFd(&fd)) {
                debug!(target: LOG, "center {}: deregister {id:?}: {e}", self.center);
            }
        }
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.live -= 1;
        let handler = slot.handler.take();
        if handler.is_some() {
            self.free.push(id.index);
        }
        handler
    }

    /// Lends `id`'s handler out to run it; `None` if it is not live or already lent out.
    #[inline]
    pub(crate) fn take(&mut self, id: HandlerId) -> Option<H> {
        self.slot_mut(id)?.handler.take()
    }

    /// Returns a handler after it ran; drops it instead if it was removed meanwhile.
    /// The drop is out of line: with it (a call through the handler's drop, a push that
    /// may grow) this was a call of its own with a frame to save and restore, ~34
    /// instructions per callback, twice per round trip at depth 1.
    #[inline]
    pub(crate) fn put_back(&mut self, id: HandlerId, handler: H) {
        match self.slot_mut(id) {
            Some(slot) => slot.handler = Some(handler),
            None => self.drop_removed(id, handler),
        }
    }

    /// [`put_back`](Self::put_back) of a handler removed while it ran.
    #[cold]
    #[inline(never)]
    fn drop_removed(&mut self, id: HandlerId, handler: H) {
        self.free.push(id.index);
        drop_quietly(handler);
    }

    /// Drops a lent-out handler that panicked, freeing its slot.
    pub(crate) fn discard(&mut self, id: HandlerId, handler: H) {
        if self.slot(id).is_some() {
            // Lent out, so `remove` does not push the slot: it is pushed below.
            let _ = self.remove(id);
        }
        self.free.push(id.index);
        drop_quietly(handler);
    }
}

fn stale() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no live handler with this id")
}

/// Drops `value`, catching a panic of its `Drop`: a handler's drop must not take the
/// worker down either.
pub(crate) fn drop_quietly<T>(value: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (mio::Poll, HandlerRegistry<&'static str>) {
        let poll = mio::Poll::new().expect("poll");
        let registry = HandlerRegistry::new(poll.registry().try_clone().expect("clone"), 0);
        (poll, registry)
    }

    #[test]
    fn token_round_trips_both_halves() {
        let id = HandlerId { index: 7, generation: u32::MAX - 1 };
        assert_eq!(HandlerId::from_token(id.token()), id);
        assert_ne!(id.token(), WAKER_TOKEN);
    }

    #[test]
    fn a_reused_slot_gets_a_new_generation() {
        let (_poll, mut r) = registry();
        let a = r.insert("a");
        assert_eq!(r.remove(a), Some("a"));
        let b = r.insert("b");
        assert_eq!(b.slot(), a.slot());
        assert_ne!(b, a);
        assert!(!r.is_live(a));
        assert_eq!(r.remove(a), None, "a stale id reaches nothing");
        assert_eq!(r.take(b), Some("b"));
    }

    #[test]
    fn a_slot_removed_while_lent_out_is_reused_only_after_it_comes_back() {
        let (_poll, mut r) = registry();
        let a = r.insert("a");
        let lent = r.take(a).expect("lent out");
        assert_eq!(r.remove(a), None, "the running handler is not handed out");
        assert_eq!(r.len(), 0);
        let b = r.insert("b");
        assert_ne!(b.slot(), a.slot(), "the lent-out slot is not free yet");
        r.put_back(a, lent);
        let c = r.insert("c");
        assert_eq!(c.slot(), a.slot());
        assert_eq!(r.live_ids(), [c, b]);
    }

    // `put_back` stores a live handler's return in place and drops (out of line) one
    // removed while it ran.
    #[test]
    fn a_handler_comes_back_to_its_slot_unless_removed_while_it_ran() {
        let poll = mio::Poll::new().expect("poll");
        let mut r = HandlerRegistry::new(poll.registry().try_clone().expect("clone"), 0);
        let alive = std::rc::Rc::new(());
        let a = r.insert(std::rc::Rc::clone(&alive));
        let lent = r.take(a).expect("lent out");
        r.put_back(a, lent);
        assert!(r.take(a).is_some(), "back in its slot, lent out again");
        assert_eq!(std::rc::Rc::strong_count(&alive), 1, "the lent one was dropped here");
        let b = r.insert(std::rc::Rc::clone(&alive));
        let lent = r.take(b).expect("lent out");
        assert_eq!(r.remove(b), None);
        assert_eq!(std::rc::Rc::strong_count(&alive), 2);
        r.put_back(b, lent);
        assert_eq!(std::rc::Rc::strong_count(&alive), 1, "removed while it ran: dropped");
        assert_eq!(r.insert(std::rc::Rc::clone(&alive)).slot(), b.slot(), "its slot is free");
    }

    #[test]
    fn readiness_is_wanted_only_with_an_interest() {
        let (_poll, mut r) = registry();
        let (rx, _tx) = std::os::unix::net::UnixStream::pair().expect("pair");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&rx);
        let id = r.insert("a");
        assert!(!r.wants_readiness(id));
        r.register_fd(id, fd, Interest::READABLE).expect("register");
        assert!(r.wants_readiness(id));
        assert!(r.register_fd(id, fd, Interest::READABLE).is_err(), "one source per handler");
        r.set_interest(id, None).expect("drop interest");
        assert!(!r.wants_readiness(id));
        r.set_interest(id, Some(Interest::READABLE)).expect("interest again");
        assert!(r.wants_readiness(id));
        r.deregister(id).expect("deregister");
        assert!(!r.wants_readiness(id));
        assert!(r.is_live(id));
    }
}
