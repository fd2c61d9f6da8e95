//! History retention: events older than the horizon folded into snapshots
//! and deleted, every lifecycle unchanged, retries still duplicates, and a
//! late event older than the horizon applied at the horizon.

use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::event::{ConnectEvent, EventType, rfc3339_ms, truncate_to_millis};
use connectflow::simulate::flows::{bodies, flow};
use connectflow::store::apply::apply_batch;
use connectflow::store::history::{fold_older_than, prune_changes};
use connectflow::store::reproject::{audit, reproject};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{consumer_args, eventually, normalised, run_consumer, spawn_app};

/// Old history on both sides of the horizon: both sessions before it.
const ALL_OLD: &str = "9005060001";
/// A failure before the horizon, a success after it.
const MIXED: &str = "9005060002";
/// Three sessions, one on each of three days.
const THREE_DAYS: &str = "9005060003";
/// Everything after the horizon: never folded.
const RECENT: &str = "9005060004";

struct Days {
    horizon: DateTime<Utc>,
    /// Two and a half, one and a half and half a day ago.
    at: [DateTime<Utc>; 3],
}

fn days() -> Days {
    let now = truncate_to_millis(Utc::now());
    let hours = |h: i64| now - chrono::Duration::hours(h);
    Days { horizon: hours(24), at: [hours(60), hours(36), hours(12)] }
}

/// The events of `flow_name` for `customer`, starting at `start`.
fn session(flow_name: &str, customer: &str, start: DateTime<Utc>, seed: u64) -> Vec<ConnectEvent> {
    normalised(&bodies(flow(flow_name).expect("flow"), customer, start, seed), start + chrono::Duration::minutes(1))
}

/// Every customer's lifecycle document, version and `updated_at`, by id.
async fn customers(pool: &PgPool) -> Vec<(String, Value, i64, DateTime<Utc>)> {
    sqlx::query_as("SELECT customer_id, lifecycle, version, updated_at FROM customers ORDER BY customer_id")
        .fetch_all(pool)
        .await
        .expect("customers")
}

async fn lifecycle_of(pool: &PgPool, customer: &str) -> Value {
    sqlx::query_scalar("SELECT lifecycle FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(pool)
        .await
        .expect("lifecycle")
}

async fn count(pool: &PgPool, sql: &str, at: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).bind(at).fetch_one(pool).await.expect("count")
}

/// Stored lifecycles equal the recomputation from snapshots and kept
/// events, and a re-projection rewrites nothing.
async fn assert_history_agrees(pool: &PgPool) {
    let audited = audit(pool, None, 2).await.expect("audit");
    assert!(audited.differing.is_empty(), "reproject --check: {:?}", audited.differing);
    let before = customers(pool).await;
    let reprojected = reproject(pool, None, 2).await.expect("reproject");
    assert_eq!(reprojected.changed, 0, "reproject changed lifecycles");
    assert_eq!(customers(pool).await, before);
}

/// A new event older than the horizon: `event_type` at `occurred_at`, the
/// rest of `like`.
fn late(like: &ConnectEvent, event_type: &str, occurred_at: DateTime<Utc>, deleted: &[&str]) -> ConnectEvent {
    ConnectEvent {
        event_id: format!("{}-late{}", occurred_at.timestamp_millis(), event_type),
        event_type: EventType::parse(event_type),
        occurred_at,
        received_at: Utc::now(),
        accounts: vec![],
        deleted_account_ids: deleted.iter().map(|id| (*id).to_owned()).collect(),
        ..like.clone()
    }
}

