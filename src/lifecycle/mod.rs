//! The lifecycle: the pure state machine from a customer's events to their
//! consent and authentication state (`docs/lifecycle.md`).
//!
//! A customer's [`Lifecycle`] is a function of the *set* of their distinct
//! events: they are folded in `(occurred_at, event_id)` order
//! ([`ConnectEvent::order_key`]) and a repeated `event_id` counts once, so
//! neither delivery order nor retries change the result. Finicity retries for
//! days, so an older event can arrive after newer ones: the consumer applies
//! new events to the stored state while they sort after its
//! [`last_event`](Lifecycle::last_event) ([`advance`]) and otherwise
//! recomputes the customer with [`fold`].
//!
//! With a history retention the events before a horizon are folded into a
//! stored *snapshot* and deleted; the lifecycle is then [`fold_from`] that
//! snapshot and the events kept (`docs/lifecycle.md`, "History retention").
//!
//! No I/O here: the consumer and any re-projection share this code.

mod authorization;
mod change;
mod funnel;
mod state;
mod transition;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;

pub use authorization::{AuthorizationPolicy, DueWarning, ExpiryWarning, WarningWindow};
pub use change::{Dimension, VisibleLifecycle, changed};
pub use funnel::{FunnelProgress, Outcome, Steps};
pub use state::{
    Account, AccountStatus, AuthReason, AuthState, Authentication, Consent, ConsentState, InstitutionLogin, LastEvent,
    Lifecycle, PendingAdding, Revocation, rfc3339_ms_option,
};
pub use transition::apply;

use crate::event::ConnectEvent;

/// The lifecycle of a customer with these events, in any order, duplicates
/// included.
///
/// Of several copies of one `event_id` the first by order key wins (then the
/// first received), which is the copy the event history keeps.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a ConnectEvent>) -> Lifecycle {
    fold_from(&Lifecycle::default(), events)
}

/// The lifecycle of a customer whose older events were folded into
/// `snapshot` (and deleted), with these events besides, in any order,
/// duplicates included: [`fold`] of the empty snapshot is `fold_from` the
/// default [`Lifecycle`].
///
/// The events are applied over the snapshot in fold order. Those that sort
/// after the snapshot's [`last_event`](Lifecycle::last_event) (every event
/// the history kept, which is at or after the horizon the snapshot was made
/// at) land exactly where [`fold`] of all the events would put them. An event
/// the snapshot does not hold but that sorts before its last event (a late
/// event older than the horizon, whose place among the folded events is
/// lost) is applied *at the horizon*: after every folded event, before every
/// kept one, with its own dates (`since`, `authorized_at`, the funnel's
/// first event); `last_event` stays the greatest key folded in and
/// `event_count` counts it once.
///
/// The events must not include any already folded into `snapshot`: the
/// store keeps their ids and drops such a copy before it gets here.
pub fn fold_from<'a>(snapshot: &Lifecycle, events: impl IntoIterator<Item = &'a ConnectEvent>) -> Lifecycle {
    fold_from_watching(snapshot, events, |_| false, |_, _, _| {})
}

/// [`fold_from`], telling `on_event` what each event `watched` accepts did:
/// it is called after such an event is applied with the event, the state
/// before it and the state after it, in fold order. The state is copied
/// only before a watched event.
pub fn fold_from_watching<'a>(
    snapshot: &Lifecycle,
    events: impl IntoIterator<Item = &'a ConnectEvent>,
    watched: impl Fn(&ConnectEvent) -> bool,
    mut on_event: impl FnMut(&'a ConnectEvent, &Lifecycle, &Lifecycle),
) -> Lifecycle {
    let mut state = snapshot.clone();
    for event in distinct_in_order(events) {
        if watched(event) {
            let before = state.clone();
            apply_at_horizon(&mut state, event);
            on_event(event, &before, &state);
        } else {
            apply_at_horizon(&mut state, event);
        }
    }
    state
}

/// [`apply`], for an event that may sort before the state's last event (a
/// late event older than the snapshot's horizon): it takes effect now, after
/// everything folded, and `last_event` keeps the greatest key.
fn apply_at_horizon(state: &mut Lifecycle, event: &ConnectEvent) {
    let later = state.last_event.take_if(|last| last.order_key() > event.order_key());
    apply(state, event);
    if later.is_some() {
        state.last_event = later;
    }
}

/// Whether `event` sorts after every event folded into `state`, so that
/// [`apply`] gives what [`fold`] of all of them would.
///
/// False for the latest event itself: an event is never after itself.
pub fn is_in_order(state: &Lifecycle, event: &ConnectEvent) -> bool {
    state.last_event.as_ref().is_none_or(|last| event.order_key() > last.order_key())
}

/// What [`advance`] did.
#[must_use = "on `Recompute` the state is unchanged: recompute it with `fold` of all the customer's events"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// Every new event sorted after the state's last event: the state now
    /// includes them.
    Applied,
    /// A new event sorts before the state's last event: the state was left
    /// untouched and must be recomputed with [`fold`] of all the customer's
    /// events, old and new.
    Recompute,
}

/// Folds a batch of events the state has never seen into it, when they all
/// sort after its last event, telling `on_event` what each event did: it is
/// called after each event is applied with the event, the state before it
/// and the state after it (in fold order, never when the batch needs a
/// recomputation). The consumer runs exactly this, and the property tests
/// prove it equal to [`fold`].
///
/// The events must be new to `state` (the consumer has deduplicated them
/// against the event history): a repeated id cannot be detected here and
/// would be counted twice. Repeats *within* the batch are dropped as
/// [`fold`] does. Either the whole batch is applied or nothing is.
pub fn advance<'a>(
    state: &mut Lifecycle,
    new_events: impl IntoIterator<Item = &'a ConnectEvent>,
    mut on_event: impl FnMut(&'a ConnectEvent, &Lifecycle, &Lifecycle),
) -> Advance {
    let batch = distinct_in_order(new_events);
    if let Some(first) = batch.first()
        && !is_in_order(state, first)
    {
        return Advance::Recompute;
    }
    for event in batch {
        let before = state.clone();
        apply(state, event);
        on_event(event, &before, state);
    }
    Advance::Applied
}

/// The events in fold order, one per `event_id`.
fn distinct_in_order<'a>(events: impl IntoIterator<Item = &'a ConnectEvent>) -> Vec<&'a ConnectEvent> {
    let mut sorted: Vec<&ConnectEvent> = events.into_iter().collect();
    // received_at breaks the tie between copies of one id so that the first
    // delivery wins whatever order the copies come in.
    sorted.sort_by(|a, b| a.order_key().cmp(&b.order_key()).then_with(|| a.received_at.cmp(&b.received_at)));
    let mut seen = HashSet::with_capacity(sorted.len());
    sorted.retain(|&event| seen.insert(event.event_id.as_str()));
    sorted
}
