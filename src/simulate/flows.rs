//! Realistic Finicity Connect flows: the webhook bodies Finicity sends for a
//! customer going through Connect, and the states each flow should end in.
//! Used by `connectflow simulate` and by the tests.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::event::EventType;
use crate::lifecycle::{AuthReason, AuthState, ConsentState, Steps};

/// A named flow: the webhooks Finicity sends for it and what the customer's
/// lifecycle must show after them. Everything about a flow is declared
/// here; nothing elsewhere branches on its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The `--flow` name.
    pub name: &'static str,
    /// What it rehearses.
    pub description: &'static str,
    /// The webhooks' event types, in the order Finicity sends them (each
    /// payload is [`payload`]'s for the type).
    pub events: &'static [EventType],
    /// The institution the customer chooses (`None`: none found).
    pub institution: Option<&'static str>,
    /// Whether the institution signs in with OAuth.
    pub oauth: bool,
    /// When set, every webhook but the last happened this long before the
    /// last one (a Connect Fix session renewing an old authorization).
    pub earlier_session_ago: Option<chrono::Duration>,
    /// Whether the flow ends with a revocation through the API (after its
    /// webhooks): see [`API_FLOWS`].
    pub revokes_through_api: bool,
    /// Consent state it should end in.
    pub expected_consent: ConsentState,
    /// Authentication state it should end in.
    pub expected_authentication: AuthState,
    /// The reason its authentication ends with (`failed` or `abandoned`);
    /// `None` for the others.
    pub expected_reason: Option<AuthReason>,
    /// The funnel steps a customer of this flow reaches: what `/v1/stats`
    /// must count for them.
    pub expected_steps: Steps,
}

/// A flow that signs in and shares accounts, without MFA.
const SHARED: Steps = Steps {
    started: true,
    institution_chosen: true,
    mfa_challenged: false,
    authenticated: true,
    consent_granted: true,
};
/// A flow that stops at the chosen institution.
const AT_INSTITUTION: Steps = Steps {
    started: true,
    institution_chosen: true,
    mfa_challenged: false,
    authenticated: false,
    consent_granted: false,
};

/// The fields every flow that ends as `legacy-success` does shares.
const SUCCESS: Flow = Flow {
    name: "legacy-success",
    description: "credentials, accounts discovered, accounts added, done",
    events: &[EventType::Started, EventType::Adding, EventType::Discovered, EventType::Added, EventType::Done],
    institution: Some(INSTITUTION),
    oauth: false,
    earlier_session_ago: None,
    revokes_through_api: false,
    expected_consent: ConsentState::Granted,
    expected_authentication: AuthState::Authenticated,
    expected_reason: None,
    expected_steps: SHARED,
};

/// A flow that fails at the chosen institution with `reason`.
const fn failing(
    name: &'static str,
    description: &'static str,
    events: &'static [EventType],
    reason: AuthReason,
) -> Flow {
    Flow {
        name,
        description,
        events,
        expected_consent: ConsentState::None,
        expected_authentication: AuthState::Failed,
        expected_reason: Some(reason),
        expected_steps: AT_INSTITUTION,
        ..SUCCESS
    }
}

