//! Configuration: one clap definition, each option with an environment
//! fallback and a doc comment that `--help` shows.
//!
//! The environment variable names are a fixed contract (README, deploy/).
//! Secrets (partner secrets, API tokens, the database URL, extra Kafka
//! properties) are wrapped so that neither `Debug` nor `--help` prints them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::lifecycle::AuthorizationPolicy;
use crate::program::{DEFAULT_SECRETS_ENV, Programs, Secrets};
pub use crate::secret::{Secret, SecretList};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Postgres connection.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. Default: the local development database,
    /// `postgres://connectflow:<development password>@127.0.0.1:5432/connectflow`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://connectflow:connectflow@127.0.0.1:5432/connectflow",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub url: Secret,

    /// Largest number of Postgres connections this process opens. Default:
    /// 10 for `serve` and the commands; for `consume`, one per lane
    /// (CONNECTFLOW_CONSUMER_PARALLELISM) plus 3 (the relay, the health beat,
    /// readiness); for `all`, that plus 10. `consume` and `all` refuse to
    /// start with fewer than the consumer needs. The relay's `LISTEN`
    /// connection is its own, on top.
    #[arg(long = "database-max-connections", env = "CONNECTFLOW_DATABASE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
}

/// The pool size of a process that runs no consumer, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

impl DatabaseArgs {
    /// The pool size: as configured, else [`DEFAULT_MAX_CONNECTIONS`].
    pub fn pool_size(&self) -> u32 {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// These settings for a process that runs `consumer` and, when
    /// `beside_consumer` is given, needs that many more connections (the
    /// HTTP side of `all`): the pool size defaults to what they use
    /// together, and a configured one below the consumer's need is a
    /// [`ConfigError`] naming both settings.
    pub fn sized_for(&self, consumer: &ConsumerArgs, beside_consumer: u32) -> Result<Self, ConfigError> {
        let needed = consumer.connections_needed();
        let size = match self.max_connections {
            None => needed.saturating_add(beside_consumer),
            Some(size) if size < needed => {
                return Err(ConfigError {
                    variable: "CONNECTFLOW_DATABASE_MAX_CONNECTIONS",
                    problem: format!(
                        "{size} connections cannot serve CONNECTFLOW_CONSUMER_PARALLELISM={}: the consumer needs {needed} \
                         (one per lane, plus {CONNECTIONS_BESIDE_LANES} for the relay, the health beat and readiness); \
                         raise the pool or lower the parallelism",
                        consumer.parallelism
                    ),
                });
            }
            Some(size) => size,
        };
        Ok(Self { url: self.url.clone(), max_connections: Some(size) })
    }
}

/// Kafka connection and topics.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Topic of the normalised connect events.
    #[arg(long = "events-topic", env = "CONNECTFLOW_EVENTS_TOPIC", default_value = "finicity.connect.events.v1")]
    pub events_topic: String,

    /// Topic of lifecycle changes: one record per change of a customer's
    /// visible lifecycle (`connectflow.lifecycle_change.v1`). May contain
    /// `{program}` (e.g. `finicity.connect.lifecycle.v1.{program}`): each
    /// program's changes then go to a topic of its own, so Kafka ACLs can
    /// give each client its topic and nothing else; `migrate` creates one
    /// per program.
    #[arg(long = "changes-topic", env = "CONNECTFLOW_CHANGES_TOPIC", default_value = "finicity.connect.lifecycle.v1")]
    pub changes_topic: String,

    /// Topic of institution status changes: one record per change of an
    /// institution's health (`connectflow.institution_status.v1`), keyed by
    /// the institution id.
    #[arg(
        long = "institutions-topic",
        env = "CONNECTFLOW_INSTITUTIONS_TOPIC",
        default_value = "finicity.connect.institutions.v1"
    )]
    pub institutions_topic: String,

    /// Topic where records the consumer cannot read are parked.
    #[arg(long = "dlq-topic", env = "CONNECTFLOW_DLQ_TOPIC", default_value = "finicity.connect.events.v1.dlq")]
    pub dlq_topic: String,

    /// Extra librdkafka properties, `key=value;key=value` (TLS, SASL for
    /// managed Kafka). Applied to every Kafka client after connectflow's own.
    #[arg(
        long = "kafka-properties",
        env = "CONNECTFLOW_KAFKA_PROPERTIES",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub properties: KafkaProperties,
}

impl KafkaArgs {
    /// The placeholder of `CONNECTFLOW_CHANGES_TOPIC` for the program id.
    pub const PROGRAM_PLACEHOLDER: &'static str = "{program}";

    /// The changes topic of `program`'s customers: `CONNECTFLOW_CHANGES_TOPIC`
    /// with `{program}` replaced (the same topic for all when it has none).
    pub fn changes_topic_for(&self, program: &str) -> String {
        self.changes_topic.replace(Self::PROGRAM_PLACEHOLDER, program)
    }
}

/// What `migrate` does and whether the long-running commands do it at start.
#[derive(Debug, Clone, Args)]
pub struct MigrationArgs {
    /// Partition count of topics created when missing. The consumer scales
    /// up to this many instances.
    #[arg(long = "topic-partitions", env = "CONNECTFLOW_TOPIC_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub topic_partitions: i32,

