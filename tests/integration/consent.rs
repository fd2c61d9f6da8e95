//! Consent as a dated authorization (issue 14): each login's authorization
//! is dated by its latest `added`, lapses `CONNECTFLOW_AUTHORIZATION_DAYS`
//! later, a Connect Fix session's `added` reauthorizes, and the issuer can
//! list whom to ask to reauthorize.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use connectflow::simulate::flows::{bodies, flow};
use serde_json::Value;

use crate::helpers::{API_TOKEN, TestApp, eventually, spawn_pipeline};
use crate::kafka_util::read_all;

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) async fn send(app: &TestApp, bodies: &[Value]) {
    for body in bodies {
        let response = app.post_webhook(&serde_json::to_vec(body).expect("json")).await;
        assert_eq!(response.status(), 200, "{body}");
    }
}

/// The customer's lifecycle once it counts `event_count` events.
pub(crate) async fn lifecycle(app: &TestApp, customer: &str, event_count: usize) -> Value {
    eventually(Duration::from_secs(30), || async {
        let body: Value = app.api_get(&format!("/v1/customers/{customer}/lifecycle")).await.json().await.ok()?;
        (body["event_count"].as_u64() == Some(event_count as u64)).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("{customer} never reached {event_count} events"))
}

async fn listed(app: &TestApp, query: &str) -> (u16, Vec<String>) {
    let response = app.api_get(&format!("/v1/customers?{query}")).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    let ids = body["customers"]
        .as_array()
        .map(|customers| customers.iter().filter_map(|c| c["customer_id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    (status, ids)
}

/// The `added` body of an OAuth flow for `customer` at `start` (seed 1: the
/// same login and accounts every time).
fn added_at(customer: &str, start: DateTime<Utc>) -> Value {
    added_with_seed(customer, start, 1)
}

/// The `added` body of the flow with `seed` (the seed picks the login id).
fn added_with_seed(customer: &str, start: DateTime<Utc>, seed: u64) -> Value {
    bodies(flow("oauth-success").expect("flow"), customer, start, seed)
        .into_iter()
        .find(|body| body["eventType"] == "added")
        .expect("an added")
}

#[tokio::test]
async fn authorizations_are_dated_lapse_after_the_period_and_a_fix_session_renews_them() {
    let app = spawn_pipeline().await;
    let now = Utc::now();
    let (old, recent) = ("8400000001", "8400000002");
    let old_start = now - chrono::Duration::days(400);
    let oauth = flow("oauth-success").expect("flow");
    let old_bodies = bodies(oauth, old, old_start, 1);
    send(&app, &old_bodies).await;
    send(&app, &bodies(oauth, recent, now - chrono::Duration::hours(1), 1)).await;

    // The flow's `added` is its third event: it occurred at start + 2 s.
    let authorized = old_start + chrono::Duration::seconds(2);
    let authorized = DateTime::from_timestamp_millis(authorized.timestamp_millis()).expect("time");
    let state = lifecycle(&app, old, old_bodies.len()).await;
    let consent = &state["consent"];
    assert_eq!(consent["state"], "granted", "{state}");
    assert_eq!(consent["granted_at"], rfc3339(authorized).as_str(), "{state}");
    assert_eq!(consent["authorized_at"], rfc3339(authorized).as_str(), "{state}");
    let expires = authorized + chrono::Duration::days(365);
    assert_eq!(consent["authorization_expires_at"], rfc3339(expires).as_str(), "{state}");
    assert_eq!(consent["expired"], true, "{state}");
    let login = &state["institution_logins"][0];
    assert_eq!(login["authorized_at"], rfc3339(authorized).as_str(), "{state}");
    assert_eq!(login["authorization_expires_at"], rfc3339(expires).as_str(), "{state}");
    assert_eq!(login["expired"], true, "{state}");
    let fresh = lifecycle(&app, recent, old_bodies.len()).await;
    assert_eq!(fresh["consent"]["expired"], false, "{fresh}");
    assert_eq!(fresh["institution_logins"][0]["expired"], false, "{fresh}");

    // Whom to ask to reauthorize: lapsing before a time, lapsed ones included.
    let soon = rfc3339(now + chrono::Duration::days(30)).replace('+', "%2B");
    let (status, ids) = listed(&app, &format!("authorization_expires_before={soon}")).await;
    assert_eq!((status, ids), (200, vec![old.to_owned()]));
    let next_year = rfc3339(now + chrono::Duration::days(400));
    let (_, mut ids) = listed(&app, &format!("authorization_expires_before={next_year}&consent=granted")).await;
    ids.sort();
    assert_eq!(ids, vec![old.to_owned(), recent.to_owned()]);
    let (status, _) = listed(&app, "authorization_expires_before=soon").await;
    assert_eq!(status, 400, "not a time");

    // The lapse is announced once, by however many consumers look at once
    // (the pipeline's own job may be one of them).
    let policy = connectflow::lifecycle::AuthorizationPolicy::default();
    let (a, b) = tokio::join!(
        connectflow::store::expiry::announce_lapsed(&app.pool, policy, Utc::now()),
        connectflow::store::expiry::announce_lapsed(&app.pool, policy, Utc::now()),
    );
    assert!(a.expect("announce") + b.expect("announce") <= 1);
    let again = connectflow::store::expiry::announce_lapsed(&app.pool, policy, Utc::now()).await.expect("announce");
    assert_eq!(again, 0, "announced already");
    let lapses = |changes: &Value| -> Vec<Value> {
        changes["changes"]
            .as_array()
            .map(|c| c.iter().filter(|c| c["reason"] == "authorization_expired").cloned().collect())
            .unwrap_or_default()
    };
    let changes: Value = app.api_get(&format!("/v1/customers/{old}/changes")).await.json().await.expect("json");
    let lapsed = lapses(&changes);
    assert_eq!(lapsed.len(), 1, "exactly one expiry change: {changes}");
    assert_eq!(lapsed[0]["changed"], serde_json::json!(["consent"]));
    assert_eq!(lapsed[0]["caused_by"], serde_json::json!([]));
    assert_eq!(lapsed[0]["occurred_at"], rfc3339(expires).as_str());
    assert_eq!(lapsed[0]["after"]["consent"]["authorized_at"], rfc3339(authorized).as_str());
    let change_id = lapsed[0]["change_id"].as_str().expect("change id").to_owned();
    let on_topic = change_on_topic(&app, &change_id).await;
    assert!(on_topic, "the expiry change {change_id} is on the changes topic");
    let none_recent: Value = app.api_get(&format!("/v1/customers/{recent}/changes")).await.json().await.expect("json");
    assert!(lapses(&none_recent).is_empty(), "a current authorization does not lapse");

    // A Connect Fix session's `added`, now: a reauthorization. The first
    // grant stays; the authorization is current again; subscribers get a
    // change of consent.
    let fix_at = now - chrono::Duration::minutes(1);
    send(&app, &[added_at(old, fix_at)]).await;
    let renewed = lifecycle(&app, old, old_bodies.len() + 1).await;
    let reauthorized =
        DateTime::from_timestamp_millis((fix_at + chrono::Duration::seconds(2)).timestamp_millis()).expect("time");
    assert_eq!(renewed["consent"]["granted_at"], rfc3339(authorized).as_str(), "{renewed}");
    assert_eq!(renewed["consent"]["authorized_at"], rfc3339(reauthorized).as_str(), "{renewed}");
    assert_eq!(renewed["consent"]["expired"], false, "{renewed}");
    assert_eq!(renewed["institution_logins"][0]["expired"], false, "{renewed}");
    let (_, ids) = listed(&app, &format!("authorization_expires_before={soon}")).await;
    assert!(ids.is_empty(), "renewed: {ids:?}");
    let after_renewal =
        connectflow::store::expiry::announce_lapsed(&app.pool, policy, Utc::now()).await.expect("announce");
    assert_eq!(after_renewal, 0, "the renewed authorization has not lapsed");

    let changes: Value = app.api_get(&format!("/v1/customers/{old}/changes")).await.json().await.expect("json");
    let last = changes["changes"].as_array().and_then(|c| c.last()).cloned().expect("changes");
    assert_eq!(last["changed"], serde_json::json!(["consent"]), "{last}");
    assert_eq!(last["after"]["consent"]["authorized_at"], rfc3339(reauthorized).as_str(), "{last}");
    assert_eq!(last["before"]["consent"]["authorized_at"], rfc3339(authorized).as_str(), "{last}");
}

async fn post_revocation(app: &TestApp, customer: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/v1/customers/{customer}/consent/revocations", app.base_url))
        .bearer_auth(API_TOKEN)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn statuses(state: &Value, login_index: usize) -> Vec<String> {
    state["institution_logins"][login_index]["accounts"]
        .as_array()
        .map(|accounts| accounts.iter().filter_map(|a| a["status"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn revocations_through_the_api_are_applied_once_per_key_and_published() {
    let app = spawn_pipeline().await;
    let customer = "8400000101";
    let now = Utc::now();
    let flow_bodies = bodies(flow("oauth-success").expect("flow"), customer, now - chrono::Duration::minutes(10), 1);
    send(&app, &flow_bodies).await;
    // A second login sharing other accounts.
    let mut second = added_with_seed(customer, now - chrono::Duration::minutes(5), 2);
    for account in second["payload"]["accounts"].as_array_mut().expect("accounts") {
        let id = account["id"].as_str().expect("id").to_owned();
        account["id"] = Value::from(format!("{id}7"));
    }
    send(&app, &[second]).await;
    let mut events = flow_bodies.len() + 1;
    let state = lifecycle(&app, customer, events).await;
    assert_eq!(state["institution_logins"].as_array().map(Vec::len), Some(2), "{state}");
    let first_login = state["institution_logins"][0]["institution_login_id"].as_str().expect("login").to_owned();

    // Refused before anything is recorded.
    let one_login =
        serde_json::json!({"institution_login_id": first_login, "revoked_by": "customer", "reason": "moved bank"});
    assert_eq!(post_revocation(&app, customer, None, &one_login).await.0, 400, "no Idempotency-Key");
    let unknown_login = serde_json::json!({"institution_login_id": "999", "revoked_by": "customer"});
    assert_eq!(post_revocation(&app, customer, Some("k-0"), &unknown_login).await.0, 404);
    assert_eq!(post_revocation(&app, "8400000199", Some("k-0"), &one_login).await.0, 404, "unknown customer");
    let bad = serde_json::json!({"revoked_by": "someone"});
    assert_eq!(post_revocation(&app, customer, Some("k-0"), &bad).await.0, 400);
    let anonymous = app
        .client
        .post(format!("{}/v1/customers/{customer}/consent/revocations", app.base_url))
        .header("Idempotency-Key", "k-0")
        .json(&one_login)
        .send()
        .await
        .expect("POST");
    assert_eq!(anonymous.status(), 401);

    // One login revoked, twice with the same key: one event, the same answer.
    let (status, answer) = post_revocation(&app, customer, Some("k-1"), &one_login).await;
    assert_eq!(status, 202, "{answer}");
    let event_id = answer["event_id"].as_str().expect("event id").to_owned();
    let (status, again) = post_revocation(&app, customer, Some("k-1"), &one_login).await;
    assert_eq!((status, &again), (202, &answer));
    let other = serde_json::json!({"institution_login_id": first_login, "revoked_by": "partner"});
    let (status, conflict) = post_revocation(&app, customer, Some("k-1"), &other).await;
    assert_eq!((status, conflict["error"]["code"].as_str()), (409, Some("conflict")));

    events += 1;
    let state = lifecycle(&app, customer, events).await;
    assert_eq!(statuses(&state, 0), ["revoked", "revoked"], "{state}");
    assert_eq!(statuses(&state, 1), ["active", "active"], "{state}");
    assert_eq!(state["consent"]["state"], "granted", "the other login still shares: {state}");
    let revocation = &state["consent"]["revocation"];
    assert_eq!(revocation["revoked_by"], "customer", "{state}");
    assert_eq!(revocation["institution_login_id"], first_login.as_str(), "{state}");
    assert_eq!(revocation["reason"], "moved bank", "{state}");
    assert_eq!(revocation["event_id"], event_id.as_str(), "{state}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM connect_events WHERE event_id = $1")
        .bind(&event_id)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(recorded, 1);
    let record: Value = sqlx::query_scalar("SELECT record FROM connect_events WHERE event_id = $1")
        .bind(&event_id)
        .fetch_one(&app.pool)
        .await
        .expect("record");
    assert_eq!(
        (record["source"].as_str(), record["event_type"].as_str()),
        (Some("connectflow"), Some("connectflow.consent.revoked"))
    );

    // Every login: consent revoked.
    let all = serde_json::json!({"revoked_by": "partner"});
    let (status, answer_all) = post_revocation(&app, customer, Some("k-2"), &all).await;
    assert_eq!(status, 202, "{answer_all}");
    events += 1;
    let state = lifecycle(&app, customer, events).await;
    assert_eq!(state["consent"]["state"], "revoked", "{state}");
    assert_eq!(state["consent"]["revocation"]["revoked_by"], "partner", "{state}");
    assert_eq!(state["consent"]["authorized_at"], Value::Null, "{state}");

    // Both revocations reached the changes topic.
    let revocation_ids = [event_id, answer_all["event_id"].as_str().expect("id").to_owned()];
    let published = eventually(Duration::from_secs(30), || async {
        let caused: Vec<String> = read_all(&app.kafka.brokers, &app.kafka.changes_topic)
            .into_iter()
            .filter(|r| r.key.as_deref() == Some(customer.as_bytes()))
            .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
            .flat_map(|change| {
                change["caused_by"]
                    .as_array()
                    .map(|causes| causes.iter().filter_map(|c| c["event_id"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_else(Vec::new)
            })
            .collect();
        revocation_ids.iter().all(|id| caused.contains(id)).then_some(caused)
    })
    .await;
    assert!(published.is_some(), "both revocations are on the changes topic");
}

/// Whether the change `change_id` reaches `app`'s changes topic within 30 s.
pub(crate) async fn change_on_topic(app: &TestApp, change_id: &str) -> bool {
    eventually(Duration::from_secs(30), || async {
        read_all(&app.kafka.brokers, &app.kafka.changes_topic)
            .iter()
            .any(|r| r.header("change_id") == Some(change_id))
            .then_some(())
    })
    .await
    .is_some()
}
