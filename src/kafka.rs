//! Kafka plumbing shared by the producer, the consumer and `migrate`:
//! client configuration and topic creation.

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{KafkaArgs, MigrationArgs};

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

/// Creates the events and dead-letter topics when they are missing.
/// Existing topics are left as they are (their partition count included).
pub async fn ensure_topics(kafka: &KafkaArgs, migration: &MigrationArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka, &[]).create().context("creating the Kafka admin client")?;
    let topics = [
        NewTopic::new(
            &kafka.events_topic,
            migration.topic_partitions,
            TopicReplication::Fixed(migration.topic_replication_factor),
        ),
        NewTopic::new(
            &kafka.dlq_topic,
            migration.topic_partitions,
            TopicReplication::Fixed(migration.topic_replication_factor),
        ),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(topics.iter(), &options).await.context("creating the Kafka topics")?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created Kafka topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic, "Kafka topic exists"),
            Err((topic, code)) => bail!("creating Kafka topic {topic}: {code}"),
        }
    }
    Ok(())
}