/// Every flow, in `--list-flows` order.
pub const FLOWS: &[Flow] = &[
    SUCCESS,
    Flow {
        name: "oauth-success",
        description: "OAuth institution, accounts added, done",
        events: &[EventType::Started, EventType::Adding, EventType::Added, EventType::Done],
        oauth: true,
        ..SUCCESS
    },
    Flow {
        name: "mfa-success",
        description: "credentials, MFA challenge, accounts discovered and added, done",
        events: &[
            EventType::Started,
            EventType::Adding,
            EventType::CredentialsUpdated,
            EventType::Mfa,
            EventType::Discovered,
            EventType::Added,
            EventType::Done,
        ],
        expected_steps: Steps { mfa_challenged: true, ..SHARED },
        ..SUCCESS
    },
    failing(
        "invalid-credentials",
        "wrong sign-in details, then done",
        &[EventType::Started, EventType::Adding, EventType::InvalidCredentials, EventType::Done],
        AuthReason::InvalidCredentials,
    ),
    failing(
        "unable-to-connect",
        "the institution connection fails (code 102), then done",
        &[EventType::Started, EventType::Adding, EventType::UnableToConnect, EventType::Done],
        AuthReason::UnableToConnect,
    ),
    Flow {
        institution: None,
        expected_steps: Steps { institution_chosen: false, ..AT_INSTITUTION },
        ..failing(
            "institution-not-found",
            "the institution search finds nothing, then done",
            &[EventType::Started, EventType::InstitutionNotFound, EventType::Done],
            AuthReason::InstitutionNotFound,
        )
    },
    Flow {
        institution: Some(UNSUPPORTED_INSTITUTION),
        ..failing(
            "institution-not-supported",
            "the chosen institution is not supported, then done",
            &[EventType::Started, EventType::InstitutionNotSupported, EventType::Done],
            AuthReason::InstitutionNotSupported,
        )
    },
    Flow {
        name: "abandoned",
        description: "the customer starts, picks an institution and leaves",
        events: &[EventType::Started, EventType::Adding, EventType::Done],
        expected_consent: ConsentState::None,
        expected_authentication: AuthState::Abandoned,
        expected_reason: Some(AuthReason::Abandoned),
        expected_steps: AT_INSTITUTION,
        ..SUCCESS
    },
    Flow {
        name: "revoked",
        description: "a legacy success, then accountsDeleted for every account",
        events: &[
            EventType::Started,
            EventType::Adding,
            EventType::Discovered,
            EventType::Added,
            EventType::Done,
            EventType::AccountsDeleted,
        ],
        expected_consent: ConsentState::Revoked,
        ..SUCCESS
    },
    Flow {
        name: "reauthorized",
        description: "an OAuth success a year ago, then a Connect Fix session's added now (a reauthorization)",
        events: &[EventType::Started, EventType::Adding, EventType::Added, EventType::Done, EventType::Added],
        oauth: true,
        earlier_session_ago: Some(REAUTHORIZED_AFTER),
        ..SUCCESS
    },
];

/// Flows that also call connectflow's own API (`simulate` only, with an API
/// token): after the webhooks of an OAuth success, the customer revokes
/// their consent through the issuer (`POST
/// /v1/customers/{id}/consent/revocations`). Kept apart from [`FLOWS`],
/// whose flows are webhooks alone, so everything that only sends webhooks
/// (tests, chaos, bench) can rely on those reaching their states.
pub const API_FLOWS: &[Flow] = &[Flow {
    name: "revoked-by-customer",
    description: "an OAuth success, then the customer revokes through the issuer (the revocation API)",
    // The revocation is an API call, not a webhook.
    events: &[EventType::Started, EventType::Adding, EventType::Added, EventType::Done],
    oauth: true,
    revokes_through_api: true,
    expected_consent: ConsentState::Revoked,
    ..SUCCESS
}];

/// The sessions of `--scenario institution-outage` (see
/// [`super::scenario`]): a Connect session at a chosen institution, `started`,
/// `adding`, then how it ends, and nothing after (no `done`: a `done`
/// delivered between the `adding` and a late ending would first end the
/// session as abandoned, and the late ending, recomputed, end it a second
/// time, which `--shuffle` must not cause). Each customer's institution is
/// the scenario's, not [`Flow::institution`]. Not `--flow` values.
pub const SESSION_FLOWS: &[Flow] = &[
    Flow {
        name: "session-added",
        description: "adding, then added: the session succeeds",
        events: &[EventType::Started, EventType::Adding, EventType::Added],
        ..SUCCESS
    },
    failing(
        "session-bank-down",
        "adding, then unableToConnect code 102 (site down): the institution fails",
        &[EventType::Started, EventType::Adding, EventType::UnableToConnect],
        AuthReason::UnableToConnect,
    ),
    failing(
        "session-wrong-password",
        "adding, then invalidCredentials: the customer fails",
        &[EventType::Started, EventType::Adding, EventType::InvalidCredentials],
        AuthReason::InvalidCredentials,
    ),
];

/// Every flow `simulate` knows: [`FLOWS`], then [`API_FLOWS`].
pub fn all_flows() -> impl Iterator<Item = &'static Flow> {
    FLOWS.iter().chain(API_FLOWS)
}

impl Flow {
    /// The flow's line of the `--list-flows` tables: name, the states it
    /// should end in, what it rehearses.
    pub fn table_row(&self) -> String {
        format!(
            "{:<27} {:<9} {:<15} {}\n",
            self.name,
            self.expected_consent.as_str(),
            self.expected_authentication.as_str(),
            self.description
        )
    }

    /// When the first event of a customer whose flow starts at `start`
    /// occurs (see [`bodies`]).
    pub fn first_event_at(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self.earlier_session_ago {
            Some(ago) => start - ago,
            None => start,
        }
    }

    /// The institution `/v1/stats/institutions` counts its customers under
    /// (the one chosen last); `None` when they choose none.
    pub fn expected_institution(&self) -> Option<&'static str> {
        self.institution
    }
}

