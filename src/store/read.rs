//! Reads for the query API. Listings use keyset pagination: the position is
//! the last row's sort key, so rows that do not change keep their place
//! between pages whatever is written meanwhile.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::event::rfc3339_ms;
use crate::lifecycle::{AuthState, ConsentState, ExpiryWarning, Lifecycle};
use crate::store::error::{StoreError, StoreResultExt};

/// The programs a read may see: `None` for every program. A customer of
/// another program is, to the reader, a customer that does not exist.
pub type Visible<'a> = Option<&'a [String]>;

/// A customer's stored lifecycle with what the API shows beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLifecycle {
    /// The lifecycle.
    pub lifecycle: Lifecycle,
    /// Its change version.
    pub version: i64,
    /// When it was last updated.
    pub updated_at: DateTime<Utc>,
    /// The customer's program.
    pub program_id: String,
    /// The expiry warnings sent for the current authorization.
    pub expiry_warnings: Vec<ExpiryWarning>,
}

/// One customer's stored lifecycle, when the customer exists in `visible`.
/// Takes the pool, or a transaction's connection to read in its snapshot.
///
/// One row by primary key, whatever the parameters: the API runs it on a
/// pool whose statements keep a generic plan (`store::cached_plan_options`).
/// Migration 20261205000001's function `customer_lifecycle` did the same
/// before (a plan cached inside a PL/pgSQL function), at the cost of the
/// function call and of planning the statement that called it; it stays
/// for the releases that call it until a later release drops it.
pub async fn lifecycle(
    db: impl PgExecutor<'_>,
    customer_id: &str,
    visible: Visible<'_>,
) -> Result<Option<StoredLifecycle>, StoreError> {
    // The lifecycle and the warnings come as text: the reader decodes them
    // straight into its types.
    let row = sqlx::query!(
        r#"
        SELECT c.lifecycle::text AS "lifecycle!", c.version, c.updated_at, c.program_id,
               CASE WHEN c.authorization_warned_for = c.consent_authorized_at
                    THEN c.authorization_warnings::text ELSE '[]' END AS "expiry_warnings!"
        FROM customers c
        WHERE c.customer_id = $1 AND ($2::text[] IS NULL OR c.program_id = ANY ($2))
        "#,
        customer_id,
        visible,
    )
    .fetch_optional(db)
    .await
    .store("reading a lifecycle")?;
    row.map(|row| {
        let lifecycle = serde_json::from_str(&row.lifecycle)
            .map_err(|err| StoreError::undecodable("decoding a stored lifecycle", &err))?;
        let expiry_warnings = serde_json::from_str(&row.expiry_warnings)
            .map_err(|err| StoreError::undecodable("decoding stored expiry warnings", &err))?;
        Ok(StoredLifecycle {
            lifecycle,
            version: row.version,
            updated_at: row.updated_at,
            program_id: row.program_id,
            expiry_warnings,
        })
    })
    .transpose()
}

/// The warnings stored for the current authorization (`expiry_warnings` of
/// the consent document).
fn expiry_warnings(stored: serde_json::Value) -> Result<Vec<ExpiryWarning>, StoreError> {
    serde_json::from_value(stored).map_err(|err| StoreError::undecodable("decoding stored expiry warnings", &err))
}

/// A page of a customer's recorded lifecycle changes after `after_version`,
/// in version order; and the last version when more follow.
pub async fn changes(
    db: impl PgExecutor<'_>,
    customer_id: &str,
    after_version: Option<i64>,
    limit: i64,
) -> Result<(Vec<String>, Option<i64>), StoreError> {
    let mut rows = sqlx::query!(
        r#"
        SELECT version, change FROM lifecycle_changes
        WHERE customer_id = $1 AND version > $2
        ORDER BY version
        LIMIT $3
        "#,
        customer_id,
        after_version.unwrap_or(0),
        limit + 1,
    )
    .fetch_all(db)
    .await
    .store("reading lifecycle changes")?;
    let next = cut_page(&mut rows, limit, |r| r.version);
    Ok((rows.into_iter().map(|r| r.change).collect(), next))
}

/// Whether any event of this customer was applied, and the customer is in
/// `visible`.
pub async fn customer_exists(pool: &PgPool, customer_id: &str, visible: Visible<'_>) -> Result<bool, StoreError> {
    let found = sqlx::query_scalar!(
        r#"
        SELECT EXISTS (SELECT 1 FROM customers WHERE customer_id = $1 AND ($2::text[] IS NULL OR program_id = ANY($2)))
        "#,
        customer_id,
        visible,
    )
    .fetch_one(pool)
    .await
    .store("looking up a customer")?;
    Ok(found.unwrap_or(false))
}

