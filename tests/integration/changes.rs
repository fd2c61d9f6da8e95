//! Lifecycle changes for topic subscribers: one record per visible change,
//! versions 1..n per customer with no gap, in order, published from the
//! outbox, and caught up through the API.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use connectflow::event::ConnectEvent;
use connectflow::lifecycle::{Lifecycle, VisibleLifecycle, apply, changed};
use connectflow::metrics::Metrics;
use connectflow::outbox::{LEASE, Relay, SAFETY_POLL};
use connectflow::simulate::flows::{bodies, flow};
use connectflow::store::apply::{Published, apply_published};
use connectflow::store::changes::{Announce, HandOff};
use connectflow::store::positions::Positions;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_pipeline};
use crate::kafka_util::{Record, read_all};

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_000_000_000).expect("valid time")
}

fn normalised(bodies: &[Value]) -> Vec<ConnectEvent> {
    crate::helpers::normalised(bodies, start())
}

/// The visible states after each event that changes one, in fold order:
/// what a subscriber should see when the events arrive in order.
fn expected_afters(events: &[ConnectEvent]) -> Vec<VisibleLifecycle> {
    let mut state = Lifecycle::default();
    let mut afters = Vec::new();
    for event in events {
        let before = state.clone();
        apply(&mut state, event);
        if !changed(&before, &state).is_empty() {
            afters.push(VisibleLifecycle::from(&state));
        }
    }
    afters
}

async fn send(app: &TestApp, bodies: &[Value]) {
    for body in bodies {
        let response = app.post_webhook(&serde_json::to_vec(body).expect("json")).await;
        assert_eq!(response.status(), 200, "{body}");
    }
}

/// The change records of `customer` on the topic, once there are at least
/// `at_least`.
async fn changes_on_topic(app: &TestApp, customer: &str, at_least: usize) -> Vec<(Record, Value)> {
    eventually(Duration::from_secs(30), || async {
        let mine: Vec<(Record, Value)> = read_all(&app.kafka.brokers, &app.kafka.changes_topic)
            .into_iter()
            .filter(|r| r.key.as_deref() == Some(customer.as_bytes()))
            .filter_map(|r| {
                let value: Value = serde_json::from_slice(&r.value).ok()?;
                Some((r, value))
            })
            .collect();
        (mine.len() >= at_least).then_some(mine)
    })
    .await
    .unwrap_or_else(|| panic!("{customer}: fewer than {at_least} change records on the topic"))
}

