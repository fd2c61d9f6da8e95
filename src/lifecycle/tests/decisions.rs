//! The design decisions of `docs/lifecycle.md` where the contract is silent, and the
//! consumer's helpers.

use super::*;

#[test]
fn accounts_without_a_login_id_group_under_a_login_without_id() {
    let no_login = ConnectEvent {
        institution_login_id: None,
        accounts: vec![account("a2", None), account("a1", None)],
        ..added(1, "unused", &[])
    };

    let state = fold([&no_login]);

    assert_eq!(state.institution_logins.len(), 1);
    assert_eq!(state.institution_logins[0].institution_login_id, None);
    assert_eq!(state.institution_logins[0].institution_id.as_deref(), Some(INSTITUTION));
    assert_eq!(state.consent.state, ConsentState::Granted);

    // The same account listed later under a login moves there; the emptied group goes.
    let state = fold(&[no_login, added(2, "L1", &["a1", "a2"])]);

    let logins: Vec<_> = state.institution_logins.iter().map(|l| l.institution_login_id.as_deref()).collect();
    assert_eq!(logins, [Some("L1")]);
    assert_eq!(accounts_of(&state).len(), 2);
}

#[test]
fn an_account_without_its_own_login_id_takes_the_events() {
    let mixed = ConnectEvent {
        institution_login_id: Some("L1".to_owned()),
        accounts: vec![account("a1", Some("L1")), account("a2", None), account("a3", Some("L2"))],
        ..added(1, "L1", &[])
    };

    let state = fold(&[mixed]);

    let accounts: Vec<_> = accounts_of(&state).into_iter().map(|(id, login, _)| (id, login)).collect();
    let expected = [("a1", "L1"), ("a2", "L1"), ("a3", "L2")].map(|(a, l)| (a.to_owned(), Some(l.to_owned())));
    assert_eq!(accounts, expected);
}

#[test]
fn logins_and_accounts_are_sorted_by_id() {
    let events = [
        added(1, "L2", &["a9", "a3"]),
        ConnectEvent { institution_login_id: None, accounts: vec![account("a5", None)], ..added(2, "x", &[]) },
        added(3, "L1", &["a7", "a1"]),
    ];

    let state = fold(&events);

    let order: Vec<_> = accounts_of(&state).into_iter().map(|(id, login, _)| (login, id)).collect();
    let expected = [(None, "a5"), (Some("L1"), "a1"), (Some("L1"), "a7"), (Some("L2"), "a3"), (Some("L2"), "a9")]
        .map(|(l, a)| (l.map(str::to_owned), a.to_owned()));
    assert_eq!(order, expected);
}

#[test]
fn added_falls_back_on_the_pending_adding() {
    let adding = ConnectEvent { institution_id: Some(INSTITUTION.to_owned()), oauth: Some(true), ..event("adding", 1) };
    let bare_added = ConnectEvent { institution_id: None, oauth: None, ..added(2, "L1", &["a1"]) };

    let state = fold(&[adding.clone(), bare_added]);

    let login = &state.institution_logins[0];
    assert_eq!((login.institution_id.as_deref(), login.oauth), (Some(INSTITUTION), Some(true)));
    assert_eq!(state.pending_adding, None, "the added used it");

    // The added's own oauth wins.
    let state = fold(&[adding.clone(), ConnectEvent { oauth: Some(false), ..added(2, "L1", &["a1"]) }]);
    assert_eq!(state.institution_logins[0].oauth, Some(false));

    // An adding for another institution says nothing about this login.
    let other = ConnectEvent { institution_id: Some("999".to_owned()), ..adding.clone() };
    let state = fold(&[other, ConnectEvent { oauth: None, ..added(2, "L1", &["a1"]) }]);
    assert_eq!(state.institution_logins[0].oauth, None);

    // A new session forgets the earlier adding.
    let state = fold(&[adding, event("started", 2), ConnectEvent { oauth: None, ..added(3, "L1", &["a1"]) }]);
    assert_eq!(state.institution_logins[0].oauth, None);
}

