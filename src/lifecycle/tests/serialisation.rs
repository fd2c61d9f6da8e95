//! The API view and the persisted form.

use serde_json::json;
use utoipa::PartialSchema;

use super::*;

/// The query API's answer for `state`, without its `customer_id` and
/// `updated_at`.
fn api_shape(state: &Lifecycle) -> serde_json::Value {
    let mut value = serde_json::to_value(api_answer(state)).expect("serialisable");
    if let Some(map) = value.as_object_mut() {
        map.remove("customer_id");
        map.remove("updated_at");
        map.remove("version");
    }
    value
}

fn api_answer(state: &Lifecycle) -> crate::api::model::CustomerLifecycle {
    crate::api::model::CustomerLifecycle::new(
        "1".to_owned(),
        state.clone(),
        0,
        chrono::DateTime::UNIX_EPOCH,
        AuthorizationPolicy::default(),
        chrono::DateTime::UNIX_EPOCH,
    )
}

#[test]
fn no_events_is_the_default_state() {
    let state = fold([]);

    assert_eq!(state, Lifecycle::default());
    assert_eq!(
        api_shape(&state),
        json!({
            "consent": {"state": "none", "since": null, "granted_at": null, "authorized_at": null,
                        "revocation": null, "authorization_expires_at": null, "expired": false},
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
               "revocation": null, "authorization_expires_at": "2027-11-20T10:15:02.123Z", "expired": false},
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
        r#"{"customer_id":"1","consent":{"state":"granted","since":"2026-11-20T10:15:02.123Z","granted_at":"#
    ));
    assert!(raw.contains(
        r#"{"account_id":"1045121390","type":"checking","status":"active","last4":"1111","name":"Checking"}"#
    ));
}

#[test]
fn failed_and_abandoned_serialise_their_reason() {
    let failed = fold(&[event("started", 0), unable(1, 103)]);
    let abandoned = fold(&[event("started", 0), event("done", 1)]);

    assert_eq!(
        serde_json::to_value(&failed.authentication).expect("serialisable"),
        json!({"state": "failed", "since": "2026-11-20T10:15:01.000Z", "reason": "unable_to_connect", "error_code": 103})
    );
    assert_eq!(serde_json::to_value(&abandoned.authentication).expect("serialisable")["reason"], json!("abandoned"));
    // The serde names, which `as_str` (the database columns) repeats.
    fn names<T: serde::Serialize + Copy>(values: &[T], as_str: fn(T) -> &'static str) -> Vec<String> {
        let names: Vec<String> = values
            .iter()
            .map(|v| serde_json::to_value(v).expect("serialisable").as_str().unwrap_or("").to_owned())
            .collect();
        let columns: Vec<String> = values.iter().map(|v| as_str(*v).to_owned()).collect();
        assert_eq!(names, columns, "as_str is the serde name");
        names
    }
    // `ALL` lists every value, each found again by its name.
    fn all_named<T: PartialEq + std::fmt::Debug + Copy>(
        all: &[T],
        expected: &[T],
        as_str: fn(T) -> &'static str,
        from_name: fn(&str) -> Option<T>,
    ) {
        assert_eq!(all, expected);
        for value in all {
            assert_eq!(from_name(as_str(*value)), Some(*value));
        }
        assert_eq!(from_name("no-such-name"), None);
    }
    let reasons = [
        AuthReason::InvalidCredentials,
        AuthReason::UnableToConnect,
        AuthReason::InstitutionNotFound,
        AuthReason::InstitutionNotSupported,
        AuthReason::Cancelled,
        AuthReason::Abandoned,
    ];
    assert_eq!(
        names(&reasons, AuthReason::as_str),
        [
            "invalid_credentials",
            "unable_to_connect",
            "institution_not_found",
            "institution_not_supported",
            "cancelled",
            "abandoned"
        ]
    );
    let states = [
        AuthState::NotStarted,
        AuthState::InProgress,
        AuthState::MfaChallenge,
        AuthState::Authenticated,
        AuthState::Failed,
        AuthState::Abandoned,
    ];
    assert_eq!(
        names(&states, AuthState::as_str),
        ["not_started", "in_progress", "mfa_challenge", "authenticated", "failed", "abandoned"]
    );
    let consents = [ConsentState::None, ConsentState::Granted, ConsentState::Revoked];
    assert_eq!(names(&consents, ConsentState::as_str), ["none", "granted", "revoked"]);
    let statuses = [AccountStatus::Active, AccountStatus::Deleted, AccountStatus::Revoked];
    assert_eq!(names(&statuses, AccountStatus::as_str), ["active", "deleted", "revoked"]);
    all_named(AuthReason::ALL, &reasons, AuthReason::as_str, AuthReason::from_name);
    all_named(AuthState::ALL, &states, AuthState::as_str, AuthState::from_name);
    all_named(ConsentState::ALL, &consents, ConsentState::as_str, ConsentState::from_name);
    all_named(AccountStatus::ALL, &statuses, AccountStatus::as_str, AccountStatus::from_name);
}

#[test]
fn the_persisted_form_rebuilds_the_same_state() {
    let mut events = shared();
    events.push(deleted(3, &["a1"]));
    events.push(ConnectEvent {
        accounts: vec![account("a3", None)],
        institution_login_id: None,
        ..added(4, "unused", &[])
    });
    events.push(unable(5, 187));
    events.push(ConnectEvent { institution_id: Some("999".to_owned()), oauth: Some(true), ..event("adding", 6) });
    let state = fold(&events);

    let persisted = serde_json::to_string(&state).expect("serialisable");
    let rebuilt: Lifecycle = serde_json::from_str(&persisted).expect("deserialisable");

    assert_eq!(rebuilt, state);
    assert!(persisted.contains(r#""pending_adding":{"institution_id":"999","oauth":true}"#));
    assert!(!serde_json::to_string(&api_answer(&state)).expect("serialisable").contains("pending_adding"));
}

/// The query API documents these types with their OpenAPI schema: it must
/// name exactly the fields and values serde writes.
#[test]
fn openapi_schemas_name_the_serialised_fields() {
    fn schema_of<T: PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).expect("serialisable")
    }
    fn keys(value: &serde_json::Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }
    let state = fold(&[event("started", 0), unable(1, 103), added(2, "L1", &["a1"])]);
    let login = &state.institution_logins[0];
    let pairs = [
        (schema_of::<Consent>(), serde_json::to_value(&state.consent)),
        (schema_of::<Authentication>(), serde_json::to_value(&state.authentication)),
        (schema_of::<InstitutionLogin>(), serde_json::to_value(login)),
        (schema_of::<Account>(), serde_json::to_value(&login.accounts[0])),
        (schema_of::<LastEvent>(), serde_json::to_value(&state.last_event)),
        (schema_of::<Lifecycle>(), serde_json::to_value(&state)),
    ];
    for (schema, value) in pairs {
        let value = value.expect("serialisable");
        assert_eq!(keys(&schema["properties"]), keys(&value), "{schema}");
    }
    assert_eq!(
        schema_of::<AuthState>()["enum"],
        json!(["not_started", "in_progress", "mfa_challenge", "authenticated", "failed", "abandoned"])
    );
    assert_eq!(schema_of::<ConsentState>()["enum"], json!(["none", "granted", "revoked"]));
    assert_eq!(schema_of::<AccountStatus>()["enum"], json!(["active", "deleted", "revoked"]));
    assert_eq!(
        schema_of::<AuthReason>()["enum"],
        json!([
            "invalid_credentials",
            "unable_to_connect",
            "institution_not_found",
            "institution_not_supported",
            "cancelled",
            "abandoned"
        ])
    );
}
