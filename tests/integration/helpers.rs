//! The integration-test harness: real Postgres and real Kafka, a fresh
//! migrated database and unique topics per test, the service in-process on
//! port 0.
//!
//! Services come from `CONNECTFLOW_TEST_DATABASE_URL` and
//! `CONNECTFLOW_TEST_KAFKA_BROKERS` (`make test` sets both after `make
//! services`). When those are unset and a Docker engine answers, Postgres and
//! Apache Kafka are started with testcontainers. Otherwise the tests fail
//! saying how to get services: never a silent skip.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use connectflow::app::HttpServer;
use connectflow::config::{
    ConsumerArgs, DatabaseArgs, HttpArgs, HttpSettings, KafkaArgs, KafkaProperties, LifecycleArgs, MigrationArgs,
    SecretList,
};
use connectflow::lifecycle::AuthorizationPolicy;
use connectflow::metrics::Metrics;
use connectflow::receive::signature::sign;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The partner secrets every test app accepts (a rotation: both verify).
pub const PARTNER_SECRET: &str = "test-partner-secret-current";
/// The previous partner secret, still valid during the rotation.
pub const OLD_PARTNER_SECRET: &str = "test-partner-secret-previous";
/// A query API token.
pub const API_TOKEN: &str = "test-api-token-one";
/// A second query API token (rotation).
pub const OTHER_API_TOKEN: &str = "test-api-token-two";

/// Where the shared services are.
pub struct Services {
    /// A Postgres URL whose role may create databases.
    pub database_url: String,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    // Containers live as long as the test process when testcontainers started them.
    _containers: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

static SERVICES: OnceCell<Services> = OnceCell::const_new();

/// The shared services, found or started once per test process.
pub async fn services() -> &'static Services {
    SERVICES.get_or_init(find_or_start_services).await
}

async fn find_or_start_services() -> Services {
    init_test_logging();
    let database_url = std::env::var("CONNECTFLOW_TEST_DATABASE_URL").ok();
    let kafka_brokers = std::env::var("CONNECTFLOW_TEST_KAFKA_BROKERS").ok();
    if let (Some(database_url), Some(kafka_brokers)) = (database_url, kafka_brokers) {
        return Services { database_url, kafka_brokers, _containers: Vec::new() };
    }
    if docker_answers() {
        return start_containers().await;
    }
    panic!(
        "integration tests need real Postgres and Kafka: run `make test` (it starts them with `make services` \
         and sets CONNECTFLOW_TEST_DATABASE_URL and CONNECTFLOW_TEST_KAFKA_BROKERS), set those two variables \
         to running services yourself, or run where a Docker engine answers so testcontainers can start them"
    );
}

fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_containers() -> Services {
    use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;

    let postgres = Postgres::default().start().await.expect("starting Postgres with testcontainers");
    let pg_port = postgres.get_host_port_ipv4(5432).await.expect("Postgres port");
    let kafka = Kafka::default().start().await.expect("starting Kafka with testcontainers");
    let kafka_port = kafka.get_host_port_ipv4(KAFKA_PORT).await.expect("Kafka port");
    Services {
        database_url: format!("postgres://postgres:postgres@127.0.0.1:{pg_port}/postgres"),
        kafka_brokers: format!("127.0.0.1:{kafka_port}"),
        _containers: vec![Box::new(postgres), Box::new(kafka)],
    }
}

fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        connectflow::telemetry::init(Some(connectflow::config::LogFormat::Pretty));
    }
}

/// A fresh, empty database (not migrated) and its URL.
pub async fn fresh_database() -> String {
    let services = services().await;
    let admin = PgConnectOptions::from_str(&services.database_url).expect("valid test database URL");
    let name = format!("cf_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.expect("connecting to the test Postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("creating a test database");
    conn.close().await.ok();
    with_database_name(&services.database_url, &name)
}

/// The same URL with another database name.
fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{host_part}/{name}?{query}"),
        None => format!("{host_part}/{name}"),
    }
}

