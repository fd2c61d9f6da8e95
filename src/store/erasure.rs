//! Erasure: the customer's data deleted in the consumer's transaction, a
//! tombstone (`erased_customers`) kept in its place as the compliance
//! record, and the tombstones read by the API (410) and purged when the
//! record's time is up (docs/privacy.md).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::event::{ConnectEvent, CustomerId};
use crate::lifecycle::Lifecycle;
use crate::program::ProgramId;
use crate::store::error::{StoreError, StoreResultExt};
use crate::store::read::Visible;

/// What is left of an erased customer, as the consumer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The program the customer belonged to: the id stays that program's
    /// while the record is kept.
    pub program_id: ProgramId,
    /// When the latest erasure occurred: events that occurred at or before
    /// it are dropped.
    pub erased_at: DateTime<Utc>,
    /// The latest erasure's event id.
    pub erasure_event_id: String,
    /// The version of the erased change: a fresh lifecycle's changes go on
    /// from it.
    pub last_version: i64,
}

/// The tombstones of these customers. Call after the customers' locks
/// (`apply::lock_customers`), in a later statement.
pub async fn load(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[&CustomerId],
) -> Result<HashMap<CustomerId, Tombstone>, StoreError> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        r#"
        SELECT customer_id, program_id, erased_at, erasure_event_id, last_version
        FROM erased_customers WHERE customer_id = ANY($1::text[])
        "#,
        &ids as &[&str]
    )
    .fetch_all(&mut **tx)
    .await
    .store("loading erased customers")?;
    let mut tombstones = HashMap::with_capacity(rows.len());
    for row in rows {
        let (Ok(customer_id), Ok(program_id)) =
            (CustomerId::try_from(row.customer_id), ProgramId::try_from(row.program_id))
        else {
            return Err(StoreError::Permanent {
                context: "loading erased customers",
                reason: "a stored customer or program id is not valid".into(),
            });
        };
        tombstones.insert(
            customer_id,
            Tombstone {
                program_id,
                erased_at: row.erased_at,
                erasure_event_id: row.erasure_event_id,
                last_version: row.last_version,
            },
        );
    }
    Ok(tombstones)
}

/// One customer to erase now.
#[derive(Debug, Clone)]
pub struct Erasure<'a> {
    /// The erasure event (`connectflow.customer.erased`, from connectflow).
    pub event: &'a ConnectEvent,
    /// The customer's program.
    pub program_id: &'a ProgramId,
    /// The erased lifecycle, when one was stored and readable: its consent
    /// dates are the compliance record.
    pub lifecycle: Option<&'a Lifecycle>,
    /// The version of the erased change.
    pub version: i64,
}

