//! Property tests: the lifecycle is a function of the set of distinct events.

use std::collections::HashSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::*;
use crate::event::{AccountRef, EventType, SCHEMA_V1};

/// Every type the transition table names, one it records only, and one it
/// has never heard of.
const EVENT_TYPES: &[&str] = &[
    "started",
    "adding",
    "credentialsUpdated",
    "mfa",
    "discovered",
    "added",
    "invalidCredentials",
    "unableToConnect",
    "institutionNotFound",
    "institutionNotSupported",
    "cancel",
    "done",
    "accountsDeleted",
    "institutionSupported",
    "somethingNew",
    // connectflow's own: applied only with `source: "connectflow"` (the
    // generator gives it that source half of the time).
    "connectflow.consent.revoked",
];
const ACCOUNT_IDS: &[&str] = &["a1", "a2", "a3"];
const LOGIN_IDS: &[&str] = &["L1", "L2"];
const INSTITUTION_IDS: &[&str] = &["i1", "i2"];

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).single().expect("valid date")
}

fn some_of(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    option::of(select(values).prop_map(str::to_owned))
}

fn arb_account() -> impl Strategy<Value = AccountRef> {
    (
        option::weighted(0.9, select(ACCOUNT_IDS).prop_map(str::to_owned)),
        some_of(LOGIN_IDS),
        some_of(&["checking", "savings"]),
        some_of(&["1111", "2222"]),
        some_of(&["Checking", "Savings"]),
    )
        .prop_map(|(account_id, institution_login_id, account_type, last4, name)| AccountRef {
            account_id,
            institution_login_id,
            account_type,
            status: Some("active".to_owned()),
            last4,
            name,
            aggregation_status_code: None,
        })
}

/// One event; its `event_id` is only a random prefix until [`arb_history`]
/// makes it unique.
fn arb_event() -> impl Strategy<Value = ConnectEvent> {
    let payload = (
        some_of(INSTITUTION_IDS),
        some_of(LOGIN_IDS),
        any::<Option<bool>>(),
        any::<Option<bool>>(),
        vec(arb_account(), 0..3),
        // `a9` is never added.
        vec(select(&["a1", "a2", "a3", "a9"][..]).prop_map(str::to_owned), 0..4),
        option::of(100i64..103),
    );
    // Eight possible instants for up to 24 events: ties on occurred_at are
    // common, and the event id decides them.
    // Extra weight on the account events, so that revoked consent and
    // re-added accounts are common too.
    let event_type = prop_oneof![3 => select(EVENT_TYPES), 1 => select(&["added", "accountsDeleted"][..])];
    let revocation = (any::<bool>(), any::<bool>(), some_of(&["lost card", "moved bank"]));
    (event_type, 0i64..8, 0u8..100, 0i64..3000, payload, revocation).prop_map(
        |(event_type, second, id_prefix, delay_ms, payload, (ours, by_customer, reason))| {
            let (institution_id, institution_login_id, oauth, mfa, accounts, deleted, error_code) = payload;
            let occurred_at = base() + Duration::seconds(second);
            // As `normalise` does: accounts only on added/discovered, ids only on accountsDeleted.
            let event_type = EventType::parse(event_type);
            let lists_accounts = matches!(event_type, EventType::Added | EventType::Discovered);
            let accounts = if lists_accounts { accounts } else { vec![] };
            // As `normalise` does: the first account's login id, else the payload's.
            let institution_login_id =
                accounts.iter().find_map(|a| a.institution_login_id.clone()).or(institution_login_id);
            ConnectEvent {
                schema: SCHEMA_V1.to_owned(),
                event_id: format!("{id_prefix:02}"),
                customer_id: "1".parse().expect("a customer id"),
                program_id: crate::program::ProgramId::default(),
                consumer_id: None,
                institution_id,
                institution_login_id,
                oauth,
                mfa,
                accounts,
                deleted_account_ids: if event_type == EventType::AccountsDeleted { deleted } else { vec![] },
                error_code,
                query: None,
                occurred_at,
                received_at: occurred_at + Duration::milliseconds(delay_ms),
                webhook_data: None,
                webhook_data_dropped: false,
                source: if ours && event_type == EventType::ConsentRevoked {
                    crate::event::EventSource::Connectflow
                } else {
                    crate::event::EventSource::Finicity
                },
                revoked_by: (event_type == EventType::ConsentRevoked).then_some(if by_customer {
                    crate::event::RevokedBy::Customer
                } else {
                    crate::event::RevokedBy::Partner
                }),
                reason: if event_type == EventType::ConsentRevoked { reason } else { None },
                requested_by: None,
                event_type,
            }
        },
    )
}

