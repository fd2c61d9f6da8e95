//! The connect funnel's aggregates, computed in Postgres from the
//! customers' funnel columns (written with their lifecycle, see
//! `migrations/20261127000001_connect_funnel.sql`).
//!
//! A window holds the customers whose first event occurred in it. Every
//! aggregate is one statement over the index `customers_by_first_event`,
//! which carries every column counted, so Postgres answers with an
//! index-only scan and never reads the lifecycle documents.

use std::sync::LazyLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::lifecycle::Steps;

/// The counts of one group of customers (a window, a bucket, an
/// institution), as Postgres returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    /// Customers in the group.
    pub customers: i64,
    /// Reached `started`.
    pub started: i64,
    /// Reached `institution_chosen`.
    pub institution_chosen: i64,
    /// Reached `mfa_challenged`.
    pub mfa_challenged: i64,
    /// Reached `authenticated`.
    pub authenticated: i64,
    /// Reached `consent_granted`.
    pub consent_granted: i64,
    /// Authentication `failed` now.
    pub failed: i64,
    /// ... with reason `invalid_credentials`.
    pub failed_invalid_credentials: i64,
    /// ... with reason `unable_to_connect`.
    pub failed_unable_to_connect: i64,
    /// ... with reason `institution_not_found`.
    pub failed_institution_not_found: i64,
    /// ... with reason `institution_not_supported`.
    pub failed_institution_not_supported: i64,
    /// Authentication `abandoned` now.
    pub abandoned: i64,
    /// ... with reason `cancelled`.
    pub abandoned_cancelled: i64,
    /// ... with reason `abandoned`.
    pub abandoned_abandoned: i64,
    /// Authentication `in_progress` or `mfa_challenge` now.
    pub in_progress: i64,
    /// Consent `revoked` now.
    pub consent_revoked: i64,
}

/// The select list of [`Counts`]; the step bits are those of [`Steps`].
/// Built once from constants (no input reaches it), so the statements are
/// `'static`.
fn counts_sql() -> String {
    let step = |name: &str, bit: i16| format!("count(*) FILTER (WHERE funnel_steps & {bit} <> 0) AS {name}");
    let reason = |state: &str, reason: &str| {
        format!("count(*) FILTER (WHERE auth_state = '{state}' AND auth_reason = '{reason}') AS {state}_{reason}")
    };
    [
        "count(*) AS customers".to_owned(),
        step("started", Steps::STARTED),
        step("institution_chosen", Steps::INSTITUTION_CHOSEN),
        step("mfa_challenged", Steps::MFA_CHALLENGED),
        step("authenticated", Steps::AUTHENTICATED),
        step("consent_granted", Steps::CONSENT_GRANTED),
        "count(*) FILTER (WHERE auth_state = 'failed') AS failed".to_owned(),
        reason("failed", "invalid_credentials"),
        reason("failed", "unable_to_connect"),
        reason("failed", "institution_not_found"),
        reason("failed", "institution_not_supported"),
        "count(*) FILTER (WHERE auth_state = 'abandoned') AS abandoned".to_owned(),
        reason("abandoned", "cancelled"),
        reason("abandoned", "abandoned"),
        "count(*) FILTER (WHERE auth_state IN ('in_progress', 'mfa_challenge')) AS in_progress".to_owned(),
        "count(*) FILTER (WHERE consent_state = 'revoked') AS consent_revoked".to_owned(),
    ]
    .join(", ")
}

/// The customers whose first event is in `[since, until)`.
pub async fn funnel(pool: &PgPool, since: DateTime<Utc>, until: DateTime<Utc>) -> anyhow::Result<Counts> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {} FROM customers WHERE first_event_at >= $1 AND first_event_at < $2", counts_sql())
    });
    sqlx::query_as::<_, Counts>(SQL.as_str())
        .bind(since)
        .bind(until)
        .fetch_one(pool)
        .await
        .context("counting the funnel")
}

/// A bucket of a time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct BucketCounts {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    /// Its customers' counts.
    #[sqlx(flatten)]
    pub counts: Counts,
}

/// [`funnel`] per `unit` (`hour` or `day`, UTC) of first events; buckets
/// without customers are absent.
pub async fn timeseries(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    unit: &str,
) -> anyhow::Result<Vec<BucketCounts>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT date_trunc($3, first_event_at, 'UTC') AS start, {} FROM customers \
             WHERE first_event_at >= $1 AND first_event_at < $2 GROUP BY 1 ORDER BY 1",
            counts_sql()
        )
    });
    sqlx::query_as::<_, BucketCounts>(SQL.as_str())
        .bind(since)
        .bind(until)
        .bind(unit)
        .fetch_all(pool)
        .await
        .context("counting the funnel per bucket")
}

/// An institution's customers.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InstitutionCounts {
    /// The institution chosen last.
    pub institution_id: String,
    /// Its customers' counts.
    #[sqlx(flatten)]
    pub counts: Counts,
}

/// [`funnel`] per institution chosen last, the `limit` institutions with the
/// most customers (then by id); customers who chose none are left out.
pub async fn institutions(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<Vec<InstitutionCounts>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT chosen_institution_id AS institution_id, {} FROM customers \
             WHERE first_event_at >= $1 AND first_event_at < $2 AND chosen_institution_id IS NOT NULL \
             GROUP BY 1 ORDER BY customers DESC, 1 LIMIT $3",
            counts_sql()
        )
    });
    sqlx::query_as::<_, InstitutionCounts>(SQL.as_str())
        .bind(since)
        .bind(until)
        .bind(limit)
        .fetch_all(pool)
        .await
        .context("counting the funnel per institution")
}