#[tokio::test]
async fn folding_the_history_before_a_one_day_horizon_changes_no_lifecycle() {
    let app = spawn_app().await;
    let pool = &app.pool;
    let Days { horizon, at } = days();
    let mut events = Vec::new();
    events.extend(session("invalid-credentials", ALL_OLD, at[0], 1));
    events.extend(session("oauth-success", ALL_OLD, at[1], 2));
    events.extend(session("invalid-credentials", MIXED, at[0], 3));
    events.extend(session("oauth-success", MIXED, at[2], 4));
    events.extend(session("revoked", THREE_DAYS, at[0], 5));
    events.extend(session("oauth-success", THREE_DAYS, at[1], 6));
    events.extend(session("mfa-success", THREE_DAYS, at[2], 7));
    events.extend(session("legacy-success", RECENT, at[2], 8));
    // Newest first, a few at a time: most batches are late and recompute.
    events.reverse();
    for batch in events.chunks(3) {
        apply_batch(pool, batch).await.expect("apply");
    }
    let old: Vec<&ConnectEvent> = events.iter().filter(|e| e.occurred_at < horizon).collect();
    let kept = events.len() - old.len();
    assert!(!old.is_empty() && kept > 0);
    let before = customers(pool).await;
    // Every change of THREE_DAYS recorded two days ago, all published but its latest.
    sqlx::query("UPDATE lifecycle_changes SET recorded_at = now() - interval '2 days' WHERE customer_id = $1")
        .bind(THREE_DAYS)
        .execute(pool)
        .await
        .expect("aging changes");
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM lifecycle_outbox WHERE customer_id = $1")
        .bind(THREE_DAYS)
        .fetch_one(pool)
        .await
        .expect("latest");
    sqlx::query("DELETE FROM lifecycle_outbox WHERE customer_id = $1 AND version < $2")
        .bind(THREE_DAYS)
        .bind(latest)
        .execute(pool)
        .await
        .expect("publishing");
    let other_changes = count(pool, "SELECT count(*) FROM lifecycle_changes WHERE recorded_at > $1", horizon).await;

    let folded = fold_older_than(pool, horizon, 2).await.expect("fold");
    let pruned = prune_changes(pool, horizon, 1).await.expect("prune");

    assert_eq!((folded.customers, folded.events, folded.skipped), (3, old.len() as u64, 0));
    assert_eq!(count(pool, "SELECT count(*) FROM connect_events WHERE occurred_at < $1", horizon).await, 0);
    assert_eq!(count(pool, "SELECT count(*) FROM connect_events WHERE occurred_at >= $1", horizon).await, kept as i64);
    let folded_ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM history_folded_events ORDER BY event_id")
        .fetch_all(pool)
        .await
        .expect("folded ids");
    let mut old_ids: Vec<String> = old.iter().map(|e| e.event_id.clone()).collect();
    old_ids.sort();
    assert_eq!(folded_ids, old_ids);
    assert_eq!(customers(pool).await, before, "a lifecycle changed");
    assert_history_agrees(pool).await;
    // The snapshot of a customer whose every event was folded is their lifecycle.
    let snapshot: Value = sqlx::query_scalar("SELECT lifecycle FROM customer_history_snapshots WHERE customer_id = $1")
        .bind(ALL_OLD)
        .fetch_one(pool)
        .await
        .expect("snapshot");
    assert_eq!(snapshot, lifecycle_of(pool, ALL_OLD).await);
    // Published changes before the horizon went; the unpublished one stayed.
    assert_eq!(pruned, latest as u64 - 1);
    let left: Vec<i64> = sqlx::query_scalar("SELECT version FROM lifecycle_changes WHERE customer_id = $1")
        .bind(THREE_DAYS)
        .fetch_all(pool)
        .await
        .expect("changes");
    assert_eq!(left, [latest]);
    assert_eq!(
        count(pool, "SELECT count(*) FROM lifecycle_changes WHERE recorded_at > $1", horizon).await,
        other_changes
    );

    // The events API says where the history starts.
    let page: Value = app.api_get(&format!("/v1/customers/{THREE_DAYS}/events")).await.json().await.expect("page");
    assert_eq!(page["history_starts_at"], rfc3339_ms::format(&horizon), "{page}");
    let listed = page["events"].as_array().expect("events");
    assert_eq!(
        listed.len(),
        events.iter().filter(|e| e.customer_id.as_str() == THREE_DAYS && e.occurred_at >= horizon).count()
    );
    let page: Value = app.api_get(&format!("/v1/customers/{RECENT}/events")).await.json().await.expect("page");
    assert_eq!(page["history_starts_at"], Value::Null);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(5));

    // A retry of a folded event (Finicity's, or a dead letter replayed) is a duplicate.
    let retried = old.iter().find(|e| e.customer_id.as_str() == THREE_DAYS).expect("an old event");
    let outcome = apply_batch(pool, [*retried]).await.expect("retry");
    assert_eq!((outcome.applied, outcome.duplicates), (0, 1));
    assert_eq!(customers(pool).await, before, "a retry changed a lifecycle");
    assert_eq!(count(pool, "SELECT count(*) FROM connect_events WHERE occurred_at < $1", horizon).await, 0);

    // New events older than the horizon apply at the horizon: after every
    // folded event, before every kept one.
    let all_old_before = lifecycle_of(pool, ALL_OLD).await;
    let added =
        old.iter().find(|e| e.customer_id.as_str() == ALL_OLD && e.event_type == EventType::Added).expect("an added");
    let account = added.accounts[0].account_id.clone().expect("an account id");
    // Dated before the `added` that shared the account: in its place it would
    // delete nothing; at the horizon it deletes the account.
    let deletion = late(added, "accountsDeleted", added.occurred_at - chrono::Duration::hours(1), &[&account]);
    let mixed_failure = old.iter().find(|e| e.customer_id.as_str() == MIXED).expect("an old event");
    let cancel = late(mixed_failure, "cancel", at[0] - chrono::Duration::hours(1), &[]);
    let mixed_before = lifecycle_of(pool, MIXED).await;

    let outcome = apply_batch(pool, [&deletion, &cancel]).await.expect("late events");

    assert_eq!((outcome.applied, outcome.recomputed), (2, 2));
    let all_old = lifecycle_of(pool, ALL_OLD).await;
    let statuses: Vec<(&str, &str)> = all_old["institution_logins"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|login| login["accounts"].as_array().into_iter().flatten())
        .filter_map(|a| Some((a["account_id"].as_str()?, a["status"].as_str()?)))
        .collect();
    assert!(statuses.contains(&(account.as_str(), "deleted")), "{all_old}");
    assert_eq!(all_old["event_count"], all_old_before["event_count"].as_u64().expect("count") + 1);
    assert_eq!(all_old["last_event"], all_old_before["last_event"], "the latest event is still the snapshot's");
    // MIXED's kept success is refolded over the late cancel: authenticated,
    // its first event now the cancel's.
    let mixed = lifecycle_of(pool, MIXED).await;
    assert_eq!(mixed["authentication"]["state"], "authenticated", "{mixed}");
    assert_eq!(mixed["funnel"]["first_event_at"], rfc3339_ms::format(&cancel.occurred_at));
    assert_eq!(mixed["event_count"], mixed_before["event_count"].as_u64().expect("count") + 1);
    assert_eq!(mixed["last_event"], mixed_before["last_event"]);
    assert_history_agrees(pool).await;
    // Listed until the next fold, which takes them in and changes nothing.
    assert_eq!(count(pool, "SELECT count(*) FROM connect_events WHERE occurred_at < $1", horizon).await, 2);
    let after_late = customers(pool).await;

    let again = fold_older_than(pool, horizon, 100).await.expect("fold again");

    assert_eq!((again.customers, again.events), (2, 2));
    assert_eq!(count(pool, "SELECT count(*) FROM connect_events WHERE occurred_at < $1", horizon).await, 0);
    assert_eq!(customers(pool).await, after_late);
    assert_history_agrees(pool).await;
    let outcome = apply_batch(pool, [&deletion, &cancel]).await.expect("late events again");
    assert_eq!((outcome.applied, outcome.duplicates), (0, 2));
    assert_eq!(customers(pool).await, after_late);
    app.stop().await;
}

