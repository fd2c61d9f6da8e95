//! Health, readiness, metrics and migrations on real services.

use serde_json::Value;

use crate::helpers::{
    AppOptions, database_args, fresh_database, http_settings, services, spawn_app, spawn_app_with, unique_kafka_args,
};

#[tokio::test]
async fn livez_answers_while_serving() {
    let app = spawn_app().await;
    let response = app.get("/livez").await;
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_200_when_postgres_and_kafka_answer() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    for line in ["connectflow_ready 1", "connectflow_producer_fatal 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_503_naming_kafka_when_the_broker_is_unreachable() {
    let mut kafka = unique_kafka_args("127.0.0.1:1");
    kafka.brokers = "127.0.0.1:1".into();
    let app = spawn_app_with(AppOptions { http: http_settings(), kafka, create_topics: false, consumer: false }).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(body["failing"], serde_json::json!(["kafka"]), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("kafka")), "{body}");
    // The scrape says so too, without anyone probing `/readyz` (an alert's
    // `connectflow_ready == 0`).
    let scraped = app.get("/metrics").await.text().await.expect("metrics");
    assert!(scraped.lines().any(|l| l == "connectflow_ready 0"), "{scraped}");
}

#[tokio::test]
async fn readyz_is_503_naming_kafka_when_the_events_topic_is_missing() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    let app = spawn_app_with(AppOptions { http: http_settings(), kafka, create_topics: false, consumer: false }).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["failing"], serde_json::json!(["kafka"]), "{body}");
}

#[tokio::test]
async fn without_postgres_a_receiver_stays_ready_and_takes_webhooks_while_the_api_answers_503() {
    let app = spawn_app().await;
    // A second server on a closed Postgres port, same healthy Kafka.
    let pool =
        connectflow::store::pool(&database_args("postgres://connectflow:x@127.0.0.1:1/none")).expect("lazy pool");
    let server = connectflow::app::HttpServer::bind(
        http_settings(),
        &app.kafka,
        pool,
        connectflow::metrics::Metrics::new(),
        None,
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("addr");
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(server.run(token.clone()));
    let client = reqwest::Client::new();

    let ready = client.get(format!("http://{addr}/readyz")).send().await.expect("request");
    assert_eq!(ready.status(), 200, "receiving needs only Kafka");
    let body = br#"{"customerId":"1005061299","eventType":"started","eventId":"1764000000000-0a0b0c0d0e0f101112131415","payload":{}}"#;
    let accepted = client
        .post(format!("http://{addr}/webhooks/finicity/connect"))
        .header("content-type", "application/json")
        .header("x-finicity-signature", connectflow::receive::signature::sign(crate::helpers::PARTNER_SECRET, body))
        .body(body.to_vec())
        .send()
        .await
        .expect("webhook");
    assert_eq!(accepted.status(), 200, "webhooks are still accepted");

    for path in [
        "/v1/customers/1005061299/lifecycle",
        "/v1/stats/funnel",
        "/v1/stats/timeseries?bucket=hour",
        "/v1/stats/institutions",
    ] {
        let api = client
            .get(format!("http://{addr}{path}"))
            .bearer_auth(crate::helpers::API_TOKEN)
            .send()
            .await
            .expect("api request");
        assert_eq!(api.status(), 503, "{path}: the API says retry, not 500");
        assert!(api.headers().contains_key("retry-after"), "{path}");
        let body: Value = api.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unavailable", "{path}: {body}");
    }
    token.cancel();
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_twice() {
    let url = fresh_database().await;
    let pool = connectflow::store::pool(&database_args(&url)).expect("pool");
    connectflow::store::migrate(&pool).await.expect("first run");
    connectflow::store::migrate(&pool).await.expect("second run is a no-op");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    for table in ["accounts", "connect_events", "customers", "institution_logins"] {
        assert!(tables.iter().any(|t| t == table), "{table} missing: {tables:?}");
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.expect("count");
    assert_eq!(applied, connectflow::store::MIGRATOR.iter().count() as i64);
}

#[tokio::test]
async fn topic_creation_is_idempotent() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    let migration = crate::helpers::migration_args();
    connectflow::kafka::ensure_topics(&kafka, &migration, &crate::helpers::default_programs())
        .await
        .expect("first run creates");
    connectflow::kafka::ensure_topics(&kafka, &migration, &crate::helpers::default_programs())
        .await
        .expect("second run keeps");
}

#[tokio::test]
async fn metrics_are_exposed() {
    let app = spawn_app().await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert!(text.contains("connectflow_webhook_signature_failures"), "{text}");
    assert!(text.contains("connectflow_webhooks_in_flight"), "{text}");
}

#[tokio::test]
async fn unknown_routes_answer_the_json_error_shape() {
    let app = spawn_app().await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    let response = app.get("/webhooks/finicity/connect").await;
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn the_consumer_serves_its_operations_endpoints_when_given_a_listener() {
    // The real binary, as a Deployment runs it: `consume` with CONNECTFLOW_LISTEN.
    let app = spawn_app().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr");
    let database_name: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(&app.pool).await.expect("name");
    let services = services().await;
    let (base, _) = services.database_url.rsplit_once('/').expect("URL with a database");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .arg("consume")
        .env("CONNECTFLOW_LISTEN", addr.to_string())
        .env("DATABASE_URL", format!("{base}/{database_name}"))
        .env("KAFKA_BROKERS", &app.kafka.brokers)
        .env("CONNECTFLOW_EVENTS_TOPIC", &app.kafka.events_topic)
        .env("CONNECTFLOW_DLQ_TOPIC", &app.kafka.dlq_topic)
        .env("CONNECTFLOW_CONSUMER_GROUP", format!("cf-test-{}", uuid::Uuid::new_v4().simple()))
        .env("CONNECTFLOW_NO_MIGRATE", "true")
        .env_remove("FINICITY_PARTNER_SECRETS")
        .env_remove("CONNECTFLOW_API_TOKENS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting connectflow consume");
    let client = reqwest::Client::new();
    let ready = crate::helpers::eventually(std::time::Duration::from_secs(30), || async {
        let response = client.get(format!("http://{addr}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let metrics = client.get(format!("http://{addr}/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    let livez = client.get(format!("http://{addr}/livez")).send().await.expect("livez").status();
    let webhook = client.post(format!("http://{addr}/webhooks/finicity/connect")).send().await.expect("post").status();
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("exit");
    assert_eq!(ready, Some(()), "/readyz answers 200 with Postgres and Kafka up");
    assert_eq!(livez, 200);
    assert!(text.contains("connectflow_events_applied_total"), "{text}");
    assert!(text.contains("connectflow_consumer_batch_seconds"), "{text}");
    assert_eq!(webhook, 404, "the consumer's listener serves operations endpoints only");
    assert!(status.success(), "SIGTERM stops the consumer cleanly: {status:?}");
}
