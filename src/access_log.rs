//! The access log's writer: every `/v1` request reserves a place in a
//! bounded queue before it is handled and fills it with its record after;
//! one task writes the queue to Postgres in batches, off the request path.
//!
//! It fails closed: when the writer falls behind (Postgres slow or down) and
//! the queue stays full for as long as a statement of the API may run, a
//! request finds no place and is answered 503 without being handled, so no
//! read ever goes unlogged (`connectflow_access_log_rejected_total` counts
//! them). Until then a request waits for a place: a writer that is merely
//! short of CPU (the API saturating the machine) slows the requests down
//! instead of refusing them.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::store::access_log::{AccessRecord, insert};

/// Records written per statement, at most.
const BATCH: usize = 2_000;

/// The sending side, shared by the requests.
#[derive(Debug, Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<AccessRecord>,
    wait: Duration,
    metrics: Arc<Metrics>,
}

/// A reserved place in the queue: the request may proceed, and its record
/// is sent when it is known.
#[derive(Debug)]
pub struct Reserved(mpsc::OwnedPermit<AccessRecord>);

impl Reserved {
    /// Queues the request's record.
    pub fn send(self, record: AccessRecord) {
        self.0.send(record);
    }
}

/// The writing side: run it until shutdown.
#[derive(Debug)]
pub struct AccessLogWriter {
    pool: PgPool,
    queue: mpsc::Receiver<AccessRecord>,
    metrics: Arc<Metrics>,
}

/// A new access log with a queue of `capacity` records (at least 1), whose
/// requests wait at most `wait` for a place in a full queue.
pub fn access_log(
    pool: PgPool,
    capacity: usize,
    wait: Duration,
    metrics: Arc<Metrics>,
) -> (AccessLog, AccessLogWriter) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (AccessLog { queue: sender, wait, metrics: metrics.clone() }, AccessLogWriter { pool, queue: receiver, metrics })
}

impl AccessLog {
    /// A place for one record, waiting at most the access log's `wait` for
    /// one when the queue is full; `None` when none came free in that time
    /// (or the writer stopped): the request must then be refused.
    pub async fn reserve(&self) -> Option<Reserved> {
        let place = match self.queue.clone().try_reserve_owned() {
            Ok(permit) => Some(permit),
            Err(mpsc::error::TrySendError::Full(queue)) => {
                tokio::time::timeout(self.wait, queue.reserve_owned()).await.ok().and_then(Result::ok)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        };
        if place.is_none() {
            self.metrics.access_log_rejected.inc();
        }
        place.map(Reserved)
    }
}

impl AccessLogWriter {
    /// Writes batches until `shutdown`, then what is still queued (bounded
    /// by `grace`). A failed write is retried with backoff, the same batch,
    /// while new records wait in the queue.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let Self { pool, mut queue, metrics } = self;
        let mut batch: Vec<AccessRecord> = Vec::with_capacity(BATCH);
        let mut backoff = Backoff::default();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    received = queue.recv_many(&mut batch, BATCH) => {
                        if received == 0 {
                            return; // every sender is gone
                        }
                    }
                    () = shutdown.cancelled() => break,
                }
            }
            match insert(&pool, &batch).await {
                Ok(()) => {
                    metrics.access_log_written.inc_by(batch.len() as u64);
                    batch.clear();
                    backoff.reset();
                }
                Err(err) => {
                    tracing::warn!(error = %err, records = batch.len(), retry_in = ?backoff.delay(), "writing the access log failed; retrying");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        // Shutting down: the requests still in flight send their records
        // within the grace period.
        let deadline = tokio::time::Instant::now() + grace;
        queue.close();
        loop {
            if batch.is_empty() {
                match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, BATCH)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            match tokio::time::timeout_at(deadline, insert(&pool, &batch)).await {
                Ok(Ok(())) => {
                    metrics.access_log_written.inc_by(batch.len() as u64);
                    batch.clear();
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if !batch.is_empty() || !queue.is_empty() {
            tracing::error!(
                unwritten = batch.len() + queue.len(),
                "the access log could not be written before shutdown"
            );
        }
    }
}