async fn lifecycle(app: &TestApp, customer: &str, event_count: usize) -> Value {
    eventually(Duration::from_secs(30), || async {
        let response = app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await;
        let body: Value = response.json().await.ok()?;
        (body["event_count"].as_u64() == Some(event_count as u64)).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("{customer} never reached {event_count} events"))
}

fn versions(records: &[(Record, Value)]) -> Vec<i64> {
    records.iter().filter_map(|(_, v)| v["version"].as_i64()).collect()
}

#[tokio::test]
async fn a_connect_flow_in_order_produces_exactly_its_changes_versions_one_to_n() {
    let app = spawn_pipeline().await;
    let customer = "8300000001";
    let bodies = bodies(flow("mfa-success").expect("flow"), customer, start(), 1);
    let events = normalised(&bodies);
    let expected = expected_afters(&events);
    send(&app, &bodies).await;
    let state = lifecycle(&app, customer, events.len()).await;
    assert_eq!(state["version"], Value::from(expected.len()), "{state}");

    let records = changes_on_topic(&app, customer, expected.len()).await;
    assert_eq!(versions(&records), (1..=expected.len() as i64).collect::<Vec<_>>(), "versions 1..n, in order");
    for (i, (record, value)) in records.iter().enumerate() {
        let change_id = format!("{customer}:{}", i + 1);
        assert_eq!(value["schema"], "connectflow.lifecycle_change.v1");
        assert_eq!(value["change_id"], change_id.as_str());
        assert_eq!(record.header("change_id"), Some(change_id.as_str()));
        assert_eq!(record.header("schema"), Some("connectflow.lifecycle_change.v1"));
        assert_eq!(value["recomputed"], false);
        assert_eq!(value["caused_by"].as_array().map(Vec::len), Some(1), "{value}");
        assert_eq!(value["after"], serde_json::to_value(&expected[i]).expect("json"), "change {}", i + 1);
        assert!(value["changed"].as_array().is_some_and(|c| !c.is_empty()));
    }
    assert_eq!(records[0].1["before"], Value::Null, "the first change has no before");
    assert_eq!(records[1].1["before"], records[0].1["after"], "each before is the previous after");

    // The API lists the same records for a subscriber catching up.
    let page: Value =
        app.api_get(&format!("/v1/customers/{customer}/changes?limit=2")).await.json().await.expect("json");
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["changes"][0], records[0].1);
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let rest: Value = app
        .api_get(&format!("/v1/customers/{customer}/changes?cursor={cursor}&limit=500"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rest["changes"].as_array().map(Vec::len), Some(expected.len() - 2));
    assert_eq!(rest["next_cursor"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn shuffled_duplicated_delivery_ends_in_the_same_after_and_never_repeats_a_change_id() {
    let app = spawn_pipeline().await;
    let customer = "8300000002";
    let bodies = bodies(flow("legacy-success").expect("flow"), customer, start(), 2);
    let events = normalised(&bodies);
    let mut shuffled: Vec<Value> = bodies.iter().rev().flat_map(|b| [b.clone(), b.clone()]).collect();
    shuffled.rotate_left(3);
    send(&app, &shuffled).await;
    let state = lifecycle(&app, customer, events.len()).await;
    let version = state["version"].as_i64().expect("version");
    let records = changes_on_topic(&app, customer, usize::try_from(version).unwrap_or(0)).await;
    let ids: Vec<&str> = records.iter().filter_map(|(_, v)| v["change_id"].as_str()).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "no change_id twice: {ids:?}");
    assert_eq!(versions(&records), (1..=version).collect::<Vec<_>>());
    let final_state = VisibleLifecycle::from(&connectflow::lifecycle::fold(&events));
    assert_eq!(
        records.last().map(|(_, v)| v["after"].clone()),
        Some(serde_json::to_value(&final_state).expect("json"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_late_event_that_alters_history_produces_one_recomputed_change() {
    let app = spawn_pipeline().await;
    let customer = "8300000003";
    let bodies = bodies(flow("legacy-success").expect("flow"), customer, start(), 3);
    let added = bodies.iter().position(|b| b["eventType"] == "added").expect("an added");
    let mut without = bodies.clone();
    let late = without.remove(added);
    send(&app, &without).await;
    let before = lifecycle(&app, customer, normalised(&without).len()).await;
    assert_eq!(before["consent"]["state"], "none");
    let version = before["version"].as_i64().expect("version");
    send(&app, std::slice::from_ref(&late)).await;
    let after = lifecycle(&app, customer, normalised(&bodies).len()).await;
    assert_eq!(after["consent"]["state"], "granted");
    assert_eq!(after["version"], Value::from(version + 1), "exactly one more change");
    let records = changes_on_topic(&app, customer, usize::try_from(version + 1).unwrap_or(0)).await;
    let last = &records.last().expect("a change").1;
    assert_eq!(last["recomputed"], true, "{last}");
    assert_eq!(last["caused_by"][0]["event_id"], late["eventId"]);
    assert!(last["changed"].as_array().is_some_and(|c| c.contains(&Value::from("consent"))), "{last}");
    app.stop().await;
}

#[tokio::test]
async fn a_relay_crash_between_publish_and_mark_repeats_changes_but_never_leaves_a_gap() {
    let app = spawn_app().await;
    let customer = "8300000004";
    let events = normalised(&bodies(flow("revoked").expect("flow"), customer, start(), 4));
    let expected = expected_afters(&events).len();
    connectflow::store::apply::apply_batch(&app.pool, &events).await.expect("applied, changes recorded");
    let relay = connectflow::outbox::Relay::new(&app.kafka, app.pool.clone(), connectflow::metrics::Metrics::new())
        .expect("relay");
    // Publishes, then dies before marking: everything stays unpublished.
    let published = relay.publish_batch_then_crash_before_mark().await.expect("published then crashed");
    assert_eq!(published, expected);
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox").fetch_one(&app.pool).await.expect("count");
    assert_eq!(waiting, expected as i64, "nothing marked");
    // The restarted relay publishes them again and marks them.
    relay.publish_all().await.expect("published");
    let records = changes_on_topic(&app, customer, 2 * expected).await;
    let mut versions = versions(&records);
    assert_eq!(versions.len(), 2 * expected, "each change at most twice");
    versions.dedup();
    assert_eq!(versions[..expected], (1..=expected as i64).collect::<Vec<_>>()[..], "in order, no gap");
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox").fetch_one(&app.pool).await.expect("count");
    assert_eq!(waiting, 0);
}

/// Applies `events` as a consumer's lane does when its relay has room: the
/// changes of customers with nothing else waiting come back handed off.
async fn apply_handing_off(app: &TestApp, events: &[ConnectEvent], lease: Duration) -> Option<HandOff> {
    let published = events.iter().map(|event| Published { event, bytes: None });
    let outcome = apply_published(&app.pool, published, &Positions::default(), Announce::HandOff { lease })
        .await
        .expect("applied, changes recorded");
    outcome.handed_off
}

async fn outbox_rows(app: &TestApp, sql: &'static str, customer: &str) -> i64 {
    sqlx::query_scalar(sql).bind(customer).fetch_one(&app.pool).await.expect("count")
}

#[tokio::test]
async fn changes_handed_off_are_leased_to_the_relay_and_published_in_order_without_a_claim() {
    let app = spawn_app().await;
    let customer = "8300000011";
    let events = normalised(&bodies(flow("revoked").expect("flow"), customer, start(), 11));
    let expected = expected_afters(&events).len();
    let hand_off = apply_handing_off(&app, &events, LEASE).await.expect("handed off: nothing else waits");
    let handed: Vec<i64> = hand_off.changes.iter().map(|c| c.version).collect();
    assert_eq!(handed, (1..=expected as i64).collect::<Vec<_>>(), "every change, in version order");
    let leased = "SELECT count(*) FROM lifecycle_outbox WHERE customer_id = $1 AND leased_until > now() \
                  AND lease_token IS NOT NULL";
    assert_eq!(outbox_rows(&app, leased, customer).await, expected as i64, "recorded already leased");

    let metrics = Metrics::new();
    let relay = Relay::new(&app.kafka, app.pool.clone(), metrics.clone()).expect("relay");
    // A claim passes them over: they are the hand-off's.
    relay.publish_all().await.expect("claimed nothing");
    assert_eq!(outbox_rows(&app, leased, customer).await, expected as i64, "not claimed");

    let handle = relay.handle();
    handle.reserve().expect("room in the relay's queue").send(hand_off);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let records = changes_on_topic(&app, customer, expected).await;
    assert_eq!(versions(&records), (1..=expected as i64).collect::<Vec<_>>(), "each once, in order");
    let all = "SELECT count(*) FROM lifecycle_outbox WHERE customer_id = $1";
    let settled =
        eventually(Duration::from_secs(10), || async { (outbox_rows(&app, all, customer).await == 0).then_some(()) });
    assert!(settled.await.is_some(), "the published changes leave the outbox");
    assert_eq!(metrics.changes_handed_off.get(), expected as u64);
    shutdown.cancel();
    running.await.expect("joined").expect("relay stopped");
    app.stop().await;
}

#[tokio::test]
async fn a_customer_with_a_change_in_flight_is_not_handed_off_and_is_claimed_once_the_hand_off_settles() {
    let app = spawn_app().await;
    let (busy, free) = ("8300000012", "8300000013");
    let events = normalised(&bodies(flow("revoked").expect("flow"), busy, start(), 12));
    let expected = expected_afters(&events).len();
    let (first, second) = events.split_at(events.len() / 2);
    let in_flight = apply_handing_off(&app, first, LEASE).await.expect("the first half handed off");
    let first_changes = in_flight.changes.len();
    assert!(first_changes > 0 && first_changes < expected, "changes on both sides: {first_changes} of {expected}");
    let others = normalised(&bodies(flow("revoked").expect("flow"), free, start(), 13));
    let batch: Vec<ConnectEvent> = second.iter().chain(&others).cloned().collect();
    let next = apply_handing_off(&app, &batch, LEASE).await.expect("the other customer's handed off");
    assert!(next.changes.iter().all(|c| c.customer_id == free), "the busy customer's changes wait their turn");
    assert_eq!(next.changes.len(), expected_afters(&others).len());
    let waiting = "SELECT count(*) FROM lifecycle_outbox WHERE customer_id = $1 AND leased_until IS NULL";
    assert_eq!(outbox_rows(&app, waiting, busy).await, (expected - first_changes) as i64, "recorded unleased");

    // As the lanes do: the first batch's hand-off, then the second batch's
    // wake-up for what it could not hand off, then its hand-off.
    let relay = Relay::new(&app.kafka, app.pool.clone(), Metrics::new()).expect("relay");
    let handle = relay.handle();
    handle.reserve().expect("room").send(in_flight);
    handle.wake();
    handle.reserve().expect("room").send(next);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // The rounds the wake-up starts find the busy customer leased; the
    // hand-off's settling claims again at once, before the relay's safety
    // poll (five seconds after it started) would: without that claim the
    // busy customer's later changes wait for the poll (measured: 6.8 s).
    // The bound is the poll itself, not less: a broker just started can
    // take seconds to confirm the relay's first records.
    let records = changes_on_topic(&app, busy, expected).await;
    let took = started.elapsed();
    let mut seen = versions(&records);
    seen.dedup();
    assert_eq!(seen, (1..=expected as i64).collect::<Vec<_>>(), "in order, no gap");
    assert!(took < SAFETY_POLL, "claimed by the safety poll, not after the hand-off: {took:?}");
    let free_records = changes_on_topic(&app, free, expected_afters(&others).len()).await;
    assert_eq!(versions(&free_records), (1..=expected_afters(&others).len() as i64).collect::<Vec<_>>());
    shutdown.cancel();
    running.await.expect("joined").expect("relay stopped");
    app.stop().await;
}

#[tokio::test]
async fn a_hand_off_lost_with_its_process_is_claimed_once_its_lease_runs_out() {
    let app = spawn_app().await;
    let customer = "8300000014";
    let events = normalised(&bodies(flow("revoked").expect("flow"), customer, start(), 14));
    let expected = expected_afters(&events).len();
    let lost = apply_handing_off(&app, &events, Duration::from_secs(2)).await.expect("handed off");
    // The process dies before its relay got it.
    drop(lost);
    let relay = connectflow::outbox::Relay::new(&app.kafka, app.pool.clone(), Metrics::new()).expect("relay");
    relay.publish_all().await.expect("claimed nothing");
    let all = "SELECT count(*) FROM lifecycle_outbox WHERE customer_id = $1";
    assert_eq!(outbox_rows(&app, all, customer).await, expected as i64, "leased: not claimed yet");
    let claimed = eventually(Duration::from_secs(20), || async {
        relay.publish_all().await.ok()?;
        (outbox_rows(&app, all, customer).await == 0).then_some(())
    });
    assert!(claimed.await.is_some(), "claimed and published once the lease ran out");
    let records = changes_on_topic(&app, customer, expected).await;
    assert_eq!(versions(&records), (1..=expected as i64).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn a_reprojection_that_changes_a_lifecycle_emits_a_recomputed_change_caused_by_nothing() {
    let app = spawn_app().await;
    let customer = "8300000005";
    let events = normalised(&bodies(flow("revoked").expect("flow"), customer, start(), 5));
    connectflow::store::apply::apply_batch(&app.pool, &events).await.expect("applied");
    let version: i64 = sqlx::query_scalar("SELECT version FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(&app.pool)
        .await
        .expect("version");
    // A stale projection, as after a fix of the state machine.
    sqlx::query(
        "UPDATE customers SET lifecycle = jsonb_set(lifecycle, '{consent,state}', '\"granted\"') WHERE customer_id = $1",
    )
    .bind(customer)
    .execute(&app.pool)
    .await
    .expect("tamper");
    let outcome = connectflow::store::reproject::reproject(&app.pool, None, 10).await.expect("reproject");
    assert_eq!(outcome.changed, 1);
    let change: String =
        sqlx::query_scalar("SELECT change FROM lifecycle_changes WHERE customer_id = $1 AND version = $2")
            .bind(customer)
            .bind(version + 1)
            .fetch_one(&app.pool)
            .await
            .expect("a change one version later");
    let change: Value = serde_json::from_str(&change).expect("JSON");
    assert_eq!(change["caused_by"], Value::Array(vec![]));
    assert_eq!(change["recomputed"], true);
    assert_eq!(change["before"]["consent"]["state"], "granted");
    assert_eq!(change["after"]["consent"]["state"], "revoked");
    let again = connectflow::store::reproject::reproject(&app.pool, None, 10).await.expect("reproject");
    assert_eq!(again.changed, 0, "nothing more to change, nothing more emitted");
}