/// Unique topic names for one test.
pub fn unique_kafka_args(brokers: &str) -> KafkaArgs {
    let id = uuid::Uuid::new_v4().simple();
    KafkaArgs {
        brokers: brokers.to_owned(),
        events_topic: format!("cf-test-{id}.events"),
        changes_topic: format!("cf-test-{id}.changes"),
        dlq_topic: format!("cf-test-{id}.dlq"),
        institutions_topic: format!("cf-test-{id}.institutions"),
        properties: KafkaProperties::default(),
    }
}

/// Database settings for a URL.
pub fn database_args(url: &str) -> DatabaseArgs {
    DatabaseArgs { url: url.to_owned().into(), max_connections: Some(10) }
}

/// Migration settings for tests: small topics, single replica, the default
/// retentions.
pub fn migration_args() -> MigrationArgs {
    MigrationArgs {
        topic_partitions: 3,
        topic_replication_factor: 1,
        topic_min_insync_replicas: -1,
        events_retention_ms: 604_800_000,
        changes_retention_ms: 2_592_000_000,
        dlq_retention_ms: 7_776_000_000,
        no_migrate: false,
    }
}

/// Consumer settings for tests: small batches, short linger.
pub fn consumer_args() -> ConsumerArgs {
    ConsumerArgs {
        group: format!("cf-test-{}", uuid::Uuid::new_v4().simple()),
        batch: 100,
        linger_ms: 10,
        parallelism: 2,
        stall_seconds: 120,
        queue_bytes: 64 * 1024 * 1024,
        schema_version: connectflow::event::SCHEMA_VERSION,
        audit_retention_days: 400,
        erasure_record_days: 1095,
        history_retention_days: 0,
        health: connectflow::config::HealthArgs::default(),
    }
}

/// Builds and runs a lifecycle consumer (with its relay and expiry job, as
/// `connectflow consume` does) as a task until `shutdown`.
pub fn run_consumer(
    args: ConsumerArgs,
    kafka: KafkaArgs,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let programs = Arc::new(connectflow::program::Programs::single(AuthorizationPolicy::default(), None));
        let consumer = connectflow::cli::ConsumeProcess::build(&args, &kafka, None, pool, metrics, programs).await?;
        consumer.run(shutdown).await
    })
}

/// HTTP settings for tests: port 0 and the test secrets.
pub fn http_settings() -> HttpSettings {
    HttpArgs {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        partner_secrets: SecretList::new([PARTNER_SECRET, OLD_PARTNER_SECRET]),
        api_tokens: SecretList::new([API_TOKEN, OTHER_API_TOKEN]),
        max_body_bytes: 64 * 1024,
        publish_timeout_ms: 5_000,
        shutdown_grace_ms: 5_000,
        request_timeout_ms: 10_000,
        max_concurrent_webhooks: 256,
        max_inflight_body_bytes: 64 * 1024 * 1024,
        max_client_connections: 10_000,
        access_log_queue: 10_000,
        idempotency_key_hours: 72,
        stats_max_window_days: 400,
        api_statement_timeout_ms: 2_000,
        api_max_connections: 10,
        stats_concurrency: None,
        // Off: tests read the statistics again after changing the data;
        // `api_limits` turns it on to test it.
        stats_cache_seconds: 0,
        webhook_data_keys: None,
        database_read_url: None,
    }
    .settings(&lifecycle_args())
    .expect("complete test settings")
}

/// The programs of a deployment without a programs file: `default` alone.
pub fn default_programs() -> connectflow::program::Programs {
    connectflow::program::Programs::single(AuthorizationPolicy::default(), None)
}

/// The lifecycle's configuration for tests: the default period, no
/// programs file (the one program `default`).
pub fn lifecycle_args() -> LifecycleArgs {
    LifecycleArgs { authorization_days: AuthorizationPolicy::DEFAULT_DAYS, programs: Default::default() }
}

