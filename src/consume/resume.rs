//! Where a newly assigned partition is read from: the group's position
//! stored in Postgres with the state it produced ([`crate::store::positions`]),
//! rather than Kafka's committed offset.
//!
//! The two agree while Postgres keeps what it committed. After a failover
//! that lost the last transactions, the stored position is behind Kafka's:
//! the events the new primary lost are read and applied again (the history
//! deduplicates what it still has). A partition without a stored position (a
//! new group, the first start after the upgrade that brought them) starts
//! from Kafka's committed offset, or `auto.offset.reset` as before.

use std::collections::{BTreeSet, HashMap};

use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::store::positions;

/// What the assignment callback needs to find the stored positions.
pub(super) struct Resume {
    pub pool: PgPool,
    pub group: String,
    /// The runtime the lookup runs on (the callback runs on the poll thread).
    pub runtime: tokio::runtime::Handle,
    /// Cancelled when the consumer stops: a lookup waiting for Postgres
    /// gives up then.
    pub closing: CancellationToken,
}

impl Resume {
    /// Sets the offset of each newly assigned partition that has a stored
    /// position to that position, before librdkafka starts fetching it.
    ///
    /// Waits for Postgres while it is away (nothing could be applied
    /// anyway): starting from Kafka's committed offset instead could skip
    /// what a failover lost. Gives up only when the consumer stops.
    pub fn seek_to_stored(&self, partitions: &TopicPartitionList) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Not the poll thread: a consumer closed from async code (built
            // but never run, or dropped after `run`) that librdkafka hands
            // a last assignment while it leaves. Nothing reads from it any
            // more, and blocking here would stall the runtime.
            tracing::debug!("an assignment while the consumer closes; not seeking");
            return;
        }
        let topics: BTreeSet<String> = partitions.elements().iter().map(|p| p.topic().to_owned()).collect();
        let mut stored: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        for topic in topics {
            let Some(loaded) = self.runtime.block_on(self.load(&topic)) else {
                tracing::warn!("consumer stopping before its stored positions were read; not seeking");
                return;
            };
            stored.insert(topic, loaded);
        }
        let mut resumed = Vec::new();
        for mut element in partitions.elements() {
            let Some(&next) = stored.get(element.topic()).and_then(|t| t.get(&element.partition())) else {
                continue;
            };
            match element.set_offset(Offset::Offset(next)) {
                Ok(()) => resumed.push(format!("{}@{next}", element.partition())),
                Err(err) => tracing::warn!(partition = element.partition(), error = %err, "setting the start offset"),
            }
        }
        if resumed.is_empty() {
            tracing::info!("no stored positions for the assigned partitions; starting from Kafka's committed offsets");
        } else {
            tracing::info!(positions = %resumed.join(","), "resuming from the positions stored in Postgres");
        }
    }

    /// The group's stored positions in `topic`, retried until Postgres
    /// answers; `None` when the consumer stops first.
    async fn load(&self, topic: &str) -> Option<HashMap<i32, i64>> {
        let mut backoff = Backoff::default();
        loop {
            match positions::load(&self.pool, &self.group, topic).await {
                Ok(loaded) => return Some(loaded),
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        retry_in = ?backoff.delay(),
                        "reading the stored positions failed; the assignment waits for Postgres"
                    );
                    if !backoff.wait(&self.closing).await {
                        return None;
                    }
                }
            }
        }
    }
}