    /// Replication factor of topics created when missing; -1 takes the
    /// broker's `default.replication.factor`.
    #[arg(long = "topic-replication-factor", env = "CONNECTFLOW_TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication_factor: i32,

    /// `min.insync.replicas` of topics created when missing: how many
    /// replicas must have a write before `acks=all` confirms it. With
    /// replication factor 3, use 2 (one broker may be down, no confirmed
    /// write lives on one disk only). -1 takes the broker's default.
    #[arg(long = "topic-min-insync-replicas", env = "CONNECTFLOW_TOPIC_MIN_INSYNC_REPLICAS", default_value_t = -1, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1..))]
    pub topic_min_insync_replicas: i32,

    /// `retention.ms` of the events topic when created (default 7 days; -1:
    /// forever). Events carry personal data, so they are kept only as long as
    /// the topic is needed: past Finicity's 3 days of retries, and for
    /// re-reading after a Postgres restore; the event history in Postgres is
    /// what `reproject` rebuilds from. `migrate` warns about an existing
    /// topic that keeps events for a shorter or a longer time.
    #[arg(long = "events-retention-ms", env = "CONNECTFLOW_EVENTS_RETENTION_MS", default_value_t = 604_800_000, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub events_retention_ms: i64,

    /// `retention.ms` of the changes topic(s) and of the institutions topic
    /// when created (default 30 days;
    /// -1: forever): how far behind a subscriber may fall and still catch up
    /// from the topic; one further behind rebuilds from the query API
    /// (docs/operations.md, "Topic retention"). `migrate` warns about an
    /// existing topic that keeps changes for a shorter or a longer time.
    #[arg(long = "changes-retention-ms", env = "CONNECTFLOW_CHANGES_RETENTION_MS", default_value_t = 2_592_000_000, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub changes_retention_ms: i64,

    /// `retention.ms` of the dead-letter topic when created (default 90
    /// days: a person has to look at what is parked).
    #[arg(long = "dlq-retention-ms", env = "CONNECTFLOW_DLQ_RETENTION_MS", default_value_t = 7_776_000_000, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub dlq_retention_ms: i64,

    /// Do not migrate at start (`serve`, `consume`, `all`); run
    /// `connectflow migrate` separately instead.
    #[arg(long = "no-migrate", env = "CONNECTFLOW_NO_MIGRATE")]
    pub no_migrate: bool,
}

