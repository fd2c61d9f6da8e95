//! Programs: one connectflow for many card programs. The receiver side:
//! each program's URL, its own partner secrets, and the program carried by
//! every event.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use connectflow::lifecycle::AuthorizationPolicy;
use connectflow::program::{Programs, Secrets};
use connectflow::receive::signature::sign;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, PARTNER_SECRET, TestApp, http_settings, services, spawn_app_with, unique_kafka_args};
use crate::kafka_util::read_all;

/// Two programs: `acme` with secrets of its own, `bank-b` with the default
/// ones (FINICITY_PARTNER_SECRETS); no `default` program.
pub const PROGRAMS: &str = r#"
[[program]]
id = "acme"
name = "Acme Card"
partner_secrets_env = "ACME_SECRETS"

[[program]]
id = "bank-b"
name = "Bank B Rewards"
authorization_days = 30
"#;

pub const ACME_SECRET: &str = "acme-partner-secret";

/// The two programs, parsed as `serve` would with ACME_SECRETS set.
pub fn two_programs() -> Programs {
    let default = connectflow::config::SecretList::new([PARTNER_SECRET]).expect("secrets");
    let env = |name: &str| (name == "ACME_SECRETS").then(|| ACME_SECRET.to_owned());
    Programs::parse(PROGRAMS, AuthorizationPolicy::default(), Secrets::Required { default: Some(&default) }, &env)
        .expect("the test programs file")
}

pub async fn spawn_two_programs(consumer: bool) -> TestApp {
    let services = services().await;
    spawn_two_programs_with(consumer, unique_kafka_args(&services.kafka_brokers)).await
}

async fn spawn_two_programs_with(consumer: bool, kafka: connectflow::config::KafkaArgs) -> TestApp {
    let mut http = http_settings();
    http.programs = Arc::new(two_programs());
    spawn_app_with(AppOptions { http, kafka, create_topics: true, consumer }).await
}

fn started(customer: &str, event_id: &str, webhook_data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "customerId": customer,
        "eventType": "started",
        "eventId": event_id,
        "payload": {},
        "webhookData": webhook_data,
    }))
    .expect("serialises")
}

