//! Minimisation in the receiver (issue 24): free text reaches Kafka,
//! Postgres and the logs with its digit runs masked, and only the configured
//! `webhookData` keys are published.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{
    API_TOKEN, AppOptions, PARTNER_SECRET, eventually, http_settings, services, spawn_app_with, spawn_binary,
    unique_kafka_args,
};
use crate::kafka_util::{count_records, read_all};

/// A number a customer typed into free text.
const RUN: &str = "987654321098";
/// The digits masking hides: no copy anywhere may hold them.
const HIDDEN: &str = "98765432";
/// How every copy shows the number.
const MASKED: &str = "••••••••1098";
const CUSTOMER: &str = "8240000001";

fn not_found() -> Value {
    json!({
        "customerId": CUSTOMER, "eventType": "institutionNotFound", "eventId": "1764000000001-minimise",
        "payload": {"query": format!("first bank {RUN}")},
    })
}

fn added() -> Value {
    json!({
        "customerId": CUSTOMER, "eventType": "added", "eventId": "1764000000002-minimise",
        "payload": {"institutionId": "101732", "oauth": true, "accounts": [{
            "id": "1045121390", "number": "4111111111111111", "realAccountNumberLast4": "1111",
            "name": format!("Checking {RUN}"), "type": "checking", "status": "active",
            "institutionId": "101732", "institutionLoginId": 1022599285,
        }]},
    })
}

/// `(table, rows)` for every table of the database whose rows, as text,
/// hold `needle`.
async fn tables_holding(pool: &PgPool, needle: &str) -> Vec<(String, i64)> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .expect("listing the tables");
    assert!(tables.iter().any(|(_, t)| t == "connect_events"), "{tables:?}");
    let mut holding = Vec::new();
    for (schema, table) in tables {
        let sql = format!("SELECT count(*) FROM \"{schema}\".\"{table}\" AS t WHERE t::text LIKE '%' || $1 || '%'");
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|err| panic!("scanning {schema}.{table}: {err}"));
        if rows > 0 {
            holding.push((format!("{schema}.{table}"), rows));
        }
    }
    holding
}

/// Every record of `topic` (key, value and headers) as text, one per record.
async fn topic_texts(brokers: &str, topic: &str) -> Vec<String> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    let records = tokio::task::spawn_blocking(move || read_all(&brokers, &topic)).await.expect("reader");
    records
        .iter()
        .map(|record| {
            let mut text = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
            text.push_str(&String::from_utf8_lossy(&record.value));
            for (name, value) in &record.headers {
                text.push_str(&format!(" {name}={}", String::from_utf8_lossy(value)));
            }
            text
        })
        .collect()
}

async fn records_on(brokers: &str, topic: &str) -> i64 {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || count_records(&brokers, &topic)).await.expect("counter")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("count")
}

