//! Erasure (issue 24): `POST /v1/customers/{id}/erasures` deletes what
//! connectflow holds about a customer and keeps a compliance record; the
//! customer stays erased whatever comes back (Finicity's retries, `dlq
//! replay`), and a session after the erasure starts afresh.

use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::simulate::flows::{bodies, flow};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{API_TOKEN, TestApp, eventually, spawn_pipeline};
use crate::kafka_util::{count_records, read_all};

async fn send(app: &TestApp, bodies: &[Value]) {
    for body in bodies {
        let response = app.post_webhook(&serde_json::to_vec(body).expect("json")).await;
        assert_eq!(response.status(), 200, "{body}");
    }
}

async fn lifecycle_with(app: &TestApp, customer: &str, event_count: usize) -> Value {
    eventually(Duration::from_secs(30), || async {
        let body: Value = app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await.json().await.ok()?;
        (body["event_count"].as_u64() == Some(event_count as u64)).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("{customer} never reached {event_count} events"))
}

async fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = app
        .client
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, replayed, response.json().await.unwrap_or(Value::Null))
}

async fn erase(app: &TestApp, customer: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    post(app, &format!("/v1/customers/{customer}/erasures"), key, body).await
}

/// The tables of the app's schema whose rows mention `needle` anywhere (the
/// whole row as text), with how many: every table, listed from
/// `information_schema`, not from a hand-kept list.
async fn tables_mentioning(pool: &PgPool, needle: &str) -> Vec<(String, i64)> {
    // One statement: each table's count comes from a query built with
    // format()'s %I (a quoted identifier) and %L (a quoted literal).
    let counts: Vec<(String, i64)> = sqlx::query_as(
        r#"
        SELECT table_name::text,
               (xpath('/row/n/text()', query_to_xml(
                   format('SELECT count(*) AS n FROM %I AS t WHERE t::text LIKE %L', table_name, '%' || $1 || '%'),
                   false, true, '')))[1]::text::int8
        FROM information_schema.tables
        WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
        ORDER BY table_name
        "#,
    )
    .bind(needle)
    .fetch_all(pool)
    .await
    .expect("counting rows per table");
    assert!(counts.len() >= 10, "the schema's tables: {counts:?}");
    counts.into_iter().filter(|(_, n)| *n > 0).collect()
}

