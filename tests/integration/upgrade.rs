//! Rolling upgrades and stored state: the published bytes are what is
//! stored, records of a newer version wait in the dead letters for the
//! upgrade, and a customer's stored state that this consumer cannot trust
//! stalls it loudly instead of parking a valid event or moving the customer
//! backwards.

use std::time::Duration;

use connectflow::event::SCHEMA_VERSION;
use connectflow::metrics::Metrics;
use connectflow::store::apply::STORED_LIFECYCLE_VERSION;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::consumer::{
    all_applied, dead_letters, event_count, livez_becomes, produce, produce_json, record, send_flow,
    start_consume_process,
};
use crate::helpers::{consumer_args, eventually, run_consumer, spawn_app, spawn_pipeline};
use crate::kafka_util::{count_records, read_all};

async fn stored_payload(pool: &sqlx::PgPool, event_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT published FROM connect_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .expect("query")
        .flatten()
}

async fn is_recorded(pool: &sqlx::PgPool, customer: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM connect_events WHERE customer_id = $1)")
        .bind(customer)
        .fetch_one(pool)
        .await
        .expect("query")
}

#[tokio::test]
async fn the_stored_payload_is_the_published_bytes_unknown_fields_included_and_the_receivers_own_is_stored_once() {
    let app = spawn_pipeline().await;
    // As a newer receiver would write it: a field this consumer does not
    // know, and a layout of its own.
    let mut value = record("8100000001", "1764000000001-verbatim", "started");
    value["added_by_a_newer_receiver"] = json!({"kept": [1, 2]});
    let published = format!("{}\n", serde_json::to_string_pretty(&value).expect("json"));
    produce(&app.kafka.brokers, &app.kafka.events_topic, "8100000001", published.as_bytes()).await;
    all_applied(&app.pool, &[("8100000001".to_owned(), 1)], Duration::from_secs(30)).await.expect("applied");
    assert_eq!(stored_payload(&app.pool, "1764000000001-verbatim").await.as_deref(), Some(published.as_str()));

    // And what the receiver publishes (the consumer's own serialisation of
    // the event) is stored once, in `record`: what a recomputation reads is
    // what is on the topic, with the schema version in a header.
    let count = send_flow(&app, "8100000002", "legacy-success", 41).await;
    all_applied(&app.pool, &[("8100000002".to_owned(), count)], Duration::from_secs(30)).await.expect("applied");
    let on_topic: Vec<_> = read_all(&app.kafka.brokers, &app.kafka.events_topic)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(b"8100000002".as_slice()))
        .collect();
    assert_eq!(on_topic.len(), count);
    for published in on_topic {
        assert_eq!(published.header("schema_version"), Some(SCHEMA_VERSION.to_string().as_str()));
        let event_id = published.header("event_id").expect("event_id header");
        assert_eq!(stored_payload(&app.pool, event_id).await, None, "not stored twice: {event_id}");
        let read: String =
            sqlx::query_scalar("SELECT coalesce(published, record::text) FROM connect_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(&app.pool)
                .await
                .expect("query");
        let read: serde_json::Value = serde_json::from_str(&read).expect("json");
        let on_topic: serde_json::Value = serde_json::from_slice(&published.value).expect("json");
        assert_eq!(read, on_topic, "{event_id}");
    }
    app.stop().await;
}