/// How long before its Connect Fix `added` the `reauthorized` flow's first
/// session happened: the authorization period of 12 CFR 1033.
pub const REAUTHORIZED_AFTER: chrono::Duration = chrono::Duration::days(365);

/// Looks a flow up by name (API flows included).
pub fn flow(name: &str) -> Option<&'static Flow> {
    all_flows().find(|f| f.name == name)
}

/// The institution of every simulated flow but `institution-not-supported`.
pub const INSTITUTION: &str = "101732";
/// The institution `institution-not-supported` chooses.
pub const UNSUPPORTED_INSTITUTION: &str = "999999";

/// 24 hex characters derived from the inputs: ids look like Finicity's and
/// are the same for the same customer, step and seed.
fn hex24(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..12])
}

fn digits(seed: &str, len: usize) -> String {
    let hash = Sha256::digest(seed.as_bytes());
    hash.iter().cycle().take(len).map(|b| char::from(b'0' + b % 10)).collect()
}

/// An account object as Finicity sends it: full number and balance
/// included, so the receiver's minimisation is exercised.
fn account(customer_id: &str, index: usize, login_id: i64, institution: &str, oauth: bool) -> Value {
    let number = digits(&format!("{customer_id}/number/{index}"), 16);
    let last4 = &number[12..];
    let kind = if index == 0 { "checking" } else { "savings" };
    json!({
        "id": digits(&format!("{customer_id}/account/{index}"), 10).trim_start_matches('0').to_owned() + "1",
        "number": number,
        "realAccountNumberLast4": last4,
        "accountNumberDisplay": format!("...{last4}"),
        "name": if index == 0 { "Checking" } else { "Savings" },
        "balance": 1000.0 + index as f64 * 250.75,
        "type": kind,
        "aggregationStatusCode": 0,
        "status": "active",
        "customerId": customer_id,
        "institutionId": institution,
        "institutionLoginId": login_id,
        "balanceDate": 1_764_000_000,
        "createdDate": 1_764_000_000,
        "currency": "USD",
        "detail": {"availableBalanceAmount": 999.5, "interestYtdAmount": 1.25, "oauth": oauth},
        "displayPosition": index + 1
    })
}

/// What one customer's webhooks share: the institution, its OAuth flag and
/// the accounts.
struct Session<'a> {
    institution: &'a str,
    oauth: bool,
    accounts: Value,
    account_ids: Vec<Value>,
}

/// The payload Finicity sends with an event of `event_type` in `session`.
fn payload(event_type: &EventType, session: &Session<'_>) -> Value {
    let Session { institution, oauth, accounts, account_ids } = session;
    match event_type {
        EventType::Adding => json!({"institutionId": institution, "oauth": oauth}),
        EventType::CredentialsUpdated => json!({"mfa": true}),
        EventType::Discovered => json!({"institutionId": institution, "accounts": accounts}),
        EventType::Added => json!({"institutionId": institution, "oauth": oauth, "accounts": accounts}),
        EventType::InvalidCredentials | EventType::InstitutionNotSupported => json!({"institutionId": institution}),
        EventType::UnableToConnect => json!({"institutionId": institution, "code": 102}),
        EventType::InstitutionNotFound => json!({"query": "first bank of nowhere"}),
        EventType::AccountsDeleted => json!({"accounts": account_ids, "institutionId": institution}),
        _ => json!({}),
    }
}

/// The webhook bodies of `flow` for one customer, in the order Finicity
/// sends them; event `i` occurs at `start + i` seconds (less
/// [`Flow::earlier_session_ago`] for all but the last, when set).
pub fn bodies(flow: &Flow, customer_id: &str, start: DateTime<Utc>, seed: u64) -> Vec<Value> {
    bodies_at(flow, None, customer_id, start, seed)
}

