//! Institution health, computed from connectflow's own traffic: which
//! outcome a Connect session had at its institution
//! ([`session_outcome`]), and the status an institution has given its
//! window of sessions and its previous status ([`evaluate`]), with the
//! record announcing a status change (`connectflow.institution_status.v1`).
//!
//! Pure: the store counts the sessions and keeps the statuses, the job
//! (`crate::institution_health`) evaluates on its beat, the API and
//! simulate read the documents. `docs/lifecycle.md`, "Institution health",
//! gives the classification and its sources.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::event::{ConnectEvent, rfc3339_ms};
use crate::lifecycle::{AuthReason, AuthState, Lifecycle};

/// The value of the `schema` field and header of every institution record.
pub const INSTITUTION_STATUS_SCHEMA_V1: &str = "connectflow.institution_status.v1";

/// `unableToConnect` codes that ask something of the customer rather than
/// report the institution failing (Finicity's aggregation status codes):
/// 103 invalid credentials, 108 user action needed at the institution, 109
/// password change required, 185 MFA answer missing, 187 wrong MFA answer.
/// Every other code (102 "site down, retry later" among them), and none, is
/// the institution's.
pub const CUSTOMER_SIDE_CODES: [i64; 5] = [103, 108, 109, 185, 187];

/// How a Connect session at an institution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionOutcome {
    /// The customer signed in (`discovered`) or shared accounts (`added`).
    Success,
    /// The institution failed: `unableToConnect` with an institution-side
    /// code or none.
    InstitutionFailure,
    /// The customer did: `invalidCredentials`, `unableToConnect` with a
    /// customer-side code ([`CUSTOMER_SIDE_CODES`]), `cancel`, or a session
    /// left unfinished (`done` while in progress).
    CustomerFailure,
}

impl SessionOutcome {
    /// Every outcome.
    pub const ALL: [Self; 3] = [Self::Success, Self::InstitutionFailure, Self::CustomerFailure];

    /// The database column's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::InstitutionFailure => "institution_failure",
            Self::CustomerFailure => "customer_failure",
        }
    }
}

/// A session's outcome at its institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The institution.
    pub institution_id: String,
    /// How it ended.
    pub outcome: SessionOutcome,
}

/// The outcome `event` gave a session, given the customer's lifecycle
/// `before` and `after` it; `None` when it ended none.
///
/// A session ends when the authentication moves to `authenticated`,
/// `failed` or `abandoned` (a state, reason or code it did not have: a
/// repeated `invalidCredentials`, or `added` after `discovered`, ends
/// nothing more). `institutionNotFound` and `institutionNotSupported` reach
/// no institution and count nowhere. The institution is the event's, else
/// that of the session's `adding`; an abandonment counts only when the
/// session had chosen one.
pub fn session_outcome(before: &Lifecycle, after: &Lifecycle, event: &ConnectEvent) -> Option<Session> {
    let (was, now) = (&before.authentication, &after.authentication);
    if (was.state, was.reason, was.error_code) == (now.state, now.reason, now.error_code) {
        return None;
    }
    let chosen = || before.pending_adding.as_ref().and_then(|adding| adding.institution_id.clone());
    let (outcome, institution_id) = match (now.state, now.reason) {
        (AuthState::Authenticated, _) => (SessionOutcome::Success, event.institution_id.clone().or_else(chosen)),
        (AuthState::Failed, Some(AuthReason::UnableToConnect)) => {
            let outcome = if now.error_code.is_some_and(|code| CUSTOMER_SIDE_CODES.contains(&code)) {
                SessionOutcome::CustomerFailure
            } else {
                SessionOutcome::InstitutionFailure
            };
            (outcome, event.institution_id.clone().or_else(chosen))
        }
        (AuthState::Failed, Some(AuthReason::InvalidCredentials)) => {
            (SessionOutcome::CustomerFailure, event.institution_id.clone().or_else(chosen))
        }
        (AuthState::Abandoned, _) => (SessionOutcome::CustomerFailure, chosen()),
        _ => return None,
    };
    Some(Session { institution_id: institution_id?, outcome })
}

/// An institution's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstitutionStatus {
    /// Too few sessions in the window to say.
    Unknown,
    /// Institution-side failures below the degraded threshold.
    Healthy,
    /// At or above the degraded threshold.
    Degraded,
    /// At or above the down threshold.
    Down,
}