/// The value of a counter on `/metrics` (0 when absent).
async fn counter(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// An erasure's reason with a card number typed into it.
const REASON: &str = "asked by phone, card 4111111111111111";

fn at_ms(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn an_erased_customer_leaves_only_the_tombstone_and_stays_erased() {
    let app = spawn_pipeline().await;
    let customer = "8500000101";
    let bystander = "8500000102";
    let start = Utc::now() - chrono::Duration::minutes(30);
    let history = bodies(flow("oauth-success").expect("flow"), customer, start, 1);
    let other = bodies(flow("oauth-success").expect("flow"), bystander, start, 2);
    send(&app, &history).await;
    send(&app, &other).await;
    let mut events = history.len();
    lifecycle_with(&app, customer, events).await;
    lifecycle_with(&app, bystander, other.len()).await;

    // A revocation (its request row), reads (access-log rows), and one
    // event of the customer parked in the dead-letter topic.
    let (status, _, _) =
        post(&app, &format!("/v1/customers/{customer}/consent/revocations"), "r-1", &json!({"revoked_by": "customer"}))
            .await;
    assert_eq!(status, 202);
    events += 1;
    let before = lifecycle_with(&app, customer, events).await;
    assert_eq!(before["consent"]["state"], "revoked", "{before}");
    for route in ["lifecycle", "events", "changes"] {
        assert_eq!(app.api_get(&format!("/v1/customers/{customer}/{route}")).await.status(), 200, "{route}");
    }
    sqlx::query("ALTER TABLE connect_events ADD CONSTRAINT test_refuses CHECK (event_type <> 'refusedByPostgres')")
        .execute(&app.pool)
        .await
        .expect("constraint");
    let mut refused = history[0].clone();
    refused["eventType"] = json!("refusedByPostgres");
    refused["eventId"] = json!(format!("{}-refused", start.timestamp_millis() + 5));
    send(&app, std::slice::from_ref(&refused)).await;
    let parked = eventually(Duration::from_secs(30), || async {
        (count_records(&app.kafka.brokers, &app.kafka.dlq_topic) >= 1).then_some(())
    })
    .await;
    assert!(parked.is_some(), "the refused event is parked");
    sqlx::query("ALTER TABLE connect_events DROP CONSTRAINT test_refuses").execute(&app.pool).await.expect("fix");
    // The changes so far are published.
    let changes_before = eventually(Duration::from_secs(30), || async {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox").fetch_one(&app.pool).await.ok()?;
        (waiting == 0).then_some(())
    })
    .await;
    assert!(changes_before.is_some(), "the relay publishes");

    // Part of the history folded into a snapshot (its ids kept).
    let horizon = start + chrono::Duration::seconds(3);
    let folded = connectflow::store::history::fold_older_than(&app.pool, horizon, 100).await.expect("fold");
    assert!(folded.events > 0, "{folded:?}");
    let expected = ["customer_history_snapshots", "history_folded_events", "api_access_log", "connect_events"];
    let before_erasure = eventually(Duration::from_secs(10), || async {
        let tables: Vec<String> = tables_mentioning(&app.pool, customer).await.into_iter().map(|(t, _)| t).collect();
        expected.iter().all(|e| tables.iter().any(|t| t == e)).then_some(tables)
    })
    .await;
    assert!(before_erasure.is_some(), "the customer is in {expected:?} before the erasure");
    // The right to know covers the snapshot too.
    let export: Value = app.api_get(&format!("/v1/customers/{customer}/export")).await.json().await.expect("json");
    assert!(export["history_starts_at"].is_string(), "{export}");
    assert_eq!(export["snapshot"]["consent"]["state"], "granted", "{export}");
    assert_eq!(export["revocations"].as_array().map(Vec::len), Some(1), "{export}");

    // Refused before anything is recorded.
    assert_eq!(erase(&app, customer, "e-1", &json!({"reason": 3})).await.0, 400);
    assert_eq!(erase(&app, customer, "e-1", &json!({"why": "x"})).await.0, 400);
    assert_eq!(erase(&app, "8500000199", "e-1", &json!({})).await.0, 404);

    // The same key twice: one erasure, the same answer.
    let (status, replayed, answer) = erase(&app, customer, "e-1", &json!({"reason": REASON})).await;
    assert_eq!((status, replayed.as_deref()), (202, None), "{answer}");
    let erasure_id = answer["event_id"].as_str().expect("event id").to_owned();
    let (status, replayed, again) = erase(&app, customer, "e-1", &json!({"reason": REASON})).await;
    assert_eq!((status, replayed.as_deref(), &again), (202, Some("true"), &answer));
    let (status, _, conflict) = erase(&app, customer, "e-1", &json!({})).await;
    assert_eq!((status, conflict["error"]["code"].as_str()), (409, Some("conflict")), "{conflict}");

    // Every customer route answers 410 with the erasure's time.
    let gone = eventually(Duration::from_secs(30), || async {
        let response = app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await;
        (response.status() == 410).then_some(())?;
        response.json::<Value>().await.ok()
    })
    .await
    .expect("the lifecycle answers 410");
    assert_eq!(gone["error"]["code"], "gone", "{gone}");
    let erased_at = gone["error"]["erased_at"].as_str().expect("erased_at").to_owned();
    for route in ["lifecycle", "events", "changes", "export"] {
        let response = app.api_get(&format!("/v1/customers/{customer}/{route}")).await;
        assert_eq!(response.status(), 410, "{route}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["erased_at"], erased_at.as_str(), "{route}: {body}");
    }
    let (status, _, body) =
        post(&app, &format!("/v1/customers/{customer}/consent/revocations"), "r-2", &json!({"revoked_by": "partner"}))
            .await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("gone")), "{body}");
    assert_eq!(erase(&app, customer, "e-2", &json!({})).await.0, 410, "a new erasure of an erased customer");
    // The erasing request itself is still answered the same.
    let (status, replayed, late) = erase(&app, customer, "e-1", &json!({"reason": REASON})).await;
    assert_eq!((status, replayed.as_deref(), &late), (202, Some("true"), &answer));
    // The bystander is untouched.
    lifecycle_with(&app, bystander, other.len()).await;

    // Once the relay has published the erased change and its tombstone,
    // only the tombstone names the customer.
    let clean = eventually(Duration::from_secs(30), || async {
        let found = tables_mentioning(&app.pool, customer).await;
        (found == [("erased_customers".to_owned(), 1)]).then_some(found)
    })
    .await;
    assert!(clean.is_some(), "left: {:?}", tables_mentioning(&app.pool, customer).await);
    let (stored_id, token, granted): (String, Option<String>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT erasure_event_id, token_id, consent_granted_at FROM erased_customers WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .expect("tombstone");
    assert_eq!(stored_id, erasure_id);
    assert!(token.is_some_and(|t| t.starts_with("bootstrap")), "the principal that asked");
    assert_eq!(granted.map(at_ms), before["consent"]["granted_at"].as_str().map(str::to_owned), "{before}");
    assert_eq!(counter(&app, "connectflow_customers_erased_total").await, 1.0, "erased once");

    // The changes topic ends, for that key, with the erased change and a
    // null-value tombstone.
    let records: Vec<_> = read_all(&app.kafka.brokers, &app.kafka.changes_topic)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(customer.as_bytes()))
        .collect();
    let [.., last_change, tombstone] = records.as_slice() else { panic!("{records:?}") };
    assert!(tombstone.tombstone, "{tombstone:?}");
    let last_change: Value = serde_json::from_slice(&last_change.value).expect("a change");
    assert_eq!(
        (last_change["reason"].as_str(), &last_change["after"]),
        (Some("erased"), &Value::Null),
        "{last_change}"
    );
    assert_eq!(last_change["caused_by"][0]["event_id"], erasure_id.as_str(), "{last_change}");
    let erased_version = last_change["version"].as_i64().expect("version");
    // The reason reached Kafka minimised, and Postgres not at all.
    let erasure_event = read_all(&app.kafka.brokers, &app.kafka.events_topic)
        .into_iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .find(|event| event["event_id"] == erasure_id.as_str())
        .expect("the erasure event on the events topic");
    assert_eq!(erasure_event["reason"], "asked by phone, card ••••••••••••1111", "{erasure_event}");
    assert_eq!(tables_mentioning(&app.pool, "asked by phone").await, Vec::<(String, i64)>::new());

    // Finicity's retries of every old webhook, a webhook naming the
    // erasure type, and a replay of the parked event: nothing comes back.
    let mut resent = history.clone();
    let mut forged = history[1].clone();
    forged["eventType"] = json!("connectflow.customer.erased");
    forged["eventId"] = json!(format!("{}-forged", start.timestamp_millis() + 7));
    resent.push(forged);
    send(&app, &resent).await;
    let replay = connectflow::dead_letter::replay::replay(&app.kafka, Some("23514"), false).await.expect("replay");
    assert_eq!(replay.replayed, 1, "{replay:?}");
    let published = resent.iter().filter(|body| body["eventType"] != "ping").count();
    let expected = (published + 1) as f64;
    let suppressed = eventually(Duration::from_secs(30), || async {
        let n = counter(&app, "connectflow_events_suppressed_total{reason=\"erased\"}").await;
        (n >= expected).then_some(n)
    })
    .await;
    assert_eq!(suppressed, Some(expected), "every old event is suppressed and counted");
    assert_eq!(app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await.status(), 410);
    assert_eq!(tables_mentioning(&app.pool, customer).await, [("erased_customers".to_owned(), 1)]);

    // A session after the erasure starts a fresh lifecycle, whose changes
    // go on from the erased one's version.
    let fresh = bodies(flow("oauth-success").expect("flow"), customer, Utc::now() + chrono::Duration::seconds(1), 3);
    send(&app, &fresh).await;
    let state = lifecycle_with(&app, customer, fresh.len()).await;
    assert_eq!(state["consent"]["state"], "granted", "{state}");
    assert_eq!(state["consent"]["revocation"], Value::Null, "nothing of the erased lifecycle: {state}");
    assert!(state["version"].as_i64().is_some_and(|v| v > erased_version), "{state}");
    app.stop().await;
}

#[tokio::test]
async fn the_compliance_record_is_purged_when_its_time_is_up() {
    let app = spawn_pipeline().await;
    let customer = "8500000201";
    let kept = "8500000202";
    for (n, id) in [customer, kept].into_iter().enumerate() {
        let flow_bodies =
            bodies(flow("oauth-success").expect("flow"), id, Utc::now() - chrono::Duration::minutes(5), 4);
        send(&app, &flow_bodies).await;
        lifecycle_with(&app, id, flow_bodies.len()).await;
        assert_eq!(erase(&app, id, &format!("erasure-{n}"), &json!({})).await.0, 202);
    }
    for id in [customer, kept] {
        let gone = eventually(Duration::from_secs(30), || async {
            (app.api_get(&format!("/v1/customers/{id}/lifecycle")).await.status() == 410).then_some(())
        })
        .await;
        assert!(gone.is_some(), "{id} erased");
    }
    // One erasure is older than the record's time, the other not.
    sqlx::query("UPDATE erased_customers SET erased_at = now() - interval '1100 days' WHERE customer_id = $1")
        .bind(customer)
        .execute(&app.pool)
        .await
        .expect("backdated");
    let before = Utc::now() - chrono::Duration::days(1095);
    let purged = connectflow::store::erasure::purge(&app.pool, before, 1).await.expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(tables_mentioning(&app.pool, customer).await, Vec::<(String, i64)>::new());
    assert_eq!(tables_mentioning(&app.pool, kept).await, [("erased_customers".to_owned(), 1)]);
    // Without its record, the customer is simply unknown.
    assert_eq!(app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await.status(), 404);
    assert_eq!(app.api_get(&format!("/v1/customers/{kept}/lifecycle")).await.status(), 410);
    app.stop().await;
}

fn access_naming(customer: &str) -> connectflow::store::access_log::AccessRecord {
    connectflow::store::access_log::AccessRecord {
        at: Utc::now(),
        token_id: "bootstrap-test".into(),
        programs: None,
        method: "GET".into(),
        route: "/v1/customers/{customer_id}/lifecycle".into(),
        customer_id: Some(customer.into()),
        status: 200,
        items: Some(1),
    }
}

async fn migrated_pool() -> PgPool {
    let url = crate::helpers::fresh_database().await;
    let pool = connectflow::store::pool(&crate::helpers::database_args(&url)).expect("pool");
    connectflow::store::migrate(&pool).await.expect("migrate");
    pool
}

#[tokio::test]
async fn an_access_log_write_does_not_wait_for_a_batch_writing_the_customer() {
    // Arrange: a consumer batch in flight holds the customer's lock.
    let pool = migrated_pool().await;
    let customer = connectflow::event::CustomerId::try_from("8700000001".to_owned()).expect("id");
    let mut batch = pool.begin().await.expect("begin");
    connectflow::store::apply::lock_customers(&mut batch, &[&customer]).await.expect("lock");

    // Act: the access log records a read of that customer meanwhile.
    let records = [access_naming("8700000001")];
    let write = connectflow::store::access_log::insert(&pool, &records);
    let written = tokio::time::timeout(Duration::from_secs(10), write).await;

    // Assert: written without waiting for the batch (which would never end
    // here: it waits for nothing but this test).
    assert!(matches!(written, Ok(Ok(()))), "the access log waited for the batch: {written:?}");
    batch.rollback().await.expect("rollback");
}

#[tokio::test]
async fn an_access_log_write_during_an_erasure_waits_for_it_and_names_the_customer_by_it() {
    // Arrange: an erasure in flight, its transaction not committed yet.
    let pool = migrated_pool().await;
    let customer = connectflow::event::CustomerId::try_from("8700000002".to_owned()).expect("id");
    let program = connectflow::event::ProgramId::default();
    let event = connectflow::event::ConnectEvent::requested(
        connectflow::event::EventType::CustomerErased,
        "connectflow-erasure-test-8700000002".into(),
        customer.clone(),
        program.clone(),
        Utc::now(),
        connectflow::event::TokenRef { token_id: "bootstrap-test".into(), token_name: "test".into() },
    );
    let mut erasing = pool.begin().await.expect("begin");
    let erasure =
        connectflow::store::erasure::Erasure { event: &event, program_id: &program, lifecycle: None, version: 1 };
    connectflow::store::erasure::erase(&mut erasing, &[erasure]).await.expect("erase");

    // Act: a read of the customer is logged meanwhile.
    let write = tokio::spawn({
        let pool = pool.clone();
        async move { connectflow::store::access_log::insert(&pool, &[access_naming("8700000002")]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waited = !write.is_finished();
    erasing.commit().await.expect("commit the erasure");
    write.await.expect("join").expect("access-log write");

    // Assert: the write waited for the erasure, and the record names the
    // customer by it, not by the erased id.
    assert!(waited, "the access-log write did not wait for the erasure in flight");
    let named: Vec<String> =
        sqlx::query_scalar("SELECT customer_id FROM api_access_log").fetch_all(&pool).await.expect("read");
    assert_eq!(named, vec!["erased:connectflow-erasure-test-8700000002".to_owned()]);
}
