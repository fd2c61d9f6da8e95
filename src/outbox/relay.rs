//! The relay: claims customers with unpublished changes, publishes their
//! changes in version order and marks what Kafka confirmed, each round in
//! one Postgres transaction (see [`crate::outbox`] for why it is correct).
//!
//! Its warnings are logged at most once per message per second, each with
//! the count `suppressed` since the previous one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::change::CHANGE_SCHEMA_V1;
use crate::config::KafkaArgs;
use crate::kafka;
use crate::metrics::Metrics;
use crate::store::changes::CHANGES_CHANNEL;
use crate::store::error::StoreResultExt;
use crate::telemetry::LogLimiter;

use super::RelayError;

/// How often the relay looks for unpublished changes without a notification.
pub const SAFETY_POLL: Duration = Duration::from_secs(5);
/// Customers claimed per relay transaction: many, so that a backlog is
/// published in large Kafka batches and few claim queries.
const CUSTOMERS_PER_CLAIM: i64 = 1000;
/// How often the backlog gauges are measured at most.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long one change may wait for Kafka's confirmation.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay: a Postgres pool, an idempotent producer and the changes topic
/// (one per program when its name has `{program}`).
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    /// Where the changes topics' names come from.
    topic: KafkaArgs,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// When the backlog gauges were last measured.
    backlog_measured: std::sync::Mutex<Option<Instant>>,
    /// Thins the warnings to one per message per second: a Kafka outage
    /// fails every claimed customer's change in each round.
    log_limiter: LogLimiter,
}

/// How a round ends once Kafka confirmed what it could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Mark the confirmed changes published and commit.
    Mark,
    /// Roll back, as a relay that died before its commit would (tests).
    CrashBeforeMark,
}

/// One unpublished change.
struct Pending {
    customer_id: String,
    version: i64,
    change: String,
    recorded_at: DateTime<Utc>,
    program_id: String,
    /// The customer's erased change: a tombstone follows it, and its row
    /// goes once both are confirmed.
    erasure: bool,
}

impl Relay {
    /// An idempotent, `acks=all` producer for the changes topic.
    pub fn new(kafka: &KafkaArgs, pool: PgPool, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let timeout_ms = SEND_TIMEOUT.as_millis().to_string();
        let producer = kafka::producer(
            kafka,
            "lifecycle-change producer",
            &[
                // The claimed customers' changes go out side by side: a few
                // milliseconds of linger and lz4 make them a few large
                // requests instead of one per change (the broker's CPU is
                // most of a change's cost).
                ("linger.ms", "5"),
                ("compression.type", "lz4"),
                ("message.timeout.ms", &timeout_ms),
            ],
        )?;
        Ok(Self {
            pool,
            producer,
            topic: kafka.clone(),
            metrics,
            wake: Arc::new(Notify::new()),
            backlog_measured: std::sync::Mutex::new(None),
            log_limiter: LogLimiter::default(),
        })
    }

