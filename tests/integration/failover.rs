//! A Postgres failover that loses the last transactions (asynchronous
//! replication): the consumer resumes from the positions stored with the
//! state, not from Kafka's committed offsets, and applies what was lost
//! again, once.

use std::time::Duration;

use connectflow::simulate::flows::FLOWS;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::consumer::{all_applied, assert_projection_matches_history, dead_letters, produce, send_flow};
use crate::helpers::{TestApp, migration_args, spawn_app, spawn_consumer};

/// Runs a consumer of `group` until the customers show their events, then
/// stops it (which commits its offsets to Kafka).
async fn consume_until_applied(app: &TestApp, group: &str, expected: &[(String, usize)]) {
    let (token, handle) = spawn_consumer(app, group);
    all_applied(&app.pool, expected, Duration::from_secs(60)).await.expect("every event applied");
    token.cancel();
    handle.await.expect("join").expect("the consumer stops cleanly");
}

/// The group's stored positions: `(topic, partition, next_offset)`.
async fn stored_positions(pool: &PgPool, group: &str) -> Vec<(String, i32, i64)> {
    sqlx::query_as(
        "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer_group = $1 ORDER BY 1, 2",
    )
    .bind(group)
    .fetch_all(pool)
    .await
    .expect("positions")
}

/// The sum over the events topic's partitions of the group's offsets
/// committed to Kafka.
fn committed_in_kafka(app: &TestApp, group: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.kafka.brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..migration_args().topic_partitions {
        partitions.add_partition_offset(&app.kafka.events_topic, partition, Offset::Invalid).expect("partition");
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed offsets");
    committed.elements().iter().filter_map(|p| p.offset().to_raw()).filter(|o| *o >= 0).sum()
}

/// What the new primary lacks after a failover that lost the transactions
/// of these customers' events: their rows everywhere, and the positions as
/// they stood before.
async fn lose_transactions(pool: &PgPool, customers: &[String], group: &str, before: &[(String, i32, i64)]) {
    let mut tx = pool.begin().await.expect("begin");
    for table in [
        "connect_events",
        "customers",
        "institution_logins",
        "accounts",
        "lifecycle_changes",
        "lifecycle_outbox",
        "customer_history_snapshots",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE customer_id = ANY($1)")))
            .bind(customers)
            .execute(&mut *tx)
            .await
            .expect("losing rows");
    }
    sqlx::query("DELETE FROM consumer_positions WHERE consumer_group = $1")
        .bind(group)
        .execute(&mut *tx)
        .await
        .expect("positions");
    for (topic, partition, next_offset) in before {
        sqlx::query(
            "INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(&mut *tx)
        .await
        .expect("positions as before");
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn events_a_failover_lost_are_applied_again_from_the_positions_stored_with_the_state() {
    // Arrange: a first round applied, ending with a record that is parked.
    let app = spawn_app().await;
    let group = format!("cf-test-group-{}", uuid::Uuid::new_v4().simple());
    let mut kept = Vec::new();
    for i in 0..6 {
        let customer = format!("83000000{i:02}");
        let count = send_flow(&app, &customer, FLOWS[i % FLOWS.len()].name, 80 + i as u64).await;
        kept.push((customer, count));
    }
    produce(&app.kafka.brokers, &app.kafka.events_topic, "8300000099", b"not an event").await;
    let first_round = kept.iter().map(|(_, n)| n).sum::<usize>() + 1;
    consume_until_applied(&app, &group, &kept).await;
    assert_eq!(dead_letters(&app, 1).await.len(), 1, "the poison record is parked");
    let before = stored_positions(&app.pool, &group).await;
    assert_eq!(
        before.iter().map(|(_, _, next)| next).sum::<i64>(),
        first_round as i64,
        "the positions cover every record read, the parked one included: {before:?}"
    );

    // A second round, applied and committed to Kafka...
    let mut lost = Vec::new();
    for i in 0..6 {
        let customer = format!("83000001{i:02}");
        let count = send_flow(&app, &customer, FLOWS[(i + 3) % FLOWS.len()].name, 90 + i as u64).await;
        lost.push((customer, count));
    }
    consume_until_applied(&app, &group, &lost).await;
    let second_round: usize = lost.iter().map(|(_, n)| n).sum();
    let total = (first_round + second_round) as i64;
    assert_eq!(committed_in_kafka(&app, &group), total, "Kafka's offsets are committed past the second round");

    // ...whose transactions the failover lost.
    let lost_customers: Vec<String> = lost.iter().map(|(c, _)| c.clone()).collect();
    lose_transactions(&app.pool, &lost_customers, &group, &before).await;

    // Act: the consumer restarts on the new primary.
    let (token, handle) = spawn_consumer(&app, &group);

    // Assert: the lost events are applied again, each once; the rest is
    // not applied twice and the parked record is not parked again.
    all_applied(&app.pool, &lost, Duration::from_secs(60))
        .await
        .expect("the events the failover lost are applied again from the stored positions");
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.expect("count");
    assert_eq!(recorded, total - 1, "every event recorded exactly once (the parked record is not an event)");
    assert_projection_matches_history(&app.pool).await;
    let gaps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT customer_id, count(*), max(version) FROM lifecycle_changes GROUP BY customer_id \
         HAVING count(*) <> max(version) OR min(version) <> 1",
    )
    .fetch_all(&app.pool)
    .await
    .expect("versions");
    assert!(gaps.is_empty(), "every customer's changes numbered 1..n again: {gaps:?}");
    let after = stored_positions(&app.pool, &group).await;
    assert_eq!(after.iter().map(|(_, _, next)| next).sum::<i64>(), total, "positions at the end again: {after:?}");
    token.cancel();
    handle.await.expect("join").expect("clean stop");
    assert_eq!(dead_letters(&app, 1).await.len(), 1, "the parked record was not read again");
}
