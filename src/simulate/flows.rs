//! Realistic Finicity Connect flows: the webhook bodies Finicity sends for a
//! customer going through Connect, and the states each flow should end in.
//! Used by `connectflow simulate` and by the tests.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A named flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The `--flow` name.
    pub name: &'static str,
    /// What it rehearses.
    pub description: &'static str,
    /// Consent state it should end in.
    pub expected_consent: &'static str,
    /// Authentication state it should end in.
    pub expected_authentication: &'static str,
}

/// Every flow, in `--list-flows` order.
pub const FLOWS: &[Flow] = &[
    Flow {
        name: "legacy-success",
        description: "credentials, accounts discovered, accounts added, done",
        expected_consent: "granted",
        expected_authentication: "authenticated",
    },
    Flow {
        name: "oauth-success",
        description: "OAuth institution, accounts added, done",
        expected_consent: "granted",
        expected_authentication: "authenticated",
    },
    Flow {
        name: "mfa-success",
        description: "credentials, MFA challenge, accounts discovered and added, done",
        expected_consent: "granted",
        expected_authentication: "authenticated",
    },
    Flow {
        name: "invalid-credentials",
        description: "wrong sign-in details, then done",
        expected_consent: "none",
        expected_authentication: "failed",
    },
    Flow {
        name: "unable-to-connect",
        description: "the institution connection fails (code 102), then done",
        expected_consent: "none",
        expected_authentication: "failed",
    },
    Flow {
        name: "institution-not-found",
        description: "the institution search finds nothing, then done",
        expected_consent: "none",
        expected_authentication: "failed",
    },
    Flow {
        name: "institution-not-supported",
        description: "the chosen institution is not supported, then done",
        expected_consent: "none",
        expected_authentication: "failed",
    },
    Flow {
        name: "abandoned",
        description: "the customer starts, picks an institution and leaves",
        expected_consent: "none",
        expected_authentication: "abandoned",
    },
    Flow {
        name: "revoked",
        description: "a legacy success, then accountsDeleted for every account",
        expected_consent: "revoked",
        expected_authentication: "authenticated",
    },
    Flow {
        name: "reauthorized",
        description: "an OAuth success a year ago, then a Connect Fix session's added now (a reauthorization)",
        expected_consent: "granted",
        expected_authentication: "authenticated",
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
    expected_consent: "revoked",
    expected_authentication: "authenticated",
}];

/// Every flow `simulate` knows: [`FLOWS`], then [`API_FLOWS`].
pub fn all_flows() -> impl Iterator<Item = &'static Flow> {
    FLOWS.iter().chain(API_FLOWS)
}

impl Flow {
    /// Whether the flow ends with a revocation through the API (after its
    /// webhooks).
    pub fn revokes_through_api(&self) -> bool {
        API_FLOWS.iter().any(|flow| flow.name == self.name)
    }

    /// The funnel steps a customer of this flow reaches
    /// ([`crate::lifecycle::Steps`]): what `/v1/stats` must count for them.
    pub fn expected_steps(&self) -> crate::lifecycle::Steps {
        let (started, institution_chosen, mfa_challenged, authenticated, consent_granted) = match self.name {
            "legacy-success" | "oauth-success" | "revoked" | "reauthorized" | "revoked-by-customer" => {
                (true, true, false, true, true)
            }
            "mfa-success" => (true, true, true, true, true),
            "invalid-credentials" | "unable-to-connect" | "institution-not-supported" | "abandoned" => {
                (true, true, false, false, false)
            }
            "institution-not-found" => (true, false, false, false, false),
            _ => (false, false, false, false, false),
        };
        crate::lifecycle::Steps { started, institution_chosen, mfa_challenged, authenticated, consent_granted }
    }

    /// When the first event of a customer whose flow starts at `start`
    /// occurs (see [`bodies`]).
    pub fn first_event_at(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        if self.name == "reauthorized" { start - REAUTHORIZED_AFTER } else { start }
    }

    /// The reason its authentication ends with, as `/v1/stats` counts it
    /// (`failed` or `abandoned`); `None` for the others.
    pub fn expected_reason(&self) -> Option<&'static str> {
        match self.name {
            "invalid-credentials" => Some("invalid_credentials"),
            "unable-to-connect" => Some("unable_to_connect"),
            "institution-not-found" => Some("institution_not_found"),
            "institution-not-supported" => Some("institution_not_supported"),
            "abandoned" => Some("abandoned"),
            _ => None,
        }
    }

    /// The institution `/v1/stats/institutions` counts its customers under
    /// (the one chosen last); `None` when they choose none.
    pub fn expected_institution(&self) -> Option<&'static str> {
        match self.name {
            "institution-not-found" => None,
            "institution-not-supported" => Some(UNSUPPORTED_INSTITUTION),
            _ => Some(INSTITUTION),
        }
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
fn account(customer_id: &str, index: usize, login_id: i64, oauth: bool) -> Value {
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
        "institutionId": INSTITUTION,
        "institutionLoginId": login_id,
        "balanceDate": 1_764_000_000,
        "createdDate": 1_764_000_000,
        "currency": "USD",
        "detail": {"availableBalanceAmount": 999.5, "interestYtdAmount": 1.25, "oauth": oauth},
        "displayPosition": index + 1
    })
}