impl InstitutionStatus {
    /// Every status, in the contract's order.
    pub const ALL: [Self; 4] = [Self::Unknown, Self::Healthy, Self::Degraded, Self::Down];

    /// The contract name (also the database column's value).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }

    /// The status named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// How bad: `None` for `unknown`, which is neither better nor worse.
    const fn severity(self) -> Option<u8> {
        match self {
            Self::Unknown => None,
            Self::Healthy => Some(0),
            Self::Degraded => Some(1),
            Self::Down => Some(2),
        }
    }
}

/// The thresholds of the evaluation (`CONNECTFLOW_INSTITUTION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// The sliding window of sessions.
    pub window: Duration,
    /// Fewest sessions for a status other than `unknown`.
    pub min_sessions: u32,
    /// Institution-side failure rate (percent) from which `degraded`.
    pub degraded_percent: u32,
    /// From which `down` (at least `degraded_percent`).
    pub down_percent: u32,
    /// Points below its threshold a rate must stay, two evaluations in a
    /// row, for a status to improve.
    pub hysteresis_points: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            window: Duration::minutes(60),
            min_sessions: 20,
            degraded_percent: 20,
            down_percent: 60,
            hysteresis_points: 5,
        }
    }
}

/// Evaluations in a row that must allow an improvement before it happens.
pub const IMPROVE_AFTER: u32 = 2;

/// One institution's sessions in the window, by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct WindowCounts {
    /// Sessions that signed in or shared accounts.
    pub successes: u64,
    /// Sessions the institution failed.
    pub institution_failures: u64,
    /// Sessions the customer failed or left.
    pub customer_failures: u64,
}

impl WindowCounts {
    /// Every session of the window.
    pub fn sessions(&self) -> u64 {
        self.successes + self.institution_failures + self.customer_failures
    }

    /// Institution-side failures per session, 0 to 1; `None` without sessions.
    pub fn institution_failure_rate(&self) -> Option<f64> {
        let sessions = self.sessions();
        // Counts of one window: far below 2^52, exact as f64.
        #[allow(clippy::cast_precision_loss)]
        (sessions > 0).then(|| self.institution_failures as f64 / sessions as f64)
    }

    /// Whether the institution-side rate is at or above `percent`.
    fn at_or_above(&self, percent: u32) -> bool {
        u128::from(self.institution_failures) * 100 >= u128::from(percent) * u128::from(self.sessions())
    }

    /// Whether it is below `percent` (only a rate of 0 is below 0).
    fn below(&self, percent: u32) -> bool {
        !self.at_or_above(percent) || (percent == 0 && self.institution_failures == 0)
    }
}

/// An institution's status as the latest evaluation left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The status.
    pub status: InstitutionStatus,
    /// When the evaluation that gave it ran.
    pub since: DateTime<Utc>,
    /// Evaluations in a row that allowed an improvement, while the status
    /// waits out the hysteresis.
    pub improving: u32,
}

impl HealthSettings {
    /// The status these counts imply alone, without hysteresis.
    pub fn classify(&self, counts: &WindowCounts) -> InstitutionStatus {
        if counts.sessions() < u64::from(self.min_sessions) {
            InstitutionStatus::Unknown
        } else if counts.at_or_above(self.down_percent) {
            InstitutionStatus::Down
        } else if counts.at_or_above(self.degraded_percent) {
            InstitutionStatus::Degraded
        } else {
            InstitutionStatus::Healthy
        }
    }

    /// Whether `counts` allow leaving `status` for a better one (or for
    /// `unknown`): too few sessions, or a rate below the status's threshold
    /// minus the hysteresis.
    fn allows_leaving(&self, status: InstitutionStatus, counts: &WindowCounts) -> bool {
        let threshold = match status {
            InstitutionStatus::Down => self.down_percent,
            InstitutionStatus::Degraded => self.degraded_percent,
            InstitutionStatus::Healthy | InstitutionStatus::Unknown => return true,
        };
        counts.sessions() < u64::from(self.min_sessions)
            || counts.below(threshold.saturating_sub(self.hysteresis_points))
    }
}