    /// A handle that wakes this relay: the consumer's lanes use it after a
    /// batch recorded changes.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publishes until `shutdown`: every change recorded so far, then each
    /// time a batch announces new ones (or the safety poll comes round).
    /// Postgres and Kafka outages are waited out, like the consumer does.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut listener: Option<PgListener> = None;
        let mut backoff = Backoff::default();
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            match self.publish_all().await {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    if let Some(suppressed) = self.log_limiter.admit("round failed", Instant::now()) {
                        tracing::warn!(error = %err, retry_in = ?backoff.delay(), suppressed, "publishing lifecycle changes failed; retrying");
                    }
                    if !backoff.wait(&shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            self.export_backlog().await;
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                ok = notified => if !ok {
                    // The listening connection failed: poll until it is back.
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                },
                () = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(CHANGES_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Publishes claimed batches until nothing unclaimed is left.
    pub async fn publish_all(&self) -> Result<(), RelayError> {
        while self.publish_batch(End::Mark).await? > 0 {}
        Ok(())
    }

    /// A fault for tests: claims and publishes one batch as
    /// [`publish_all`](Self::publish_all) does, then rolls back instead of
    /// marking, as a relay that died between Kafka's confirmation and its
    /// commit would. Returns how many changes were published.
    ///
    /// A method of its own, hidden from the documentation, rather than a
    /// flag of the normal path: no production call can ask for a crash, and
    /// the integration tests (another crate, which `cfg(test)` does not
    /// reach) still can.
    #[doc(hidden)]
    pub async fn publish_batch_then_crash_before_mark(&self) -> Result<usize, RelayError> {
        self.publish_batch(End::CrashBeforeMark).await
    }

    /// Claims up to [`CUSTOMERS_PER_CLAIM`] customers with unpublished
    /// changes, publishes them in version order and, as `end` says, marks
    /// what Kafka confirmed. Returns how many changes were published.
    async fn publish_batch(&self, end: End) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await.store("beginning a relay transaction")?;
        let claimed: Vec<String> = sqlx::query_scalar!(
            r#"
            SELECT customer_id AS "customer_id!" FROM (
                SELECT DISTINCT customer_id FROM lifecycle_outbox ORDER BY customer_id LIMIT $1
            ) AS waiting
            WHERE pg_try_advisory_xact_lock(hashtextextended('connectflow.relay:' || customer_id, 0))
            "#,
            CUSTOMERS_PER_CLAIM
        )
        .fetch_all(&mut *tx)
        .await
        .store("claiming customers with unpublished changes")?;
        if claimed.is_empty() {
            return Ok(0);
        }
        // A later statement than the locks: it sees what a relay that held
        // them before committed.
        let rows = sqlx::query_as!(
            Pending,
            r#"
            SELECT c.customer_id, c.version, c.change, c.recorded_at, o.erasure,
                   COALESCE(cu.program_id, e.program_id, 'default') AS "program_id!"
            FROM lifecycle_outbox o JOIN lifecycle_changes c USING (customer_id, version)
                 LEFT JOIN customers cu USING (customer_id)
                 LEFT JOIN erased_customers e USING (customer_id)
            WHERE o.customer_id = ANY($1::text[])
            ORDER BY c.customer_id, c.version
            "#,
            &claimed
        )
        .fetch_all(&mut *tx)
        .await
        .store("reading unpublished changes")?;
        let mut by_customer: BTreeMap<&str, Vec<&Pending>> = BTreeMap::new();
        for row in &rows {
            by_customer.entry(row.customer_id.as_str()).or_default().push(row);
        }
        // Customers side by side, each customer's versions one after another.
        let published: Vec<Vec<(&str, i64)>> =
            futures::future::join_all(by_customer.values().map(|changes| self.publish_in_order(changes))).await;
        let (customers, versions): (Vec<String>, Vec<i64>) =
            published.iter().flatten().map(|(c, v)| ((*c).to_owned(), *v)).unzip();
        if end == End::CrashBeforeMark {
            tx.rollback().await.store("rolling back (simulated crash)")?;
            return Ok(customers.len());
        }
        // An erased change's record goes with its outbox row: after it
        // the customer id is in no row but the tombstone.
        sqlx::query!(
            r#"
            WITH published AS (
                DELETE FROM lifecycle_outbox o
                USING UNNEST($1::text[], $2::int8[]) AS p(customer_id, version)
                WHERE o.customer_id = p.customer_id AND o.version = p.version
                RETURNING o.customer_id, o.version, o.erasure
            )
            DELETE FROM lifecycle_changes c USING published p
            WHERE p.erasure AND c.customer_id = p.customer_id AND c.version = p.version
            "#,
            &customers,
            &versions
        )
        .execute(&mut *tx)
        .await
        .store("marking changes published")?;
        tx.commit().await.store("committing the relay transaction")?;
        self.metrics.changes_published.inc_by(customers.len() as u64);
        if customers.len() < rows.len() {
            // Kafka refused or timed out: the rest waits for the next round.
            return Err(RelayError::Unconfirmed { count: rows.len() - customers.len() });
        }
        Ok(customers.len())
    }

    /// Publishes one customer's changes in version order, stopping at the
    /// first that Kafka does not confirm; returns those confirmed.
    async fn publish_in_order<'a>(&self, changes: &[&'a Pending]) -> Vec<(&'a str, i64)> {
        let mut confirmed = Vec::with_capacity(changes.len());
        for change in changes {
            let change_id = format!("{}:{}", change.customer_id, change.version);
            let value = change.change.as_bytes();
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header { key: "change_id", value: Some(change_id.as_bytes()) })
                .insert(Header { key: "schema", value: Some(CHANGE_SCHEMA_V1.as_bytes()) })
                .insert(Header { key: "program", value: Some(change.program_id.as_bytes()) });
            let topic = self.topic.changes_topic_for(&change.program_id);
            let record = FutureRecord::to(&topic).key(change.customer_id.as_bytes()).payload(value).headers(headers);
            let mut sent =
                self.producer.send(record, Timeout::After(SEND_TIMEOUT)).await.map(|_| ()).map_err(|(err, _)| err);
            if sent.is_ok() && change.erasure {
                // The tombstone: the key with a null value, after the erased
                // change (the same partition, in order), with only the
                // `program` header.
                let headers = OwnedHeaders::new_with_capacity(1)
                    .insert(Header { key: "program", value: Some(change.program_id.as_bytes()) });
                let tombstone =
                    FutureRecord::<[u8], [u8]>::to(&topic).key(change.customer_id.as_bytes()).headers(headers);
                sent = self
                    .producer
                    .send(tombstone, Timeout::After(SEND_TIMEOUT))
                    .await
                    .map(|_| ())
                    .map_err(|(err, _)| err);
            }
            match sent {
                Ok(()) => {
                    let waited = (Utc::now() - change.recorded_at).to_std().unwrap_or_default();
                    self.metrics.change_publish_seconds.observe(waited.as_secs_f64());
                    confirmed.push((change.customer_id.as_str(), change.version));
                }
                Err(err) => {
                    if let Some(suppressed) = self.log_limiter.admit("change failed", Instant::now()) {
                        tracing::warn!(change_id, error = %err, suppressed, "publishing a lifecycle change failed");
                    }
                    break;
                }
            }
        }
        confirmed
    }

    /// Sets the backlog gauges: changes waiting and the oldest one's age, at
    /// most once per [`BACKLOG_INTERVAL`] (counting the outbox on every
    /// wake-up would cost more than the publishing under load).
    async fn export_backlog(&self) {
        let started = Instant::now();
        {
            let Ok(mut last) = self.backlog_measured.lock() else { return };
            if last.is_some_and(|at| started.duration_since(at) < BACKLOG_INTERVAL) {
                return;
            }
            *last = Some(started);
        }
        let row = sqlx::query!(r#"SELECT count(*) AS "waiting!", min(recorded_at) AS oldest FROM lifecycle_outbox"#)
            .fetch_one(&self.pool)
            .await;
        if let Ok(row) = row {
            self.metrics.changes_waiting.set(row.waiting);
            let age = row.oldest.map_or(0.0, |at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0);
            self.metrics.changes_oldest_waiting_seconds.set(age);
        }
        tracing::trace!(took = ?started.elapsed(), "outbox backlog measured");
    }
}
