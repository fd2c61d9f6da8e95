//! The outbox relay under a bad change, a slow Kafka and a small pool: a
//! change the topic refuses is parked and the others flow, no transaction
//! waits on Kafka, and the `LISTEN` connection is not one of the pool's.

use std::time::{Duration, Instant};

use connectflow::metrics::{Metrics, ParkedChangeLabels};
use connectflow::outbox::Relay;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sqlx::PgPool;

use crate::helpers::{AppOptions, eventually, http_settings, services, spawn_app, spawn_app_with, unique_kafka_args};
use crate::kafka_util::read_all;

/// Records changes in the outbox as the consumer would (the relay passes
/// the text through; it does not parse it).
async fn record_change(pool: &PgPool, customer: &str, version: i64, change: &str) {
    sqlx::query(
        "WITH c AS (INSERT INTO lifecycle_changes (customer_id, version, change, recorded_at) \
         VALUES ($1, $2, $3, now()) RETURNING 1) \
         INSERT INTO lifecycle_outbox (customer_id, version, recorded_at) VALUES ($1, $2, now())",
    )
    .bind(customer)
    .bind(version)
    .bind(change)
    .execute(pool)
    .await
    .expect("recording a change");
}

/// Random text that lz4 does not shrink much: about `bytes` long.
fn incompressible(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 32);
    while text.len() < bytes {
        text.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    format!("{{\"padding\":\"{text}\"}}")
}

#[tokio::test]
async fn a_change_the_topic_refuses_is_parked_counted_and_other_customers_keep_flowing() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    // The changes topic takes records of 4 kB at most.
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("admin");
    let small = NewTopic::new(&kafka.changes_topic, 3, TopicReplication::Fixed(1)).set("max.message.bytes", "4096");
    let created = admin.create_topics([&small], &AdminOptions::new()).await.expect("create");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let app = spawn_app_with(AppOptions { http: http_settings(), kafka, create_topics: true, consumer: false }).await;
    let big = "9500000001";
    record_change(&app.pool, big, 1, &incompressible(40_000)).await;
    record_change(&app.pool, big, 2, r#"{"version":2}"#).await;
    let others: Vec<String> = (2..=6).map(|n| format!("95000000{n:02}")).collect();
    for customer in &others {
        record_change(&app.pool, customer, 1, r#"{"version":1}"#).await;
    }
    let metrics = Metrics::new();
    let relay = Relay::new(&app.kafka, app.pool.clone(), metrics.clone()).expect("relay");

    let started = Instant::now();
    relay.publish_all().await.expect("a round");
    let took = started.elapsed();

    // Everything else is on the topic, the big customer's next change too,
    // in one round and without waiting for a backoff (a generous bound).
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let records = read_all(&app.kafka.brokers, &app.kafka.changes_topic);
    let mut ids: Vec<&str> = records.iter().filter_map(|r| r.header("change_id")).collect();
    ids.sort_unstable();
    let mut expected: Vec<String> = others.iter().map(|c| format!("{c}:1")).collect();
    expected.push(format!("{big}:2"));
    expected.sort_unstable();
    assert_eq!(ids, expected);
    // Parked: a metadata-only dead letter naming the change and the reason.
    let letters = read_all(&app.kafka.brokers, &app.kafka.dlq_topic);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.header("dlq_change_id"), Some("9500000001:1"));
    assert_eq!(letter.header("dlq_customer_id"), Some(big));
    assert_eq!(letter.header("dlq_change_version"), Some("1"));
    assert_eq!(letter.header("dlq_metadata_only"), Some("true"));
    assert_eq!(letter.header("dlq_source_topic"), Some(app.kafka.changes_topic.as_str()));
    assert!(letter.header("dlq_reason").is_some_and(|r| r.contains("too_large")), "{:?}", letter.header("dlq_reason"));
    assert!(letter.value.is_empty());
    let too_large = ParkedChangeLabels { reason: "too_large" };
    assert_eq!(metrics.changes_parked.get_or_create(&too_large).get(), 1);
    // The row is marked and no longer waits; the change is kept.
    let rows: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT customer_id, version, park_reason FROM lifecycle_outbox WHERE parked_at IS NOT NULL")
            .fetch_all(&app.pool)
            .await
            .expect("parked rows");
    assert_eq!(rows, vec![(big.to_owned(), 1, Some("too_large".to_owned()))]);
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox WHERE parked_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(waiting, 0);

    // Not retried: another round parks and publishes nothing more.
    relay.publish_all().await.expect("a round");
    assert_eq!(metrics.changes_parked.get_or_create(&too_large).get(), 1);
    assert_eq!(read_all(&app.kafka.brokers, &app.kafka.dlq_topic).len(), 1);
    assert_eq!(read_all(&app.kafka.brokers, &app.kafka.changes_topic).len(), expected.len());
    app.stop().await;
}

