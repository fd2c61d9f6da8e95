//! `--verify` of `--scenario institution-outage`: poll `GET
//! /v1/institutions/{id}` (scope `stats`) until every institution of the
//! scenario shows the status its sessions imply, counted over the sessions
//! sent, or time runs out.
//!
//! `consume` evaluates the institutions every
//! `CONNECTFLOW_HEALTH_INTERVAL_SECONDS` (60 s by default): the API answers
//! 404 for an institution until an evaluation counted it, and the status of
//! the latest evaluation after that, so the wait must exceed the interval.

use std::ops::RangeInclusive;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scenario::PlannedInstitution;
use super::summary::{InstitutionCheck, InstitutionVerification};
use crate::config::Secret;
use crate::institution::{InstitutionHealth, InstitutionStatus};

/// Pause between two rounds of polling.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What an institution must show.
#[derive(Debug, Clone, PartialEq)]
pub struct InstitutionExpectation {
    /// The institution.
    pub institution_id: String,
    /// Its role in the scenario.
    pub role: &'static str,
    /// The status.
    pub status: InstitutionStatus,
    /// The sessions its window must count (those whose webhooks were all
    /// accepted, up to every planned one).
    pub sessions: RangeInclusive<u64>,
    /// The planned share of sessions the bank failed.
    pub institution_failure_rate: f64,
    /// The planned share the customer failed.
    pub customer_failure_rate: f64,
}

impl InstitutionExpectation {
    /// What `institution` must show when `accepted` of its sessions had
    /// every webhook accepted.
    #[allow(clippy::cast_precision_loss)]
    pub fn of(institution: &PlannedInstitution, accepted: u64) -> Self {
        let sessions = institution.sessions();
        let rate = |n: u64| if sessions == 0 { 0.0 } else { n as f64 / sessions as f64 };
        Self {
            institution_id: institution.institution_id.clone(),
            role: institution.profile.role,
            status: institution.profile.expected,
            sessions: accepted.min(sessions)..=sessions,
            institution_failure_rate: rate(institution.bank_down),
            customer_failure_rate: rate(institution.wrong_passwords),
        }
    }

    /// `None` when `seen` matches: the status, and the window counts the
    /// run's sessions (all of them are in, so the status is final).
    pub fn compare(&self, seen: &InstitutionHealth) -> Option<String> {
        let mut problems = Vec::new();
        if seen.status != self.status {
            problems.push(format!("status {} (expected {})", seen.status.as_str(), self.status.as_str()));
        }
        if !self.sessions.contains(&seen.sessions) {
            let (least, most) = (self.sessions.start(), self.sessions.end());
            let expected = if least == most { least.to_string() } else { format!("{least} to {most}") };
            problems.push(format!("{} sessions in its window (expected {expected})", seen.sessions));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }

    fn check(self, seen: Option<InstitutionHealth>, problem: Option<String>) -> InstitutionCheck {
        InstitutionCheck {
            institution_id: self.institution_id,
            role: self.role,
            expected: self.status,
            sessions: self.sessions,
            institution_failure_rate: self.institution_failure_rate,
            customer_failure_rate: self.customer_failure_rate,
            seen,
            problem,
        }
    }
}

/// One look at one institution.
enum Look {
    Seen(Box<InstitutionHealth>),
    NotYet(String),
    Refused(StatusCode),
}

/// Reads institutions from a query API.
#[derive(Debug)]
pub struct InstitutionVerifier {
    client: reqwest::Client,
    api_url: String,
    token: Secret,
}

impl InstitutionVerifier {
    /// A verifier for the query API at `api_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(client: reqwest::Client, api_url: &str, token: Secret) -> Self {
        Self { client, api_url: api_url.trim_end_matches('/').to_owned(), token }
    }

