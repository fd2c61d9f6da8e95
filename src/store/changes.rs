//! The lifecycle-change outbox: each change of a customer's visible
//! lifecycle becomes a record ([`crate::change::LifecycleChange`]), written to
//! `lifecycle_changes` in the same transaction as the lifecycle it describes;
//! the relay ([`crate::outbox`]) publishes it afterwards.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::change::{ChangeReason, LifecycleChange};
use crate::store::error::{StoreError, StoreResultExt};

/// The Postgres channel a committed change is announced on (the relay
/// listens; the payload is empty).
pub const CHANGES_CHANNEL: &str = "connectflow_lifecycle_changes";

/// How the relays learn that changes were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `NOTIFY` on [`CHANGES_CHANNEL`] at commit, for writers outside a
    /// `consume` process (`reproject`). Postgres serialises the commits of
    /// notifying transactions, so the consumer does not use it.
    Notify,
    /// Nothing here: the caller wakes its own process's relay after the
    /// commit (the consumer's lanes do), and the relays of other processes
    /// find the rows on their own wake-ups or safety poll.
    InProcess,
    /// As [`InProcess`](Self::InProcess), and the changes of every customer
    /// with no other unpublished change (none waiting, leased, backing off)
    /// and no erasure among them are written already leased for `lease`, to
    /// a token of their own, and returned as a [`HandOff`]: the caller gives
    /// it to its own relay after the commit, which publishes them with no
    /// claim. Nothing else can claim them meanwhile; a hand-off lost (a
    /// crash) is claimed by any relay once the lease runs out.
    HandOff {
        /// How long the rows are leased for.
        lease: Duration,
    },
}

/// Changes written already leased to the writer's relay
/// ([`Announce::HandOff`]), in `(customer, version)` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOff {
    /// The lease token the rows carry.
    pub token: String,
    /// Taken before the statement that leased the rows: their lease runs at
    /// least until this instant plus the lease.
    pub leased_at: Instant,
    /// The changes.
    pub changes: Vec<HandedChange>,
}

/// One change of a [`HandOff`]: what the relay publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedChange {
    /// The customer (the record's key).
    pub customer_id: String,
    /// The change's version.
    pub version: i64,
    /// The customer's program (its topic and `program` header).
    pub program_id: String,
    /// The record, as written to `lifecycle_changes`.
    pub change: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// Writes the changes (history and outbox) in one statement, announcing
/// them as `announce` says (a notification is delivered at commit), and
/// returns the changes leased to the caller's relay (for
/// [`Announce::HandOff`], when any were).
///
/// Every writer of a customer's changes holds its lock
/// (`apply::lock_customers`), so the customers found with no unpublished
/// change here have none until the commit but what this statement writes.
pub async fn record_changes(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[LifecycleChange],
    announce: Announce,
) -> Result<Option<HandOff>, StoreError> {
    if changes.is_empty() {
        return Ok(None);
    }
    let mut customers = Vec::with_capacity(changes.len());
    let mut versions = Vec::with_capacity(changes.len());
    let mut documents = Vec::with_capacity(changes.len());
    let mut recorded = Vec::with_capacity(changes.len());
    // An erased change is followed by a tombstone on the topic, and its
    // row goes once published.
    let mut erasure = Vec::with_capacity(changes.len());
    for change in changes {
        customers.push(change.customer_id.clone());
        versions.push(change.version);
        documents
            .push(serde_json::to_string(change).map_err(|err| StoreError::undecodable("encoding a change", &err))?);
        recorded.push(change.recorded_at);
        erasure.push(change.reason == Some(ChangeReason::Erased));
    }
    let lease = match announce {
        Announce::HandOff { lease } => Some(lease),
        Announce::Notify | Announce::InProcess => None,
    };
    // An erasure takes the path it always took (claimed): its customer's
    // changes are not handed off.
    let erased: HashSet<&str> =
        changes.iter().filter(|c| c.reason == Some(ChangeReason::Erased)).map(|c| c.customer_id.as_str()).collect();
    let wanted: Vec<bool> =
        changes.iter().map(|c| lease.is_some() && !erased.contains(c.customer_id.as_str())).collect();
    let token = uuid::Uuid::new_v4().to_string();
    let leased_at = Instant::now();
    if lease.is_some() {
        // The probe of each customer's rows below by the outbox's key,
        // whatever the planner believes the queue holds (see the relay's
        // `by_key`). The last statement of the transaction: nothing else
        // runs under the setting.
        sqlx::query("SELECT set_config('enable_seqscan', 'off', true)")
            .execute(&mut **tx)
            .await
            .store("planning the outbox probe by its key")?;
    }
    let leased = sqlx::query!(
        r#"
        WITH written AS (
            INSERT INTO lifecycle_changes (customer_id, version, change, recorded_at)
            SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[])
        ), queued AS (
            INSERT INTO lifecycle_outbox (customer_id, version, recorded_at, erasure, leased_until, lease_token)
            SELECT i.customer_id, i.version, i.recorded_at, i.erasure,
                   CASE WHEN i.lease THEN clock_timestamp() + make_interval(secs => $6) END,
                   CASE WHEN i.lease THEN $7::text::uuid END
            FROM (
                SELECT u.customer_id, u.version, u.recorded_at, u.erasure,
                       u.wanted AND waiting.customer_id IS NULL AS lease
                FROM UNNEST($1::text[], $2::int8[], $4::timestamptz[], $5::bool[], $8::bool[])
                         AS u(customer_id, version, recorded_at, erasure, wanted)
                LEFT JOIN LATERAL (
                    -- One key lookup per change, and none unless wanted.
                    SELECT o.customer_id FROM lifecycle_outbox o
                    WHERE u.wanted AND o.customer_id = u.customer_id AND o.parked_at IS NULL
                    LIMIT 1
                ) AS waiting ON true
            ) AS i
            RETURNING customer_id, version, lease_token IS NOT NULL AS leased
        )
        SELECT customer_id AS "customer_id!", version AS "version!" FROM queued WHERE leased
        "#,
        &customers,
        &versions,
        &documents,
        &recorded,
        &erasure,
        lease.unwrap_or_default().as_secs_f64(),
        &token,
        &wanted,
    )
    .fetch_all(&mut **tx)
    .await
    .store("recording lifecycle changes")?;
    if announce == Announce::Notify {
        sqlx::query!("SELECT pg_notify($1, '') AS notified", CHANGES_CHANNEL)
            .fetch_one(&mut **tx)
            .await
            .store("announcing lifecycle changes")?;
    }
    if leased.is_empty() {
        return Ok(None);
    }
    let leased: HashSet<(&str, i64)> = leased.iter().map(|row| (row.customer_id.as_str(), row.version)).collect();
    let mut handed: Vec<HandedChange> = changes
        .iter()
        .zip(documents)
        .filter(|(c, _)| leased.contains(&(c.customer_id.as_str(), c.version)))
        .map(|(c, change)| HandedChange {
            customer_id: c.customer_id.clone(),
            version: c.version,
            program_id: c.program_id.to_string(),
            change,
            recorded_at: c.recorded_at,
        })
        .collect();
    handed.sort_by(|a, b| (&a.customer_id, a.version).cmp(&(&b.customer_id, b.version)));
    Ok(Some(HandOff { token, leased_at, changes: handed }))
}
