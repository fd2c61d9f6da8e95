//! A Postgres failover that loses the last transactions (asynchronous
//! replication): the consumer resumes from the positions stored with the
//! state, not from Kafka's committed offsets, and applies what was lost
//! again, once.

use std::time::Duration;

use connectflow::metrics::Metrics;
use connectflow::simulate::flows::FLOWS;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::consumer::{all_applied, assert_projection_matches_history, dead_letters, produce, send_flow};
use crate::helpers::{TestApp, consumer_args, eventually, migration_args, run_consumer, spawn_app, spawn_consumer};

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
    let (token, handle) = spawn_consumer(&app, &group);
    all_applied(&app.pool, &kept, Duration::from_secs(60)).await.expect("first round applied");
    assert_eq!(dead_letters(&app, 1).await.len(), 1, "the poison record is parked");
    let before = eventually(Duration::from_secs(30), || async {
        let positions = stored_positions(&app.pool, &group).await;
        (positions.iter().map(|(_, _, next)| next).sum::<i64>() == first_round as i64).then_some(positions)
    })
    .await
    .expect("the positions cover every record read, the parked one included");
    token.cancel();
    handle.await.expect("join").expect("the consumer stops cleanly");

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

#[tokio::test]
async fn a_consumer_running_through_the_failover_reads_again_what_the_new_primary_lacks() {
    // Arrange: one consumer that stays up, a first round applied.
    let app = spawn_app().await;
    let mut args = consumer_args();
    let group = args.group.clone();
    args.parallelism = 2;
    let metrics = Metrics::new();
    let token = CancellationToken::new();
    let handle = run_consumer(args, app.kafka.clone(), app.pool.clone(), metrics.clone(), token.clone());
    let mut kept = Vec::new();
    for i in 0..4 {
        let customer = format!("84000000{i:02}");
        let count = send_flow(&app, &customer, FLOWS[i % FLOWS.len()].name, 110 + i as u64).await;
        kept.push((customer, count));
    }
    all_applied(&app.pool, &kept, Duration::from_secs(60)).await.expect("first round applied");
    let before = stored_positions(&app.pool, &group).await;

    // A second round applied, then lost by a failover the consumer does not
    // notice: its Kafka client has read past those records.
    let mut lost = Vec::new();
    for i in 0..6 {
        let customer = format!("84000001{i:02}");
        let count = send_flow(&app, &customer, FLOWS[(i + 5) % FLOWS.len()].name, 120 + i as u64).await;
        lost.push((customer, count));
    }
    all_applied(&app.pool, &lost, Duration::from_secs(60)).await.expect("second round applied");
    let lost_customers: Vec<String> = lost.iter().map(|(c, _)| c.clone()).collect();
    lose_transactions(&app.pool, &lost_customers, &group, &before).await;

    // Act: new events arrive on the same partitions (the same customers).
    for (customer, count) in &mut lost {
        let event =
            crate::consumer::record(customer, &format!("1764999999999-after-{customer}"), "institutionSupported");
        crate::consumer::produce_json(&app, customer, &event).await;
        *count += 1;
    }

    // Assert: the lost events are read again and applied once, before and
    // with the new ones.
    all_applied(&app.pool, &lost, Duration::from_secs(60))
        .await
        .expect("what the new primary lacked is applied again while the consumer keeps running");
    assert!(metrics.rewinds.get() >= 1, "the consumer rewound at least one partition");
    let expected: usize = kept.iter().chain(&lost).map(|(_, n)| n).sum();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.expect("count");
    assert_eq!(recorded, expected as i64, "every event recorded exactly once");
    assert_projection_matches_history(&app.pool).await;
    token.cancel();
    handle.await.expect("join").expect("clean stop");
}
