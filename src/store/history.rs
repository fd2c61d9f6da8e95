//! History retention in Postgres: folding each customer's events older than
//! a horizon into their snapshot (`customer_history_snapshots`) and deleting
//! them, keeping only their ids (`history_folded_events`) for deduplication;
//! pruning published lifecycle changes older than the horizon; and the
//! snapshot reads that recomputation and the events API need.
//!
//! A customer's lifecycle is `lifecycle::fold_from` their snapshot and their
//! events kept (`docs/lifecycle.md`, "History retention"). Folding changes
//! where the history lives, never the lifecycle: `customers` is not written.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use crate::event::{ConnectEvent, CustomerId};
use crate::lifecycle::{self, Lifecycle};
use crate::store::apply::lock_customers;
use crate::store::error::{StoreError, StoreResultExt};

/// A stored document, decoded or not.
type Decoded<T> = Result<T, serde_json::Error>;

/// What folding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldOutcome {
    /// Customers whose snapshot was made or moved on.
    pub customers: u64,
    /// Events folded into snapshots and deleted.
    pub events: u64,
    /// Customers left as they were because their snapshot or one of their
    /// events does not decode (logged; tried again at every run).
    pub skipped: u64,
}

impl std::ops::AddAssign for FoldOutcome {
    fn add_assign(&mut self, other: Self) {
        self.customers += other.customers;
        self.events += other.events;
        self.skipped += other.skipped;
    }
}

/// Folds every customer's events that occurred before `horizon`, `batch`
/// customers per transaction, until none is left.
pub async fn fold_older_than(pool: &PgPool, horizon: DateTime<Utc>, batch: i64) -> Result<FoldOutcome, StoreError> {
    let mut outcome = FoldOutcome::default();
    let mut after = String::new();
    while let Some(done) = fold_next(pool, horizon, &mut after, batch).await? {
        outcome += done;
    }
    Ok(outcome)
}

/// Folds the events before `horizon` of the next `batch` customers (by id,
/// after `after`, which moves on) that have any, in one short transaction
/// under the customers' advisory locks, so the consumer, `reproject` and
/// other runs of this job may work beside it. `None` when no customer after
/// `after` has an event before the horizon.
pub async fn fold_next(
    pool: &PgPool,
    horizon: DateTime<Utc>,
    after: &mut String,
    batch: i64,
) -> Result<Option<FoldOutcome>, StoreError> {
    // The history's index is by (customer_id, occurred_at): this reads it
    // in customer order, so a whole pass reads it once.
    let raw = sqlx::query_scalar!(
        r#"
        SELECT DISTINCT customer_id FROM connect_events
        WHERE customer_id > $1 AND occurred_at < $2
        ORDER BY customer_id
        LIMIT $3
        "#,
        after.as_str(),
        horizon,
        batch,
    )
    .fetch_all(pool)
    .await
    .store("listing customers with history to fold")?;
    let Some(last) = raw.last() else { return Ok(None) };
    after.clone_from(last);
    // Rows are only ever written for valid ids; the locks are taken in the
    // order every writer uses.
    let mut ids: Vec<CustomerId> = raw.into_iter().filter_map(|id| CustomerId::try_from(id).ok()).collect();
    ids.sort();
    let ids: Vec<&CustomerId> = ids.iter().collect();

    let mut tx = pool.begin().await.store("beginning a history fold")?;
    // Locks first, in a statement of their own; what the consumer committed
    // for these customers before is visible from the next statement on.
    lock_customers(&mut tx, &ids).await?;
    let snapshots = snapshot_rows(&mut tx, &ids).await?;
    let keys: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        r#"
        SELECT customer_id, event_id, coalesce(published, record::text) AS "record!" FROM connect_events
        WHERE customer_id = ANY($1::text[]) AND occurred_at < $2
        ORDER BY customer_id, occurred_at, event_id
        "#,
        &keys as &[&str],
        horizon,
    )
    .fetch_all(&mut *tx)
    .await
    .store("loading the history to fold")?;

    let mut old: BTreeMap<String, Vec<(String, Decoded<ConnectEvent>)>> = BTreeMap::new();
    for row in rows {
        let event = serde_json::from_str::<ConnectEvent>(&row.record);
        old.entry(row.customer_id).or_default().push((row.event_id, event));
    }
    let mut outcome = FoldOutcome::default();
    let mut snapshot_ids: Vec<String> = Vec::new();
    let mut documents: Vec<Json<Lifecycle>> = Vec::new();
    let mut folded_ids: Vec<String> = Vec::new();
    for (customer_id, recorded) in old {
        let base = match snapshots.get(customer_id.as_str()) {
            None => Lifecycle::default(),
            Some(Ok(snapshot)) => snapshot.clone(),
            Some(Err(err)) => {
                tracing::warn!(customer_id = %customer_id, error = %err, "history snapshot does not decode; its events are kept");
                outcome.skipped += 1;
                continue;
            }
        };
        let (event_ids, events): (Vec<String>, Vec<_>) = recorded.into_iter().unzip();
        let events: Vec<ConnectEvent> = match events.into_iter().collect() {
            Ok(events) => events,
            Err(err) => {
                tracing::warn!(customer_id = %customer_id, error = %err, "a recorded event does not decode; the customer's history is kept");
                outcome.skipped += 1;
                continue;
            }
        };
        documents.push(Json(lifecycle::fold_from(&base, &events)));
        snapshot_ids.push(customer_id);
        outcome.customers += 1;
        outcome.events += event_ids.len() as u64;
        folded_ids.extend(event_ids);
    }
    if snapshot_ids.is_empty() {
        tx.commit().await.store("committing a history fold")?;
        return Ok(Some(outcome));
    }
    sqlx::query!(
        r#"
        INSERT INTO customer_history_snapshots (customer_id, lifecycle, history_starts_at, updated_at)
        SELECT customer_id, lifecycle, $3, now() FROM UNNEST($1::text[], $2::jsonb[]) AS s(customer_id, lifecycle)
        ON CONFLICT (customer_id) DO UPDATE SET
            lifecycle = EXCLUDED.lifecycle,
            history_starts_at = GREATEST(customer_history_snapshots.history_starts_at, EXCLUDED.history_starts_at),
            updated_at = EXCLUDED.updated_at
        "#,
        &snapshot_ids,
        &documents as _,
        horizon,
    )
    .execute(&mut *tx)
    .await
    .store("writing history snapshots")?;
    // The events go and their ids stay, in one statement.
    sqlx::query!(
        r#"
        WITH folded AS (
            DELETE FROM connect_events WHERE event_id = ANY($1::text[]) RETURNING event_id, customer_id
        )
        INSERT INTO history_folded_events (event_id, customer_id)
        SELECT event_id, customer_id FROM folded
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &folded_ids,
    )
    .execute(&mut *tx)
    .await
    .store("deleting folded events")?;
    tx.commit().await.store("committing a history fold")?;
    Ok(Some(outcome))
}

