//! Kafka plumbing shared by the producers, the consumer, the readers and
//! `migrate`: client configuration, the one way to make a producer, and
//! topic creation.

use std::cmp::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

use crate::config::{KafkaArgs, MigrationArgs};
use crate::program::Programs;

mod reader;

pub use reader::{ReadError, TopicReader};

/// A client configuration with the brokers and the operator's extra
/// properties (`CONNECTFLOW_KAFKA_PROPERTIES`), which are applied last so
/// they can override connectflow's defaults.
pub fn client_config(kafka: &KafkaArgs, own: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in own {
        config.set(*key, *value);
    }
    for (key, value) in kafka.properties.pairs() {
        config.set(key, value);
    }
    config
}

/// A producer with connectflow's delivery guarantee: idempotent
/// (`enable.idempotence=true`: librdkafka's own retries never duplicate or
/// reorder a record) and `acks=all` (a record is confirmed only once every
/// in-sync replica has it). Every producer is made here, so none can forget
/// the guarantee. `tuning` is what differs per use (linger, compression,
/// `message.timeout.ms`) and cannot weaken the guarantee; the operator's
/// `CONNECTFLOW_KAFKA_PROPERTIES` still apply last, as in [`client_config`].
/// `what` names the producer in the error ("creating the {what}").
pub fn producer(kafka: &KafkaArgs, what: &str, tuning: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
    let mut own = tuning.to_vec();
    own.extend([("enable.idempotence", "true"), ("acks", "all")]);
    client_config(kafka, &own).create().with_context(|| format!("creating the {what}"))
}

/// What a topic should have, and what a created one gets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicSpec<'a> {
    name: &'a str,
    partitions: i32,
    replication_factor: i32,
    /// -1: the broker's default.
    min_insync_replicas: i32,
    /// -1: forever.
    retention_ms: i64,
}

/// Creates the events, changes, institutions and dead-letter topics when they are missing, with
/// the configured replication factor, `min.insync.replicas` and retention.
/// Existing topics are left as they are (their partition count included),
/// but every setting weaker than configured is reported as a warning and
/// returned, so an operator is never left believing in a durability the
/// topic does not have; so is a retention longer than configured, which
/// keeps personal data longer than the operator decided.
pub async fn ensure_topics(
    kafka: &KafkaArgs,
    migration: &MigrationArgs,
    programs: &Programs,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka, &[]).create().context("creating the Kafka admin client")?;
    // One changes topic per program when the name has `{program}`.
    let mut changes_topics: Vec<String> = programs.iter().map(|p| kafka.changes_topic_for(p.id.as_str())).collect();
    changes_topics.dedup();
    let mut specs = vec![
        TopicSpec {
            name: &kafka.events_topic,
            partitions: migration.topic_partitions,
            replication_factor: migration.topic_replication_factor,
            min_insync_replicas: migration.topic_min_insync_replicas,
            retention_ms: migration.events_retention_ms,
        },
        TopicSpec {
            name: &kafka.dlq_topic,
            partitions: migration.topic_partitions,
            replication_factor: migration.topic_replication_factor,
            min_insync_replicas: migration.topic_min_insync_replicas,
            retention_ms: migration.dlq_retention_ms,
        },
    ];
    specs.push(TopicSpec {
        name: &kafka.institutions_topic,
        partitions: migration.topic_partitions,
        replication_factor: migration.topic_replication_factor,
        min_insync_replicas: migration.topic_min_insync_replicas,
        retention_ms: migration.changes_retention_ms,
    });
    specs.extend(changes_topics.iter().map(|name| TopicSpec {
        name,
        partitions: migration.topic_partitions,
        replication_factor: migration.topic_replication_factor,
        min_insync_replicas: migration.topic_min_insync_replicas,
        retention_ms: migration.changes_retention_ms,
    }));
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
    let min_isr: Vec<String> = specs.iter().map(|s| s.min_insync_replicas.to_string()).collect();
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(retention.iter().zip(&min_isr))
        .map(|(spec, (retention, min_isr))| {
            let topic = NewTopic::new(spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor))
                .set("retention.ms", retention);
            if spec.min_insync_replicas > 0 { topic.set("min.insync.replicas", min_isr) } else { topic }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(topics.iter(), &options).await.context("creating the Kafka topics")?;
    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created Kafka topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            Err((topic, code)) => bail!("creating Kafka topic {topic}: {code}"),
        }
    }
    let mut warnings = Vec::new();
    for spec in specs.iter().filter(|s| existing.iter().any(|e| e == s.name)) {
        for difference in differences(&admin, kafka, spec).await? {
            match &difference {
                Difference::Weaker(text) => {
                    tracing::warn!(
                        topic = spec.name,
                        difference = text,
                        "existing Kafka topic is weaker than configured"
                    );
                }
                Difference::KeepsLonger(text) => tracing::warn!(
                    topic = spec.name,
                    difference = text,
                    "existing Kafka topic keeps data longer than configured"
                ),
            }
            warnings.push(format!("topic {}: {}", spec.name, difference.text()));
        }
    }
    Ok(warnings)
}