#[test]
fn adding_is_pending_until_added() {
    let adding = ConnectEvent { institution_id: Some(INSTITUTION.to_owned()), oauth: Some(true), ..event("adding", 1) };

    let state = fold(&[adding]);

    let pending = PendingAdding { institution_id: Some(INSTITUTION.to_owned()), oauth: Some(true) };
    assert_eq!(state.pending_adding, Some(pending));
    assert!(state.institution_logins.is_empty(), "no login before an added names one");
}

#[test]
fn a_login_keeps_its_oauth_when_a_later_added_omits_it() {
    let first = ConnectEvent { oauth: Some(true), ..added(1, "L1", &["a1"]) };
    let second = ConnectEvent { oauth: None, institution_id: None, ..added(2, "L1", &["a2"]) };

    let state = fold(&[first, second]);

    let login = &state.institution_logins[0];
    assert_eq!((login.institution_id.as_deref(), login.oauth), (Some(INSTITUTION), Some(true)));
}

#[test]
fn a_re_added_account_keeps_what_the_new_listing_omits() {
    let bare = AccountRef {
        account_id: Some("a1".to_owned()),
        institution_login_id: Some("L1".to_owned()),
        ..Default::default()
    };
    let events =
        [added(1, "L1", &["a1"]), deleted(2, &["a1"]), ConnectEvent { accounts: vec![bare], ..added(3, "L1", &[]) }];

    let state = fold(&events);

    let a1 = &state.institution_logins[0].accounts[0];
    assert_eq!(a1.status, AccountStatus::Active);
    assert_eq!(
        (a1.account_type.as_deref(), a1.last4.as_deref(), a1.name.as_deref()),
        (Some("checking"), Some("1111"), Some("Account a1"))
    );
}

#[test]
fn an_account_without_id_is_not_recorded() {
    let nameless = AccountRef { account_id: None, ..account("x", Some("L1")) };

    let state = fold(&[ConnectEvent { accounts: vec![nameless], ..added(1, "L1", &[]) }]);

    assert!(state.institution_logins.is_empty());
    assert_eq!(state.consent.state, ConsentState::None);
    assert_eq!(state.authentication.state, AuthState::Authenticated);
}

#[test]
fn a_deletion_dated_before_the_added_does_not_delete() {
    // Whatever order they arrive in, the fold puts the deletion first.
    let events = [added(2, "L1", &["a1"]), deleted(1, &["a1"])];

    let state = fold(&events);

    assert_eq!(accounts_of(&state), [("a1".to_owned(), Some("L1".to_owned()), AccountStatus::Active)]);
    assert_eq!(state.consent.state, ConsentState::Granted);
}

#[test]
fn is_in_order_compares_occurred_at_then_event_id() {
    let first = ConnectEvent { event_id: "b".to_owned(), ..event("started", 1) };
    let state = fold([&first]);

    let same_time_later_id = ConnectEvent { event_id: "c".to_owned(), ..event("mfa", 1) };
    let same_time_earlier_id = ConnectEvent { event_id: "a".to_owned(), ..event("mfa", 1) };

    assert!(is_in_order(&Lifecycle::default(), &first));
    assert!(is_in_order(&state, &same_time_later_id));
    assert!(!is_in_order(&state, &same_time_earlier_id));
    assert!(!is_in_order(&state, &first), "an event is not after itself");
    assert!(!is_in_order(&state, &event("mfa", 0)));
    assert!(is_in_order(&state, &ConnectEvent { event_id: "a".to_owned(), ..event("mfa", 2) }));
}

#[test]
fn advance_applies_a_later_batch_in_key_order() {
    let mut state = fold(&[event("started", 0)]);
    let batch = [deleted(3, &["a1"]), added(2, "L1", &["a1"]), added(2, "L1", &["a1"])];

    let outcome = advance(&mut state, &batch, |_, _, _| {});

    assert_eq!(outcome, Advance::Applied);
    assert_eq!(state, fold(&[event("started", 0), added(2, "L1", &["a1"]), deleted(3, &["a1"])]));
    assert_eq!(state.event_count, 3, "the repeat within the batch counts once");
}

