//! Verification: poll the query API until every simulated customer shows the
//! states its flow should end in, or time runs out.
//!
//! A customer matches when its consent and authentication states are the
//! flow's, its lifecycle counts at least the flow's distinct events, and its
//! `last_event` is the flow's last event. The last two make a customer that
//! passes through the expected states on the way (or whose events arrive out
//! of order) wait until everything sent has been applied.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use indicatif::ProgressBar;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::plan::PlannedCustomer;
use super::summary::{Mismatch, Verification};
use crate::config::Secret;

/// Pause between two rounds of polling.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What a customer's lifecycle should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The customer.
    pub customer_id: String,
    /// Its flow's name.
    pub flow: &'static str,
    /// The consent state the flow ends in.
    pub consent: &'static str,
    /// The authentication state the flow ends in.
    pub authentication: &'static str,
    /// Distinct events sent.
    pub events: u64,
    /// The flow's last event.
    pub last_event_id: Option<String>,
}

impl Expectation {
    /// What `customer`'s lifecycle should show once its webhooks (and, for
    /// a flow that revokes through the API, its revocation in the run with
    /// `seed`) are applied.
    pub fn of(customer: &PlannedCustomer, seed: u64, program: &crate::program::ProgramId) -> Self {
        let revocation = customer.flow.revokes_through_api.then(|| {
            crate::event::Requested::Revocation
                .event_id(program, &super::send::revocation_key(seed, &customer.customer_id))
        });
        Self {
            customer_id: customer.customer_id.clone(),
            flow: customer.flow.name,
            consent: customer.flow.expected_consent.as_str(),
            authentication: customer.flow.expected_authentication.as_str(),
            events: customer.distinct_events() as u64 + u64::from(revocation.is_some()),
            last_event_id: revocation.or_else(|| customer.last_event_id()),
        }
    }

    /// `None` when `seen` matches, else what differs.
    fn compare(&self, seen: &SeenLifecycle) -> Option<String> {
        let mut problems = Vec::new();
        if seen.consent.state != self.consent {
            problems.push(format!("consent {} (expected {})", seen.consent.state, self.consent));
        }
        if seen.authentication.state != self.authentication {
            problems.push(format!("authentication {} (expected {})", seen.authentication.state, self.authentication));
        }
        if seen.event_count < self.events {
            problems.push(format!("{} of {} events recorded", seen.event_count, self.events));
        }
        let last = seen.last_event.as_ref().map(|e| e.event_id.as_str());
        if self.last_event_id.is_some() && last != self.last_event_id.as_deref() {
            problems.push(format!(
                "last event {} (expected {})",
                last.unwrap_or("none"),
                self.last_event_id.as_deref().unwrap_or("none")
            ));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }
}

/// The fields of `GET /v1/customers/{id}/lifecycle` that verification reads.
#[derive(Debug, Deserialize)]
struct SeenLifecycle {
    consent: SeenState,
    authentication: SeenState,
    event_count: u64,
    last_event: Option<SeenEvent>,
    /// Absent from a release before the lifecycle-change topic.
    #[serde(default)]
    version: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct SeenState {
    state: String,
}

#[derive(Debug, Deserialize)]
struct SeenEvent {
    event_id: String,
}

/// One look at one customer.
enum Look {
    /// With the lifecycle's version, when the API shows one.
    Matches(Option<i64>),
    Differs(String),
    /// The API refused the token: no point in waiting.
    Refused(StatusCode),
}

/// Reads lifecycles from a query API.
#[derive(Debug)]
pub struct Verifier {
    client: reqwest::Client,
    api_url: String,
    token: Secret,
    concurrency: usize,
}

impl Verifier {
    /// A verifier for the query API at `api_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(client: reqwest::Client, api_url: &str, token: Secret, concurrency: usize) -> Self {
        Self { client, api_url: api_url.trim_end_matches('/').to_owned(), token, concurrency: concurrency.max(1) }
    }

