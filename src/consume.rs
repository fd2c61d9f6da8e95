//! The lifecycle consumer: a Kafka consumer group that applies batches of
//! normalised events to Postgres, effectively once.
//!
//! Delivery is at least once; the effect is once because the event id is the
//! primary key of the history and the insert of the events and the state
//! change they cause share one transaction ([`crate::store::apply`]). Offsets
//! are stored only after that transaction commits (`enable.auto.offset.store
//! = false`), and librdkafka commits stored offsets periodically, on
//! partition revocation and (explicitly, here) on shutdown.
//!
//! Poison records (not JSON, another schema, missing fields) are parked on
//! the dead-letter topic with their reason and origin in headers, and the
//! offset moves on. Transient failures (Postgres down, deadlocks,
//! serialisation conflicts) retry the same batch with capped exponential
//! backoff: no offset passes an event that is not committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerArgs, KafkaArgs};
use crate::event::{ConnectEvent, SCHEMA_V1};
use crate::kafka::client_config;
use crate::metrics::{Metrics, PartitionLabels};
use crate::store;

/// Longest pause between two attempts at a batch that failed transiently.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First pause after a transient failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Feeds librdkafka's statistics (every few seconds) into the lag gauges.
struct LagContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag
                // of -1 means unknown.
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .get_or_create(&PartitionLabels { topic: topic.clone(), partition })
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// A record that could not be read as a normalised event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Why, for the `dlq_reason` header.
    pub reason: String,
}

/// Decodes one record's value as a [`ConnectEvent`] of schema v1.
pub fn decode(payload: Option<&[u8]>) -> Result<ConnectEvent, Poison> {
    let payload = payload.ok_or_else(|| Poison { reason: "record has no value".into() })?;
    let event: ConnectEvent =
        serde_json::from_slice(payload).map_err(|err| Poison { reason: format!("not a connect event: {err}") })?;
    if event.schema != SCHEMA_V1 {
        return Err(Poison { reason: format!("unsupported schema {:?}", event.schema) });
    }
    if event.event_id.is_empty() || event.customer_id.is_empty() {
        return Err(Poison { reason: "event_id and customer_id must not be empty".into() });
    }
    Ok(event)
}

/// The consumer's moving parts, shared by its lanes.
struct Worker {
    consumer: StreamConsumer<LagContext>,
    dlq: FutureProducer,
    pool: PgPool,
    metrics: Arc<Metrics>,
    kafka: KafkaArgs,
    batch_max: usize,
    linger: Duration,
}

/// [`run`] with owned arguments, for spawning as a task.
pub async fn run_owned(
    args: ConsumerArgs,
    kafka: KafkaArgs,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run(&args, &kafka, pool, metrics, shutdown).await
}

/// Runs the consumer until `shutdown` is cancelled.
///
/// One task polls Kafka and routes each record to a lane by partition
/// (`partition % CONNECTFLOW_CONSUMER_PARALLELISM`); each lane batches, applies
/// and stores offsets on its own, so the lanes' transactions overlap. A
/// partition always goes to the same lane, so its records are applied in
/// order, and a customer (whose events share a partition) is only ever
/// written by one lane.
pub async fn run(
    args: &ConsumerArgs,
    kafka: &KafkaArgs,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer<LagContext> = client_config(
        kafka,
        &[
            ("group.id", &args.group),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "5000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ],
    )
    .create_with_context(LagContext { metrics: metrics.clone() })
    .context("creating the Kafka consumer")?;
    consumer.subscribe(&[&kafka.events_topic]).context("subscribing to the events topic")?;
    let dlq: FutureProducer = client_config(kafka, &[("enable.idempotence", "true"), ("acks", "all")])
        .create()
        .context("creating the dead-letter producer")?;
    let batch_max = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let worker = Arc::new(Worker {
        consumer,
        dlq,
        pool,
        metrics,
        kafka: kafka.clone(),
        batch_max,
        linger: Duration::from_millis(args.linger_ms),
    });
    let lanes = usize::try_from(args.parallelism).unwrap_or(1).max(1);
    tracing::info!(topic = kafka.events_topic, group = args.group, lanes, "consumer started");
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        // Room for several batches per lane: the poll task blocks when any
        // lane's queue is full, so a small queue would idle the other lanes
        // behind one slow transaction.
        let (sender, receiver) = tokio::sync::mpsc::channel(batch_max.min(10_000) * 8);
        senders.push(sender);
        tasks.push(tokio::spawn(worker.clone().lane(receiver, shutdown.clone())));
    }
    let polled = worker.poll(&senders, &shutdown).await;
    // Closing the channels lets each lane finish what it holds and stop.
    drop(senders);
    let mut result = polled;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => result = result.and(Err(err)),
            Err(err) => result = result.and(Err(anyhow::anyhow!("a consumer lane panicked: {err}"))),
        }
    }
    // Commit what has been stored, so a restart resumes exactly here.
    match worker.consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => tracing::warn!(error = %err, "final offset commit failed; the next owner re-reads (deduplicated)"),
    }
    tracing::info!("consumer stopped");
    result
}

