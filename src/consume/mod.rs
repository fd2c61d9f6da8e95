//! The lifecycle consumer: a Kafka consumer group that applies batches of
//! normalised events to Postgres, effectively once, and never stalls on a
//! bad record.
//!
//! Delivery is at least once; the effect is once because the event id is the
//! primary key of the history and the insert of the events and the state
//! change they cause share one transaction ([`crate::store::apply`]).
//!
//! How it is put together:
//! - One thread polls Kafka ([`BaseConsumer`], so librdkafka's rebalance
//!   callbacks run there and may wait) and hands each record to a *lane* by
//!   partition. A customer's events share a partition, so one lane writes a
//!   customer, in order. The lanes' queues hold at most
//!   `CONNECTFLOW_CONSUMER_QUEUE_BYTES` in total: the poll thread waits for
//!   room.
//! - Each lane batches records, applies them in one transaction and only
//!   then stores their offsets (`enable.auto.offset.store=false`);
//!   librdkafka commits stored offsets periodically, on revocation, and
//!   (explicitly, here) on shutdown. The same transaction records the
//!   group's position per partition in Postgres
//!   ([`crate::store::positions`]), and a newly assigned partition starts
//!   there ([`resume`]): after a Postgres failover that lost the last
//!   transactions, the consumer re-reads what the new primary lacks, where
//!   Kafka's committed offset would skip it.
//! - A record that cannot become an event (poison) is parked on the
//!   dead-letter topic ([`crate::dead_letter`]), and so is a record written
//!   by a newer connectflow (`newer_schema`: a higher `schema_version`
//!   header, or a `connectflow.*` type it does not know), unrecorded, for
//!   `dlq replay` after the upgrade. Parking retries until the topic takes
//!   the record (a lane waiting on it is stalled). A batch that fails
//!   *permanently* in Postgres (bad data) is split in halves until the
//!   offending records are isolated; those are parked, the rest applied. A
//!   *transient* failure (Postgres away) retries the batch with capped
//!   backoff, and `/livez` turns 503 when a lane makes no progress for
//!   `CONNECTFLOW_CONSUMER_STALL_SECONDS` ([`ConsumerHealth`]). A failure
//!   caused by a customer's *stored* state (a lifecycle of a newer version,
//!   a history that does not decode, a change version already recorded) is
//!   not the events' fault: the batch is retried the same way, never parked,
//!   and the lane counts in `connectflow_consumer_stalled_on_stored_state`.
//! - On a rebalance, a revocation waits for lanes to finish the batch they
//!   apply and queued records of revoked partitions are dropped
//!   ([`assignment`]), so a partition is only written by its current owner.
//!
//! The consumer is one part of the `consume` process; the outbox relay its
//! lanes wake, the authorization expiry job and the operations listener run
//! beside it ([`crate::cli::ConsumeProcess`] puts them together).

pub(crate) mod assignment;
mod lane;
pub(crate) mod record;
mod resume;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerArgs, KafkaArgs};
use crate::dead_letter::DeadLetters;
use crate::health::consumer::ConsumerHealth;
use crate::kafka::client_config;
use crate::metrics::{Metrics, PartitionLabels};
use crate::outbox::RelayHandle;
use assignment::Assignment;
use lane::Lanes;
use resume::Resume;

/// Bookkeeping bytes counted per queued record on top of its key, value and
/// headers.
const RECORD_OVERHEAD_BYTES: usize = 256;
/// How long one poll of Kafka waits before checking for shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// librdkafka's callbacks: statistics into the lag gauges, rebalances into
/// the [`Assignment`], new partitions to their stored positions.
struct Callbacks {
    metrics: Arc<Metrics>,
    assignment: Arc<Assignment>,
    resume: Resume,
}

impl ClientContext for Callbacks {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag
                // of -1 means unknown.
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .get_or_create(&PartitionLabels { topic: topic.clone(), partition })
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked; draining lanes");
                self.assignment.revoke(partitions);
            }
            // Before librdkafka takes the list: the offsets set here are
            // where it starts fetching.
            Rebalance::Assign(partitions) => self.resume.seek_to_stored(partitions),
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions assigned");
                self.assignment.assign(partitions);
            }
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    let ids: Vec<String> = partitions.elements().iter().map(|p| p.partition().to_string()).collect();
    ids.join(",")
}

/// A lane's request to the poll thread: read a partition again from
/// `offset`, because Postgres lost what this consumer applied after it.
pub(crate) struct Rewind {
    topic: String,
    partition: i32,
    offset: i64,
    /// Told whether the partition was rewound (false: not owned any more,
    /// or the seek failed).
    done: tokio::sync::oneshot::Sender<bool>,
}