#[tokio::test]
async fn a_number_typed_into_free_text_reaches_no_topic_table_or_log_line() {
    // The real binary (`connectflow all`: receiver, consumer, relay), with
    // every log line at debug level written to a file.
    let app = spawn_binary("all", "debug").await;
    let (base, pool, kafka) = (app.base_url.clone(), app.pool.clone(), app.kafka.clone());
    let client = reqwest::Client::new();

    for body in [not_found(), added()] {
        let raw = serde_json::to_vec(&body).expect("JSON");
        let response = client
            .post(format!("{base}/webhooks/finicity/connect"))
            .header("content-type", "application/json")
            .header("x-finicity-signature", connectflow::receive::signature::sign(PARTNER_SECRET, &raw))
            .body(raw)
            .send()
            .await
            .expect("webhook");
        assert_eq!(response.status(), 200, "{body}");
    }
    let lifecycle = format!("{base}/v1/customers/{CUSTOMER}/lifecycle");
    let applied = eventually(Duration::from_secs(30), || async {
        let response = client.get(&lifecycle).bearer_auth(API_TOKEN).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["event_count"] == 2).then_some(())
    })
    .await;
    assert_eq!(applied, Some(()), "both webhooks applied");
    let revoked = client
        .post(format!("{base}/v1/customers/{CUSTOMER}/consent/revocations"))
        .bearer_auth(API_TOKEN)
        .header("idempotency-key", "minimise-1")
        .json(&json!({"revoked_by": "customer", "reason": format!("asked by phone, card {RUN}")}))
        .send()
        .await
        .expect("revocation");
    assert_eq!(revoked.status(), 202);

    // Every event applied and every change published.
    let settled = eventually(Duration::from_secs(30), || async {
        let events = count(&pool, "SELECT count(*) FROM connect_events").await;
        let unpublished = count(&pool, "SELECT count(*) FROM lifecycle_outbox").await;
        let changes = count(&pool, "SELECT count(*) FROM lifecycle_changes").await;
        let on_topic = records_on(&kafka.brokers, &kafka.changes_topic).await;
        (events == 3 && unpublished == 0 && changes > 0 && on_topic == changes).then_some(())
    })
    .await;
    assert_eq!(settled, Some(()), "three events applied, their changes published");
    let logs = app.stop().await;

    // Kafka: the events, changes and dead-letter topics.
    let events = topic_texts(&kafka.brokers, &kafka.events_topic).await;
    assert_eq!(events.len(), 3, "{events:?}");
    for topic in [&kafka.events_topic, &kafka.changes_topic, &kafka.dlq_topic] {
        for record in topic_texts(&kafka.brokers, topic).await {
            assert!(!record.contains(RUN) && !record.contains(HIDDEN), "{topic}: {record}");
        }
    }
    for shown in [format!("first bank {MASKED}"), format!("Checking {MASKED}"), format!("card {MASKED}")] {
        assert!(events.iter().any(|record| record.contains(&shown)), "{shown} in {events:?}");
    }

    // Postgres: every row of every table.
    for needle in [RUN, HIDDEN] {
        let holding = tables_holding(&pool, needle).await;
        assert!(holding.is_empty(), "{needle} in {holding:?}");
    }
    let masked: Vec<String> = tables_holding(&pool, MASKED).await.into_iter().map(|(table, _)| table).collect();
    for table in ["public.connect_events", "public.accounts"] {
        assert!(masked.iter().any(|t| t == table), "{table} keeps the masked text: {masked:?}");
    }

    // The process's log lines.
    assert!(logs.contains("HTTP server listening") && logs.lines().count() > 20, "the logs were captured: {logs}");
    assert!(logs.contains(CUSTOMER), "the logs name the customer, so they were written while it was handled");
    for needle in [RUN, HIDDEN] {
        let leaked: Vec<&str> = logs.lines().filter(|line| line.contains(needle)).collect();
        assert!(leaked.is_empty(), "{needle} in the logs: {leaked:?}");
    }
}

#[tokio::test]
async fn a_webhook_data_key_not_listed_never_reaches_kafka_or_postgres() {
    let services = services().await;
    let mut http = http_settings();
    http.webhook_data_keys = Some(Arc::from(["ref".to_owned(), "program".to_owned()]));
    let app = spawn_app_with(AppOptions {
        http,
        kafka: unique_kafka_args(&services.kafka_brokers),
        create_topics: true,
        consumer: true,
    })
    .await;
    let body = json!({
        "customerId": CUSTOMER, "eventType": "started", "eventId": "1764000000003-minimise",
        "webhookData": {"ref": "r-1", "droppedEmail": "dropped-key@example.com", "droppedNested": {"ref": "dropped-inner"}},
    });
    let response = app.post_webhook(&serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 200);
    let stored = eventually(Duration::from_secs(30), || async {
        (count(&app.pool, "SELECT count(*) FROM connect_events").await == 1).then_some(())
    })
    .await;
    assert_eq!(stored, Some(()), "the event was applied");

    let records = read_all(&app.kafka.brokers, &app.kafka.events_topic);
    assert_eq!(records.len(), 1);
    let record: Value = serde_json::from_slice(&records[0].value).expect("JSON");
    assert_eq!(record["webhook_data"], json!({"ref": "r-1"}), "{record}");
    let kept: Value = sqlx::query_scalar("SELECT record->'webhook_data' FROM connect_events")
        .fetch_one(&app.pool)
        .await
        .expect("stored record");
    assert_eq!(kept, json!({"ref": "r-1"}));
    for needle in ["droppedEmail", "dropped-key@example.com", "droppedNested", "dropped-inner"] {
        for topic in [&app.kafka.events_topic, &app.kafka.changes_topic, &app.kafka.dlq_topic] {
            for text in topic_texts(&app.kafka.brokers, topic).await {
                assert!(!text.contains(needle), "{needle} on {topic}: {text}");
            }
        }
        let holding = tables_holding(&app.pool, needle).await;
        assert!(holding.is_empty(), "{needle} in {holding:?}");
    }
    app.stop().await;
}