/// A page of a customer's events after `after` (`(occurred_at, event_id)`),
/// each the published record plus `recorded_at`; and the key of the last
/// one when more follow.
pub async fn events(
    db: impl PgExecutor<'_>,
    customer_id: &str,
    after: Option<&(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<serde_json::Value>, Option<(DateTime<Utc>, String)>), StoreError> {
    let (after_at, after_id) = match after {
        Some((at, id)) => (Some(*at), Some(id.as_str())),
        None => (None, None),
    };
    let mut rows = sqlx::query!(
        r#"
        SELECT event_id, occurred_at, recorded_at, record
        FROM connect_events
        WHERE customer_id = $1
          AND ($2::timestamptz IS NULL OR (occurred_at, event_id) > ($2, $3::text))
        ORDER BY occurred_at, event_id
        LIMIT $4
        "#,
        customer_id,
        after_at,
        after_id,
        limit + 1,
    )
    .fetch_all(db)
    .await
    .store("reading events")?;
    let next = cut_page(&mut rows, limit, |r| (r.occurred_at, r.event_id.clone()));
    let events = rows
        .into_iter()
        .map(|row| {
            let mut record = row.record;
            if let serde_json::Value::Object(fields) = &mut record {
                fields.insert("recorded_at".into(), rfc3339_ms::format(&row.recorded_at).into());
            }
            record
        })
        .collect();
    Ok((events, next))
}

/// Pages are read with one row more than asked for: its presence says
/// another page follows. Cuts `rows` to `limit` and returns the sort key of
/// the last row kept when more follow.
pub(crate) fn cut_page<R, K>(rows: &mut Vec<R>, limit: i64, key: impl Fn(&R) -> K) -> Option<K> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    if more { rows.last().map(key) } else { None }
}

/// Filters of the customer listing; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct CustomerFilter {
    /// Consent state.
    pub consent: Option<ConsentState>,
    /// Authentication state.
    pub authentication: Option<AuthState>,
    /// Updated at or after.
    pub updated_since: Option<DateTime<Utc>>,
    /// Current authorization (`consent.authorized_at`) given before the
    /// customer's program's cut-off.
    pub authorized_before: Option<AuthorizedBefore>,
    /// The institution chosen last (`funnel.institution_id`).
    pub institution_id: Option<String>,
    /// First event at or after.
    pub first_event_since: Option<DateTime<Utc>>,
    /// First event before.
    pub first_event_until: Option<DateTime<Utc>>,
    /// The programs visible (`None`: every program).
    pub programs: Option<Vec<String>>,
}

/// "Authorization lapses before T" as each program's cut-off on
/// `consent.authorized_at` (each program has its own period): customers of
/// program `programs[i]` match when authorized before `cutoffs[i]`, others
/// before `otherwise`. A program whose authorizations never lapse has a
/// cut-off no authorization precedes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedBefore {
    /// Program ids.
    pub programs: Vec<String>,
    /// Their cut-offs.
    pub cutoffs: Vec<DateTime<Utc>>,
    /// The cut-off of every other program.
    pub otherwise: DateTime<Utc>,
}

/// One customer of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedCustomer {
    /// The customer.
    pub customer_id: String,
    /// Its program.
    pub program_id: String,
    /// Its lifecycle.
    pub lifecycle: Lifecycle,
    /// When it was last updated.
    pub updated_at: DateTime<Utc>,
    /// The expiry warnings sent for the current authorization.
    pub expiry_warnings: Vec<ExpiryWarning>,
}

/// A page of customers after `after` (`(updated_at, customer_id)`).
pub async fn customers(
    pool: &PgPool,
    filter: &CustomerFilter,
    after: Option<&(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<ListedCustomer>, Option<(DateTime<Utc>, String)>), StoreError> {
    let (after_at, after_id) = match after {
        Some((at, id)) => (Some(*at), Some(id.as_str())),
        None => (None, None),
    };
    // The text is in its own file so that a test can EXPLAIN exactly this
    // statement (the index `customers_by_institution` serves its
    // `institution_id` filter).
    let mut rows = sqlx::query_file!(
        "src/store/customers_listing.sql",
        filter.consent.map(ConsentState::as_str),
        filter.authentication.map(AuthState::as_str),
        filter.updated_since,
        after_at,
        after_id,
        limit + 1,
        filter.authorized_before.as_ref().map(|a| a.otherwise),
        filter.institution_id.as_deref(),
        filter.first_event_since,
        filter.first_event_until,
        filter.programs.as_deref(),
        filter.authorized_before.as_ref().map(|a| a.programs.as_slice()),
        filter.authorized_before.as_ref().map(|a| a.cutoffs.as_slice()),
    )
    .fetch_all(pool)
    .await
    .store("listing customers")?;
    let next = cut_page(&mut rows, limit, |r| (r.updated_at, r.customer_id.clone()));
    let customers = rows
        .into_iter()
        .map(|row| {
            let lifecycle: Lifecycle = serde_json::from_value(row.lifecycle)
                .map_err(|err| StoreError::undecodable("decoding a stored lifecycle", &err))?;
            Ok(ListedCustomer {
                customer_id: row.customer_id,
                program_id: row.program_id,
                lifecycle,
                updated_at: row.updated_at,
                expiry_warnings: expiry_warnings(row.expiry_warnings)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((customers, next))
}
