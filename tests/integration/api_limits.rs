//! The query API's bounded cost: every statement under the statement
//! timeout (503 `timeout`), and the index of the `institution_id` listing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::config::HttpSettings;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::helpers::{API_TOKEN, AppOptions, TestApp, http_settings, services, spawn_app_with, unique_kafka_args};
use crate::isolation::seed_flow;

/// Long enough for anything a loaded machine does, short of a hang.
const GENEROUS: Duration = Duration::from_secs(30);

async fn spawn(http: HttpSettings) -> TestApp {
    let services = services().await;
    spawn_app_with(AppOptions {
        http,
        kafka: unique_kafka_args(&services.kafka_brokers),
        create_topics: true,
        consumer: false,
    })
    .await
}

/// GETs `path` with the bootstrap token, giving up after [`GENEROUS`].
async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    let url = format!("{}{path}", app.base_url);
    app.client.get(url).bearer_auth(API_TOKEN).timeout(GENEROUS).send().await.expect("an answer within the bound")
}

/// Holds `customers` locked against every read until dropped (rolled back).
async fn lock_customers(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.expect("locking customers");
    tx
}

#[tokio::test]
async fn a_statement_past_the_timeout_answers_503_timeout() {
    let mut http = http_settings();
    http.api_statement_timeout = Duration::from_millis(300);
    let app = spawn(http).await;
    seed_flow(&app, "default", "legacy-success", &["1005061234"]).await;
    let lookup = "/v1/customers/1005061234/lifecycle";
    assert_eq!(get(&app, lookup).await.status(), 200);

    // Every read of `customers` now waits for the lock until Postgres
    // cancels it for the statement timeout (no lock_timeout is set: the
    // code `timeout` is SQLSTATE 57014's, any other database error is
    // `unavailable` or `internal`).
    let lock = lock_customers(&app.pool).await;
    for path in [lookup, "/v1/customers?institution_id=101732", "/v1/stats/funnel"] {
        let response = get(&app, path).await;
        assert_eq!(response.status(), 503, "{path}");
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert!(retry_after.is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s >= 1)), "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "timeout", "{path}: {body}");
    }
    lock.rollback().await.expect("unlocking");
    assert_eq!(get(&app, lookup).await.status(), 200);
    app.stop().await;
}

/// The customer listing's statement, exactly as the store runs it.
const LISTING: &str = include_str!("../../src/store/customers_listing.sql");

/// The plan of the listing filtered by `institution_id` alone, as JSON.
async fn listing_plan(pool: &PgPool, institution_id: &str) -> Value {
    let none_time: Option<DateTime<Utc>> = None;
    let plan: Value = sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {LISTING}")))
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(none_time)
        .bind(none_time)
        .bind(None::<&str>)
        .bind(51_i64)
        .bind(none_time)
        .bind(Some(institution_id))
        .bind(none_time)
        .bind(none_time)
        .bind(None::<Vec<String>>)
        .bind(None::<Vec<String>>)
        .bind(None::<Vec<DateTime<Utc>>>)
        .fetch_one(pool)
        .await
        .expect("EXPLAIN of the listing");
    plan
}

/// Every node of a plan with its relation and index.
fn nodes(plan: &Value, found: &mut Vec<String>) {
    if let Some(node) = plan.as_object() {
        if let Some(kind) = node.get("Node Type").and_then(Value::as_str) {
            let on = node.get("Index Name").or_else(|| node.get("Relation Name")).and_then(Value::as_str);
            found.push(format!("{kind} {}", on.unwrap_or("")));
        }
        for child in node.values() {
            nodes(child, found);
        }
    } else if let Some(items) = plan.as_array() {
        for item in items {
            nodes(item, found);
        }
    }
}

#[tokio::test]
async fn the_institution_listing_is_served_by_its_index() {
    let app = spawn(http_settings()).await;
    // 20,000 customers over 200 institutions (and some with none), in every
    // state, so that each institution's are a small part of the table.
    sqlx::query(
        "INSERT INTO customers (customer_id, consent_state, auth_state, last_event_id, last_event_type,
                                last_occurred_at, event_count, lifecycle, updated_at, chosen_institution_id)
         SELECT n::text, 'granted', (ARRAY['in_progress', 'authenticated', 'failed'])[1 + n % 3], 'e' || n, 'done',
                now(), 1, '{}'::jsonb, now() - n * interval '1 second',
                CASE WHEN n % 10 = 0 THEN NULL ELSE 'inst-' || (n % 200) END
         FROM generate_series(1, 20000) AS n",
    )
    .execute(&app.pool)
    .await
    .expect("inserting customers");
    sqlx::query("ANALYZE customers").execute(&app.pool).await.expect("analyzing");

    let mut found = Vec::new();
    nodes(&listing_plan(&app.pool, "inst-7").await, &mut found);
    assert!(found.iter().any(|node| node.ends_with(" customers_by_institution")), "{found:?}");
    assert!(found.iter().all(|node| !node.starts_with("Seq Scan")), "{found:?}");
    app.stop().await;
}