/// A record on its way to a lane.
pub(crate) struct Queued {
    message: OwnedMessage,
    /// The generation of its partition's assignment when it was polled.
    generation: u64,
    polled_at: Instant,
    /// Its share of the queue budget, returned when the record is dropped.
    _bytes: OwnedSemaphorePermit,
}

/// The lifecycle consumer, built and ready to run: the same shape as the
/// HTTP side's [`crate::app::HttpServer`].
pub struct LifecycleConsumer {
    consumer: Arc<BaseConsumer<Callbacks>>,
    lanes: Lanes,
    assignment: Arc<Assignment>,
    health: Arc<ConsumerHealth>,
    queue_bytes: usize,
    /// The lanes' rewind requests, served by the poll thread.
    rewinds: mpsc::UnboundedReceiver<Rewind>,
    /// Cancelled when `run` stops (ends a stored-position lookup waiting
    /// for Postgres in the assignment callback).
    closing: CancellationToken,
}

impl std::fmt::Debug for LifecycleConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleConsumer").field("lanes", &self.lanes.count()).finish_non_exhaustive()
    }
}

impl LifecycleConsumer {
    /// Creates the Kafka clients and subscribes. `changes_recorded` is the
    /// relay of this process: each batch that recorded lifecycle changes
    /// hands them off to it, or wakes it to claim them.
    pub async fn build(
        args: &ConsumerArgs,
        kafka: &KafkaArgs,
        pool: PgPool,
        metrics: Arc<Metrics>,
        changes_recorded: RelayHandle,
    ) -> anyhow::Result<Self> {
        let assignment = Arc::new(Assignment::new(tokio::runtime::Handle::current()));
        let closing = CancellationToken::new();
        let resume = Resume {
            pool: pool.clone(),
            group: args.group.clone(),
            runtime: tokio::runtime::Handle::current(),
            closing: closing.clone(),
        };
        let consumer: BaseConsumer<Callbacks> = client_config(
            kafka,
            &[
                ("group.id", &args.group),
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("statistics.interval.ms", "5000"),
                ("partition.assignment.strategy", "cooperative-sticky"),
            ],
        )
        .create_with_context(Callbacks { metrics: metrics.clone(), assignment: assignment.clone(), resume })
        .context("creating the Kafka consumer")?;
        consumer.subscribe(&[&kafka.events_topic]).context("subscribing to the events topic")?;
        let consumer = Arc::new(consumer);
        let lane_count = usize::try_from(args.parallelism).unwrap_or(1).max(1);
        let health = Arc::new(ConsumerHealth::new(lane_count, Duration::from_secs(args.stall_seconds)));
        let dead_letters = DeadLetters::new(kafka, metrics.clone())?;
        let (rewind, rewinds) = mpsc::unbounded_channel();
        let lanes = Lanes::new(lane::Shared {
            consumer: consumer.clone(),
            dead_letters,
            pool,
            group: args.group.clone(),
            metrics,
            health: health.clone(),
            assignment: assignment.clone(),
            batch_max: usize::try_from(args.batch).unwrap_or(usize::MAX),
            schema_version: args.schema_version,
            linger: Duration::from_millis(args.linger_ms),
            lanes: lane_count,
            changes_recorded,
            rewind,
            rewound: std::sync::Mutex::default(),
        });
        let queue_bytes = usize::try_from(args.queue_bytes).unwrap_or(usize::MAX).clamp(1, Semaphore::MAX_PERMITS);
        Ok(Self { consumer, lanes, assignment, health, queue_bytes, rewinds, closing })
    }

    /// The lanes' health, for the `/livez` and `/metrics` that report it.
    pub fn health(&self) -> Arc<ConsumerHealth> {
        self.health.clone()
    }

