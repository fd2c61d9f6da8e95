//! Lapsed authorizations: one lifecycle change per lapse
//! (`reason: "authorization_expired"`), exactly once whatever the number of
//! `consume` processes looking for them; and the warnings before a lapse
//! ([`warnings`]).

mod warnings;

pub use warnings::{announce_expiring, announce_expiring_of};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::change::Versioner;
use crate::event::CustomerId;
use crate::lifecycle::{AuthorizationPolicy, Lifecycle};
use crate::program::ProgramId;
use crate::store::apply::lock_customers;
use crate::store::changes::{Announce, record_changes};
use crate::store::error::{StoreError, StoreResultExt};

/// Customers looked at per transaction.
const BATCH: i64 = 500;

/// Whose authorizations a pass looks at.
#[derive(Debug, Clone, Copy)]
pub enum Customers<'a> {
    /// Every customer.
    All,
    /// The customers of one program.
    Of(&'a ProgramId),
    /// The customers of none of these programs (those of a program no
    /// longer declared).
    NoneOf(&'a [&'a str]),
}

/// Announces every authorization that lapsed by `now` and was not announced
/// yet; returns how many were. Each batch locks its customers (as the
/// consumer does) and checks again under the locks, so two processes never
/// announce one lapse twice, and a customer who reauthorized meanwhile is
/// not announced at all.
pub async fn announce_lapsed(
    pool: &PgPool,
    policy: AuthorizationPolicy,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    announce_lapsed_of(pool, Customers::All, policy, now).await
}

/// [`announce_lapsed`] for `customers` only, whose authorizations last as
/// `policy` says (each program has its own period).
pub async fn announce_lapsed_of(
    pool: &PgPool,
    customers: Customers<'_>,
    policy: AuthorizationPolicy,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let Some(authorized_before) = policy.authorized_before(now) else { return Ok(0) };
    let (only, none_of) = match customers {
        Customers::All => (None, None),
        Customers::Of(program) => (Some(program.as_str()), None),
        Customers::NoneOf(programs) => (None, Some(programs)),
    };
    let mut announced = 0;
    let mut after = String::new();
    loop {
        let candidates: Vec<String> = sqlx::query_scalar!(
            r#"
            SELECT customer_id FROM customers
            WHERE consent_authorized_at < $1
              AND authorization_expiry_announced_for IS DISTINCT FROM consent_authorized_at
              AND customer_id > $2
              AND ($4::text IS NULL OR program_id = $4)
              AND ($5::text[] IS NULL OR program_id <> ALL($5))
            ORDER BY customer_id
            LIMIT $3
            "#,
            authorized_before,
            after.as_str(),
            BATCH,
            only,
            none_of as Option<&[&str]>,
        )
        .fetch_all(pool)
        .await
        .store("finding lapsed authorizations")?;
        let Some(last) = candidates.last() else { return Ok(announced) };
        after.clone_from(last);
        let ids: Vec<CustomerId> = candidates.into_iter().filter_map(|id| CustomerId::try_from(id).ok()).collect();
        announced += announce_batch(pool, &ids, policy, authorized_before, now).await?;
    }
}

async fn announce_batch(
    pool: &PgPool,
    ids: &[CustomerId],
    policy: AuthorizationPolicy,
    authorized_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await.store("beginning an expiry batch")?;
    let sorted: Vec<&CustomerId> = ids.iter().collect();
    lock_customers(&mut tx, &sorted).await?;
    let raw: Vec<&str> = ids.iter().map(CustomerId::as_str).collect();
    // Again, under the locks: another process may have announced them, or
    // an event reauthorized them, since the candidates were read.
    let rows = sqlx::query!(
        r#"
        SELECT customer_id, lifecycle::text AS "lifecycle!", version, consent_authorized_at AS "authorized_at!",
               program_id
        FROM customers
        WHERE customer_id = ANY($1::text[])
          AND consent_authorized_at < $2
          AND authorization_expiry_announced_for IS DISTINCT FROM consent_authorized_at
        "#,
        &raw as &[&str],
        authorized_before,
    )
    .fetch_all(&mut *tx)
    .await
    .store("reading lapsed authorizations")?;
    let mut changes = Vec::with_capacity(rows.len());
    let mut customers = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut authorized = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(customer_id) = CustomerId::try_from(row.customer_id) else { continue };
        let state: Lifecycle = match serde_json::from_str(&row.lifecycle) {
            Ok(state) => state,
            Err(err) => {
                // Announced without a record: the next event recomputes the
                // customer; never retried in a loop.
                tracing::warn!(customer_id = %customer_id, error = %err, "stored lifecycle does not decode; its lapse is not published");
                customers.push(customer_id.to_string());
                versions.push(row.version);
                authorized.push(row.authorized_at);
                continue;
            }
        };
        let expired_at = policy.expires_at(Some(row.authorized_at)).unwrap_or(now);
        let program_id = ProgramId::try_from(row.program_id).unwrap_or_default();
        let mut versioner = Versioner::new(&customer_id, &program_id, row.version, true, now);
        versioner.expired(&state, expired_at);
        customers.push(customer_id.to_string());
        versions.push(versioner.version());
        authorized.push(row.authorized_at);
        changes.append(&mut versioner.changes);
    }
    record_changes(&mut tx, &changes, Announce::InProcess).await?;
    sqlx::query!(
        r#"
        UPDATE customers c SET version = u.version, authorization_expiry_announced_for = u.authorized_at
        FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[]) AS u(customer_id, version, authorized_at)
        WHERE c.customer_id = u.customer_id
        "#,
        &customers,
        &versions,
        &authorized,
    )
    .execute(&mut *tx)
    .await
    .store("marking lapsed authorizations announced")?;
    tx.commit().await.store("committing an expiry batch")?;
    Ok(changes.len())
}