/// The HTTP side.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// HTTP listen address (webhooks, query API, health, metrics).
    #[arg(long = "listen", env = "CONNECTFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Finicity partner secrets, comma-separated, current first. A webhook
    /// verifies when its signature matches any of them (rotation). Entries
    /// are taken exactly as written: an empty one, or one with spaces around
    /// it, is refused; a secret cannot contain a comma.
    #[arg(long = "partner-secrets", env = "FINICITY_PARTNER_SECRETS", hide_env_values = true)]
    pub partner_secrets: Option<SecretList>,

    /// Bearer tokens accepted by the query API, comma-separated (rotation:
    /// keep the old and the new one until clients have moved). Same rules as
    /// the partner secrets: no empty entry, no spaces around one, no comma
    /// inside one.
    #[arg(long = "api-tokens", env = "CONNECTFLOW_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<SecretList>,

    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[arg(long = "max-body-bytes", env = "CONNECTFLOW_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a webhook waits for Kafka to confirm the write before it is
    /// answered 503 (and so retried by Finicity), in milliseconds.
    #[arg(long = "publish-timeout-ms", env = "CONNECTFLOW_PUBLISH_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_timeout_ms: u64,

    /// How long shutdown waits for in-flight requests, in milliseconds.
    #[arg(long = "shutdown-grace-ms", env = "CONNECTFLOW_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Longest time a client may take to send a request's headers, and a
    /// webhook's whole body (408 when the body is slower), in milliseconds.
    /// A new connection that sends nothing, and an idle keep-alive one, are
    /// closed after the same time.
    #[arg(long = "request-timeout-ms", env = "CONNECTFLOW_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Most webhook requests handled at once; beyond it the receiver answers
    /// 503 with Retry-After before reading the body (Finicity retries). The
    /// memory their bodies take is bounded by
    /// CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES.
    #[arg(long = "max-concurrent-webhooks", env = "CONNECTFLOW_MAX_CONCURRENT_WEBHOOKS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_webhooks: u64,

    /// Most bytes of webhook bodies held at once, in bytes. Each webhook
    /// reserves its declared Content-Length (at most
    /// CONNECTFLOW_MAX_BODY_BYTES) before its body is read, a chunked one
    /// its bytes as they arrive, until it is answered; one that does not fit
    /// in what is left is answered 503 with Retry-After (Finicity retries),
    /// a declared length without reading the body. Keep it at least
    /// CONNECTFLOW_MAX_BODY_BYTES, and well inside the receiver's memory
    /// limit (64 MiB of bodies in the 256 MiB the manifests give).
    #[arg(long = "max-inflight-body-bytes", env = "CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_inflight_body_bytes: u64,

    /// Most connections open at once on the HTTP listener; a new one past
    /// it is closed at once, unread, and counted in
    /// `connectflow_connections_refused_total`. Keep it below the process's
    /// open-file limit.
    #[arg(long = "max-connections", env = "CONNECTFLOW_MAX_CONNECTIONS", value_name = "CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_client_connections: u64,

    /// Access-log records waiting to be written, at most. Every `/v1`
    /// request takes a place before it is handled; when the writer falls
    /// behind and the queue is full, a request waits for a place, and when
    /// none comes free within CONNECTFLOW_API_STATEMENT_TIMEOUT_MS (Postgres
    /// slow or down), `/v1` answers 503 with Retry-After rather than serve a
    /// read it cannot log.
    #[arg(long = "access-log-queue", env = "CONNECTFLOW_ACCESS_LOG_QUEUE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub access_log_queue: u64,

    /// How long a revocation's `Idempotency-Key` is remembered, in hours:
    /// the same key (in the same program) later is a new request.
    #[arg(long = "idempotency-key-hours", env = "CONNECTFLOW_IDEMPOTENCY_KEY_HOURS", default_value_t = 72, value_parser = clap::value_parser!(u32).range(1..=87_600))]
    pub idempotency_key_hours: u32,

    /// The longest window of the statistics routes, in days: a longer one is
    /// cut to its last part, answered with `truncated: true`, so that no
    /// request costs more than this much data.
    #[arg(long = "stats-max-window-days", env = "CONNECTFLOW_STATS_MAX_WINDOW_DAYS", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub stats_max_window_days: u32,

    /// Longest time one statement of the query API may run, in
    /// milliseconds: Postgres cancels it past this (`statement_timeout` on
    /// every connection of the API's pool) and the request is answered 503
    /// `timeout` with Retry-After.
    #[arg(long = "api-statement-timeout-ms", env = "CONNECTFLOW_API_STATEMENT_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub api_statement_timeout_ms: u64,

    /// Postgres connections of the query API's own pool, apart from the
    /// process's (`CONNECTFLOW_DATABASE_MAX_CONNECTIONS`: the consumer,
    /// readiness and the access log's writer), so that API queries never
    /// hold those up. The lookup of a customer's lifecycle has a second
    /// pool of as many connections (opened on demand), whose connections
    /// keep the lookup's plan cached.
    #[arg(long = "api-max-connections", env = "CONNECTFLOW_API_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub api_max_connections: u32,

    /// Connections the statistics routes (`/v1/stats/*`) hold at once, at
    /// most; the rest of the API's pool stays for lookups, listings and
    /// revocations. A request takes one; a time series takes a second when
    /// one is free (none another request waits for) and counts the two
    /// halves of its window at once. A statistics request waits for its
    /// first at most as long as one
    /// statement may run (`CONNECTFLOW_API_STATEMENT_TIMEOUT_MS`), then is
    /// answered 503 `busy` with Retry-After. Default: half of
    /// `CONNECTFLOW_API_MAX_CONNECTIONS`; it must be below it.
    #[arg(long = "stats-concurrency", env = "CONNECTFLOW_STATS_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stats_concurrency: Option<u32>,

    /// How long a statistics answer is reused for the same query (route and
    /// parameters) and the same programs visible, in seconds; 0 disables
    /// the cache. A window whose `until` is left out is the one computed
    /// when the answer was cached (its `until` says so).
    #[arg(long = "stats-cache-seconds", env = "CONNECTFLOW_STATS_CACHE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub stats_cache_seconds: u32,

    /// Postgres URL of a read replica (a streaming standby of DATABASE_URL)
    /// for the query API's reads and the statistics: lookups, listings,
    /// events, changes, exports, the access log and the funnel. Writes
    /// (revocations, erasures, API tokens' last use, the access log) and
    /// the consumer stay on DATABASE_URL. Answers from the replica lag the
    /// primary by its replay lag (`connectflow_database_replica_lag_seconds`).
    /// Unset: everything on DATABASE_URL.
    #[arg(long = "database-read-url", env = "CONNECTFLOW_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<Secret>,

    /// The top-level `webhookData` keys the receiver keeps, comma-separated
    /// (e.g. `ref,program`); every other key is dropped before the event is
    /// published, so it never reaches Kafka or Postgres (data minimisation:
    /// keep what subscribers need). Unset: every key is kept. Keys are taken
    /// exactly as written: an empty one, or one with spaces around it, is
    /// refused.
    #[arg(long = "webhook-data-keys", env = "CONNECTFLOW_WEBHOOK_DATA_KEYS", value_delimiter = ',', value_name = "KEYS", value_parser = webhook_data_key)]
    pub webhook_data_keys: Option<Vec<String>>,
}

/// One key of `CONNECTFLOW_WEBHOOK_DATA_KEYS`.
fn webhook_data_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("a key is empty".into());
    }
    if key.trim() != key {
        return Err("a key has spaces around it".into());
    }
    Ok(key.to_owned())
}

