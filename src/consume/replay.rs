//! `connectflow dlq replay`: publishes parked records back to the events
//! topic once their cause is fixed. Safe to run more than once: the consumer
//! deduplicates events by id, and a late event makes it recompute the
//! customer, so order does not matter.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::kafka::{self, client_config};

/// How long metadata and reads may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// What a replay did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Parked records read.
    pub read: u64,
    /// Published again to the events topic (or that would be).
    pub replayed: u64,
    /// Left out by the `--reason-contains` filter.
    pub filtered_out: u64,
    /// Metadata-only records: no value to replay (copy the original from
    /// the events topic by its source offset).
    pub metadata_only: u64,
}

/// Reads every record parked on the dead-letter topic up to its current end
/// and, unless `dry_run`, publishes each one that has a value (and whose
/// `dlq_reason` contains `reason_contains`, when given) to the events topic
/// with its key and original headers.
pub async fn replay(kafka: &KafkaArgs, reason_contains: Option<&str>, dry_run: bool) -> anyhow::Result<ReplayOutcome> {
    let reader: BaseConsumer =
        client_config(kafka, &[("group.id", "connectflow-dlq-replay"), ("enable.auto.commit", "false")])
            .create()
            .context("creating the dead-letter reader")?;
    let topic = kafka.dlq_topic.clone();
    let records = tokio::task::spawn_blocking(move || read_to_end(&reader, &topic))
        .await
        .context("reading the dead-letter topic")??;
    let producer = kafka::producer(kafka, "producer", &[])?;
    let mut outcome = ReplayOutcome::default();
    for parked in records {
        outcome.read += 1;
        let Some(value) = parked.value else {
            outcome.metadata_only += 1;
            println!("metadata only, not replayable: partition {} offset {}", parked.partition, parked.offset);
            continue;
        };
        if reason_contains.is_some_and(|needle| !parked.reason.contains(needle)) {
            outcome.filtered_out += 1;
            continue;
        }
        outcome.replayed += 1;
        if dry_run {
            println!("would replay: partition {} offset {} ({})", parked.partition, parked.offset, parked.reason);
            continue;
        }
        let mut headers = OwnedHeaders::new();
        for (key, value) in &parked.headers {
            headers = headers.insert(Header { key, value: Some(value.as_slice()) });
        }
        let mut record = FutureRecord::to(&kafka.events_topic).payload(&value).headers(headers);
        if let Some(key) = &parked.key {
            record = record.key(key);
        }
        producer
            .send(record, Timeout::After(KAFKA_TIMEOUT))
            .await
            .map_err(|(err, _)| err)
            .with_context(|| format!("replaying partition {} offset {}", parked.partition, parked.offset))?;
    }
    Ok(outcome)
}

/// One record read from the dead-letter topic.
struct Parked {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: String,
    /// The original record's headers (the `dlq_*` ones left out).
    headers: Vec<(String, Vec<u8>)>,
}

fn read_to_end(reader: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<Parked>> {
    let metadata = reader.fetch_metadata(Some(topic), KAFKA_TIMEOUT).context("reading topic metadata")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0_i64;
    let mut ends = std::collections::HashMap::new();
    for partition in metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
        let (low, high) =
            reader.fetch_watermarks(topic, partition.id(), KAFKA_TIMEOUT).context("reading watermarks")?;
        if high > low {
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
            remaining += high - low;
            ends.insert(partition.id(), high);
        }
    }
    let mut parked = Vec::new();
    if remaining == 0 {
        return Ok(parked);
    }
    reader.assign(&assignment).context("assigning the dead-letter partitions")?;
    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT * 4;
    while remaining > 0 && std::time::Instant::now() < deadline {
        let Some(message) = reader.poll(Duration::from_millis(500)) else { continue };
        let message = message.context("reading a parked record")?;
        if ends.get(&message.partition()).is_none_or(|end| message.offset() >= *end) {
            continue;
        }
        remaining -= 1;
        let mut reason = String::new();
        let mut headers = Vec::new();
        let mut metadata_only = false;
        if let Some(all) = message.headers() {
            for header in all.iter() {
                let value = header.value.unwrap_or_default();
                match header.key {
                    "dlq_reason" => reason = String::from_utf8_lossy(value).into_owned(),
                    "dlq_metadata_only" => metadata_only = value == b"true",
                    key if key.starts_with("dlq_") => {}
                    key => headers.push((key.to_owned(), value.to_vec())),
                }
            }
        }
        parked.push(Parked {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: if metadata_only { None } else { Some(message.payload().unwrap_or_default().to_vec()) },
            reason,
            headers,
        });
    }
    if remaining > 0 {
        anyhow::bail!("{remaining} parked records could not be read in time");
    }
    Ok(parked)
}