#[tokio::test]
async fn consume_folds_the_history_when_retention_is_set() {
    let app = spawn_app().await;
    let Days { horizon, at } = days();
    let mut events = session("revoked", THREE_DAYS, at[0], 1);
    events.extend(session("oauth-success", THREE_DAYS, at[2], 2));
    apply_batch(&app.pool, &events).await.expect("apply");
    let old = events.iter().filter(|e| e.occurred_at < horizon).count();
    let before = lifecycle_of(&app.pool, THREE_DAYS).await;
    let mut args = consumer_args();
    args.history_retention_days = 1;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let metrics = connectflow::metrics::Metrics::new();

    let consumer = run_consumer(args, app.kafka.clone(), app.pool.clone(), metrics.clone(), shutdown.clone());

    let folded = eventually(Duration::from_secs(30), || async {
        (metrics.history_events_folded.get() == old as u64).then_some(())
    })
    .await;
    shutdown.cancel();
    consumer.await.expect("consumer task").expect("consumer stopped cleanly");
    assert!(folded.is_some(), "folded {} of {old}", metrics.history_events_folded.get());
    // The job's horizon is a little later than this test's.
    assert_eq!(count(&app.pool, "SELECT count(*) FROM connect_events WHERE occurred_at < $1", horizon).await, 0);
    assert_eq!(lifecycle_of(&app.pool, THREE_DAYS).await, before);
    assert_history_agrees(&app.pool).await;
    app.stop().await;
}
