//! The lifecycle consumer on real Kafka and Postgres: complete flows,
//! shuffles and duplicates, poison records, restarts and shared groups.

use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::simulate::flows::{FLOWS, bodies, flow};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_consumer, spawn_pipeline};
use crate::kafka_util::{count_records, read_all};

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_000_000_000).expect("valid time")
}

async fn send_all(app: &TestApp, bodies: &[Value]) {
    for body in bodies {
        let raw = serde_json::to_vec(body).expect("serialises");
        let response = app.post_webhook(&raw).await;
        assert_eq!(response.status(), 200, "{body}");
    }
}

/// Waits until the customer's lifecycle shows `event_count` events.
async fn lifecycle_with(app: &TestApp, customer_id: &str, event_count: u64) -> Value {
    let path = format!("/v1/customers/{customer_id}/lifecycle");
    eventually(Duration::from_secs(30), || async {
        let response = app.api_get(&path).await;
        if response.status() != 200 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        (body["event_count"].as_u64() == Some(event_count)).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("customer {customer_id} never reached {event_count} events"))
}

async fn recorded_events(app: &TestApp, customer_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connect_events WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn every_flow_ends_in_its_expected_states() {
    let app = spawn_pipeline().await;
    for (i, flow) in FLOWS.iter().enumerate() {
        let customer = format!("10050612{i:02}");
        let bodies = bodies(flow, &customer, start(), 1);
        send_all(&app, &bodies).await;
        let state = lifecycle_with(&app, &customer, bodies.len() as u64).await;
        assert_eq!(state["consent"]["state"], flow.expected_consent.as_str(), "{}: {state}", flow.name);
        assert_eq!(state["authentication"]["state"], flow.expected_authentication.as_str(), "{}: {state}", flow.name);
    }
    app.stop().await;
}

#[tokio::test]
async fn failures_carry_reasons_and_oauth_is_recorded() {
    let app = spawn_pipeline().await;
    let cases = [
        ("invalid-credentials", "invalid_credentials"),
        ("unable-to-connect", "unable_to_connect"),
        ("institution-not-found", "institution_not_found"),
        ("institution-not-supported", "institution_not_supported"),
        ("abandoned", "abandoned"),
    ];
    for (i, (name, reason)) in cases.into_iter().enumerate() {
        let customer = format!("20050612{i:02}");
        let bodies = bodies(flow(name).expect("flow"), &customer, start(), 1);
        send_all(&app, &bodies).await;
        let state = lifecycle_with(&app, &customer, bodies.len() as u64).await;
        assert_eq!(state["authentication"]["reason"], reason, "{name}: {state}");
        if name == "unable-to-connect" {
            assert_eq!(state["authentication"]["error_code"], 102);
        }
    }
    let bodies = bodies(flow("oauth-success").expect("flow"), "3005061234", start(), 1);
    send_all(&app, &bodies).await;
    let state = lifecycle_with(&app, "3005061234", bodies.len() as u64).await;
    let login = &state["institution_logins"][0];
    assert_eq!(login["oauth"], true, "{state}");
    assert_eq!(login["institution_id"], "101732");
    assert_eq!(login["accounts"].as_array().map(Vec::len), Some(2));
    assert!(login["accounts"][0]["last4"].as_str().is_some_and(|l| l.len() == 4));
    app.stop().await;
}

#[tokio::test]
async fn shuffled_flows_sent_three_times_end_the_same_with_each_event_once() {
    let app = spawn_pipeline().await;
    for (i, flow) in FLOWS.iter().enumerate() {
        let customer = format!("40050612{i:02}");
        let mut bodies = bodies(flow, &customer, start(), 2);
        let distinct = bodies.len();
        let mut all: Vec<Value> = bodies.drain(..).flat_map(|b| [b.clone(), b.clone(), b]).collect();
        // A deterministic shuffle that puts the last events first.
        all.reverse();
        all.rotate_left(i % 3 + 1);
        send_all(&app, &all).await;
        let state = lifecycle_with(&app, &customer, distinct as u64).await;
        assert_eq!(state["consent"]["state"], flow.expected_consent.as_str(), "{}: {state}", flow.name);
        assert_eq!(state["authentication"]["state"], flow.expected_authentication.as_str(), "{}: {state}", flow.name);
        assert_eq!(recorded_events(&app, &customer).await, distinct as i64, "{}", flow.name);
    }
    let recomputations = app.metrics.recomputations.get();
    assert!(recomputations > 0, "out-of-order events must trigger recomputation");
    assert!(app.metrics.duplicates_skipped.get() > 0);
    app.stop().await;
}

async fn produce_raw(app: &TestApp, key: &str, value: &[u8]) {
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &app.kafka.brokers).create().expect("producer");
    producer
        .send(
            FutureRecord::to(&app.kafka.events_topic).key(key).payload(value),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("produced");
}

#[tokio::test]
async fn a_garbage_record_is_dead_lettered_and_the_consumer_continues() {
    let app = spawn_pipeline().await;
    produce_raw(&app, "5005061234", b"this is not an event").await;
    let bodies = bodies(flow("legacy-success").expect("flow"), "5005061234", start(), 3);
    send_all(&app, &bodies).await;
    lifecycle_with(&app, "5005061234", bodies.len() as u64).await;
    let dead = eventually(Duration::from_secs(20), || async {
        let records = read_all(&app.kafka.brokers, &app.kafka.dlq_topic);
        (!records.is_empty()).then_some(records)
    })
    .await
    .expect("a dead letter");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, b"this is not an event");
    assert!(dead[0].header("dlq_reason").is_some_and(|r| !r.is_empty()));
    assert_eq!(dead[0].header("dlq_source_topic"), Some(app.kafka.events_topic.as_str()));
    assert!(dead[0].header("dlq_source_partition").is_some_and(|p| p.parse::<i32>().is_ok()));
    assert!(dead[0].header("dlq_source_offset").is_some_and(|o| o.parse::<i64>().is_ok()));
    assert_eq!(app.metrics.dead_letters.get(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_consumer_and_a_shared_group_lose_nothing_and_apply_nothing_twice() {
    // Receiver only: events pile up on the topic first.
    let app = spawn_app().await;
    let customers: Vec<String> = (0..60).map(|i| format!("6005061{i:03}")).collect();
    let mut expected = Vec::new();
    let mut total = 0;
    for (i, customer) in customers.iter().enumerate() {
        let flow = &FLOWS[i % FLOWS.len()];
        let bodies = bodies(flow, customer, start(), 4);
        total += bodies.len();
        send_all(&app, &bodies).await;
        expected.push((customer.clone(), flow, bodies.len()));
    }
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.events_topic), total as i64);
    let group = format!("cf-test-restart-{}", uuid::Uuid::new_v4().simple());

    // A first consumer is stopped part-way.
    let (token, handle) = spawn_consumer(&app, &group);
    eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.ok()?;
        (n > 0).then_some(())
    })
    .await
    .expect("the first consumer applied something");
    token.cancel();
    handle.await.expect("join").expect("clean stop");

    // Two consumers share the group for the rest.
    let (token_a, handle_a) = spawn_consumer(&app, &group);
    let (token_b, handle_b) = spawn_consumer(&app, &group);
    for (customer, flow, count) in &expected {
        let state = lifecycle_with(&app, customer, *count as u64).await;
        assert_eq!(state["consent"]["state"], flow.expected_consent.as_str(), "{customer}");
        assert_eq!(state["authentication"]["state"], flow.expected_authentication.as_str(), "{customer}");
    }
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.expect("count");
    assert_eq!(recorded, total as i64, "every event recorded exactly once");
    token_a.cancel();
    token_b.cancel();
    handle_a.await.expect("join").expect("clean stop");
    handle_b.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn reproject_restores_state_from_the_recorded_events() {
    let app = spawn_app().await;
    let events = normalised(&bodies(flow("revoked").expect("flow"), "8005061234", start(), 5));
    connectflow::store::apply::apply_batch(&app.pool, &events).await.expect("seed");
    let good = lifecycle_with(&app, "8005061234", events.len() as u64).await;
    // Simulate a stale projection (as after a state-machine change).
    sqlx::query(
        "UPDATE customers SET consent_state = 'none', lifecycle = jsonb_set(lifecycle, '{consent,state}', '\"none\"') \
         WHERE customer_id = '8005061234'",
    )
    .execute(&app.pool)
    .await
    .expect("tamper");
    sqlx::query("DELETE FROM accounts").execute(&app.pool).await.expect("tamper");
    let outcome = connectflow::store::reproject::reproject(&app.pool, None, 2).await.expect("reproject");
    assert_eq!(outcome.customers, 1);
    assert_eq!(outcome.changed, 1);
    let restored = lifecycle_with(&app, "8005061234", events.len() as u64).await;
    assert_eq!(restored["consent"], good["consent"]);
    assert_eq!(restored["institution_logins"], good["institution_logins"]);
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&app.pool).await.expect("count");
    assert_eq!(accounts, 2, "the accounts projection is rewritten");
    let again = connectflow::store::reproject::reproject(&app.pool, Some(&"8005061234".parse().expect("id")), 10)
        .await
        .expect("reproject");
    assert_eq!((again.customers, again.changed), (1, 0), "nothing left to change");
}

