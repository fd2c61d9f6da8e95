//! The consumer under bad records, concurrent writers, rebalances and a
//! Postgres outage: never stall, never lose, never lose an update.

use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::cli::ConsumeProcess;
use connectflow::event::ConnectEvent;
use connectflow::lifecycle::AuthorizationPolicy;
use connectflow::metrics::Metrics;
use connectflow::simulate::flows::{FLOWS, bodies, flow};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    AppOptions, TestApp, consumer_args, database_args, eventually, http_settings, services, spawn_app, spawn_app_with,
    spawn_consumer, unique_kafka_args,
};
use crate::kafka_util::{Record, read_all};
use crate::pg_proxy::PgProxy;

pub(crate) fn start() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_000_000_000).expect("valid time")
}

/// A normalised event record as the receiver publishes it.
pub(crate) fn record(customer_id: &str, event_id: &str, event_type: &str) -> Value {
    json!({
        "schema": "connectflow.connect_event.v1", "event_id": event_id, "event_type": event_type,
        "customer_id": customer_id, "consumer_id": null, "institution_id": "101732", "institution_login_id": null,
        "oauth": null, "mfa": null, "accounts": [], "deleted_account_ids": [], "error_code": null,
        "query": null, "occurred_at": "2026-11-20T10:15:02.123Z", "received_at": "2026-11-20T10:15:02.456Z",
        "webhook_data": null
    })
}

pub(crate) async fn produce(brokers: &str, topic: &str, key: &str, value: &[u8]) {
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("producer");
    producer
        .send(FutureRecord::to(topic).key(key).payload(value), Timeout::After(Duration::from_secs(10)))
        .await
        .expect("produced");
}

pub(crate) async fn produce_json(app: &TestApp, key: &str, value: &Value) {
    produce(&app.kafka.brokers, &app.kafka.events_topic, key, &serde_json::to_vec(value).expect("json")).await;
}

pub(crate) async fn send_flow(app: &TestApp, customer: &str, name: &str, seed: u64) -> usize {
    let bodies = bodies(flow(name).expect("flow"), customer, start(), seed);
    for body in &bodies {
        let response = app.post_webhook(&serde_json::to_vec(body).expect("json")).await;
        assert_eq!(response.status(), 200, "{body}");
    }
    bodies.len()
}

pub(crate) async fn event_count(pool: &PgPool, customer: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT event_count FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

/// Waits until every customer shows its expected event count.
pub(crate) async fn all_applied(pool: &PgPool, expected: &[(String, usize)], within: Duration) -> Result<(), String> {
    let done = eventually(within, || async {
        for (customer, count) in expected {
            if event_count(pool, customer).await != Some(*count as i64) {
                return None;
            }
        }
        Some(())
    })
    .await;
    match done {
        Some(()) => Ok(()),
        None => {
            let mut missing = Vec::new();
            for (customer, count) in expected {
                let got = event_count(pool, customer).await;
                if got != Some(*count as i64) {
                    missing.push(format!("{customer}: {got:?} of {count}"));
                }
            }
            Err(missing.join(", "))
        }
    }
}

pub(crate) async fn dead_letters(app: &TestApp, at_least: usize) -> Vec<Record> {
    eventually(Duration::from_secs(30), || async {
        let records = read_all(&app.kafka.brokers, &app.kafka.dlq_topic);
        (records.len() >= at_least).then_some(records)
    })
    .await
    .unwrap_or_else(|| panic!("expected at least {at_least} dead letters"))
}

/// Every stored lifecycle equals the fold of its recorded events, and
/// `event_count` the number of recorded events.
pub(crate) async fn assert_projection_matches_history(pool: &PgPool) {
    let audit = connectflow::store::reproject::audit(pool, None, 100).await.expect("audit");
    assert!(audit.differing.is_empty(), "stored lifecycles differ from their events: {:?}", audit.differing);
    let mismatched: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.customer_id, c.event_count, count(e.event_id) FROM customers c \
         LEFT JOIN connect_events e ON e.customer_id = c.customer_id \
         GROUP BY c.customer_id, c.event_count HAVING c.event_count <> count(e.event_id)",
    )
    .fetch_all(pool)
    .await
    .expect("counts");
    assert!(mismatched.is_empty(), "event_count differs from recorded events: {mismatched:?}");
}

