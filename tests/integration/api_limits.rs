//! The query API's bounded cost: every statement under the statement
//! timeout (503 `timeout`), the statistics routes held to their share of the
//! API's pool so lookups keep answering, statistics answers cached per query
//! and programs, and the index of the `institution_id` listing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::config::HttpSettings;
use reqwest::Method;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::helpers::{
    API_TOKEN, AppOptions, TestApp, eventually, http_settings, services, spawn_app_with, unique_kafka_args,
};
use crate::isolation::seed_flow;
use crate::programs::two_programs;
use crate::tokens::{call, issue, until_status};

/// Long enough for anything a loaded machine does, short of a hang.
const GENEROUS: Duration = Duration::from_secs(30);

/// The HTTP side on a fresh database; Kafka is not needed (no topics are
/// created: nothing here publishes).
async fn spawn(http: HttpSettings) -> TestApp {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    spawn_app_with(AppOptions { http, kafka, create_topics: false, consumer: false }).await
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

/// Statements of this database waiting for a lock whose text contains
/// `fragment`.
async fn waiting(pool: &PgPool, fragment: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND strpos(query, $1) > 0",
    )
    .bind(fragment)
    .fetch_one(pool)
    .await
    .expect("reading pg_stat_activity")
}

/// A statement of the statistics routes.
const STATS_STATEMENT: &str = "funnel_steps";
/// The lookup of a lifecycle (`store::read::lifecycle`).
const LOOKUP_STATEMENT: &str = "WHERE c.customer_id = $1 AND";

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

#[tokio::test]
async fn lookups_answer_while_statistics_requests_hold_their_share() {
    let mut http = http_settings();
    http.api_max_connections = 3;
    http.stats_concurrency = 2;
    // Held statistics requests are not cancelled during the test.
    http.api_statement_timeout = Duration::from_secs(120);
    let app = spawn(http).await;
    seed_flow(&app, "default", "legacy-success", &["1005061234"]).await;

    // With `customers` locked, each statistics request that gets a place
    // holds a connection of the API's pool, waiting for the lock.
    let lock = lock_customers(&app.pool).await;
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (app.client.clone(), format!("{}/v1/stats/funnel", app.base_url));
            tokio::spawn(
                async move { client.get(url).bearer_auth(API_TOKEN).send().await.map(|r| r.status().as_u16()) },
            )
        })
        .collect();
    let held = eventually(GENEROUS, || async { (waiting(&app.pool, STATS_STATEMENT).await == 2).then_some(()) }).await;
    assert!(held.is_some(), "two statistics statements hold their share");

    // A lookup still gets a connection: its statement reaches Postgres
    // (and waits for the same lock) while the statistics are held. Without
    // the share, the six statistics requests would take every connection of
    // the API's pool; the lookups have a pool of their own.
    let lookup = tokio::spawn({
        let (client, url) = (app.client.clone(), format!("{}/v1/customers/1005061234/lifecycle", app.base_url));
        async move { client.get(url).bearer_auth(API_TOKEN).send().await.map(|r| r.status().as_u16()) }
    });
    let reached =
        eventually(GENEROUS, || async { (waiting(&app.pool, LOOKUP_STATEMENT).await == 1).then_some(()) }).await;
    assert!(reached.is_some(), "the lookup's statement reaches Postgres while the statistics are held");
    assert_eq!(waiting(&app.pool, STATS_STATEMENT).await, 2, "no statistics request past its share");

    lock.rollback().await.expect("unlocking");
    assert_eq!(lookup.await.expect("the lookup").expect("an answer"), 200);
    for request in burst {
        assert_eq!(request.await.expect("a statistics request").expect("an answer"), 200);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_statistics_request_past_its_share_for_too_long_is_busy() {
    let mut http = http_settings();
    http.api_max_connections = 2;
    http.stats_concurrency = 1;
    // A place is waited for as long as a statement may run: 2 s.
    http.api_statement_timeout = Duration::from_secs(2);
    let app = spawn(http).await;
    let stats = |route: &str| {
        let (client, url) = (app.client.clone(), format!("{}/v1/stats/{route}", app.base_url));
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(API_TOKEN).send().await.expect("an answer");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON");
            (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
        })
    };
    let lock = lock_customers(&app.pool).await;
    let first = stats("funnel");
    let held = eventually(GENEROUS, || async { (waiting(&app.pool, STATS_STATEMENT).await == 1).then_some(()) }).await;
    assert!(held.is_some(), "the first statistics request holds the one place");
    // The first holds the place until its statement is cancelled (2 s
    // after it started); then one of the next two takes it for 2 s more,
    // longer than the other may wait: that one is refused.
    let (second, third) = (stats("institutions"), stats("timeseries"));
    let (second, third) = (second.await.expect("second"), third.await.expect("third"));
    lock.rollback().await.expect("unlocking");
    assert_eq!(first.await.expect("first"), (503, "timeout".to_owned()));
    let mut codes = [second, third].map(|(status, code)| format!("{status} {code}"));
    codes.sort();
    assert_eq!(codes, ["503 busy", "503 timeout"]);
    app.stop().await;
}