#[tokio::test]
async fn while_kafka_is_unreachable_no_transaction_stays_open_and_the_customers_back_off() {
    let app = spawn_app().await;
    for customer in ["9600000001", "9600000002"] {
        record_change(&app.pool, customer, 1, r#"{"version":1}"#).await;
        record_change(&app.pool, customer, 2, r#"{"version":2}"#).await;
    }
    let mut unreachable = app.kafka.clone();
    unreachable.brokers = "127.0.0.1:1".to_owned();
    let relay = Relay::new(&unreachable, app.pool.clone(), Metrics::new()).expect("relay");
    let round = tokio::spawn(async move { relay.publish_all().await });

    let leased = eventually(Duration::from_secs(10), || async {
        let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox WHERE leased_until > now()")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (leased == 4).then_some(())
    })
    .await;
    assert!(leased.is_some(), "the changes are claimed");
    // While the relay waits for Kafka (10 s): no transaction of this
    // database is open and idle, and the claimed rows can be updated.
    for _ in 0..5 {
        let idle: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("activity");
        assert_eq!(idle, 0, "a transaction waits on Kafka");
        let mut tx = app.pool.begin().await.expect("begin");
        sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await.expect("lock timeout");
        sqlx::query("UPDATE lifecycle_outbox SET recorded_at = recorded_at")
            .execute(&mut *tx)
            .await
            .expect("the claimed rows are not locked");
        tx.rollback().await.expect("rollback");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!round.is_finished(), "still waiting for Kafka");

    let retry_in = round.await.expect("joined").expect("the round ends without an error");
    assert!(retry_in.is_some(), "the relay knows when to try again");
    // Each customer backs off at its first change; nothing stays leased.
    let rows: Vec<(String, i64, i32, bool, bool)> = sqlx::query_as(
        "SELECT customer_id, version, attempts, not_before IS NOT NULL, leased_until IS NOT NULL \
         FROM lifecycle_outbox ORDER BY customer_id, version",
    )
    .fetch_all(&app.pool)
    .await
    .expect("rows");
    let expected: Vec<(String, i64, i32, bool, bool)> = ["9600000001", "9600000002"]
        .iter()
        .flat_map(|c| [((*c).to_owned(), 1, 1, true, false), ((*c).to_owned(), 2, 0, false, false)])
        .collect();
    assert_eq!(rows, expected);
    app.stop().await;
}

#[tokio::test]
async fn the_relay_listens_on_a_connection_of_its_own() {
    let app = spawn_app().await;
    let mut database = crate::helpers::database_args(&app.database_url);
    database.max_connections = Some(1);
    let pool = connectflow::store::pool(&database).expect("pool");
    let relay = Relay::new(&app.kafka, pool.clone(), Metrics::new()).expect("relay");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let listening = eventually(Duration::from_secs(20), || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&app.pool)
        .await
        .ok()?;
        (listening > 0).then_some(())
    })
    .await;
    assert!(listening.is_some(), "the relay listens");
    // The pool's only connection is still free for the lanes.
    let acquired = tokio::time::timeout(Duration::from_secs(4), pool.acquire()).await;
    assert!(matches!(acquired, Ok(Ok(_))), "the listener took the pool's connection");
    shutdown.cancel();
    running.await.expect("joined").expect("relay stopped");
    app.stop().await;
}