/// The distinct events of one customer.
fn arb_history() -> impl Strategy<Value = Vec<ConnectEvent>> {
    vec(arb_event(), 0..24).prop_map(|events| {
        events
            .into_iter()
            .enumerate()
            .map(|(n, event)| ConnectEvent { event_id: format!("{}-{n:02}", event.event_id), ..event })
            .collect()
    })
}

/// A history and how it was delivered: shuffled, some events several times.
fn arb_delivery() -> impl Strategy<Value = (Vec<ConnectEvent>, Vec<ConnectEvent>)> {
    (arb_history(), vec(any::<Index>(), 0..8)).prop_flat_map(|(history, repeats)| {
        let mut delivered = history.clone();
        if !history.is_empty() {
            delivered.extend(repeats.iter().map(|i| history[i.index(history.len())].clone()));
        }
        (Just(history), Just(delivered).prop_shuffle())
    })
}

/// What the consumer does, one event at a time, with the state persisted and
/// reloaded between events: apply when in order, else recompute. Checks the
/// invariants after every step.
fn consume_one_by_one(delivered: &[ConnectEvent]) -> Result<Lifecycle, TestCaseError> {
    let mut recorded: Vec<ConnectEvent> = vec![];
    let mut state = Lifecycle::default();
    for event in delivered {
        if recorded.iter().any(|seen| seen.event_id == event.event_id) {
            continue;
        }
        recorded.push(event.clone());
        if is_in_order(&state, event) {
            apply(&mut state, event);
        } else {
            state = fold(&recorded);
        }
        check_invariants(&state, &recorded)?;
        state = reload(&state)?;
    }
    Ok(state)
}

fn reload(state: &Lifecycle) -> Result<Lifecycle, TestCaseError> {
    let persisted = serde_json::to_string(state).map_err(|e| TestCaseError::fail(e.to_string()))?;
    serde_json::from_str(&persisted).map_err(|e| TestCaseError::fail(e.to_string()))
}

/// What must hold of the fold of `events` (distinct ids).
fn check_invariants(state: &Lifecycle, events: &[ConnectEvent]) -> Result<(), TestCaseError> {
    // (c) consent is the accounts' consent.
    let accounts: Vec<&Account> = state.institution_logins.iter().flat_map(|l| &l.accounts).collect();
    let consent = if accounts.is_empty() {
        ConsentState::None
    } else if accounts.iter().any(|a| a.status == AccountStatus::Active) {
        ConsentState::Granted
    } else {
        ConsentState::Revoked
    };
    prop_assert_eq!(state.consent.state, consent);
    prop_assert_eq!(state.consent.since.is_none(), consent == ConsentState::None);

    // (d) one count per distinct id; the last event is the greatest key.
    prop_assert_eq!(state.event_count, events.len() as u64);
    let greatest = events.iter().map(ConnectEvent::order_key).max();
    prop_assert_eq!(state.last_event.as_ref().map(LastEvent::order_key), greatest);

    // Deterministic shape: strictly sorted, each account once, no empty login.
    let logins: Vec<_> = state.institution_logins.iter().map(|l| &l.institution_login_id).collect();
    prop_assert!(logins.windows(2).all(|w| w[0] < w[1]), "logins not sorted: {:?}", logins);
    for login in &state.institution_logins {
        prop_assert!(!login.accounts.is_empty());
        prop_assert!(login.accounts.windows(2).all(|w| w[0].account_id < w[1].account_id));
    }
    let distinct: HashSet<&str> = accounts.iter().map(|a| a.account_id.as_str()).collect();
    prop_assert_eq!(distinct.len(), accounts.len());

    // Only accounts some `added` shared; a `discovered` one is never shared.
    let added: HashSet<&str> = events
        .iter()
        .filter(|e| e.event_type == EventType::Added)
        .flat_map(|e| e.accounts.iter().filter_map(|a| a.account_id.as_deref()))
        .collect();
    prop_assert!(distinct.is_subset(&added));

    let auth = &state.authentication;
    prop_assert_eq!(auth.since.is_none(), auth.state == AuthState::NotStarted);
    prop_assert_eq!(auth.reason.is_some(), matches!(auth.state, AuthState::Failed | AuthState::Abandoned));
    prop_assert!(auth.error_code.is_none() || auth.reason == Some(AuthReason::UnableToConnect));
    Ok(())
}

