//! `migrate`'s topics: created with the configured durability and
//! retention, and an existing topic weaker than configured, or keeping data
//! longer, is reported, never silently kept.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::helpers::{migration_args, services, unique_kafka_args};

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin")
}

/// The topic's setting as described now (`None` for a topic the broker
/// does not know).
async fn described_value(brokers: &str, topic: &str, name: &str) -> Option<String> {
    let resource = ResourceSpecifier::Topic(topic);
    let described = admin(brokers).describe_configs([&resource], &AdminOptions::new()).await.expect("describe");
    let config = described.into_iter().next()?.ok()?;
    config.get(name)?.value.clone()
}

/// The setting of a topic that exists: a topic just created may not be
/// known yet to the broker that answers, so ask again for a while.
async fn config_value(brokers: &str, topic: &str, name: &str) -> Option<String> {
    crate::helpers::eventually(Duration::from_secs(10), || described_value(brokers, topic, name)).await
}

#[tokio::test]
async fn topics_are_created_with_the_configured_retention_and_min_insync_replicas() {
    let kafka = unique_kafka_args(&services().await.kafka_brokers);
    let mut migration = migration_args();
    migration.topic_min_insync_replicas = 1;
    let warnings = connectflow::kafka::ensure_topics(&kafka, &migration, &crate::helpers::default_programs())
        .await
        .expect("topics");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config_value(&kafka.brokers, &kafka.events_topic, "retention.ms").await.as_deref(), Some("604800000"));
    assert_eq!(config_value(&kafka.brokers, &kafka.changes_topic, "retention.ms").await.as_deref(), Some("2592000000"));
    assert_eq!(config_value(&kafka.brokers, &kafka.dlq_topic, "retention.ms").await.as_deref(), Some("7776000000"));
    assert_eq!(config_value(&kafka.brokers, &kafka.events_topic, "min.insync.replicas").await.as_deref(), Some("1"));
    let again = connectflow::kafka::ensure_topics(&kafka, &migration, &crate::helpers::default_programs())
        .await
        .expect("again");
    assert!(again.is_empty(), "a topic as configured is not reported: {again:?}");
}

#[tokio::test]
async fn an_existing_topic_weaker_than_configured_is_reported_with_the_difference() {
    let kafka = unique_kafka_args(&services().await.kafka_brokers);
    let weak = NewTopic::new(&kafka.events_topic, 1, TopicReplication::Fixed(1)).set("retention.ms", "60000");
    let created = admin(&kafka.brokers)
        .create_topics([&weak], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .expect("create");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let mut migration = migration_args();
    migration.topic_replication_factor = 1;
    let warnings = connectflow::kafka::ensure_topics(&kafka, &migration, &crate::helpers::default_programs())
        .await
        .expect("topics");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&kafka.events_topic)
            && warnings[0].contains("retention.ms is 60000, configured 604800000"),
        "{warnings:?}"
    );

    // Asking for more replicas than the topic has is reported too (the
    // topic exists, so it is not created again).
    migration.topic_replication_factor = 3;
    let warnings = connectflow::kafka::ensure_topics(&kafka, &migration, &crate::helpers::default_programs())
        .await
        .expect("topics");
    assert!(
        warnings.iter().any(|w| w.contains(&kafka.events_topic) && w.contains("replication factor is 1, configured 3")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn an_existing_topic_keeping_data_longer_than_configured_is_reported_and_left_alone() {
    let kafka = unique_kafka_args(&services().await.kafka_brokers);
    let forever = NewTopic::new(&kafka.events_topic, 1, TopicReplication::Fixed(1)).set("retention.ms", "-1");
    let ninety_days =
        NewTopic::new(&kafka.changes_topic, 1, TopicReplication::Fixed(1)).set("retention.ms", "7776000000");
    let created = admin(&kafka.brokers)
        .create_topics([&forever, &ninety_days], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .expect("create");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let warnings = connectflow::kafka::ensure_topics(&kafka, &migration_args(), &crate::helpers::default_programs())
        .await
        .expect("topics");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    for (topic, expected) in [
        (&kafka.events_topic, "retention.ms is -1, configured 604800000: keeps records (personal data) longer"),
        (
            &kafka.changes_topic,
            "retention.ms is 7776000000, configured 2592000000: keeps records (personal data) longer",
        ),
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(&format!("topic {topic}: ")) && w.contains(expected)),
            "{topic}: {warnings:?}"
        );
    }
    // migrate never changes an existing topic: the operator decides.
    assert_eq!(config_value(&kafka.brokers, &kafka.events_topic, "retention.ms").await.as_deref(), Some("-1"));
}

#[tokio::test]
async fn a_changes_topic_with_program_is_created_for_each_program() {
    let mut kafka = unique_kafka_args(&services().await.kafka_brokers);
    kafka.changes_topic = format!("{}.{{program}}", kafka.changes_topic);
    let mut migration = migration_args();
    migration.topic_min_insync_replicas = 1;
    let programs = crate::programs::two_programs();
    let warnings = connectflow::kafka::ensure_topics(&kafka, &migration, &programs).await.expect("topics");
    assert!(warnings.is_empty(), "{warnings:?}");
    for program in ["acme", "bank-b"] {
        let topic = kafka.changes_topic_for(program);
        assert!(topic.ends_with(&format!(".{program}")), "{topic}");
        // Created by migrate, with its settings: not auto-created on first use.
        assert_eq!(config_value(&kafka.brokers, &topic, "min.insync.replicas").await.as_deref(), Some("1"), "{topic}");
        assert_eq!(
            config_value(&kafka.brokers, &topic, "retention.ms").await.as_deref(),
            Some("2592000000"),
            "{topic}"
        );
    }
    assert_eq!(
        described_value(&kafka.brokers, &kafka.changes_topic, "retention.ms").await,
        None,
        "no topic named with the placeholder"
    );
}