/// Deletes everything held about these customers (event history, the
/// history's snapshot and folded ids, accounts, logins, lifecycle changes,
/// unpublished outbox rows, revocation requests, the lifecycle itself), names them in the access log by their erasure
/// instead (`erased:<erasure event id>`), and writes their tombstones. The
/// caller holds the customers' locks and records the erased change after
/// this (its outbox row is then the only one left).
pub async fn erase(tx: &mut Transaction<'_, Postgres>, erasures: &[Erasure<'_>]) -> Result<(), StoreError> {
    if erasures.is_empty() {
        return Ok(());
    }
    let n = erasures.len();
    let mut ids: Vec<&str> = Vec::with_capacity(n);
    let mut programs: Vec<&str> = Vec::with_capacity(n);
    let mut erased_at = Vec::with_capacity(n);
    let mut event_ids: Vec<&str> = Vec::with_capacity(n);
    let mut token_ids: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut token_names: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut granted: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut authorized: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut revoked: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    for erasure in erasures {
        let consent = erasure.lifecycle.map(|l| &l.consent);
        ids.push(erasure.event.customer_id.as_str());
        programs.push(erasure.program_id.as_str());
        erased_at.push(erasure.event.occurred_at);
        event_ids.push(erasure.event.event_id.as_str());
        token_ids.push(erasure.event.requested_by.as_ref().map(|t| t.token_id.as_str()));
        token_names.push(erasure.event.requested_by.as_ref().map(|t| t.token_name.as_str()));
        granted.push(consent.and_then(|c| c.granted_at));
        authorized.push(consent.and_then(|c| c.authorized_at));
        revoked.push(consent.and_then(|c| c.revocation.as_ref()).map(|r| r.revoked_at));
        versions.push(erasure.version);
    }
    // The customers' erasure locks, in a statement of their own (sorted, so
    // two writers cannot deadlock on them): an access-log write takes them
    // shared (`access_log::insert`), and whichever of the two comes second
    // sees what the other committed.
    let mut locked = ids.clone();
    locked.sort_unstable();
    locked.dedup();
    sqlx::query!(
        r#"
        SELECT count(pg_advisory_xact_lock(hashtextextended('connectflow.erasure:' || id, 0))) AS "locked!"
        FROM (SELECT id FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, n) ORDER BY n) AS ordered
        "#,
        &locked as &[&str]
    )
    .fetch_one(&mut **tx)
    .await
    .store("taking the erasure locks")?;
    // One statement: data-modifying CTEs all run, on distinct tables.
    sqlx::query!(
        r#"
        WITH history AS (
            DELETE FROM connect_events WHERE customer_id = ANY($1::text[])
        ), account_rows AS (
            DELETE FROM accounts WHERE customer_id = ANY($1::text[])
        ), logins AS (
            DELETE FROM institution_logins WHERE customer_id = ANY($1::text[])
        ), changes AS (
            DELETE FROM lifecycle_changes WHERE customer_id = ANY($1::text[])
        ), outbox AS (
            -- A row a relay has leased stays: the relay deletes it once
            -- published, and the erased change (a later version) waits for
            -- it, so the tombstone cannot overtake a change in flight.
            DELETE FROM lifecycle_outbox
            WHERE customer_id = ANY($1::text[]) AND (leased_until IS NULL OR leased_until < now())
        ), revocations AS (
            DELETE FROM consent_revocation_requests WHERE customer_id = ANY($1::text[])
        ), snapshots AS (
            DELETE FROM customer_history_snapshots WHERE customer_id = ANY($1::text[])
        ), folded AS (
            DELETE FROM history_folded_events WHERE customer_id = ANY($1::text[])
        ), lifecycles AS (
            DELETE FROM customers WHERE customer_id = ANY($1::text[])
        ), accesses AS (
            UPDATE api_access_log AS a SET customer_id = 'erased:' || e.event_id
            FROM UNNEST($1::text[], $4::text[]) AS e(customer_id, event_id)
            WHERE a.customer_id = e.customer_id
        )
        INSERT INTO erased_customers AS t (customer_id, program_id, erased_at, erasure_event_id, token_id, token_name,
                                           consent_granted_at, consent_authorized_at, consent_revoked_at,
                                           last_version, recorded_at)
        SELECT *, now() FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                                    $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int8[])
        ON CONFLICT (customer_id) DO UPDATE SET
            erased_at = EXCLUDED.erased_at, erasure_event_id = EXCLUDED.erasure_event_id,
            token_id = EXCLUDED.token_id, token_name = EXCLUDED.token_name,
            consent_granted_at = COALESCE(EXCLUDED.consent_granted_at, t.consent_granted_at),
            consent_authorized_at = COALESCE(EXCLUDED.consent_authorized_at, t.consent_authorized_at),
            consent_revoked_at = COALESCE(EXCLUDED.consent_revoked_at, t.consent_revoked_at),
            last_version = EXCLUDED.last_version, recorded_at = EXCLUDED.recorded_at
        "#,
        &ids as &[&str],
        &programs as &[&str],
        &erased_at,
        &event_ids as &[&str],
        &token_ids as &[Option<&str>],
        &token_names as &[Option<&str>],
        &granted as &[Option<DateTime<Utc>>],
        &authorized as &[Option<DateTime<Utc>>],
        &revoked as &[Option<DateTime<Utc>>],
        &versions,
    )
    .execute(&mut **tx)
    .await
    .store("erasing customers")?;
    Ok(())
}

/// An erased customer, as the API tells of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Their program.
    pub program_id: String,
    /// When the latest erasure occurred.
    pub erased_at: DateTime<Utc>,
}

/// The customer's erasure, if a tombstone of a program in `visible` is kept
/// for them.
pub async fn erased(pool: &PgPool, customer_id: &str, visible: Visible<'_>) -> Result<Option<Erased>, StoreError> {
    sqlx::query_as!(
        Erased,
        r#"
        SELECT program_id, erased_at FROM erased_customers
        WHERE customer_id = $1 AND ($2::text[] IS NULL OR program_id = ANY($2))
        "#,
        customer_id,
        visible,
    )
    .fetch_optional(pool)
    .await
    .store("looking up an erased customer")
}

/// Deletes the tombstones of erasures older than `before`, `batch` at a
/// time; returns how many went.
pub async fn purge(pool: &PgPool, before: DateTime<Utc>, batch: i64) -> Result<u64, StoreError> {
    let mut purged = 0;
    loop {
        let done = sqlx::query!(
            r#"
            DELETE FROM erased_customers
            WHERE customer_id IN (
                SELECT customer_id FROM erased_customers WHERE erased_at < $1 ORDER BY erased_at LIMIT $2
            )
            "#,
            before,
            batch,
        )
        .execute(pool)
        .await
        .store("purging erasure records")?
        .rows_affected();
        purged += done;
        if done == 0 || done < u64::try_from(batch).unwrap_or(0) {
            return Ok(purged);
        }
    }
}
