//! Warnings before authorizations lapse (issue 26): one lifecycle change
//! (`reason: "authorization_expiring"`) per threshold an authorization
//! crosses, the nearest only, exactly once with several `consume` processes;
//! a reauthorization starts again, a revoked authorization gets none, and the
//! lifecycle document lists the warnings sent.
//!
//! Time is injected: the store's pass is called with a chosen `now`, as the
//! job calls it every beat with the clock's.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use connectflow::lifecycle::AuthorizationPolicy;
use connectflow::metrics::Metrics;
use connectflow::program::Programs;
use connectflow::simulate::flows::{bodies, flow};
use connectflow::store::expiry::announce_expiring;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::consent::{change_on_topic, lifecycle, send};

use crate::helpers::{
    API_TOKEN, AppOptions, TestApp, consumer_args, eventually, http_settings, services, spawn_app_with, spawn_consumer,
    spawn_pipeline, unique_kafka_args,
};

/// A period longer than the farthest case (400 days from expiry).
const PERIOD_DAYS: u32 = 730;
const THRESHOLDS: [u32; 2] = [30, 7];

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

/// The HTTP side and a consumer whose program's authorizations last
/// [`PERIOD_DAYS`]. The consumer's own expiry job warns about nothing
/// (`CONNECTFLOW_AUTHORIZATION_WARN_DAYS` empty): every warning here is
/// announced by the test's calls, at the times it chooses.
async fn spawn_with_long_period() -> (TestApp, CancellationToken) {
    let mut http = http_settings();
    let secrets = http.programs.iter().next().and_then(|program| program.partner_secrets.clone());
    let programs = Arc::new(Programs::single(AuthorizationPolicy::new(PERIOD_DAYS), secrets));
    http.programs = programs.clone();
    let kafka = unique_kafka_args(&services().await.kafka_brokers);
    let app = spawn_app_with(AppOptions { http, kafka: kafka.clone(), create_topics: true, consumer: false }).await;
    let stop = CancellationToken::new();
    let (pool, token) = (app.pool.clone(), stop.clone());
    tokio::spawn(async move {
        let mut args = consumer_args();
        args.health.authorization_warn_days = "".parse().expect("no thresholds");
        let process =
            connectflow::cli::ConsumeProcess::build(&args, &kafka, None, pool, Metrics::new(), programs).await?;
        process.run(token).await
    });
    (app, stop)
}

/// The events of the OAuth flow [`authorize`] sends.
const FLOW_EVENTS: usize = 4;

/// Sends the OAuth flow of `customer` whose `added` (its third event, 2 s
/// after the start) occurs at `authorized_at`; waits until it is applied.
/// The authorization as stored (to the millisecond).
async fn authorize(app: &TestApp, customer: &str, authorized_at: DateTime<Utc>) -> DateTime<Utc> {
    let start = authorized_at - chrono::Duration::seconds(2);
    let flow_bodies = bodies(flow("oauth-success").expect("flow"), customer, start, 1);
    assert_eq!(flow_bodies.len(), FLOW_EVENTS);
    send(app, &flow_bodies).await;
    lifecycle(app, customer, FLOW_EVENTS).await;
    DateTime::from_timestamp_millis(authorized_at.timestamp_millis()).expect("time")
}

/// The customer's `authorization_expiring` changes, in version order.
async fn warnings(app: &TestApp, customer: &str) -> Vec<Value> {
    let changes: Value =
        app.api_get(&format!("/v1/customers/{customer}/changes?limit=500")).await.json().await.expect("json");
    changes["changes"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["reason"] == "authorization_expiring").cloned().collect())
        .unwrap_or_default()
}

/// Two passes at once (two `consume` processes on one beat): how many
/// warnings they announced together.
async fn two_passes(app: &TestApp, now: DateTime<Utc>) -> usize {
    let policy = AuthorizationPolicy::new(PERIOD_DAYS);
    let (a, b) = tokio::join!(
        announce_expiring(&app.pool, policy, &THRESHOLDS, now),
        announce_expiring(&app.pool, policy, &THRESHOLDS, now),
    );
    a.expect("announce") + b.expect("announce")
}

