//! The query API on real Postgres, state seeded through the repository layer.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use connectflow::event::ConnectEvent;
use connectflow::receive::normalise::{Webhook, normalise};
use connectflow::simulate::flows::{bodies, flow};
use serde_json::{Value, json};

use crate::helpers::{API_TOKEN, OTHER_API_TOKEN, TestApp, spawn_app};

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_000_000_000).expect("valid time")
}

/// The normalised events of a flow, as the receiver would publish them.
pub(crate) fn flow_events(name: &str, customer_id: &str, seed: u64) -> Vec<ConnectEvent> {
    bodies(flow(name).expect("flow"), customer_id, start(), seed)
        .iter()
        .map(|body| {
            let raw = serde_json::to_vec(body).expect("serialises");
            match normalise(&raw, Utc::now(), &Default::default()).expect("normalises") {
                Webhook::Event(event) => *event,
                Webhook::Ping => panic!("no pings in flows"),
            }
        })
        .collect()
}

async fn seed(app: &TestApp, events: &[ConnectEvent]) {
    connectflow::store::apply::apply_batch(&app.pool, events).await.expect("seeding");
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.api_get(path).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn lifecycle_answers_with_the_contract_shape() {
    let app = spawn_app().await;
    seed(&app, &flow_events("legacy-success", "1005061234", 1)).await;
    let (status, body) = get_json(&app, "/v1/customers/1005061234/lifecycle").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["customer_id"], "1005061234");
    assert_eq!(body["consent"]["state"], "granted");
    assert!(body["consent"]["since"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(body["authentication"]["state"], "authenticated");
    assert_eq!(body["authentication"]["reason"], Value::Null);
    assert_eq!(body["authentication"]["error_code"], Value::Null);
    assert_eq!(body["event_count"], 5);
    assert_eq!(body["last_event"]["event_type"], "done");
    assert!(body["updated_at"].is_string());
    let login = &body["institution_logins"][0];
    assert_eq!(login["institution_id"], "101732");
    assert_eq!(login["oauth"], false);
    let account = &login["accounts"][0];
    for field in ["account_id", "type", "status", "last4", "name"] {
        assert!(account.get(field).is_some(), "{field} missing: {account}");
    }
    assert_eq!(account["status"], "active");
    let text = body.to_string();
    assert!(!text.contains("balance") && !text.contains("pending_adding"), "{text}");
}

/// How often the lookup's statement was planned generically and for its
/// parameters, on every connection of `pool` (all idle: each is acquired
/// once and held until all are read).
async fn lookup_plans(pool: &sqlx::PgPool) -> (i64, i64) {
    let mut held = Vec::new();
    let (mut generic, mut custom) = (0, 0);
    for _ in 0..pool.size() {
        let mut connection = pool.acquire().await.expect("a connection");
        let (g, c): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(generic_plans), 0)::int8, coalesce(sum(custom_plans), 0)::int8 \
             FROM pg_prepared_statements WHERE statement LIKE '%FROM customers c%WHERE c.customer_id = $1%'",
        )
        .fetch_one(&mut *connection)
        .await
        .expect("reading the session's prepared statements");
        generic += g;
        custom += c;
        held.push(connection);
    }
    (generic, custom)
}

#[tokio::test]
async fn lookups_keep_their_plan_where_other_api_statements_are_planned_each_time() {
    const LOOKUPS: i64 = 30;
    let app = spawn_app().await;
    seed(&app, &flow_events("legacy-success", "1005061240", 1)).await;
    // One after another: they run on one or a few of the lookup pool's
    // connections.
    for _ in 0..LOOKUPS {
        let (status, body) = get_json(&app, "/v1/customers/1005061240/lifecycle").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["event_count"], 5);
    }
    // Each connection plans the lookup for its parameters five times, then
    // keeps the generic plan; planned each time, every lookup would count
    // a custom plan.
    let connections = i64::from(app.api.lookup_pool.size());
    let (generic, custom) = lookup_plans(&app.api.lookup_pool).await;
    assert!(
        custom <= 5 * connections && custom < LOOKUPS,
        "{LOOKUPS} lookups on {connections} connections: generic plans {generic}, custom plans {custom}"
    );
    // The API's other connections plan every statement for its parameters.
    let setting: String =
        sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&app.api.read_pool).await.expect("reading the setting");
    assert_eq!(setting, "force_custom_plan");
    let setting: String =
        sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&app.api.lookup_pool).await.expect("reading the setting");
    assert_eq!(setting, "auto");
}