/// The consumer side.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Kafka consumer group id of the lifecycle consumers.
    #[arg(long = "consumer-group", env = "CONNECTFLOW_CONSUMER_GROUP", default_value = "connectflow-lifecycle")]
    pub group: String,

    /// Most records applied in one Postgres transaction.
    #[arg(long = "consumer-batch", env = "CONNECTFLOW_CONSUMER_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,

    /// Longest wait for a batch to fill before it is applied, in milliseconds.
    #[arg(long = "consumer-linger-ms", env = "CONNECTFLOW_CONSUMER_LINGER_MS", default_value_t = 20)]
    pub linger_ms: u64,

    /// Transactions a batch is split into and applied concurrently, by
    /// partition (a customer's events share a partition, so the parts touch
    /// different customers). Each lane holds a Postgres connection: the
    /// pool (CONNECTFLOW_DATABASE_MAX_CONNECTIONS) must have 3 more.
    #[arg(long = "consumer-parallelism", env = "CONNECTFLOW_CONSUMER_PARALLELISM", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallelism: u64,

    /// A lane that holds records without making progress for this many
    /// seconds (Postgres unreachable, a hung connection) makes `/livez`
    /// answer 503, so the orchestrator restarts the process.
    #[arg(long = "consumer-stall-seconds", env = "CONNECTFLOW_CONSUMER_STALL_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_seconds: u64,

    /// Most bytes of records held in the lanes' queues, all lanes together;
    /// polling Kafka waits for room beyond it.
    #[arg(long = "consumer-queue-bytes", env = "CONNECTFLOW_CONSUMER_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1u64 << 40)))]
    pub queue_bytes: u64,

    /// For tests only: the schema version this consumer takes for its own
    /// (default: `event::SCHEMA_VERSION`). Records of a higher
    /// `schema_version` are parked as `newer_schema`. Lowering it plays an
    /// older consumer meeting a newer receiver's records.
    #[arg(long = "test-schema-version", env = "CONNECTFLOW_TEST_SCHEMA_VERSION", hide = true, default_value_t = crate::event::SCHEMA_VERSION)]
    pub schema_version: u32,

    /// How long access-log records are kept, in days; older ones are deleted
    /// by a job of `consume` (hourly).
    #[arg(long = "audit-retention-days", env = "CONNECTFLOW_AUDIT_RETENTION_DAYS", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub audit_retention_days: u32,

    /// How long the compliance record of an erased customer (its tombstone:
    /// when, by which token, its consent dates) is kept, in days; then a job
    /// of `consume` (hourly) purges it and events of that customer are no
    /// longer suppressed. Three years by default, as the CFPB's 1033 rule
    /// asks of records; the operator's decision (docs/privacy.md).
    #[arg(long = "erasure-record-days", env = "CONNECTFLOW_ERASURE_RECORD_DAYS", default_value_t = 1095, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub erasure_record_days: u32,
    /// How long the event history is kept, in days; 0 keeps it all. A job of
    /// `consume` (hourly) folds each customer's events older than that into
    /// a snapshot of the lifecycle they imply and deletes them (their ids are
    /// kept, for deduplication), and deletes published lifecycle changes
    /// recorded before it. The lifecycle does not change.
    #[arg(long = "history-retention-days", env = "CONNECTFLOW_HISTORY_RETENTION_DAYS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub history_retention_days: u32,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub health: HealthArgs,
}

/// Connection health (`consume`, `all`): the warnings before authorizations
/// lapse and the institutions' status, evaluated on one beat.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// How often `consume` announces lapsed and lapsing authorizations and
    /// evaluates the institutions' health, in seconds (one process evaluates
    /// at a time; the others skip that beat).
    #[arg(long = "health-interval-seconds", env = "CONNECTFLOW_HEALTH_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval_seconds: u64,

    /// Days before an authorization lapses at which a warning is announced
    /// (a lifecycle change with `reason: "authorization_expiring"`), comma
    /// separated; each at most once per authorization, and only the nearest
    /// threshold already reached. Empty: no warnings.
    #[arg(long = "authorization-warn-days", env = "CONNECTFLOW_AUTHORIZATION_WARN_DAYS", default_value = "30,7")]
    pub authorization_warn_days: WarnDays,

    /// The sliding window of Connect sessions an institution's health is
    /// computed over, in minutes.
    #[arg(long = "institution-window-minutes", env = "CONNECTFLOW_INSTITUTION_WINDOW_MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=10_080))]
    pub institution_window_minutes: u32,

    /// Fewest sessions in the window for an institution to have a status;
    /// below it, `unknown`.
    #[arg(long = "institution-min-sessions", env = "CONNECTFLOW_INSTITUTION_MIN_SESSIONS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub institution_min_sessions: u32,

    /// Institution-side failure rate, in percent of the window's sessions,
    /// at or above which an institution is `degraded`.
    #[arg(long = "institution-degraded-percent", env = "CONNECTFLOW_INSTITUTION_DEGRADED_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub institution_degraded_percent: u32,

    /// Institution-side failure rate, in percent, at or above which an
    /// institution is `down` (at least the degraded threshold).
    #[arg(long = "institution-down-percent", env = "CONNECTFLOW_INSTITUTION_DOWN_PERCENT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub institution_down_percent: u32,

    /// Hysteresis, in percentage points: a `down` or `degraded` institution
    /// improves only after two evaluations in a row below its threshold
    /// minus this many points.
    #[arg(long = "institution-hysteresis-points", env = "CONNECTFLOW_INSTITUTION_HYSTERESIS_POINTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub institution_hysteresis_points: u32,
}

