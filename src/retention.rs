//! The jobs of `consume` that delete what connectflow keeps for a limited
//! time: access-log records (`CONNECTFLOW_AUDIT_RETENTION_DAYS`) and the
//! compliance records of erased customers
//! (`CONNECTFLOW_ERASURE_RECORD_DAYS`). Each runs at start, then every
//! [`PRUNE_INTERVAL`]. Several processes may run them at once; each deletion
//! is of rows already due, so they only share the work.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{access_log, erasure};

/// How often `consume` prunes.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Rows deleted per statement while pruning.
const PRUNE_BATCH: i64 = 10_000;

/// What a [`PruneJob`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    /// Access-log records older than the retention.
    AccessLog,
    /// Tombstones of erasures older than the retention.
    ErasureRecords,
}

/// A job that deletes rows older than its retention.
#[derive(Debug)]
pub struct PruneJob {
    pool: PgPool,
    pruned: Pruned,
    retention: chrono::Duration,
    metrics: Arc<Metrics>,
}

impl PruneJob {
    /// Keeps `retention_days` of `pruned`.
    pub fn new(pool: PgPool, pruned: Pruned, retention_days: u32, metrics: Arc<Metrics>) -> Self {
        Self { pool, pruned, retention: chrono::Duration::days(i64::from(retention_days)), metrics }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let before = chrono::Utc::now() - self.retention;
            let deleted = match self.pruned {
                Pruned::AccessLog => access_log::prune(&self.pool, before, PRUNE_BATCH).await,
                Pruned::ErasureRecords => erasure::purge(&self.pool, before, PRUNE_BATCH).await,
            };
            match deleted {
                Ok(0) => {}
                Ok(deleted) => {
                    if self.pruned == Pruned::ErasureRecords {
                        self.metrics.erasure_records_purged.inc_by(deleted);
                    }
                    tracing::info!(deleted, %before, pruned = ?self.pruned, "pruned");
                }
                // Tried again at the next round.
                Err(err) => tracing::warn!(error = %err, pruned = ?self.pruned, "pruning failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PRUNE_INTERVAL) => {}
            }
        }
    }
}