/// Options for [`spawn_app_with`].
pub struct AppOptions {
    /// HTTP settings.
    pub http: HttpSettings,
    /// Kafka settings (brokers and topics).
    pub kafka: KafkaArgs,
    /// Whether to create the topics (false when Kafka is meant to be down).
    pub create_topics: bool,
    /// Whether to run the lifecycle consumer in the same process.
    pub consumer: bool,
}

/// A running connectflow HTTP side on its own database and topics.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// A client for it.
    pub client: reqwest::Client,
    /// The app's own database.
    pub pool: PgPool,
    /// Its URL (for the binary's commands, such as `tokens`).
    pub database_url: String,
    /// Its Kafka settings.
    pub kafka: KafkaArgs,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// The API's shared state (its pools).
    pub api: Arc<connectflow::api::ApiState>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    consumer: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the HTTP side against real services with defaults.
pub async fn spawn_app() -> TestApp {
    spawn_defaults(false).await
}

/// Starts the whole pipeline in-process: HTTP side and lifecycle consumer.
pub async fn spawn_pipeline() -> TestApp {
    spawn_defaults(true).await
}

async fn spawn_defaults(consumer: bool) -> TestApp {
    let services = services().await;
    spawn_app_with(AppOptions {
        http: http_settings(),
        kafka: unique_kafka_args(&services.kafka_brokers),
        create_topics: true,
        consumer,
    })
    .await
}

/// Starts a lifecycle consumer on `app`'s database and topics in `group`.
pub fn spawn_consumer(app: &TestApp, group: &str) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let token = CancellationToken::new();
    let mut args = consumer_args();
    args.group = group.to_owned();
    let handle = run_consumer(args, app.kafka.clone(), app.pool.clone(), Metrics::new(), token.clone());
    (token, handle)
}

/// Starts the HTTP side with the given options.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let database_url = fresh_database().await;
    let pool = connectflow::store::pool(&database_args(&database_url)).expect("pool");
    if options.create_topics {
        connectflow::cli::migrate(&pool, &options.kafka, &migration_args(), &options.http.programs)
            .await
            .expect("migrating");
    } else {
        connectflow::store::migrate(&pool).await.expect("migrating the database");
    }
    let metrics = Metrics::new();
    let server = HttpServer::bind(options.http, &options.kafka, pool.clone(), metrics.clone(), None)
        .await
        .expect("binding the test server");
    let addr = server.local_addr().expect("bound address");
    let api = server.api_state();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    let consumer = options
        .consumer
        .then(|| run_consumer(consumer_args(), options.kafka.clone(), pool.clone(), metrics.clone(), shutdown.clone()));
    TestApp {
        base_url: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool,
        database_url,
        kafka: options.kafka,
        metrics,
        api,
        shutdown,
        server: Some(handle),
        consumer,
    }
}

impl TestApp {
    /// POSTs a body to the webhook route signed with `secret`.
    pub async fn post_webhook_signed(&self, body: &[u8], secret: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/webhooks/finicity/connect", self.base_url))
            .header("content-type", "application/json")
            .header("x-finicity-signature", sign(secret, body))
            .body(body.to_vec())
            .send()
            .await
            .expect("webhook request")
    }

    /// POSTs a body signed with the current partner secret.
    pub async fn post_webhook(&self, body: &[u8]) -> reqwest::Response {
        self.post_webhook_signed(body, PARTNER_SECRET).await
    }

