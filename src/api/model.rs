//! The API's documents: the JSON a client sends and receives, as the
//! OpenAPI document describes them. Pure types with no I/O, so a client
//! (such as `connectflow simulate`) can build and read them without the
//! server's storage.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::change::LifecycleChange;
use crate::event::{RevokedBy, rfc3339_ms};
use crate::lifecycle::{
    AuthReason, AuthState, Authentication, AuthorizationPolicy, Consent, ConsentState, ExpiryWarning, FunnelProgress,
    InstitutionLogin, LastEvent, Lifecycle, Outcome,
};
use crate::store::access_log::AccessRecord;

/// The stats window when none is given: the 30 days before `until` (now).
pub const DEFAULT_WINDOW: Duration = Duration::days(30);

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
    /// The warnings announced for the current authorization (lifecycle
    /// changes with `reason: "authorization_expiring"`, one per threshold of
    /// `CONNECTFLOW_AUTHORIZATION_WARN_DAYS` it crossed), oldest first; empty
    /// while none was, and again after a reauthorization or a revocation.
    pub expiry_warnings: Vec<ExpiryWarning>,
}

impl ConsentView {
    /// The view of `consent` at `now`, without warnings.
    pub fn new(consent: Consent, policy: AuthorizationPolicy, now: DateTime<Utc>) -> Self {
        let authorization_expires_at = policy.expires_at(consent.authorized_at);
        let expired = policy.expired(consent.authorized_at, now);
        Self { consent, authorization_expires_at, expired, expiry_warnings: Vec::new() }
    }

    /// The same view with the warnings sent for its authorization.
    pub fn with_expiry_warnings(self, expiry_warnings: Vec<ExpiryWarning>) -> Self {
        Self { expiry_warnings, ..self }
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
    /// The customer's program (`default` without a programs file).
    #[schema(example = "default")]
    pub program_id: String,
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
    /// authorization (and no expiry warnings: [`Self::with_expiry_warnings`]).
    pub fn new(
        customer_id: String,
        program_id: String,
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
            program_id,
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

    /// The same answer with the warnings sent for the current authorization
    /// (`consent.expiry_warnings`).
    pub fn with_expiry_warnings(self, expiry_warnings: Vec<ExpiryWarning>) -> Self {
        Self { consent: self.consent.with_expiry_warnings(expiry_warnings), ..self }
    }
}

/// One page of a customer's lifecycle changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangePage {
    /// Change records exactly as published on the lifecycle-changes topic
    /// (`connectflow.lifecycle_change.v1`), in version order.
    pub changes: Vec<LifecycleChange>,
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
    /// Where the recorded history starts: the events that occurred before
    /// this time were folded into the lifecycle's snapshot and deleted
    /// (`CONNECTFLOW_HISTORY_RETENTION_DAYS`), so the lifecycle holds more
    /// than the events listed. An event older than it that arrived late is
    /// listed until the next fold. `null` while the whole history is kept.
    #[serde(with = "crate::lifecycle::rfc3339_ms_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub history_starts_at: Option<DateTime<Utc>>,
}

/// The most items each list of an export holds (`GET
/// /v1/customers/{customer_id}/export`); a longer one is cut there and
/// flagged in `truncated`.
pub const EXPORT_MAX_ITEMS: usize = 10_000;

/// Everything connectflow holds about one customer, read from one snapshot
/// of the database: for a customer's request to know their data.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerExport {
    /// Finicity's customer id.
    #[schema(example = "1005061234")]
    pub customer_id: String,
    /// The customer's program.
    #[schema(example = "default")]
    pub program_id: String,
    /// When the document was read (the lifecycle's `expired` flags are as
    /// of this time).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub exported_at: DateTime<Utc>,
    /// The customer's lifecycle, as `GET /v1/customers/{customer_id}/lifecycle`
    /// answers it.
    pub lifecycle: CustomerLifecycle,
    /// Where the recorded history starts: the events that occurred before
    /// it were folded into `snapshot` and deleted
    /// (`CONNECTFLOW_HISTORY_RETENTION_DAYS`); null while the whole history
    /// is kept.
    #[serde(with = "crate::lifecycle::rfc3339_ms_option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub history_starts_at: Option<DateTime<Utc>>,
    /// The lifecycle the folded events imply, as stored (connectflow's
    /// internal form of it); null while the whole history is kept.
    #[schema(required = true)]
    pub snapshot: Option<Lifecycle>,
    /// Every recorded event, as `GET /v1/customers/{customer_id}/events`
    /// lists them (the normalised event as published, plus `recorded_at`),
    /// in `(occurred_at, event_id)` order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Every recorded lifecycle change, as `GET
    /// /v1/customers/{customer_id}/changes` lists them, in version order.
    pub changes: Vec<LifecycleChange>,
    /// The revocation requests recorded for the customer (`POST
    /// /v1/customers/{customer_id}/consent/revocations`), in
    /// `(occurred_at, event_id)` order.
    pub revocations: Vec<ExportedRevocation>,
    /// The API requests that named the customer, as `GET /v1/audit` shows
    /// them, oldest first (never this request: it is logged once answered).
    /// A token of some programs sees the requests made within them only.
    pub access_log: Vec<AccessRecord>,
    /// Which lists were cut at their maximum (10,000 items each).
    pub truncated: ExportTruncated,
}

