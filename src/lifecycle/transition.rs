//! One event's effect on a [`Lifecycle`]: the transition table of
//! `docs/lifecycle.md`.

use chrono::{DateTime, Utc};

use super::state::{
    Account, AccountStatus, AuthReason, AuthState, Authentication, Consent, ConsentState, InstitutionLogin, LastEvent,
    Lifecycle, PendingAdding, Revocation,
};
use crate::event::{AccountRef, ConnectEvent, EventSource, EventType, RevokedBy};

/// Applies one event that sorts after every event already applied, by
/// `(occurred_at, event_id)`.
///
/// The caller keeps that promise (see [`is_in_order`](super::is_in_order)):
/// an older event applied here would be folded in the wrong place, and an
/// event applied twice would be counted twice.
pub fn apply(state: &mut Lifecycle, event: &ConnectEvent) {
    let at = event.occurred_at;
    match event.event_type {
        // A new session: whatever an earlier `adding` said belongs to the old one.
        EventType::Started => state.pending_adding = None,
        EventType::Adding => {
            state.pending_adding =
                Some(PendingAdding { institution_id: event.institution_id.clone(), oauth: event.oauth });
        }
        EventType::Added => add_accounts(state, event),
        EventType::AccountsDeleted => delete_accounts(&mut state.institution_logins, &event.deleted_account_ids),
        EventType::ConsentRevoked if event.source == EventSource::Connectflow => revoke(state, event),
        _ => {}
    }
    if let Some((auth_state, reason, error_code)) = authentication_after(&state.authentication, event) {
        set_authentication(&mut state.authentication, auth_state, reason, error_code, at);
    }
    let authorized_at = latest_authorization(&state.institution_logins);
    set_consent(&mut state.consent, consent_of(&state.institution_logins), authorized_at, at);
    super::funnel::advance(&mut state.funnel, event, state.authentication.state, &state.consent);
    state.last_event =
        Some(LastEvent { event_id: event.event_id.clone(), event_type: event.event_type.clone(), occurred_at: at });
    state.event_count += 1;
}

/// Where an event type stands in the Connect flow, for the funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlowPlace {
    /// Not a step of the flow.
    Outside,
    /// A step before an institution is chosen (or without one).
    InFlow,
    /// A step at a chosen institution.
    AtInstitution,
}

/// The funnel's reading of an event type (`docs/lifecycle.md`, "The connect
/// funnel").
pub(super) fn place_in_flow(event_type: &EventType) -> FlowPlace {
    match event_type {
        EventType::Adding
        | EventType::InstitutionSupported
        | EventType::InstitutionNotSupported
        | EventType::CredentialsUpdated
        | EventType::Mfa
        | EventType::InvalidCredentials
        | EventType::UnableToConnect
        | EventType::Discovered
        | EventType::Added => FlowPlace::AtInstitution,
        EventType::Started | EventType::InstitutionNotFound | EventType::Cancel | EventType::Done => FlowPlace::InFlow,
        EventType::Ping
        | EventType::AccountsDeleted
        | EventType::ConsentRevoked
        | EventType::CustomerErased
        | EventType::Other(_) => FlowPlace::Outside,
    }
}

/// Where `event` takes the authentication, or `None` when it leaves it alone.
fn authentication_after(
    current: &Authentication,
    event: &ConnectEvent,
) -> Option<(AuthState, Option<AuthReason>, Option<i64>)> {
    let to = |state| Some((state, None, None));
    let fail = |reason| Some((AuthState::Failed, Some(reason), None));
    match event.event_type {
        EventType::Started | EventType::Adding => to(AuthState::InProgress),
        EventType::CredentialsUpdated if event.mfa == Some(true) => to(AuthState::MfaChallenge),
        EventType::CredentialsUpdated => to(AuthState::InProgress),
        EventType::Mfa => to(AuthState::MfaChallenge),
        EventType::Discovered | EventType::Added => to(AuthState::Authenticated),
        EventType::InvalidCredentials => fail(AuthReason::InvalidCredentials),
        EventType::UnableToConnect => Some((AuthState::Failed, Some(AuthReason::UnableToConnect), event.error_code)),
        EventType::InstitutionNotFound => fail(AuthReason::InstitutionNotFound),
        EventType::InstitutionNotSupported => fail(AuthReason::InstitutionNotSupported),
        EventType::Cancel => Some((AuthState::Abandoned, Some(AuthReason::Cancelled), None)),
        // `done` normally follows `added`; only a flow left half-way is abandoned by it.
        EventType::Done if matches!(current.state, AuthState::InProgress | AuthState::MfaChallenge) => {
            Some((AuthState::Abandoned, Some(AuthReason::Abandoned), None))
        }
        // Nothing the authentication shows (`ping` is never published;
        // `institutionSupported` waits for the sign-in; a revocation and
        // `accountsDeleted` change the consent; an erasure is applied by
        // the store, never folded, and a webhook naming its type is
        // recorded only, as are unknown types).
        EventType::Done
        | EventType::Ping
        | EventType::InstitutionSupported
        | EventType::AccountsDeleted
        | EventType::ConsentRevoked
        | EventType::CustomerErased
        | EventType::Other(_) => None,
    }
}

/// `since` moves only when something the API shows changes: landing again in
/// the same state, reason and error code is not a change.
fn set_authentication(
    auth: &mut Authentication,
    state: AuthState,
    reason: Option<AuthReason>,
    error_code: Option<i64>,
    at: DateTime<Utc>,
) {
    if (auth.state, auth.reason, auth.error_code) != (state, reason, error_code) {
        *auth = Authentication { state, since: Some(at), reason, error_code };
    }
}

