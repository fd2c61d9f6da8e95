use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use super::*;

/// The function under test, for the `default` program (the program's own
/// checks are in `programs_come_from_the_url`).
fn normalise(raw: &[u8], received_at: DateTime<Utc>) -> Result<Webhook, ParseError> {
    super::normalise(raw, received_at, &ProgramId::default())
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).single().expect("valid time")
}

const EVENT_ID: &str = "1764000000123-28ebb24c66699bf3c77f04b1";

fn envelope(event_type: &str, payload: Value) -> Value {
    json!({
        "customerId": "1005061234",
        "consumerId": "0bf46322c167b562e6cbed9d40e19a4c",
        "eventType": event_type,
        "eventId": EVENT_ID,
        "payload": payload,
    })
}

fn event(body: &Value) -> ConnectEvent {
    let raw = serde_json::to_vec(body).expect("serialises");
    match normalise(&raw, now()).expect("normalises") {
        Webhook::Event(e) => *e,
        Webhook::Ping => panic!("unexpected ping"),
    }
}

/// An account as Finicity sends it, full number and balance included.
fn wire_account(id: &str) -> Value {
    json!({
        "id": id,
        "number": "4111111111111111",
        "realAccountNumberLast4": "1111",
        "accountNumberDisplay": "...1111",
        "name": "Checking",
        "balance": 1234.56,
        "type": "checking",
        "aggregationStatusCode": 0,
        "status": "active",
        "customerId": "1005061234",
        "institutionId": "101732",
        "institutionLoginId": 1022599285_i64,
        "balanceDate": 1611877956,
        "createdDate": 1611877956,
        "currency": "USD",
        "detail": {"availableBalanceAmount": 1000.0, "interestYtdAmount": 1.5},
        "displayPosition": 1
    })
}

#[test]
fn ping_is_recognised_without_customer() {
    let raw = br#"{"eventType":"ping","payload":{}}"#;
    assert_eq!(normalise(raw, now()), Ok(Webhook::Ping));
}