/// How an existing topic differs from its spec in a way the operator must hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Difference {
    /// Less durable than configured (fewer replicas, shorter retention).
    Weaker(String),
    /// Keeps records (personal data) longer than configured.
    KeepsLonger(String),
}

impl Difference {
    fn text(&self) -> &str {
        match self {
            Self::Weaker(text) | Self::KeepsLonger(text) => text,
        }
    }
}

/// How an existing topic differs from `spec`, one line per setting.
async fn differences(
    admin: &AdminClient<DefaultClientContext>,
    kafka: &KafkaArgs,
    spec: &TopicSpec<'_>,
) -> anyhow::Result<Vec<Difference>> {
    let mut found = Vec::new();
    let resource = ResourceSpecifier::Topic(spec.name);
    let described = admin
        .describe_configs([&resource], &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))))
        .await
        .context("describing the Kafka topics")?;
    let config = match described.into_iter().next() {
        Some(Ok(config)) => config,
        Some(Err(code)) => bail!("describing Kafka topic {}: {code}", spec.name),
        None => bail!("describing Kafka topic {}: no answer", spec.name),
    };
    let number = |name: &str| config.get(name).and_then(|e| e.value.as_deref()).and_then(|v| v.parse::<i64>().ok());
    if spec.min_insync_replicas > 0
        && let Some(actual) = number("min.insync.replicas")
        && actual < i64::from(spec.min_insync_replicas)
    {
        found.push(Difference::Weaker(format!(
            "min.insync.replicas is {actual}, configured {}",
            spec.min_insync_replicas
        )));
    }
    if let Some(actual) = number("retention.ms") {
        let configured = spec.retention_ms;
        match compare_retention(actual, configured) {
            Ordering::Less => {
                found.push(Difference::Weaker(format!("retention.ms is {actual}, configured {configured}")))
            }
            Ordering::Greater => found.push(Difference::KeepsLonger(format!(
                "retention.ms is {actual}, configured {configured}: keeps records (personal data) longer than \
                 configured; set retention.ms={configured} on the topic (docs/operations.md, \"Topic retention\")"
            ))),
            Ordering::Equal => {}
        }
    }
    if spec.replication_factor > 0 {
        let replicas = replica_count(kafka, spec.name).await?;
        if let Some(replicas) = replicas
            && replicas < spec.replication_factor
        {
            found.push(Difference::Weaker(format!(
                "replication factor is {replicas}, configured {}",
                spec.replication_factor
            )));
        }
    }
    Ok(found)
}

/// Compares a topic's retention with the configured one, `-1` (or any
/// negative value: Kafka's "no limit") being longer than every time.
fn compare_retention(actual: i64, configured: i64) -> Ordering {
    let forever = |ms: i64| if ms < 0 { i64::MAX } else { ms };
    forever(actual).cmp(&forever(configured))
}

/// The fewest replicas any partition of `topic` has.
/// The fewest replicas of any partition of `topic`; `None` while the
/// brokers do not describe its partitions yet (a topic created moments ago,
/// by this run or another process), after a few tries over some seconds.
async fn replica_count(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Option<i32>> {
    let client: BaseConsumer = client_config(kafka, &[]).create().context("creating a Kafka metadata client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        for attempt in 0..10 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let metadata =
                client.fetch_metadata(Some(&topic), Duration::from_secs(30)).context("reading topic metadata")?;
            let fewest = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions())
                .map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX))
                .min();
            if fewest.is_some() {
                return Ok(fewest);
            }
        }
        Ok(None)
    })
    .await
    .context("reading topic metadata")?
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::{Equal, Greater, Less};

    use super::compare_retention;

    #[test]
    fn forever_is_the_longest_retention() {
        assert_eq!(compare_retention(-1, -1), Equal);
        assert_eq!(compare_retention(-1, 604_800_000), Greater, "forever keeps data longer than a week");
        assert_eq!(compare_retention(604_800_000, -1), Less);
        assert_eq!(compare_retention(1000, 2000), Less);
        assert_eq!(compare_retention(2000, 1000), Greater);
        assert_eq!(compare_retention(604_800_000, 604_800_000), Equal);
        assert_eq!(compare_retention(2_592_000_000, 604_800_000), Greater, "30 days against a week");
    }
}