/// The webhook bodies of `flow` for one customer, in the order Finicity
/// sends them; event `i` occurs at `start + i` seconds.
pub fn bodies(flow: &Flow, customer_id: &str, start: DateTime<Utc>, seed: u64) -> Vec<Value> {
    let seed_text = seed.to_string();
    let login_id: i64 = digits(&format!("{customer_id}/login/{seed}"), 9).parse::<i64>().unwrap_or(1) + 1_000_000_000;
    let oauth = matches!(flow.name, "oauth-success" | "reauthorized" | "revoked-by-customer");
    let accounts = json!([account(customer_id, 0, login_id, oauth), account(customer_id, 1, login_id, oauth)]);
    let account_ids: Vec<Value> =
        accounts.as_array().into_iter().flatten().filter_map(|a| a.get("id").cloned()).collect();
    let adding = ("adding", json!({"institutionId": INSTITUTION, "oauth": oauth}));
    let discovered = ("discovered", json!({"institutionId": INSTITUTION, "accounts": accounts}));
    let added = ("added", json!({"institutionId": INSTITUTION, "oauth": oauth, "accounts": accounts}));
    let started = ("started", json!({}));
    let done = ("done", json!({}));
    let steps: Vec<(&str, Value)> = match flow.name {
        "legacy-success" => vec![started, adding, discovered, added, done],
        // The revocation of `revoked-by-customer` is an API call, not a webhook.
        "oauth-success" | "revoked-by-customer" => vec![started, adding, added, done],
        "mfa-success" => vec![
            started,
            adding,
            ("credentialsUpdated", json!({"mfa": true})),
            ("mfa", json!({})),
            discovered,
            added,
            done,
        ],
        "invalid-credentials" => {
            vec![started, adding, ("invalidCredentials", json!({"institutionId": INSTITUTION})), done]
        }
        "unable-to-connect" => {
            vec![started, adding, ("unableToConnect", json!({"institutionId": INSTITUTION, "code": 102})), done]
        }
        "institution-not-found" => {
            vec![started, ("institutionNotFound", json!({"query": "first bank of nowhere"})), done]
        }
        "institution-not-supported" => {
            vec![started, ("institutionNotSupported", json!({"institutionId": UNSUPPORTED_INSTITUTION})), done]
        }
        "abandoned" => vec![started, adding, done],
        "reauthorized" => vec![started, adding, added.clone(), done, added],
        "revoked" => vec![
            started,
            adding,
            discovered,
            added,
            done,
            ("accountsDeleted", json!({"accounts": account_ids, "institutionId": INSTITUTION})),
        ],
        _ => Vec::new(),
    };
    let consumer_id = hex24(&[customer_id, "consumer", &seed_text]) + "00000000";
    let last = steps.len().saturating_sub(1);
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (event_type, payload))| {
            let mut at = start + chrono::Duration::seconds(i as i64);
            // The first session of `reauthorized` happened a year before
            // its Connect Fix `added` (the last step).
            if flow.name == "reauthorized" && i < last {
                at -= REAUTHORIZED_AFTER;
            }
            let event_id =
                format!("{}-{}", at.timestamp_millis(), hex24(&[customer_id, event_type, &i.to_string(), &seed_text]));
            json!({
                "customerId": customer_id,
                "consumerId": consumer_id,
                "eventType": event_type,
                "eventId": event_id,
                "payload": payload,
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
        for flow in all_flows() {
            let events: Vec<_> = bodies(flow, "1005061234", start, 7)
                .iter()
                .filter_map(|body| match normalise(&serde_json::to_vec(body).ok()?, start).ok()? {
                    Webhook::Event(event) => Some(*event),
                    Webhook::Ping => None,
                })
                .collect();
            let state = crate::lifecycle::fold(&events);
            assert_eq!(state.funnel.steps, flow.expected_steps(), "{}", flow.name);
            assert_eq!(state.authentication.reason.map(|r| r.as_str()), flow.expected_reason(), "{}", flow.name);
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