#[tokio::test]
async fn status_codes_of_the_lifecycle_route() {
    let app = spawn_app().await;
    let url = format!("{}/v1/customers/1005061234/lifecycle", app.base_url);
    let missing = app.client.get(&url).send().await.expect("request");
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = app.client.get(&url).bearer_auth("not-a-token").send().await.expect("request");
    assert_eq!(wrong.status(), 401);
    let (status, body) = get_json(&app, "/v1/customers/12ab/lifecycle").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")));
    let (status, _) = get_json(&app, "/v1/customers/12345678901234567890123/lifecycle").await;
    assert_eq!(status, 400);
    let (status, body) = get_json(&app, "/v1/customers/1005061234/lifecycle").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn both_tokens_of_a_rotation_are_accepted() {
    let app = spawn_app().await;
    seed(&app, &flow_events("abandoned", "1005061234", 1)).await;
    for token in [API_TOKEN, OTHER_API_TOKEN] {
        let response = app
            .client
            .get(format!("{}/v1/customers/1005061234/lifecycle", app.base_url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn events_are_paginated_in_fold_order_with_unknown_types() {
    let app = spawn_app().await;
    let mut events = flow_events("mfa-success", "1005061234", 1);
    let mut unknown = events[0].clone();
    unknown.event_id = format!("{}-ffffffffffffffffffffffff", start().timestamp_millis() + 500);
    unknown.event_type = "somethingNew".into();
    unknown.occurred_at = start() + chrono::Duration::milliseconds(500);
    events.push(unknown);
    seed(&app, &events).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/customers/1005061234/events?limit=3&cursor={c}"),
            None => "/v1/customers/1005061234/events?limit=3".to_owned(),
        };
        let (status, page) = get_json(&app, &path).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().expect("events").clone();
        assert!(events.len() <= 3);
        for event in &events {
            assert!(event["recorded_at"].is_string());
            assert_eq!(event["schema"], "connectflow.connect_event.v1");
        }
        seen.extend(events);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    let keys: Vec<(String, String)> = seen
        .iter()
        .map(|e| (e["occurred_at"].as_str().unwrap_or("").to_owned(), e["event_id"].as_str().unwrap_or("").to_owned()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "fold order");
    assert_eq!(seen[1]["event_type"], "somethingNew");

    for bad in ["limit=0", "limit=501", "limit=x", "cursor=zz", "cursor=31"] {
        let (status, body) = get_json(&app, &format!("/v1/customers/1005061234/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = get_json(&app, "/v1/customers/999/events").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn customers_are_filtered_by_state_and_time() {
    let app = spawn_app().await;
    seed(&app, &flow_events("legacy-success", "1", 1)).await;
    seed(&app, &flow_events("invalid-credentials", "2", 1)).await;
    seed(&app, &flow_events("revoked", "3", 1)).await;
    let ids = |page: &Value| -> Vec<String> {
        page["customers"]
            .as_array()
            .expect("customers")
            .iter()
            .map(|c| c["customer_id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let (_, page) = get_json(&app, "/v1/customers?consent=granted").await;
    assert_eq!(ids(&page), ["1"]);
    let (_, page) = get_json(&app, "/v1/customers?authentication=failed").await;
    assert_eq!(ids(&page), ["2"]);
    let (_, page) = get_json(&app, "/v1/customers?consent=revoked&authentication=authenticated").await;
    assert_eq!(ids(&page), ["3"]);
    let summary = &page["customers"][0];
    for field in ["customer_id", "consent", "authentication", "last_event", "updated_at"] {
        assert!(summary.get(field).is_some(), "{field} missing");
    }
    let (_, page) = get_json(&app, "/v1/customers").await;
    assert_eq!(ids(&page).len(), 3);
    let (_, page) = get_json(&app, "/v1/customers?updated_since=2999-01-01T00:00:00Z").await;
    assert!(ids(&page).is_empty());
    let (_, page) = get_json(&app, "/v1/customers?updated_since=2000-01-01T00:00:00Z").await;
    assert_eq!(ids(&page).len(), 3);
    for bad in ["consent=maybe", "authentication=granted", "updated_since=yesterday", "limit=0", "cursor=%%"] {
        let (status, body) = get_json(&app, &format!("/v1/customers?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    // Well-formed cursors the server never produced: a time Postgres cannot
    // hold, a NUL in the id. 400, never a 500.
    for tampered in ["1:-300000000000000000:1005061234", "1:1764000000000000:10\u{0}05"] {
        for path in ["/v1/customers", "/v1/customers/1005061234/events"] {
            let (status, body) = get_json(&app, &format!("{path}?cursor={}", hex::encode(tampered))).await;
            assert_eq!(status, 400, "{path} {tampered:?}: {body}");
        }
    }
}

#[tokio::test]
async fn pagination_is_stable_while_rows_are_updated() {
    let app = spawn_app().await;
    let customers: Vec<String> = (0..40).map(|i| format!("70{i:03}")).collect();
    for customer in &customers {
        seed(&app, &flow_events("abandoned", customer, 1)).await;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut updated = Vec::new();
    let mut cursor: Option<String> = None;
    let mut page_number = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/customers?limit=7&cursor={c}"),
            None => "/v1/customers?limit=7".to_owned(),
        };
        let (status, page) = get_json(&app, &path).await;
        assert_eq!(status, 200);
        for customer in page["customers"].as_array().expect("customers") {
            *seen.entry(customer["customer_id"].as_str().unwrap_or("").to_owned()).or_default() += 1;
        }
        // Between pages, update a customer already seen and one not yet seen.
        let target_a = customers[page_number].clone();
        let target_b = customers[39 - page_number].clone();
        for target in [target_a, target_b] {
            seed(&app, &flow_events("legacy-success", &target, 9)).await;
            updated.push(target);
        }
        page_number += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    for customer in customers.iter().filter(|c| !updated.contains(c)) {
        assert_eq!(seen.get(customer), Some(&1), "{customer} skipped or repeated");
    }
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app().await;
    let response = app.get("/v1/openapi.json").await;
    assert_eq!(response.status(), 200, "no token needed");
    let doc: Value = response.json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let served = [
        ("post", "/webhooks/finicity/connect"),
        ("get", "/v1/customers/{customer_id}/lifecycle"),
        ("get", "/v1/customers/{customer_id}/events"),
        ("get", "/v1/customers/{customer_id}/export"),
        ("get", "/v1/customers"),
        ("get", "/v1/stats/funnel"),
        ("get", "/v1/stats/timeseries"),
        ("get", "/v1/stats/institutions"),
        ("get", "/v1/openapi.json"),
        ("get", "/livez"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ];
    for (method, path) in served {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from the document");
    }
    // And every documented path is really served (not the 404 fallback).
    for (path, operations) in paths {
        let concrete = path.replace("{customer_id}", "1005061234");
        for method in operations.as_object().expect("operations").keys() {
            let request = match method.as_str() {
                "get" => app.client.get(format!("{}{concrete}", app.base_url)),
                "post" => app.client.post(format!("{}{concrete}", app.base_url)),
                other => panic!("unexpected method {other}"),
            };
            let response = request.bearer_auth(API_TOKEN).send().await.expect("request");
            let body: Value = response.json().await.unwrap_or(json!({}));
            assert_ne!(body["error"]["message"], "no such route", "{method} {path} is documented but not served");
        }
    }
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for schema in [
        "ErrorBody",
        "CustomerLifecycle",
        "CustomerPage",
        "EventPage",
        "CustomerExport",
        "Funnel",
        "Timeseries",
        "Institutions",
    ] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn the_openapi_document_states_the_constraints_the_server_enforces() {
    let app = spawn_app().await;
    let doc: Value = app.get("/v1/openapi.json").await.json().await.expect("json");
    let parameter = |path: &str, name: &str| -> Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
    };
    for path in [
        "/v1/customers/{customer_id}/lifecycle",
        "/v1/customers/{customer_id}/events",
        "/v1/customers/{customer_id}/changes",
        "/v1/customers/{customer_id}/export",
    ] {
        let id = parameter(path, "customer_id");
        assert_eq!(id["required"], true);
        assert_eq!(
            id["schema"]["pattern"],
            connectflow::event::CustomerId::PATTERN,
            "{path}: the id type's own pattern"
        );
        assert_eq!(id["schema"]["maxLength"], connectflow::event::CustomerId::MAX_LEN);
    }
    for path in [
        "/v1/customers",
        "/v1/customers/{customer_id}/events",
        "/v1/customers/{customer_id}/changes",
        "/v1/stats/institutions",
    ] {
        let limit = parameter(path, "limit");
        assert!(limit["schema"]["type"].to_string().contains("integer"), "{path}: {limit}");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], connectflow::api::params::MAX_LIMIT);
    }
    // The state filters name exactly the states the server accepts.
    let schemas = &doc["components"]["schemas"];
    for (path, name, schema) in [
        ("/v1/customers", "consent", "ConsentState"),
        ("/v1/customers", "authentication", "AuthState"),
        ("/v1/stats/timeseries", "bucket", "Bucket"),
    ] {
        let filter = parameter(path, name).to_string();
        assert!(filter.contains(&format!("#/components/schemas/{schema}")), "{name}: {filter}");
        assert!(schemas[schema]["enum"].as_array().is_some_and(|e| !e.is_empty()), "{schema}");
    }
    for state in ["none", "granted", "revoked"] {
        let (status, _) = get_json(&app, &format!("/v1/customers?consent={state}")).await;
        assert_eq!(status, 200, "{state} is documented and accepted");
        assert!(schemas["ConsentState"]["enum"].as_array().is_some_and(|e| e.contains(&Value::from(state))));
    }
}

#[tokio::test]
async fn api_answers_are_never_stored_by_a_cache() {
    let app = spawn_app().await;
    seed(&app, &flow_events("legacy-success", "9100000001", 1)).await;
    let cache_control = |response: &reqwest::Response| {
        response.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let found = app.api_get("/v1/customers/9100000001/lifecycle").await;
    assert_eq!((found.status().as_u16(), cache_control(&found).as_deref()), (200, Some("no-store")));
    let missing = app.api_get("/v1/customers/9100000002/lifecycle").await;
    assert_eq!((missing.status().as_u16(), cache_control(&missing).as_deref()), (404, Some("no-store")));
    let anonymous = app.get("/v1/customers/9100000001/lifecycle").await;
    assert_eq!((anonymous.status().as_u16(), cache_control(&anonymous).as_deref()), (401, Some("no-store")));
    app.stop().await;
}
