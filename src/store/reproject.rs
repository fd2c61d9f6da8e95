//! Re-projection: recompute lifecycle state from the recorded events (from
//! the customer's history snapshot on, when older events were folded into
//! one), after a change to the state machine, and the audit that checks the
//! stored state against that recomputation without writing. Both run in bounded
//! batches of customers, each in its own short transaction, so they can run
//! while the service does.

use chrono::Utc;
use sqlx::PgPool;

use crate::change::Versioner;
use crate::event::CustomerId;
use crate::lifecycle::{Lifecycle, VisibleLifecycle};
use crate::store::apply::{
    Prior, Projected, load_lifecycles, lock_customers, recompute_from_history, write_accounts, write_lifecycles,
};
use crate::store::changes::{Announce, record_changes};
use crate::store::error::{StoreError, StoreResultExt};

/// What a re-projection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReprojectOutcome {
    /// Customers recomputed.
    pub customers: u64,
    /// Of those, customers whose stored state differed and was rewritten.
    pub changed: u64,
}

/// What an audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOutcome {
    /// Customers checked.
    pub customers: u64,
    /// Customers whose stored lifecycle is not the fold of their recorded
    /// events over their history snapshot (or does not decode), in id order.
    pub differing: Vec<CustomerId>,
}

/// Recomputes one customer (`Some`) or everyone (`None`), `batch` customers
/// per transaction.
pub async fn reproject(
    pool: &PgPool,
    customer: Option<&CustomerId>,
    batch: i64,
) -> Result<ReprojectOutcome, StoreError> {
    let mut outcome = ReprojectOutcome::default();
    let mut after = String::new();
    while let Some(ids) = next_customers(pool, customer, &mut after, batch).await? {
        let ids: Vec<&CustomerId> = ids.iter().collect();
        let mut tx = pool.begin().await.store("beginning a re-projection batch")?;
        lock_customers(&mut tx, &ids).await?;
        let loaded = load_lifecycles(&mut tx, &ids).await?;
        let recomputed = recompute_from_history(&mut tx, &ids).await?;
        outcome.customers += recomputed.len() as u64;
        // Customers whose state is unchanged keep their `updated_at` and
        // version; a changed one gets a change record when what subscribers
        // see moved (caused by no event, recomputed). The accounts
        // projection is rewritten for all, since repairing it is part of what
        // a re-projection is for.
        let recorded_at = Utc::now();
        let mut changed = Vec::new();
        let mut changes = Vec::new();
        for (customer_id, state) in &recomputed {
            let stored = loaded.states.get(customer_id);
            if stored.is_some_and(|s| &s.lifecycle == state) {
                continue;
            }
            let version =
                stored.map(|s| s.version).or_else(|| loaded.undecodable.get(customer_id).copied()).unwrap_or(0);
            let before = stored.map(|s| s.lifecycle.clone()).unwrap_or_default();
            let program_id = loaded.programs.get(customer_id).cloned().unwrap_or_default();
            let mut versioner = Versioner::new(customer_id, &program_id, version, stored.is_some(), recorded_at);
            let visible_moved = VisibleLifecycle::from(&before) != VisibleLifecycle::from(state);
            versioner.observe(&before, state, &[], true, visible_moved);
            changes.append(&mut versioner.changes);
            changed.push(Projected {
                customer_id: customer_id.clone(),
                program_id: program_id.clone(),
                lifecycle: state.clone(),
                version: versioner.version(),
            });
        }
        outcome.changed += changed.len() as u64;
        write_lifecycles(&mut tx, &changed).await?;
        let projections: Vec<_> = recomputed.iter().map(|(id, state)| (id, Prior::Unknown, state)).collect();
        write_accounts(&mut tx, &projections).await?;
        record_changes(&mut tx, &changes, Announce::Notify).await?;
        tx.commit().await.store("committing a re-projection batch")?;
        tracing::info!(customers = outcome.customers, changed = outcome.changed, last = %after, "re-projection progress");
    }
    Ok(outcome)
}

/// Compares each stored lifecycle with the fold of the customer's recorded
/// events (over their history snapshot), writing nothing. Each batch is read from one snapshot
/// (REPEATABLE READ), so a batch the consumer commits meanwhile is seen
/// either whole or not at all.
pub async fn audit(pool: &PgPool, customer: Option<&CustomerId>, batch: i64) -> Result<AuditOutcome, StoreError> {
    let mut outcome = AuditOutcome::default();
    let mut after = String::new();
    while let Some(ids) = next_customers(pool, customer, &mut after, batch).await? {
        let ids: Vec<&CustomerId> = ids.iter().collect();
        let mut tx = pool.begin().await.store("beginning an audit batch")?;
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .store("starting a read-only snapshot")?;
        let stored = load_lifecycles(&mut tx, &ids).await?;
        let recomputed = recompute_from_history(&mut tx, &ids).await?;
        tx.rollback().await.store("ending an audit batch")?;
        outcome.customers += ids.len() as u64;
        let folded: std::collections::HashMap<&CustomerId, &Lifecycle> =
            recomputed.iter().map(|(id, state)| (id, state)).collect();
        for id in ids {
            let expected = folded.get(id).copied();
            let actual = stored.states.get(id).map(|s| &s.lifecycle);
            // A customer with a stored row but no recorded events differs
            // too (expected is None, actual is not).
            if expected != actual {
                outcome.differing.push(id.clone());
            }
        }
    }
    Ok(outcome)
}

/// The next batch of customer ids after `after` (or the one asked for),
/// `None` when done: every customer with a stored lifecycle or a recorded
/// event, so a customer whose row is missing is found too.
async fn next_customers(
    pool: &PgPool,
    customer: Option<&CustomerId>,
    after: &mut String,
    batch: i64,
) -> Result<Option<Vec<CustomerId>>, StoreError> {
    let raw: Vec<String> = match customer {
        Some(id) if after.is_empty() => vec![id.to_string()],
        Some(_) => Vec::new(),
        None => sqlx::query_scalar!(
            r#"
            SELECT customer_id AS "customer_id!" FROM (
                (SELECT customer_id FROM customers WHERE customer_id > $1 ORDER BY customer_id LIMIT $2)
                UNION
                (SELECT DISTINCT customer_id FROM connect_events WHERE customer_id > $1 ORDER BY customer_id LIMIT $2)
            ) AS both_sources
            ORDER BY customer_id
            LIMIT $2
            "#,
            after.as_str(),
            batch
        )
        .fetch_all(pool)
        .await
        .store("listing customers")?,
    };
    let Some(last) = raw.last() else { return Ok(None) };
    *after = last.clone();
    // Rows are only ever written for valid ids; anything else is skipped.
    Ok(Some(raw.into_iter().filter_map(|id| CustomerId::try_from(id).ok()).collect()))
}
