//! History retention: the lifecycle as `fold_from` a snapshot of the events
//! before a horizon and the events kept, and the rule for a late event older
//! than the horizon (`docs/lifecycle.md`, "History retention").

use super::*;

/// The snapshot of [`shared`] (`a1`, `a2` shared under `L1` at second 2),
/// as the job stores it at a horizon after second 2.
fn snapshot() -> Lifecycle {
    fold(&shared())
}

#[test]
fn fold_from_the_empty_snapshot_is_the_fold() {
    let events = [shared(), vec![deleted(5, &["a1"]), event("done", 6)]].concat();

    assert_eq!(fold_from(&Lifecycle::default(), &events), fold(&events));
}

#[test]
fn the_kept_events_fold_over_the_snapshot_as_over_the_deleted_events() {
    let kept = [deleted(5, &["a1"]), event("started", 6), added(7, "L2", &["a3"])];

    let from_snapshot = fold_from(&snapshot(), kept.iter().rev());

    assert_eq!(from_snapshot, fold(shared().iter().chain(&kept)));
}

#[test]
fn a_late_event_older_than_the_horizon_applies_at_the_horizon() {
    // `a1` deleted at second 1, before the `added` (second 2) that shared it:
    // in its place it would delete nothing (an account never added), but
    // that place is lost with the folded events, so it applies after them.
    let late = deleted(1, &["a1"]);

    let state = fold_from(&snapshot(), [&late]);

    let in_place = fold(shared().iter().chain([&late]));
    assert_eq!(accounts_of(&in_place)[0].2, AccountStatus::Active, "in its place it changes nothing");
    let statuses: Vec<_> = accounts_of(&state).into_iter().map(|(id, _, status)| (id, status)).collect();
    assert_eq!(statuses, [("a1".to_owned(), AccountStatus::Deleted), ("a2".to_owned(), AccountStatus::Active)]);
    assert_eq!(state.consent.state, ConsentState::Granted);
    assert_eq!(state.event_count, 4, "counted once");
    // The latest event folded in is still the snapshot's.
    assert_eq!(state.last_event, snapshot().last_event);
}

#[test]
fn a_late_event_keeps_its_own_dates() {
    // The snapshot starts at second 0; a `cancel` from before it moves the
    // authentication (it applies after `added`) dated by itself, and the
    // funnel's first event moves back to it.
    let late = event("cancel", -30);

    let state = fold_from(&snapshot(), [&late]);

    assert_eq!(state.authentication.state, AuthState::Abandoned);
    assert_eq!(state.authentication.reason, Some(AuthReason::Cancelled));
    assert_eq!(state.authentication.since, Some(late.occurred_at));
    assert_eq!(state.funnel.first_event_at, Some(late.occurred_at));
    assert_eq!(state.last_event, snapshot().last_event);
}

#[test]
fn the_kept_events_are_refolded_over_a_late_event() {
    // Kept: `a1` shared again at second 9. The late deletion (second 1)
    // applies before it, whatever order they arrive in.
    let late = deleted(1, &["a1"]);
    let kept = added(9, "L1", &["a1"]);

    let state = fold_from(&snapshot(), [&kept, &late]);

    assert!(accounts_of(&state).iter().all(|(_, _, status)| *status == AccountStatus::Active));
    assert_eq!(state.last_event.as_ref().map(|l| l.event_id.as_str()), Some(kept.event_id.as_str()));
    assert_eq!(state.event_count, 5);
}

#[test]
fn a_late_event_is_out_of_order_for_the_consumer() {
    // The stored state after the late event still ends at the snapshot's
    // last event, so a later event applies incrementally and an earlier one
    // makes the consumer recompute from the snapshot.
    let late = deleted(1, &["a1"]);
    let state = fold_from(&snapshot(), [&late]);

    assert!(!is_in_order(&state, &event("mfa", 1)));
    let next = event("done", 9);
    assert!(is_in_order(&state, &next));
    let mut incremental = state.clone();
    apply(&mut incremental, &next);
    assert_eq!(incremental, fold_from(&snapshot(), [&next, &late]));
}
