//! Properties of the receiver over generated bodies: whatever a signed body
//! holds, the receiver either refuses it (400) or publishes a record the real
//! store keeps; and no body makes it answer anything but the contract's
//! statuses.

use chrono::Utc;
use connectflow::event::EventType;
use connectflow::receive::normalise::{Webhook, normalise};
use connectflow::receive::signature::sign;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};

use crate::helpers::{PARTNER_SECRET, database_args, fresh_database, spawn_app};

/// Text of every kind a sender controls: digits (ids), control characters
/// and NUL, any Unicode, and long runs.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,24}",
        "[\\x00-\\x7f]{0,40}",
        "\\PC{0,40}",
        ".{0,20}",
        "[a-z0-9 \\n\\t\\x00]{60,70}",
        "[0-9a-f]{120,140}",
        "[a-z0-9]{2990,3010}",
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        any_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any_text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field's value: usually plausible, often anything.
fn field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        3 => "[0-9]{1,22}".prop_map(|s| Some(Value::from(s))),
        5 => any_json().prop_map(Some),
    ]
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect::<Map<_, _>>())
}

fn account() -> impl Strategy<Value = Value> {
    (field(), field(), field(), field(), field(), field(), field(), field(), field(), field()).prop_map(
        |(id, number, last4, display, name, balance, kind, status, login, code)| {
            object(vec![
                ("id", id),
                ("number", number),
                ("realAccountNumberLast4", last4),
                ("accountNumberDisplay", display),
                ("name", name),
                ("balance", balance),
                ("type", kind),
                ("status", status),
                ("institutionLoginId", login),
                ("aggregationStatusCode", code),
            ])
        },
    )
}

/// A Finicity-shaped envelope of every event type, any value in any field.
fn envelope() -> impl Strategy<Value = Value> {
    let event_type = prop_oneof![
        8 => prop::sample::select(EventType::KNOWN).prop_map(|t| Value::from(t.as_str())),
        1 => any_json(),
    ];
    let accounts = prop_oneof![prop::collection::vec(account(), 0..4).prop_map(Value::from), any_json(),];
    let payload = (field(), field(), field(), field(), field(), field(), accounts).prop_map(
        |(institution, oauth, mfa, query, code, login, accounts)| {
            object(vec![
                ("institutionId", institution),
                ("oauth", oauth),
                ("mfa", mfa),
                ("query", query),
                ("code", code),
                ("institutionLoginId", login),
                ("accounts", Some(accounts)),
            ])
        },
    );
    (event_type, field(), field(), field(), payload, field()).prop_map(
        |(event_type, customer, event_id, consumer, payload, webhook_data)| {
            object(vec![
                ("eventType", Some(event_type)),
                ("customerId", customer),
                ("eventId", event_id),
                ("consumerId", consumer),
                ("payload", Some(payload)),
                ("webhookData", webhook_data),
            ])
        },
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn every_signed_body_is_refused_with_400_or_stored_by_the_real_store() {
    let rt = runtime();
    let pool = rt.block_on(async {
        let url = fresh_database().await;
        let pool = connectflow::store::pool(&database_args(&url)).expect("pool");
        connectflow::store::migrate(&pool).await.expect("migrate");
        pool
    });
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    let stored = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&envelope(), |body| {
            let raw = serde_json::to_vec(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let event = match normalise(&raw, Utc::now(), &Default::default()) {
                // The receiver answers 400: nothing acknowledged.
                Err(_) | Ok(Webhook::Ping) => return Ok(()),
                Ok(Webhook::Event(event)) => event,
            };
            rt.block_on(connectflow::store::apply::apply_batch(&pool, [event.as_ref()]))
                .map_err(|err| TestCaseError::fail(format!("accepted but not storable: {err}")))?;
            stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .expect("every accepted body is storable");
    let stored = stored.into_inner();
    assert!(stored > 30, "the generator reaches the store often enough to mean something: {stored}");
}

/// A body and how it is sent.
#[derive(Debug, Clone)]
struct Request {
    body: Vec<u8>,
    signed: bool,
    content_type: Option<&'static str>,
}

fn request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        3 => envelope().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => (envelope(), 0..64_usize).prop_map(|(v, cut)| {
            let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
            bytes.truncate(bytes.len().saturating_sub(cut));
            bytes
        }),
        1 => prop::collection::vec(Just(b' '), 65_000..70_000),
    ];
    let content_type = prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("application/xml")),
        1 => Just(Some("text/plain; charset=utf-8")),
    ];
    (body, prop::bool::weighted(0.85), content_type).prop_map(|(body, signed, content_type)| Request {
        body,
        signed,
        content_type,
    })
}

#[test]
fn no_body_makes_the_receiver_answer_outside_the_contract() {
    let rt = runtime();
    let app = rt.block_on(spawn_app());
    let url = format!("{}/webhooks/finicity/connect", app.base_url);
    let mut runner = TestRunner::new(Config { cases: 200, failure_persistence: None, ..Config::default() });
    runner
        .run(&request(), |request| {
            let mut builder = app.client.post(&url).body(request.body.clone());
            if let Some(content_type) = request.content_type {
                builder = builder.header("content-type", content_type);
            }
            if request.signed {
                builder = builder.header("x-finicity-signature", sign(PARTNER_SECRET, &request.body));
            }
            let response = rt.block_on(builder.send()).map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            let status = response.status().as_u16();
            prop_assert!([200, 400, 401, 413, 415].contains(&status), "status {status}");
            let answer: Value = rt.block_on(response.json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if status != 200 {
                prop_assert!(answer["error"]["code"].is_string() && answer["error"]["message"].is_string(), "{answer}");
            }
            Ok(())
        })
        .expect("only contract statuses, each in the one error shape");
    rt.block_on(app.stop());
}