#[test]
fn advance_leaves_the_state_alone_when_an_event_is_older() {
    let stored = fold(&[event("started", 0), event("mfa", 5)]);
    let mut state = stored.clone();

    let outcome = advance(&mut state, &[event("cancel", 6), event("invalidCredentials", 3)], |_, _, _| {});

    assert_eq!(outcome, Advance::Recompute);
    assert_eq!(state, stored);
    assert_eq!(advance(&mut state, [], |_, _, _| {}), Advance::Applied);
    assert_eq!(state, stored);
}

#[test]
fn fold_keeps_the_first_copy_of_an_event_id() {
    // A body without a usable eventId prefix is dated by reception, so two
    // deliveries of one event can carry different occurred_at.
    let first = ConnectEvent { event_id: "sha256:ab".to_owned(), ..event("started", 1) };
    let retry = ConnectEvent { occurred_at: at(9), received_at: at(9), ..first.clone() };

    let state = fold(&[retry.clone(), first.clone()]);

    assert_eq!(state.event_count, 1);
    assert_eq!(state.last_event.map(|last| last.occurred_at), Some(at(1)));

    // Copies with one key: the first received wins whatever the input order.
    let later_copy = ConnectEvent { event_type: EventType::Cancel, received_at: at(5), ..first.clone() };
    assert_eq!(fold(&[later_copy.clone(), first.clone()]), fold(&[first.clone(), later_copy]));
    assert_eq!(fold(&[retry, first]).authentication.state, AuthState::InProgress);
}

/// Dated authorizations (issue 14): each login is authorized by the latest
/// `added` that listed its accounts, consent's `authorized_at` is the latest
/// of the logins with an active account, and `granted_at` the first grant.
#[test]
fn authorizations_are_dated_by_the_latest_added_of_each_login() {
    let first = fold(&[event("started", 0), added(2, "L1", &["a1"])]);
    assert_eq!(first.institution_logins[0].authorized_at, Some(at(2)));
    assert_eq!((first.consent.granted_at, first.consent.authorized_at), (Some(at(2)), Some(at(2))));

    // A Connect Fix session a year later lists the same account again: a
    // reauthorization; the first grant stays.
    let later = 365 * 24 * 3600;
    let fixed = fold(&[event("started", 0), added(2, "L1", &["a1"]), added(later, "L1", &["a1"])]);
    assert_eq!(fixed.institution_logins[0].authorized_at, Some(at(later)));
    assert_eq!((fixed.consent.granted_at, fixed.consent.authorized_at), (Some(at(2)), Some(at(later))));

    // Two logins: consent follows the latest one with an active account.
    let two = fold(&[added(2, "L1", &["a1"]), added(5, "L2", &["b1"])]);
    assert_eq!(two.consent.authorized_at, Some(at(5)));
    let second_deleted = fold(&[added(2, "L1", &["a1"]), added(5, "L2", &["b1"]), deleted(7, &["b1"])]);
    assert_eq!(second_deleted.consent.state, ConsentState::Granted);
    assert_eq!(second_deleted.consent.authorized_at, Some(at(2)), "L2 shares nothing active any more");
    assert_eq!(second_deleted.institution_logins[1].authorized_at, Some(at(5)), "the login keeps its date");

    // Nothing active: no current authorization, but the first grant stays;
    // a new `added` is a new authorization.
    let revoked = fold(&[added(2, "L1", &["a1"]), deleted(3, &["a1"])]);
    assert_eq!(revoked.consent.state, ConsentState::Revoked);
    assert_eq!((revoked.consent.granted_at, revoked.consent.authorized_at), (Some(at(2)), None));
    let again = fold(&[added(2, "L1", &["a1"]), deleted(3, &["a1"]), added(9, "L1", &["a1"])]);
    assert_eq!((again.consent.granted_at, again.consent.authorized_at), (Some(at(2)), Some(at(9))));

    // `discovered` lists accounts but authorizes nothing.
    let discovered = fold(&[ConnectEvent { accounts: vec![account("a1", Some("L1"))], ..event("discovered", 1) }]);
    assert_eq!((discovered.consent.granted_at, discovered.consent.authorized_at), (None, None));
}