    /// Polls until every expectation matches, `timeout` passes or
    /// `shutdown` is cancelled. A refused token ends it at once.
    pub async fn verify(
        &self,
        expectations: Vec<InstitutionExpectation>,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> InstitutionVerification {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut state: Vec<(InstitutionExpectation, Option<InstitutionHealth>, Option<String>)> =
            expectations.into_iter().map(|e| (e, None, Some("not looked at yet".to_owned()))).collect();
        let mut interrupted = false;
        let mut refused = None;
        loop {
            let looks: Vec<Look> = futures::stream::iter(state.iter().filter(|(_, _, problem)| problem.is_some()))
                .map(|(expectation, _, _)| self.look(&expectation.institution_id))
                .buffered(4)
                .collect()
                .await;
            let pending = state.iter_mut().filter(|(_, _, problem)| problem.is_some());
            for ((expectation, seen, problem), look) in pending.zip(looks) {
                match look {
                    Look::Seen(health) => {
                        *problem = expectation.compare(&health);
                        *seen = Some(*health);
                    }
                    Look::NotYet(why) => *problem = Some(why),
                    Look::Refused(status) => {
                        refused = Some(format!(
                            "the query API refused the token for GET /v1/institutions ({status}): \
                             --scenario institution-outage needs --api-token with scope stats"
                        ));
                        *problem = Some(format!("query API answered {status}"));
                    }
                }
            }
            if state.iter().all(|(_, _, problem)| problem.is_none()) || refused.is_some() || Instant::now() >= deadline
            {
                break;
            }
            if shutdown.run_until_cancelled(tokio::time::sleep(POLL_INTERVAL)).await.is_none() {
                interrupted = true;
                break;
            }
        }
        InstitutionVerification {
            institutions: state.into_iter().map(|(e, seen, problem)| e.check(seen, problem)).collect(),
            elapsed: started.elapsed(),
            interrupted,
            refused,
        }
    }

    async fn look(&self, institution_id: &str) -> Look {
        let url = format!("{}/v1/institutions/{institution_id}", self.api_url);
        let response = match self.client.get(url).bearer_auth(self.token.expose()).send().await {
            Ok(response) => response,
            Err(err) => return Look::NotYet(format!("query API not answering: {err}")),
        };
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Look::NotYet("not evaluated yet (404: no evaluation has counted its sessions)".to_owned());
            }
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => return Look::Refused(status),
            status => return Look::NotYet(format!("query API answered {status}")),
        }
        match response.json::<InstitutionHealth>().await {
            Ok(health) => Look::Seen(Box::new(health)),
            Err(err) => Look::NotYet(format!("unreadable institution: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::simulate::scenario::institutions;

    fn seen(status: InstitutionStatus, sessions: u64) -> InstitutionHealth {
        let at: DateTime<Utc> = DateTime::from_timestamp_millis(1_795_000_000_000).expect("time");
        InstitutionHealth {
            institution_id: "99".into(),
            status,
            since: at,
            evaluated_at: at,
            window_minutes: 60,
            sessions,
            successes: sessions,
            institution_failures: 0,
            customer_failures: 0,
            institution_failure_rate: Some(0.0),
            customer_failure_rate: Some(0.0),
        }
    }

    #[test]
    fn an_institution_matches_with_its_status_over_every_session() {
        let planned = institutions(7, 30);
        let outage = InstitutionExpectation::of(&planned[0], 30);
        assert_eq!((outage.status, outage.sessions.clone()), (InstitutionStatus::Down, 30..=30));
        assert_eq!(outage.institution_failure_rate, 0.8);
        assert_eq!(outage.compare(&seen(InstitutionStatus::Down, 30)), None);
        assert_eq!(
            outage.compare(&seen(InstitutionStatus::Degraded, 30)).as_deref(),
            Some("status degraded (expected down)")
        );
        assert_eq!(
            outage.compare(&seen(InstitutionStatus::Down, 24)).as_deref(),
            Some("24 sessions in its window (expected 30)"),
            "down already, but not every session counted yet"
        );
        let partly = InstitutionExpectation::of(&planned[3], 28);
        assert_eq!(partly.sessions, 28..=30, "two sessions had a webhook not accepted");
        assert_eq!(partly.compare(&seen(InstitutionStatus::Healthy, 29)), None);
        assert_eq!(partly.customer_failure_rate, 21.0 / 30.0);
    }
}