#[tokio::test]
async fn bad_records_are_cleaned_or_parked_and_never_hold_up_other_customers() {
    let app = crate::helpers::spawn_pipeline().await;
    // A refusal only Postgres knows about (as a new constraint or a data
    // exception would be): the consumer must isolate it by splitting the
    // batch, not by any check of its own.
    sqlx::query("ALTER TABLE connect_events ADD CONSTRAINT test_refuses CHECK (event_type <> 'refusedByPostgres')")
        .execute(&app.pool)
        .await
        .expect("constraint");

    // Cleaned and applied: NUL in free text.
    let mut nul_query = record("7100000001", "1764000000001-nulquery", "institutionNotFound");
    nul_query["query"] = "First\u{0} National".into();
    let mut nul_name = record("7100000002", "1764000000002-nulname", "added");
    nul_name["accounts"] = json!([{"account_id": "5001", "institution_login_id": "77", "type": "checking",
        "status": "active", "last4": "1234", "name": "Check\u{0}ing", "aggregation_status_code": 0}]);
    let mut nul_data = record("7100000003", "1764000000003-nuldata", "started");
    nul_data["webhook_data"] = json!({"ref\u{0}": "partner\u{0}-1"});
    // Parked: ids no stage can keep.
    let long_customer = record(&"1".repeat(3000), "1764000000004-longcustomer", "started");
    let long_event = record("7100000005", &"e".repeat(3000), "started");
    let mut long_account = record("7100000006", "1764000000006-longaccount", "added");
    long_account["accounts"] = json!([{"account_id": "9".repeat(3000), "institution_login_id": "77", "type": null,
        "status": null, "last4": null, "name": null, "aggregation_status_code": null}]);
    // Parked: refused by Postgres alone.
    let refused = record("7100000007", "1764000000007-refused", "refusedByPostgres");

    let bad = [
        ("7100000001", &nul_query),
        ("7100000002", &nul_name),
        ("7100000003", &nul_data),
        ("1", &long_customer),
        ("7100000005", &long_event),
        ("7100000006", &long_account),
        ("7100000007", &refused),
    ];
    for (key, value) in bad {
        produce_json(&app, key, value).await;
    }
    // Forty good customers behind them, on every partition.
    let mut expected = Vec::new();
    for i in 0..40 {
        let customer = format!("72000000{i:02}");
        let name = FLOWS[i % FLOWS.len()].name;
        let count = send_flow(&app, &customer, name, i as u64).await;
        expected.push((customer, count));
    }
    if let Err(missing) = all_applied(&app.pool, &expected, Duration::from_secs(30)).await {
        panic!("good customers held up behind bad records: {missing}");
    }

    for (customer, text_sql, expected) in [
        ("7100000001", "SELECT record->>'query' FROM connect_events WHERE customer_id = $1", "First National"),
        ("7100000002", "SELECT name FROM accounts WHERE customer_id = $1", "Checking"),
        ("7100000003", "SELECT record->'webhook_data'->>'ref' FROM connect_events WHERE customer_id = $1", "partner-1"),
    ] {
        let stored: Option<String> = eventually(Duration::from_secs(20), || async {
            sqlx::query_scalar(text_sql).bind(customer).fetch_optional(&app.pool).await.ok().flatten()
        })
        .await;
        assert_eq!(stored.as_deref(), Some(expected), "{customer}: cleaned and applied");
    }

    let parked = dead_letters(&app, 4).await;
    assert_eq!(parked.len(), 4, "exactly the four unstorable records are parked");
    let reason_of = |needle: &str| {
        parked
            .iter()
            .find(|r| std::str::from_utf8(&r.value).is_ok_and(|v| v.contains(needle)))
            .and_then(|r| r.header("dlq_reason").map(str::to_owned))
            .unwrap_or_else(|| panic!("no dead letter for {needle}"))
    };
    assert!(reason_of("longcustomer").contains("customer_id"));
    assert!(reason_of(&"e".repeat(3000)).contains("event_id"));
    assert!(reason_of("longaccount").contains("accounts[].account_id"));
    let refused_reason = reason_of("1764000000007-refused");
    assert!(refused_reason.contains("23514") && refused_reason.contains("test_refuses"), "{refused_reason}");
    assert!(parked.iter().all(|r| r.header("dlq_metadata_only") == Some("false")));
    assert!(app.metrics.isolated_records.get() >= 1);
    let refused_recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events WHERE customer_id = '7100000007'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(refused_recorded, 0);
    assert_projection_matches_history(&app.pool).await;
    app.stop().await;
}