/// The funnel's customer count of `path` for `token`.
async fn customers_counted(app: &TestApp, path: &str, token: &str) -> i64 {
    let (status, body) = call(app, Method::GET, path, token).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["customers"].as_i64().unwrap_or_else(|| panic!("{path}: {body}"))
}

#[tokio::test]
async fn statistics_answers_are_cached_per_query_and_programs() {
    let mut http = http_settings();
    http.programs = Arc::new(two_programs());
    http.stats_cache_ttl = Duration::from_secs(3_600);
    let app = spawn(http).await;
    seed_flow(&app, "acme", "legacy-success", &["7001", "7002"]).await;
    seed_flow(&app, "bank-b", "legacy-success", &["8001", "8002", "8003"]).await;
    let (acme, _) = issue(&app, "acme", &["acme"], "stats").await;
    let (acme_too, _) = issue(&app, "acme too", &["acme"], "stats").await;
    let (both, _) = issue(&app, "both", &["acme", "bank-b"], "stats").await;
    for token in [&acme, &acme_too, &both] {
        until_status(&app, "/v1/stats/funnel?since=2000-01-01T00:00:00Z", token, 200).await;
    }

    let until = (Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:00:00").to_string();
    let window = format!("/v1/stats/funnel?since=2020-01-01T00:00:00Z&until={until}Z");
    assert_eq!(customers_counted(&app, &window, &acme).await, 2);

    // A new customer of acme: the same query within the period is answered
    // from the cache, for any token seeing exactly acme, however its times
    // are spelled.
    seed_flow(&app, "acme", "legacy-success", &["7003"]).await;
    assert_eq!(customers_counted(&app, &window, &acme).await, 2, "cached");
    assert_eq!(customers_counted(&app, &window, &acme_too).await, 2, "shared by the same programs");
    let respelled = format!("/v1/stats/funnel?since=2020-01-01T01:00:00%2B01:00&until={until}%2B00:00");
    assert_eq!(customers_counted(&app, &respelled, &acme).await, 2, "the same times, spelled otherwise");

    // Other programs, another query: computed, not acme's answer.
    assert_eq!(customers_counted(&app, &window, &both).await, 6, "never an answer computed for other programs");
    let other = format!("/v1/stats/funnel?since=2020-01-02T00:00:00Z&until={until}Z");
    assert_eq!(customers_counted(&app, &other, &acme).await, 3, "another window is another query");
    let (_, series) =
        call(&app, Method::GET, &format!("/v1/stats/timeseries?since=2020-01-01T00:00:00Z&until={until}Z"), &acme)
            .await;
    let total: i64 =
        series["buckets"].as_array().map(|b| b.iter().filter_map(|b| b["customers"].as_i64()).sum()).unwrap_or(-1);
    assert_eq!(total, 3, "another route is another query");
    app.stop().await;
}

#[tokio::test]
async fn without_the_cache_every_statistics_request_is_computed() {
    let mut http = http_settings();
    http.stats_cache_ttl = Duration::ZERO;
    let app = spawn(http).await;
    seed_flow(&app, "default", "legacy-success", &["1005061234"]).await;
    let until = (Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:00:00Z");
    let window = format!("/v1/stats/funnel?since=2020-01-01T00:00:00Z&until={until}");
    assert_eq!(customers_counted(&app, &window, API_TOKEN).await, 1);
    seed_flow(&app, "default", "legacy-success", &["1005061235"]).await;
    assert_eq!(customers_counted(&app, &window, API_TOKEN).await, 2);
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
