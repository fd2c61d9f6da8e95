//! Publishing normalised events to Kafka: an idempotent producer with
//! `acks=all`, each record keyed by customer id so one customer's events stay
//! in one partition, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::KafkaArgs;
use crate::event::{ConnectEvent, SCHEMA_V1, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use crate::kafka;

/// Why an event could not be published. The webhook is then answered 503,
/// so Finicity sends it again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka did not confirm in time.
    #[error("Kafka did not confirm the write within {0:?}")]
    Timeout(Duration),
    /// Kafka refused or failed the write.
    #[error("Kafka rejected the write: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The record could not be encoded (a bug, not the request's fault).
    #[error("encoding the record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The events topic's producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
    /// Set once the producer's fatal error has been logged.
    fatal_logged: Arc<AtomicBool>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Publisher {
    /// Creates the producer. `timeout` bounds how long a publish waits for
    /// Kafka's confirmation; librdkafka gives up on the record at the same
    /// time, so an event answered 503 is not also retried behind our back
    /// for long (if it does land, the consumer deduplicates it by id).
    pub fn new(kafka: &KafkaArgs, timeout: Duration) -> anyhow::Result<Self> {
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let producer = kafka::producer(
            kafka,
            "Kafka producer",
            &[("linger.ms", "1"), ("compression.type", "lz4"), ("message.timeout.ms", &timeout_ms)],
        )?;
        Ok(Self { producer, topic: kafka.events_topic.clone(), timeout, fatal_logged: Arc::default() })
    }

    /// Publishes one event and waits until Kafka has it (all in-sync
    /// replicas) or the timeout passes. Returns the time Kafka took.
    pub async fn publish(&self, event: &ConnectEvent) -> Result<Duration, PublishError> {
        let value = serde_json::to_vec(event)?;
        let version = SCHEMA_VERSION.to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: "event_id", value: Some(event.event_id.as_bytes()) })
            .insert(Header { key: "program", value: Some(event.program_id.as_str().as_bytes()) })
            .insert(Header { key: "event_type", value: Some(event.event_type.as_str().as_bytes()) })
            .insert(Header { key: "schema", value: Some(SCHEMA_V1.as_bytes()) })
            .insert(Header { key: SCHEMA_VERSION_HEADER, value: Some(version.as_bytes()) });
        let record =
            FutureRecord::to(&self.topic).key(event.customer_id.as_str().as_bytes()).payload(&value).headers(headers);
        let started = Instant::now();
        let delivery = self.producer.send(record, Timeout::After(self.timeout));
        match tokio::time::timeout(self.timeout, delivery).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err((err, _))) => Err(PublishError::Kafka(err)),
            Err(_) => Err(PublishError::Timeout(self.timeout)),
        }
    }

    /// The idempotent producer's fatal error, if it had one: it then
    /// refuses every write until the process restarts (librdkafka cannot
    /// recover an idempotent producer whose sequence was broken). Logged
    /// once.
    pub fn fatal_error(&self) -> Option<String> {
        let (code, reason) = self.producer.client().fatal_error()?;
        if !self.fatal_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(code = ?code, reason, "the Kafka producer failed fatally; restart the process");
        }
        Some(format!("producer fatal error {code:?}"))
    }

    /// Whether the producer can publish: not in a fatal state, and Kafka
    /// answers and knows the events topic (readiness).
    pub async fn check_topic(&self, timeout: Duration) -> Result<(), String> {
        if let Some(fatal) = self.fatal_error() {
            return Err(fatal);
        }
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let check = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("metadata request failed: {e}"))?;
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                Some(_) | None => Err(format!("topic {topic} is not available")),
            }
        });
        check.await.map_err(|e| format!("metadata check panicked: {e}"))?
    }

    /// Waits for every record in flight to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %err, "producer did not flush every record before shutdown");
        }
    }
}
