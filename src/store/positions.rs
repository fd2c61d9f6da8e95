//! The consumer group's positions in the events topic, kept in Postgres with
//! the state they produced (`consumer_positions`).
//!
//! Kafka's committed offset says what a consumer *told Kafka* it applied;
//! after a Postgres failover that lost the last transactions (asynchronous
//! replication), that is more than the new primary holds, and the lost
//! events would never be read again. A position written in the transaction
//! of the batch it covers is lost exactly when the batch is: a consumer that
//! resumes from it re-reads what the database no longer has, and the
//! event-id deduplication keeps what it still has from counting twice.
//!
//! A position written in a transaction of its own is safe too, provided it
//! is written after what it covers is durable: the standby replays the
//! primary's log in order, so it never holds the later transaction without
//! the earlier one. The consumer relies on that for records it parks after a
//! batch's commit (see `consume::lane`).

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Transaction};

use crate::store::error::{StoreError, StoreResultExt};

/// Where a consumer group stands in one partition after some records: the
/// offset of the next record to read (the last settled one + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset of the first of the records this position covers: the
    /// stored position must not be behind it (see [`record`]); 0 to skip
    /// that check.
    pub first_offset: i64,
    /// The offset of the next record to read.
    pub next_offset: i64,
}

/// A stored position behind the first record of a batch: the records in
/// between were applied by this consumer, but the database no longer has
/// them (a failover to a standby that lacked the last transactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionGap {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The stored position: where to read again from.
    pub stored: i64,
    /// The first offset of the batch.
    pub first_offset: i64,
}

impl std::fmt::Display for PositionGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} partition {}: stored {}, batch from {}",
            self.topic, self.partition, self.stored, self.first_offset
        )
    }
}

/// A consumer group's new positions, to record with the batch that reached
/// them.
#[derive(Debug, Clone, Default)]
pub struct Positions<'a> {
    /// The consumer group (`CONNECTFLOW_CONSUMER_GROUP`).
    pub group: &'a str,
    /// One per partition the batch read.
    pub partitions: Vec<Position<'a>>,
}

impl Positions<'_> {
    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

/// Records the positions in the caller's transaction, replacing what was
/// stored, and fails with [`StoreError::PositionsBehind`] (the caller rolls
/// back) when a stored position is behind the first record the new one
/// covers.
///
/// That gap is how a consumer that kept running through a failover learns
/// that the new primary lost what it applied: its Kafka client has read
/// past the lost records, and only the stored position still points at
/// them. The consumer reads the partition again from there. (A position
/// moves back, harmlessly, when a consumer that lost a partition, a
/// revocation that timed out, finishes late: its successor re-reads a few
/// records, deduplicated.)
pub async fn record(tx: &mut Transaction<'_, Postgres>, positions: &Positions<'_>) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = positions.partitions.iter().map(|p| p.topic).collect();
    let partitions: Vec<i32> = positions.partitions.iter().map(|p| p.partition).collect();
    let firsts: Vec<i64> = positions.partitions.iter().map(|p| p.first_offset).collect();
    let offsets: Vec<i64> = positions.partitions.iter().map(|p| p.next_offset).collect();
    // `stored` reads the rows as they were before this statement's upsert.
    let gaps = sqlx::query!(
        r#"
        WITH batch AS (
            SELECT * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[])
                AS t(topic, partition, first_offset, next_offset)
        ), stored AS (
            SELECT p.topic, p.partition, p.next_offset FROM consumer_positions p
            JOIN batch b ON b.topic = p.topic AND b.partition = p.partition
            WHERE p.consumer_group = $1
        ), written AS (
            INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset, updated_at)
            SELECT $1, b.topic, b.partition, b.next_offset, now() FROM batch b
            ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET
                next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
        )
        SELECT s.topic AS "topic!", s.partition AS "partition!", s.next_offset AS "stored!",
               b.first_offset AS "first_offset!"
        FROM stored s JOIN batch b ON b.topic = s.topic AND b.partition = s.partition
        WHERE s.next_offset < b.first_offset
        "#,
        positions.group,
        &topics as &[&str],
        &partitions,
        &firsts,
        &offsets,
    )
    .fetch_all(&mut **tx)
    .await
    .store("recording the consumer's positions")?;
    if gaps.is_empty() {
        return Ok(());
    }
    Err(StoreError::PositionsBehind {
        gaps: gaps
            .into_iter()
            .map(|g| PositionGap {
                topic: g.topic,
                partition: g.partition,
                stored: g.stored,
                first_offset: g.first_offset,
            })
            .collect(),
    })
}

/// Records the positions in a transaction of their own (for records settled
/// without a batch transaction: parked ones).
pub async fn record_alone(pool: &PgPool, positions: &Positions<'_>) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await.store("beginning the positions transaction")?;
    record(&mut tx, positions).await?;
    tx.commit().await.store("committing the consumer's positions")?;
    Ok(())
}

/// The group's stored positions in `topic`, by partition.
pub async fn load(pool: &PgPool, group: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
    let rows = sqlx::query!(
        "SELECT partition, next_offset FROM consumer_positions WHERE consumer_group = $1 AND topic = $2",
        group,
        topic,
    )
    .fetch_all(pool)
    .await
    .store("loading the consumer's positions")?;
    Ok(rows.into_iter().map(|row| (row.partition, row.next_offset)).collect())
}
