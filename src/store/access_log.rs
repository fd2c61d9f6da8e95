//! The access log's table (`api_access_log`): batched inserts, keyset pages
//! for the audit, and pruning by age.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;

use crate::event::rfc3339_ms;
use crate::store::error::{StoreError, StoreResultExt};
use crate::store::read::cut_page;

/// One `/v1` request, as logged: never response data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccessRecord {
    /// When the request arrived.
    #[serde(with = "rfc3339_ms")]
    pub at: DateTime<Utc>,
    /// The token's id (an issued token's, or a bootstrap token's).
    pub token_id: String,
    /// The programs in scope: the token's, narrowed by `program_id=`; null
    /// for every program.
    pub programs: Option<Vec<String>>,
    /// The HTTP method.
    pub method: String,
    /// The route template (`/v1/customers/{customer_id}/lifecycle`), never
    /// the raw URL.
    pub route: String,
    /// The customer, when the route names one (and the id is valid).
    pub customer_id: Option<String>,
    /// The status answered.
    pub status: u16,
    /// How many items the answer held (a lifecycle is 1, a page its
    /// length); null for answers without items (errors).
    pub items: Option<i32>,
}

/// An audit query: every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct AccessFilter {
    /// Requests naming this customer.
    pub customer_id: Option<String>,
    /// Requests made with this token.
    pub token_id: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Only records whose programs all are among these (a program-limited
    /// auditor); `None`: every record.
    pub within_programs: Option<Vec<String>>,
}

/// Writes `records` in one statement.
pub async fn insert(pool: &PgPool, records: &[AccessRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let n = records.len();
    let mut at = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    // Postgres arrays cannot hold arrays of different lengths: programs go
    // as one text per record ('\x1f'-separated), NULL for every program.
    let mut programs: Vec<Option<String>> = Vec::with_capacity(n);
    let mut method = Vec::with_capacity(n);
    let mut route = Vec::with_capacity(n);
    let mut customer: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut status: Vec<i16> = Vec::with_capacity(n);
    let mut items: Vec<Option<i32>> = Vec::with_capacity(n);
    for record in records {
        at.push(record.at);
        token.push(record.token_id.as_str());
        programs.push(record.programs.as_ref().map(|p| p.join("\u{1f}")));
        method.push(record.method.as_str());
        route.push(record.route.as_str());
        customer.push(record.customer_id.as_deref());
        status.push(i16::try_from(record.status).unwrap_or(i16::MAX));
        items.push(record.items);
    }
    let mut tx = pool.begin().await.store("beginning an access-log write")?;
    // An erased customer (not back since) is named by their erasure
    // (`erased:<event id>`), here or, when the erasure commits first, by the
    // erasure itself. The customers' erasure locks, shared, in a statement
    // of their own, order this write against an erasure (which holds them
    // exclusively, `erasure::erase`): whichever comes second sees what the
    // other committed. They are not the customers' own locks, so this write
    // never waits for, nor holds up, the consumer's ordinary batches.
    let mut named: Vec<&str> = customer.iter().flatten().copied().collect();
    named.sort_unstable();
    named.dedup();
    if !named.is_empty() {
        sqlx::query!(
            r#"
            SELECT count(pg_advisory_xact_lock_shared(hashtextextended('connectflow.erasure:' || id, 0))) AS "locked!"
            FROM (SELECT id FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, n) ORDER BY n) AS ordered
            "#,
            &named as &[&str]
        )
        .fetch_one(&mut *tx)
        .await
        .store("locking the erasures of the customers an access names")?;
    }
    sqlx::query!(
        r#"
        INSERT INTO api_access_log (at, token_id, programs, method, route, customer_id, status, items)
        SELECT r.at, r.token_id, CASE WHEN r.programs IS NULL THEN NULL ELSE string_to_array(r.programs, E'\x1f') END,
               r.method, r.route, COALESCE('erased:' || e.erasure_event_id, r.customer_id), r.status, r.items
        FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int2[],
                    $8::int4[]) AS r(at, token_id, programs, method, route, customer_id, status, items)
             LEFT JOIN erased_customers e ON e.customer_id = r.customer_id
                 AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = r.customer_id)
        "#,
        &at,
        &token as &[&str],
        &programs as &[Option<String>],
        &method as &[&str],
        &route as &[&str],
        &customer as &[Option<&str>],
        &status,
        &items as &[Option<i32>],
    )
    .execute(&mut *tx)
    .await
    .store("writing the access log")?;
    tx.commit().await.store("committing an access-log write")?;
    Ok(())
}

/// A page of records after `after` (`(at, id)`), in time order; and the key
/// of the last one when more follow. Takes the pool, or a transaction's
/// connection to read in its snapshot.
pub async fn page(
    db: impl PgExecutor<'_>,
    filter: &AccessFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<(Vec<AccessRecord>, Option<(DateTime<Utc>, i64)>), StoreError> {
    let (after_at, after_id) = after.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    let mut rows = sqlx::query!(
        r#"
        SELECT id, at, token_id, programs, method, route, customer_id, status, items
        FROM api_access_log
        WHERE ($1::text IS NULL OR customer_id = $1)
          AND ($2::text IS NULL OR token_id = $2)
          AND ($3::timestamptz IS NULL OR at >= $3)
          AND ($4::timestamptz IS NULL OR at < $4)
          AND ($5::timestamptz IS NULL OR (at, id) > ($5, $6::int8))
          AND ($8::text[] IS NULL OR (programs IS NOT NULL AND programs <@ $8))
        ORDER BY at, id
        LIMIT $7
        "#,
        filter.customer_id.as_deref(),
        filter.token_id.as_deref(),
        filter.since,
        filter.until,
        after_at,
        after_id,
        limit + 1,
        filter.within_programs.as_deref(),
    )
    .fetch_all(db)
    .await
    .store("reading the access log")?;
    let next = cut_page(&mut rows, limit, |r| (r.at, r.id));
    let records = rows
        .into_iter()
        .map(|row| AccessRecord {
            at: row.at,
            token_id: row.token_id,
            programs: row.programs,
            method: row.method,
            route: row.route,
            customer_id: row.customer_id,
            status: u16::try_from(row.status).unwrap_or(0),
            items: row.items,
        })
        .collect();
    Ok((records, next))
}

/// Deletes records older than `before`, `batch` at a time (short
/// transactions, so pruning a large backlog never holds locks for long);
/// returns how many went.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>, batch: i64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query!(
            r#"
            DELETE FROM api_access_log
            WHERE id IN (SELECT id FROM api_access_log WHERE at < $1 ORDER BY at, id LIMIT $2)
            "#,
            before,
            batch,
        )
        .execute(pool)
        .await
        .store("pruning the access log")?
        .rows_affected();
        deleted += done;
        if done < u64::try_from(batch).unwrap_or(0) || done == 0 {
            return Ok(deleted);
        }
    }
}
