//! `connectflow dlq replay`: publishes parked records back to the events
//! topic once their cause is fixed. Safe to run more than once: the consumer
//! deduplicates events by id, and a late event makes it recompute the
//! customer, so order does not matter.
//!
//! It streams the dead-letter topic (a window of records in flight, never
//! the whole topic in memory) and remembers how far it got: its position is
//! committed in a consumer group of its own once the events topic has
//! confirmed every record before it, so the next run starts after what was
//! replayed (or looked at and left out). Each `--reason-contains` filter
//! keeps its own position; `--from-beginning` ignores it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::config::KafkaArgs;
use crate::kafka;

/// How long metadata, watermark and commit requests may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a read may wait for the next record below the end before the
/// replay gives up (the broker is gone, or the topic was truncated).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Records published and not yet confirmed, at most.
const IN_FLIGHT: usize = 64;

/// Confirmed records between two commits of the position.
const COMMIT_EVERY: u64 = 500;

/// The consumer group that keeps a replay's position; a filter gets its
/// own (`connectflow-dlq-replay-` and 16 hex digits of its SHA-256), so a
/// filtered replay never hides records from a full one.
pub const PROGRESS_GROUP: &str = "connectflow-dlq-replay";

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

/// One replay's choices (`connectflow dlq replay`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay<'a> {
    /// Replay only records whose `dlq_reason` contains this text.
    pub reason_contains: Option<&'a str>,
    /// List what would be replayed; publish nothing, remember nothing.
    pub dry_run: bool,
    /// Start at the topic's beginning instead of where the last replay
    /// (with the same filter) stopped.
    pub from_beginning: bool,
}

/// [`Replay::run`] from the remembered position.
pub async fn replay(kafka: &KafkaArgs, reason_contains: Option<&str>, dry_run: bool) -> anyhow::Result<ReplayOutcome> {
    Replay { reason_contains, dry_run, from_beginning: false }.run(kafka).await
}

impl Replay<'_> {
    /// The consumer group that keeps this replay's position.
    pub fn progress_group(&self) -> String {
        match self.reason_contains {
            None => PROGRESS_GROUP.to_owned(),
            Some(filter) => {
                let digest = Sha256::digest(filter.as_bytes());
                format!("{PROGRESS_GROUP}-{}", &hex::encode(digest)[..16])
            }
        }
    }

    /// Reads the records parked on the dead-letter topic from the
    /// remembered position up to the topic's end as of the start and,
    /// unless `dry_run`, publishes each one that has a value (and whose
    /// `dlq_reason` contains the filter, when given) to the events topic
    /// with its key and original headers. The position moves past a record
    /// only once it and every record before it are confirmed (or left
    /// out); a failure keeps what was confirmed and the next run goes on
    /// from there.
    pub async fn run(&self, kafka: &KafkaArgs) -> anyhow::Result<ReplayOutcome> {
        let topic = kafka.dlq_topic.as_str();
        let group = self.progress_group();
        let consumer: StreamConsumer = kafka::client_config(
            kafka,
            &[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
            ],
        )
        .create()
        .context("creating the dead-letter topic reader")?;
        let Some(ends) = self.assign(&consumer, topic)? else {
            return Ok(ReplayOutcome::default());
        };
        let producer = kafka::producer(kafka, "producer", &[])?;
        let progress = Progress { topic: topic.to_owned(), next: BTreeMap::new(), since_commit: 0 };
        let mut walk = Walk { ends, progress, outcome: ReplayOutcome::default() };
        let result = walk.stream(self, &consumer, &producer, &kafka.events_topic).await;
        // What was confirmed is remembered even when the run failed.
        let committed = if self.dry_run { Ok(()) } else { walk.progress.commit(&consumer) };
        result?;
        committed?;
        Ok(walk.outcome)
    }

    /// Assigns every partition of `topic` at this replay's starting
    /// position; returns each partition's end (high watermark) as of now,
    /// only for those with records left. `None` when the topic does not
    /// exist (nothing was ever parked).
    fn assign(&self, consumer: &StreamConsumer, topic: &str) -> anyhow::Result<Option<BTreeMap<i32, i64>>> {
        let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT).context("reading the dead-letter topic")?;
        let Some(described) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        if described.error().is_some() || described.partitions().is_empty() {
            return Ok(None);
        }
        let mut wanted = TopicPartitionList::new();
        for partition in described.partitions() {
            wanted.add_partition(topic, partition.id());
        }
        let committed = if self.from_beginning {
            TopicPartitionList::new()
        } else {
            consumer.committed_offsets(wanted.clone(), KAFKA_TIMEOUT).context("reading the replay's position")?
        };
        let mut assignment = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for partition in described.partitions().iter().map(|p| p.id()) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
                .with_context(|| format!("reading the watermarks of {topic} partition {partition}"))?;
            let start = match committed.find_partition(topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => offset.max(low),
                _ => low,
            };
            if start < high {
                ends.insert(partition, high);
            }
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .with_context(|| format!("assigning {topic} partition {partition}"))?;
        }
        consumer.assign(&assignment).context("assigning the dead-letter topic")?;
        Ok(Some(ends))
    }
}

