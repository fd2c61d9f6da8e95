//! The lifecycle-change outbox: each change of a customer's visible
//! lifecycle becomes a record ([`crate::change::LifecycleChange`]), written to
//! `lifecycle_changes` in the same transaction as the lifecycle it describes;
//! the relay ([`crate::outbox`]) publishes it afterwards.

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
}

/// Writes the changes (history and outbox) in one statement, announcing
/// them as `announce` says (a notification is delivered at commit).
pub async fn record_changes(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[LifecycleChange],
    announce: Announce,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
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
    sqlx::query!(
        r#"
        WITH written AS (
            INSERT INTO lifecycle_changes (customer_id, version, change, recorded_at)
            SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[])
            RETURNING 1
        ), queued AS (
            INSERT INTO lifecycle_outbox (customer_id, version, recorded_at, erasure)
            SELECT * FROM UNNEST($1::text[], $2::int8[], $4::timestamptz[], $7::bool[])
            RETURNING 1
        )
        SELECT pg_notify($5, '') AS "notified" FROM (SELECT 1 FROM queued LIMIT 1) AS any_queued WHERE $6
        "#,
        &customers,
        &versions,
        &documents,
        &recorded,
        CHANGES_CHANNEL,
        announce == Announce::Notify,
        &erasure,
    )
    .fetch_all(&mut **tx)
    .await
    .store("recording lifecycle changes")?;
    Ok(())
}