async fn post(app: &TestApp, path: &str, body: &[u8], secret: &str) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{path}", app.base_url))
        .header("content-type", "application/json")
        .header("x-finicity-signature", sign(secret, body))
        .body(body.to_vec())
        .send()
        .await
        .expect("webhook request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn each_program_has_its_url_and_its_partner_secrets() {
    let app = spawn_two_programs(false).await;
    let acme = started("1001", "1764000000001-acme", json!({"program": "acme"}));
    let (status, answer) = post(&app, "/webhooks/finicity/connect/acme", &acme, ACME_SECRET).await;
    assert_eq!((status, &answer["status"]), (200, &json!("accepted")), "{answer}");
    let bank_b = started("2002", "1764000000002-bank-b", json!({"ref": 1}));
    let (status, _) = post(&app, "/webhooks/finicity/connect/bank-b", &bank_b, PARTNER_SECRET).await;
    assert_eq!(status, 200, "a program without a variable of its own uses FINICITY_PARTNER_SECRETS");

    // Another program's secret is a wrong signature here.
    let other = started("1001", "1764000000003-acme", json!({}));
    let (status, answer) = post(&app, "/webhooks/finicity/connect/acme", &other, PARTNER_SECRET).await;
    assert_eq!((status, &answer["error"]["code"]), (401, &json!("invalid_signature")), "{answer}");
    let (status, _) = post(&app, "/webhooks/finicity/connect/bank-b", &other, ACME_SECRET).await;
    assert_eq!(status, 401);

    // Each record carries its program, in the value and in a header.
    let records = read_all(&app.kafka.brokers, &app.kafka.events_topic);
    assert_eq!(records.len(), 2, "only the two accepted events");
    for (customer, program) in [("1001", "acme"), ("2002", "bank-b")] {
        let record = records
            .iter()
            .find(|r| r.key.as_deref() == Some(customer.as_bytes()))
            .unwrap_or_else(|| panic!("record of {customer}"));
        assert_eq!(record.header("program"), Some(program));
        let value: Value = serde_json::from_slice(&record.value).expect("JSON");
        assert_eq!(value["program_id"], program);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_body_signed_for_one_program_cannot_be_replayed_to_another() {
    let app = spawn_two_programs(false).await;
    // Signed with acme's secret, naming bank-b: posted to acme's URL.
    let body = started("1001", "1764000000004-acme", json!({"program": "bank-b"}));
    let (status, answer) = post(&app, "/webhooks/finicity/connect/acme", &body, ACME_SECRET).await;
    assert_eq!((status, &answer["error"]["code"]), (400, &json!("program_mismatch")), "{answer}");
    // And the same for the program's ping.
    let ping = serde_json::to_vec(&json!({"eventType": "ping", "webhookData": {"program": "bank-b"}})).expect("json");
    let (status, _) = post(&app, "/webhooks/finicity/connect/acme", &ping, ACME_SECRET).await;
    assert_eq!(status, 400);
    assert!(read_all(&app.kafka.brokers, &app.kafka.events_topic).is_empty(), "nothing published");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_program_is_404_before_the_body_is_read() {
    let app = spawn_two_programs(false).await;
    let body = started("1001", "1764000000005-x", json!({}));
    for path in ["/webhooks/finicity/connect/nobody", "/webhooks/finicity/connect/ACME", "/webhooks/finicity/connect"] {
        let (status, answer) = post(&app, path, &body, PARTNER_SECRET).await;
        assert_eq!((status, &answer["error"]["code"]), (404, &json!("not_found")), "{path}: {answer}");
    }
    // A declared length and no body: answered at once, not after the body's
    // timeout (CONNECTFLOW_REQUEST_TIMEOUT_MS, 10 s in tests).
    let address = app.base_url.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        stream
            .write_all(b"POST /webhooks/finicity/connect/nobody HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n")
            .expect("write");
        let mut answer = vec![0; 256];
        let n = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .expect("joined");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn without_a_programs_file_both_urls_mean_default() {
    let services = services().await;
    let app = spawn_app_with(AppOptions {
        http: http_settings(),
        kafka: unique_kafka_args(&services.kafka_brokers),
        create_topics: true,
        consumer: false,
    })
    .await;
    let body = started("1001", "1764000000006-d", json!({"program": "default"}));
    assert_eq!(post(&app, "/webhooks/finicity/connect", &body, PARTNER_SECRET).await.0, 200);
    let body = started("1001", "1764000000007-d", json!({}));
    assert_eq!(post(&app, "/webhooks/finicity/connect/default", &body, PARTNER_SECRET).await.0, 200);
    let records = read_all(&app.kafka.brokers, &app.kafka.events_topic);
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record.header("program"), Some("default"));
        let value: Value = serde_json::from_slice(&record.value).expect("JSON");
        assert!(value.get("program_id").is_none(), "written as before programs existed: {value}");
    }
    app.stop().await;
}

/// The records on the dead-letter topic, once there is one.
async fn parked_records(app: &TestApp) -> Vec<crate::kafka_util::Record> {
    crate::helpers::eventually(Duration::from_secs(30), || async {
        let records = read_all(&app.kafka.brokers, &app.kafka.dlq_topic);
        (!records.is_empty()).then_some(records)
    })
    .await
    .expect("a parked record")
}

/// The stored program and event count of a customer, once it has `events`.
async fn stored(app: &TestApp, customer: &str, events: i64) -> Option<(String, i64)> {
    crate::helpers::eventually(Duration::from_secs(30), || async {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT program_id, event_count FROM customers WHERE customer_id = $1")
                .bind(customer)
                .fetch_optional(&app.pool)
                .await
                .ok()
                .flatten();
        row.filter(|(_, count)| *count >= events)
    })
    .await
}

#[tokio::test]
async fn an_event_for_another_programs_customer_is_parked_and_changes_nothing() {
    let app = spawn_two_programs(true).await;
    let first = started("3003", "1764000000010-acme", json!({}));
    assert_eq!(post(&app, "/webhooks/finicity/connect/acme", &first, ACME_SECRET).await.0, 200);
    assert_eq!(stored(&app, "3003", 1).await, Some(("acme".to_owned(), 1)), "the customer belongs to acme");

    // The same customer id under bank-b: accepted by the receiver (it cannot
    // know), parked by the consumer.
    let intruder = serde_json::to_vec(&json!({
        "customerId": "3003", "eventType": "done", "eventId": "1764000000011-bank-b", "payload": {},
    }))
    .expect("json");
    assert_eq!(post(&app, "/webhooks/finicity/connect/bank-b", &intruder, PARTNER_SECRET).await.0, 200);
    // And a later event of acme's, after it: applied.
    let second = serde_json::to_vec(&json!({
        "customerId": "3003", "eventType": "adding", "eventId": "1764000000012-acme", "payload": {"institutionId": "101732"},
    }))
    .expect("json");
    assert_eq!(post(&app, "/webhooks/finicity/connect/acme", &second, ACME_SECRET).await.0, 200);
    assert_eq!(stored(&app, "3003", 2).await, Some(("acme".to_owned(), 2)));

    let parked = parked_records(&app).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].header("dlq_reason"), Some("program_conflict"));
    assert_eq!(parked[0].header("dlq_event_id"), Some("1764000000011-bank-b"));
    assert_eq!(parked[0].header("program"), Some("bank-b"), "the original record, headers included");

    // Nothing of it was recorded: not an event, not a change.
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events WHERE event_id = '1764000000011-bank-b'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(recorded, 0);
    let changes: Vec<String> =
        sqlx::query_scalar("SELECT change FROM lifecycle_changes WHERE customer_id = '3003' ORDER BY version")
            .fetch_all(&app.pool)
            .await
            .expect("changes");
    assert!(!changes.is_empty());
    for change in &changes {
        let change: Value = serde_json::from_str(change).expect("JSON");
        assert_eq!(change["program_id"], "acme");
        assert!(!change.to_string().contains("1764000000011-bank-b"), "{change}");
    }
    let lifecycle: Value = sqlx::query_scalar("SELECT lifecycle FROM customers WHERE customer_id = '3003'")
        .fetch_one(&app.pool)
        .await
        .expect("lifecycle");
    assert_ne!(lifecycle["authentication"]["state"], "succeeded", "the intruder's done did not apply: {lifecycle}");
    app.stop().await;
}

