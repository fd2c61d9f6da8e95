//! The connect funnel's aggregates, computed in Postgres from the
//! customers' funnel columns (written with their lifecycle, see
//! `migrations/20261127000001_connect_funnel.sql`).
//!
//! A window holds the customers whose first event occurred in it. Each
//! aggregate is one statement over the index `customers_by_first_event`,
//! which carries every column counted, so Postgres answers with an
//! index-only scan and never reads the lifecycle documents. It groups the
//! customers by what is counted of them (an [`Outcome`]: steps,
//! authentication, reason, consent; a few dozen combinations), and the API
//! adds each group's customers up: one count per row in Postgres instead of
//! sixteen filtered ones, which halves the time of a million-customer
//! window.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;

use crate::lifecycle::{AuthReason, AuthState, ConsentState, Outcome, Steps};
use crate::store::error::{StoreError, StoreResultExt};
use crate::store::read::Visible;

/// Customers alike in everything counted, in the group `key` of an
/// aggregate (a bucket's start, an institution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<K> {
    /// What the aggregate groups by.
    pub key: K,
    /// What is counted of them.
    pub outcome: Outcome,
    /// How many customers.
    pub customers: i64,
}

/// A group as Postgres returns it: the columns of `customers_by_first_event`
/// but the time.
struct Row<K> {
    key: K,
    steps: i16,
    auth_state: String,
    auth_reason: Option<String>,
    consent_state: String,
    customers: i64,
}

impl<K> Row<K> {
    /// The typed group; a state name this version does not know is data it
    /// cannot count (written by a newer version), not a group to drop.
    fn decode(self) -> Result<Group<K>, StoreError> {
        let unknown = |column: &str, name: &str| StoreError::Permanent {
            context: "counting the funnel",
            reason: format!("{column} {name:?} is not a known state"),
        };
        let authentication =
            AuthState::from_name(&self.auth_state).ok_or_else(|| unknown("auth_state", &self.auth_state))?;
        let reason = match &self.auth_reason {
            Some(name) => Some(AuthReason::from_name(name).ok_or_else(|| unknown("auth_reason", name))?),
            None => None,
        };
        let consent = ConsentState::from_name(&self.consent_state)
            .ok_or_else(|| unknown("consent_state", &self.consent_state))?;
        let outcome = Outcome { steps: Steps::from_bits(self.steps), authentication, reason, consent };
        Ok(Group { key: self.key, outcome, customers: self.customers })
    }
}

/// Decodes every row.
fn decode<K>(rows: Vec<Row<K>>) -> Result<Vec<Group<K>>, StoreError> {
    rows.into_iter().map(Row::decode).collect()
}

/// The customers of `visible` programs (every program for `None`) whose
/// first event is in `[since, until)`.
pub async fn funnel(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    visible: Visible<'_>,
) -> Result<Vec<Group<()>>, StoreError> {
    let rows = sqlx::query_as!(
        Row::<bool>,
        r#"
        SELECT TRUE AS "key!", funnel_steps AS steps, auth_state, auth_reason, consent_state,
               count(*) AS "customers!"
        FROM customers
        WHERE first_event_at >= $1 AND first_event_at < $2 AND ($3::text[] IS NULL OR program_id = ANY($3))
        GROUP BY 2, 3, 4, 5
        "#,
        since,
        until,
        visible,
    )
    .fetch_all(pool)
    .await
    .store("counting the funnel")?;
    let groups = decode(rows)?;
    Ok(groups.into_iter().map(|g| Group { key: (), outcome: g.outcome, customers: g.customers }).collect())
}

/// [`funnel`] per `bucket` of first events (an hour or a day, UTC: the
/// bins start at midnight UTC), keyed by bucket start; buckets without
/// customers are absent.
pub async fn timeseries(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    bucket: Duration,
    visible: Visible<'_>,
) -> Result<Vec<Group<DateTime<Utc>>>, StoreError> {
    // date_bin is arithmetic on the instant; date_trunc(.., 'UTC') would
    // convert every row's time zone and take a third longer.
    let bucket = PgInterval::try_from(bucket).map_err(|err| StoreError::Permanent {
        context: "counting the funnel per bucket",
        reason: format!("bucket {bucket}: {err}"),
    })?;
    let rows = sqlx::query_as!(
        Row::<DateTime<Utc>>,
        r#"
        SELECT date_bin($3, first_event_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS "key!",
               funnel_steps AS steps, auth_state, auth_reason, consent_state, count(*) AS "customers!"
        FROM customers
        WHERE first_event_at >= $1 AND first_event_at < $2 AND ($4::text[] IS NULL OR program_id = ANY($4))
        GROUP BY 1, 2, 3, 4, 5
        "#,
        since,
        until,
        bucket,
        visible,
    )
    .fetch_all(pool)
    .await
    .store("counting the funnel per bucket")?;
    decode(rows)
}

/// [`funnel`] per institution chosen last, of the `limit` institutions with
/// the most customers; customers who chose none are left out.
pub async fn institutions(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
    visible: Visible<'_>,
) -> Result<Vec<Group<String>>, StoreError> {
    let rows = sqlx::query_as!(
        Row::<String>,
        r#"
        SELECT institution_id AS "key!", steps AS "steps!", auth_state AS "auth_state!",
               auth_reason, consent_state AS "consent_state!", customers AS "customers!"
        FROM (
            SELECT grouped.*, dense_rank() OVER (ORDER BY total DESC, institution_id) AS rank
            FROM (
                SELECT chosen_institution_id AS institution_id, funnel_steps AS steps, auth_state, auth_reason,
                       consent_state, count(*) AS customers,
                       sum(count(*)) OVER (PARTITION BY chosen_institution_id) AS total
                FROM customers
                WHERE first_event_at >= $1 AND first_event_at < $2 AND chosen_institution_id IS NOT NULL
                  AND ($4::text[] IS NULL OR program_id = ANY($4))
                GROUP BY 1, 2, 3, 4, 5
            ) AS grouped
        ) AS ranked
        WHERE rank <= $3
        "#,
        since,
        until,
        limit,
        visible,
    )
    .fetch_all(pool)
    .await
    .store("counting the funnel per institution")?;
    decode(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(steps: i16, auth: &str, reason: Option<&str>, consent: &str) -> Row<()> {
        Row {
            key: (),
            steps,
            auth_state: auth.to_owned(),
            auth_reason: reason.map(str::to_owned),
            consent_state: consent.to_owned(),
            customers: 3,
        }
    }

    #[test]
    fn rows_decode_into_typed_outcomes() {
        let group = row(27, "failed", Some("invalid_credentials"), "revoked").decode().expect("decodes");
        assert_eq!(group.customers, 3);
        assert_eq!(
            group.outcome,
            Outcome {
                steps: Steps {
                    started: true,
                    institution_chosen: true,
                    mfa_challenged: false,
                    authenticated: true,
                    consent_granted: true
                },
                authentication: AuthState::Failed,
                reason: Some(AuthReason::InvalidCredentials),
                consent: ConsentState::Revoked,
            }
        );
        assert_eq!(Steps::from_bits(group.outcome.steps.bits()), group.outcome.steps);
    }

    #[test]
    fn a_state_this_version_does_not_know_is_an_error_not_a_lost_group() {
        assert!(row(1, "teleported", None, "none").decode().is_err());
        assert!(row(1, "failed", Some("gremlins"), "none").decode().is_err());
        assert!(row(1, "failed", None, "maybe").decode().is_err());
    }
}
