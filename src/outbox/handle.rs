//! How the writers of a `consume` process reach its relay: a wake-up for
//! changes it must claim, and a queue of changes handed off to it already
//! leased ([`crate::store::changes::Announce::HandOff`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::store::changes::HandOff;

/// Hand-offs queued for the relay at most: past that (Kafka slow, the relay
/// behind) the writers' changes wait to be claimed, as they did before
/// hand-offs, so the queue in memory stays small.
pub(super) const HAND_OFFS_QUEUED: usize = 16;

/// A hand-off on its way to the relay, with the wake-ups counted when it
/// was sent.
#[derive(Debug)]
pub(super) struct Delivery {
    pub hand_off: HandOff,
    /// [`RelayHandle::wake`]s so far when it was sent. A wake-up after it
    /// may be for a customer whose rows it holds leased, which the claim it
    /// started passed over: the relay claims again once it settled.
    pub wakes_before: u64,
}

/// A cloneable handle on a relay ([`super::Relay::handle`]).
#[derive(Debug, Clone)]
pub struct RelayHandle {
    pub(super) wake: Arc<Notify>,
    pub(super) wakes: Arc<AtomicU64>,
    pub(super) hand_offs: mpsc::Sender<Delivery>,
}

impl RelayHandle {
    /// Wakes the relay to claim changes recorded without a hand-off.
    pub fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// A place in the relay's queue of hand-offs, when it has one (taken
    /// before the transaction that leases the rows, so that a hand-off
    /// committed always reaches the relay): `None` when the queue is full
    /// or the relay is gone, and the changes are then claimed.
    pub fn reserve(&self) -> Option<HandOffSlot<'_>> {
        let permit = self.hand_offs.try_reserve().ok()?;
        Some(HandOffSlot { permit, wakes: &self.wakes })
    }
}

/// A reserved place in the relay's queue ([`RelayHandle::reserve`]).
#[derive(Debug)]
pub struct HandOffSlot<'a> {
    permit: mpsc::Permit<'a, Delivery>,
    wakes: &'a AtomicU64,
}

impl HandOffSlot<'_> {
    /// Gives the relay changes leased to it in a committed transaction.
    /// Call it after any [`RelayHandle::wake`] for the same transaction.
    pub fn send(self, hand_off: HandOff) {
        let wakes_before = self.wakes.load(Ordering::SeqCst);
        self.permit.send(Delivery { hand_off, wakes_before });
    }
}
