//! Everything stored about one customer, read from one snapshot: the rows
//! behind `GET /v1/customers/{customer_id}/export` (the right to know).
//!
//! Each list is one bounded query (at most `max_items` rows, and whether
//! more follow), each the query its own listing runs, so the export holds
//! exactly what `/events`, `/changes` and the audit show. All run in one
//! REPEATABLE READ, READ ONLY transaction: a batch the consumer commits
//! meanwhile is in every list or in none.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::lifecycle::Lifecycle;
use crate::store::access_log::{self, AccessFilter, AccessRecord};
use crate::store::error::{StoreError, StoreResultExt};
use crate::store::read::{self, StoredLifecycle, Visible};
use crate::store::revocations::{self, RecordedRevocation};

/// A list read up to a maximum.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounded<T> {
    /// The first rows, in the list's order.
    pub items: Vec<T>,
    /// Whether more rows followed the maximum.
    pub truncated: bool,
}

impl<T, K> From<(Vec<T>, Option<K>)> for Bounded<T> {
    /// A page as the listings return it: the rows and the key of the last
    /// one when more follow.
    fn from((items, next): (Vec<T>, Option<K>)) -> Self {
        Self { items, truncated: next.is_some() }
    }
}

/// What connectflow holds about a customer.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRecords {
    /// The stored lifecycle (and the customer's program).
    pub lifecycle: StoredLifecycle,
    /// Where the kept history starts and the snapshot the events before it
    /// were folded into (`CONNECTFLOW_HISTORY_RETENTION_DAYS`); none while
    /// the whole history is kept.
    pub snapshot: Option<(DateTime<Utc>, Lifecycle)>,
    /// The recorded events as `read::events` lists them, in
    /// `(occurred_at, event_id)` order.
    pub events: Bounded<serde_json::Value>,
    /// The recorded lifecycle changes (JSON text), in version order.
    pub changes: Bounded<String>,
    /// The revocation requests recorded for the customer, in
    /// `(occurred_at, event_id)` order.
    pub revocations: Bounded<RecordedRevocation>,
    /// The access-log records naming the customer, in time order.
    pub access_log: Bounded<AccessRecord>,
}

/// Everything about `customer_id`, when it exists in `visible`; each list at
/// most `max_items` long. The access log is narrowed as the audit narrows it
/// for the same programs: records whose programs are all in `visible`
/// (every record when `None`).
pub async fn customer_records(
    pool: &PgPool,
    customer_id: &str,
    visible: Visible<'_>,
    max_items: i64,
) -> Result<Option<CustomerRecords>, StoreError> {
    let mut tx = pool.begin().await.store("beginning an export")?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .store("starting a read-only snapshot")?;
    let Some(lifecycle) = read::lifecycle(&mut *tx, customer_id, visible).await? else {
        tx.rollback().await.store("ending an export")?;
        return Ok(None);
    };
    let snapshot = sqlx::query!(
        r#"SELECT history_starts_at, lifecycle::text AS "lifecycle!" FROM customer_history_snapshots WHERE customer_id = $1"#,
        customer_id
    )
    .fetch_optional(&mut *tx)
    .await
    .store("reading a history snapshot")?
    .map(|row| {
        let snapshot = serde_json::from_str::<Lifecycle>(&row.lifecycle)
            .map_err(|err| StoreError::undecodable("decoding a history snapshot", &err))?;
        Ok::<_, StoreError>((row.history_starts_at, snapshot))
    })
    .transpose()?;
    let events = read::events(&mut *tx, customer_id, None, max_items).await?.into();
    let changes = read::changes(&mut *tx, customer_id, None, max_items).await?.into();
    let revocations = revocations::of_customer(&mut *tx, &lifecycle.program_id, customer_id, max_items).await?.into();
    let named = AccessFilter {
        customer_id: Some(customer_id.to_owned()),
        within_programs: visible.map(<[String]>::to_vec),
        ..AccessFilter::default()
    };
    let access_log = access_log::page(&mut *tx, &named, None, max_items).await?.into();
    tx.rollback().await.store("ending an export")?;
    Ok(Some(CustomerRecords { lifecycle, snapshot, events, changes, revocations, access_log }))
}
