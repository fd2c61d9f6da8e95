//! Reading a topic up to its end: `simulate --verify-changes` (and
//! `make chaos`) read the changes topic in steps while the relays catch up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::client_config;
use crate::config::KafkaArgs;

/// How long one poll waits before the deadline is checked again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why a topic could not be read (to its end).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Kafka does not know the topic, or it has no partitions.
    #[error("the {what} {topic} does not exist")]
    Missing {
        /// What the topic is ("changes topic").
        what: &'static str,
        /// Its name.
        topic: String,
    },
    /// Kafka describes the topic with an error (not authorised, leader
    /// unknown).
    #[error("the {what} {topic} cannot be read: {code:?}")]
    Unreadable {
        /// What the topic is.
        what: &'static str,
        /// Its name.
        topic: String,
        /// Kafka's error.
        code: RDKafkaRespErr,
    },
    /// Some partitions were not read to their end in time.
    #[error(
        "{topic} partitions {behind:?} not read to their end within {within:?}{}",
        last_error.as_ref().map(|err| format!(" (last error: {err})")).unwrap_or_default()
    )]
    Behind {
        /// The topic.
        topic: String,
        /// The partitions not read to their end.
        behind: Vec<i32>,
        /// Offsets left to read in those partitions.
        left: i64,
        /// The time given.
        within: Duration,
        /// The last error a poll returned, if any.
        last_error: Option<String>,
    },
    /// A request to Kafka failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
}

/// Reads every partition of a topic from its beginning, in steps: each
/// [`read_to_end`](Self::read_to_end) goes on from where the previous one
/// stopped, up to the partitions' high watermarks at that moment. It joins
/// no group (its partitions are assigned) and commits nothing. Blocking:
/// call it from `spawn_blocking`.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    /// How long one metadata or watermark request may take.
    request_timeout: Duration,
    /// The next offset to read, per partition.
    next: BTreeMap<i32, i64>,
    /// Records polled past the end of the step they were read in: they
    /// belong to the next step.
    carried: Vec<OwnedMessage>,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader").field("topic", &self.topic).field("next", &self.next).finish_non_exhaustive()
    }
}

impl TopicReader {
    /// A reader of every partition of `topic` (with the operator's extra
    /// Kafka properties: TLS, SASL), calling itself `group` to the broker
    /// (for its ACLs). `what` names the topic in errors ("changes topic").
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        group: &str,
        what: &'static str,
        request_timeout: Duration,
    ) -> Result<Self, ReadError> {
        let kafka_error = |context: String| move |source| ReadError::Kafka { context, source };
        let consumer: BaseConsumer = client_config(
            kafka,
            &[("group.id", group), ("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")],
        )
        .create()
        .map_err(kafka_error(format!("creating the {what} reader")))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), request_timeout)
            .map_err(kafka_error(format!("reading the metadata of {topic}")))?;
        let missing = || ReadError::Missing { what, topic: topic.to_owned() };
        let described = metadata.topics().iter().find(|t| t.name() == topic).ok_or_else(missing)?;
        if let Some(code) = described.error() {
            return Err(ReadError::Unreadable { what, topic: topic.to_owned(), code });
        }
        let partitions: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
        if partitions.is_empty() {
            return Err(missing());
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .map_err(kafka_error(format!("assigning {topic} partition {partition}")))?;
        }
        consumer.assign(&assignment).map_err(kafka_error(format!("assigning the partitions of {topic}")))?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            request_timeout,
            next: partitions.into_iter().map(|p| (p, 0)).collect(),
            carried: Vec::new(),
        })
    }

    /// Reads on up to every partition's high watermark as of now, handing
    /// each record below it to `each`, in partition order; an error when
    /// that takes longer than `within`. A poll error (a broker moving a
    /// partition, a connection dropped) is waited out: the client recovers
    /// by itself, and the deadline bounds the wait.
    pub fn read_to_end(&mut self, within: Duration, mut each: impl FnMut(OwnedMessage)) -> Result<(), ReadError> {
        let deadline = Instant::now() + within;
        let mut ends = BTreeMap::new();
        for (partition, next) in &mut self.next {
            let (low, high) =
                self.consumer.fetch_watermarks(&self.topic, *partition, self.request_timeout).map_err(|source| {
                    ReadError::Kafka {
                        context: format!("reading the watermarks of {} partition {partition}", self.topic),
                        source,
                    }
                })?;
            // Records below the low watermark were deleted (retention).
            *next = (*next).max(low);
            ends.insert(*partition, high);
        }
        let below_end =
            |message: &OwnedMessage| ends.get(&message.partition()).is_some_and(|end| message.offset() < *end);
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.carried).into_iter().partition(below_end);
        now.into_iter().for_each(&mut each);
        self.carried = later;
        let mut last_error = None;
        loop {
            let behind: Vec<(i32, i64)> = self
                .next
                .iter()
                .filter_map(|(partition, next)| {
                    ends.get(partition).filter(|end| next < end).map(|end| (*partition, end - next))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ReadError::Behind {
                    topic: self.topic.clone(),
                    left: behind.iter().map(|(_, left)| left).sum(),
                    behind: behind.into_iter().map(|(partition, _)| partition).collect(),
                    within,
                    last_error,
                });
            }
            match self.consumer.poll(POLL_INTERVAL) {
                None => {}
                Some(Err(err)) => last_error = Some(err.to_string()),
                Some(Ok(message)) => {
                    self.next.insert(message.partition(), message.offset() + 1);
                    let message = message.detach();
                    if below_end(&message) {
                        each(message);
                    } else {
                        self.carried.push(message);
                    }
                }
            }
        }
    }
}
