//! A lane: batches the records of its partitions, applies them, isolates and
//! parks what cannot be stored, stores offsets.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::record::{Decoded, NEWER_SCHEMA, decode, header_event_id, header_schema_version, key_text};
use super::{Assignment, Callbacks, Queued, Rewind};
use crate::backoff::Backoff;
use crate::dead_letter::{DeadLetters, ParkError, ParkedAs};
use crate::health::consumer::ConsumerHealth;
use crate::metrics::{Metrics, SuppressedLabels};
use crate::outbox::{LEASE, RelayHandle};
use crate::store::apply::{Published, apply_published};
use crate::store::changes::Announce;
use crate::store::error::StoreError;
use crate::store::positions::{self, Position, PositionGap, Positions};

/// What every lane shares.
pub(super) struct Shared {
    pub consumer: Arc<BaseConsumer<Callbacks>>,
    pub dead_letters: DeadLetters,
    pub pool: PgPool,
    /// The consumer group, whose positions are recorded with each batch.
    pub group: String,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ConsumerHealth>,
    pub assignment: Arc<Assignment>,
    pub batch_max: usize,
    /// This consumer's schema version (`event::SCHEMA_VERSION`; lowered by
    /// tests): records of a higher one are parked as `newer_schema`.
    pub schema_version: u32,
    pub linger: Duration,
    pub lanes: usize,
    /// This process's relay: a batch's changes are handed off to it when
    /// its queue has room, else it is woken to claim them.
    pub changes_recorded: RelayHandle,
    /// Asks the poll thread to read a partition again from an offset.
    pub rewind: mpsc::UnboundedSender<Rewind>,
    /// The offset each partition was last rewound to: a batch that still
    /// starts after it once read again from there is not a loss but a gap
    /// in the topic's offsets (records deleted by the retention), and is
    /// applied rather than rewound again.
    pub rewound: std::sync::Mutex<HashMap<(String, i32), i64>>,
}

/// Partitions whose gap between the stored position and the batch is
/// accepted (see [`Shared::rewound`]).
type Accepted = HashSet<(String, i32)>;

/// The dead-letter reason of an event for a customer of another program
/// (docs/operations.md, "Programs").
pub const PROGRAM_CONFLICT: &str = "program_conflict";

/// A running lane's task (it only ends with shutdown).
type LaneTask = JoinHandle<Result<(), ParkError>>;

/// The lanes, before they run.
pub(super) struct Lanes(Arc<Shared>);

/// Where one record of a batch stands.
enum Item {
    /// Decoded, not applied yet.
    Pending(Box<Decoded>),
    /// Applied or parked: its offset may be stored.
    Settled,
}

/// Why a batch stopped before it was settled.
enum Failure {
    /// Postgres failed in a way that can pass: retry the batch.
    Transient(StoreError),
    /// A customer's stored state is in the way: stall on the batch (never
    /// park its events), retrying until it is resolved.
    StoredState(StoreError),
    /// The stored positions are behind the batch: Postgres lost what this
    /// consumer applied (a failover). Read those partitions again.
    Rewind(Vec<PositionGap>),
    /// Shutdown.
    Stop(ParkError),
}

impl From<ParkError> for Failure {
    fn from(err: ParkError) -> Self {
        Self::Stop(err)
    }
}

impl Lanes {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    pub fn count(&self) -> usize {
        self.0.lanes
    }

    /// Starts every lane; returns their queues and tasks.
    pub fn spawn(self, stop: &CancellationToken) -> (Vec<mpsc::UnboundedSender<Queued>>, Vec<LaneTask>) {
        let mut senders = Vec::with_capacity(self.0.lanes);
        let mut tasks = Vec::with_capacity(self.0.lanes);
        for index in 0..self.0.lanes {
            // Unbounded in count: the queue budget in bytes bounds it.
            let (sender, receiver) = mpsc::unbounded_channel();
            senders.push(sender);
            tasks.push(tokio::spawn(self.0.clone().run(index, receiver, stop.clone())));
        }
        (senders, tasks)
    }
}

