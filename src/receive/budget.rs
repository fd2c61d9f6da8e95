//! [`BodyBudget`]: the bytes of webhook bodies the receiver holds at once
//! (`CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES`).
//!
//! The count cap (`CONNECTFLOW_MAX_CONCURRENT_WEBHOOKS`) bounds requests,
//! but memory is spent in bytes: 256 bodies of 1 MiB cost far more than 256
//! pings. Each webhook reserves its declared `Content-Length` before a byte
//! of the body is read, or, when the length is not declared (chunked), its
//! bytes as they arrive; a reservation the budget cannot grant is refused
//! at once (the handler answers 503), never waited for, so a slow client
//! cannot queue others behind it. A [`Reservation`] gives its bytes back
//! when it is dropped, however the request ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bytes still free for bodies, shared by every webhook.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    free: Arc<AtomicUsize>,
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self { free: Arc::new(AtomicUsize::new(bytes)) }
    }

    /// Bytes not reserved now.
    pub fn free(&self) -> usize {
        self.free.load(Ordering::Acquire)
    }

    /// An empty reservation, grown with [`Reservation::grow_to`].
    pub fn empty(&self) -> Reservation {
        Reservation { free: self.free.clone(), held: 0 }
    }

    /// Takes `bytes` from the budget, or `None` (and nothing taken) when
    /// fewer are free.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut reservation = self.empty();
        reservation.grow_to(bytes).then_some(reservation)
    }
}

/// Bytes taken from a [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    free: Arc<AtomicUsize>,
    held: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Grows the reservation to `target` bytes in all; false (and nothing
    /// taken) when the budget has not that many more free. Never shrinks.
    pub fn grow_to(&mut self, target: usize) -> bool {
        let more = target.saturating_sub(self.held);
        if more == 0 {
            return true;
        }
        let taken = self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| free.checked_sub(more)).is_ok();
        if taken {
            self.held = target;
        }
        taken
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.free.fetch_add(self.held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_take_from_the_budget_and_give_back_on_drop() {
        let budget = BodyBudget::new(100);
        let first = budget.try_reserve(60).expect("60 of 100");
        assert_eq!(budget.free(), 40);
        assert!(budget.try_reserve(41).is_none(), "41 of the 40 left");
        assert_eq!(budget.free(), 40, "a refusal takes nothing");
        let second = budget.try_reserve(40).expect("the rest");
        assert_eq!(budget.free(), 0);
        drop(first);
        assert_eq!(budget.free(), 60);
        drop(second);
        assert_eq!(budget.free(), 100);
    }

    #[test]
    fn a_reservation_grows_while_the_budget_lasts() {
        let budget = BodyBudget::new(100);
        let mut growing = budget.empty();
        assert!(growing.grow_to(30));
        assert!(growing.grow_to(70));
        assert_eq!((growing.held(), budget.free()), (70, 30));
        assert!(!growing.grow_to(101), "past the budget");
        assert_eq!((growing.held(), budget.free()), (70, 30), "a refused growth takes nothing");
        assert!(growing.grow_to(50), "asking for less than held is granted");
        assert_eq!(growing.held(), 70, "and does not shrink");
        drop(growing);
        assert_eq!(budget.free(), 100);
    }
}
