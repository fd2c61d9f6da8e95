//! When a customer's authorization lapses: `CONNECTFLOW_AUTHORIZATION_DAYS`
//! after its date (the CFPB's 12 CFR 1033 limits collection to one year
//! after the most recent authorization). The stored lifecycle keeps only the
//! dates of authorization, a pure function of the events; the lapse is
//! computed from them with the configured period wherever it is shown, so a
//! change of the period needs no re-projection.

use chrono::{DateTime, Duration, Utc};

/// The authorization period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    days: u32,
}

impl Default for AuthorizationPolicy {
    fn default() -> Self {
        Self::new(Self::DEFAULT_DAYS)
    }
}

impl AuthorizationPolicy {
    /// One year, as 12 CFR 1033 asks.
    pub const DEFAULT_DAYS: u32 = 365;

    /// A period of `days`; 0 means authorizations never lapse.
    pub const fn new(days: u32) -> Self {
        Self { days }
    }

    /// The period in days (0: no expiry).
    pub const fn days(self) -> u32 {
        self.days
    }

    /// When an authorization given at `authorized_at` lapses; `None` when
    /// there is none or authorizations do not lapse.
    pub fn expires_at(self, authorized_at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        if self.days == 0 {
            return None;
        }
        authorized_at?.checked_add_signed(Duration::days(i64::from(self.days)))
    }

    /// Whether an authorization given at `authorized_at` has lapsed at `now`.
    pub fn expired(self, authorized_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        self.expires_at(authorized_at).is_some_and(|at| at <= now)
    }

    /// The authorizations that lapse before `before` were given before this
    /// time; `None` when none lapses.
    pub fn authorized_before(self, before: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.days == 0 {
            return None;
        }
        before.checked_sub_signed(Duration::days(i64::from(self.days)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn a_year_after_the_authorization() {
        let policy = AuthorizationPolicy::default();
        let given = at("2025-03-01T10:00:00Z");
        assert_eq!(policy.expires_at(Some(given)), Some(at("2026-03-01T10:00:00Z")));
        assert!(!policy.expired(Some(given), at("2026-03-01T09:59:59Z")));
        assert!(policy.expired(Some(given), at("2026-03-01T10:00:00Z")));
        assert_eq!(policy.expires_at(None), None);
        assert!(!policy.expired(None, at("2100-01-01T00:00:00Z")));
        assert_eq!(policy.authorized_before(at("2026-03-01T10:00:00Z")), Some(given));
    }

    #[test]
    fn zero_days_never_lapses() {
        let policy = AuthorizationPolicy::new(0);
        assert_eq!(policy.expires_at(Some(at("2000-01-01T00:00:00Z"))), None);
        assert!(!policy.expired(Some(at("2000-01-01T00:00:00Z")), at("2100-01-01T00:00:00Z")));
        assert_eq!(policy.authorized_before(at("2100-01-01T00:00:00Z")), None);
    }
}