/// One replay under way.
struct Walk {
    /// The end of each partition still to read.
    ends: BTreeMap<i32, i64>,
    progress: Progress,
    outcome: ReplayOutcome,
}

/// A record handled and, when published, its confirmation to wait for.
struct Handled {
    partition: i32,
    offset: i64,
    delivery: Option<(DeliveryFuture, String)>,
}

impl Walk {
    async fn stream(
        &mut self,
        replay: &Replay<'_>,
        consumer: &StreamConsumer,
        producer: &FutureProducer,
        events_topic: &str,
    ) -> anyhow::Result<()> {
        let mut in_flight: VecDeque<Handled> = VecDeque::new();
        while !self.ends.is_empty() {
            if in_flight.len() >= IN_FLIGHT
                && let Some(oldest) = in_flight.pop_front()
            {
                self.confirm(oldest, consumer).await?;
            }
            let message = tokio::time::timeout(READ_TIMEOUT, consumer.recv())
                .await
                .context("no parked record arrived in time")?
                .context("reading the dead-letter topic")?;
            let (partition, offset) = (message.partition(), message.offset());
            let Some(end) = self.ends.get(&partition).copied() else { continue };
            if offset >= end {
                continue;
            }
            if offset + 1 >= end {
                self.ends.remove(&partition);
            }
            let delivery = self.handle(replay, &message, producer, events_topic)?;
            in_flight.push_back(Handled { partition, offset, delivery });
        }
        while let Some(oldest) = in_flight.pop_front() {
            self.confirm(oldest, consumer).await?;
        }
        Ok(())
    }

    /// Counts `message`; publishes it when it is to be replayed.
    fn handle(
        &mut self,
        replay: &Replay<'_>,
        message: &BorrowedMessage<'_>,
        producer: &FutureProducer,
        events_topic: &str,
    ) -> anyhow::Result<Option<(DeliveryFuture, String)>> {
        let parked = Parked::of(message);
        self.outcome.read += 1;
        let at = format!("partition {} offset {}", message.partition(), message.offset());
        if parked.metadata_only {
            self.outcome.metadata_only += 1;
            println!("metadata only, not replayable: {at}");
            return Ok(None);
        }
        if replay.reason_contains.is_some_and(|needle| !parked.reason.contains(needle)) {
            self.outcome.filtered_out += 1;
            return Ok(None);
        }
        self.outcome.replayed += 1;
        if replay.dry_run {
            println!("would replay: {at} ({})", parked.reason);
            return Ok(None);
        }
        let mut record =
            FutureRecord::to(events_topic).payload(message.payload().unwrap_or_default()).headers(parked.headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let delivery =
            producer.send_result(record).map_err(|(err, _)| err).with_context(|| format!("replaying {at}"))?;
        Ok(Some((delivery, at)))
    }

    /// Waits for `handled`'s confirmation, then moves the position past it.
    async fn confirm(&mut self, handled: Handled, consumer: &StreamConsumer) -> anyhow::Result<()> {
        if let Some((delivery, at)) = handled.delivery {
            delivery
                .await
                .context("the producer went away")?
                .map_err(|(err, _)| err)
                .with_context(|| format!("replaying {at}"))?;
        }
        self.progress.past(handled.partition, handled.offset);
        if self.progress.since_commit >= COMMIT_EVERY {
            self.progress.commit(consumer)?;
        }
        Ok(())
    }
}

/// The next offset to read per partition, for every record confirmed or
/// left out, in order.
#[derive(Debug)]
struct Progress {
    /// The dead-letter topic.
    topic: String,
    next: BTreeMap<i32, i64>,
    since_commit: u64,
}

impl Progress {
    fn past(&mut self, partition: i32, offset: i64) {
        self.next.insert(partition, offset + 1);
        self.since_commit += 1;
    }

    /// Commits the position in the replay's group (synchronously: the run
    /// is over, or the next records depend on it).
    fn commit(&mut self, consumer: &StreamConsumer) -> anyhow::Result<()> {
        let topic = self.topic.as_str();
        if self.next.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in &self.next {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .with_context(|| format!("recording the position in partition {partition}"))?;
        }
        consumer.commit(&offsets, CommitMode::Sync).context("remembering the replay's position")?;
        self.since_commit = 0;
        Ok(())
    }
}

/// What the replay needs of a parked record's headers.
struct Parked {
    reason: String,
    metadata_only: bool,
    /// The original record's headers (the `dlq_*` ones left out).
    headers: OwnedHeaders,
}

impl Parked {
    fn of(message: &BorrowedMessage<'_>) -> Self {
        let (mut reason, mut metadata_only, mut headers) = (String::new(), false, OwnedHeaders::new());
        if let Some(all) = message.headers() {
            for header in all.iter() {
                let value = header.value.unwrap_or_default();
                match header.key {
                    "dlq_reason" => reason = String::from_utf8_lossy(value).into_owned(),
                    "dlq_metadata_only" => metadata_only = value == b"true",
                    key if key.starts_with("dlq_") => {}
                    key => headers = headers.insert(Header { key, value: Some(value) }),
                }
            }
        }
        Self { reason, metadata_only, headers }
    }
}
