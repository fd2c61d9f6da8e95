//! `/v1/stats`: the connect funnel for a window, per hour or day, and per
//! institution. Behind the same bearer tokens as the rest of `/v1`; the
//! operator console (`/console/`) draws its funnel screen from these three
//! routes.
//!
//! A window `[since, until)` holds the customers whose *first* event
//! occurred in it (a cohort): each is counted once, with every step they
//! reached since and the authentication and consent they have now
//! (`docs/lifecycle.md`, "The connect funnel").
//!
//! Each answer is computed in one of a few places and kept a short while
//! ([`super::stats_cost`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::model::{
    Bucket, BucketFunnel, DEFAULT_WINDOW, Funnel, FunnelCounts, InstitutionFunnel, Institutions, Timeseries,
};
use super::params::{Params, ProgramFilter, parse_limit, parse_time};
use super::stats_cost::{AnswerCache, MOST_PARTS, StatsQuery};
use crate::error::{ApiError, ErrorBody};
use crate::store::error::StoreError;
use crate::store::stats::{self, Group};

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

/// The bucket size of a time series (the window: [`WindowParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BucketParams {
    /// `hour` or `day` (UTC; default `day`). At most 2,400 buckets: a longer
    /// window is cut to its last 2,400 (see `truncated`).
    #[param(value_type = Option<Bucket>)]
    bucket: Option<String>,
}

/// How many institutions (the window: [`WindowParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstitutionLimit {
    /// How many institutions, 1 to 500 (default 50), those with the most
    /// customers.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// A window of first events, as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    /// Whether the window asked for was longer than the longest answered
    /// and was cut to its last part (`since` moved).
    truncated: bool,
}

/// The window from the query string, defaulted, checked and cut to its last
/// `longest` (`CONNECTFLOW_STATS_MAX_WINDOW_DAYS`), so that no request
/// costs more than a window that long. A window whose `since` is not before
/// its `until` is empty (every count 0, no buckets), not an error: the
/// parameters are each valid alone.
fn window(
    since: Option<&str>,
    until: Option<&str>,
    now: DateTime<Utc>,
    longest: chrono::Duration,
) -> Result<Window, ApiError> {
    let until = parse_time("until", until)?.unwrap_or(now);
    let since = match parse_time("since", since)? {
        Some(since) => since,
        None => {
            until.checked_sub_signed(DEFAULT_WINDOW).ok_or_else(|| ApiError::BadRequest("until is too early".into()))?
        }
    };
    // A `since` not before `until` makes an empty window: nobody in it.
    match until.checked_sub_signed(longest) {
        Some(earliest) if since < earliest => Ok(Window { since: earliest, until, truncated: true }),
        _ => Ok(Window { since, until, truncated: false }),
    }
}

/// `[since, until)` cut at `middle` into two windows, when `parts` allows
/// and `middle` is inside it; else the window whole.
fn halves(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    middle: DateTime<Utc>,
    parts: usize,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    if parts >= 2 && since < middle && middle < until {
        vec![(since, middle), (middle, until)]
    } else {
        vec![(since, until)]
    }
}

/// The groups of `count` over each window of `windows`, counted at once
/// (each on a connection of its own), all in one list: [`tally`] adds up a
/// key's groups from different parts.
async fn in_parts<K, F: Future<Output = Result<Vec<Group<K>>, StoreError>>>(
    windows: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    count: impl Fn(DateTime<Utc>, DateTime<Utc>) -> F,
) -> Result<Vec<Group<K>>, StoreError> {
    let parts = futures::future::try_join_all(windows.into_iter().map(|(since, until)| count(since, until))).await?;
    Ok(parts.into_iter().flatten().collect())
}

/// The funnel of each key's customers.
fn tally<K: Eq + Hash>(groups: Vec<Group<K>>) -> HashMap<K, FunnelCounts> {
    let mut counts: HashMap<K, FunnelCounts> = HashMap::new();
    for group in groups {
        counts.entry(group.key).or_default().add(&group.outcome, group.customers);
    }
    counts
}

/// The connect funnel of the customers whose first event is in the window.
#[utoipa::path(
    get,
    path = "/v1/stats/funnel",
    tag = "stats",
    security(("bearer" = ["stats"])),
    params(WindowParams, ProgramFilter),
    responses(
        (status = 200, description = "The funnel", body = Funnel),
        (status = 400, description = "Invalid time", body = ErrorBody),
    )
)]
pub async fn get_funnel(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<WindowParams>,
    Params(program): Params<ProgramFilter>,
) -> Result<(Extension<Items>, Json<Funnel>), ApiError> {
    principal.require(Scope::Stats)?;
    let visible = principal.visible(program.program_id.as_deref())?;
    let query = stats_query(&params, 0, visible.as_deref())?;
    let funnel = cached(&state.stats.funnel, &state, query, 1, |_| async {
        let Window { since, until, truncated } =
            window(params.since.as_deref(), params.until.as_deref(), Utc::now(), state.stats_max_window)?;
        let counts = tally(stats::funnel(&state.read_pool, since, until, visible.as_deref()).await?)
            .remove(&())
            .unwrap_or_default();
        Ok(Funnel { since, until, truncated, counts })
    })
    .await?;
    Ok((Extension(Items(1)), Json(funnel)))
}