impl Shared {
    /// One lane: takes a first record, then more until the batch is full or
    /// the linger time has passed, settles the batch, and again. Stops after
    /// the batch in hand when `stop` is cancelled; queued records are left
    /// for the partition's next owner.
    async fn run(
        self: Arc<Self>,
        index: usize,
        mut records: mpsc::UnboundedReceiver<Queued>,
        stop: CancellationToken,
    ) -> Result<(), ParkError> {
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                first = records.recv() => match first {
                    Some(first) => first,
                    None => return Ok(()),
                },
            };
            let mut batch = Vec::with_capacity(self.batch_max.min(1024));
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.batch_max {
                match tokio::time::timeout_at(deadline, records.recv()).await {
                    Ok(Some(queued)) => batch.push(queued),
                    Ok(None) | Err(_) => break,
                }
            }
            self.health.batch_started(index, batch[0].polled_at);
            let settled = self.settle(index, batch, &stop).await;
            self.health.batch_done(index);
            match settled {
                Ok(()) => {}
                Err(ParkError::Interrupted) => return Ok(()),
            }
        }
    }

    /// Applies or parks every record of the batch that still belongs to
    /// this consumer, then stores their offsets. Transient failures are
    /// retried with capped backoff; what was applied or parked before stays
    /// so (a re-applied event is a duplicate, a parked record is not parked
    /// twice).
    async fn settle(&self, lane: usize, batch: Vec<Queued>, stop: &CancellationToken) -> Result<(), ParkError> {
        let started = Instant::now();
        let size = batch.len();
        let mut batch = batch;
        let mut items: Vec<Item> = Vec::with_capacity(batch.len());
        let mut decoded = false;
        let mut backoff = Backoff::default();
        let mut accepted = Accepted::new();
        loop {
            // Held while applying and storing offsets: a revocation waits
            // for it, so offsets of a revoked partition are never stored
            // after the revocation completed.
            let applying = self.assignment.applying.clone().read_owned().await;
            let before = batch.len();
            let mut kept = Vec::with_capacity(batch.len());
            let mut kept_items = Vec::with_capacity(items.len());
            let mut old_items = std::mem::take(&mut items).into_iter();
            for queued in batch.drain(..) {
                let item = old_items.next();
                if self.assignment.is_current(queued.message.topic(), queued.message.partition(), queued.generation) {
                    kept.push(queued);
                    kept_items.extend(item);
                }
            }
            batch = kept;
            items = kept_items;
            let dropped = before - batch.len();
            if dropped > 0 {
                self.metrics.records_dropped_on_revoke.inc_by(dropped as u64);
            }
            if batch.is_empty() {
                return Ok(());
            }
            if !decoded {
                items = self.decode_all(lane, &batch, stop).await?;
                decoded = true;
            }
            match self.apply_isolating(lane, &batch, &mut items, &accepted, stop).await {
                Ok(()) => {
                    self.store_offsets(&batch);
                    drop(applying);
                    self.metrics.batch_size.observe(size as f64);
                    self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(Failure::Stop(err)) => return Err(err),
                Err(Failure::Rewind(gaps)) => {
                    drop(applying);
                    // The records of the rewound partitions are dropped at
                    // the top of the loop (no longer current) and read again.
                    if !self.rewind(lane, gaps, &mut accepted, stop).await? && !backoff.wait(stop).await {
                        return Err(ParkError::Interrupted);
                    }
                }
                Err(Failure::Transient(err)) => {
                    drop(applying);
                    tracing::warn!(lane, error = %err, retry_in = ?backoff.delay(), "applying a batch failed; retrying");
                    if !backoff.wait(stop).await {
                        return Err(ParkError::Interrupted);
                    }
                }
                Err(Failure::StoredState(err)) => {
                    drop(applying);
                    // No progress is reported, so `/livez` fails once the
                    // stall lasts; the offsets stay where they are.
                    tracing::error!(
                        lane,
                        error = %err,
                        retry_in = ?backoff.delay(),
                        "a customer's stored state is in the way; the lane stalls and retries (the event is not at fault)"
                    );
                    let waited = {
                        let _stalled = StalledOnStoredState::new(&self.metrics);
                        backoff.wait(stop).await
                    };
                    if !waited {
                        return Err(ParkError::Interrupted);
                    }
                }
            }
        }
    }

    /// Has the poll thread read the gapped partitions again from their
    /// stored positions, except those already read again from there (then
    /// the gap is accepted: see [`Shared::rewound`]). False when a rewind
    /// failed (the caller backs off and retries the batch).
    async fn rewind(
        &self,
        lane: usize,
        gaps: Vec<PositionGap>,
        accepted: &mut Accepted,
        stop: &CancellationToken,
    ) -> Result<bool, ParkError> {
        let mut all_done = true;
        for gap in gaps {
            let key = (gap.topic.clone(), gap.partition);
            let again = self.rewound.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).copied();
            if again == Some(gap.stored) {
                tracing::warn!(
                    lane,
                    %gap,
                    "read again from the stored position, the partition still starts later: records there were deleted (retention); applying from here"
                );
                accepted.insert(key);
                continue;
            }
            tracing::warn!(lane, %gap, "Postgres lost transactions this consumer applied (a failover?); reading them again");
            let (done, answer) = tokio::sync::oneshot::channel();
            let request = Rewind { topic: gap.topic, partition: gap.partition, offset: gap.stored, done };
            if self.rewind.send(request).is_err() {
                return Err(ParkError::Interrupted);
            }
            let rewound = tokio::select! {
                answer = answer => answer.unwrap_or(false),
                () = stop.cancelled() => return Err(ParkError::Interrupted),
            };
            if rewound {
                self.metrics.rewinds.inc();
                self.rewound.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, gap.stored);
            } else {
                all_done = false;
            }
        }
        Ok(all_done)
    }

    /// Decodes every record, parking the poison ones.
    async fn decode_all(
        &self,
        lane: usize,
        batch: &[Queued],
        stop: &CancellationToken,
    ) -> Result<Vec<Item>, ParkError> {
        let mut items = Vec::with_capacity(batch.len());
        for queued in batch {
            let message = &queued.message;
            match decode(message.payload(), header_schema_version(message), self.schema_version) {
                Ok(decoded) => items.push(Item::Pending(Box::new(decoded))),
                Err(poison) => {
                    if poison.reason == NEWER_SCHEMA {
                        // Not recorded, so not deduplicated: `dlq replay`
                        // after the upgrade applies it.
                        tracing::warn!(
                            own_version = self.schema_version,
                            "a record written by a newer connectflow; parked for dlq replay after the upgrade"
                        );
                        self.metrics.newer_schema_parked.inc();
                    }
                    let parked = ParkedAs {
                        reason: &poison.reason,
                        event_id: header_event_id(&queued.message),
                        customer_id: key_text(&queued.message),
                    };
                    self.dead_letters.park(&queued.message, &parked, stop).await?;
                    self.health.progressed(lane);
                    items.push(Item::Settled);
                }
            }
        }
        Ok(items)
    }

    /// Applies the pending events. When Postgres refuses a part permanently
    /// the part is split in halves, down to single events, and each event
    /// it refuses alone is parked: a bad record costs its neighbours about
    /// 2·log2(batch) extra transactions, never a stall.
    ///
    /// Each part's transaction records the group's positions after the
    /// part's last record: parts are applied in order, so every record
    /// before it is settled. Records settled without such a transaction
    /// (parked ones, after the last one that recorded positions) get their
    /// positions in a transaction of their own at the end, once parked.
    async fn apply_isolating(
        &self,
        lane: usize,
        batch: &[Queued],
        items: &mut [Item],
        accepted: &Accepted,
        stop: &CancellationToken,
    ) -> Result<(), Failure> {
        // The position stored before this batch must be its first offset,
        // and after each of its transactions where that one left it.
        let mut recorded: HashMap<(&str, i32), i64> =
            offset_ranges(batch).into_iter().map(|(key, (first, _))| (key, first)).collect();
        let mut parts: Vec<Range<usize>> = Vec::new();
        parts.push(0..items.len());
        while let Some(part) = parts.pop() {
            let pending: Vec<usize> = part.clone().filter(|&i| matches!(items[i], Item::Pending(_))).collect();
            let events: Vec<Published<'_>> = pending
                .iter()
                .filter_map(|&i| match &items[i] {
                    Item::Pending(decoded) => Some(Published {
                        event: &decoded.event,
                        bytes: decoded
                            .keep_published
                            .then(|| batch[i].message.payload().and_then(|p| std::str::from_utf8(p).ok()))
                            .flatten(),
                    }),
                    Item::Settled => None,
                })
                .collect();
            if events.is_empty() {
                continue;
            }
            let positions = self.positions(&batch[part.clone()], accepted, &recorded);
            // A place in the relay's queue first: changes leased to it
            // must reach it once committed.
            let slot = self.changes_recorded.reserve();
            let announce = match slot {
                Some(_) => Announce::HandOff { lease: LEASE },
                None => Announce::InProcess,
            };
            match apply_published(&self.pool, events, &positions, announce).await {
                Ok(mut outcome) => {
                    let handed_off = outcome.handed_off.take();
                    let handed = handed_off.as_ref().map_or(0, |h| h.changes.len() as u64);
                    if outcome.changes > handed {
                        self.changes_recorded.wake();
                    }
                    // Committed: to the relay at once, after the wake-up (a
                    // hand-off settling after a later wake-up claims again).
                    if let (Some(hand_off), Some(slot)) = (handed_off, slot) {
                        slot.send(hand_off);
                    }
                    if outcome.positions_recorded {
                        for p in &positions.partitions {
                            recorded.insert((p.topic, p.partition), p.next_offset);
                        }
                    }
                    // Events for a customer of another program were neither
                    // recorded nor applied: parked, they settle too.
                    for conflict in &outcome.conflicts {
                        for &i in &pending {
                            let Item::Pending(decoded) = &items[i] else { continue };
                            let event = &decoded.event;
                            if event.event_id != conflict.event_id || event.program_id != conflict.program_id {
                                continue;
                            }
                            tracing::warn!(
                                event_id = %event.event_id,
                                customer_id = %event.customer_id,
                                program = %conflict.program_id,
                                owner = %conflict.owner,
                                "event for a customer of another program; parked"
                            );
                            let parked = ParkedAs {
                                reason: PROGRAM_CONFLICT,
                                event_id: Some(&event.event_id),
                                customer_id: Some(event.customer_id.as_str()),
                            };
                            self.dead_letters.park(&batch[i].message, &parked, stop).await?;
                            self.metrics.program_conflicts.inc();
                        }
                    }
                    self.metrics.events_applied.inc_by(outcome.applied);
                    self.metrics.duplicates_skipped.inc_by(outcome.duplicates);
                    self.metrics.recomputations.inc_by(outcome.recomputed);
                    self.metrics.customers_erased.inc_by(outcome.erased);
                    if outcome.suppressed > 0 {
                        let erased = SuppressedLabels { reason: "erased" };
                        self.metrics.events_suppressed.get_or_create(&erased).inc_by(outcome.suppressed);
                    }
                    for i in pending {
                        items[i] = Item::Settled;
                    }
                    self.health.progressed(lane);
                }
                Err(StoreError::PositionsBehind { gaps }) => return Err(Failure::Rewind(gaps)),
                Err(err) if err.is_transient() => return Err(Failure::Transient(err)),
                Err(err) if err.is_stored_state() => return Err(Failure::StoredState(err)),
                Err(err) if pending.len() == 1 => {
                    let i = pending[0];
                    if let Item::Pending(decoded) = &items[i] {
                        let event = &decoded.event;
                        let reason = format!("postgres refused the event: {err}");
                        let parked = ParkedAs {
                            reason: &reason,
                            event_id: Some(&event.event_id),
                            customer_id: Some(event.customer_id.as_str()),
                        };
                        self.dead_letters.park(&batch[i].message, &parked, stop).await?;
                    }
                    items[i] = Item::Settled;
                    self.metrics.isolated_records.inc();
                    self.health.progressed(lane);
                }
                Err(err) => {
                    tracing::info!(lane, events = pending.len(), error = %err, "a part failed permanently; splitting it");
                    let middle = pending[pending.len() / 2];
                    // Popped in reverse: the first half is applied first.
                    parts.push(middle..part.end);
                    parts.push(part.start..middle);
                }
            }
        }
        let mut rest = self.positions(batch, accepted, &recorded);
        rest.partitions.retain(|p| recorded.get(&(p.topic, p.partition)).is_none_or(|&at| at < p.next_offset));
        if !rest.is_empty() {
            // Rare: parked records. Failing here retries the batch, whose
            // records are all settled by now.
            positions::record_alone(&self.pool, &rest).await.map_err(|err| match err {
                StoreError::PositionsBehind { gaps } => Failure::Rewind(gaps),
                err => Failure::Transient(err),
            })?;
        }
        Ok(())
    }

    /// The group's positions after these records: per partition, the
    /// offset after the last one, and the offset the stored position must
    /// not be behind: `recorded` (the batch's first offset, or where its
    /// earlier transactions left the position), else the first record's;
    /// none for an `accepted` gap.
    fn positions<'a>(
        &'a self,
        records: &'a [Queued],
        accepted: &Accepted,
        recorded: &HashMap<(&str, i32), i64>,
    ) -> Positions<'a> {
        Positions {
            group: &self.group,
            partitions: offset_ranges(records)
                .into_iter()
                .map(|((topic, partition), (first, next_offset))| {
                    let first_offset = if accepted.contains(&(topic.to_owned(), partition)) {
                        0
                    } else {
                        recorded.get(&(topic, partition)).copied().unwrap_or(first)
                    };
                    Position { topic, partition, first_offset, next_offset }
                })
                .collect(),
        }
    }

    /// Stores, per partition, the offset after the batch's last record (in
    /// librdkafka, which commits it to Kafka: for lag monitoring and tools;
    /// the consumer resumes from the positions in Postgres).
    fn store_offsets(&self, batch: &[Queued]) {
        let next = next_offsets(batch);
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(err) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %err, "building the offset list");
            }
        }
        if let Err(err) = self.consumer.store_offsets(&offsets) {
            // Only when the revocation wait timed out: the partition's new
            // owner re-reads from the last commit, and the history
            // deduplicates.
            tracing::info!(error = %err, "storing offsets failed (partition revoked?)");
        }
    }
}

/// Per partition, the offset after the last of these records.
fn next_offsets(records: &[Queued]) -> HashMap<(&str, i32), i64> {
    offset_ranges(records).into_iter().map(|(key, (_, next))| (key, next)).collect()
}

/// Per partition, the offset of the first of these records and the offset
/// after the last one.
fn offset_ranges(records: &[Queued]) -> HashMap<(&str, i32), (i64, i64)> {
    let mut ranges: HashMap<(&str, i32), (i64, i64)> = HashMap::new();
    for queued in records {
        let message = &queued.message;
        let offset = message.offset();
        let entry = ranges.entry((message.topic(), message.partition())).or_insert((offset, offset + 1));
        entry.0 = entry.0.min(offset);
        entry.1 = entry.1.max(offset + 1);
    }
    ranges
}

/// Counts a lane in `connectflow_consumer_stalled_on_stored_state` while it
/// waits to retry a batch a customer's stored state holds up.
struct StalledOnStoredState<'a>(&'a Metrics);

impl<'a> StalledOnStoredState<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.stalled_on_stored_state.inc();
        Self(metrics)
    }
}

impl Drop for StalledOnStoredState<'_> {
    fn drop(&mut self) {
        self.0.stalled_on_stored_state.dec();
    }
}