    /// Runs until `shutdown` is cancelled (or a lane panics). On the way out each lane finishes the
    /// batch it applies, queued records are left for the next owner, and the
    /// stored offsets are committed so a restart resumes exactly there.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { consumer, lanes, assignment, health: _, queue_bytes, mut rewinds, closing } = self;
        let stop = shutdown.child_token();
        let _closing_on_stop = {
            let stop = stop.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                closing.cancel();
            })
        };
        // Dropping this future (a caller that gave up on it) stops the poll
        // thread too, so no orphaned member stays in the group.
        let _stop_on_drop = stop.clone().drop_guard();
        tracing::info!(lanes = lanes.count(), "consumer started");
        let (senders, lane_tasks) = lanes.spawn(&stop);
        let budget = Arc::new(Semaphore::new(queue_bytes));
        let poller = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("connectflow-poll".into())
                .spawn(move || {
                    let lanes = Polled { senders: &senders, budget: &budget, budget_max: queue_bytes };
                    poll(&consumer, &lanes, &assignment, &mut rewinds, &runtime, &stop)
                })
                .context("starting the Kafka poll thread")?
        };

        // A lane stops early only if it panics (or, in principle, fails):
        // stop everything then, so the process exits and is restarted.
        let mut result: anyhow::Result<()> = Ok(());
        for task in lane_tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    stop.cancel();
                    tracing::error!(error = %err, "consumer lane failed; stopping");
                    result = result.and(Err(err.into()));
                }
                Err(err) => {
                    stop.cancel();
                    result = result.and(Err(anyhow::anyhow!("a consumer lane panicked: {err}")));
                }
            }
        }
        stop.cancel();
        let polled = tokio::task::spawn_blocking(move || poller.join())
            .await
            .context("joining the poll thread")?
            .map_err(|_| anyhow::anyhow!("the Kafka poll thread panicked"))?;
        // Commit what has been stored, so a restart resumes exactly here.
        let committing = consumer.clone();
        tokio::task::spawn_blocking(move || match committing.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => {
                tracing::warn!(error = %err, "final offset commit failed; the next owner re-reads (deduplicated)")
            }
        })
        .await
        .context("committing offsets")?;
        // Leave the group from a blocking thread: closing runs the final
        // revocation callback, which must not block the runtime.
        tokio::task::spawn_blocking(move || drop(consumer)).await.context("closing the consumer")?;
        tracing::info!("consumer stopped");
        result.and(polled)
    }
}

/// Where the poll thread hands records: the lanes' queues and their byte
/// budget.
struct Polled<'a> {
    senders: &'a [mpsc::UnboundedSender<Queued>],
    budget: &'a Arc<Semaphore>,
    budget_max: usize,
}

/// Serves a lane's rewind on the poll thread, between two polls, so that no
/// record is stamped while it happens: a new generation for the partition
/// (what was polled before is dropped unapplied), then a seek (librdkafka
/// discards what it fetched before it).
fn rewind(consumer: &BaseConsumer<Callbacks>, assignment: &Assignment, request: Rewind) {
    let Rewind { topic, partition, offset, done } = request;
    let rewound = assignment.renew(&topic, partition)
        && match consumer.seek(&topic, partition, rdkafka::Offset::Offset(offset), Duration::from_secs(10)) {
            Ok(()) => {
                tracing::warn!(
                    partition,
                    offset,
                    "Postgres lacks records this consumer applied (a failover lost them): reading the partition again from its stored position"
                );
                true
            }
            Err(err) => {
                tracing::error!(partition, offset, error = %err, "seeking back to the stored position failed; the lane retries");
                false
            }
        };
    // The lane may have stopped waiting (shutdown).
    let _ = done.send(rewound);
}

/// The poll thread: reads records and hands each to its partition's lane
/// until `stop`, and serves the lanes' rewinds. Rebalance callbacks run
/// inside `consumer.poll`, here.
fn poll(
    consumer: &BaseConsumer<Callbacks>,
    lanes: &Polled<'_>,
    assignment: &Assignment,
    rewinds: &mut mpsc::UnboundedReceiver<Rewind>,
    runtime: &tokio::runtime::Handle,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let Polled { senders, budget, budget_max } = *lanes;
    while !stop.is_cancelled() {
        while let Ok(request) = rewinds.try_recv() {
            rewind(consumer, assignment, request);
        }
        let message = match consumer.poll(POLL_INTERVAL) {
            None => continue,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "Kafka consumer error");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            Some(Ok(message)) => message.detach(),
        };
        let Some(generation) = assignment.generation(message.topic(), message.partition()) else {
            // Not ours (any more): its owner reads it.
            continue;
        };
        let size = record_size(&message).min(budget_max);
        let permits = u32::try_from(size).unwrap_or(u32::MAX);
        // While it waits for room, rewinds are still served: the lane that
        // asked holds records, and so room, until it is answered.
        let acquired = runtime.block_on(async {
            let acquire = budget.clone().acquire_many_owned(permits);
            tokio::pin!(acquire);
            loop {
                tokio::select! {
                    permit = &mut acquire => return permit.ok(),
                    Some(request) = rewinds.recv() => rewind(consumer, assignment, request),
                    () = stop.cancelled() => return None,
                }
            }
        });
        let Some(bytes) = acquired else { break };
        // A rewind served meanwhile may have made this record stale.
        if !assignment.is_current(message.topic(), message.partition(), generation) {
            continue;
        }
        let lane = usize::try_from(message.partition()).unwrap_or(0) % senders.len();
        let queued = Queued { message, generation, polled_at: Instant::now(), _bytes: bytes };
        if senders[lane].send(queued).is_err() {
            // The lane stopped: shutdown or a fatal error, reported by run.
            break;
        }
    }
    Ok(())
}

/// What a record costs in a lane's queue.
fn record_size(message: &OwnedMessage) -> usize {
    let headers = message.headers().map_or(0, |h| h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum());
    RECORD_OVERHEAD_BYTES + message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len) + headers
}