#[tokio::test]
async fn a_postgres_outage_is_retried_and_no_event_is_lost() {
    let app = spawn_app().await;
    // The consumer's database does not exist yet: every batch fails.
    let missing = format!("cf_test_late_{}", uuid::Uuid::new_v4().simple());
    let services = crate::helpers::services().await;
    let (base, _) = services.database_url.rsplit_once('/').expect("URL with a database");
    let late_url = format!("{base}/{missing}");
    let pool = connectflow::store::pool(&crate::helpers::database_args(&late_url)).expect("lazy pool");
    let token = tokio_util::sync::CancellationToken::new();
    let metrics = connectflow::metrics::Metrics::new();
    let handle = crate::helpers::run_consumer(
        crate::helpers::consumer_args(),
        app.kafka.clone(),
        pool.clone(),
        metrics.clone(),
        token.clone(),
    );
    let bodies = bodies(flow("mfa-success").expect("flow"), "9105061234", start(), 6);
    send_all(&app, &bodies).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metrics.events_applied.get(), 0, "nothing can be applied while Postgres is away");

    // Postgres "comes back".
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {missing}"))).execute(&app.pool).await.expect("create");
    connectflow::store::migrate(&pool).await.expect("migrate");
    let recorded = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&pool).await.ok()?;
        (n == bodies.len() as i64).then_some(n)
    })
    .await;
    assert_eq!(recorded, Some(bodies.len() as i64), "every event applied after the outage");
    let state: String = sqlx::query_scalar("SELECT auth_state FROM customers WHERE customer_id = '9105061234'")
        .fetch_one(&pool)
        .await
        .expect("customer");
    assert_eq!(state, "authenticated");
    token.cancel();
    handle.await.expect("join").expect("clean stop");
}