#[test]
fn parse_errors_name_the_problem() {
    assert_eq!(normalise(b"{not json", now()), Err(ParseError::NotJson));
    assert_eq!(normalise(b"[1,2]", now()), Err(ParseError::NotObject));
    assert_eq!(normalise(br#"{"customerId":"1"}"#, now()), Err(ParseError::NoEventType));
    assert_eq!(normalise(br#"{"eventType":7,"customerId":"1"}"#, now()), Err(ParseError::NoEventType));
    assert_eq!(normalise(br#"{"eventType":"added"}"#, now()), Err(ParseError::NoCustomerId));
    assert_eq!(normalise(br#"{"eventType":"added","customerId":12}"#, now()), Err(ParseError::NoCustomerId));
}

#[test]
fn envelope_fields_are_carried() {
    let e = event(&envelope("started", json!({})));
    assert_eq!(e.schema, "connectflow.connect_event.v1");
    assert_eq!(e.event_id, EVENT_ID);
    assert_eq!(e.event_type, "started");
    assert_eq!(e.customer_id, "1005061234");
    assert_eq!(e.consumer_id.as_deref(), Some("0bf46322c167b562e6cbed9d40e19a4c"));
    assert_eq!(e.received_at, now());
    assert_eq!(e.occurred_at, Utc.timestamp_millis_opt(1764000000123).single().expect("valid"));
    assert!(e.accounts.is_empty() && e.deleted_account_ids.is_empty());
    assert_eq!(e.webhook_data, None);
}

#[test]
fn adding_records_institution_and_oauth() {
    let e = event(&envelope("adding", json!({"institutionId": "101732", "oauth": true})));
    assert_eq!(e.institution_id.as_deref(), Some("101732"));
    assert_eq!(e.oauth, Some(true));
    assert_eq!(e.mfa, None);
}

#[test]
fn credentials_updated_carries_mfa() {
    let e = event(&envelope("credentialsUpdated", json!({"mfa": true})));
    assert_eq!(e.mfa, Some(true));
}

#[test]
fn added_and_discovered_carry_minimised_accounts() {
    for event_type in ["added", "discovered"] {
        let e = event(&envelope(
            event_type,
            json!({"institutionId": "101732", "oauth": false, "accounts": [wire_account("1045121390")]}),
        ));
        assert_eq!(e.institution_id.as_deref(), Some("101732"));
        assert_eq!(e.institution_login_id.as_deref(), Some("1022599285"), "number on the wire, text here");
        assert_eq!(e.oauth, Some(false));
        assert_eq!(
            e.accounts,
            vec![AccountRef {
                account_id: Some("1045121390".into()),
                institution_login_id: Some("1022599285".into()),
                account_type: Some("checking".into()),
                status: Some("active".into()),
                last4: Some("1111".into()),
                name: Some("Checking".into()),
                aggregation_status_code: Some(0),
            }]
        );
    }
}

#[test]
fn institution_comes_from_accounts_when_payload_lacks_it() {
    let e = event(&envelope("added", json!({"accounts": [wire_account("1")]})));
    assert_eq!(e.institution_id.as_deref(), Some("101732"));
}

#[test]
fn accounts_deleted_lists_ids() {
    let e = event(&envelope("accountsDeleted", json!({"accounts": ["1045121390", 1045121391_i64]})));
    assert_eq!(e.deleted_account_ids, ["1045121390", "1045121391"]);
    assert!(e.accounts.is_empty());
}

#[test]
fn failures_carry_their_details() {
    let e = event(&envelope("unableToConnect", json!({"institutionId": "101732", "code": 102})));
    assert_eq!(e.error_code, Some(102));
    assert_eq!(e.institution_id.as_deref(), Some("101732"));
    let e = event(&envelope("institutionNotFound", json!({"query": "first bank of nowhere"})));
    assert_eq!(e.query.as_deref(), Some("first bank of nowhere"));
    let e = event(&envelope("institutionNotSupported", json!({"institutionId": "5"})));
    assert_eq!(e.institution_id.as_deref(), Some("5"));
    for event_type in ["invalidCredentials", "institutionSupported", "done", "mfa", "cancel"] {
        let e = event(&envelope(event_type, json!({"institutionId": "101732"})));
        assert_eq!(e.event_type, event_type);
        assert_eq!(e.institution_id.as_deref(), Some("101732"));
    }
}

#[test]
fn unknown_types_are_normalised_verbatim() {
    let e = event(&envelope("somethingNew", json!({"accounts": [wire_account("1")], "x": 1})));
    assert_eq!(e.event_type, "somethingNew");
    assert!(e.accounts.is_empty(), "accounts are kept for added/discovered only");
    assert_eq!(EventType::parse("somethingNew").label(), "other");
    assert_eq!(EventType::parse("added").label(), "added");
}

#[test]
fn minimisation_drops_numbers_balances_and_detail() {
    let mut body = envelope("added", json!({"accounts": [wire_account("1")]}));
    body["webhookData"] = json!({"partnerRef": "abc"});
    let e = event(&body);
    let published = serde_json::to_string(&e).expect("serialises");
    for forbidden in ["4111111111111111", "1234.56", "balance", "detail", "availableBalanceAmount", "number"] {
        assert!(!published.contains(forbidden), "{forbidden} leaked: {published}");
    }
    assert_eq!(e.webhook_data, Some(json!({"partnerRef": "abc"})));
}

#[test]
fn last4_falls_back_to_the_display_number() {
    let mut account = wire_account("1");
    account.as_object_mut().expect("object").remove("realAccountNumberLast4");
    account["accountNumberDisplay"] = json!("xxxx-9876");
    let e = event(&envelope("added", json!({"accounts": [account]})));
    assert_eq!(e.accounts[0].last4.as_deref(), Some("9876"));
    let mut account = wire_account("1");
    account["realAccountNumberLast4"] = json!("4111111111111111");
    let e = event(&envelope("added", json!({"accounts": [account]})));
    assert_eq!(e.accounts[0].last4.as_deref(), Some("1111"), "never more than four characters");
}

#[test]
fn event_id_is_derived_from_the_body_when_absent() {
    let raw = br#"{"eventType":"started","customerId":"1"}"#;
    let Ok(Webhook::Event(e)) = normalise(raw, now()) else { panic!("event expected") };
    assert_eq!(e.event_id, format!("sha256:{}", hex::encode(Sha256::digest(raw))));
    assert_eq!(e.occurred_at, now(), "no epoch prefix: received_at");
    let Ok(Webhook::Event(again)) = normalise(raw, now()) else { panic!("event expected") };
    assert_eq!(again.event_id, e.event_id, "a redelivery gets the same id");
}

#[test]
fn occurred_at_needs_a_plausible_thirteen_digit_prefix() {
    let at = |id: &str| occurred_at_from_event_id(id, now());
    assert_eq!(at("1764000000123-28ebb24c66699bf3c77f04b1").map(|t| t.timestamp_millis()), Some(1764000000123));
    assert_eq!(at("1764000000123").map(|t| t.timestamp_millis()), Some(1764000000123));
    assert_eq!(at("0946684799999-aa"), None, "before 2000");
    assert_eq!(at("0946684800000-aa").map(|t| t.timestamp_millis()), Some(946684800000));
    let tomorrow_plus = (now() + chrono::Duration::days(1) + chrono::Duration::seconds(1)).timestamp_millis();
    assert_eq!(at(&format!("{tomorrow_plus}-aa")), None, "more than a day ahead");
    assert_eq!(at("17640000001234-aa"), None, "fourteen digits is not the shape");
    assert_eq!(at("176400000012x-aa"), None);
    assert_eq!(at("abc"), None);
}

#[test]
fn programs_come_from_the_url() {
    let acme = ProgramId::parse("acme").expect("id");
    let body = |data: Value| {
        let mut body = envelope("started", json!({}));
        body["webhookData"] = data;
        serde_json::to_vec(&body).expect("serialises")
    };
    let event_of = |raw: &[u8]| match super::normalise(raw, now(), &acme) {
        Ok(Webhook::Event(event)) => Ok(event.program_id),
        Ok(Webhook::Ping) => panic!("unexpected ping"),
        Err(err) => Err(err),
    };
    assert_eq!(event_of(&body(json!({"program": "acme", "x": 1}))), Ok(acme.clone()));
    assert_eq!(event_of(&body(json!({"x": 1}))), Ok(acme.clone()), "no program named: the URL's");
    for other in [json!("b"), json!("ACME"), json!(7), json!(null), json!({"id": "acme"})] {
        assert_eq!(event_of(&body(json!({"program": other}))), Err(ParseError::ProgramMismatch), "{other}");
    }
    // The default program's records are written as before programs existed.
    let raw = body(json!({}));
    let Ok(Webhook::Event(event)) = normalise(&raw, now()) else { panic!("event expected") };
    let record = serde_json::to_value(&*event).expect("serialises");
    assert!(record.get("program_id").is_none(), "absent means default: {record}");
    let Ok(Webhook::Event(event)) = super::normalise(&raw, now(), &acme) else { panic!("event expected") };
    let record = serde_json::to_value(&*event).expect("serialises");
    assert_eq!(record["program_id"], "acme");
    let back: ConnectEvent = serde_json::from_value(record).expect("reads back");
    assert_eq!(back.program_id, acme);
}

#[test]
fn only_the_configured_webhook_data_keys_are_kept() {
    let keep = |data: Value, keys: Option<&[String]>| {
        let mut body = envelope("started", json!({}));
        body["webhookData"] = data;
        let raw = serde_json::to_vec(&body).expect("serialises");
        match normalise_keeping(&raw, now(), &ProgramId::default(), keys) {
            Ok(Webhook::Event(event)) => (event.webhook_data, event.webhook_data_dropped),
            other => panic!("event expected: {other:?}"),
        }
    };
    let keys = ["ref".to_owned(), "program".to_owned()];
    let data = json!({"ref": "r-1", "email": "a@example.com", "nested": {"ref": "x"}, "program": "default"});
    assert_eq!(keep(data.clone(), None), (Some(data.clone()), false), "unset: every key");
    assert_eq!(keep(data.clone(), Some(&keys)), (Some(json!({"ref": "r-1", "program": "default"})), false));
    assert_eq!(keep(json!({"email": "a@example.com"}), Some(&keys)), (Some(json!({})), false), "none listed present");
    assert_eq!(keep(json!({"ref": "r-1"}), Some(&[])), (Some(json!({})), false), "an empty list keeps nothing");
    // Dropped keys do not count towards the size limit.
    let big = json!({"ref": "r-1", "blob": "x".repeat(crate::event::MAX_WEBHOOK_DATA_BYTES)});
    assert_eq!(keep(big.clone(), None), (None, true));
    assert_eq!(keep(big, Some(&keys)), (Some(json!({"ref": "r-1"})), false));
    // The signed program is checked against the URL even when it is not kept.
    let mut body = envelope("started", json!({}));
    body["webhookData"] = json!({"program": "other"});
    let raw = serde_json::to_vec(&body).expect("serialises");
    let only_ref = ["ref".to_owned()];
    assert_eq!(
        normalise_keeping(&raw, now(), &ProgramId::default(), Some(&only_ref)),
        Err(ParseError::ProgramMismatch)
    );
}

/// Odd but well-formed (and some malformed) bodies, written as JSON text so
/// that keys can repeat: the typed parse reads every one as the former
/// reading through `serde_json::Value` did.
mod same_as_value {
    use proptest::prelude::*;

    use super::*;

    /// Text of a JSON string holding `s`, with some characters escaped.
    fn quoted(s: &str, escape_all: bool) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || (escape_all && c.is_ascii_alphanumeric()) => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn string_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ("[0-9]{1,24}", any::<bool>()).prop_map(|(s, e)| quoted(&s, e)),
            ("1764000000123-[0-9a-f]{4}", any::<bool>()).prop_map(|(s, e)| quoted(&s, e)),
            ("\\PC{0,12}", any::<bool>()).prop_map(|(s, e)| quoted(&s, e)),
            Just(r#""\ud800""#.to_owned()),
            Just(r#""\ud83d\ude00""#.to_owned()),
            Just(r#""a\u0000b""#.to_owned()),
            Just(r#""""#.to_owned()),
            prop::sample::select(vec![
                "started",
                "ping",
                "added",
                "discovered",
                "accountsDeleted",
                "adding",
                "default"
            ])
            .prop_map(|s| quoted(s, false)),
        ]
    }

    fn scalar_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => string_text(),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => Just("18446744073709551616".to_owned()),
            1 => Just("1e400".to_owned()),
            1 => Just("-0".to_owned()),
            1 => (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
            1 => Just("1.5e3".to_owned()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => Just("null".to_owned()),
        ]
    }

    /// A JSON value's text: scalars, and objects and arrays of them.
    fn value_text() -> impl Strategy<Value = String> {
        scalar_text().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key_text(&[]), inner), 0..4).prop_map(|fields| object_text(&fields)),
            ]
        })
    }

    fn key_text(known: &'static [&'static str]) -> impl Strategy<Value = String> {
        let names: Vec<&'static str> = if known.is_empty() { vec!["x"] } else { known.to_vec() };
        prop_oneof![
            3 => (prop::sample::select(names), any::<bool>()).prop_map(|(k, e)| quoted(k, e)),
            1 => "[a-zA-Z]{0,8}".prop_map(|k| quoted(&k, false)),
        ]
    }

    fn object_text(fields: &[(String, String)]) -> String {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", fields.join(","))
    }

    const ACCOUNT_KEYS: &[&str] = &[
        "id",
        "institutionLoginId",
        "institutionId",
        "type",
        "status",
        "name",
        "aggregationStatusCode",
        "realAccountNumberLast4",
        "accountNumberDisplay",
        "number",
        "balance",
    ];
    const PAYLOAD_KEYS: &[&str] =
        &["institutionId", "institutionLoginId", "oauth", "mfa", "code", "query", "accounts", "detail"];
    const ENVELOPE_KEYS: &[&str] =
        &["eventType", "customerId", "eventId", "consumerId", "payload", "webhookData", "webhookHeaders"];

    fn fields(keys: &'static [&'static str], value: BoxedStrategy<String>) -> impl Strategy<Value = String> {
        prop::collection::vec((key_text(keys), value), 0..8).prop_map(|fields| object_text(&fields))
    }

    fn account_text() -> BoxedStrategy<String> {
        prop_oneof![3 => fields(ACCOUNT_KEYS, scalar_text().boxed()), 1 => value_text()].boxed()
    }

    fn payload_value() -> BoxedStrategy<String> {
        prop_oneof![
            2 => prop::collection::vec(account_text(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            1 => value_text(),
        ]
        .boxed()
    }

    fn envelope_value() -> BoxedStrategy<String> {
        prop_oneof![
            2 => scalar_text(),
            1 => fields(PAYLOAD_KEYS, payload_value()),
            1 => prop::collection::vec(("\"program\"|\"ref\"|\"x\"", scalar_text()), 0..3)
                .prop_map(|f| object_text(&f)),
            1 => value_text(),
        ]
        .boxed()
    }

    /// A body: mostly an envelope with a type and a customer (so that the
    /// reading goes past the first checks), sometimes anything at all.
    fn body() -> impl Strategy<Value = String> {
        let envelope = (
            prop::sample::select(vec!["started", "added", "discovered", "accountsDeleted", "adding", "ping", "x"]),
            "[0-9]{1,10}",
            fields(ENVELOPE_KEYS, envelope_value()),
            any::<bool>(),
        )
            .prop_map(|(event_type, customer, rest, typed_first)| {
                let known = format!(r#""eventType":"{event_type}","customerId":"{customer}""#);
                let rest = rest.trim_start_matches('{').trim_end_matches('}').to_owned();
                match (typed_first, rest.is_empty()) {
                    (_, true) => format!("{{{known}}}"),
                    (true, false) => format!("{{{known},{rest}}}"),
                    (false, false) => format!("{{{rest},{known}}}"),
                }
            });
        prop_oneof![
            6 => envelope,
            1 => fields(ENVELOPE_KEYS, envelope_value()),
            1 => value_text(),
            1 => (value_text(), 0usize..40).prop_map(|(text, cut)| text.chars().take(cut).collect()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn every_body_reads_as_it_did_through_a_value(body in body(), keep_some in any::<bool>()) {
            let keys = ["ref".to_owned(), "program".to_owned()];
            let keys = keep_some.then_some(&keys[..]);
            for program in [ProgramId::default(), ProgramId::parse("acme").expect("valid")] {
                let typed = normalise_keeping(body.as_bytes(), now(), &program, keys);
                let oracle = oracle::normalise_keeping(body.as_bytes(), now(), &program, keys);
                prop_assert_eq!(typed, oracle, "body: {}", body);
            }
        }
    }

    #[test]
    fn repeated_keys_numbers_and_unknown_fields_read_as_before() {
        let bodies = [
            r#"{"eventType":"added","customerId":"1","eventType":"started"}"#,
            r#"{"eventType":"added","customerId":"1","payload":{"accounts":[{"id":1,"id":"2"}]},"payload":7}"#,
            r#"{"eventType":"added","customerId":"1","payload":{"institutionLoginId":1022599285,"code":1e3}}"#,
            r#"{"eventType":"accountsDeleted","customerId":"1","payload":{"accounts":[1,"2",{"id":"3"},null,2.5]}}"#,
            r#"{"eventType":"started","customerId":"1","junk":"\ud800"}"#,
            r#"{"eventType":"started","customerId":"1","junk":1e400}"#,
            r#"{"eventType":"started","customerId":"1","junk":"\u0041\ud83d\ude00"}"#,
            r#"{"event\u0054ype":"started","customerId":"1","webhookData":{"program":"default","program":"x"}}"#,
            r#"{"eventType":"started","customerId":"1"} x"#,
            r#"[{"eventType":"started"}]"#,
            "\"text\"",
        ];
        for body in bodies {
            let typed = normalise_keeping(body.as_bytes(), now(), &ProgramId::default(), None);
            let oracle = oracle::normalise_keeping(body.as_bytes(), now(), &ProgramId::default(), None);
            assert_eq!(typed, oracle, "{body}");
        }
        // Invalid UTF-8 inside an unknown field is still not JSON.
        let mut raw = br#"{"eventType":"started","customerId":"1","junk":"#.to_vec();
        raw.extend_from_slice(b"\"\xff\"}");
        assert_eq!(normalise_keeping(&raw, now(), &ProgramId::default(), None), Err(ParseError::NotJson));
        assert_eq!(oracle::normalise_keeping(&raw, now(), &ProgramId::default(), None), Err(ParseError::NotJson));
    }
}
