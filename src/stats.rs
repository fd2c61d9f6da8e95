//! The aggregate API under `/v1/stats`: the connect funnel for a window, per
//! hour or day, and per institution. Behind the same bearer tokens as the
//! rest of `/v1`; the operator console (`/console/`) draws its funnel screen
//! from these three routes.
//!
//! A window `[since, until)` holds the customers whose *first* event
//! occurred in it (a cohort): each is counted once, with every step they
//! reached since and the authentication and consent they have now
//! (`docs/lifecycle.md`, "The connect funnel").

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::event::rfc3339_ms;
use crate::query::{parse_limit, parse_time, query_params};
use crate::store::stats::{self, Counts};

/// The window when none is given: the 30 days before `until` (now).
pub const DEFAULT_WINDOW: Duration = Duration::days(30);
/// Most buckets one time series may have (100 days of hours).
pub const MAX_BUCKETS: i64 = 2_400;

/// The window of first events.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowParams {
    /// RFC 3339 time; customers whose first event occurred at or after it
    /// (default: 30 days before `until`).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// RFC 3339 time; ... and before it (default: now). A window whose
    /// `since` is not before `until` is empty.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

/// The window and the bucket size.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeseriesParams {
    /// RFC 3339 time; customers whose first event occurred at or after it
    /// (default: 30 days before `until`).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// RFC 3339 time; ... and before it (default: now). A window whose
    /// `since` is not before `until` is empty.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// `hour` or `day` (UTC; default `day`). At most 2,400 buckets: a longer
    /// window is cut to its last 2,400 (see `truncated`).
    #[param(value_type = Option<Bucket>)]
    bucket: Option<String>,
}

/// The window and how many institutions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstitutionParams {
    /// RFC 3339 time; customers whose first event occurred at or after it
    /// (default: 30 days before `until`).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// RFC 3339 time; ... and before it (default: now). A window whose
    /// `since` is not before `until` is empty.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// How many institutions, 1 to 500 (default 50), those with the most
    /// customers.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// A time series' bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// An hour (UTC).
    Hour,
    /// A day (UTC).
    Day,
}

impl Bucket {
    fn length(self) -> Duration {
        match self {
            Self::Hour => Duration::hours(1),
            Self::Day => Duration::days(1),
        }
    }
}

/// The steps reached: each counts the customers who reached it or a later
/// one (`mfa_challenged` only those challenged).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct StepCounts {
    /// Any event of the Connect flow.
    pub started: i64,
    /// An event at a chosen institution.
    pub institution_chosen: i64,
    /// An MFA challenge.
    pub mfa_challenged: i64,
    /// Signed in (`discovered` or `added`).
    pub authenticated: i64,
    /// Shared an account (consent granted at least once).
    pub consent_granted: i64,
}

/// Customers whose authentication is `failed` now, by reason.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct FailedCounts {
    /// All of them.
    pub total: i64,
    /// By `authentication.reason`.
    pub by_reason: FailureReasons,
}

/// Failure reasons.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct FailureReasons {
    /// `invalidCredentials`.
    pub invalid_credentials: i64,
    /// `unableToConnect`.
    pub unable_to_connect: i64,
    /// `institutionNotFound`.
    pub institution_not_found: i64,
    /// `institutionNotSupported`.
    pub institution_not_supported: i64,
}

/// Customers whose authentication is `abandoned` now, by reason.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct AbandonedCounts {
    /// All of them.
    pub total: i64,
    /// By `authentication.reason`.
    pub by_reason: AbandonReasons,
}

/// Abandonment reasons.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct AbandonReasons {
    /// `cancel`.
    pub cancelled: i64,
    /// `done` while unfinished.
    pub abandoned: i64,
}

/// The funnel of a group of customers.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct FunnelCounts {
    /// Customers whose first event is in the window (the bucket).
    pub customers: i64,
    /// How many reached each step.
    pub steps: StepCounts,
    /// How many ended failed, by reason.
    pub failed: FailedCounts,
    /// How many ended abandoned, by reason.
    pub abandoned: AbandonedCounts,
    /// Authentication `in_progress` or `mfa_challenge` now: neither
    /// finished nor ended.
    pub in_progress: i64,
    /// Consent `revoked` now (granted once, no account shared now).
    pub consent_revoked: i64,
    /// `consent_granted / started`, from 0 to 1; null when none started.
    pub conversion: Option<f64>,
}

impl From<Counts> for FunnelCounts {
    fn from(c: Counts) -> Self {
        Self {
            customers: c.customers,
            steps: StepCounts {
                started: c.started,
                institution_chosen: c.institution_chosen,
                mfa_challenged: c.mfa_challenged,
                authenticated: c.authenticated,
                consent_granted: c.consent_granted,
            },
            failed: FailedCounts {
                total: c.failed,
                by_reason: FailureReasons {
                    invalid_credentials: c.failed_invalid_credentials,
                    unable_to_connect: c.failed_unable_to_connect,
                    institution_not_found: c.failed_institution_not_found,
                    institution_not_supported: c.failed_institution_not_supported,
                },
            },
            abandoned: AbandonedCounts {
                total: c.abandoned,
                by_reason: AbandonReasons { cancelled: c.abandoned_cancelled, abandoned: c.abandoned_abandoned },
            },
            in_progress: c.in_progress,
            consent_revoked: c.consent_revoked,
            conversion: conversion(c.consent_granted, c.started),
        }
    }
}

