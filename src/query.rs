//! The query API under `/v1`: "where is this customer in the connect
//! lifecycle?", with the history behind the answer and a filtered listing.
//!
//! Every `/v1` route but the OpenAPI document needs `Authorization: Bearer`
//! with one of `CONNECTFLOW_API_TOKENS`. Listings use keyset pagination with
//! opaque cursors, so pages stay stable while rows are being updated.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::config::SecretList;
use crate::error::{ApiError, ErrorBody};
use crate::event::{CustomerId, rfc3339_ms};
use crate::lifecycle::{
    AuthState, Authentication, AuthorizationPolicy, Consent, ConsentState, FunnelProgress, InstitutionLogin, LastEvent,
    Lifecycle,
};
use crate::store::read;

/// The accepted bearer tokens, kept as SHA-256 digests. The presented token
/// is hashed and compared with every digest in constant time: the comparison
/// always covers 32 bytes per token, so timing tells nothing about which
/// token matched, how much of one, or how long the configured ones are.
#[derive(Clone)]
pub struct ApiAuth {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiAuth({} tokens)", self.digests.len())
    }
}

impl ApiAuth {
    /// From the configured tokens.
    pub fn new(tokens: &SecretList) -> Self {
        Self { digests: tokens.iter().map(|t| digest(t.expose().as_bytes())).collect() }
    }

    /// Whether `presented` is one of the tokens (constant time in both the
    /// presented and the configured tokens' lengths).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        for token in &self.digests {
            matched |= token.ct_eq(&presented);
        }
        bool::from(matched)
    }

    /// Checks `Authorization: Bearer <token>`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes())
            .ok_or(ApiError::Unauthorized)?;
        if self.accepts(presented) { Ok(()) } else { Err(ApiError::Unauthorized) }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Middleware: rejects requests without a valid bearer token.
pub async fn require_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match state.api.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => axum::response::IntoResponse::into_response(err),
    }
}

/// Largest page.
pub const MAX_LIMIT: i64 = 500;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;

/// Consent as the API shows it: the stored consent and when its latest
/// authorization lapses (`CONNECTFLOW_AUTHORIZATION_DAYS` after it).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentView {
    /// State, since when, first grant and latest authorization.
    #[serde(flatten)]
    pub consent: Consent,
    /// `authorized_at` plus the authorization period; null when nothing is
    /// authorized now or authorizations do not lapse.
    #[serde(with = "crate::lifecycle::rfc3339_ms_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// Whether `authorization_expires_at` has passed (at the time of the
    /// answer): the customer must reauthorize before data is collected again.
    pub expired: bool,
}

impl ConsentView {
    /// The view of `consent` at `now`.
    pub fn new(consent: Consent, policy: AuthorizationPolicy, now: DateTime<Utc>) -> Self {
        let authorization_expires_at = policy.expires_at(consent.authorized_at);
        let expired = policy.expired(consent.authorized_at, now);
        Self { consent, authorization_expires_at, expired }
    }
}

/// An institution login as the API shows it, with when its authorization
/// lapses.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstitutionLoginView {
    /// The login, its accounts and `authorized_at`.
    #[serde(flatten)]
    pub login: InstitutionLogin,
    /// `authorized_at` plus the authorization period; null when unknown or
    /// authorizations do not lapse.
    #[serde(with = "crate::lifecycle::rfc3339_ms_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// Whether `authorization_expires_at` has passed.
    pub expired: bool,
}

/// A customer's lifecycle.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerLifecycle {
    /// Finicity's customer id.
    #[schema(example = "1005061234")]
    pub customer_id: String,
    /// Consent state, since when, and its authorization's dates.
    pub consent: ConsentView,
    /// Authentication state, since when, and why when failed or abandoned.
    pub authentication: Authentication,
    /// Shared accounts grouped by institution login.
    pub institution_logins: Vec<InstitutionLoginView>,
    /// How far the customer got through Connect: the funnel steps reached,
    /// the first event's time and the institution chosen last (what
    /// `/v1/stats` counts them by).
    pub funnel: FunnelProgress,
    /// The latest event by `(occurred_at, event_id)`.
    pub last_event: Option<LastEvent>,
    /// How many distinct events are recorded.
    pub event_count: u64,
    /// How many visible changes the lifecycle has had: the `version` of the
    /// latest record on the lifecycle-changes topic (0 before the first).
    pub version: i64,
    /// When connectflow last changed this record.
    #[serde(with = "rfc3339_ms")]
    pub updated_at: DateTime<Utc>,
}

