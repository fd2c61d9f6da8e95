//! Which partitions this consumer owns, and the hand-over on a rebalance.
//!
//! Every record is stamped with the *generation* of its partition's
//! assignment when it was polled. A revocation waits until no lane is in the
//! middle of applying a batch (lanes hold [`Assignment::applying`] for
//! reading while they apply and store offsets; the revocation takes it for
//! writing), then forgets the revoked partitions. Records of those
//! partitions still queued in lanes no longer match a current generation and
//! are dropped unapplied: the partition's next owner reads them again from
//! the committed offset, which librdkafka commits as the revocation
//! completes. So a partition is only ever written by its current owner, and
//! the committed offset never passes a record that was not applied.
//!
//! Correctness does not rest on this alone: if the wait times out (a lane
//! stuck on a dead Postgres connection), the advisory locks and the event-id
//! deduplication in the store keep two writers of one customer correct.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::TopicPartitionList;

/// How long a revocation waits for lanes to finish what they are applying.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// The partitions this consumer owns, each with the generation it was
/// assigned in.
#[derive(Debug)]
pub struct Assignment {
    owned: Mutex<HashMap<(String, i32), u64>>,
    next_generation: AtomicU64,
    /// Held for reading by a lane while it applies a batch and stores its
    /// offsets; for writing by a revocation.
    pub applying: Arc<tokio::sync::RwLock<()>>,
    /// The runtime the lanes run on, which waits for the write lock.
    runtime: tokio::runtime::Handle,
}

impl Assignment {
    /// An empty assignment whose revocations wait on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Self { owned: Mutex::default(), next_generation: AtomicU64::new(0), applying: Arc::default(), runtime }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), u64>> {
        self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records newly assigned partitions.
    pub fn assign(&self, partitions: &TopicPartitionList) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut owned = self.owned();
        for p in partitions.elements() {
            owned.insert((p.topic().to_owned(), p.partition()), generation);
        }
    }

    /// Waits (bounded) for lanes to finish what they apply, then forgets the
    /// revoked partitions. Runs on the thread that polls Kafka.
    pub fn revoke(&self, partitions: &TopicPartitionList) {
        let guard = if tokio::runtime::Handle::try_current().is_ok() {
            // Called from async code (the consumer dropped on a runtime
            // thread): blocking here could block the very lanes waited for.
            self.applying.clone().try_write_owned().ok()
        } else {
            // The write lock queues ahead of lanes asking for it later, so a
            // busy consumer cannot starve the revocation.
            let lock = self.applying.clone();
            let waiting =
                self.runtime.spawn(async move { tokio::time::timeout(REVOKE_WAIT, lock.write_owned()).await });
            futures::executor::block_on(waiting).ok().and_then(Result::ok)
        };
        if guard.is_none() {
            tracing::warn!(
                waited = ?REVOKE_WAIT,
                "a lane is still applying at revocation; handing over anyway (locks and deduplication keep it correct)"
            );
        }
        let mut owned = self.owned();
        for p in partitions.elements() {
            owned.remove(&(p.topic().to_owned(), p.partition()));
        }
        drop(owned);
        drop(guard);
    }

    /// Gives an owned partition a new generation, so that the records
    /// polled before are no longer current (a rewind: the partition is read
    /// again from an earlier offset). False when the partition is not owned.
    pub fn renew(&self, topic: &str, partition: i32) -> bool {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        match self.owned().get_mut(&(topic.to_owned(), partition)) {
            Some(current) => {
                *current = generation;
                true
            }
            None => false,
        }
    }

    /// The generation of the partition's current assignment, if owned.
    pub fn generation(&self, topic: &str, partition: i32) -> Option<u64> {
        self.owned().get(&(topic.to_owned(), partition)).copied()
    }

    /// Whether a record stamped with `generation` still belongs to us.
    pub fn is_current(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.generation(topic, partition) == Some(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Offset;

    fn partitions(ids: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for id in ids {
            list.add_partition_offset("t", *id, Offset::Invalid).expect("add");
        }
        list
    }

    #[test]
    fn records_of_a_revoked_partition_are_no_longer_current_even_after_reassignment() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().expect("runtime");
        let assignment = Assignment::new(runtime.handle().clone());
        assignment.assign(&partitions(&[0, 1]));
        let g0 = assignment.generation("t", 0).expect("owned");
        let g1 = assignment.generation("t", 1).expect("owned");
        assert!(assignment.is_current("t", 0, g0));
        assignment.revoke(&partitions(&[0]));
        assert!(!assignment.is_current("t", 0, g0), "revoked");
        assert!(assignment.is_current("t", 1, g1), "untouched");
        assignment.assign(&partitions(&[0]));
        assert!(!assignment.is_current("t", 0, g0), "an old record stays stale after the partition comes back");
        assert!(assignment.generation("t", 0).is_some_and(|g| g != g0));
    }

    #[test]
    fn a_revocation_waits_for_a_lane_that_is_applying() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().expect("runtime");
        let assignment = Arc::new(Assignment::new(runtime.handle().clone()));
        assignment.assign(&partitions(&[0]));
        let reading = runtime.block_on(assignment.applying.clone().read_owned());
        let revoker = {
            let assignment = assignment.clone();
            std::thread::spawn(move || {
                assignment.revoke(&partitions(&[0]));
                std::time::Instant::now()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(assignment.generation("t", 0).is_some(), "not revoked while a lane applies");
        // The revocation returns only after the lane let go (compared by
        // instants, not by a duration a slow thread start would shorten).
        let released_at = std::time::Instant::now();
        drop(reading);
        let revoked_at = revoker.join().expect("revoker");
        assert!(revoked_at >= released_at, "the revocation returned before the lane let go");
        assert!(assignment.generation("t", 0).is_none());
    }
}