/// `granted / started`; `None` when nobody started.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn conversion(granted: i64, started: i64) -> Option<f64> {
    (started > 0).then(|| granted as f64 / started as f64)
}

/// The funnel of a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct Funnel {
    /// The window's start (inclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// The window's end (exclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub until: DateTime<Utc>,
    /// Its customers' funnel.
    #[serde(flatten)]
    pub counts: FunnelCounts,
}

/// One bucket of a time series.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketFunnel {
    /// The bucket's start (UTC); it holds first events in `[start, start +
    /// bucket)`, cut to the window.
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub start: DateTime<Utc>,
    /// Its customers' funnel.
    #[serde(flatten)]
    pub counts: FunnelCounts,
}

/// The funnel per bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeseries {
    /// The window's start (inclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// The window's end (exclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub until: DateTime<Utc>,
    /// The bucket size.
    pub bucket: Bucket,
    /// True when the window spans more than 2,400 buckets: it was cut to
    /// its last 2,400, and `since` is the first one's start.
    pub truncated: bool,
    /// Every bucket the window touches, in time order, empty ones included.
    pub buckets: Vec<BucketFunnel>,
}

/// One institution's customers.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstitutionFunnel {
    /// The institution the customers chose last.
    pub institution_id: String,
    /// Customers who chose it last (and whose first event is in the window).
    pub customers: i64,
    /// Of those, signed in.
    pub authenticated: i64,
    /// Of those, shared an account.
    pub consent_granted: i64,
    /// Of those, `failed` now, by reason.
    pub failed: FailedCounts,
    /// Of those, `abandoned` now, by reason.
    pub abandoned: AbandonedCounts,
    /// `consent_granted / customers`; null when none.
    pub conversion: Option<f64>,
}

/// The institutions with the most customers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Institutions {
    /// The window's start (inclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// The window's end (exclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub until: DateTime<Utc>,
    /// Sorted by `customers`, most first, then by id; customers who chose
    /// no institution are not in any row.
    pub institutions: Vec<InstitutionFunnel>,
}

/// The window from the query string, defaulted and checked. A window whose
/// `since` is not before its `until` is empty (every count 0, no buckets),
/// not an error: the parameters are each valid alone.
fn window(
    since: Option<&str>,
    until: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let until = parse_time("until", until)?.unwrap_or(now);
    let since = match parse_time("since", since)? {
        Some(since) => since,
        None => {
            until.checked_sub_signed(DEFAULT_WINDOW).ok_or_else(|| ApiError::BadRequest("until is too early".into()))?
        }
    };
    // A `since` not before `until` makes an empty window: nobody in it.
    Ok((since, until))
}