impl CustomerLifecycle {
    /// The API's answer for a stored lifecycle at `now`: everything but the
    /// fold's bookkeeping (`pending_adding`), with the expiry of each
    /// authorization.
    pub fn new(
        customer_id: String,
        lifecycle: Lifecycle,
        version: i64,
        updated_at: DateTime<Utc>,
        policy: AuthorizationPolicy,
        now: DateTime<Utc>,
    ) -> Self {
        let Lifecycle {
            consent,
            authentication,
            institution_logins,
            last_event,
            event_count,
            pending_adding: _,
            funnel,
        } = lifecycle;
        let institution_logins = institution_logins
            .into_iter()
            .map(|login| InstitutionLoginView {
                authorization_expires_at: policy.expires_at(login.authorized_at),
                expired: policy.expired(login.authorized_at, now),
                login,
            })
            .collect();
        Self {
            customer_id,
            consent: ConsentView::new(consent, policy, now),
            authentication,
            institution_logins,
            funnel,
            last_event,
            event_count,
            version,
            updated_at,
        }
    }
}

/// One page of a customer's lifecycle changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangePage {
    /// Change records exactly as published on the lifecycle-changes topic
    /// (`connectflow.lifecycle_change.v1`), in version order.
    pub changes: Vec<crate::store::changes::LifecycleChange>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// One page of a customer's recorded events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Normalised events as published (`connectflow.connect_event.v1`) plus
    /// `recorded_at`, in `(occurred_at, event_id)` order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// A customer in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerSummary {
    /// Finicity's customer id.
    pub customer_id: String,
    /// Consent state, since when, and its authorization's dates.
    pub consent: ConsentView,
    /// Authentication state, since when, and why.
    pub authentication: Authentication,
    /// The latest event.
    pub last_event: Option<LastEvent>,
    /// When connectflow last changed this record.
    #[serde(with = "rfc3339_ms")]
    pub updated_at: DateTime<Utc>,
}

/// One page of customers.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerPage {
    /// Ordered by `updated_at`, then `customer_id`.
    pub customers: Vec<CustomerSummary>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// row's key).
    #[param(pattern = r"^313a(3[0-9]){1,16}3a([2-6][0-9a-f]|7[0-9a-e]){1,128}$")]
    cursor: Option<String>,
}

/// Paging parameters of the changes listing: its cursor is a version.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangePageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// version on it).
    #[param(pattern = r"^763a(3[0-9]){1,18}$")]
    cursor: Option<String>,
}

/// Listing filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only customers in this consent state (`none`, `granted`, `revoked`).
    #[param(value_type = Option<ConsentState>)]
    consent: Option<String>,
    /// Only customers in this authentication state (`not_started`,
    /// `in_progress`, `mfa_challenge`, `authenticated`, `failed`, `abandoned`).
    #[param(value_type = Option<AuthState>)]
    authentication: Option<String>,
    /// Only customers updated at or after this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    updated_since: Option<String>,
    /// Only customers whose current authorization (`consent.authorization_expires_at`)
    /// lapses before this RFC 3339 time, already lapsed ones included: whom
    /// to ask to reauthorize in time. None match when authorizations do not
    /// lapse (`CONNECTFLOW_AUTHORIZATION_DAYS=0`).
    #[param(value_type = Option<String>, format = DateTime)]
    authorization_expires_before: Option<String>,
    /// Only customers whose institution chosen last (`funnel.institution_id`,
    /// what `/v1/stats/institutions` counts them under) is this one.
    #[param(pattern = r"^[ -~]{1,64}$", min_length = 1, max_length = 64)]
    institution_id: Option<String>,
    /// Only customers whose first event occurred at or after this RFC 3339
    /// time (the `since` of `/v1/stats`).
    #[param(value_type = Option<String>, format = DateTime)]
    first_event_since: Option<String>,
    /// Only customers whose first event occurred before this RFC 3339 time
    /// (the `until` of `/v1/stats`).
    #[param(value_type = Option<String>, format = DateTime)]
    first_event_until: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// row's key).
    #[param(pattern = r"^313a(3[0-9]){1,16}3a([2-6][0-9a-f]|7[0-9a-e]){1,128}$")]
    cursor: Option<String>,
}