proptest! {
    /// (a) Neither delivery order nor repeats change the fold.
    #[test]
    fn fold_ignores_order_and_repeats((history, delivered) in arb_delivery()) {
        prop_assert_eq!(fold(&delivered), fold(&history));
    }

    /// (b) The consumer's incremental path ends where the fold of the set does.
    #[test]
    fn applying_as_delivered_equals_the_fold((history, delivered) in arb_delivery()) {
        prop_assert_eq!(consume_one_by_one(&delivered)?, fold(&history));
    }

    /// (b) The same in batches, through `advance`.
    #[test]
    fn advancing_by_batches_equals_the_fold(
        (history, delivered) in arb_delivery(),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(delivered.len() + 1)).collect();
        cuts.extend([0, delivered.len()]);
        cuts.sort_unstable();
        let mut recorded: Vec<ConnectEvent> = vec![];
        let mut state = Lifecycle::default();
        for window in cuts.windows(2) {
            // The consumer records each batch's new ids, then advances or recomputes.
            let mut batch = vec![];
            for event in &delivered[window[0]..window[1]] {
                if !recorded.iter().any(|seen| seen.event_id == event.event_id) {
                    recorded.push(event.clone());
                    batch.push(event.clone());
                }
            }
            if advance(&mut state, &batch, |_, _, _| {}) == Advance::Recompute {
                state = fold(&recorded);
            }
            state = reload(&state)?;
        }
        prop_assert_eq!(state, fold(&history));
    }

    /// (c), (d) and the shape invariants hold of every fold.
    #[test]
    fn every_fold_is_consistent(history in arb_history()) {
        check_invariants(&fold(&history), &history)?;
    }

    /// A retry dated later (a body dated by reception) changes nothing.
    #[test]
    fn a_later_copy_of_an_event_changes_nothing(history in arb_history(), pick in any::<Index>(), ms in 1i64..10_000) {
        prop_assume!(!history.is_empty());
        let original = &history[pick.index(history.len())];
        let retry = ConnectEvent {
            occurred_at: original.occurred_at + Duration::milliseconds(ms),
            received_at: original.received_at + Duration::milliseconds(ms),
            ..original.clone()
        };
        let mut with_retry = history.clone();
        with_retry.push(retry);
        prop_assert_eq!(fold(&with_retry), fold(&history));
    }

    /// The persisted form rebuilds exactly the state.
    #[test]
    fn persisted_state_round_trips(history in arb_history()) {
        let state = fold(&history);
        prop_assert_eq!(reload(&state)?, state);
    }
}

/// A history cut at a horizon (one of the generator's instants, or past them
/// all): the events before it, and those at or after it as delivered later,
/// shuffled and some several times.
fn arb_cut() -> impl Strategy<Value = (Vec<ConnectEvent>, DateTime<Utc>, Vec<ConnectEvent>, Vec<ConnectEvent>)> {
    (arb_delivery(), 0i64..9).prop_map(|((history, delivered), second)| {
        let horizon = base() + Duration::seconds(second);
        let before: Vec<ConnectEvent> = history.iter().filter(|e| e.occurred_at < horizon).cloned().collect();
        let later: Vec<ConnectEvent> = delivered.into_iter().filter(|e| e.occurred_at >= horizon).collect();
        (history, horizon, before, later)
    })
}

/// The consumer from a snapshot: records each delivered event once (a copy
/// of a folded one is dropped, as the store drops it by its kept id), applies
/// it when in order, else recomputes from the snapshot and the recorded
/// events; the state persisted and reloaded between events.
fn consume_from_snapshot(
    snapshot: &Lifecycle,
    folded: &[ConnectEvent],
    delivered: &[ConnectEvent],
) -> Result<Lifecycle, TestCaseError> {
    let mut recorded: Vec<ConnectEvent> = vec![];
    let mut state = snapshot.clone();
    for event in delivered {
        let known = |seen: &ConnectEvent| seen.event_id == event.event_id;
        if folded.iter().any(known) || recorded.iter().any(known) {
            continue;
        }
        recorded.push(event.clone());
        if is_in_order(&state, event) {
            apply(&mut state, event);
        } else {
            state = fold_from(snapshot, &recorded);
        }
        state = reload(&state)?;
    }
    Ok(state)
}

