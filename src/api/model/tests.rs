//! The API's view of a lifecycle: the contract's JSON, reproduced from
//! events.

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

use super::CustomerLifecycle;
use crate::event::{AccountRef, ConnectEvent};
use crate::lifecycle::tests::{INSTITUTION, event};
use crate::lifecycle::{AuthorizationPolicy, Lifecycle, fold};

/// The query API's answer for `state`, without its `customer_id` and
/// `updated_at`.
fn api_shape(state: &Lifecycle) -> serde_json::Value {
    let mut value = serde_json::to_value(api_answer(state)).expect("serialisable");
    if let Some(map) = value.as_object_mut() {
        map.remove("customer_id");
        map.remove("updated_at");
        map.remove("version");
        map.remove("program_id");
    }
    value
}

fn api_answer(state: &Lifecycle) -> CustomerLifecycle {
    CustomerLifecycle::new(
        "1".to_owned(),
        "default".to_owned(),
        state.clone(),
        0,
        chrono::DateTime::UNIX_EPOCH,
        AuthorizationPolicy::default(),
        chrono::DateTime::UNIX_EPOCH,
    )
}

#[test]
fn no_events_shows_the_default_state() {
    assert_eq!(
        api_shape(&fold([])),
        json!({
            "consent": {"state": "none", "since": null, "granted_at": null, "authorized_at": null,
                        "revocation": null, "authorization_expires_at": null, "expired": false,
                        "expiry_warnings": []},
            "authentication": {"state": "not_started", "since": null, "reason": null, "error_code": null},
            "institution_logins": [],
            "funnel": {"first_event_at": null, "institution_id": null,
                       "steps": {"started": false, "institution_chosen": false, "mfa_challenged": false,
                                 "authenticated": false, "consent_granted": false}},
            "last_event": null,
            "event_count": 0
        })
    );
}

/// The example of the query API's contract, reproduced from events.
#[test]
fn view_serialises_to_the_api_contract() {
    let added_at = Utc.with_ymd_and_hms(2026, 11, 20, 10, 15, 2).single().expect("valid") + Duration::milliseconds(123);
    let events = vec![
        event("started", -30),
        event("institutionSupported", -20),
        ConnectEvent { institution_id: Some(INSTITUTION.to_owned()), oauth: Some(true), ..event("adding", -10) },
        event("connectWindowResized", -5),
        ConnectEvent {
            event_id: "1611877956869-28ebb24c66699bf3c77f04b1".to_owned(),
            institution_id: Some(INSTITUTION.to_owned()),
            institution_login_id: Some("1022599285".to_owned()),
            oauth: Some(true),
            accounts: vec![AccountRef {
                account_id: Some("1045121390".to_owned()),
                institution_login_id: Some("1022599285".to_owned()),
                account_type: Some("checking".to_owned()),
                status: Some("active".to_owned()),
                last4: Some("1111".to_owned()),
                name: Some("Checking".to_owned()),
                aggregation_status_code: Some(0),
            }],
            occurred_at: added_at,
            ..event("added", 0)
        },
    ];

    let state = fold(&events);
    let text = api_shape(&state).to_string();
    let raw = serde_json::to_string(&api_answer(&state)).expect("serialisable");

    let contract = r#"{ "consent": {"state": "granted", "since": "2026-11-20T10:15:02.123Z",
               "granted_at": "2026-11-20T10:15:02.123Z", "authorized_at": "2026-11-20T10:15:02.123Z",
               "revocation": null, "authorization_expires_at": "2027-11-20T10:15:02.123Z", "expired": false,
               "expiry_warnings": []},
  "authentication": {"state": "authenticated", "since": "2026-11-20T10:15:02.123Z", "reason": null, "error_code": null},
  "institution_logins": [
    {"institution_login_id": "1022599285", "institution_id": "101732", "oauth": true,
     "authorized_at": "2026-11-20T10:15:02.123Z", "authorization_expires_at": "2027-11-20T10:15:02.123Z",
     "expired": false,
     "accounts": [{"account_id": "1045121390", "type": "checking", "status": "active", "last4": "1111", "name": "Checking"}]}],
  "funnel": {"first_event_at": "2026-11-20T10:14:30.000Z", "institution_id": "101732",
             "steps": {"started": true, "institution_chosen": true, "mfa_challenged": false,
                       "authenticated": true, "consent_granted": true}},
  "last_event": {"event_id": "1611877956869-28ebb24c66699bf3c77f04b1", "event_type": "added", "occurred_at": "2026-11-20T10:15:02.123Z"},
  "event_count": 5 }"#;
    let contract: serde_json::Value = serde_json::from_str(contract).expect("valid JSON");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text).expect("valid JSON"), contract);
    // Field order as in the contract, for readers of the raw JSON.
    assert!(raw.starts_with(
        r#"{"customer_id":"1","program_id":"default","consent":{"state":"granted","since":"2026-11-20T10:15:02.123Z","granted_at":"#
    ));
    assert!(raw.contains(
        r#"{"account_id":"1045121390","type":"checking","status":"active","last4":"1111","name":"Checking"}"#
    ));
}

#[test]
fn the_fold_bookkeeping_is_not_shown() {
    let adding = ConnectEvent { institution_id: Some("999".to_owned()), oauth: Some(true), ..event("adding", 6) };
    let state = fold([&adding]);
    assert!(state.pending_adding.is_some());
    assert!(!serde_json::to_string(&api_answer(&state)).expect("serialisable").contains("pending_adding"));
}

#[test]
fn the_warnings_sent_are_listed_under_consent() {
    let sent_at = Utc.with_ymd_and_hms(2026, 11, 20, 10, 15, 2).single().expect("valid") + Duration::milliseconds(7);
    let warning = crate::lifecycle::ExpiryWarning { days: 30, days_left: 29, sent_at };
    let answer = api_answer(&fold([])).with_expiry_warnings(vec![warning]);
    let value = serde_json::to_value(&answer).expect("serialisable");
    assert_eq!(
        value["consent"]["expiry_warnings"],
        json!([{"days": 30, "days_left": 29, "sent_at": "2026-11-20T10:15:02.007Z"}])
    );
}