/// A cursor is the last row's sort key, `(timestamp, id)`, made opaque.
/// Microsecond precision: Postgres keeps microseconds, and the cursor must
/// compare exactly with the stored key.
fn encode_cursor((at, id): &(DateTime<Utc>, String)) -> String {
    hex::encode(format!("1:{}:{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let malformed = || ApiError::BadRequest("malformed cursor".into());
    let bytes = hex::decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let mut parts = text.splitn(3, ':');
    let (Some("1"), Some(micros), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        // Every key the server writes is a timestamp of years 1 to 9999;
        // anything else is not one of its cursors (and Postgres would refuse
        // years before 4713 BC).
        .filter(|at| (1..=9999).contains(&at.year()))
        .ok_or_else(malformed)?;
    // The id part is an event id or a customer id: printable ASCII.
    if id.is_empty()
        || id.len() > crate::event::MAX_EVENT_ID_LEN
        || !id.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(malformed());
    }
    Ok((at, id.to_owned()))
}

/// `customer_id` must be a [`CustomerId`]: exactly the ids the receiver
/// accepts.
pub(crate) fn valid_customer_id(customer_id: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(customer_id).map_err(|_| ApiError::BadRequest("customer_id must be 1 to 22 digits".into()))
}

/// The query string's parameters, or a 400 (the JSON error shape, not
/// axum's plain-text rejection).
pub(crate) fn query_params<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query.map(|axum::extract::Query(params)| params).map_err(|_| ApiError::BadRequest("invalid query string".into()))
}

/// An institution id as the event schema allows it: 1 to 64 printable
/// ASCII characters.
fn valid_institution_id(id: String) -> Result<String, ApiError> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Ok(id)
    } else {
        Err(ApiError::BadRequest("institution_id must be 1 to 64 printable ASCII characters".into()))
    }
}

pub(crate) fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
    }
}

/// An RFC 3339 time from the query string.
pub(crate) fn parse_time(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = value else { return Ok(None) };
    DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| ApiError::BadRequest(format!("{name} must be an RFC 3339 time")))
}

fn parse_state<T: for<'de> Deserialize<'de>>(name: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    serde_json::from_value::<T>(serde_json::Value::String(value.to_owned()))
        .map(|_| Some(value.to_owned()))
        .map_err(|_| ApiError::BadRequest(format!("{name} is not a known state: {value:?}")))
}

/// A customer's lifecycle.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/lifecycle",
    tag = "query",
    params(("customer_id" = String, Path, description = "Finicity customer id, 1 to 22 digits", pattern = "^[0-9]{1,22}$", min_length = 1, max_length = 22)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The customer's lifecycle", body = CustomerLifecycle),
        (status = 400, description = "Invalid customer id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn get_lifecycle(
    State(state): State<Arc<AppState>>,
    Path(customer_id): Path<String>,
) -> Result<Json<CustomerLifecycle>, ApiError> {
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let (lifecycle, version, updated_at) = read::lifecycle(&state.pool, &customer_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("customer {customer_id} not found")))?;
    Ok(Json(CustomerLifecycle::new(customer_id, lifecycle, version, updated_at, state.authorization, Utc::now())))
}