/// Creates the app's dead-letter topic with a small record limit before the
/// app creates it.
async fn small_dead_letter_topic(brokers: &str, topic: &str, max_bytes: &str) {
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", max_bytes);
    let results = admin.create_topics([&new], &AdminOptions::new()).await.expect("create");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn a_record_the_dead_letter_topic_refuses_is_parked_as_metadata_and_the_lane_moves_on() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    small_dead_letter_topic(&kafka.brokers, &kafka.dlq_topic, "2000").await;
    let app = spawn_app_with(AppOptions { http: http_settings(), kafka, create_topics: true, consumer: true }).await;
    let big_garbage = vec![b'x'; 10_000];
    produce(&app.kafka.brokers, &app.kafka.events_topic, "7300000001", &big_garbage).await;
    let count = send_flow(&app, "7300000001", "legacy-success", 1).await;
    all_applied(&app.pool, &[("7300000001".to_owned(), count)], Duration::from_secs(60))
        .await
        .expect("the customer's events behind the refused record are applied");
    let parked = dead_letters(&app, 1).await;
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    assert!(letter.value.is_empty(), "metadata only");
    assert_eq!(letter.header("dlq_metadata_only"), Some("true"));
    assert_eq!(letter.header("dlq_original_size"), Some("10000"));
    assert_eq!(letter.header("dlq_source_topic"), Some(app.kafka.events_topic.as_str()));
    assert!(letter.header("dlq_source_offset").is_some_and(|o| o.parse::<i64>().is_ok()));
    assert!(letter.header("dlq_reason").is_some_and(|r| r.contains("not a connect event")));
    assert_eq!(letter.key.as_deref(), Some(b"7300000001".as_slice()));
    assert_eq!(app.metrics.dead_letters_metadata_only.get(), 1);
    app.stop().await;
}

/// Starts a `connectflow consume` process on `pool` with its operations
/// listener; returns its `/livez` address.
pub(crate) async fn start_consume_process(
    pool: sqlx::PgPool,
    kafka: &connectflow::config::KafkaArgs,
    args: connectflow::config::ConsumerArgs,
    metrics: std::sync::Arc<Metrics>,
) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let consumer = ConsumeProcess::build(
        &args,
        kafka,
        "127.0.0.1:0".parse().ok(),
        pool,
        metrics,
        std::sync::Arc::new(connectflow::program::Programs::single(AuthorizationPolicy::default(), None)),
    )
    .await
    .expect("consumer");
    let ops = consumer.ops_addr().expect("ops listener");
    let token = CancellationToken::new();
    let handle = tokio::spawn(consumer.run(token.clone()));
    (ops, token, handle)
}

/// A `consume` process (its ops listener at the returned address) on
/// `app`'s database through a proxy the test can take away, with lanes
/// stalled after `stall_seconds`.
pub(crate) async fn start_consume_behind_proxy(
    app: &TestApp,
    stall_seconds: u64,
) -> (PgProxy, std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let proxy = PgProxy::start(&services().await.database_url).await;
    let proxied = proxy.url_for(&app_database_url(app).await);
    let pool = connectflow::store::pool(&database_args(&proxied)).expect("pool");
    let mut args = consumer_args();
    args.stall_seconds = stall_seconds;
    let (ops, token, handle) = start_consume_process(pool, &app.kafka, args, Metrics::new()).await;
    (proxy, ops, token, handle)
}