impl Default for HealthArgs {
    /// The defaults `--help` shows.
    fn default() -> Self {
        Self {
            interval_seconds: 60,
            authorization_warn_days: WarnDays(vec![7, 30]),
            institution_window_minutes: 60,
            institution_min_sessions: 20,
            institution_degraded_percent: 20,
            institution_down_percent: 60,
            institution_hysteresis_points: 5,
        }
    }
}

impl HealthArgs {
    /// The beat of the expiry and institution health jobs.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_seconds)
    }

    /// The institution health settings, checked: the down threshold must not
    /// be below the degraded one.
    pub fn institution_settings(&self) -> Result<crate::institution::HealthSettings, ConfigError> {
        if self.institution_down_percent < self.institution_degraded_percent {
            return Err(ConfigError {
                variable: "CONNECTFLOW_INSTITUTION_DOWN_PERCENT",
                problem: format!(
                    "{} is below CONNECTFLOW_INSTITUTION_DEGRADED_PERCENT ({})",
                    self.institution_down_percent, self.institution_degraded_percent
                ),
            });
        }
        Ok(crate::institution::HealthSettings {
            window: chrono::Duration::minutes(i64::from(self.institution_window_minutes)),
            min_sessions: self.institution_min_sessions,
            degraded_percent: self.institution_degraded_percent,
            down_percent: self.institution_down_percent,
            hysteresis_points: self.institution_hysteresis_points,
        })
    }
}

/// `CONNECTFLOW_AUTHORIZATION_WARN_DAYS`: thresholds in days, sorted from the
/// nearest, without repeats; empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarnDays(Vec<u32>);

impl WarnDays {
    /// The thresholds, nearest (smallest) first.
    pub fn days(&self) -> &[u32] {
        &self.0
    }
}

impl FromStr for WarnDays {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut days = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let day: u32 = part.parse().map_err(|_| format!("`{part}` is not a whole number of days"))?;
            if !(1..=36_500).contains(&day) {
                return Err(format!("{day} is outside 1..=36500 days"));
            }
            days.push(day);
        }
        days.sort_unstable();
        days.dedup();
        Ok(Self(days))
    }
}

/// Connections a consumer needs beside its lanes' at the same time: the
/// relay's claims and settling, the health beat (authorization expiry, institution health) and readiness
/// (`/readyz`). The hourly jobs wait for one of these.
pub const CONNECTIONS_BESIDE_LANES: u32 = 3;

impl ConsumerArgs {
    /// Postgres connections the consumer uses at once: one per lane and
    /// [`CONNECTIONS_BESIDE_LANES`].
    pub fn connections_needed(&self) -> u32 {
        u32::try_from(self.parallelism).unwrap_or(u32::MAX).saturating_add(CONNECTIONS_BESIDE_LANES)
    }
}

/// Where the programs are declared (`serve`, `consume`, `all`, `migrate`).
#[derive(Debug, Clone, Default, Args)]
pub struct ProgramsArgs {
    /// The programs file (TOML): one `[[program]]` per client card program,
    /// with `id` (`^[a-z0-9][a-z0-9-]{0,31}$`), `name`, and optionally
    /// `authorization_days` (overrides CONNECTFLOW_AUTHORIZATION_DAYS) and
    /// `partner_secrets_env` (the variable holding its Finicity partner's
    /// secrets; default FINICITY_PARTNER_SECRETS). Unset: one program,
    /// `default`. See docs/operations.md, "Programs".
    #[arg(long = "programs-file", env = "CONNECTFLOW_PROGRAMS_FILE", value_name = "PATH")]
    pub file: Option<PathBuf>,
}

impl ProgramsArgs {
    /// The programs: from the file when one is configured, else `default`
    /// alone; `authorization` is the period of those that set none. `secrets` says whether partner secrets are resolved (the
    /// processes that receive webhooks) and what `FINICITY_PARTNER_SECRETS`
    /// holds. A bad file is a [`ConfigError`] naming the line or variable.
    pub fn load(&self, authorization: AuthorizationPolicy, secrets: Secrets<'_>) -> Result<Programs, ConfigError> {
        let Some(path) = &self.file else {
            let default = match secrets {
                Secrets::Required { default: Some(list) } => Some(list.clone()),
                Secrets::Required { default: None } => {
                    return Err(ConfigError {
                        variable: DEFAULT_SECRETS_ENV,
                        problem: "required by serve and all (set --partner-secrets or the variable)".into(),
                    });
                }
                Secrets::NotNeeded => None,
            };
            return Ok(Programs::single(authorization, default));
        };
        Programs::load(path, authorization, secrets)
            .map_err(|err| ConfigError { variable: "CONNECTFLOW_PROGRAMS_FILE", problem: err.to_string() })
    }
}