#[tokio::test]
async fn a_customer_waiting_on_kafka_does_not_hold_back_the_others() {
    let services = services().await;
    let mut kafka = unique_kafka_args(&services.kafka_brokers);
    // A topic per program; `migrate` creates the default program's only, so
    // a change of the `ghost` program waits for its topic: until the relay
    // gives up on the send (20 s), or while a broker that creates topics on
    // demand creates it.
    kafka.changes_topic = format!("{}.{{program}}", kafka.changes_topic);
    let app = spawn_app_with(AppOptions { http: http_settings(), kafka, create_topics: true, consumer: false }).await;
    let stuck = "9700000001";
    sqlx::query(
        "INSERT INTO customers (customer_id, consent_state, auth_state, last_event_id, last_event_type, \
         last_occurred_at, event_count, lifecycle, updated_at, program_id) \
         VALUES ($1, 'none', 'not_started', 'e', 't', now(), 1, '{}', now(), 'ghost')",
    )
    .bind(stuck)
    .execute(&app.pool)
    .await
    .expect("a customer of a program without a topic");
    record_change(&app.pool, stuck, 1, r#"{"version":1}"#).await;
    let relay = Relay::new(&app.kafka, app.pool.clone(), Metrics::new()).expect("relay");
    let wake = relay.handle();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let count = |sql: &'static str, customer: &'static str| {
        let pool = app.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).bind(customer).fetch_one(&pool).await.ok() }
    };
    // Claimed (leased), or already gone where the broker made the topic.
    let unclaimed = "SELECT count(*) FROM lifecycle_outbox WHERE customer_id = $1 AND leased_until IS NULL";
    let claimed = eventually(Duration::from_secs(10), || async { (count(unclaimed, stuck).await? == 0).then_some(()) });
    assert!(claimed.await.is_some(), "the stuck customer's change is claimed");

    // Another customer's change, recorded while the first waits on Kafka,
    // is published by the next round, without waiting for the first's send
    // to end (a generous bound).
    let flowing = "9700000002";
    record_change(&app.pool, flowing, 1, r#"{"version":1}"#).await;
    let recorded = Instant::now();
    wake.wake();
    let published = eventually(Duration::from_secs(30), || async {
        let gone = count("SELECT count(*) FROM lifecycle_outbox WHERE customer_id = $1", flowing).await? == 0;
        gone.then_some(recorded.elapsed())
    })
    .await
    .expect("the other customer's change is published");
    assert!(published < Duration::from_secs(6), "waited for the stuck customer's round: {published:?}");
    let topic = app.kafka.changes_topic_for("default");
    let ids: Vec<String> =
        read_all(&app.kafka.brokers, &topic).iter().filter_map(|r| r.header("change_id").map(str::to_owned)).collect();
    assert_eq!(ids, vec![format!("{flowing}:1")]);

    shutdown.cancel();
    running.await.expect("joined").expect("relay stopped");
    app.stop().await;
}

#[tokio::test]
async fn a_row_whose_change_an_erasure_deleted_goes_unpublished_and_the_next_follows() {
    let app = spawn_app().await;
    let customer = "9800000001";
    record_change(&app.pool, customer, 1, r#"{"version":1}"#).await;
    record_change(&app.pool, customer, 2, r#"{"version":2}"#).await;
    // As an erasure leaves a row a relay had leased: the record is gone.
    sqlx::query("DELETE FROM lifecycle_changes WHERE customer_id = $1 AND version = 1")
        .bind(customer)
        .execute(&app.pool)
        .await
        .expect("deleting the record");
    let relay = Relay::new(&app.kafka, app.pool.clone(), Metrics::new()).expect("relay");
    relay.publish_all().await.expect("a round");
    let ids: Vec<String> = read_all(&app.kafka.brokers, &app.kafka.changes_topic)
        .iter()
        .filter_map(|r| r.header("change_id").map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![format!("{customer}:2")]);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox").fetch_one(&app.pool).await.expect("count");
    assert_eq!(left, 0, "the row without its record is gone too");
    app.stop().await;
}