/// The status `/livez` answers at `ops`.
pub(crate) async fn livez(app: &TestApp, ops: std::net::SocketAddr) -> Option<u16> {
    app.client.get(format!("http://{ops}/livez")).send().await.ok().map(|r| r.status().as_u16())
}

/// Waits until `/livez` at `ops` answers `status`.
pub(crate) async fn livez_becomes(app: &TestApp, ops: std::net::SocketAddr, status: u16, within: Duration) -> bool {
    eventually(within, || async { (livez(app, ops).await == Some(status)).then_some(()) }).await.is_some()
}

#[tokio::test]
async fn a_dead_letter_topic_that_is_not_there_yet_stalls_the_lane_and_gets_the_whole_record_later() {
    let app = spawn_app().await;
    let poison = b"not an event, parked whole".to_vec();
    produce(&app.kafka.brokers, &app.kafka.events_topic, "7400000001", &poison).await;
    let mut kafka = app.kafka.clone();
    // Not created yet (and the dead-letter producer never has the broker
    // create a topic: it would get the broker's defaults, not the
    // dead-letter retention `migrate` sets).
    kafka.dlq_topic = format!("{}-later", app.kafka.dlq_topic);
    let mut args = consumer_args();
    args.stall_seconds = 2;
    let metrics = Metrics::new();
    let (ops, token, handle) = start_consume_process(app.pool.clone(), &kafka, args, metrics.clone()).await;
    assert!(
        livez_becomes(&app, ops, 503, Duration::from_secs(60)).await,
        "/livez fails while the record cannot be parked"
    );
    // Well past the old 15 s fallback to metadata, and past the point where
    // librdkafka gives up on an unknown topic (30 s).
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(!handle.is_finished(), "the consumer keeps retrying rather than stopping");
    assert_eq!(metrics.dead_letters.get(), 0, "nothing parked meanwhile, not even metadata");

    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("admin");
    let topic = NewTopic::new(&kafka.dlq_topic, 1, TopicReplication::Fixed(1));
    let created = admin.create_topics([&topic], &AdminOptions::new()).await.expect("create");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let parked = eventually(Duration::from_secs(90), || async {
        let records = read_all(&kafka.brokers, &kafka.dlq_topic);
        (!records.is_empty()).then_some(records)
    })
    .await
    .expect("parked once the topic exists");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].value, poison, "the whole record, not its metadata");
    assert_eq!(parked[0].header("dlq_metadata_only"), Some("false"));
    assert_eq!(metrics.dead_letters_metadata_only.get(), 0);
    assert!(livez_becomes(&app, ops, 200, Duration::from_secs(30)).await, "/livez recovers by itself");
    token.cancel();
    if let Err(err) = handle.await.expect("join") {
        panic!("the consumer did not stop cleanly: {err:#}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_stored_lifecycle_that_does_not_decode_is_recomputed_from_the_events() {
    let app = crate::helpers::spawn_pipeline().await;
    let first = send_flow(&app, "7500000001", "legacy-success", 3).await;
    all_applied(&app.pool, &[("7500000001".to_owned(), first)], Duration::from_secs(30)).await.expect("applied");
    sqlx::query(
        "UPDATE customers SET lifecycle = '{\"written_by\": \"a future version\"}' WHERE customer_id = '7500000001'",
    )
    .execute(&app.pool)
    .await
    .expect("tamper");
    let mut late = record("7500000001", "1764999999999-afterwards", "institutionSupported");
    late["occurred_at"] = "2026-12-01T00:00:00.000Z".into();
    produce_json(&app, "7500000001", &late).await;
    all_applied(&app.pool, &[("7500000001".to_owned(), first + 1)], Duration::from_secs(30))
        .await
        .expect("applied after recomputing");
    assert_projection_matches_history(&app.pool).await;
    app.stop().await;
}

/// The lost-update test: a writer that waited for a customer's lock must
/// read what the lock holder committed.
#[tokio::test]
async fn a_writer_that_waited_for_the_lock_sees_what_the_holder_committed() {
    let app = spawn_app().await;
    let customer = "7600000001";
    let events: Vec<ConnectEvent> =
        crate::helpers::normalised(&bodies(flow("legacy-success").expect("flow"), customer, start(), 7), start());
    assert!(events.len() >= 4, "a flow with a few events");
    let (head, tail) = events.split_at(events.len() - 2);
    connectflow::store::apply::apply_batch(&app.pool, head).await.expect("seed");
    let (holders_event, waiters_event) = (&tail[0], &tail[1]);

    // Connection A: takes K's lock and writes the lifecycle with one more
    // event, as another writer (reproject, a rebalanced consumer) would.
    let mut a = app.pool.begin().await.expect("A begins");
    let k = connectflow::event::CustomerId::parse(customer).expect("id");
    connectflow::store::apply::lock_customers(&mut a, &[&k]).await.expect("A locks");
    let with_holders = connectflow::lifecycle::fold(head.iter().chain([holders_event]));
    sqlx::query(
        "INSERT INTO connect_events (event_id, customer_id, event_type, occurred_at, received_at, record) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&holders_event.event_id)
    .bind(customer)
    .bind(holders_event.event_type.as_str())
    .bind(holders_event.occurred_at)
    .bind(holders_event.received_at)
    .bind(serde_json::to_value(holders_event).expect("json"))
    .execute(&mut *a)
    .await
    .expect("A records");
    sqlx::query("UPDATE customers SET lifecycle = $2, event_count = $3 WHERE customer_id = $1")
        .bind(customer)
        .bind(serde_json::to_value(&with_holders).expect("json"))
        .bind(with_holders.event_count as i64)
        .execute(&mut *a)
        .await
        .expect("A writes");

    // Connection B: the consumer applies the next event and must wait.
    let pool = app.pool.clone();
    let waiter = waiters_event.clone();
    let b = tokio::spawn(async move { connectflow::store::apply::apply_batch(&pool, [&waiter]).await });
    let waiting = eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory'",
        )
        .fetch_one(&app.pool)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "B waits for A's lock");
    a.commit().await.expect("A commits");
    b.await.expect("join").expect("B applies");

    let stored: Value = sqlx::query_scalar("SELECT lifecycle FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    let expected = connectflow::lifecycle::fold(&events);
    assert_eq!(stored["event_count"], json!(events.len()), "B built on A's state: {stored}");
    assert_eq!(stored, serde_json::to_value(&expected).expect("json"), "stored = fold of every event");
}

#[tokio::test]
async fn consumers_joining_and_leaving_a_group_mid_stream_lose_nothing_and_count_nothing_twice() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    for i in 0..60 {
        let customer = format!("77000000{i:02}");
        let count = send_flow(&app, &customer, FLOWS[i % FLOWS.len()].name, 40 + i as u64).await;
        expected.push((customer, count));
    }
    let group = format!("cf-test-group-{}", uuid::Uuid::new_v4().simple());
    let (token_a, handle_a) = spawn_consumer(&app, &group);
    let (token_b, handle_b) = spawn_consumer(&app, &group);
    eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.ok()?;
        (n > 0).then_some(())
    })
    .await
    .expect("the group applies something");
    // A leaves mid-stream; C joins; more events arrive meanwhile.
    token_a.cancel();
    handle_a.await.expect("join").expect("A leaves cleanly");
    let (token_c, handle_c) = spawn_consumer(&app, &group);
    for i in 60..80 {
        let customer = format!("77000000{i:02}");
        let count = send_flow(&app, &customer, FLOWS[i % FLOWS.len()].name, 40 + i as u64).await;
        expected.push((customer, count));
    }
    all_applied(&app.pool, &expected, Duration::from_secs(60)).await.expect("every event applied");
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.expect("count");
    assert_eq!(recorded, total as i64, "every event recorded exactly once");
    assert_projection_matches_history(&app.pool).await;
    token_b.cancel();
    token_c.cancel();
    handle_b.await.expect("join").expect("B stops cleanly");
    handle_c.await.expect("join").expect("C stops cleanly");
}

