//! The lifecycle-change contract: the record (`connectflow.lifecycle_change.v1`)
//! published on `CONNECTFLOW_CHANGES_TOPIC` and listed by
//! `/v1/customers/{id}/changes`, and the pure [`Versioner`] that numbers a
//! customer's changes. A wire type beside [`crate::event::ConnectEvent`], with
//! no storage in it: the store records changes ([`crate::store::changes`]),
//! the outbox publishes them ([`crate::outbox`]), the API and simulate read
//! them, and none of those needs another's insides to do so.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::event::{ConnectEvent, CustomerId, rfc3339_ms};
use crate::lifecycle::{Dimension, DueWarning, Lifecycle, VisibleLifecycle};
use crate::program::ProgramId;

/// The value of the `schema` field and header of every change record.
pub const CHANGE_SCHEMA_V1: &str = "connectflow.lifecycle_change.v1";

/// An event that caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cause {
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
}

/// One change of a customer's visible lifecycle, as published on
/// `CONNECTFLOW_CHANGES_TOPIC` and listed by `/v1/customers/{id}/changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LifecycleChange {
    /// Always `connectflow.lifecycle_change.v1`.
    pub schema: String,
    /// `<customer_id>:<version>`: subscribers de-duplicate by it.
    pub change_id: String,
    /// Finicity's customer id (also the record key).
    pub customer_id: String,
    /// The customer's program (also the `program` header). Records written
    /// before programs existed read as `default`.
    #[serde(default)]
    #[schema(value_type = String, example = "default")]
    pub program_id: ProgramId,
    /// Per customer: 1 for the first change, +1 per change, never reused or
    /// skipped.
    pub version: i64,
    /// The visible lifecycle before the change; null for a customer's first
    /// change (and when the stored state could not be read).
    pub before: Option<VisibleLifecycle>,
    /// The visible lifecycle after it; null for an erasure (`reason:
    /// "erased"`), which the relay follows with a Kafka tombstone (the
    /// customer id as key, a null value).
    pub after: Option<VisibleLifecycle>,
    /// Which dimensions changed (empty only for a re-projection that changed
    /// nothing but the accounts' details).
    pub changed: Vec<Dimension>,
    /// The events whose application produced the change; empty for a
    /// re-projection (`connectflow reproject`).
    pub caused_by: Vec<Cause>,
    /// True when the customer was recomputed from their whole history (a
    /// late event, or a re-projection).
    pub recomputed: bool,
    /// `occurred_at` of the latest causing event (of the latest recorded
    /// event for a re-projection).
    #[serde(with = "rfc3339_ms")]
    pub occurred_at: DateTime<Utc>,
    /// When connectflow recorded the change.
    #[serde(with = "rfc3339_ms")]
    pub recorded_at: DateTime<Utc>,
    /// Why, when no Finicity event caused it: `authorization_expiring` (the
    /// current authorization lapses in `days_left` days, at `expires_at`: a
    /// threshold of `CONNECTFLOW_AUTHORIZATION_WARN_DAYS` was crossed;
    /// `before` and `after` are then the same, and `occurred_at` is when the
    /// threshold was crossed), `authorization_expired` (the current
    /// authorization lapsed; `before` and `after` are then the same, and
    /// `occurred_at` is the lapse) or `erased` (the customer was erased:
    /// `after` is null, `caused_by` names the erasure event, `occurred_at` is
    /// the erasure's time). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ChangeReason>,
    /// On an `authorization_expiring` warning only: whole days left before
    /// the authorization lapses (rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// On an `authorization_expiring` warning only: when the authorization
    /// lapses.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::lifecycle::rfc3339_ms_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a change happened without an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    /// The authorization lapses soon: a threshold of
    /// `CONNECTFLOW_AUTHORIZATION_WARN_DAYS` was crossed.
    AuthorizationExpiring,
    /// `authorized_at` plus `CONNECTFLOW_AUTHORIZATION_DAYS` passed.
    AuthorizationExpired,
    /// The customer was erased (`POST /v1/customers/{id}/erasures`).
    Erased,
}

/// Numbers a customer's changes as they are found.
#[derive(Debug)]
pub struct Versioner<'a> {
    customer_id: &'a CustomerId,
    program_id: &'a ProgramId,
    version: i64,
    recorded_at: DateTime<Utc>,
    /// Whether the customer had a readable stored lifecycle before.
    known_before: bool,
    /// The changes found.
    pub changes: Vec<LifecycleChange>,
}

impl<'a> Versioner<'a> {
    /// Starts from the customer's stored `version`.
    pub fn new(
        customer_id: &'a CustomerId,
        program_id: &'a ProgramId,
        version: i64,
        known_before: bool,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        Self { customer_id, program_id, version, recorded_at, known_before, changes: Vec::new() }
    }

    /// The version after the changes found so far.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Records a change from `before` to `after` when a visible dimension
    /// moved (or always, with `force`, for a re-projection that rewrote the
    /// lifecycle).
    pub fn observe(
        &mut self,
        before: &Lifecycle,
        after: &Lifecycle,
        causes: &[&ConnectEvent],
        recomputed: bool,
        force: bool,
    ) {
        let changed = crate::lifecycle::changed(before, after);
        if changed.is_empty() && !force {
            return;
        }
        let first = self.changes.is_empty() && !self.known_before;
        self.version += 1;
        let occurred_at = causes
            .iter()
            .map(|e| e.occurred_at)
            .max()
            .or_else(|| after.last_event.as_ref().map(|l| l.occurred_at))
            .unwrap_or(self.recorded_at);
        self.changes.push(LifecycleChange {
            schema: CHANGE_SCHEMA_V1.to_owned(),
            change_id: format!("{}:{}", self.customer_id, self.version),
            customer_id: self.customer_id.to_string(),
            program_id: self.program_id.clone(),
            version: self.version,
            before: (!first).then(|| VisibleLifecycle::from(before)),
            after: Some(VisibleLifecycle::from(after)),
            changed,
            caused_by: causes
                .iter()
                .map(|e| Cause { event_id: e.event_id.clone(), event_type: e.event_type.to_string() })
                .collect(),
            recomputed,
            occurred_at,
            recorded_at: self.recorded_at,
            reason: None,
            days_left: None,
            expires_at: None,
        });
    }

