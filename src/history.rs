//! History retention: the job of `consume` that keeps
//! `CONNECTFLOW_HISTORY_RETENTION_DAYS` of event history. At start, then
//! every [`INTERVAL`], it folds each customer's events that occurred before
//! the horizon (now minus the retention) into the customer's history
//! snapshot and deletes them ([`crate::store::history`]), then deletes the
//! published lifecycle changes recorded before the horizon. Lifecycles do not
//! change (`docs/lifecycle.md`, "History retention").
//!
//! Each batch of customers is its own short transaction under their
//! advisory locks, so the job runs beside the consumer, `reproject` and the
//! same job in other `consume` processes (they only share the work).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::event::truncate_to_millis;
use crate::metrics::Metrics;
use crate::store::error::StoreError;
use crate::store::history::{FoldOutcome, fold_next, prune_changes};

/// How often `consume` folds the history.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Customers folded per transaction.
const CUSTOMERS_PER_BATCH: i64 = 200;

/// Lifecycle changes deleted per statement.
const CHANGES_PER_BATCH: i64 = 10_000;

/// The history retention job, built and ready to run.
#[derive(Debug)]
pub struct HistoryJob {
    pool: PgPool,
    retention_days: u32,
    metrics: Arc<Metrics>,
}

impl HistoryJob {
    /// Keeps `retention_days` of history (0: all of it, and the job does
    /// nothing).
    pub fn new(pool: PgPool, retention_days: u32, metrics: Arc<Metrics>) -> Self {
        Self { pool, retention_days, metrics }
    }

    /// Runs until `shutdown`; returns at once when the whole history is kept.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.retention_days == 0 {
            return;
        }
        loop {
            if let Some(horizon) = horizon(Utc::now(), self.retention_days) {
                match self.run_once(horizon, &shutdown).await {
                    Ok((folded, pruned)) if folded.events > 0 || pruned > 0 || folded.skipped > 0 => {
                        tracing::info!(
                            %horizon,
                            customers = folded.customers,
                            events = folded.events,
                            skipped = folded.skipped,
                            changes = pruned,
                            "history folded before the horizon"
                        );
                    }
                    Ok(_) => {}
                    // Tried again at the next round; what was committed stays.
                    Err(err) => tracing::warn!(error = %err, "folding the history failed"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }

    /// One pass at `horizon`: folds every customer's older events, batch by
    /// batch (stopping between batches at `shutdown`), then prunes the
    /// changes. Returns what was folded and how many changes went.
    pub async fn run_once(
        &self,
        horizon: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<(FoldOutcome, u64), StoreError> {
        let mut folded = FoldOutcome::default();
        let mut after = String::new();
        while let Some(batch) = fold_next(&self.pool, horizon, &mut after, CUSTOMERS_PER_BATCH).await? {
            self.metrics.history_events_folded.inc_by(batch.events);
            folded += batch;
            if shutdown.is_cancelled() {
                return Ok((folded, 0));
            }
        }
        let pruned = prune_changes(&self.pool, horizon, CHANGES_PER_BATCH).await?;
        self.metrics.history_changes_pruned.inc_by(pruned);
        Ok((folded, pruned))
    }
}

/// The horizon `retention_days` before `now`, in whole milliseconds (the
/// precision of every recorded time, so the API shows it exactly); `None`
/// when the whole history is kept, or the period reaches back past any
/// representable time.
pub fn horizon(now: DateTime<Utc>, retention_days: u32) -> Option<DateTime<Utc>> {
    if retention_days == 0 {
        return None;
    }
    let period = chrono::Duration::try_days(i64::from(retention_days))?;
    now.checked_sub_signed(period).map(truncate_to_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_is_the_retention_before_now_in_whole_milliseconds() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:15:02.123456Z").expect("time").with_timezone(&Utc);

        assert_eq!(horizon(now, 0), None, "0 keeps everything");
        let one_day = horizon(now, 1).expect("a horizon");
        assert_eq!(crate::event::rfc3339_ms::format(&one_day), "2026-12-03T10:15:02.123Z");
        assert_eq!(one_day.timestamp_subsec_nanos() % 1_000_000, 0);
        assert!(horizon(now, 36_500).is_some());
        assert!(horizon(DateTime::<Utc>::MIN_UTC, 1).is_none());
    }
}