/// [`bodies`], at `institution` when given instead of the flow's own
/// ([`Flow::institution`]).
pub fn bodies_at(
    flow: &Flow,
    institution: Option<&str>,
    customer_id: &str,
    start: DateTime<Utc>,
    seed: u64,
) -> Vec<Value> {
    let seed_text = seed.to_string();
    let login_id: i64 = digits(&format!("{customer_id}/login/{seed}"), 9).parse::<i64>().unwrap_or(1) + 1_000_000_000;
    let institution = institution.or(flow.institution).unwrap_or(INSTITUTION);
    let accounts = json!([
        account(customer_id, 0, login_id, institution, flow.oauth),
        account(customer_id, 1, login_id, institution, flow.oauth)
    ]);
    let account_ids: Vec<Value> =
        accounts.as_array().into_iter().flatten().filter_map(|a| a.get("id").cloned()).collect();
    let session = Session { institution, oauth: flow.oauth, accounts, account_ids };
    let consumer_id = hex24(&[customer_id, "consumer", &seed_text]) + "00000000";
    let last = flow.events.len().saturating_sub(1);
    flow.events
        .iter()
        .enumerate()
        .map(|(i, event_type)| {
            let mut at = start + chrono::Duration::seconds(i as i64);
            if let Some(ago) = flow.earlier_session_ago
                && i < last
            {
                at -= ago;
            }
            let name = event_type.as_str();
            let event_id =
                format!("{}-{}", at.timestamp_millis(), hex24(&[customer_id, name, &i.to_string(), &seed_text]));
            json!({
                "customerId": customer_id,
                "consumerId": consumer_id,
                "eventType": name,
                "eventId": event_id,
                "payload": payload(event_type, &session),
                "webhookData": {"simulated": true}
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flow_has_events_with_finicity_shaped_ids() {
        let start = DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
        for flow in FLOWS {
            let bodies = bodies(flow, "1005061234", start, 7);
            assert!(bodies.len() >= 3, "{}", flow.name);
            for body in &bodies {
                let id = body["eventId"].as_str().expect("event id");
                let (millis, hex) = id.split_once('-').expect("shape");
                assert_eq!(millis.len(), 13);
                assert_eq!(hex.len(), 24);
                assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            assert_eq!(bodies, super::bodies(flow, "1005061234", start, 7), "deterministic");
        }
    }

    /// Each flow's customer, folded, reaches exactly the funnel steps, the
    /// reason and the institution the flow declares: what `simulate` says
    /// the funnel must show.
    #[test]
    fn every_flow_reaches_the_funnel_steps_it_declares() {
        use crate::receive::normalise::{Webhook, normalise};
        let start = DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
        for flow in all_flows().chain(SESSION_FLOWS) {
            let events: Vec<_> = bodies(flow, "1005061234", start, 7)
                .iter()
                .filter_map(|body| {
                    match normalise(&serde_json::to_vec(body).ok()?, start, &Default::default()).ok()? {
                        Webhook::Event(event) => Some(*event),
                        Webhook::Ping => None,
                    }
                })
                .collect();
            let state = crate::lifecycle::fold(&events);
            assert_eq!(state.funnel.steps, flow.expected_steps, "{}", flow.name);
            assert_eq!(state.authentication.reason, flow.expected_reason, "{}", flow.name);
            assert_eq!(state.authentication.state, flow.expected_authentication, "{}", flow.name);
            if !flow.revokes_through_api {
                assert_eq!(state.consent.state, flow.expected_consent, "{}", flow.name);
            }
            assert_eq!(state.funnel.institution_id.as_deref(), flow.expected_institution(), "{}", flow.name);
            let first = events.iter().map(|e| e.occurred_at).min();
            assert_eq!(state.funnel.first_event_at, first, "{}", flow.name);
            assert_eq!(first, Some(flow.first_event_at(start)), "{}", flow.name);
        }
    }

    #[test]
    fn accounts_carry_full_numbers_to_exercise_minimisation() {
        let start = DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
        let bodies = bodies(flow("legacy-success").expect("flow"), "1", start, 1);
        let added = bodies.iter().find(|b| b["eventType"] == "added").expect("added");
        let account = &added["payload"]["accounts"][0];
        assert_eq!(account["number"].as_str().map(str::len), Some(16));
        assert!(account["balance"].is_number());
        assert!(account["institutionLoginId"].is_i64());
    }

    #[test]
    fn reauthorized_renews_a_year_old_authorization_with_a_second_added() {
        let start = DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
        let bodies = bodies(flow("reauthorized").expect("flow"), "1", start, 1);
        let millis = |body: &Value| -> i64 {
            body["eventId"].as_str().and_then(|id| id.split_once('-')).and_then(|(ms, _)| ms.parse().ok()).expect("ms")
        };
        let added: Vec<&Value> = bodies.iter().filter(|b| b["eventType"] == "added").collect();
        assert_eq!(added.len(), 2);
        assert_eq!(millis(added[1]) - millis(added[0]), REAUTHORIZED_AFTER.num_milliseconds() + 2_000);
        assert_eq!(added[0]["payload"]["accounts"], added[1]["payload"]["accounts"], "the same login and accounts");
        assert_eq!(added[1]["payload"]["oauth"], true);
    }
}
