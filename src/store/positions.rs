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

/// Where a consumer group stands in one partition: the offset of the next
/// record to read (the last settled one + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to read.
    pub next_offset: i64,
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
/// stored. A position only moves back when a consumer that lost a partition
/// (a revocation that timed out) finishes late: its successor then re-reads
/// a few records, deduplicated, never skips one.
pub async fn record(tx: &mut Transaction<'_, Postgres>, positions: &Positions<'_>) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = positions.partitions.iter().map(|p| p.topic).collect();
    let partitions: Vec<i32> = positions.partitions.iter().map(|p| p.partition).collect();
    let offsets: Vec<i64> = positions.partitions.iter().map(|p| p.next_offset).collect();
    sqlx::query!(
        r#"
        INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset, updated_at)
        SELECT $1, t.topic, t.partition, t.next_offset, now()
        FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS t(topic, partition, next_offset)
        ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET
            next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
        "#,
        positions.group,
        &topics as &[&str],
        &partitions,
        &offsets,
    )
    .execute(&mut **tx)
    .await
    .store("recording the consumer's positions")?;
    Ok(())
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
