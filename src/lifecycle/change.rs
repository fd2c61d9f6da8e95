//! What of a lifecycle topic subscribers see change: the *visible*
//! lifecycle (consent, authentication, institution logins) and which of its
//! dimensions an event moved. Pure, like the rest of the state machine.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::{AccountStatus, Authentication, Consent, InstitutionLogin, Lifecycle};

/// A dimension of the visible lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The consent state.
    Consent,
    /// The authentication state, reason or error code.
    Authentication,
    /// The set of shared accounts or the status of one.
    Accounts,
}

/// The lifecycle as the query API and the change records show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VisibleLifecycle {
    /// See [`Lifecycle::consent`].
    pub consent: Consent,
    /// See [`Lifecycle::authentication`].
    pub authentication: Authentication,
    /// See [`Lifecycle::institution_logins`].
    pub institution_logins: Vec<InstitutionLogin>,
}

impl From<&Lifecycle> for VisibleLifecycle {
    fn from(state: &Lifecycle) -> Self {
        Self {
            consent: state.consent.clone(),
            authentication: state.authentication.clone(),
            institution_logins: state.institution_logins.clone(),
        }
    }
}

/// The dimensions in which `after` differs from `before` that subscribers
/// are told about: the consent state, its latest authorization (a
/// reauthorization moves when it lapses) or its latest revocation; the authentication state, reason or
/// error code; the set of shared accounts (by login and account id) or the
/// status of one. A change of `since` alone, or of an account's name, type
/// or last4, or of a login's institution or `oauth`, is not a change.
pub fn changed(before: &Lifecycle, after: &Lifecycle) -> Vec<Dimension> {
    let mut dimensions = Vec::new();
    let (a, b) = (&before.consent, &after.consent);
    if (a.state, a.authorized_at, &a.revocation) != (b.state, b.authorized_at, &b.revocation) {
        dimensions.push(Dimension::Consent);
    }
    let (a, b) = (&before.authentication, &after.authentication);
    if (a.state, a.reason, a.error_code) != (b.state, b.reason, b.error_code) {
        dimensions.push(Dimension::Authentication);
    }
    if shared_accounts(before) != shared_accounts(after) {
        dimensions.push(Dimension::Accounts);
    }
    dimensions
}

fn shared_accounts(state: &Lifecycle) -> BTreeSet<(Option<&str>, &str, AccountStatus)> {
    state
        .institution_logins
        .iter()
        .flat_map(|login| {
            login.accounts.iter().map(|a| (login.institution_login_id.as_deref(), a.account_id.as_str(), a.status))
        })
        .collect()
}