fn normalised(bodies: &[Value]) -> Vec<connectflow::event::ConnectEvent> {
    crate::helpers::normalised(bodies, Utc::now())
}

/// Asserts that the relational projection (institution_logins, accounts) of
/// a customer holds exactly the rows of their stored lifecycle.
async fn assert_projection_matches(app: &TestApp, customer_id: &str) {
    let (document,): (Value,) = sqlx::query_as("SELECT lifecycle FROM customers WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_one(&app.pool)
        .await
        .expect("stored lifecycle");
    let mut expected_logins = Vec::new();
    let mut expected_accounts = Vec::new();
    for login in document["institution_logins"].as_array().expect("logins") {
        expected_logins.push((
            login["institution_login_id"].as_str().map(str::to_owned),
            login["institution_id"].as_str().map(str::to_owned),
            login["oauth"].as_bool(),
        ));
        for account in login["accounts"].as_array().expect("accounts") {
            expected_accounts.push((
                account["account_id"].as_str().expect("id").to_owned(),
                login["institution_login_id"].as_str().map(str::to_owned),
                login["institution_id"].as_str().map(str::to_owned),
                account["type"].as_str().map(str::to_owned),
                account["status"].as_str().expect("status").to_owned(),
                account["last4"].as_str().map(str::to_owned),
                account["name"].as_str().map(str::to_owned),
            ));
        }
    }
    expected_logins.sort();
    expected_accounts.sort();
    let mut logins: Vec<(Option<String>, Option<String>, Option<bool>)> = sqlx::query_as(
        "SELECT institution_login_id, institution_id, oauth FROM institution_logins WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_all(&app.pool)
    .await
    .expect("logins");
    logins.sort();
    #[allow(clippy::type_complexity)]
    let mut accounts: Vec<(
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    )> = sqlx::query_as(
        "SELECT account_id, institution_login_id, institution_id, account_type, status, last4, name \
             FROM accounts WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_all(&app.pool)
    .await
    .expect("accounts");
    accounts.sort();
    assert_eq!(logins, expected_logins, "institution_logins of {customer_id}");
    assert_eq!(accounts, expected_accounts, "accounts of {customer_id}");
}

#[tokio::test]
async fn the_accounts_projection_follows_the_lifecycle_batch_by_batch() {
    let app = spawn_app().await;
    // Accounts shared through one login, deleted, then shared again through
    // another login (the same account ids): the first login's row must go,
    // the accounts must move and become active again.
    let customer = "8005069876";
    let mut events = normalised(&bodies(flow("revoked").expect("flow"), customer, start(), 1));
    let later = start() + chrono::Duration::minutes(5);
    events.extend(normalised(&bodies(flow("oauth-success").expect("flow"), customer, later, 2)));
    // One event per batch: each write starts from the stored projection.
    for (applied, event) in events.iter().enumerate() {
        connectflow::store::apply::apply_batch(&app.pool, [event]).await.expect("apply");
        assert_projection_matches(&app, customer).await;
        let count: i64 = sqlx::query_scalar("SELECT event_count FROM customers WHERE customer_id = $1")
            .bind(customer)
            .fetch_one(&app.pool)
            .await
            .expect("count");
        assert_eq!(count, applied as i64 + 1);
    }
    let logins: i64 = sqlx::query_scalar("SELECT count(*) FROM institution_logins WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(logins, 1, "the first login's row was removed when its accounts moved");

    // The same events for another customer, newest first: every batch after
    // the first is late and recomputes the customer from history.
    let other = "8005069877";
    let mut reversed = normalised(&bodies(flow("revoked").expect("flow"), other, start(), 1));
    reversed.extend(normalised(&bodies(flow("oauth-success").expect("flow"), other, later, 2)));
    reversed.reverse();
    for event in &reversed {
        connectflow::store::apply::apply_batch(&app.pool, [event]).await.expect("apply");
        assert_projection_matches(&app, other).await;
    }
    let audit = connectflow::store::reproject::audit(&app.pool, None, 10).await.expect("audit");
    assert!(audit.differing.is_empty(), "{:?}", audit.differing);
}
