//! `connectflow dlq replay`: publishes parked records back to the events
//! topic once their cause is fixed. Safe to run more than once: the consumer
//! deduplicates events by id, and a late event makes it recompute the
//! customer, so order does not matter.

use std::time::Duration;

use anyhow::Context;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use crate::config::KafkaArgs;
use crate::kafka::{self, ReadError, TopicReader};

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
    let reading = kafka.clone();
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&reading)).await.context("reading the dead-letter topic")??;
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

/// Every record parked up to the dead-letter topic's end as of now; none
/// when the topic does not exist.
fn read_to_end(kafka: &KafkaArgs) -> anyhow::Result<Vec<Parked>> {
    let topic = &kafka.dlq_topic;
    let mut reader = match TopicReader::new(kafka, topic, "connectflow-dlq-replay", "dead-letter topic", KAFKA_TIMEOUT)
    {
        Ok(reader) => reader,
        Err(ReadError::Missing { .. } | ReadError::Unreadable { .. }) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut parked = Vec::new();
    let read = reader.read_to_end(KAFKA_TIMEOUT * 4, |message| parked.push(Parked::from_message(&message)));
    match read {
        Ok(()) => Ok(parked),
        Err(ReadError::Behind { left, .. }) => anyhow::bail!("{left} parked records could not be read in time"),
        Err(err) => Err(err.into()),
    }
}

impl Parked {
    fn from_message(message: &OwnedMessage) -> Self {
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
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: if metadata_only { None } else { Some(message.payload().unwrap_or_default().to_vec()) },
            reason,
            headers,
        }
    }
}
