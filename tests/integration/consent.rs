//! Consent as a dated authorization (issue 14): each login's authorization
//! is dated by its latest `added`, lapses `CONNECTFLOW_AUTHORIZATION_DAYS`
//! later, a Connect Fix session's `added` reauthorizes, and the issuer can
//! list whom to ask to reauthorize.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use connectflow::simulate::flows::{bodies, flow};
use serde_json::Value;

use crate::helpers::{TestApp, eventually, spawn_pipeline};

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn send(app: &TestApp, bodies: &[Value]) {
    for body in bodies {
        let response = app.post_webhook(&serde_json::to_vec(body).expect("json")).await;
        assert_eq!(response.status(), 200, "{body}");
    }
}

async fn lifecycle(app: &TestApp, customer: &str, event_count: usize) -> Value {
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
    bodies(flow("oauth-success").expect("flow"), customer, start, 1)
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

    let changes: Value = app.api_get(&format!("/v1/customers/{old}/changes")).await.json().await.expect("json");
    let last = changes["changes"].as_array().and_then(|c| c.last()).cloned().expect("changes");
    assert_eq!(last["changed"], serde_json::json!(["consent"]), "{last}");
    assert_eq!(last["after"]["consent"]["authorized_at"], rfc3339(reauthorized).as_str(), "{last}");
    assert_eq!(last["before"]["consent"]["authorized_at"], rfc3339(authorized).as_str(), "{last}");
}
