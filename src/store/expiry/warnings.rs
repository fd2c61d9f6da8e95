//! Warnings before authorizations lapse: one lifecycle change
//! (`reason: "authorization_expiring"`) per threshold of
//! `CONNECTFLOW_AUTHORIZATION_WARN_DAYS` an authorization crosses, the nearest
//! only ([`AuthorizationPolicy::warning_due`]), exactly once whatever the
//! number of `consume` processes looking for them.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{BATCH, Customers};
use crate::change::Versioner;
use crate::event::CustomerId;
use crate::lifecycle::{AuthorizationPolicy, ExpiryWarning, Lifecycle, WarningWindow};
use crate::program::ProgramId;
use crate::store::apply::lock_customers;
use crate::store::changes::{Announce, record_changes};
use crate::store::error::{StoreError, StoreResultExt};

/// Announces the warning due at `now` for every authorization of
/// `customers` (whose authorizations last as `policy` says) that crossed one
/// of `thresholds` (days before the lapse) nearer than any it was warned at;
/// returns how many were. Each batch locks its customers (as the consumer
/// does) and decides again under the locks, so two processes never announce
/// one warning twice, and a customer who reauthorized, revoked or was
/// erased meanwhile is not warned about the old authorization.
pub async fn announce_expiring_of(
    pool: &PgPool,
    customers: Customers<'_>,
    policy: AuthorizationPolicy,
    thresholds: &[u32],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let mut announced = 0;
    for window in policy.warning_windows(thresholds, now) {
        announced += announce_window(pool, customers, policy, thresholds, window, now).await?;
    }
    Ok(announced)
}

/// [`announce_expiring_of`] for every customer.
pub async fn announce_expiring(
    pool: &PgPool,
    policy: AuthorizationPolicy,
    thresholds: &[u32],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    announce_expiring_of(pool, Customers::All, policy, thresholds, now).await
}

/// The authorizations given within `window` that were not warned at its
/// threshold or a nearer one: a range of the index on
/// `(consent_authorized_at, customer_id)`, read alone (the index carries the
/// program and the warnings' columns), in pages of [`BATCH`].
async fn announce_window(
    pool: &PgPool,
    customers: Customers<'_>,
    policy: AuthorizationPolicy,
    thresholds: &[u32],
    window: WarningWindow,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let (only, none_of) = match customers {
        Customers::All => (None, None),
        Customers::Of(program) => (Some(program.as_str()), None),
        Customers::NoneOf(programs) => (None, Some(programs)),
    };
    let days = i32::try_from(window.days).unwrap_or(i32::MAX);
    let mut announced = 0;
    let mut after = (window.after, String::new());
    loop {
        let candidates = sqlx::query!(
            r#"
            SELECT customer_id, consent_authorized_at AS "authorized_at!" FROM customers
            WHERE consent_authorized_at > $1 AND consent_authorized_at <= $2
              AND (consent_authorized_at, customer_id) > ($3, $4)
              AND (authorization_warned_for IS DISTINCT FROM consent_authorized_at OR authorization_warned_days > $5)
              AND ($6::text IS NULL OR program_id = $6)
              AND ($7::text[] IS NULL OR program_id <> ALL($7))
            ORDER BY consent_authorized_at, customer_id
            LIMIT $8
            "#,
            window.after,
            window.up_to,
            after.0,
            after.1.as_str(),
            days,
            only,
            none_of as Option<&[&str]>,
            BATCH,
        )
        .fetch_all(pool)
        .await
        .store("finding lapsing authorizations")?;
        let Some(last) = candidates.last() else { return Ok(announced) };
        after = (last.authorized_at, last.customer_id.clone());
        let ids: Vec<CustomerId> =
            candidates.into_iter().filter_map(|row| CustomerId::try_from(row.customer_id).ok()).collect();
        announced += warn_batch(pool, ids, policy, thresholds, now).await?;
    }
}

async fn warn_batch(
    pool: &PgPool,
    mut ids: Vec<CustomerId>,
    policy: AuthorizationPolicy,
    thresholds: &[u32],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    // Locked in the consumer's order (by id), whatever order they were found in.
    ids.sort();
    ids.dedup();
    let mut tx = pool.begin().await.store("beginning an expiry warning batch")?;
    let sorted: Vec<&CustomerId> = ids.iter().collect();
    lock_customers(&mut tx, &sorted).await?;
    let raw: Vec<&str> = ids.iter().map(CustomerId::as_str).collect();
    // Again, under the locks: another process may have warned them, an
    // event reauthorized or revoked them, or an erasure deleted them, since
    // the candidates were read.
    let rows = sqlx::query!(
        r#"
        SELECT customer_id, lifecycle::text AS "lifecycle!", version, consent_authorized_at AS "authorized_at!",
               program_id, authorization_warned_for, authorization_warned_days
        FROM customers
        WHERE customer_id = ANY($1::text[]) AND consent_authorized_at IS NOT NULL
        "#,
        &raw as &[&str],
    )
    .fetch_all(&mut *tx)
    .await
    .store("reading lapsing authorizations")?;
    let mut changes = Vec::with_capacity(rows.len());
    let mut customers = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut authorized = Vec::with_capacity(rows.len());
    let mut warned_days = Vec::with_capacity(rows.len());
    let mut sent = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(customer_id) = CustomerId::try_from(row.customer_id) else { continue };
        let smallest_sent = if row.authorization_warned_for == Some(row.authorized_at) {
            row.authorization_warned_days.and_then(|days| u32::try_from(days).ok())
        } else {
            None
        };
        let Some(due) = policy.warning_due(row.authorized_at, thresholds, smallest_sent, now) else { continue };
        customers.push(customer_id.to_string());
        authorized.push(row.authorized_at);
        warned_days.push(i32::try_from(due.days).unwrap_or(i32::MAX));
        let state: Lifecycle = match serde_json::from_str(&row.lifecycle) {
            Ok(state) => state,
            Err(err) => {
                // Marked as warned without a record, so it is not retried
                // every beat; the next event recomputes the customer.
                tracing::warn!(customer_id = %customer_id, error = %err, "stored lifecycle does not decode; its expiry warning is not published");
                versions.push(row.version);
                sent.push(serde_json::json!([]));
                continue;
            }
        };
        let program_id = ProgramId::try_from(row.program_id).unwrap_or_default();
        let mut versioner = Versioner::new(&customer_id, &program_id, row.version, true, now);
        versioner.expiring(&state, &due);
        versions.push(versioner.version());
        let warning = ExpiryWarning { days: due.days, days_left: due.days_left, sent_at: now };
        sent.push(serde_json::json!([warning]));
        changes.append(&mut versioner.changes);
    }
    record_changes(&mut tx, &changes, Announce::InProcess).await?;
    // The warnings of another authorization are dropped: a new cycle.
    sqlx::query!(
        r#"
        UPDATE customers c SET
            version = u.version,
            authorization_warnings =
                CASE WHEN c.authorization_warned_for = u.authorized_at THEN c.authorization_warnings ELSE '[]' END
                || u.sent,
            authorization_warned_for = u.authorized_at,
            authorization_warned_days = u.days
        FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::int4[], $5::jsonb[])
            AS u(customer_id, version, authorized_at, days, sent)
        WHERE c.customer_id = u.customer_id
        "#,
        &customers,
        &versions,
        &authorized,
        &warned_days,
        &sent,
    )
    .execute(&mut *tx)
    .await
    .store("marking expiry warnings announced")?;
    tx.commit().await.store("committing an expiry warning batch")?;
    Ok(changes.len())
}
