//! One row per transition of `docs/lifecycle.md`.

use super::*;

/// The row's event sets the dimension's `since`.
const MOVES: bool = true;
/// The dimension keeps the `since` the history gave it.
const STAYS: bool = false;

struct Row {
    name: &'static str,
    history: Vec<ConnectEvent>,
    event: ConnectEvent,
    /// State, reason, error code, and whether `since` moves.
    auth: (AuthState, Option<AuthReason>, Option<i64>, bool),
    /// State, and whether `since` moves.
    consent: (ConsentState, bool),
    accounts: &'static [(&'static str, AccountStatus)],
}

#[test]
fn each_transition_row() {
    use AccountStatus::{Active, Deleted};
    use AuthReason as R;
    use AuthState as A;
    use ConsentState as C;
    let in_progress = || vec![event("started", 0)];
    let in_mfa = || vec![event("started", 0), event("mfa", 1)];
    let rows = vec![
        Row {
            name: "started clears a failure",
            history: vec![event("started", 0), event("invalidCredentials", 1)],
            event: event("started", 2),
            auth: (A::InProgress, None, None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "started after sharing leaves the accounts alone",
            history: shared(),
            event: event("started", 5),
            auth: (A::InProgress, None, None, MOVES),
            consent: (C::Granted, STAYS),
            accounts: &[("a1", Active), ("a2", Active)],
        },
        Row {
            name: "adding from not_started",
            history: vec![],
            event: ConnectEvent {
                institution_id: Some(INSTITUTION.to_owned()),
                oauth: Some(true),
                ..event("adding", 1)
            },
            auth: (A::InProgress, None, None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "adding while in_progress does not move since",
            history: in_progress(),
            event: event("adding", 1),
            auth: (A::InProgress, None, None, STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "credentialsUpdated with mfa",
            history: in_progress(),
            event: mfa_updated(1, Some(true)),
            auth: (A::MfaChallenge, None, None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "credentialsUpdated without mfa stays in_progress",
            history: in_progress(),
            event: mfa_updated(1, Some(false)),
            auth: (A::InProgress, None, None, STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "credentialsUpdated with no mfa field answers a challenge",
            history: in_mfa(),
            event: mfa_updated(2, None),
            auth: (A::InProgress, None, None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "mfa",
            history: in_progress(),
            event: event("mfa", 1),
            auth: (A::MfaChallenge, None, None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "discovered authenticates but shares nothing",
            history: in_mfa(),
            event: ConnectEvent {
                institution_id: Some(INSTITUTION.to_owned()),
                accounts: vec![account("a1", Some("L1"))],
                ..event("discovered", 2)
            },
            auth: (A::Authenticated, None, None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "added shares the accounts",
            history: in_progress(),
            event: added(2, "L1", &["a2", "a1"]),
            auth: (A::Authenticated, None, None, MOVES),
            consent: (C::Granted, MOVES),
            accounts: &[("a1", Active), ("a2", Active)],
        },
        Row {
            name: "added after discovered: already authenticated",
            history: vec![event("started", 0), event("discovered", 1)],
            event: added(2, "L1", &["a1"]),
            auth: (A::Authenticated, None, None, STAYS),
            consent: (C::Granted, MOVES),
            accounts: &[("a1", Active)],
        },
        Row {
            name: "added re-activates a deleted account",
            history: vec![added(1, "L1", &["a1"]), deleted(2, &["a1"])],
            event: added(3, "L1", &["a1"]),
            auth: (A::Authenticated, None, None, STAYS),
            consent: (C::Granted, MOVES),
            accounts: &[("a1", Active)],
        },
        Row {
            name: "invalidCredentials",
            history: in_progress(),
            event: event("invalidCredentials", 1),
            auth: (A::Failed, Some(R::InvalidCredentials), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "unableToConnect keeps the code",
            history: in_mfa(),
            event: unable(2, 103),
            auth: (A::Failed, Some(R::UnableToConnect), Some(103), MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "unableToConnect with another code moves since",
            history: vec![event("started", 0), unable(1, 102)],
            event: unable(2, 103),
            auth: (A::Failed, Some(R::UnableToConnect), Some(103), MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "unableToConnect with the same code does not move since",
            history: vec![event("started", 0), unable(1, 103)],
            event: unable(2, 103),
            auth: (A::Failed, Some(R::UnableToConnect), Some(103), STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "another failure reason moves since",
            history: vec![event("started", 0), unable(1, 103)],
            event: event("invalidCredentials", 2),
            auth: (A::Failed, Some(R::InvalidCredentials), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "institutionNotFound",
            history: in_progress(),
            event: ConnectEvent { query: Some("no such bank".to_owned()), ..event("institutionNotFound", 1) },
            auth: (A::Failed, Some(R::InstitutionNotFound), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "institutionNotSupported",
            history: in_progress(),
            event: event("institutionNotSupported", 1),
            auth: (A::Failed, Some(R::InstitutionNotSupported), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "cancel",
            history: in_mfa(),
            event: event("cancel", 2),
            auth: (A::Abandoned, Some(R::Cancelled), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "done while in_progress abandons",
            history: in_progress(),
            event: event("done", 1),
            auth: (A::Abandoned, Some(R::Abandoned), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "done while mfa_challenge abandons",
            history: in_mfa(),
            event: event("done", 2),
            auth: (A::Abandoned, Some(R::Abandoned), None, MOVES),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "done after added changes nothing",
            history: shared(),
            event: event("done", 3),
            auth: (A::Authenticated, None, None, STAYS),
            consent: (C::Granted, STAYS),
            accounts: &[("a1", Active), ("a2", Active)],
        },
        Row {
            name: "done after a failure changes nothing",
            history: vec![event("started", 0), unable(1, 103)],
            event: event("done", 2),
            auth: (A::Failed, Some(R::UnableToConnect), Some(103), STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "done before anything changes nothing",
            history: vec![],
            event: event("done", 2),
            auth: (A::NotStarted, None, None, STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "accountsDeleted of one of two accounts",
            history: shared(),
            event: deleted(4, &["a1"]),
            auth: (A::Authenticated, None, None, STAYS),
            consent: (C::Granted, STAYS),
            accounts: &[("a1", Deleted), ("a2", Active)],
        },
        Row {
            name: "accountsDeleted of the last active account revokes",
            history: shared(),
            event: deleted(4, &["a2", "a1"]),
            auth: (A::Authenticated, None, None, STAYS),
            consent: (C::Revoked, MOVES),
            accounts: &[("a1", Deleted), ("a2", Deleted)],
        },
        Row {
            name: "accountsDeleted of an account never added is ignored",
            history: in_progress(),
            event: deleted(1, &["a9"]),
            auth: (A::InProgress, None, None, STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "institutionSupported is history only",
            history: in_progress(),
            event: event("institutionSupported", 1),
            auth: (A::InProgress, None, None, STAYS),
            consent: (C::None, STAYS),
            accounts: &[],
        },
        Row {
            name: "an unknown type is history only",
            history: shared(),
            event: ConnectEvent { mfa: Some(true), ..event("somethingNew", 3) },
            auth: (A::Authenticated, None, None, STAYS),
            consent: (C::Granted, STAYS),
            accounts: &[("a1", Active), ("a2", Active)],
        },
    ];

    for row in rows {
        let before = fold(&row.history);
        let mut after = before.clone();
        apply(&mut after, &row.event);
        let name = row.name;
        let moved_at = Some(row.event.occurred_at);

        let (auth_state, reason, error_code, auth_moves) = row.auth;
        let auth = &after.authentication;
        assert_eq!(
            (auth.state, auth.reason, auth.error_code),
            (auth_state, reason, error_code),
            "{name}: authentication"
        );
        let auth_since = if auth_moves { moved_at } else { before.authentication.since };
        assert_eq!(auth.since, auth_since, "{name}: authentication since");
        let (consent, consent_moves) = row.consent;
        assert_eq!(after.consent.state, consent, "{name}: consent");
        let consent_since = if consent_moves { moved_at } else { before.consent.since };
        assert_eq!(after.consent.since, consent_since, "{name}: consent since");
        let accounts: Vec<_> = accounts_of(&after).into_iter().map(|(id, _, status)| (id, status)).collect();
        let expected: Vec<_> = row.accounts.iter().map(|(id, status)| ((*id).to_owned(), *status)).collect();
        assert_eq!(accounts, expected, "{name}: accounts");
        assert_eq!(after.event_count, before.event_count + 1, "{name}: event_count");
        let last = after.last_event.as_ref().map(LastEvent::order_key);
        assert_eq!(last, Some(row.event.order_key()), "{name}: last_event");
    }
}