    /// Polls until every expectation matches, `timeout` passes or `shutdown`
    /// is cancelled. `skipped` customers (not checked) are reported as such.
    /// An API that refuses the token ends the verification at once (waiting
    /// would not change its answer).
    pub async fn verify(
        &self,
        expectations: Vec<Expectation>,
        skipped: u64,
        timeout: Duration,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> Verification {
        let started = Instant::now();
        let deadline = started + timeout;
        let checked = expectations.len() as u64;
        let mut pending: Vec<(Expectation, String)> =
            expectations.into_iter().map(|e| (e, "not looked at yet".to_owned())).collect();
        let mut interrupted = false;
        let mut refused = None;
        let mut versions = BTreeMap::new();
        loop {
            let looks: Vec<(Expectation, Look)> = futures::stream::iter(pending)
                .map(|(expectation, _)| async move {
                    let look = self.look(&expectation).await;
                    (expectation, look)
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            pending = Vec::with_capacity(looks.len());
            for (expectation, look) in looks {
                match look {
                    Look::Matches(version) => {
                        progress.inc(1);
                        if let Some(version) = version {
                            versions.insert(expectation.customer_id, version);
                        }
                    }
                    Look::Differs(problem) => pending.push((expectation, problem)),
                    Look::Refused(status) => {
                        refused = Some(format!(
                            "the query API refused the token ({status}): check --api-token or CONNECTFLOW_API_TOKENS"
                        ));
                        pending.push((expectation, format!("query API answered {status}")));
                    }
                }
            }
            if pending.is_empty() || refused.is_some() || Instant::now() >= deadline {
                break;
            }
            if shutdown.run_until_cancelled(tokio::time::sleep(POLL_INTERVAL)).await.is_none() {
                interrupted = true;
                break;
            }
        }
        let mut mismatches: Vec<Mismatch> = pending
            .into_iter()
            .map(|(e, problem)| Mismatch { customer_id: e.customer_id, flow: e.flow, problem })
            .collect();
        mismatches.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        Verification {
            checked,
            matched: checked - mismatches.len() as u64,
            skipped,
            mismatches,
            elapsed: started.elapsed(),
            interrupted,
            refused,
            versions,
        }
    }

    async fn look(&self, expectation: &Expectation) -> Look {
        let url = format!("{}/v1/customers/{}/lifecycle", self.api_url, expectation.customer_id);
        let response = match self.client.get(url).bearer_auth(self.token.expose()).send().await {
            Ok(response) => response,
            Err(err) => return Look::Differs(format!("query API not answering: {err}")),
        };
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Look::Differs("unknown to the query API (no event applied)".to_owned()),
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => return Look::Refused(status),
            status => return Look::Differs(format!("query API answered {status}")),
        }
        match response.json::<SeenLifecycle>().await {
            Ok(seen) => expectation.compare(&seen).map_or(Look::Matches(seen.version), Look::Differs),
            Err(err) => Look::Differs(format!("unreadable lifecycle: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectation() -> Expectation {
        Expectation {
            customer_id: "1".into(),
            flow: "legacy-success",
            consent: "granted",
            authentication: "authenticated",
            events: 5,
            last_event_id: Some("1795000004000-aa".into()),
        }
    }

    fn seen(json: serde_json::Value) -> SeenLifecycle {
        serde_json::from_value(json).expect("a lifecycle")
    }

    #[test]
    fn a_complete_lifecycle_in_the_expected_states_matches() {
        let complete = seen(serde_json::json!({
            "customer_id": "1",
            "consent": {"state": "granted", "since": null},
            "authentication": {"state": "authenticated"},
            "event_count": 5,
            "last_event": {"event_id": "1795000004000-aa", "event_type": "done"}
        }));
        assert_eq!(expectation().compare(&complete), None);
    }

    #[test]
    fn the_right_states_with_events_still_missing_do_not_match_yet() {
        let early = seen(serde_json::json!({
            "consent": {"state": "granted"},
            "authentication": {"state": "authenticated"},
            "event_count": 4,
            "last_event": {"event_id": "1795000003000-bb"}
        }));
        let problem = expectation().compare(&early).expect("a mismatch");
        assert!(problem.contains("4 of 5 events"), "{problem}");
        assert!(problem.contains("last event 1795000003000-bb"), "{problem}");
    }

    #[test]
    fn wrong_states_are_named_with_what_was_expected() {
        let wrong = seen(serde_json::json!({
            "consent": {"state": "none"},
            "authentication": {"state": "failed"},
            "event_count": 5,
            "last_event": {"event_id": "1795000004000-aa"}
        }));
        let problem = expectation().compare(&wrong).expect("a mismatch");
        assert_eq!(problem, "consent none (expected granted), authentication failed (expected authenticated)");
    }
}