#[tokio::test]
async fn expiry_warnings_announce_the_nearest_threshold_once_per_authorization() {
    let (app, stop) = spawn_with_long_period().await;
    let period = days(i64::from(PERIOD_DAYS));
    // An hour to spare, so the whole days left stay 6, 8 and 400 however
    // long the test takes.
    let start = Utc::now() + chrono::Duration::hours(1);
    let (six, eight, far) = ("8500000001", "8500000002", "8500000003");
    let six_at = authorize(&app, six, start + days(6) - period).await;
    let eight_at = authorize(&app, eight, start + days(8) - period).await;
    authorize(&app, far, start + days(400) - period).await;

    // 6 days from expiry: the 7-day warning only; 8 days: the 30-day one;
    // 400: none. Once, though two processes look at the same time.
    let now = Utc::now();
    assert_eq!(two_passes(&app, now).await, 2);
    let six_warnings = warnings(&app, six).await;
    assert_eq!(six_warnings.len(), 1, "{six_warnings:?}");
    let warning = &six_warnings[0];
    assert_eq!(warning["days_left"], 6, "{warning}");
    let expires = six_at + period;
    assert_eq!(warning["expires_at"], rfc3339(expires).as_str(), "{warning}");
    assert_eq!(warning["occurred_at"], rfc3339(expires - days(7)).as_str(), "crossing 7 days: {warning}");
    assert_eq!(warning["recorded_at"], rfc3339(now).as_str(), "{warning}");
    assert_eq!(warning["changed"], json!(["consent"]), "{warning}");
    assert_eq!(warning["caused_by"], json!([]), "{warning}");
    assert_eq!(warning["recomputed"], false, "{warning}");
    assert_eq!(warning["before"], warning["after"], "{warning}");
    assert_eq!(warning["after"]["consent"]["authorized_at"], rfc3339(six_at).as_str(), "{warning}");
    let eight_warnings = warnings(&app, eight).await;
    assert_eq!(eight_warnings.len(), 1, "{eight_warnings:?}");
    assert_eq!(eight_warnings[0]["days_left"], 8, "{eight_warnings:?}");
    assert_eq!(eight_warnings[0]["occurred_at"], rfc3339(eight_at + period - days(30)).as_str());
    assert!(warnings(&app, far).await.is_empty(), "400 days from expiry");

    // Again: nothing new.
    assert_eq!(two_passes(&app, Utc::now()).await, 0);
    assert_eq!(two_passes(&app, Utc::now() + days(1)).await, 0, "no new threshold crossed in a day");
    assert_eq!((warnings(&app, six).await.len(), warnings(&app, eight).await.len()), (1, 1));

    // Two days later the 8-day one crossed 7 days: its 7-day warning, once.
    let later = Utc::now() + days(2);
    assert_eq!(two_passes(&app, later).await, 1);
    let eight_warnings = warnings(&app, eight).await;
    assert_eq!(eight_warnings.len(), 2, "{eight_warnings:?}");
    assert_eq!(eight_warnings[1]["days_left"], 6, "{eight_warnings:?}");
    assert_eq!(eight_warnings[1]["occurred_at"], rfc3339(eight_at + period - days(7)).as_str());
    assert_eq!(warnings(&app, six).await.len(), 1, "warned at 7 already");
    assert!(warnings(&app, far).await.is_empty());

    // Published like every change.
    let change_id = warning["change_id"].as_str().expect("change id").to_owned();
    let on_topic = change_on_topic(&app, &change_id).await;
    assert!(on_topic, "the warning {change_id} is on the changes topic");
    stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn expiry_warnings_start_again_after_a_reauthorization_and_skip_a_revoked_authorization() {
    let (app, stop) = spawn_with_long_period().await;
    let period = days(i64::from(PERIOD_DAYS));
    let start = Utc::now() + chrono::Duration::hours(1);
    let (renewed, revoked) = ("8500000011", "8500000012");
    authorize(&app, renewed, start + days(6) - period).await;
    authorize(&app, revoked, start + days(6) - period).await;
    let response = app
        .client
        .post(format!("{}/v1/customers/{revoked}/consent/revocations", app.base_url))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "warn-revoked-1")
        .json(&json!({"revoked_by": "customer"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    let state = lifecycle(&app, revoked, FLOW_EVENTS + 1).await;
    assert_eq!(state["consent"]["authorized_at"], Value::Null, "{state}");

    assert_eq!(two_passes(&app, Utc::now()).await, 1, "the revoked authorization gets none");
    assert!(warnings(&app, revoked).await.is_empty());
    assert_eq!(warnings(&app, renewed).await.len(), 1);

    // A Connect Fix session's `added`: a new authorization, a new cycle. The
    // old one's warnings are no longer shown.
    let fix_at = Utc::now() - chrono::Duration::minutes(1);
    let added = bodies(flow("oauth-success").expect("flow"), renewed, fix_at, 1)
        .into_iter()
        .find(|body| body["eventType"] == "added")
        .expect("an added");
    send(&app, &[added]).await;
    let state = lifecycle(&app, renewed, FLOW_EVENTS + 1).await;
    let reauthorized =
        DateTime::from_timestamp_millis((fix_at + chrono::Duration::seconds(2)).timestamp_millis()).expect("time");
    assert_eq!(state["consent"]["authorized_at"], rfc3339(reauthorized).as_str(), "{state}");
    assert_eq!(state["consent"]["expiry_warnings"], json!([]), "{state}");
    assert_eq!(two_passes(&app, Utc::now()).await, 0, "two years left");

    // Five days before the new authorization lapses: its 7-day warning.
    let before_lapse = reauthorized + period - days(5);
    assert_eq!(two_passes(&app, before_lapse).await, 1);
    let renewed_warnings = warnings(&app, renewed).await;
    assert_eq!(renewed_warnings.len(), 2, "{renewed_warnings:?}");
    assert_eq!(renewed_warnings[1]["days_left"], 5, "{renewed_warnings:?}");
    assert_eq!(renewed_warnings[1]["expires_at"], rfc3339(reauthorized + period).as_str());
    assert!(warnings(&app, revoked).await.is_empty());
    let state: Value = app.api_get(&format!("/v1/customers/{renewed}/lifecycle")).await.json().await.expect("json");
    assert_eq!(
        state["consent"]["expiry_warnings"],
        json!([{"days": 7, "days_left": 5, "sent_at": rfc3339(before_lapse)}]),
        "the new authorization's warning alone: {state}"
    );
    stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn expiry_warnings_are_announced_by_the_consume_job_and_listed_in_the_lifecycle() {
    let app = spawn_pipeline().await;
    let customer = "8500000021";
    // A year's period: 5 days and an hour left.
    let authorized_at = Utc::now() + days(5) + chrono::Duration::hours(1) - days(365);
    let authorized_at = authorize(&app, customer, authorized_at).await;

    // Another `consume` process: its job looks at start, with the default
    // thresholds (30 and 7 days).
    let (token, consumer) = spawn_consumer(&app, "cf-test-warnings-second");
    let state = eventually(Duration::from_secs(30), || async {
        let state: Value = app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await.json().await.ok()?;
        (state["consent"]["expiry_warnings"].as_array().is_some_and(|w| !w.is_empty())).then_some(state)
    })
    .await
    .expect("a warning listed");
    let listed = &state["consent"]["expiry_warnings"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{state}");
    assert_eq!(listed[0]["days"], 7, "{state}");
    assert_eq!(listed[0]["days_left"], 5, "{state}");
    let recorded = warnings(&app, customer).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(listed[0]["sent_at"], recorded[0]["recorded_at"], "{state}");
    assert_eq!(recorded[0]["expires_at"], rfc3339(authorized_at + days(365)).as_str());
    assert_eq!(state["version"], recorded[0]["version"], "{state}");
    // The listing shows the same consent.
    let page: Value = app.api_get("/v1/customers?consent=granted").await.json().await.expect("json");
    assert_eq!(page["customers"][0]["consent"]["expiry_warnings"], *listed, "{page}");
    token.cancel();
    consumer.await.expect("consumer task").expect("consumer stopped cleanly");
    app.stop().await;
}