#[tokio::test]
async fn records_of_a_newer_schema_wait_in_the_dead_letters_unrecorded_until_replayed_after_the_upgrade() {
    let app = spawn_app().await;
    let customer = "8200000001";
    // An older consumer: the receiver writes a version above its own.
    let mut args = consumer_args();
    args.schema_version = SCHEMA_VERSION - 1;
    let old_metrics = Metrics::new();
    let token = CancellationToken::new();
    let old = run_consumer(args.clone(), app.kafka.clone(), app.pool.clone(), old_metrics.clone(), token.clone());
    let count = send_flow(&app, customer, "legacy-success", 42).await;
    let parked = dead_letters(&app, count).await;
    assert_eq!(parked.len(), count);
    for letter in &parked {
        assert_eq!(letter.header("dlq_reason"), Some("newer_schema"));
        assert!(!letter.value.is_empty(), "parked whole");
    }
    assert_eq!(old_metrics.newer_schema_parked.get(), count as u64);
    assert!(!is_recorded(&app.pool, customer).await, "not recorded, so not deduplicated later");
    assert_eq!(event_count(&app.pool, customer).await, None);
    token.cancel();
    old.await.expect("join").expect("the old consumer stops cleanly");

    // The upgrade: the same group, a consumer that knows the version.
    args.schema_version = SCHEMA_VERSION;
    let token = CancellationToken::new();
    let new = run_consumer(args, app.kafka.clone(), app.pool.clone(), Metrics::new(), token.clone());
    let replayed =
        connectflow::dead_letter::replay::replay(&app.kafka, Some("newer_schema"), false).await.expect("replay");
    assert_eq!(replayed.replayed as usize, count);
    all_applied(&app.pool, &[(customer.to_owned(), count)], Duration::from_secs(60))
        .await
        .expect("applied after the upgrade");
    token.cancel();
    new.await.expect("join").expect("clean stop");
    app.stop().await;
}

/// Starts a consume process with a short stall time, applies a first flow
/// for `customer`, and returns what the test needs to watch it.
async fn consumer_with_a_customer(
    app: &crate::helpers::TestApp,
    customer: &str,
    seed: u64,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    std::sync::Arc<Metrics>,
    usize,
) {
    let mut args = consumer_args();
    args.stall_seconds = 2;
    let metrics = Metrics::new();
    let (ops, token, handle) = start_consume_process(app.pool.clone(), &app.kafka, args, metrics.clone()).await;
    let first = send_flow(app, customer, "legacy-success", seed).await;
    all_applied(&app.pool, &[(customer.to_owned(), first)], Duration::from_secs(30)).await.expect("applied");
    (ops, token, handle, metrics, first)
}

/// Waits until the consumer counts a lane stalled on stored state.
async fn stalled_on_stored_state(metrics: &Metrics) -> bool {
    eventually(Duration::from_secs(60), || async { (metrics.stalled_on_stored_state.get() > 0).then_some(()) })
        .await
        .is_some()
}

#[tokio::test]
async fn a_lifecycle_stored_by_a_newer_version_stalls_the_consumer_until_it_can_read_it() {
    let app = spawn_app().await;
    let customer = "8300000001";
    let (ops, token, handle, metrics, first) = consumer_with_a_customer(&app, customer, 43).await;
    sqlx::query("UPDATE customers SET lifecycle_schema_version = $1 WHERE customer_id = $2")
        .bind(STORED_LIFECYCLE_VERSION + 1)
        .bind(customer)
        .execute(&app.pool)
        .await
        .expect("a newer version's lifecycle");
    let mut next = record(customer, "1764999999999-after-the-newer-write", "institutionSupported");
    next["occurred_at"] = "2026-12-01T00:00:00.000Z".into();
    produce_json(&app, customer, &next).await;

    assert!(stalled_on_stored_state(&metrics).await, "the stall is counted");
    assert!(livez_becomes(&app, ops, 503, Duration::from_secs(60)).await, "/livez fails");
    assert_eq!(event_count(&app.pool, customer).await, Some(first as i64), "not applied with older rules");
    assert_eq!(stored_payload(&app.pool, "1764999999999-after-the-newer-write").await, None, "not recorded");
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.dlq_topic), 0, "not parked");

    // The upgrade finishes (here: the stored lifecycle is one it reads).
    sqlx::query("UPDATE customers SET lifecycle_schema_version = $1 WHERE customer_id = $2")
        .bind(STORED_LIFECYCLE_VERSION)
        .bind(customer)
        .execute(&app.pool)
        .await
        .expect("fixed");
    all_applied(&app.pool, &[(customer.to_owned(), first + 1)], Duration::from_secs(60)).await.expect("proceeds");
    assert!(livez_becomes(&app, ops, 200, Duration::from_secs(30)).await, "/livez recovers");
    assert_eq!(metrics.stalled_on_stored_state.get(), 0);
    token.cancel();
    handle.await.expect("join").expect("clean stop");
    app.stop().await;
}

