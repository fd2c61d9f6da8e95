use chrono::TimeZone;

use super::*;
use crate::event::EventType;
use crate::lifecycle::{advance, fold};

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).single().expect("time") + Duration::minutes(minute)
}

fn counts(successes: u64, institution_failures: u64, customer_failures: u64) -> WindowCounts {
    WindowCounts { successes, institution_failures, customer_failures }
}

fn event(n: i64, event_type: EventType, institution: Option<&str>, code: Option<i64>) -> ConnectEvent {
    let mut event = crate::lifecycle::tests::event(event_type.as_str(), n);
    event.institution_id = institution.map(str::to_owned);
    event.error_code = code;
    event
}

/// The outcomes the events give, each classified against the state before it.
fn outcomes(events: &[ConnectEvent]) -> Vec<(String, SessionOutcome)> {
    let mut state = Lifecycle::default();
    let mut found = Vec::new();
    let advanced = advance(&mut state, events, |event, before, after| {
        if let Some(session) = session_outcome(before, after, event) {
            found.push((session.institution_id, session.outcome));
        }
    });
    assert_eq!(advanced, crate::lifecycle::Advance::Applied);
    assert_eq!(state, fold(events));
    found
}

#[test]
fn each_ending_is_classified_by_who_failed() {
    use SessionOutcome::*;
    let inst = Some("101732");
    type Case = (Vec<ConnectEvent>, Vec<(&'static str, SessionOutcome)>);
    let cases: Vec<Case> = vec![
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::Added, inst, None)],
            vec![("101732", Success)],
        ),
        // `added` after `discovered` is the same session's success.
        (
            vec![
                event(1, EventType::Adding, inst, None),
                event(2, EventType::Discovered, inst, None),
                event(3, EventType::Added, inst, None),
            ],
            vec![("101732", Success)],
        ),
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::UnableToConnect, inst, Some(102))],
            vec![("101732", InstitutionFailure)],
        ),
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::UnableToConnect, None, None)],
            vec![("101732", InstitutionFailure)],
        ),
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::UnableToConnect, inst, Some(187))],
            vec![("101732", CustomerFailure)],
        ),
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::InvalidCredentials, None, None)],
            vec![("101732", CustomerFailure)],
        ),
        // Wrong twice in a row is one failed session; then a success.
        (
            vec![
                event(1, EventType::Adding, inst, None),
                event(2, EventType::InvalidCredentials, inst, None),
                event(3, EventType::InvalidCredentials, inst, None),
                event(4, EventType::Added, inst, None),
            ],
            vec![("101732", CustomerFailure), ("101732", Success)],
        ),
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::Cancel, None, None)],
            vec![("101732", CustomerFailure)],
        ),
        (
            vec![event(1, EventType::Adding, inst, None), event(2, EventType::Done, None, None)],
            vec![("101732", CustomerFailure)],
        ),
        // Left before choosing an institution: no institution's session.
        (vec![event(1, EventType::Started, None, None), event(2, EventType::Cancel, None, None)], vec![]),
        // A new session forgets the previous one's institution.
        (
            vec![
                event(1, EventType::Adding, inst, None),
                event(2, EventType::Added, inst, None),
                event(3, EventType::Started, None, None),
                event(4, EventType::Done, None, None),
            ],
            vec![("101732", Success)],
        ),
        (vec![event(1, EventType::InstitutionNotSupported, inst, None)], vec![]),
        (vec![event(1, EventType::InstitutionNotFound, None, None)], vec![]),
    ];
    for (events, expected) in cases {
        let expected: Vec<(String, SessionOutcome)> =
            expected.into_iter().map(|(institution, outcome)| (institution.to_owned(), outcome)).collect();
        let types: Vec<String> = events.iter().map(|e| e.event_type.to_string()).collect();
        assert_eq!(outcomes(&events), expected, "{types:?}");
    }
}

#[test]
fn classify_by_thresholds_and_minimum() {
    let settings = HealthSettings::default();
    assert_eq!(settings.classify(&counts(4, 1, 0)), InstitutionStatus::Unknown);
    assert_eq!(settings.classify(&counts(81, 19, 0)), InstitutionStatus::Healthy);
    assert_eq!(settings.classify(&counts(80, 20, 0)), InstitutionStatus::Degraded);
    assert_eq!(settings.classify(&counts(40, 60, 0)), InstitutionStatus::Down);
    // Customers' failures dilute, never raise, the institution's rate.
    assert_eq!(settings.classify(&counts(10, 2, 88)), InstitutionStatus::Healthy);
}

