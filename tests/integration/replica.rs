//! `CONNECTFLOW_DATABASE_READ_URL`: the query API and the statistics read
//! from a replica, so they answer while the primary is away; writes stay on
//! the primary.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{API_TOKEN, database_args, fresh_database, http_settings, services, spawn_app};
use crate::pg_proxy::PgProxy;
use crate::query::flow_events;

#[tokio::test]
async fn with_a_read_url_lookups_and_statistics_answer_from_the_replica_while_the_primary_is_stopped() {
    // Arrange: the primary behind a proxy that can stop it, and a replica:
    // another database holding the same rows (a standby's stand-in) plus a
    // customer only it has, which shows where the reads go.
    let app = spawn_app().await;
    let services = services().await;
    let proxy = PgProxy::start(&services.database_url).await;
    let primary = connectflow::store::pool(&database_args(&proxy.url_for(&app.database_url))).expect("primary pool");
    let replica_url = fresh_database().await;
    let replica = connectflow::store::pool(&database_args(&replica_url)).expect("replica pool");
    connectflow::store::migrate(&replica).await.expect("migrating the replica");
    let shared = flow_events("legacy-success", "8600000001", 1);
    connectflow::store::apply::apply_batch(&app.pool, &shared).await.expect("seeding the primary");
    connectflow::store::apply::apply_batch(&replica, &shared).await.expect("seeding the replica");
    let replica_only = flow_events("mfa-success", "8600000002", 2);
    connectflow::store::apply::apply_batch(&replica, &replica_only).await.expect("seeding the replica");

    let mut settings = http_settings();
    settings.database_read_url = Some(replica_url.clone().into());
    let metrics = connectflow::metrics::Metrics::new();
    let server = connectflow::app::HttpServer::bind(settings, &app.kafka, primary, metrics, None).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let token = CancellationToken::new();
    let handle = tokio::spawn(server.run(token.clone()));
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).bearer_auth(API_TOKEN).send();

    // The reads go to the replica.
    let only = get("/v1/customers/8600000002/lifecycle").await.expect("request");
    assert_eq!(only.status(), 200, "a customer only the replica has is found");
    let ready = get("/readyz").await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["replica"]["status"], "ok", "{body}");
    assert_eq!(body["replica"]["lag_seconds"], 0.0, "not a standby: no lag: {body}");
    let metrics_text = get("/metrics").await.expect("metrics").text().await.expect("text");
    assert!(metrics_text.contains("connectflow_database_replica_lag_seconds"), "the lag gauge is exported");

    // Act: the primary stops.
    proxy.set_up(false);

    // Assert: lookups, listings, histories and statistics still answer...
    for path in [
        "/v1/customers/8600000001/lifecycle",
        "/v1/customers/8600000001/events",
        "/v1/customers/8600000001/changes",
        "/v1/customers",
        "/v1/stats/funnel",
        "/v1/stats/timeseries?bucket=hour",
        "/v1/stats/institutions",
    ] {
        let response = get(path).await.expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{path} answers from the replica: {body}");
    }
    let state: Value = get("/v1/customers/8600000001/lifecycle").await.expect("request").json().await.expect("json");
    assert_eq!(state["event_count"], shared.len(), "{state}");

    // ...while a write, which needs the primary, says retry.
    let revocation = client
        .post(format!("http://{addr}/v1/customers/8600000001/consent/revocations"))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "replica-test")
        .json(&serde_json::json!({"revoked_by": "customer"}))
        .send()
        .await
        .expect("revocation");
    assert_eq!(revocation.status(), 503, "a revocation is decided on the primary");

    token.cancel();
    handle.await.expect("join").expect("clean stop");
}