/// The lifecycle's configuration (`serve`, `consume` and `all`).
#[derive(Debug, Clone, Args)]
pub struct LifecycleArgs {
    /// How long a customer's authorization lasts, in days from its date (the
    /// latest `added` of a login): the query API shows
    /// `authorization_expires_at` and `expired` from it,
    /// `/v1/customers?authorization_expires_before=` filters by it, and
    /// `consume` publishes a lifecycle change when one lapses. 0: no expiry.
    /// 12 CFR 1033 asks for one year.
    #[arg(long = "authorization-days", env = "CONNECTFLOW_AUTHORIZATION_DAYS", default_value_t = AuthorizationPolicy::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub authorization_days: u32,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub programs: ProgramsArgs,
}

impl LifecycleArgs {
    /// The authorization period of programs that do not set their own.
    pub fn policy(&self) -> AuthorizationPolicy {
        AuthorizationPolicy::new(self.authorization_days)
    }

    /// The programs ([`ProgramsArgs::load`]), with this period for those
    /// that do not set their own.
    pub fn programs(&self, secrets: Secrets<'_>) -> Result<Programs, ConfigError> {
        self.programs.load(self.policy(), secrets)
    }
}

/// `connectflow serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub http: HttpArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lifecycle: LifecycleArgs,
}

/// `connectflow consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Serve the consumer's operations endpoints (`/livez`, `/readyz`,
    /// `/metrics`) on this address. Off when unset (so a consumer and a
    /// receiver on one machine do not compete for a port); the container
    /// image sets it.
    #[arg(long = "listen", env = "CONNECTFLOW_LISTEN")]
    pub listen: Option<SocketAddr>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lifecycle: LifecycleArgs,
}

/// `connectflow all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub http: HttpArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lifecycle: LifecycleArgs,
}

/// `connectflow migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub programs: ProgramsArgs,
}

/// `connectflow dlq ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// Publish records parked on the dead-letter topic back to the events
    /// topic (after their cause is fixed). Safe to repeat: events are
    /// deduplicated by id.
    Replay(ReplayArgs),
}

/// `connectflow dlq replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// List what would be replayed; publish nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Replay only records whose `dlq_reason` contains this text.
    #[arg(long, value_name = "TEXT")]
    pub reason_contains: Option<String>,

    /// Start at the dead-letter topic's beginning. Without it a replay goes
    /// on from where the last one (with the same `--reason-contains`)
    /// stopped: its position is kept in the consumer group
    /// `connectflow-dlq-replay` (a filter gets
    /// `connectflow-dlq-replay-<16 hex digits>`).
    #[arg(long)]
    pub from_beginning: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

/// `connectflow reproject`.
#[derive(Debug, Clone, Args)]
pub struct ReprojectArgs {
    /// Only this customer (default: everyone).
    #[arg(long = "customer")]
    pub customer: Option<crate::event::CustomerId>,

    /// Audit instead: recompute without writing and list every customer
    /// whose stored lifecycle differs from the fold of their recorded events;
    /// exit status 1 when any does.
    #[arg(long = "check")]
    pub check: bool,

    /// Customers recomputed per transaction.
    #[arg(long = "batch-size", env = "CONNECTFLOW_REPROJECT_BATCH", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub batch_size: i64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// A configuration value that is missing or malformed, named by its
/// environment variable. Reported as one line, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable (the flag says the same).
    pub variable: &'static str,
    /// What is wrong, never the value itself.
    pub problem: String,
}

/// The HTTP settings once required values are known to be present.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The programs, each with its partner secrets (current first) and
    /// authorization period.
    pub programs: Arc<Programs>,
    /// API bearer tokens; never empty.
    pub api_tokens: SecretList,
    /// Largest webhook body.
    pub max_body_bytes: usize,
    /// How long to wait for Kafka to confirm a write.
    pub publish_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Deadline for a request's headers and a webhook's body.
    pub request_timeout: Duration,
    /// Most webhooks handled at once.
    pub max_concurrent_webhooks: usize,
    /// Most bytes of webhook bodies held at once.
    pub max_inflight_body_bytes: usize,
    /// Most connections open at once on the listener.
    pub max_connections: usize,
    /// Access-log records waiting to be written, at most.
    pub access_log_queue: usize,
    /// How long a revocation's `Idempotency-Key` is remembered.
    pub idempotency_key_ttl: Duration,
    /// The longest statistics window, in days.
    pub stats_max_window_days: u32,
    /// Longest time one API statement may run.
    pub api_statement_timeout: Duration,
    /// Connections of the API's own pool.
    pub api_max_connections: u32,
    /// Statistics connections held at once; below `api_max_connections`.
    pub stats_concurrency: usize,
    /// How long a statistics answer is reused; zero: not cached.
    pub stats_cache_ttl: Duration,
    /// The top-level `webhookData` keys kept; `None`: all of them.
    pub webhook_data_keys: Option<Arc<[String]>>,
    /// The read replica's URL, when the API reads from one.
    pub database_read_url: Option<Secret>,
}