proptest! {
    /// History retention: folding the events before any horizon into a
    /// (persisted) snapshot, then the later ones in any order and with
    /// repeats, gives the fold of them all; through `fold_from` and through
    /// the consumer's incremental path, with copies of folded events
    /// delivered again among them.
    #[test]
    fn folding_a_snapshot_then_the_later_events_equals_the_fold(
        (history, _horizon, before, later) in arb_cut(),
        retries in vec(any::<Index>(), 0..4),
    ) {
        let snapshot = reload(&fold(&before))?;
        prop_assert_eq!(fold_from(&snapshot, &later), fold(&history));
        let mut delivered = later.clone();
        if !before.is_empty() {
            for (n, retry) in retries.iter().enumerate() {
                delivered.insert(n.min(delivered.len()), before[retry.index(before.len())].clone());
            }
        }
        prop_assert_eq!(consume_from_snapshot(&snapshot, &before, &delivered)?, fold(&history));
    }

    /// A second snapshot at a later horizon, made from the first and the
    /// events between (the job's next run), changes nothing either.
    #[test]
    fn snapshots_at_successive_horizons_equal_the_fold(
        (history, first, before, later) in arb_cut(),
        step in 0i64..9,
    ) {
        let second = first + Duration::seconds(step);
        let between: Vec<ConnectEvent> = later.iter().filter(|e| e.occurred_at < second).cloned().collect();
        let after: Vec<ConnectEvent> = later.iter().filter(|e| e.occurred_at >= second).cloned().collect();
        let snapshot = reload(&fold_from(&reload(&fold(&before))?, &between))?;
        prop_assert_eq!(fold_from(&snapshot, &after), fold(&history));
    }

    /// A late event older than the horizon, new to the snapshot: applied at
    /// the horizon (after the folded events, before the kept ones). Every
    /// path agrees: `fold_from` of everything recorded, the consumer's
    /// incremental path, and the next snapshot that folds the late events
    /// in; the invariants hold (one count per distinct event, the last event
    /// the greatest key); and where every late event sorts after the
    /// snapshot's last one, the result is the plain fold.
    #[test]
    fn late_events_older_than_the_horizon_apply_at_the_horizon(
        (history, horizon, before, later) in arb_cut(),
        late_picks in vec(any::<Index>(), 0..4),
    ) {
        let mut late: Vec<ConnectEvent> = vec![];
        if !before.is_empty() {
            for pick in &late_picks {
                let event = &before[pick.index(before.len())];
                if !late.iter().any(|l| l.event_id == event.event_id) {
                    late.push(event.clone());
                }
            }
        }
        let folded: Vec<ConnectEvent> =
            before.iter().filter(|e| !late.iter().any(|l| l.event_id == e.event_id)).cloned().collect();
        let snapshot = reload(&fold(&folded))?;
        let mut delivered = late.clone();
        delivered.extend(later.iter().cloned());
        let expected = fold_from(&snapshot, &delivered);

        // The rule, spelled out: the late ones in order over the snapshot, then the rest.
        let mut by_hand = snapshot.clone();
        let mut late_sorted = late.clone();
        late_sorted.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        for event in &late_sorted {
            let greatest = by_hand.last_event.clone().into_iter().chain([LastEvent {
                event_id: event.event_id.clone(),
                event_type: event.event_type.clone(),
                occurred_at: event.occurred_at,
            }]).max_by(|a, b| a.order_key().cmp(&b.order_key()));
            apply(&mut by_hand, event);
            by_hand.last_event = greatest;
        }
        let kept_distinct = fold_from(&by_hand, &later);
        prop_assert_eq!(&kept_distinct, &expected);

        prop_assert_eq!(&consume_from_snapshot(&snapshot, &folded, &delivered)?, &expected);
        let next_snapshot = reload(&fold_from(&snapshot, &late))?;
        prop_assert_eq!(&fold_from(&next_snapshot, &later), &expected);
        let mut all_distinct = folded.clone();
        all_distinct.extend(late.iter().cloned());
        all_distinct.extend(history.iter().filter(|e| e.occurred_at >= horizon).cloned());
        check_invariants(&expected, &all_distinct)?;
        if late.iter().all(|l| is_in_order(&snapshot, l)) {
            prop_assert_eq!(&expected, &fold(&history));
        }
    }
}
