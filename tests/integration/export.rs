//! The right to know (issue 24): `GET /v1/customers/{customer_id}/export`
//! holds everything connectflow keeps about a customer, as the other routes
//! show it, for the token's programs only.

use std::time::Duration;

use chrono::Utc;
use connectflow::simulate::flows::{bodies, flow};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{API_TOKEN, TestApp, eventually, spawn_pipeline};
use crate::isolation::{ACME, BANK_B, seeded};
use crate::tokens::{call, issue, until_status};

fn export_path(customer: &str) -> String {
    format!("/v1/customers/{customer}/export")
}

/// The customer's stored event count, read from Postgres (not through the
/// API, so waiting leaves no access-log record).
async fn stored_events(app: &TestApp, customer: &str) -> i64 {
    sqlx::query_scalar("SELECT event_count FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_optional(&app.pool)
        .await
        .expect("customers")
        .unwrap_or(0)
}

async fn until_stored(app: &TestApp, customer: &str, events: i64) {
    let reached =
        eventually(Duration::from_secs(30), || async { (stored_events(app, customer).await == events).then_some(()) })
            .await;
    assert!(reached.is_some(), "{customer} never reached {events} events");
}

/// The access-log records naming `customer`, once there are `n` (the
/// writer batches them off the request path).
async fn logged_for(app: &TestApp, customer: &str, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(10), || async {
        let rows: Vec<Value> = sqlx::query_scalar(
            "SELECT to_jsonb(l) - 'id' FROM api_access_log l WHERE customer_id = $1 ORDER BY at, id",
        )
        .bind(customer)
        .fetch_all(&app.pool)
        .await
        .expect("access log");
        (rows.len() >= n).then_some(rows)
    })
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn the_export_holds_the_lifecycle_events_changes_revocations_and_access_log() {
    let app = spawn_pipeline().await;
    let customer = "8400000301";
    let flow_bodies =
        bodies(flow("oauth-success").expect("flow"), customer, Utc::now() - chrono::Duration::hours(1), 1);
    for body in &flow_bodies {
        let response = app.post_webhook(&serde_json::to_vec(body).expect("json")).await;
        assert_eq!(response.status(), 200, "{body}");
    }
    let events = i64::try_from(flow_bodies.len()).expect("count");
    until_stored(&app, customer, events).await;
    let revocation = app
        .client
        .post(format!("{}/v1/customers/{customer}/consent/revocations", app.base_url))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "export-test-key-1")
        .json(&json!({"revoked_by": "customer", "reason": "closing the card"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(revocation.status(), 202);
    let revocation: Value = revocation.json().await.expect("json");
    until_stored(&app, customer, events + 1).await;

    // What the other routes answer (and four access-log records).
    let (_, lifecycle) = call(&app, Method::GET, &format!("/v1/customers/{customer}/lifecycle"), API_TOKEN).await;
    let (_, listed_events) =
        call(&app, Method::GET, &format!("/v1/customers/{customer}/events?limit=500"), API_TOKEN).await;
    let (_, changes) = call(&app, Method::GET, &format!("/v1/customers/{customer}/changes?limit=500"), API_TOKEN).await;
    assert_eq!(listed_events["next_cursor"], Value::Null, "one page: {listed_events}");
    assert_eq!(changes["next_cursor"], Value::Null, "one page: {changes}");
    let logged = logged_for(&app, customer, 4).await;
    assert_eq!(logged.len(), 4, "{logged:?}");

    let started = Utc::now();
    let (status, export) = call(&app, Method::GET, &export_path(customer), API_TOKEN).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["customer_id"], customer);
    assert_eq!(export["program_id"], "default");
    let exported_at: chrono::DateTime<Utc> =
        export["exported_at"].as_str().and_then(|t| t.parse().ok()).expect("exported_at is a time");
    assert!(exported_at >= started - chrono::Duration::milliseconds(1), "{exported_at} vs {started}");

    // The lifecycle, events and changes exactly as their own routes show them.
    assert_eq!(export["lifecycle"], lifecycle);
    assert_eq!(export["lifecycle"]["consent"]["state"], "revoked", "{export}");
    assert_eq!(export["events"], listed_events["events"]);
    assert_eq!(export["events"].as_array().map(Vec::len), Some(flow_bodies.len() + 1));
    assert!(export["events"].as_array().is_some_and(|e| e.iter().all(|e| e["recorded_at"].is_string())));
    assert_eq!(export["changes"], changes["changes"]);
    let versions: Vec<i64> =
        export["changes"].as_array().expect("changes").iter().filter_map(|c| c["version"].as_i64()).collect();
    assert!(!versions.is_empty() && versions.windows(2).all(|w| w[0] < w[1]), "version order: {versions:?}");

    // The revocation request: the key and who asked, never the digest.
    let revocations = export["revocations"].as_array().expect("revocations");
    assert_eq!(revocations.len(), 1, "{export}");
    let recorded = &revocations[0];
    let mut fields: Vec<&str> = recorded.as_object().expect("object").keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["created_at", "event_id", "idempotency_key", "occurred_at", "token_id", "token_name"]);
    assert_eq!(recorded["idempotency_key"], "export-test-key-1");
    assert_eq!(recorded["event_id"], revocation["event_id"]);
    assert_eq!(recorded["token_name"], "bootstrap");
    let revocation_event = export["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["event_id"] == revocation["event_id"]))
        .expect("the revocation's event is in the history");
    assert_eq!(recorded["occurred_at"], revocation_event["occurred_at"]);

    // The access log as the audit shows it: the four requests, oldest first.
    let (_, audit) = call(&app, Method::GET, &format!("/v1/audit?customer_id={customer}"), API_TOKEN).await;
    let audited = audit["records"].as_array().expect("records");
    let access_log = export["access_log"].as_array().expect("access log");
    assert_eq!(access_log.len(), 4, "{export}");
    assert_eq!(access_log[..], audited[..4]);
    let routes: Vec<(&str, &str, i64)> = access_log
        .iter()
        .filter_map(|r| Some((r["method"].as_str()?, r["route"].as_str()?, r["status"].as_i64()?)))
        .collect();
    assert_eq!(
        routes,
        [
            ("POST", "/v1/customers/{customer_id}/consent/revocations", 202),
            ("GET", "/v1/customers/{customer_id}/lifecycle", 200),
            ("GET", "/v1/customers/{customer_id}/events", 200),
            ("GET", "/v1/customers/{customer_id}/changes", 200),
        ]
    );
    assert_eq!(
        export["truncated"],
        json!({"events": false, "changes": false, "revocations": false, "access_log": false})
    );

    // The export itself is logged, as one item (the audit names no
    // customer in its route).
    let logged = logged_for(&app, customer, 5).await;
    let record = logged
        .iter()
        .find(|r| r["route"] == "/v1/customers/{customer_id}/export")
        .unwrap_or_else(|| panic!("the export is in the access log: {logged:?}"));
    assert_eq!((&record["status"], &record["items"]), (&json!(200), &json!(1)), "{record}");
    app.stop().await;
}

#[tokio::test]
async fn another_programs_customer_is_the_404_of_an_unknown_one_and_the_scope_and_id_are_checked() {
    let app = seeded().await;
    let (acme, _) = issue(&app, "acme reader", &["acme"], "read").await;
    let (no_read, _) = issue(&app, "acme stats", &["acme"], "stats,revoke,audit").await;
    until_status(&app, &export_path(ACME[0]), &acme, 200).await;
    until_status(&app, "/v1/stats/funnel", &no_read, 200).await;

    let (status, theirs) = call(&app, Method::GET, &export_path(BANK_B[0]), &acme).await;
    let (unknown_status, unknown) = call(&app, Method::GET, &export_path("9999999999"), &acme).await;
    assert_eq!((status, unknown_status), (404, 404), "{theirs}");
    let same = serde_json::to_string(&unknown).expect("JSON").replace("9999999999", BANK_B[0]);
    assert_eq!(serde_json::to_string(&theirs).expect("JSON"), same, "no existence oracle");
    let (status, _) = call(&app, Method::GET, &export_path(BANK_B[0]), API_TOKEN).await;
    assert_eq!(status, 200, "a token of every program sees it");

    let (status, body) = call(&app, Method::GET, &export_path(ACME[0]), &no_read).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, json!({"error": {"code": "forbidden", "message": "this token lacks the 'read' scope"}}));
    let (status, body) = call(&app, Method::GET, &export_path("12x"), &acme).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_program_token_exports_the_access_records_made_within_its_programs() {
    let app = seeded().await;
    let (acme, acme_id) = issue(&app, "acme reader", &["acme"], "read").await;
    let customer = ACME[0];
    until_status(&app, &format!("/v1/customers/{customer}/lifecycle"), &acme, 200).await;
    // A read of every program (the bootstrap token) and the acme token's own.
    let (status, _) = call(&app, Method::GET, &format!("/v1/customers/{customer}/events"), API_TOKEN).await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, Method::GET, &format!("/v1/customers/{customer}/changes"), &acme).await;
    assert_eq!(status, 200);
    // The writer keeps the queue's order: once the last request's record is
    // there, so are the earlier ones.
    let logged = eventually(Duration::from_secs(10), || async {
        let logged = logged_for(&app, customer, 3).await;
        logged.iter().any(|r| r["route"] == "/v1/customers/{customer_id}/changes").then_some(logged)
    })
    .await
    .expect("the acme token's last request is logged");
    let acme_records = logged.iter().filter(|r| r["token_id"] == acme_id.as_str()).count();
    assert!(acme_records >= 2, "{logged:?}");

    let (_, export) = call(&app, Method::GET, &export_path(customer), &acme).await;
    let access_log = export["access_log"].as_array().expect("access log");
    assert_eq!(access_log.len(), acme_records, "{export}");
    assert!(access_log.iter().all(|r| r["token_id"] == acme_id.as_str() && r["programs"] == json!(["acme"])));

    let (_, everything) = call(&app, Method::GET, &export_path(customer), API_TOKEN).await;
    let all = everything["access_log"].as_array().expect("access log");
    assert!(all.len() > acme_records, "a token of every program sees every record: {everything}");
    assert!(all.iter().any(|r| r["programs"].is_null() && r["route"] == "/v1/customers/{customer_id}/events"));
    app.stop().await;
}