impl HttpArgs {
    /// Checks the values `serve` and `all` require, the programs with their
    /// partner secrets ([`LifecycleArgs::programs`]) first.
    pub fn settings(&self, lifecycle: &LifecycleArgs) -> Result<HttpSettings, ConfigError> {
        let programs = lifecycle.programs(Secrets::Required { default: self.partner_secrets.as_ref() })?;
        let api_tokens = self.api_tokens.clone().ok_or(ConfigError {
            variable: "CONNECTFLOW_API_TOKENS",
            problem: "required by serve and all (set --api-tokens or the variable)".into(),
        })?;
        Ok(HttpSettings {
            listen: self.listen,
            programs: Arc::new(programs),
            api_tokens,
            max_body_bytes: self.max_body_bytes,
            publish_timeout: Duration::from_millis(self.publish_timeout_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_webhooks: usize::try_from(self.max_concurrent_webhooks).unwrap_or(usize::MAX),
            max_inflight_body_bytes: usize::try_from(self.max_inflight_body_bytes).unwrap_or(usize::MAX),
            max_connections: usize::try_from(self.max_client_connections).unwrap_or(usize::MAX),
            access_log_queue: usize::try_from(self.access_log_queue).unwrap_or(usize::MAX),
            idempotency_key_ttl: Duration::from_secs(u64::from(self.idempotency_key_hours) * 3600),
            stats_max_window_days: self.stats_max_window_days,
            api_statement_timeout: Duration::from_millis(self.api_statement_timeout_ms),
            api_max_connections: self.api_max_connections,
            stats_concurrency: self.stats_concurrency()?,
            stats_cache_ttl: Duration::from_secs(u64::from(self.stats_cache_seconds)),
            webhook_data_keys: self.webhook_data_keys.as_deref().map(Arc::from),
            database_read_url: self.database_read_url.clone(),
        })
    }
}

impl HttpArgs {
    /// `CONNECTFLOW_STATS_CONCURRENCY`, half the API's pool by default: it
    /// must leave the other routes at least one connection.
    fn stats_concurrency(&self) -> Result<usize, ConfigError> {
        let concurrency = self.stats_concurrency.unwrap_or(self.api_max_connections / 2).max(1);
        if concurrency >= self.api_max_connections {
            return Err(ConfigError {
                variable: "CONNECTFLOW_STATS_CONCURRENCY",
                problem: format!(
                    "{concurrency} must be below CONNECTFLOW_API_MAX_CONNECTIONS ({}), so that lookups keep a connection",
                    self.api_max_connections
                ),
            });
        }
        Ok(usize::try_from(concurrency).unwrap_or(usize::MAX))
    }
}

/// Extra librdkafka properties. Values may hold SASL passwords, so `Debug`
/// shows the keys only.
#[derive(Clone, Default)]
pub struct KafkaProperties(Vec<(String, String)>);

impl KafkaProperties {
    /// The `(key, value)` pairs, in configured order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// librdkafka properties connectflow's guarantees rest on, with their
/// aliases: the producer's idempotence and `acks=all`, the consumer's
/// manual offset store and commit, its group and where a new group starts.
/// An operator may not override them.
pub const PROTECTED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.enable",
    "isolation.level",
    "group.id",
    "auto.offset.reset",
    "enable.gapless.guarantee",
];

impl FromStr for KafkaProperties {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| "expected `key=value;key=value`".to_owned())?;
            let key = key.trim();
            if key.is_empty() {
                return Err("a property has an empty key".into());
            }
            if let Some(protected) = PROTECTED_KAFKA_PROPERTIES.iter().find(|p| key.eq_ignore_ascii_case(p)) {
                return Err(format!(
                    "`{protected}` may not be overridden: connectflow's delivery guarantees depend on its own setting"
                ));
            }
            pairs.push((key.to_owned(), value.trim().to_owned()));
        }
        Ok(Self(pairs))
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| format!("{k}=[redacted]"))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_is_sized_for_the_lanes_and_what_else_needs_a_connection() {
        let consumer = |parallelism| {
            let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
                "connectflow",
                "consume",
                "--consumer-parallelism",
                parallelism,
            ])
            .expect("parses");
            match cli.command {
                crate::cli::Command::Consume(args) => args.consumer,
                _ => unreachable!("parsed consume"),
            }
        };
        let unset = DatabaseArgs { url: Secret::from(String::new()), max_connections: None };
        assert_eq!(unset.pool_size(), DEFAULT_MAX_CONNECTIONS);
        let sized = |database: &DatabaseArgs, lanes, beside| database.sized_for(&consumer(lanes), beside);
        assert_eq!(sized(&unset, "4", 0).expect("fits").max_connections, Some(7));
        assert_eq!(sized(&unset, "16", 0).expect("fits").max_connections, Some(19));
        assert_eq!(sized(&unset, "4", DEFAULT_MAX_CONNECTIONS).expect("fits").max_connections, Some(17));
        let explicit = DatabaseArgs { max_connections: Some(7), ..unset };
        assert_eq!(sized(&explicit, "4", 10).expect("fits").max_connections, Some(7));
        let refused = sized(&explicit, "5", 0).expect_err("one short");
        assert_eq!(refused.variable, "CONNECTFLOW_DATABASE_MAX_CONNECTIONS");
        assert!(refused.problem.contains("CONNECTFLOW_CONSUMER_PARALLELISM=5"), "{refused}");
    }

    #[test]
    fn the_health_defaults_are_the_documented_ones_and_warning_days_parse() {
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(["connectflow", "consume"]).expect("parses");
        let crate::cli::Command::Consume(args) = cli.command else { unreachable!("parsed consume") };
        let parsed = args.consumer.health;
        let default = HealthArgs::default();
        assert_eq!(
            (parsed.interval(), parsed.authorization_warn_days.days(), parsed.institution_settings().ok()),
            (default.interval(), default.authorization_warn_days.days(), default.institution_settings().ok())
        );
        assert_eq!(parsed.institution_settings().ok(), Some(crate::institution::HealthSettings::default()));
        assert_eq!("30,7".parse::<WarnDays>().map(|d| d.days().to_vec()), Ok(vec![7, 30]));
        assert_eq!(" 7 , 7,30 ".parse::<WarnDays>().map(|d| d.days().to_vec()), Ok(vec![7, 30]));
        assert_eq!("".parse::<WarnDays>().map(|d| d.days().to_vec()), Ok(vec![]));
        assert!("0".parse::<WarnDays>().is_err());
        assert!("seven".parse::<WarnDays>().is_err());
        let inverted = HealthArgs { institution_down_percent: 10, ..HealthArgs::default() };
        assert_eq!(
            inverted.institution_settings().map_err(|e| e.variable),
            Err("CONNECTFLOW_INSTITUTION_DOWN_PERCENT")
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let list: SecretList = "s3cr3t-one,s3cr3t-two".parse().expect("valid list");
        let props: KafkaProperties = "sasl.password=hunter2;security.protocol=SASL_SSL".parse().expect("valid");
        let text = format!("{list:?} {props:?} {:?}", Secret::from("pg-pass".to_owned()));
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("pg-pass"), "{text}");
        assert!(text.contains("sasl.password"), "keys stay visible: {text}");
    }

    #[test]
    fn secret_lists_refuse_empty_entries_and_surrounding_spaces() {
        assert!("a,,b".parse::<SecretList>().is_err());
        assert!("".parse::<SecretList>().is_err());
        assert!("a,".parse::<SecretList>().is_err());
        let err = " a , b ".parse::<SecretList>().expect_err("spaces are refused, not trimmed");
        assert!(err.contains("entry 1") && !err.contains(" a "), "names the entry, never its value: {err}");
        assert!("a, b".parse::<SecretList>().is_err());
        let list: SecretList = "a,b c".parse().expect("valid: spaces inside an entry are part of it");
        assert_eq!(list.iter().map(Secret::expose).collect::<Vec<_>>(), ["a", "b c"]);
    }

    #[test]
    fn kafka_properties_parse_pairs_and_reject_garbage() {
        let props: KafkaProperties = "a=1; b = two ;".parse().expect("valid");
        assert_eq!(props.pairs(), [("a".into(), "1".into()), ("b".into(), "two".into())]);
        assert!("novalue".parse::<KafkaProperties>().is_err());
        assert!("=x".parse::<KafkaProperties>().is_err());
        assert!("".parse::<KafkaProperties>().expect("empty is fine").pairs().is_empty());
    }

    #[test]
    fn statistics_take_half_the_api_pool_by_default_and_never_all_of_it() {
        #[derive(clap::Parser)]
        struct Http {
            #[command(flatten)]
            http: HttpArgs,
        }
        let concurrency = |args: &[&str]| {
            let parsed =
                <Http as clap::Parser>::try_parse_from(std::iter::once("connectflow").chain(args.iter().copied()))
                    .expect("valid arguments");
            parsed.http.stats_concurrency().map_err(|err| err.variable)
        };
        assert_eq!(concurrency(&[]), Ok(5));
        assert_eq!(concurrency(&["--api-max-connections", "3"]), Ok(1));
        assert_eq!(concurrency(&["--api-max-connections", "4", "--stats-concurrency", "3"]), Ok(3));
        assert_eq!(
            concurrency(&["--api-max-connections", "4", "--stats-concurrency", "4"]),
            Err("CONNECTFLOW_STATS_CONCURRENCY")
        );
    }

    #[test]
    fn kafka_properties_cannot_override_the_guarantees() {
        for key in [
            "enable.idempotence",
            "acks",
            "request.required.acks",
            "enable.auto.offset.store",
            "ENABLE.AUTO.COMMIT",
            "group.id",
            "isolation.level",
        ] {
            let err = format!("security.protocol=SSL;{key}=x").parse::<KafkaProperties>().expect_err(key);
            assert!(err.to_lowercase().contains(&key.to_lowercase()), "{err}");
        }
        assert!("linger.ms=5;sasl.mechanism=PLAIN".parse::<KafkaProperties>().is_ok());
    }
}