/// The connect funnel of the customers whose first event is in the window.
#[utoipa::path(
    get,
    path = "/v1/stats/funnel",
    tag = "stats",
    params(WindowParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The funnel", body = Funnel),
        (status = 400, description = "Invalid time", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn get_funnel(
    State(state): State<Arc<AppState>>,
    params: Result<Query<WindowParams>, QueryRejection>,
) -> Result<Json<Funnel>, ApiError> {
    let params = query_params(params)?;
    let (since, until) = window(params.since.as_deref(), params.until.as_deref(), Utc::now())?;
    let counts = stats::funnel(&state.pool, since, until).await?;
    Ok(Json(Funnel { since, until, counts: counts.into() }))
}

/// The connect funnel per hour or day of first events.
#[utoipa::path(
    get,
    path = "/v1/stats/timeseries",
    tag = "stats",
    params(TimeseriesParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The funnel per bucket", body = Timeseries),
        (status = 400, description = "Invalid time or bucket", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn get_timeseries(
    State(state): State<Arc<AppState>>,
    params: Result<Query<TimeseriesParams>, QueryRejection>,
) -> Result<Json<Timeseries>, ApiError> {
    let params = query_params(params)?;
    let (since, until) = window(params.since.as_deref(), params.until.as_deref(), Utc::now())?;
    let bucket = match params.bucket.as_deref() {
        None | Some("day") => Bucket::Day,
        Some("hour") => Bucket::Hour,
        Some(_) => return Err(ApiError::BadRequest("bucket must be hour or day".into())),
    };
    let (starts, truncated) = bucket_starts(since, until, bucket)?;
    // A window cut to its last buckets starts at the first of them.
    let since = match starts.first() {
        Some(first) if truncated => *first,
        _ => since,
    };
    let found = stats::timeseries(&state.pool, since, until, bucket.length()).await?;
    let buckets = starts
        .into_iter()
        .map(|start| BucketFunnel { start, counts: found.get(&start).copied().unwrap_or_default().into() })
        .collect();
    Ok(Json(Timeseries { since, until, bucket, truncated, buckets }))
}

/// The starts of the buckets `[since, until)` touches, at most the last
/// [`MAX_BUCKETS`] of them; and whether earlier ones were cut.
fn bucket_starts(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    bucket: Bucket,
) -> Result<(Vec<DateTime<Utc>>, bool), ApiError> {
    let length = bucket.length();
    // By whole seconds since the epoch (chrono's `duration_trunc` refuses
    // times outside the nanosecond range, before 1677).
    let step = length.num_seconds();
    let first = DateTime::from_timestamp(since.timestamp().div_euclid(step) * step, 0)
        .ok_or_else(|| ApiError::BadRequest("since is out of range".into()))?;
    let span = (until - first).num_seconds();
    let count = (span + step - 1).div_euclid(step).max(0);
    let skipped = (count - MAX_BUCKETS).max(0);
    let starts = (skipped..count).filter_map(|i| first.checked_add_signed(length * i32::try_from(i).ok()?)).collect();
    Ok((starts, skipped > 0))
}

/// The connect funnel per institution chosen last.
#[utoipa::path(
    get,
    path = "/v1/stats/institutions",
    tag = "stats",
    params(InstitutionParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The institutions with the most customers", body = Institutions),
        (status = 400, description = "Invalid time or limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn get_institutions(
    State(state): State<Arc<AppState>>,
    params: Result<Query<InstitutionParams>, QueryRejection>,
) -> Result<Json<Institutions>, ApiError> {
    let params = query_params(params)?;
    let (since, until) = window(params.since.as_deref(), params.until.as_deref(), Utc::now())?;
    let limit = parse_limit(params.limit.as_deref())?;
    let institutions = stats::institutions(&state.pool, since, until, limit)
        .await?
        .into_iter()
        .map(|(institution_id, counts)| {
            let counts = FunnelCounts::from(counts);
            InstitutionFunnel {
                institution_id,
                customers: counts.customers,
                authenticated: counts.steps.authenticated,
                consent_granted: counts.steps.consent_granted,
                failed: counts.failed,
                abandoned: counts.abandoned,
                conversion: conversion(counts.steps.consent_granted, counts.customers),
            }
        })
        .collect();
    Ok(Json(Institutions { since, until, institutions }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn windows_default_to_the_last_30_days() {
        let now = at("2026-11-26T12:00:00Z");
        assert_eq!(window(None, None, now).ok(), Some((at("2026-10-27T12:00:00Z"), now)));
        let until = "2026-01-31T00:00:00Z";
        assert_eq!(window(None, Some(until), now).ok(), Some((at("2026-01-01T00:00:00Z"), at(until))));
        assert!(window(Some("yesterday"), None, now).is_err());
        let backwards = window(Some("2026-02-01T00:00:00Z"), Some(until), now).expect("an empty window");
        assert_eq!(bucket_starts(backwards.0, backwards.1, Bucket::Day).ok(), Some((vec![], false)));
    }

    #[test]
    fn buckets_cover_the_window_from_the_truncated_start() {
        let starts = bucket_starts(at("2026-11-01T10:30:00Z"), at("2026-11-03T00:00:00Z"), Bucket::Day).expect("ok");
        assert_eq!(starts, (vec![at("2026-11-01T00:00:00Z"), at("2026-11-02T00:00:00Z")], false));
        let starts = bucket_starts(at("2026-11-01T10:30:00Z"), at("2026-11-01T12:00:01Z"), Bucket::Hour).expect("ok");
        assert_eq!(starts.0, vec![at("2026-11-01T10:00:00Z"), at("2026-11-01T11:00:00Z"), at("2026-11-01T12:00:00Z")]);
        let days = bucket_starts(at("2020-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"), Bucket::Day).expect("ok");
        assert_eq!((days.0.len(), days.1), (2192, false));
        let ancient = bucket_starts(at("0309-08-01T23:16:05Z"), at("0309-08-30T23:16:05Z"), Bucket::Day).expect("ok");
        assert_eq!(ancient.0.first().copied(), Some(at("0309-08-01T00:00:00Z")));
    }

    #[test]
    fn a_window_of_too_many_buckets_keeps_its_last_ones() {
        let until = at("2026-11-01T00:00:00Z");
        let (starts, truncated) = bucket_starts(at("2026-01-01T00:00:00Z"), until, Bucket::Hour).expect("ok");
        assert!(truncated);
        assert_eq!(starts.len() as i64, MAX_BUCKETS);
        assert_eq!(starts.last().copied(), Some(at("2026-10-31T23:00:00Z")));
        assert_eq!(starts.first().copied(), Some(until - Duration::hours(MAX_BUCKETS)));
    }

    #[test]
    fn conversion_is_granted_over_started() {
        assert_eq!(conversion(25, 50), Some(0.5));
        assert_eq!(conversion(0, 0), None);
        let counts = FunnelCounts::from(Counts { started: 4, consent_granted: 1, ..Counts::default() });
        assert_eq!(counts.conversion, Some(0.25));
    }
}
