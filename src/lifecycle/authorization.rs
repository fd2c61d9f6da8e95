//! When a customer's authorization lapses: `CONNECTFLOW_AUTHORIZATION_DAYS`
//! after its date (the CFPB's 12 CFR 1033 limits collection to one year
//! after the most recent authorization). The stored lifecycle keeps only the
//! dates of authorization, a pure function of the events; the lapse is
//! computed from them with the configured period wherever it is shown, so a
//! change of the period needs no re-projection.
//!
//! Before it lapses, an authorization is warned about at thresholds of days
//! left (`CONNECTFLOW_AUTHORIZATION_WARN_DAYS`): [`AuthorizationPolicy::warning_due`]
//! decides which warning, if any, is due now.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::event::rfc3339_ms;

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

/// A warning due for an authorization: the nearest threshold it crossed,
/// which is nearer than any threshold already warned about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueWarning {
    /// The threshold, in days before the lapse.
    pub days: u32,
    /// Whole days left before the lapse (rounded down).
    pub days_left: i64,
    /// When the authorization lapses.
    pub expires_at: DateTime<Utc>,
    /// When the threshold was crossed (`expires_at` minus `days`), or `now`
    /// if that is later (a threshold configured after it passed).
    pub crossed_at: DateTime<Utc>,
}

/// The authorizations whose nearest crossed threshold is `days`: those
/// given in `(after, up_to]` (at the `now` the window was computed for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarningWindow {
    /// Given after this time (later ones crossed no threshold this near, or
    /// any).
    pub after: DateTime<Utc>,
    /// Given at or before this time.
    pub up_to: DateTime<Utc>,
    /// The threshold they crossed last.
    pub days: u32,
}

impl AuthorizationPolicy {
    /// The warning due at `now` for the authorization given at
    /// `authorized_at`, with `thresholds` (days before the lapse, in any
    /// order) and `smallest_sent`, the nearest threshold already warned about
    /// for this same authorization. A threshold `T` is crossed when at most
    /// `T` days are left; of those crossed only the nearest is announced,
    /// and only when it is nearer than every one sent (so an authorization
    /// found 6 days before its lapse gets the 7-day warning and never the
    /// 30-day one). None once the authorization lapsed (the lapse is
    /// announced instead) or when it does not lapse.
    pub fn warning_due(
        self,
        authorized_at: DateTime<Utc>,
        thresholds: &[u32],
        smallest_sent: Option<u32>,
        now: DateTime<Utc>,
    ) -> Option<DueWarning> {
        let expires_at = self.expires_at(Some(authorized_at))?;
        if expires_at <= now {
            return None;
        }
        let left = expires_at - now;
        let days = thresholds.iter().copied().filter(|&days| left <= Duration::days(i64::from(days))).min()?;
        if smallest_sent.is_some_and(|sent| sent <= days) {
            return None;
        }
        let crossed_at = (expires_at - Duration::days(i64::from(days))).min(now);
        Some(DueWarning { days, days_left: left.num_days(), expires_at, crossed_at })
    }

    /// The ranges of `authorized_at` that crossed each threshold at `now`,
    /// one per threshold, nearest first, none when authorizations do not
    /// lapse: an authorization given in a window is due its `days` warning
    /// unless it was warned at that threshold or a nearer one
    /// ([`warning_due`](Self::warning_due) says the same of each). What
    /// the store looks for, as ranges of its index on `authorized_at`.
    pub fn warning_windows(self, thresholds: &[u32], now: DateTime<Utc>) -> Vec<WarningWindow> {
        let Some(lapsed_if_before) = self.authorized_before(now) else { return Vec::new() };
        let mut sorted = thresholds.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut after = lapsed_if_before;
        sorted
            .into_iter()
            .map(|days| {
                let up_to = lapsed_if_before + Duration::days(i64::from(days));
                let window = WarningWindow { after, up_to, days };
                after = up_to;
                window
            })
            .collect()
    }
}