    /// Records that the customer's current authorization lapsed at
    /// `expired_at`: a change of consent that no event caused, with the
    /// (unchanged) visible lifecycle as `before` and `after`.
    pub fn expired(&mut self, state: &Lifecycle, expired_at: DateTime<Utc>) {
        self.consent_unchanged(state, expired_at, ChangeReason::AuthorizationExpired, None);
    }

    /// Records that the customer's current authorization crossed a warning
    /// threshold (`warning`): a change of consent that no event caused, with
    /// the (unchanged) visible lifecycle as `before` and `after`, occurring
    /// when the threshold was crossed.
    pub fn expiring(&mut self, state: &Lifecycle, warning: &DueWarning) {
        self.consent_unchanged(
            state,
            warning.crossed_at,
            ChangeReason::AuthorizationExpiring,
            Some((warning.days_left, warning.expires_at)),
        );
    }

    /// A change of consent for `reason` that no event caused and that leaves
    /// the visible lifecycle as it was: a lapse, or a warning before one
    /// (with its days left and the lapse's time).
    fn consent_unchanged(
        &mut self,
        state: &Lifecycle,
        occurred_at: DateTime<Utc>,
        reason: ChangeReason,
        warning: Option<(i64, DateTime<Utc>)>,
    ) {
        self.version += 1;
        let visible = VisibleLifecycle::from(state);
        self.changes.push(LifecycleChange {
            schema: CHANGE_SCHEMA_V1.to_owned(),
            change_id: format!("{}:{}", self.customer_id, self.version),
            customer_id: self.customer_id.to_string(),
            program_id: self.program_id.clone(),
            version: self.version,
            before: Some(visible.clone()),
            after: Some(visible),
            changed: vec![Dimension::Consent],
            caused_by: Vec::new(),
            recomputed: false,
            occurred_at,
            recorded_at: self.recorded_at,
            reason: Some(reason),
            days_left: warning.map(|(days_left, _)| days_left),
            expires_at: warning.map(|(_, expires_at)| expires_at),
        });
    }

    /// Records the customer's erasure by `erasure` (the customer's last
    /// change: `after` is null). `before` is the erased lifecycle, when one
    /// was stored and readable.
    pub fn erased(&mut self, before: Option<&Lifecycle>, erasure: &ConnectEvent) {
        self.version += 1;
        self.changes.push(LifecycleChange {
            schema: CHANGE_SCHEMA_V1.to_owned(),
            change_id: format!("{}:{}", self.customer_id, self.version),
            customer_id: self.customer_id.to_string(),
            program_id: self.program_id.clone(),
            version: self.version,
            before: before.map(VisibleLifecycle::from),
            after: None,
            changed: vec![Dimension::Consent, Dimension::Authentication, Dimension::Accounts],
            caused_by: vec![Cause { event_id: erasure.event_id.clone(), event_type: erasure.event_type.to_string() }],
            recomputed: false,
            occurred_at: erasure.occurred_at,
            recorded_at: self.recorded_at,
            reason: Some(ChangeReason::Erased),
            days_left: None,
            expires_at: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};

    use super::*;
    use crate::lifecycle::AuthorizationPolicy;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn a_warning_carries_the_days_left_and_the_expiry_and_nothing_else_does() {
        let customer = CustomerId::try_from("5000000001".to_owned()).expect("id");
        let program = ProgramId::default();
        let now = at("2026-12-04T12:00:00.250Z");
        let authorized = now + Duration::days(6) + Duration::hours(3) - Duration::days(365);
        let due = AuthorizationPolicy::default().warning_due(authorized, &[30, 7], None, now).expect("due");
        let state = Lifecycle::default();
        let mut versioner = Versioner::new(&customer, &program, 4, true, now);
        versioner.expiring(&state, &due);
        versioner.expired(&state, now);
        assert_eq!(versioner.version(), 6);
        let warning = serde_json::to_value(&versioner.changes[0]).expect("json");
        assert_eq!(warning["reason"], "authorization_expiring");
        assert_eq!(warning["change_id"], "5000000001:5");
        assert_eq!(warning["days_left"], 6);
        assert_eq!(warning["expires_at"], "2026-12-10T15:00:00.250Z");
        assert_eq!(warning["occurred_at"], "2026-12-03T15:00:00.250Z", "7 days before the lapse");
        assert_eq!(warning["recorded_at"], "2026-12-04T12:00:00.250Z");
        assert_eq!(warning["changed"], serde_json::json!(["consent"]));
        assert_eq!(warning["caused_by"], serde_json::json!([]));
        assert_eq!(warning["recomputed"], false);
        assert_eq!(warning["before"], warning["after"]);
        let back: LifecycleChange = serde_json::from_value(warning).expect("reads back");
        assert_eq!(back, versioner.changes[0]);
        let lapse = serde_json::to_value(&versioner.changes[1]).expect("json");
        assert_eq!(lapse["reason"], "authorization_expired");
        assert!(lapse.get("days_left").is_none() && lapse.get("expires_at").is_none(), "{lapse}");
    }
}