impl Worker {
    /// Reads records and hands each to its partition's lane until shutdown.
    async fn poll(
        &self,
        lanes: &[tokio::sync::mpsc::Sender<OwnedMessage>],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    let message = message.detach();
                    let lane = usize::try_from(message.partition()).unwrap_or(0) % lanes.len();
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        sent = lanes[lane].send(message) => {
                            if sent.is_err() {
                                anyhow::bail!("a consumer lane stopped");
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "Kafka consumer error");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
            }
        }
    }

    /// One lane: takes a first record, then more until the batch is full or
    /// the linger time has passed, applies the batch, and again.
    async fn lane(
        self: Arc<Self>,
        mut records: tokio::sync::mpsc::Receiver<OwnedMessage>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        while let Some(first) = records.recv().await {
            let mut batch = Vec::with_capacity(self.batch_max.min(1024));
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.batch_max {
                match tokio::time::timeout_at(deadline, records.recv()).await {
                    Ok(Some(message)) => batch.push(message),
                    Ok(None) | Err(_) => break,
                }
            }
            if !self.handle_batch(batch, &shutdown).await? {
                // Interrupted by shutdown: leave the rest for the next owner.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Applies a batch and stores its offsets. `false` when shutdown
    /// interrupted it (nothing stored, so the next owner re-reads it).
    async fn handle_batch(&self, batch: Vec<OwnedMessage>, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let started = Instant::now();
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            match decode(message.payload()) {
                Ok(event) => events.push(event),
                Err(poison) => self.dead_letter(message, &poison, shutdown).await?,
            }
        }
        if !events.is_empty() && !self.apply_part(&events, shutdown).await {
            return Ok(false);
        }
        self.store_offsets(&batch);
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Applies a batch, retrying transient failures with capped
    /// exponential backoff. `false` when shutdown interrupted the retries.
    async fn apply_part(&self, events: &[ConnectEvent], shutdown: &CancellationToken) -> bool {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match store::apply::apply_batch(&self.pool, events).await {
                Ok(outcome) => {
                    self.metrics.events_applied.inc_by(outcome.applied);
                    self.metrics.duplicates_skipped.inc_by(outcome.duplicates);
                    self.metrics.recomputations.inc_by(outcome.recomputed);
                    return true;
                }
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), retry_in = ?backoff, "applying a batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Stores, per partition, the offset after the batch's last record.
    fn store_offsets(&self, batch: &[OwnedMessage]) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for message in batch {
            let entry = next.entry((message.topic(), message.partition())).or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(err) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %err, "building the offset list");
            }
        }
        if let Err(err) = self.consumer.store_offsets(&offsets) {
            // A partition revoked while the batch was applied: its new owner
            // re-reads from the last commit, and the history deduplicates.
            tracing::info!(error = %err, "storing offsets failed (partition revoked?)");
        }
    }

    /// Parks a poison record on the dead-letter topic, retrying until Kafka
    /// has it: its offset must not pass before it is parked.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        poison: &Poison,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            reason = poison.reason,
            "poison record sent to the dead-letter topic"
        );
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "dlq_reason", value: Some(poison.reason.as_bytes()) })
            .insert(Header { key: "dlq_source_topic", value: Some(message.topic().as_bytes()) })
            .insert(Header { key: "dlq_source_partition", value: Some(partition.as_bytes()) })
            .insert(Header { key: "dlq_source_offset", value: Some(offset.as_bytes()) });
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut record = FutureRecord::to(&self.kafka.dlq_topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self.dlq.send(record, Timeout::After(Duration::from_secs(10))).await {
                Ok(_) => {
                    self.metrics.dead_letters.inc();
                    return Ok(());
                }
                Err((err, _)) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "dead-letter publish failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => anyhow::bail!("stopped while parking a poison record"),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_records_are_recognised() {
        assert!(decode(None).is_err());
        assert!(decode(Some(b"garbage")).is_err());
        assert!(decode(Some(br#"{"schema":"connectflow.connect_event.v1"}"#)).is_err(), "missing fields");
        let mut event = serde_json::json!({
            "schema": "connectflow.connect_event.v2", "event_id": "e", "event_type": "started",
            "customer_id": "1", "consumer_id": null, "institution_id": null, "institution_login_id": null,
            "oauth": null, "mfa": null, "accounts": [], "deleted_account_ids": [], "error_code": null,
            "query": null, "occurred_at": "2026-11-20T10:15:02.123Z", "received_at": "2026-11-20T10:15:02.123Z",
            "webhook_data": null
        });
        let err = decode(Some(&serde_json::to_vec(&event).expect("json"))).expect_err("v2 is not ours");
        assert!(err.reason.contains("schema"), "{err:?}");
        event["schema"] = "connectflow.connect_event.v1".into();
        let ok = decode(Some(&serde_json::to_vec(&event).expect("json"))).expect("a valid event");
        assert_eq!(ok.event_id, "e");
    }
}