/// A customer's recorded events.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/events",
    tag = "query",
    params(("customer_id" = String, Path, description = "Finicity customer id, 1 to 22 digits", pattern = "^[0-9]{1,22}$", min_length = 1, max_length = 22), PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Invalid customer id, limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn get_events(
    State(state): State<Arc<AppState>>,
    Path(customer_id): Path<String>,
    query: Result<axum::extract::Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let params = query_params(query)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    if !read::customer_exists(&state.pool, &customer_id).await? {
        return Err(ApiError::NotFound(format!("customer {customer_id} not found")));
    }
    let (events, next) = read::events(&state.pool, &customer_id, after.as_ref(), limit).await?;
    Ok(Json(EventPage { events, next_cursor: next.as_ref().map(encode_cursor) }))
}

/// A customer's lifecycle changes, as published on the lifecycle-changes
/// topic: for a subscriber that missed records to catch up.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/changes",
    tag = "query",
    params(("customer_id" = String, Path, description = "Finicity customer id, 1 to 22 digits", pattern = "^[0-9]{1,22}$", min_length = 1, max_length = 22), ChangePageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of changes, in version order", body = ChangePage),
        (status = 400, description = "Invalid customer id, limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn get_changes(
    State(state): State<Arc<AppState>>,
    Path(customer_id): Path<String>,
    query: Result<axum::extract::Query<ChangePageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ChangePage>, ApiError> {
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let params = query_params(query)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_version_cursor).transpose()?;
    if !read::customer_exists(&state.pool, &customer_id).await? {
        return Err(ApiError::NotFound(format!("customer {customer_id} not found")));
    }
    let (changes, next) = read::changes(&state.pool, &customer_id, after, limit).await?;
    let changes = changes
        .into_iter()
        .map(|text| serde_json::from_str(&text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ApiError::Internal(anyhow::Error::from(err).context("decoding a recorded change")))?;
    Ok(Json(ChangePage { changes, next_cursor: next.map(encode_version_cursor) }))
}

/// A changes cursor: the last version on the page, made opaque.
fn encode_version_cursor(version: i64) -> String {
    hex::encode(format!("v:{version}"))
}

fn decode_version_cursor(cursor: &str) -> Result<i64, ApiError> {
    let malformed = || ApiError::BadRequest("cursor is malformed".into());
    let bytes = hex::decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    text.strip_prefix("v:").and_then(|v| v.parse::<i64>().ok()).filter(|v| *v >= 0).ok_or_else(malformed)
}

/// Customers, filtered by state and update time.
#[utoipa::path(
    get,
    path = "/v1/customers",
    tag = "query",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of customers", body = CustomerPage),
        (status = 400, description = "Unknown state name, invalid time, limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (Retry-After)", body = ErrorBody),
    )
)]
pub async fn list_customers(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CustomerPage>, ApiError> {
    let params = query_params(query)?;
    let expires_before = parse_time("authorization_expires_before", params.authorization_expires_before.as_deref())?;
    let filter = read::CustomerFilter {
        consent: parse_state::<ConsentState>("consent", params.consent.as_deref())?,
        authentication: parse_state::<AuthState>("authentication", params.authentication.as_deref())?,
        updated_since: parse_time("updated_since", params.updated_since.as_deref())?,
        authorized_before: expires_before.and_then(|before| state.authorization.authorized_before(before)),
        institution_id: params.institution_id.map(valid_institution_id).transpose()?,
        first_event_since: parse_time("first_event_since", params.first_event_since.as_deref())?,
        first_event_until: parse_time("first_event_until", params.first_event_until.as_deref())?,
    };
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    if expires_before.is_some() && filter.authorized_before.is_none() {
        // Authorizations do not lapse (or the time is before any that could).
        return Ok(Json(CustomerPage { customers: Vec::new(), next_cursor: None }));
    }
    let (rows, next) = read::customers(&state.pool, &filter, after.as_ref(), limit).await?;
    let now = Utc::now();
    let customers = rows
        .into_iter()
        .map(|(customer_id, lifecycle, updated_at)| CustomerSummary {
            customer_id,
            consent: ConsentView::new(lifecycle.consent, state.authorization, now),
            authentication: lifecycle.authentication,
            last_event: lifecycle.last_event,
            updated_at,
        })
        .collect();
    Ok(Json(CustomerPage { customers, next_cursor: next.as_ref().map(encode_cursor) }))
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest_whatever_their_length() {
        let auth = ApiAuth::new(&SecretList::new(["short", "a-much-longer-second-token"]).expect("tokens"));
        assert!(auth.accepts(b"short"));
        assert!(auth.accepts(b"a-much-longer-second-token"));
        for wrong in [&b""[..], b"shor", b"short ", b"a-much-longer-second-tokeN", &[b'x'; 4096]] {
            assert!(!auth.accepts(wrong), "{wrong:?}");
        }
        // Every configured token is held as 32 bytes: the comparison does
        // not depend on any token's length.
        assert!(auth.digests.iter().all(|d| d.len() == 32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_are_digits() {
        assert!(valid_customer_id("1005061234").is_ok());
        assert!(valid_customer_id("1234567890123456789012").is_ok());
        assert!(valid_customer_id("12345678901234567890123").is_err());
        assert!(valid_customer_id("").is_err());
        assert!(valid_customer_id("12a").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = (DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("time"), "10:05".to_owned());
        assert_eq!(decode_cursor(&encode_cursor(&key)).ok(), Some(key));
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor(&hex::encode("2:1:x")).is_err());
        assert!(decode_cursor(&hex::encode("1:abc:x")).is_err());
        assert!(decode_cursor("").is_err());
        // Well-formed but never produced by the server: 400, never a 500.
        assert!(decode_cursor(&hex::encode(format!("1:{}:x", i64::MIN / 2))).is_err(), "year out of range");
        assert!(decode_cursor(&hex::encode("1:-300000000000000000:x")).is_err(), "before year 1");
        assert!(decode_cursor(&hex::encode("1:0:a\u{0}b")).is_err(), "NUL in the id");
        assert!(decode_cursor(&hex::encode("1:0:")).is_err(), "empty id");
        assert!(decode_cursor(&hex::encode(format!("1:0:{}", "x".repeat(200)))).is_err(), "long id");
    }

    /// Every cursor the changes listing documents (its pattern) decodes: the
    /// longest run of digits the pattern allows still fits a version.
    #[test]
    fn version_cursors_round_trip_and_every_documented_one_decodes() {
        assert_eq!(decode_version_cursor(&encode_version_cursor(42)).ok(), Some(42));
        for digits in ["0", "7", "000000000000000000", "999999999999999999"] {
            let cursor = hex::encode(format!("v:{digits}"));
            assert!(decode_version_cursor(&cursor).is_ok(), "{cursor}");
            let pattern = "^763a(3[0-9]){1,18}$";
            let matches = cursor.starts_with("763a")
                && cursor[4..].len() % 2 == 0
                && (1..=18).contains(&(cursor[4..].len() / 2))
                && cursor.as_bytes()[4..].chunks(2).all(|c| c[0] == b'3' && c[1].is_ascii_digit());
            assert!(matches, "{cursor} matches {pattern}");
        }
        assert!(decode_version_cursor(&hex::encode("v:-1")).is_err());
        assert!(decode_version_cursor(&hex::encode("1:0: ")).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None).ok(), Some(50));
        assert_eq!(parse_limit(Some("500")).ok(), Some(500));
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("501")).is_err());
        assert!(parse_limit(Some("ten")).is_err());
    }

    #[test]
    fn state_names_are_checked() {
        assert_eq!(parse_state::<ConsentState>("consent", Some("granted")).ok(), Some(Some("granted".into())));
        assert!(parse_state::<ConsentState>("consent", Some("maybe")).is_err());
        assert!(parse_state::<AuthState>("authentication", Some("mfa_challenge")).is_ok());
        assert!(parse_state::<AuthState>("authentication", Some("granted")).is_err());
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = ApiAuth::new(&SecretList::new(["one", "two"]).expect("tokens"));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            headers
        };
        assert!(auth.check(&with("Bearer one")).is_ok());
        assert!(auth.check(&with("bearer two")).is_ok());
        assert!(auth.check(&with("Bearer three")).is_err());
        assert!(auth.check(&with("Bearer on")).is_err());
        assert!(auth.check(&with("Basic one")).is_err());
        assert!(auth.check(&HeaderMap::new()).is_err());
    }
}