/// A revocation request recorded for a customer: what the caller sent and
/// who it was, never the request's digest.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedRevocation {
    /// The caller's `Idempotency-Key`: the client's own name for the
    /// request, kept to give retries the same answer.
    pub idempotency_key: String,
    /// The revocation event's id (in `events`).
    pub event_id: String,
    /// When the revocation was recorded: the event's `occurred_at`.
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: DateTime<Utc>,
    /// The id of the API token that asked.
    pub token_id: Option<String>,
    /// The name of the API token that asked.
    pub token_name: Option<String>,
    /// When the key was recorded (renewed, for a key used again after its
    /// end).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

/// For each list of an export, whether it held more than
/// [`EXPORT_MAX_ITEMS`] and shows the first ones only (the paged routes
/// give the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExportTruncated {
    /// `events` was cut.
    pub events: bool,
    /// `changes` was cut.
    pub changes: bool,
    /// `revocations` was cut.
    pub revocations: bool,
    /// `access_log` was cut.
    pub access_log: bool,
}

/// A customer in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerSummary {
    /// Finicity's customer id.
    pub customer_id: String,
    /// The customer's program.
    pub program_id: String,
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
    /// How long a bucket is.
    pub fn length(self) -> Duration {
        match self {
            Self::Hour => Duration::hours(1),
            Self::Day => Duration::days(1),
        }
    }
}

/// The steps reached: each counts the customers who reached it or a later
/// one (`mfa_challenged` only those challenged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct FailedCounts {
    /// All of them.
    pub total: i64,
    /// By `authentication.reason`.
    pub by_reason: FailureReasons,
}

/// Customers whose authentication is `abandoned` now, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct AbandonedCounts {
    /// All of them.
    pub total: i64,
    /// By `authentication.reason`.
    pub by_reason: AbandonReasons,
}

/// The funnel of a group of customers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
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

impl FunnelCounts {
    /// Counts `customers` more customers with `outcome`.
    pub fn add(&mut self, outcome: &Outcome, customers: i64) {
        let count = |yes: bool| if yes { customers } else { 0 };
        let steps = outcome.steps;
        self.customers += customers;
        self.steps.started += count(steps.started);
        self.steps.institution_chosen += count(steps.institution_chosen);
        self.steps.mfa_challenged += count(steps.mfa_challenged);
        self.steps.authenticated += count(steps.authenticated);
        self.steps.consent_granted += count(steps.consent_granted);
        match outcome.authentication {
            AuthState::Failed => {
                self.failed.total += customers;
                if let Some(reason) = outcome.reason {
                    self.failed.by_reason.add(reason, customers);
                }
            }
            AuthState::Abandoned => {
                self.abandoned.total += customers;
                if let Some(reason) = outcome.reason {
                    self.abandoned.by_reason.add(reason, customers);
                }
            }
            AuthState::InProgress | AuthState::MfaChallenge => self.in_progress += customers,
            AuthState::NotStarted | AuthState::Authenticated => {}
        }
        self.consent_revoked += count(outcome.consent == ConsentState::Revoked);
        self.conversion = conversion(self.steps.consent_granted, self.steps.started);
    }
}

/// Customers counted by the reason their authentication ended with: the
/// reasons that end it `failed` ([`FailureReasons`]) or `abandoned`
/// ([`AbandonReasons`]), each a field named as the reason. Derived from
/// [`AuthReason`], so a new reason is counted and documented without an edit
/// here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonCounts<const FAILED: bool>([i64; AuthReason::ALL.len()]);

/// The reasons of a `failed` authentication.
pub type FailureReasons = ReasonCounts<true>;
/// The reasons of an `abandoned` authentication.
pub type AbandonReasons = ReasonCounts<false>;

impl<const FAILED: bool> Default for ReasonCounts<FAILED> {
    fn default() -> Self {
        Self([0; AuthReason::ALL.len()])
    }
}

impl<const FAILED: bool> ReasonCounts<FAILED> {
    /// The reasons counted here, in the contract's order.
    fn reasons() -> impl Iterator<Item = AuthReason> {
        let outcome = if FAILED { AuthState::Failed } else { AuthState::Abandoned };
        AuthReason::ALL.iter().copied().filter(move |reason| reason.outcome() == outcome)
    }

    fn slot(reason: AuthReason) -> Option<usize> {
        AuthReason::ALL.iter().position(|known| *known == reason)
    }

    /// How many customers ended with `reason` (0 for a reason of the other
    /// outcome).
    pub fn get(&self, reason: AuthReason) -> i64 {
        Self::slot(reason).map_or(0, |slot| self.0[slot])
    }

