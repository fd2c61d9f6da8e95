//! Dead letters: parking records the consumer cannot apply on the
//! dead-letter topic, in a way that cannot wedge the consumer either, and
//! publishing them back once their cause is fixed ([`replay`]).
//!
//! The original record is parked as it is, with the reason and its origin in
//! headers. Only when the dead-letter topic refuses *the record itself*
//! (too large with the added headers, say) is a metadata-only record parked
//! instead: no value, the origin, the reason, the event and customer ids and
//! the original size, so an operator can find the record on the events
//! topic. Any other failure (the broker away, the topic missing or not
//! writable yet) is retried with capped backoff for as long as it lasts:
//! the lane holds its batch without progress, so `/livez` fails after
//! `CONNECTFLOW_CONSUMER_STALL_SECONDS` ([`crate::health::consumer`]), and
//! the record is parked whole once the topic takes it. A transient fault
//! never costs a payload.

pub mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::KafkaArgs;
use crate::kafka;
use crate::metrics::Metrics;

/// How long one send may wait for the broker.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `dlq_reason` header.
const MAX_REASON_LEN: usize = 1024;

/// Why parking did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    /// Shutdown came first; the record's offset was not stored.
    #[error("stopped while parking a record")]
    Interrupted,
}

/// What the consumer knows about a record it parks.
#[derive(Debug, Clone, Default)]
pub struct ParkedAs<'a> {
    /// Why it is parked.
    pub reason: &'a str,
    /// Its event id, when it decoded far enough to have one.
    pub event_id: Option<&'a str>,
    /// Its customer id, likewise.
    pub customer_id: Option<&'a str>,
}

/// The dead-letter producer.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    /// An idempotent, `acks=all` producer for the dead-letter topic.
    pub fn new(kafka: &KafkaArgs, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let timeout_ms = SEND_TIMEOUT.as_millis().to_string();
        // Never has the broker create the topic on a first write: it would
        // get the broker's defaults, not the dead-letter retention that
        // `migrate` sets. A missing topic is retried until it exists.
        let producer = kafka::producer(
            kafka,
            "dead-letter producer",
            &[("message.timeout.ms", &timeout_ms), ("allow.auto.create.topics", "false")],
        )?;
        Ok(Self { producer, topic: kafka.dlq_topic.clone(), metrics })
    }

    /// Parks `message`, returning once Kafka has either the record or (when
    /// the topic refuses the record itself) its metadata: only then may its
    /// offset be stored. Retries everything else until it succeeds or
    /// `shutdown`.
    pub async fn park(
        &self,
        message: &OwnedMessage,
        parked: &ParkedAs<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), ParkError> {
        let reason = bounded(parked.reason);
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            event_id = parked.event_id.map(|id| bounded_to(id, 128)),
            customer_id = parked.customer_id.map(|id| bounded_to(id, 64)),
            reason,
            "parking a record on the dead-letter topic"
        );
        let started = Instant::now();
        let origin = Origin::of(message, reason, parked);
        let mut backoff = Backoff::default();
        let mut full = true;
        loop {
            let headers = origin.headers(full, message.headers());
            let mut record = FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if full && let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let sent = tokio::select! {
                () = shutdown.cancelled() => return Err(ParkError::Interrupted),
                sent = self.producer.send(record, Timeout::After(SEND_TIMEOUT)) => sent,
            };
            let err = match sent {
                Ok(_) => {
                    self.metrics.dead_letters.inc();
                    if !full {
                        self.metrics.dead_letters_metadata_only.inc();
                    }
                    return Ok(());
                }
                Err((err, _)) => err,
            };
            if full && refuses_the_record(&err) {
                tracing::warn!(error = %err, "the dead-letter topic refuses the record itself; parking its metadata only");
                full = false;
                continue;
            }
            tracing::warn!(
                error = %err,
                topic = %self.topic,
                retrying_for = ?started.elapsed(),
                retry_in = ?backoff.delay(),
                "dead-letter publish failed; retrying (the lane stalls meanwhile)"
            );
            if !backoff.wait(shutdown).await {
                return Err(ParkError::Interrupted);
            }
        }
    }
}

/// Where a parked record came from, as headers.
struct Origin {
    pairs: Vec<(&'static str, String)>,
}

impl Origin {
    fn of(message: &OwnedMessage, reason: &str, parked: &ParkedAs<'_>) -> Self {
        let mut pairs = vec![
            ("dlq_reason", reason.to_owned()),
            ("dlq_source_topic", message.topic().to_owned()),
            ("dlq_source_partition", message.partition().to_string()),
            ("dlq_source_offset", message.offset().to_string()),
            ("dlq_original_size", message.payload().map_or(0, <[u8]>::len).to_string()),
        ];
        if let Some(id) = parked.event_id {
            pairs.push(("dlq_event_id", bounded_to(id, 128).to_owned()));
        }
        if let Some(id) = parked.customer_id {
            pairs.push(("dlq_customer_id", bounded_to(id, 64).to_owned()));
        }
        Self { pairs }
    }

    /// The origin headers, then (for a full record) the original's own.
    fn headers(&self, full: bool, original: Option<&OwnedHeaders>) -> OwnedHeaders {
        let original = original.filter(|_| full);
        let extra = original.map_or(0, |h| h.count());
        let mut headers = OwnedHeaders::new_with_capacity(self.pairs.len() + extra + 1);
        for (key, value) in &self.pairs {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        headers = headers
            .insert(Header { key: "dlq_metadata_only", value: Some(if full { "false" } else { "true" }.as_bytes()) });
        if let Some(original) = original {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        headers
    }
}

/// Errors that say the topic refuses this record itself, so that sending it
/// again cannot help: its size or its encoding. A missing topic, missing
/// rights or a broker away are the topic's state, which can pass: retried.
/// The outbox relay uses it too, for the changes topic.
pub(crate) fn refuses_the_record(err: &KafkaError) -> bool {
    let code = match err {
        KafkaError::MessageProduction(code) => *code,
        _ => return false,
    };
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
    )
}

fn bounded(text: &str) -> &str {
    bounded_to(text, MAX_REASON_LEN)
}

/// At most `max` bytes, cut at a character boundary.
fn bounded_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_at_character_boundaries() {
        assert_eq!(bounded_to("abcdef", 3), "abc");
        assert_eq!(bounded_to("aé", 2), "a");
        assert_eq!(bounded_to("short", 64), "short");
    }

    #[test]
    fn only_refusals_of_the_record_itself_skip_to_metadata() {
        assert!(refuses_the_record(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(refuses_the_record(&KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)));
        for topic_state in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(!refuses_the_record(&KafkaError::MessageProduction(topic_state)), "{topic_state:?} can pass");
        }
        assert!(!refuses_the_record(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!refuses_the_record(&KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure)));
    }
}