/// The cache's key of a statistics query: its parameters parsed (`detail`:
/// what else the route takes) and the programs visible.
fn stats_query(params: &WindowParams, detail: i64, visible: Option<&[String]>) -> Result<StatsQuery, ApiError> {
    let since = parse_time("since", params.since.as_deref())?;
    let until = parse_time("until", params.until.as_deref())?;
    Ok(StatsQuery::new(since, until, detail, visible))
}

/// The answer to `query` from `cache`, or computed by `compute` in the
/// statistics places it gets, up to `parts` (503 `busy` when none frees up
/// in time), given in how many parts it may count, and then kept. Errors are
/// not kept.
async fn cached<V: Clone, F: Future<Output = Result<V, ApiError>>>(
    cache: &AnswerCache<StatsQuery, V>,
    state: &ApiState,
    query: StatsQuery,
    parts: usize,
    compute: impl FnOnce(usize) -> F,
) -> Result<V, ApiError> {
    if let Some(answer) = cache.get(&query) {
        return Ok(answer);
    }
    let places = state.stats.places(parts).await?;
    // The same query may have been answered while this one waited.
    if let Some(answer) = cache.get(&query) {
        return Ok(answer);
    }
    let answer = compute(places.num_permits()).await?;
    cache.insert(query, answer.clone());
    Ok(answer)
}