#[tokio::test]
async fn a_lane_stuck_on_postgres_fails_livez_and_recovers_by_itself_losing_nothing() {
    let app = spawn_app().await;
    let (proxy, ops, token, handle) = start_consume_behind_proxy(&app, 2).await;

    let first = send_flow(&app, "7800000001", "legacy-success", 11).await;
    all_applied(&app.pool, &[("7800000001".to_owned(), first)], Duration::from_secs(30)).await.expect("applied");
    assert_eq!(livez(&app, ops).await, Some(200));

    proxy.set_up(false);
    let second = send_flow(&app, "7800000002", "mfa-success", 12).await;
    assert!(
        livez_becomes(&app, ops, 503, Duration::from_secs(60)).await,
        "/livez turns 503 once a lane is stuck past the stall time"
    );

    proxy.set_up(true);
    all_applied(&app.pool, &[("7800000002".to_owned(), second)], Duration::from_secs(60))
        .await
        .expect("applied after Postgres returns");
    assert!(livez_becomes(&app, ops, 200, Duration::from_secs(20)).await, "/livez recovers by itself");
    assert_projection_matches_history(&app.pool).await;
    token.cancel();
    handle.await.expect("join").expect("clean stop");
}

/// The URL of the app's own database.
pub(crate) async fn app_database_url(app: &TestApp) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&app.pool).await.expect("name");
    let base = &services().await.database_url;
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{name}")
}