    /// Each reason counted here with its count.
    pub fn iter(&self) -> impl Iterator<Item = (AuthReason, i64)> + '_ {
        Self::reasons().map(|reason| (reason, self.get(reason)))
    }

    /// Counts `customers` more with `reason` (a reason of the other outcome
    /// counts nowhere here).
    fn add(&mut self, reason: AuthReason, customers: i64) {
        if Self::reasons().any(|counted| counted == reason)
            && let Some(slot) = Self::slot(reason)
        {
            self.0[slot] += customers;
        }
    }
}

impl<const FAILED: bool> Serialize for ReasonCounts<FAILED> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (reason, count) in self.iter() {
            map.serialize_entry(reason.as_str(), &count)?;
        }
        map.end()
    }
}

impl<const FAILED: bool> utoipa::PartialSchema for ReasonCounts<FAILED> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        let description = if FAILED { "Failure reasons." } else { "Abandonment reasons." };
        let mut object = ObjectBuilder::new().schema_type(Type::Object).description(Some(description));
        for reason in Self::reasons() {
            let count = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .description(Some(reason.summary()));
            object = object.property(reason.as_str(), count).required(reason.as_str());
        }
        object.into()
    }
}

impl<const FAILED: bool> ToSchema for ReasonCounts<FAILED> {
    fn name() -> std::borrow::Cow<'static, str> {
        (if FAILED { "FailureReasons" } else { "AbandonReasons" }).into()
    }
}

impl InstitutionFunnel {
    /// The row of `institution_id` from its customers' funnel.
    pub fn new(institution_id: String, counts: FunnelCounts) -> Self {
        Self {
            institution_id,
            customers: counts.customers,
            authenticated: counts.steps.authenticated,
            consent_granted: counts.steps.consent_granted,
            failed: counts.failed,
            abandoned: counts.abandoned,
            conversion: conversion(counts.steps.consent_granted, counts.customers),
        }
    }
}

/// `granted / started`; `None` when nobody started.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
pub fn conversion(granted: i64, started: i64) -> Option<f64> {
    (started > 0).then(|| granted as f64 / started as f64)
}

/// The funnel of a window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Funnel {
    /// The window's start (inclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// The window's end (exclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub until: DateTime<Utc>,
    /// True when the window asked for was longer than
    /// `CONNECTFLOW_STATS_MAX_WINDOW_DAYS` (400 by default): it was cut to
    /// its last part, and `since` is where that starts.
    pub truncated: bool,
    /// Its customers' funnel.
    #[serde(flatten)]
    pub counts: FunnelCounts,
}

/// One bucket of a time series.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    /// True when the window was cut: to `CONNECTFLOW_STATS_MAX_WINDOW_DAYS`
    /// (400 by default), or, when it spans more than 2,400 buckets, to its
    /// last 2,400 (`since` is then the first one's start).
    pub truncated: bool,
    /// Every bucket the window touches, in time order, empty ones included.
    pub buckets: Vec<BucketFunnel>,
}

/// One institution's customers.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Institutions {
    /// The window's start (inclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// The window's end (exclusive).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub until: DateTime<Utc>,
    /// True when the window asked for was longer than
    /// `CONNECTFLOW_STATS_MAX_WINDOW_DAYS` (400 by default): it was cut to
    /// its last part, and `since` is where that starts.
    pub truncated: bool,
    /// Sorted by `customers`, most first, then by id; customers who chose
    /// no institution are not in any row.
    pub institutions: Vec<InstitutionFunnel>,
}

/// A revocation to record.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationBody {
    /// The institution login whose accounts are revoked; omitted or null:
    /// every login of the customer.
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[!-~]{1,64}$")]
    pub institution_login_id: Option<String>,
    /// Who asked: `customer` or `partner`.
    pub revoked_by: RevokedBy,
    /// Why, in a few words (at most 256 characters; control characters are
    /// removed, and every run of five or more digits is masked but for its
    /// last four, as in `card ••••••••••••1111`).
    #[serde(default)]
    #[schema(max_length = 256)]
    pub reason: Option<String>,
}

/// The answer once Kafka has the revocation event.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationAccepted {
    /// Always `accepted`: the consumer applies it next (the lifecycle and the
    /// changes topic show it within moments).
    #[schema(example = "accepted")]
    pub status: &'static str,
    /// The revocation event's id (the same for every retry with the key).
    pub event_id: String,
}

/// An erasure to record: `{}`, or with a reason.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureBody {
    /// Why, in a few words (at most 256 characters; control characters are
    /// removed, and a run of five or more digits is masked but its last
    /// four). Carried by the erasure event on the events topic only: the
    /// compliance record keeps no free text.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub reason: Option<String>,
}

/// The answer once Kafka has the erasure event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureAccepted {
    /// Always `accepted`: the consumer erases the customer next (their
    /// routes answer 410 within moments).
    #[schema(example = "accepted")]
    pub status: &'static str,
    /// The erasure event's id (the same for every retry with the key).
    pub event_id: String,
}

#[cfg(test)]
mod tests;