/// The connect funnel per hour or day of first events.
#[utoipa::path(
    get,
    path = "/v1/stats/timeseries",
    tag = "stats",
    security(("bearer" = ["stats"])),
    params(WindowParams, BucketParams, ProgramFilter),
    responses(
        (status = 200, description = "The funnel per bucket", body = Timeseries),
        (status = 400, description = "Invalid time or bucket", body = ErrorBody),
    )
)]
pub async fn get_timeseries(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<WindowParams>,
    Params(program): Params<ProgramFilter>,
    Params(BucketParams { bucket }): Params<BucketParams>,
) -> Result<(Extension<Items>, Json<Timeseries>), ApiError> {
    principal.require(Scope::Stats)?;
    let visible = principal.visible(program.program_id.as_deref())?;
    let bucket = match bucket.as_deref() {
        None | Some("day") => Bucket::Day,
        Some("hour") => Bucket::Hour,
        Some(_) => return Err(ApiError::BadRequest("bucket must be hour or day".into())),
    };
    let query = stats_query(&params, bucket.length().num_seconds(), visible.as_deref())?;
    let state: &ApiState = &state;
    let series = cached(&state.stats.timeseries, state, query, MOST_PARTS, |parts| async move {
        let Window { since, until, truncated: cut } =
            window(params.since.as_deref(), params.until.as_deref(), Utc::now(), state.stats_max_window)?;
        let (starts, too_many) = bucket_starts(since, until, bucket)?;
        let truncated = cut || too_many;
        // A window cut to its last buckets starts at the first of them.
        let since = match starts.first() {
            Some(first) if too_many => *first,
            _ => since,
        };
        // Cut between two buckets, so that no bucket is counted in both.
        let cut = starts.get(starts.len() / 2).copied().unwrap_or(since);
        let groups = in_parts(halves(since, until, cut, parts), |since, until| {
            stats::timeseries(&state.read_pool, since, until, bucket.length(), visible.as_deref())
        });
        let mut found = tally(groups.await?);
        let buckets: Vec<BucketFunnel> = starts
            .into_iter()
            .map(|start| BucketFunnel { start, counts: found.remove(&start).unwrap_or_default() })
            .collect();
        Ok(Timeseries { since, until, bucket, truncated, buckets })
    })
    .await?;
    Ok((Extension(Items(series.buckets.len())), Json(series)))
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
    security(("bearer" = ["stats"])),
    params(WindowParams, InstitutionLimit, ProgramFilter),
    responses(
        (status = 200, description = "The institutions with the most customers", body = Institutions),
        (status = 400, description = "Invalid time or limit", body = ErrorBody),
    )
)]
pub async fn get_institutions(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<WindowParams>,
    Params(program): Params<ProgramFilter>,
    Params(InstitutionLimit { limit }): Params<InstitutionLimit>,
) -> Result<(Extension<Items>, Json<Institutions>), ApiError> {
    principal.require(Scope::Stats)?;
    let visible = principal.visible(program.program_id.as_deref())?;
    let limit = parse_limit(limit.as_deref())?;
    let query = stats_query(&params, limit, visible.as_deref())?;
    let answer = cached(&state.stats.institutions, &state, query, 1, |_| async {
        let Window { since, until, truncated } =
            window(params.since.as_deref(), params.until.as_deref(), Utc::now(), state.stats_max_window)?;
        let mut institutions: Vec<InstitutionFunnel> =
            tally(stats::institutions(&state.read_pool, since, until, limit, visible.as_deref()).await?)
                .into_iter()
                .map(|(institution_id, counts)| InstitutionFunnel::new(institution_id, counts))
                .collect();
        // Most customers first, then by id.
        institutions
            .sort_by(|a, b| b.customers.cmp(&a.customers).then_with(|| a.institution_id.cmp(&b.institution_id)));
        Ok(Institutions { since, until, truncated, institutions })
    })
    .await?;
    Ok((Extension(Items(answer.institutions.len())), Json(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    use crate::lifecycle::{AuthReason, AuthState, Outcome, Steps};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn windows_default_to_the_last_30_days() {
        let now = at("2026-11-26T12:00:00Z");
        let longest = chrono::Duration::days(400);
        let whole = |since, until| Some(Window { since, until, truncated: false });
        assert_eq!(window(None, None, now, longest).ok(), whole(at("2026-10-27T12:00:00Z"), now));
        let until = "2026-01-31T00:00:00Z";
        assert_eq!(window(None, Some(until), now, longest).ok(), whole(at("2026-01-01T00:00:00Z"), at(until)));
        assert!(window(Some("yesterday"), None, now, longest).is_err());
        let backwards = window(Some("2026-02-01T00:00:00Z"), Some(until), now, longest).expect("an empty window");
        assert_eq!(bucket_starts(backwards.since, backwards.until, Bucket::Day).ok(), Some((vec![], false)));
    }

    #[test]
    fn a_window_longer_than_the_longest_is_cut_to_its_last_part() {
        let until = at("2026-11-26T12:00:00Z");
        let longest = chrono::Duration::days(400);
        let ten_years = window(Some("2016-11-26T12:00:00Z"), Some("2026-11-26T12:00:00Z"), until, longest);
        assert_eq!(ten_years.ok(), Some(Window { since: until - longest, until, truncated: true }));
        let exactly = window(Some("2025-10-22T12:00:00Z"), Some("2026-11-26T12:00:00Z"), until, longest);
        assert_eq!(exactly.ok(), Some(Window { since: until - longest, until, truncated: false }));
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
    fn a_window_is_cut_into_two_that_cover_it_once() {
        let (since, until) = (at("2026-11-01T00:00:00Z"), at("2026-11-03T00:00:00.001Z"));
        let middle = at("2026-11-02T00:00:00.000500Z");
        // Half-open windows meeting at the cut: every instant in exactly one.
        assert_eq!(halves(since, until, middle, 2), vec![(since, middle), (middle, until)]);
        assert_eq!(halves(since, until, middle, 1), vec![(since, until)], "one place: one part");
        assert_eq!(halves(since, until, since, 2), vec![(since, until)], "a cut at an end is no cut");
        assert_eq!(halves(since, until, until, 2), vec![(since, until)]);
        assert_eq!(halves(until, since, middle, 2), vec![(until, since)], "empty stays empty");
    }

    #[test]
    fn groups_add_up_by_key() {
        let outcome = |authentication, reason| Outcome {
            steps: Steps::from_bits(3),
            authentication,
            reason,
            consent: crate::lifecycle::ConsentState::None,
        };
        let groups = vec![
            Group { key: "a", outcome: outcome(AuthState::Failed, Some(AuthReason::UnableToConnect)), customers: 2 },
            Group { key: "b", outcome: outcome(AuthState::InProgress, None), customers: 5 },
            Group { key: "a", outcome: outcome(AuthState::Abandoned, Some(AuthReason::Cancelled)), customers: 1 },
        ];
        let counts = tally(groups);
        let a = counts["a"];
        assert_eq!((a.customers, a.failed.total, a.failed.by_reason.get(AuthReason::UnableToConnect)), (3, 2, 2));
        assert_eq!((a.abandoned.total, a.abandoned.by_reason.get(AuthReason::Cancelled), a.in_progress), (1, 1, 0));
        assert_eq!((counts["b"].customers, counts["b"].in_progress, counts["b"].steps.started), (5, 5, 5));
    }
}