fn set_consent(consent: &mut Consent, state: ConsentState, authorized_at: Option<DateTime<Utc>>, at: DateTime<Utc>) {
    if consent.state != state {
        consent.state = state;
        consent.since = Some(at);
    }
    if state == ConsentState::Granted && consent.granted_at.is_none() {
        consent.granted_at = Some(at);
    }
    consent.authorized_at = authorized_at;
}

/// The latest `authorized_at` among the logins that share an active account.
fn latest_authorization(logins: &[InstitutionLogin]) -> Option<DateTime<Utc>> {
    logins
        .iter()
        .filter(|login| login.accounts.iter().any(|account| account.status == AccountStatus::Active))
        .filter_map(|login| login.authorized_at)
        .max()
}

/// Consent is a view of the accounts, never stored apart from them, so the
/// two cannot disagree.
fn consent_of(logins: &[InstitutionLogin]) -> ConsentState {
    let mut accounts = logins.iter().flat_map(|login| &login.accounts).peekable();
    if accounts.peek().is_none() {
        ConsentState::None
    } else if accounts.any(|account| account.status == AccountStatus::Active) {
        ConsentState::Granted
    } else {
        ConsentState::Revoked
    }
}

/// `added`: the listed accounts become active under their login.
fn add_accounts(state: &mut Lifecycle, event: &ConnectEvent) {
    // The `adding` this `added` completes; one for another institution says
    // nothing about this login.
    let pending =
        state.pending_adding.take().filter(|pending| match (&pending.institution_id, &event.institution_id) {
            (Some(pending), Some(added)) => pending == added,
            _ => true,
        });
    let institution_id =
        event.institution_id.clone().or_else(|| pending.as_ref().and_then(|p| p.institution_id.clone()));
    let oauth = event.oauth.or_else(|| pending.as_ref().and_then(|p| p.oauth));

    let logins = &mut state.institution_logins;
    for listed in &event.accounts {
        // Without an id an account can be neither grouped, deleted nor re-added.
        let Some(account_id) = &listed.account_id else { continue };
        let login_id = listed.institution_login_id.clone().or_else(|| event.institution_login_id.clone());
        // An account belongs to one login: a re-added account moves to the
        // login it is listed under now (Finicity re-assigns login ids when an
        // institution moves to OAuth).
        let previous = take_account(logins, account_id);
        let login = login_mut(logins, login_id);
        if institution_id.is_some() {
            login.institution_id.clone_from(&institution_id);
        }
        if oauth.is_some() {
            login.oauth = oauth;
        }
        login.authorized_at = Some(event.occurred_at);
        let account = merged_account(account_id, listed, previous);
        match login.accounts.binary_search_by(|a| a.account_id.cmp(&account.account_id)) {
            Ok(at) => login.accounts[at] = account,
            Err(at) => login.accounts.insert(at, account),
        }
    }
    // A login exists to group accounts: one emptied by moves goes.
    logins.retain(|login| !login.accounts.is_empty());
}

/// Finicity may leave out any field: a re-added account keeps what an earlier
/// `added` said unless this one says otherwise.
fn merged_account(account_id: &str, listed: &AccountRef, previous: Option<Account>) -> Account {
    let (account_type, last4, name) = match previous {
        Some(previous) => (previous.account_type, previous.last4, previous.name),
        None => (None, None, None),
    };
    Account {
        account_id: account_id.to_owned(),
        account_type: listed.account_type.clone().or(account_type),
        status: AccountStatus::Active,
        last4: listed.last4.clone().or(last4),
        name: listed.name.clone().or(name),
    }
}

/// `accountsDeleted`: the listed accounts that were shared become deleted.
/// An id never added is ignored: nothing says which login it was under, and
/// consent is about the accounts seen shared.
fn delete_accounts(logins: &mut [InstitutionLogin], account_ids: &[String]) {
    for account_id in account_ids {
        if let Some(account) = logins
            .iter_mut()
            .flat_map(|login| login.accounts.iter_mut())
            .find(|account| &account.account_id == account_id)
        {
            account.status = AccountStatus::Deleted;
        }
    }
}

/// A revocation recorded by the issuer: the active accounts of the login
/// (of every login when none is named) become `revoked`, and the revocation
/// is kept on the consent. A later `added` shares them again: a new grant.
fn revoke(state: &mut Lifecycle, event: &ConnectEvent) {
    let login_id = event.institution_login_id.as_deref();
    for login in &mut state.institution_logins {
        if login_id.is_some() && login.institution_login_id.as_deref() != login_id {
            continue;
        }
        for account in &mut login.accounts {
            if account.status == AccountStatus::Active {
                account.status = AccountStatus::Revoked;
            }
        }
    }
    state.consent.revocation = Some(Revocation {
        revoked_at: event.occurred_at,
        revoked_by: event.revoked_by.unwrap_or(RevokedBy::Customer),
        institution_login_id: event.institution_login_id.clone(),
        reason: event.reason.clone(),
        event_id: event.event_id.clone(),
    });
}

fn take_account(logins: &mut [InstitutionLogin], account_id: &str) -> Option<Account> {
    logins.iter_mut().find_map(|login| {
        let at = login.accounts.binary_search_by(|a| a.account_id.as_str().cmp(account_id)).ok()?;
        Some(login.accounts.remove(at))
    })
}

/// The login with this id, inserted in sorted place when new.
fn login_mut(logins: &mut Vec<InstitutionLogin>, login_id: Option<String>) -> &mut InstitutionLogin {
    let at = match logins.binary_search_by(|login| login.institution_login_id.cmp(&login_id)) {
        Ok(at) => at,
        Err(at) => {
            let login = InstitutionLogin {
                institution_login_id: login_id,
                institution_id: None,
                oauth: None,
                authorized_at: None,
                accounts: vec![],
            };
            logins.insert(at, login);
            at
        }
    };
    &mut logins[at]
}
