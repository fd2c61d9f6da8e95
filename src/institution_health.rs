//! The job of `consume` that evaluates the institutions' health every
//! `CONNECTFLOW_HEALTH_INTERVAL_SECONDS` ([`crate::store::institutions`]):
//! one process evaluates a beat (the others find it taken or just done),
//! every process then publishes what status changes wait in the outbox
//! (one at a time, in order), prunes the sessions older than any window and
//! sets the `connectflow_institutions{status}` gauge.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::PgPool;

use crate::config::{ConfigError, HealthArgs, KafkaArgs};
use crate::institution::{HealthSettings, INSTITUTION_STATUS_SCHEMA_V1};
use crate::kafka;
use crate::metrics::{InstitutionStatusLabels, Metrics};
use crate::store::error::StoreError;
use crate::store::institutions;

/// Status changes published per outbox read.
const PUBLISH_BATCH: i64 = 100;
/// How long one status change may wait for Kafka's confirmation.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions deleted per statement when pruning.
const PRUNE_BATCH: i64 = 10_000;
/// Statements of pruning per beat at most (the rest waits for the next).
const PRUNE_ROUNDS: usize = 10;
/// Sessions are kept this long beyond the window (a process configured
/// with a longer window during a rolling change still finds them).
const PRUNE_MARGIN: chrono::Duration = chrono::Duration::hours(1);

/// Why a beat stopped early; the next beat tries again.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka did not confirm a status change; it stays in the outbox.
    #[error("publishing an institution status change: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What one beat did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Beat {
    /// Whether this process evaluated (else another did, or just had).
    pub evaluated: bool,
    /// Status changes this beat's evaluation recorded.
    pub changes: usize,
    /// Status changes this process published.
    pub published: usize,
}

/// The institution health job, built and ready to run.
pub struct InstitutionHealthJob {
    pool: PgPool,
    producer: FutureProducer,
    topic: String,
    settings: HealthSettings,
    interval: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for InstitutionHealthJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstitutionHealthJob").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl InstitutionHealthJob {
    /// Evaluates with `health`'s settings and beat, publishing to
    /// `CONNECTFLOW_INSTITUTIONS_TOPIC`.
    pub fn new(kafka: &KafkaArgs, pool: PgPool, health: &HealthArgs, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let settings = health.institution_settings().map_err(|err: ConfigError| anyhow::anyhow!(err))?;
        let producer = kafka::producer(kafka, "institution status producer", &[])?;
        Ok(Self {
            pool,
            producer,
            topic: kafka.institutions_topic.clone(),
            settings,
            interval: health.interval(),
            metrics,
        })
    }

    /// The beat's interval (`CONNECTFLOW_HEALTH_INTERVAL_SECONDS`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One [`beat`](Self::beat) at `now`, its outcome logged: a failure is
    /// retried at the next beat (the outbox keeps what waits).
    pub async fn beat_logged(&self, now: DateTime<Utc>) {
        match self.beat(now).await {
            Ok(beat) if beat.changes > 0 || beat.published > 0 => {
                tracing::info!(changes = beat.changes, published = beat.published, "institution health evaluated");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "evaluating institution health failed"),
        }
    }

    /// One beat at `now`: evaluate (unless another process has this beat),
    /// publish what waits, prune, set the gauge.
    pub async fn beat(&self, now: DateTime<Utc>) -> Result<Beat, HealthError> {
        let min_gap = chrono::Duration::from_std(self.interval / 2).unwrap_or(chrono::Duration::zero());
        let evaluation = institutions::evaluate(&self.pool, &self.settings, now, min_gap).await?;
        let mut beat = Beat {
            evaluated: evaluation.is_some(),
            changes: evaluation.map_or(0, |evaluation| evaluation.changes.len()),
            published: 0,
        };
        beat.published = self.publish().await?;
        let before = now - self.settings.window - PRUNE_MARGIN;
        for _ in 0..PRUNE_ROUNDS {
            if institutions::prune_sessions(&self.pool, before, PRUNE_BATCH).await? < PRUNE_BATCH as u64 {
                break;
            }
        }
        for (status, count) in institutions::status_counts(&self.pool).await? {
            self.metrics
                .institutions
                .get_or_create(&InstitutionStatusLabels { status: status.as_str() })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        Ok(beat)
    }

    /// Publishes the waiting status changes in order, each once Kafka
    /// confirmed the previous; stops at the first Kafka does not confirm
    /// (it and the later ones wait for the next beat).
    async fn publish(&self) -> Result<usize, HealthError> {
        let mut published_total = 0;
        while let Some(pending) = institutions::pending(&self.pool, PUBLISH_BATCH).await? {
            let mut published = Vec::with_capacity(pending.records.len());
            let mut failure = None;
            for record in &pending.records {
                let headers = OwnedHeaders::new_with_capacity(1)
                    .insert(Header { key: "schema", value: Some(INSTITUTION_STATUS_SCHEMA_V1.as_bytes()) });
                let sent = self
                    .producer
                    .send(
                        FutureRecord::to(&self.topic)
                            .key(record.institution_id.as_bytes())
                            .payload(record.record.as_bytes())
                            .headers(headers),
                        Timeout::After(SEND_TIMEOUT),
                    )
                    .await;
                match sent {
                    Ok(_) => published.push((record.institution_id.clone(), record.version)),
                    Err((err, _)) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            let whole = published.len() == pending.records.len();
            published_total += published.len();
            self.metrics.institution_changes_published.inc_by(published.len() as u64);
            pending.settle(&published).await?;
            if let Some(err) = failure {
                return Err(err.into());
            }
            if !whole || published.len() < usize::try_from(PUBLISH_BATCH).unwrap_or(usize::MAX) {
                break;
            }
        }
        Ok(published_total)
    }
}
