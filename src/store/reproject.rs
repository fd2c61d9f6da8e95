//! Re-projection: recompute lifecycle state from the recorded events, after
//! a change to the state machine. Runs in bounded batches of customers, each
//! in its own short transaction, so it can run while the service does.

use anyhow::Context;
use sqlx::PgPool;

use crate::store::apply::{lock_and_load, recompute_from_history, write_accounts, write_lifecycles};

/// What a re-projection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReprojectOutcome {
    /// Customers recomputed.
    pub customers: u64,
    /// Of those, customers whose stored state differed and was rewritten.
    pub changed: u64,
}

/// Recomputes one customer (`Some`) or everyone (`None`), `batch` customers
/// per transaction.
pub async fn reproject(pool: &PgPool, customer: Option<&str>, batch: i64) -> anyhow::Result<ReprojectOutcome> {
    let mut outcome = ReprojectOutcome::default();
    let mut after = String::new();
    loop {
        let ids: Vec<String> = match customer {
            Some(id) if after.is_empty() => vec![id.to_owned()],
            Some(_) => Vec::new(),
            None => sqlx::query_scalar!(
                "SELECT customer_id FROM customers WHERE customer_id > $1 ORDER BY customer_id LIMIT $2",
                after,
                batch
            )
            .fetch_all(pool)
            .await
            .context("listing customers to re-project")?,
        };
        let Some(last) = ids.last().cloned() else { break };
        let mut tx = pool.begin().await.context("beginning a re-projection batch")?;
        let before = lock_and_load(&mut tx, &ids).await?;
        let recomputed = recompute_from_history(&mut tx, &ids).await?;
        outcome.customers += recomputed.len() as u64;
        // Customers whose state is unchanged keep their `updated_at`; the
        // accounts projection is rewritten for all, since repairing it is
        // part of what a re-projection is for.
        let changed: Vec<_> = recomputed.iter().filter(|(id, state)| before.get(id) != Some(state)).cloned().collect();
        outcome.changed += changed.len() as u64;
        write_lifecycles(&mut tx, &changed).await?;
        write_accounts(&mut tx, &recomputed.iter().collect::<Vec<_>>()).await?;
        tx.commit().await.context("committing a re-projection batch")?;
        tracing::info!(customers = outcome.customers, changed = outcome.changed, last = %last, "re-projection progress");
        after = last;
    }
    Ok(outcome)
}