#[test]
fn worse_at_once_better_after_two_evaluations_below_the_threshold_minus_the_hysteresis() {
    let settings = HealthSettings::default();
    let first = evaluate(None, &counts(20, 180, 0), &settings, at(0));
    assert_eq!(first, Standing { status: InstitutionStatus::Down, since: at(0), improving: 0 });
    // 57 % is below 60 but not below 55: still down, no progress.
    let second = evaluate(Some(&first), &counts(43, 57, 0), &settings, at(1));
    assert_eq!(second, first);
    // 30 % once: still down, one step towards improving.
    let third = evaluate(Some(&second), &counts(70, 30, 0), &settings, at(2));
    assert_eq!((third.status, third.since, third.improving), (InstitutionStatus::Down, at(0), 1));
    // A relapse resets the count.
    let relapse = evaluate(Some(&third), &counts(40, 60, 0), &settings, at(3));
    assert_eq!(relapse, first);
    let once = evaluate(Some(&relapse), &counts(90, 10, 0), &settings, at(4));
    let twice = evaluate(Some(&once), &counts(90, 10, 0), &settings, at(5));
    assert_eq!(twice, Standing { status: InstitutionStatus::Healthy, since: at(5), improving: 0 });
    // Worse again: at once.
    let worse = evaluate(Some(&twice), &counts(75, 25, 0), &settings, at(6));
    assert_eq!(worse, Standing { status: InstitutionStatus::Degraded, since: at(6), improving: 0 });
    // 18 % is below 20 but not 15: stays degraded.
    assert_eq!(evaluate(Some(&worse), &counts(82, 18, 0), &settings, at(7)), worse);
}

#[test]
fn unknown_is_left_at_once_and_reached_after_two_quiet_evaluations() {
    let settings = HealthSettings::default();
    let unknown = evaluate(None, &counts(5, 0, 0), &settings, at(0));
    assert_eq!(unknown.status, InstitutionStatus::Unknown);
    assert_eq!(evaluate(Some(&unknown), &counts(5, 0, 0), &settings, at(1)), unknown);
    let healthy = evaluate(Some(&unknown), &counts(30, 0, 0), &settings, at(2));
    assert_eq!(healthy, Standing { status: InstitutionStatus::Healthy, since: at(2), improving: 0 });
    let quiet = evaluate(Some(&healthy), &counts(0, 0, 0), &settings, at(3));
    assert_eq!(quiet.status, InstitutionStatus::Healthy);
    let gone = evaluate(Some(&quiet), &counts(0, 0, 0), &settings, at(4));
    assert_eq!(gone, Standing { status: InstitutionStatus::Unknown, since: at(4), improving: 0 });
}

#[test]
fn the_record_names_the_change_and_its_window() {
    let standing = Standing { status: InstitutionStatus::Down, since: at(12), improving: 0 };
    let health = InstitutionHealth::new("101732".into(), &standing, &counts(11, 41, 0), Duration::minutes(60), at(12));
    let change = InstitutionStatusChange::new(health, InstitutionStatus::Healthy, 3);
    let json = serde_json::to_value(&change).expect("json");
    assert_eq!(json["schema"], "connectflow.institution_status.v1");
    assert_eq!(json["change_id"], "101732:3");
    assert_eq!(json["status"], "down");
    assert_eq!(json["previous_status"], "healthy");
    assert_eq!(json["sessions"], 52);
    assert_eq!(json["institution_failures"], 41);
    assert_eq!(json["since"], "2026-12-04T09:12:00.000Z");
    let back: InstitutionStatusChange = serde_json::from_value(json).expect("decode");
    assert_eq!(back, change);
}

/// The JSON Schema shipped for subscribers (docs/institution-status.schema.json)
/// names exactly the record's fields, all required, and the statuses.
#[test]
fn the_published_json_schema_matches_the_record() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/institution-status.schema.json")).expect("valid JSON");
    let standing = Standing { status: InstitutionStatus::Down, since: at(12), improving: 0 };
    let health = InstitutionHealth::new("101732".into(), &standing, &counts(11, 41, 0), Duration::minutes(60), at(12));
    let record =
        serde_json::to_value(InstitutionStatusChange::new(health, InstitutionStatus::Healthy, 3)).expect("json");
    let mut fields: Vec<&str> = record.as_object().expect("object").keys().map(String::as_str).collect();
    let mut required: Vec<&str> =
        schema["required"].as_array().expect("required").iter().filter_map(|v| v.as_str()).collect();
    let mut properties: Vec<&str> =
        schema["properties"].as_object().expect("properties").keys().map(String::as_str).collect();
    fields.sort_unstable();
    required.sort_unstable();
    properties.sort_unstable();
    assert_eq!(fields, required);
    assert_eq!(fields, properties);
    let statuses: Vec<&str> =
        schema["$defs"]["status"]["enum"].as_array().expect("enum").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(statuses, InstitutionStatus::ALL.map(InstitutionStatus::as_str));
    assert_eq!(schema["properties"]["schema"]["const"], INSTITUTION_STATUS_SCHEMA_V1);
}
