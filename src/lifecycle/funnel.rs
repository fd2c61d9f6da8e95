//! How far a customer got through Connect: the steps of the connect funnel
//! they ever reached, when their first event occurred and which institution
//! they chose last (`docs/lifecycle.md`, "The connect funnel").
//!
//! Like the rest of the lifecycle it is a function of the set of events:
//! the steps are an OR over the events, the first event a minimum, and the
//! institution the latest by fold order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::{AuthReason, AuthState, Consent, ConsentState};
use super::transition::FlowPlace;
use crate::event::{ConnectEvent, EventType};

/// The funnel steps a customer reached, each implied by any later one:
/// a customer who authenticated chose an institution and started, whatever
/// events of the earlier steps were sent. MFA is a side step: only a
/// challenge seen counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Steps {
    /// Any event of the Connect flow (not `ping`, `accountsDeleted`, a
    /// revocation or an unknown type).
    pub started: bool,
    /// An event at a chosen institution: `adding`, `institutionSupported`,
    /// `institutionNotSupported`, `credentialsUpdated`, `mfa`,
    /// `invalidCredentials`, `unableToConnect`, `discovered`, `added`.
    pub institution_chosen: bool,
    /// The institution asked for a second factor (`mfa`, or
    /// `credentialsUpdated` with `mfa: true`).
    pub mfa_challenged: bool,
    /// The customer signed in (`discovered` or `added`).
    pub authenticated: bool,
    /// An account was shared (consent was granted at least once, even if
    /// revoked since).
    pub consent_granted: bool,
}

impl Steps {
    /// Bits of the `customers.funnel_steps` column.
    pub const STARTED: i16 = 1;
    /// See [`Steps::STARTED`].
    pub const INSTITUTION_CHOSEN: i16 = 2;
    /// See [`Steps::STARTED`].
    pub const MFA_CHALLENGED: i16 = 4;
    /// See [`Steps::STARTED`].
    pub const AUTHENTICATED: i16 = 8;
    /// See [`Steps::STARTED`].
    pub const CONSENT_GRANTED: i16 = 16;

    /// The column's value.
    pub fn bits(self) -> i16 {
        [
            (self.started, Self::STARTED),
            (self.institution_chosen, Self::INSTITUTION_CHOSEN),
            (self.mfa_challenged, Self::MFA_CHALLENGED),
            (self.authenticated, Self::AUTHENTICATED),
            (self.consent_granted, Self::CONSENT_GRANTED),
        ]
        .into_iter()
        .filter(|(reached, _)| *reached)
        .fold(0, |bits, (_, bit)| bits | bit)
    }

    /// The steps of a column's value (the inverse of [`Steps::bits`]).
    pub fn from_bits(bits: i16) -> Self {
        let reached = |bit: i16| bits & bit != 0;
        Self {
            started: reached(Self::STARTED),
            institution_chosen: reached(Self::INSTITUTION_CHOSEN),
            mfa_challenged: reached(Self::MFA_CHALLENGED),
            authenticated: reached(Self::AUTHENTICATED),
            consent_granted: reached(Self::CONSENT_GRANTED),
        }
    }
}

/// A customer's progress through the connect funnel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct FunnelProgress {
    /// `occurred_at` of the customer's first event (of any type): the
    /// funnel statistics count a customer in the window holding it. Null
    /// only in a lifecycle stored before the funnel existed (the consumer
    /// recomputes such a customer at their next event; `connectflow
    /// reproject` does all).
    #[serde(with = "super::rfc3339_ms_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_event_at: Option<DateTime<Utc>>,
    /// The institution of the latest event at a chosen institution that
    /// named one: the institution the funnel statistics count the customer
    /// under.
    pub institution_id: Option<String>,
    /// The steps reached.
    pub steps: Steps,
}

impl FunnelProgress {
    /// Whether this was stored before the funnel existed, so that it says
    /// nothing about the `event_count` events already folded.
    pub fn is_missing(&self, event_count: u64) -> bool {
        event_count > 0 && self.first_event_at.is_none()
    }
}

/// What the funnel counts of a customer: the steps they reached and the
/// authentication and consent they have now. Customers alike in these are
/// counted together (`/v1/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The funnel steps reached.
    pub steps: Steps,
    /// The authentication state now.
    pub authentication: AuthState,
    /// Its reason (`failed` and `abandoned` only).
    pub reason: Option<AuthReason>,
    /// The consent state now.
    pub consent: ConsentState,
}

/// Folds `event`, after the rest of the lifecycle took it into account
/// (`authentication` and `consent` are the states after it).
pub fn advance(funnel: &mut FunnelProgress, event: &ConnectEvent, authentication: AuthState, consent: &Consent) {
    if funnel.first_event_at.is_none_or(|first| event.occurred_at < first) {
        funnel.first_event_at = Some(event.occurred_at);
    }
    let steps = &mut funnel.steps;
    let place = super::transition::place_in_flow(&event.event_type);
    let (in_flow, at_institution) = (place != FlowPlace::Outside, place == FlowPlace::AtInstitution);
    if at_institution && let Some(institution_id) = &event.institution_id {
        funnel.institution_id = Some(institution_id.clone());
    }
    steps.consent_granted |= consent.granted_at.is_some();
    steps.authenticated |=
        steps.consent_granted || matches!(event.event_type, EventType::Discovered | EventType::Added);
    steps.mfa_challenged |= authentication == AuthState::MfaChallenge;
    steps.institution_chosen |= at_institution || steps.authenticated || steps.mfa_challenged;
    steps.started |= in_flow || steps.institution_chosen;
}
