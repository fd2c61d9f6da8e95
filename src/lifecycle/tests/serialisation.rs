//! The API view and the persisted form.

use serde_json::json;
use utoipa::PartialSchema;

use super::*;

#[test]
fn no_events_is_the_default_state() {
    assert_eq!(fold([]), Lifecycle::default());
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