#[tokio::test]
async fn parked_records_are_replayed_once_their_cause_is_fixed() {
    let app = crate::helpers::spawn_pipeline().await;
    sqlx::query("ALTER TABLE connect_events ADD CONSTRAINT test_refuses CHECK (event_type <> 'refusedByPostgres')")
        .execute(&app.pool)
        .await
        .expect("constraint");
    let refused = record("7900000001", "1764000000009-replay", "refusedByPostgres");
    produce_json(&app, "7900000001", &refused).await;
    produce(&app.kafka.brokers, &app.kafka.events_topic, "7900000002", b"not an event").await;
    dead_letters(&app, 2).await;
    let on_topic = crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic);

    let dry = connectflow::dead_letter::replay::replay(&app.kafka, Some("23514"), true).await.expect("dry run");
    assert_eq!((dry.read, dry.replayed, dry.filtered_out), (2, 1, 1), "{dry:?}");
    assert_eq!(crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic), on_topic, "dry run");

    // The fix: the database takes the event now.
    sqlx::query("ALTER TABLE connect_events DROP CONSTRAINT test_refuses").execute(&app.pool).await.expect("fix");
    let done = connectflow::dead_letter::replay::replay(&app.kafka, Some("23514"), false).await.expect("replay");
    assert_eq!(done.replayed, 1);
    all_applied(&app.pool, &[("7900000001".to_owned(), 1)], Duration::from_secs(30))
        .await
        .expect("replayed and applied");
    // A second run remembers the first: it republishes nothing.
    let again = connectflow::dead_letter::replay::replay(&app.kafka, Some("23514"), false).await.expect("again");
    assert_eq!((again.read, again.replayed), (0, 0), "{again:?}");
    let on_topic = crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic);
    // Another filter has its own position; without one, every parked record
    // is read once.
    let all = connectflow::dead_letter::replay::replay(&app.kafka, None, true).await.expect("all, dry");
    assert_eq!((all.read, all.replayed), (2, 2), "{all:?}");
    // From the beginning, the record goes again, and is a duplicate.
    let from_start = connectflow::dead_letter::replay::Replay {
        reason_contains: Some("23514"),
        dry_run: false,
        from_beginning: true,
    };
    let again = from_start.run(&app.kafka).await.expect("from the beginning");
    assert_eq!((again.read, again.replayed), (2, 1), "{again:?}");
    assert_eq!(crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic), on_topic + 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(event_count(&app.pool, "7900000001").await, Some(1));
    let after = connectflow::dead_letter::replay::replay(&app.kafka, Some("23514"), false).await.expect("after");
    assert_eq!(after.read, 0, "{after:?}");
    app.stop().await;
}