#[tokio::test]
async fn a_new_customers_first_event_decides_its_program_within_a_batch() {
    // Both events in one batch: the consumer starts after they are published.
    let app = spawn_two_programs(false).await;
    let acme = started("4004", "1764000000020-acme", json!({}));
    assert_eq!(post(&app, "/webhooks/finicity/connect/acme", &acme, ACME_SECRET).await.0, 200);
    let bank_b = started("4004", "1764000000021-bank-b", json!({}));
    assert_eq!(post(&app, "/webhooks/finicity/connect/bank-b", &bank_b, PARTNER_SECRET).await.0, 200);
    let (stop, consumer) = crate::helpers::spawn_consumer(&app, "programs-batch");
    assert_eq!(stored(&app, "4004", 1).await, Some(("acme".to_owned(), 1)));
    let parked = parked_records(&app).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].header("dlq_event_id"), Some("1764000000021-bank-b"));
    stop.cancel();
    let _ = consumer.await;
    app.stop().await;
}

#[tokio::test]
async fn each_program_can_have_a_changes_topic_of_its_own() {
    let services = services().await;
    let mut kafka = unique_kafka_args(&services.kafka_brokers);
    kafka.changes_topic = format!("{}.{{program}}", kafka.changes_topic);
    let app = spawn_two_programs_with(true, kafka).await;
    let customers = [("5001", "acme", ACME_SECRET), ("5002", "bank-b", PARTNER_SECRET), ("5003", "acme", ACME_SECRET)];
    for (n, (customer, program, secret)) in customers.iter().enumerate() {
        let body = started(customer, &format!("17640000000{n:02}-c"), json!({}));
        let path = format!("/webhooks/finicity/connect/{program}");
        assert_eq!(post(&app, &path, &body, secret).await.0, 200);
    }
    for (program, expected) in [("acme", vec!["5001", "5003"]), ("bank-b", vec!["5002"])] {
        let topic = app.kafka.changes_topic_for(program);
        let records = crate::helpers::eventually(Duration::from_secs(30), || async {
            let records = read_all(&app.kafka.brokers, &topic);
            (records.len() >= expected.len()).then_some(records)
        })
        .await
        .unwrap_or_else(|| panic!("{program}'s changes on {topic}"));
        let mut keys: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
            .collect();
        keys.sort();
        assert_eq!(keys, expected, "{topic} holds {program}'s customers and no other");
        for record in &records {
            assert_eq!(record.header("program"), Some(program));
            let change: Value = serde_json::from_slice(&record.value).expect("JSON");
            assert_eq!(change["program_id"], program);
        }
    }
    app.stop().await;
}