/// A reauthorization is a visible change of consent (when it lapses moves),
/// even though the consent state and the accounts stay the same.
#[test]
fn a_reauthorization_is_a_change_of_consent() {
    let before = fold(&[added(2, "L1", &["a1"])]);
    let after = fold(&[added(2, "L1", &["a1"]), added(100, "L1", &["a1"])]);
    assert_eq!(crate::lifecycle::changed(&before, &after), vec![crate::lifecycle::Dimension::Consent]);
}

fn revoked(second: i64, login: Option<&str>) -> ConnectEvent {
    ConnectEvent {
        source: crate::event::EventSource::Connectflow,
        revoked_by: Some(crate::event::RevokedBy::Customer),
        reason: Some("moved bank".to_owned()),
        institution_login_id: login.map(str::to_owned),
        ..event("connectflow.consent.revoked", second)
    }
}

/// Revocations recorded by the issuer (issue 14).
#[test]
fn a_revocation_revokes_the_active_accounts_of_its_login_or_of_all() {
    let two = [added(2, "L1", &["a1"]), added(3, "L2", &["b1"])];

    let one = fold(two.iter().chain([&revoked(5, Some("L1"))]));
    assert_eq!(one.consent.state, ConsentState::Granted, "L2 still shares b1");
    assert_eq!(one.institution_logins[0].accounts[0].status, AccountStatus::Revoked);
    assert_eq!(one.institution_logins[1].accounts[0].status, AccountStatus::Active);
    let revocation = one.consent.revocation.clone().expect("recorded");
    assert_eq!(
        (revocation.revoked_at, revocation.revoked_by, revocation.institution_login_id.as_deref()),
        (at(5), crate::event::RevokedBy::Customer, Some("L1"))
    );
    assert_eq!(revocation.reason.as_deref(), Some("moved bank"));
    assert_eq!(one.consent.authorized_at, Some(at(3)));

    let all = fold(two.iter().chain([&revoked(5, None)]));
    assert_eq!(all.consent.state, ConsentState::Revoked);
    assert_eq!((all.consent.since, all.consent.authorized_at), (Some(at(5)), None));
    assert!(all.institution_logins.iter().flat_map(|l| &l.accounts).all(|a| a.status == AccountStatus::Revoked));

    // A later `added` for the login is a new grant; the revocation stays on
    // record.
    let regranted = fold(two.iter().chain([&revoked(5, None), &added(9, "L1", &["a1"])]));
    assert_eq!(regranted.consent.state, ConsentState::Granted);
    assert_eq!(regranted.consent.authorized_at, Some(at(9)));
    assert!(regranted.consent.revocation.is_some());

    // The same event type from a webhook (source finicity) is an unknown
    // type: a signed body cannot revoke.
    let forged = ConnectEvent { source: crate::event::EventSource::Finicity, ..revoked(5, None) };
    let state = fold(two.iter().chain([&forged]));
    assert_eq!(state.consent.state, ConsentState::Granted);
    assert_eq!(state.consent.revocation, None);
}

#[test]
fn a_flow_with_a_revocation_ends_the_same_in_any_order() {
    let events = vec![
        event("started", 0),
        added(2, "L1", &["a1"]),
        added(3, "L2", &["b1"]),
        event("done", 4),
        revoked(5, Some("L2")),
        deleted(6, &["a1"]),
    ];
    let in_order = fold(&events);
    assert_eq!(in_order.consent.state, ConsentState::Revoked);
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(fold(&reversed), in_order);
    for rotation in 1..events.len() {
        let mut rotated = events.clone();
        rotated.rotate_left(rotation);
        assert_eq!(fold(&rotated), in_order, "rotation {rotation}");
    }
}