/// A warning sent for an authorization, as the lifecycle document lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExpiryWarning {
    /// The threshold: days before the lapse
    /// (`CONNECTFLOW_AUTHORIZATION_WARN_DAYS`).
    pub days: u32,
    /// Whole days that were left when it was sent.
    pub days_left: i64,
    /// When it was recorded (the lifecycle change's `recorded_at`).
    #[serde(with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub sent_at: DateTime<Utc>,
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

    fn days(n: i64) -> Duration {
        Duration::days(n)
    }

    #[test]
    fn only_the_nearest_crossed_threshold_is_warned_about() {
        let policy = AuthorizationPolicy::default();
        let now = at("2026-12-04T12:00:00Z");
        let expiring_in = |left: Duration| now + left - days(365);
        let due = |left: Duration, sent: Option<u32>| {
            policy.warning_due(expiring_in(left), &[30, 7], sent, now).map(|due| (due.days, due.days_left))
        };
        assert_eq!(due(days(6), None), Some((7, 6)), "6 days left: the 7-day warning, never the 30-day one");
        assert_eq!(due(days(8), None), Some((30, 8)));
        assert_eq!(due(days(400), None), None, "no threshold crossed");
        assert_eq!(due(days(366), None), None);
        assert_eq!(due(days(8), Some(30)), None, "sent already");
        assert_eq!(due(days(6), Some(30)), Some((7, 6)), "a nearer threshold crossed since");
        assert_eq!(due(days(6), Some(7)), None);
        assert_eq!(due(days(20), Some(7)), None, "a farther threshold after a nearer one: never");
        assert_eq!(due(days(7), None), Some((7, 7)), "exactly 7 days left crosses 7");
        assert_eq!(due(days(7) + Duration::milliseconds(1), None), Some((30, 7)), "days left round down");
        assert_eq!(due(Duration::zero(), None), None, "lapsed: the lapse is announced instead");
        assert_eq!(due(-days(1), None), None);
        assert_eq!(policy.warning_due(expiring_in(days(6)), &[], None, now), None, "no thresholds");
        assert_eq!(policy.warning_due(expiring_in(days(6)), &[7, 30], None, now).map(|d| d.days), Some(7), "any order");
        assert_eq!(AuthorizationPolicy::new(0).warning_due(now - days(400), &[30, 7], None, now), None, "never lapses");
    }

    #[test]
    fn a_warning_occurs_when_its_threshold_was_crossed() {
        let policy = AuthorizationPolicy::default();
        let now = at("2026-12-04T12:00:00Z");
        let authorized = now + days(8) - days(365);
        let due = policy.warning_due(authorized, &[30, 7], None, now).expect("due");
        assert_eq!(due.expires_at, now + days(8));
        assert_eq!(due.crossed_at, now - days(22), "30 days before the lapse");
        let later = now + days(1) + Duration::hours(1);
        let due = policy.warning_due(authorized, &[30, 7], Some(30), later).expect("due");
        assert_eq!((due.days, due.days_left), (7, 6));
        assert_eq!(due.crossed_at, now + days(1), "7 days before the lapse");
        let unsent = policy.warning_due(authorized, &[30, 7], None, now).map(|d| d.crossed_at);
        assert!(unsent.is_some_and(|at| at <= now), "never after now");
    }

    #[test]
    fn windows_cover_exactly_the_authorizations_due_a_warning() {
        let policy = AuthorizationPolicy::new(100);
        let now = at("2026-12-04T12:00:00Z");
        let windows = policy.warning_windows(&[30, 7, 30], now);
        assert_eq!(windows.len(), 2, "nearest first, without repeats: {windows:?}");
        assert_eq!(windows[0], WarningWindow { after: now - days(100), up_to: now - days(93), days: 7 });
        assert_eq!(windows[1], WarningWindow { after: now - days(93), up_to: now - days(70), days: 30 });
        // Every hour over 120 days: due exactly when inside a window, with
        // that window's threshold.
        for hour in 0..(120 * 24) {
            let authorized = now - days(110) + Duration::hours(hour) + Duration::milliseconds(1);
            let due = policy.warning_due(authorized, &[7, 30], None, now).map(|d| d.days);
            let window = windows.iter().find(|w| w.after < authorized && authorized <= w.up_to).map(|w| w.days);
            assert_eq!(due, window, "authorized at {authorized}");
        }
        for edge in [windows[0].after, windows[0].up_to, windows[1].up_to] {
            let due = policy.warning_due(edge, &[7, 30], None, now).map(|d| d.days);
            let window = windows.iter().find(|w| w.after < edge && edge <= w.up_to).map(|w| w.days);
            assert_eq!(due, window, "authorized at {edge}");
        }
        assert!(AuthorizationPolicy::new(0).warning_windows(&[30, 7], now).is_empty());
        assert!(policy.warning_windows(&[], now).is_empty());
    }
}