#[tokio::test]
async fn a_history_snapshot_that_does_not_decode_never_parks_a_valid_event() {
    let app = spawn_app().await;
    let customer = "8400000001";
    let (ops, token, handle, metrics, first) = consumer_with_a_customer(&app, customer, 44).await;
    sqlx::query(
        "INSERT INTO customer_history_snapshots (customer_id, lifecycle, history_starts_at, updated_at) \
         VALUES ($1, '{\"written_by\": \"damage\"}', '2025-01-01T00:00:00Z', now())",
    )
    .bind(customer)
    .execute(&app.pool)
    .await
    .expect("a damaged snapshot");

    // An event after the others needs no snapshot: applied.
    let mut next = record(customer, "1764999999999-in-order", "institutionSupported");
    next["occurred_at"] = "2026-12-01T00:00:00.000Z".into();
    produce_json(&app, customer, &next).await;
    all_applied(&app.pool, &[(customer.to_owned(), first + 1)], Duration::from_secs(30)).await.expect("applied");

    // A late one needs the whole history, which cannot be read: the
    // consumer stalls rather than park it or fold without the snapshot.
    let mut late = record(customer, "1700000000000-late", "institutionSupported");
    late["occurred_at"] = "2024-11-14T22:13:20.000Z".into();
    produce_json(&app, customer, &late).await;
    assert!(stalled_on_stored_state(&metrics).await, "the stall is counted");
    assert!(livez_becomes(&app, ops, 503, Duration::from_secs(60)).await, "/livez fails");
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.dlq_topic), 0, "never parked");

    // The operator's fix (a snapshot restored; here: removed).
    sqlx::query("DELETE FROM customer_history_snapshots WHERE customer_id = $1")
        .bind(customer)
        .execute(&app.pool)
        .await
        .expect("fixed");
    all_applied(&app.pool, &[(customer.to_owned(), first + 2)], Duration::from_secs(60)).await.expect("applied");
    assert!(livez_becomes(&app, ops, 200, Duration::from_secs(30)).await, "/livez recovers");
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.dlq_topic), 0, "never parked");
    token.cancel();
    handle.await.expect("join").expect("clean stop");
    app.stop().await;
}

#[tokio::test]
async fn a_change_version_already_recorded_stalls_the_consumer_and_never_parks_the_event() {
    let app = spawn_app().await;
    let customer = "8500000001";
    // A restored database whose changes table kept a change it no longer
    // has a lifecycle for: the customer's first change collides with it.
    sqlx::query(
        "INSERT INTO lifecycle_changes (customer_id, version, change, recorded_at) VALUES ($1, 1, '{}', now())",
    )
    .bind(customer)
    .execute(&app.pool)
    .await
    .expect("a stray change");
    let mut args = consumer_args();
    args.stall_seconds = 2;
    let metrics = Metrics::new();
    let (ops, token, handle) = start_consume_process(app.pool.clone(), &app.kafka, args, metrics.clone()).await;
    let count = send_flow(&app, customer, "legacy-success", 45).await;
    assert!(stalled_on_stored_state(&metrics).await, "the stall is counted");
    assert!(livez_becomes(&app, ops, 503, Duration::from_secs(60)).await, "/livez fails");
    assert_ne!(event_count(&app.pool, customer).await, Some(count as i64), "the flow stops at the collision");
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.dlq_topic), 0, "never parked");

    sqlx::query("DELETE FROM lifecycle_changes WHERE customer_id = $1")
        .bind(customer)
        .execute(&app.pool)
        .await
        .expect("fixed");
    all_applied(&app.pool, &[(customer.to_owned(), count)], Duration::from_secs(60)).await.expect("proceeds");
    assert!(livez_becomes(&app, ops, 200, Duration::from_secs(30)).await, "/livez recovers");
    token.cancel();
    handle.await.expect("join").expect("clean stop");
    app.stop().await;
}