/// The standing after an evaluation at `now` that counted `counts`, from
/// `previous` (none for an institution never evaluated).
///
/// A worse status is taken at once; `unknown` is left at once for any
/// status. A better one (or `unknown`, when sessions stop) only after
/// [`IMPROVE_AFTER`] evaluations in a row that allow it
/// (`allows_leaving`); the status then becomes what the latest counts
/// imply. The status changed when the result's differs from `previous`'s.
pub fn evaluate(
    previous: Option<&Standing>,
    counts: &WindowCounts,
    settings: &HealthSettings,
    now: DateTime<Utc>,
) -> Standing {
    let target = settings.classify(counts);
    let fresh = Standing { status: target, since: now, improving: 0 };
    let Some(previous) = previous else { return fresh };
    let (Some(was), target_severity) = (previous.status.severity(), target.severity()) else {
        // From `unknown`: any status is taken at once.
        return if target == previous.status { Standing { improving: 0, ..*previous } } else { fresh };
    };
    if target == previous.status {
        return Standing { improving: 0, ..*previous };
    }
    if target_severity.is_some_and(|severity| severity > was) {
        return fresh;
    }
    if !settings.allows_leaving(previous.status, counts) {
        return Standing { improving: 0, ..*previous };
    }
    let improving = previous.improving + 1;
    if improving >= IMPROVE_AFTER { fresh } else { Standing { improving, ..*previous } }
}

/// An institution's status and the window it was computed from, as
/// `GET /v1/institutions` shows it and the institutions topic carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstitutionHealth {
    /// Finicity's institution id.
    pub institution_id: String,
    /// `unknown`, `healthy`, `degraded` or `down`.
    pub status: InstitutionStatus,
    /// When the evaluation that gave the status ran.
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// When the latest evaluation ran (its window ends there).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub evaluated_at: DateTime<Utc>,
    /// The window's length, in minutes.
    pub window_minutes: u32,
    /// Sessions in the window that ended at this institution.
    pub sessions: u64,
    /// Of which signed in or shared accounts.
    pub successes: u64,
    /// Of which the institution failed.
    pub institution_failures: u64,
    /// Of which the customer failed or left.
    pub customer_failures: u64,
    /// `institution_failures / sessions`, 0 to 1; null without sessions.
    pub institution_failure_rate: Option<f64>,
    /// `customer_failures / sessions`, 0 to 1; null without sessions.
    pub customer_failure_rate: Option<f64>,
}

impl InstitutionHealth {
    /// The document of `institution_id` standing at `standing` after an
    /// evaluation at `evaluated_at` over `window` that counted `counts`.
    pub fn new(
        institution_id: String,
        standing: &Standing,
        counts: &WindowCounts,
        window: Duration,
        evaluated_at: DateTime<Utc>,
    ) -> Self {
        let sessions = counts.sessions();
        #[allow(clippy::cast_precision_loss)]
        let customer_failure_rate = (sessions > 0).then(|| counts.customer_failures as f64 / sessions as f64);
        Self {
            institution_id,
            status: standing.status,
            since: standing.since,
            evaluated_at,
            window_minutes: u32::try_from(window.num_minutes()).unwrap_or(u32::MAX),
            sessions,
            successes: counts.successes,
            institution_failures: counts.institution_failures,
            customer_failures: counts.customer_failures,
            institution_failure_rate: counts.institution_failure_rate(),
            customer_failure_rate,
        }
    }
}

/// One change of an institution's status, as published on
/// `CONNECTFLOW_INSTITUTIONS_TOPIC` (keyed by the institution id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstitutionStatusChange {
    /// Always `connectflow.institution_status.v1`.
    pub schema: String,
    /// `<institution_id>:<version>`: subscribers de-duplicate by it.
    pub change_id: String,
    /// Per institution: 1 for its first change, +1 per change.
    pub version: i64,
    /// The status before; `unknown` for an institution's first change.
    pub previous_status: InstitutionStatus,
    /// The status now, since when, and the window's counts that gave it.
    #[serde(flatten)]
    pub health: InstitutionHealth,
}

impl InstitutionStatusChange {
    /// The record of `health`'s status change from `previous_status`, the
    /// institution's `version`th.
    pub fn new(health: InstitutionHealth, previous_status: InstitutionStatus, version: i64) -> Self {
        Self {
            schema: INSTITUTION_STATUS_SCHEMA_V1.to_owned(),
            change_id: format!("{}:{version}", health.institution_id),
            version,
            previous_status,
            health,
        }
    }
}

#[cfg(test)]
mod tests;