    /// GET a query API path with a valid bearer token.
    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base_url)).bearer_auth(API_TOKEN).send().await.expect("API request")
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base_url)).send().await.expect("GET request")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.server.take() {
            handle.await.expect("server task").expect("server stopped cleanly");
        }
        if let Some(handle) = self.consumer.take() {
            handle.await.expect("consumer task").expect("consumer stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events the receiver would publish for these webhook bodies, received
/// at `received_at` (pings and refused bodies left out).
pub fn normalised(
    bodies: &[serde_json::Value],
    received_at: chrono::DateTime<chrono::Utc>,
) -> Vec<connectflow::event::ConnectEvent> {
    use connectflow::receive::normalise::{Webhook, normalise};
    bodies
        .iter()
        .filter_map(|body| match normalise(&serde_json::to_vec(body).ok()?, received_at, &Default::default()).ok()? {
            Webhook::Event(event) => Some(*event),
            Webhook::Ping => None,
        })
        .collect()
}

/// The real binary running one subcommand (`serve`, `all`) on a fresh
/// migrated database and unique topics, everything it writes (JSON log
/// lines) going to a file: for what only the process shows, its logs.
pub struct BinaryApp {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Its database.
    pub pool: PgPool,
    /// Its Kafka settings.
    pub kafka: KafkaArgs,
    child: tokio::process::Child,
    log_path: std::path::PathBuf,
}

/// Starts `connectflow <subcommand>` with `RUST_LOG=<rust_log>` and waits
/// until `/readyz` answers 200.
pub async fn spawn_binary(subcommand: &str, rust_log: &str) -> BinaryApp {
    spawn_binary_with(subcommand, rust_log, &[]).await
}

/// [`spawn_binary`] with more environment variables (`(name, value)`).
pub async fn spawn_binary_with(subcommand: &str, rust_log: &str, env: &[(&str, &str)]) -> BinaryApp {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    let database_url = fresh_database().await;
    let pool = connectflow::store::pool(&database_args(&database_url)).expect("pool");
    connectflow::cli::migrate(&pool, &kafka, &migration_args(), &default_programs()).await.expect("migrating");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr");
    let log_path = std::env::temp_dir().join(format!("cf-{subcommand}-{}.log", uuid::Uuid::new_v4().simple()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .arg(subcommand)
        .env("CONNECTFLOW_LISTEN", addr.to_string())
        .env("DATABASE_URL", &database_url)
        .env("KAFKA_BROKERS", &kafka.brokers)
        .env("CONNECTFLOW_EVENTS_TOPIC", &kafka.events_topic)
        .env("CONNECTFLOW_CHANGES_TOPIC", &kafka.changes_topic)
        .env("CONNECTFLOW_DLQ_TOPIC", &kafka.dlq_topic)
        .env("CONNECTFLOW_INSTITUTIONS_TOPIC", &kafka.institutions_topic)
        .env("CONNECTFLOW_CONSUMER_GROUP", format!("cf-test-{}", uuid::Uuid::new_v4().simple()))
        .env("CONNECTFLOW_NO_MIGRATE", "true")
        .env("FINICITY_PARTNER_SECRETS", PARTNER_SECRET)
        .env("CONNECTFLOW_API_TOKENS", API_TOKEN)
        .env("CONNECTFLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", rust_log)
        .env_remove("CONNECTFLOW_PROGRAMS_FILE")
        .env_remove("CONNECTFLOW_WEBHOOK_DATA_KEYS")
        .envs(env.iter().copied())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("starting connectflow {subcommand}: {err}"));
    let base_url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(60), || async {
        let response = client.get(format!("{base_url}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    assert_eq!(ready, Some(()), "connectflow {subcommand} became ready");
    BinaryApp { base_url, pool, kafka, child, log_path }
}

impl BinaryApp {
    /// The process's resident memory now, in bytes (`VmRSS` of
    /// `/proc/<pid>/status`, Linux).
    pub fn resident_bytes(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// Stops it with SIGTERM, checks that it exited cleanly and returns
    /// what it logged.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("stops").expect("exit");
        assert!(status.success(), "{status:?}");
        let logs = std::fs::read_to_string(&self.log_path).expect("log file");
        std::fs::remove_file(&self.log_path).ok();
        logs
    }
}

#[cfg(test)]
mod tests {
    use super::with_database_name;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(with_database_name("postgres://u:p@h:5432/db", "x"), "postgres://u:p@h:5432/x");
        assert_eq!(
            with_database_name("postgres://u:p@h:5432/db?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database_name("postgres://u:p@h:5432", "x"), "postgres://u:p@h:5432/x");
    }
}