/// Deletes the lifecycle changes recorded before `before` that were
/// published (a change still in `lifecycle_outbox` stays until the relay
/// has published it), `batch` per statement; returns how many went.
///
/// No customer lock: a published change is never read or written again by
/// the consumer or the relay (versions come from `customers.version`).
pub async fn prune_changes(pool: &PgPool, before: DateTime<Utc>, batch: i64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query!(
            r#"
            DELETE FROM lifecycle_changes
            WHERE (customer_id, version) IN (
                SELECT c.customer_id, c.version FROM lifecycle_changes c
                WHERE c.recorded_at < $1
                  AND NOT EXISTS (
                      SELECT 1 FROM lifecycle_outbox o WHERE o.customer_id = c.customer_id AND o.version = c.version
                  )
                ORDER BY c.recorded_at
                LIMIT $2
            )
            "#,
            before,
            batch,
        )
        .execute(pool)
        .await
        .store("pruning lifecycle changes")?
        .rows_affected();
        deleted += done;
        if done == 0 || done < u64::try_from(batch).unwrap_or(0) {
            return Ok(deleted);
        }
    }
}

/// The snapshots of these customers (those that have one), each decoded or
/// not.
async fn snapshot_rows(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[&CustomerId],
) -> Result<HashMap<String, Decoded<Lifecycle>>, StoreError> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        r#"
        SELECT customer_id, lifecycle::text AS "lifecycle!" FROM customer_history_snapshots
        WHERE customer_id = ANY($1::text[])
        "#,
        &ids as &[&str],
    )
    .fetch_all(&mut **tx)
    .await
    .store("loading history snapshots")?;
    Ok(rows.into_iter().map(|row| (row.customer_id, serde_json::from_str(&row.lifecycle))).collect())
}

/// The snapshots of these customers, for a recomputation: a customer
/// without one has kept their whole history. A snapshot that does not
/// decode is an error, since without it the lifecycle cannot be rebuilt.
pub async fn load_snapshots(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[&CustomerId],
) -> Result<HashMap<CustomerId, Lifecycle>, StoreError> {
    let mut snapshots = HashMap::new();
    for (customer_id, snapshot) in snapshot_rows(tx, ids).await? {
        // Not derivable (its events were deleted when folded): recomputing
        // without it would move the customer back, and it is not the new
        // event's fault either.
        let snapshot = snapshot.map_err(|err| StoreError::StoredState {
            context: "decoding a history snapshot",
            customer_id: customer_id.clone(),
            reason: format!("the history snapshot does not decode: {err}"),
        })?;
        if let Ok(customer_id) = CustomerId::try_from(customer_id) {
            snapshots.insert(customer_id, snapshot);
        }
    }
    Ok(snapshots)
}

/// Where a customer's recorded history starts: every event that occurred
/// before it was folded into their snapshot. `None` while the whole history
/// is kept.
pub async fn history_starts_at(pool: &PgPool, customer_id: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    sqlx::query_scalar!("SELECT history_starts_at FROM customer_history_snapshots WHERE customer_id = $1", customer_id)
        .fetch_optional(pool)
        .await
        .store("reading where a history starts")
}
