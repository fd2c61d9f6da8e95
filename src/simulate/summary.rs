//! What a simulation did, as counted while sending and verifying, and how
//! it is printed at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::institution::{InstitutionHealth, InstitutionStatus};

/// What the sending did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The plan's seed (pass it as `--seed` to repeat the run).
    pub seed: u64,
    /// Customers in the plan.
    pub customers: u64,
    /// Webhooks in the plan (pings and duplicates included).
    pub planned: u64,
    /// Webhooks sent at least once.
    pub sent: u64,
    /// Webhooks that ended answered 2xx.
    pub accepted: u64,
    /// Webhooks that ended otherwise: a 4xx, or a 5xx or connection error
    /// after the last retry.
    pub not_accepted: u64,
    /// Sent webhooks that repeat an event.
    pub duplicates: u64,
    /// HTTP requests started, retries included.
    pub requests: u64,
    /// Requests that were retries.
    pub retries: u64,
    /// Answers by HTTP status, over every request.
    pub answers: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, timeout).
    pub connection_errors: u64,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Whether a shutdown signal stopped the run early.
    pub interrupted: bool,
    /// Revocations sent through the API (flows that revoke) and answered 202.
    pub revocations: u64,
    /// Revocations that were not accepted (an error answer, or the customer
    /// never became revocable in time).
    pub revocations_failed: u64,
}

impl Summary {
    /// Webhooks sent per second.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 { self.sent as f64 / seconds } else { 0.0 }
    }

    /// Whether every planned webhook was sent and accepted.
    pub fn all_accepted(&self) -> bool {
        !self.interrupted && self.accepted == self.planned
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let customers = plural(self.customers, "customer");
        writeln!(f, "simulate: {customers}, seed {}{}", self.seed, interrupted(self.interrupted))?;
        writeln!(
            f,
            "  webhooks   {} sent of {} planned, {} accepted, {} not accepted, {} duplicates",
            self.sent, self.planned, self.accepted, self.not_accepted, self.duplicates
        )?;
        writeln!(f, "  requests   {} ({} retries)", self.requests, self.retries)?;
        let mut answers: Vec<String> = self.answers.iter().map(|(status, n)| format!("HTTP {status}: {n}")).collect();
        if self.connection_errors > 0 {
            answers.push(format!("connection errors: {}", self.connection_errors));
        }
        if answers.is_empty() {
            answers.push("none".to_owned());
        }
        writeln!(f, "  answers    {}", answers.join(", "))?;
        if self.revocations + self.revocations_failed > 0 {
            writeln!(
                f,
                "  revocations {} accepted through the API, {} not accepted",
                self.revocations, self.revocations_failed
            )?;
        }
        write!(f, "  elapsed    {:.2} s, {:.1} webhooks/s", self.elapsed.as_secs_f64(), self.rate())
    }
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

fn interrupted(yes: bool) -> &'static str {
    if yes { " (interrupted)" } else { "" }
}

/// A customer whose lifecycle did not end as its flow should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The customer.
    pub customer_id: String,
    /// Its flow's name.
    pub flow: &'static str,
    /// What was last seen, against what was expected.
    pub problem: String,
}

/// What the verification found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verification {
    /// Customers checked (those whose every webhook was accepted).
    pub checked: u64,
    /// Customers in their expected states.
    pub matched: u64,
    /// Customers not checked because some of their webhooks were not accepted.
    pub skipped: u64,
    /// Every checked customer that did not match before the timeout.
    pub mismatches: Vec<Mismatch>,
    /// How long the verification took.
    pub elapsed: Duration,
    /// Whether a shutdown signal stopped it early.
    pub interrupted: bool,
    /// Why the query API could not be asked at all (it refused the token).
    pub refused: Option<String>,
    /// The lifecycle `version` of every matched customer, as the query API
    /// showed it (what `--verify-changes` expects on the topic); absent for
    /// an API that shows none.
    pub versions: BTreeMap<String, i64>,
}

impl Verification {
    /// Whether every checked customer matched and none was skipped.
    pub fn passed(&self) -> bool {
        !self.interrupted
            && self.refused.is_none()
            && self.skipped == 0
            && self.mismatches.is_empty()
            && self.matched == self.checked
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(refused) = &self.refused {
            return write!(f, "verify: {refused}");
        }
        write!(
            f,
            "verify: {} of {} customers in their expected states after {:.1} s{}",
            self.matched,
            self.checked,
            self.elapsed.as_secs_f64(),
            interrupted(self.interrupted)
        )?;
        if self.skipped > 0 {
            write!(f, "\n  {} customers not checked: some of their webhooks were not accepted", self.skipped)?;
        }
        for m in &self.mismatches {
            write!(f, "\n  MISMATCH customer {} ({}): {}", m.customer_id, m.flow, m.problem)?;
        }
        Ok(())
    }
}

/// One institution of `--scenario institution-outage`, as verified: the
/// status its sessions imply against what `GET /v1/institutions/{id}`
/// showed last.
#[derive(Debug, Clone, PartialEq)]
pub struct InstitutionCheck {
    /// The institution.
    pub institution_id: String,
    /// Its role in the scenario (`outage`, `healthy-a`, ...).
    pub role: &'static str,
    /// The status its sessions imply.
    pub expected: InstitutionStatus,
    /// The sessions the window must count: at least the sessions whose
    /// webhooks were all accepted, at most every planned one.
    pub sessions: RangeInclusive<u64>,
    /// The planned share of sessions the bank failed, 0 to 1.
    pub institution_failure_rate: f64,
    /// The planned share the customer failed, 0 to 1.
    pub customer_failure_rate: f64,
    /// The API's latest answer, once it had one.
    pub seen: Option<InstitutionHealth>,
    /// What differs, or `None` when it matched.
    pub problem: Option<String>,
}

/// What `--verify` found at `GET /v1/institutions/{id}` for the scenario's
/// institutions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstitutionVerification {
    /// Every institution, in the scenario's order.
    pub institutions: Vec<InstitutionCheck>,
    /// How long the verification took.
    pub elapsed: Duration,
    /// Whether a shutdown signal stopped it early.
    pub interrupted: bool,
    /// Why the API could not be asked at all (it refused the token).
    pub refused: Option<String>,
}

impl InstitutionVerification {
    /// Institutions in their expected statuses.
    pub fn matched(&self) -> usize {
        self.institutions.iter().filter(|i| i.problem.is_none()).count()
    }

    /// Whether every institution is in its expected status.
    pub fn passed(&self) -> bool {
        !self.interrupted && self.refused.is_none() && self.matched() == self.institutions.len()
    }
}

/// `sessions, rates` of an institution.
fn window(sessions: impl fmt::Display, institution_rate: Option<f64>, customer_rate: Option<f64>) -> String {
    let percent = |rate: Option<f64>| rate.map_or_else(|| "-".to_owned(), |rate| format!("{:.1} %", rate * 100.0));
    format!(
        "{sessions} sessions, {} bank failures, {} customer failures",
        percent(institution_rate),
        percent(customer_rate)
    )
}

impl fmt::Display for InstitutionVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(refused) = &self.refused {
            return write!(f, "verify-institutions: {refused}");
        }
        write!(
            f,
            "verify-institutions: {} of {} institutions in their expected statuses after {:.1} s{}",
            self.matched(),
            self.institutions.len(),
            self.elapsed.as_secs_f64(),
            interrupted(self.interrupted)
        )?;
        for i in &self.institutions {
            let (least, most) = (i.sessions.start(), i.sessions.end());
            let expected_sessions = if least == most { least.to_string() } else { format!("{least} to {most}") };
            let seen = match &i.seen {
                Some(seen) => format!(
                    "{} since {}, {}",
                    seen.status.as_str(),
                    crate::event::rfc3339_ms::format(&seen.since),
                    window(seen.sessions, seen.institution_failure_rate, seen.customer_failure_rate)
                ),
                None => "nothing".to_owned(),
            };
            write!(
                f,
                "\n  institution {} {:<15} expected {} ({}); seen {}",
                i.institution_id,
                i.role,
                i.expected.as_str(),
                window(expected_sessions, Some(i.institution_failure_rate), Some(i.customer_failure_rate)),
                seen
            )?;
        }
        for i in self.institutions.iter().filter(|i| i.problem.is_some()) {
            write!(
                f,
                "\n  MISMATCH institution {} ({}): {}",
                i.institution_id,
                i.role,
                i.problem.as_deref().unwrap_or_default()
            )?;
        }
        if !self.passed() {
            write!(
                f,
                "\n  (consume evaluates the institutions every CONNECTFLOW_HEALTH_INTERVAL_SECONDS, 60 s by default: \
                 --verify-timeout-s must exceed it)"
            )?;
        }
        Ok(())
    }
}

/// What `--verify-changes` found on the lifecycle-change topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangesVerification {
    /// The topic read.
    pub topic: String,
    /// Customers checked (those the query API verified).
    pub checked: u64,
    /// Customers whose changes are versions 1..=`version` in order, the
    /// last in the flow's states.
    pub matched: u64,
    /// Records of the checked customers read from the topic.
    pub records: u64,
    /// Of those, records that repeat a change already read (allowed: a
    /// relay published them again after a crash).
    pub duplicates: u64,
    /// Runs of versions recorded again after a Postgres failover lost them
    /// (`TopicAudit::rerecorded`).
    pub rerecorded: u64,
    /// Every checked customer whose changes are not as they should be.
    pub mismatches: Vec<Mismatch>,
    /// How long the check took.
    pub elapsed: Duration,
    /// Whether a shutdown signal stopped it early.
    pub interrupted: bool,
    /// Why the topic could not be read (to its end, in time).
    pub error: Option<String>,
}

impl ChangesVerification {
    /// Whether every checked customer matched.
    pub fn passed(&self) -> bool {
        !self.interrupted && self.error.is_none() && self.mismatches.is_empty() && self.matched == self.checked
    }

    /// This verification ended by `error`.
    pub(crate) fn failed(mut self, error: String, started: std::time::Instant) -> Self {
        self.error = Some(error);
        self.elapsed = started.elapsed();
        self
    }
}

impl fmt::Display for ChangesVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(error) = &self.error {
            return write!(f, "verify-changes: {error}");
        }
        write!(
            f,
            "verify-changes: {} of {} customers with every version in order on {} ({} records, {} duplicates{}) after {:.1} s{}",
            self.matched,
            self.checked,
            self.topic,
            self.records,
            self.duplicates,
            if self.rerecorded > 0 {
                format!(", {} runs recorded again after a failover", self.rerecorded)
            } else {
                String::new()
            },
            self.elapsed.as_secs_f64(),
            interrupted(self.interrupted)
        )?;
        for m in &self.mismatches {
            write!(f, "\n  MISMATCH customer {} ({}): {}", m.customer_id, m.flow, m.problem)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_every_status_and_the_rate() {
        let summary = Summary {
            seed: 7,
            customers: 2,
            planned: 10,
            sent: 10,
            accepted: 0,
            not_accepted: 10,
            requests: 12,
            retries: 2,
            answers: BTreeMap::from([(401, 10), (503, 1)]),
            connection_errors: 1,
            elapsed: Duration::from_secs(2),
            ..Summary::default()
        };
        let text = summary.to_string();
        assert!(text.contains("HTTP 401: 10, HTTP 503: 1, connection errors: 1"), "{text}");
        assert!(text.contains("5.0 webhooks/s"), "{text}");
        assert!(text.contains("seed 7"), "{text}");
        assert!(!summary.all_accepted());
    }

    #[test]
    fn verification_fails_on_a_mismatch_or_a_skipped_customer() {
        let passed = Verification { checked: 2, matched: 2, ..Verification::default() };
        assert!(passed.passed());
        assert!(!Verification { skipped: 1, ..passed.clone() }.passed());
        let mismatch = Mismatch { customer_id: "1".into(), flow: "abandoned", problem: "never seen".into() };
        let failed = Verification { matched: 1, mismatches: vec![mismatch], ..passed.clone() };
        assert!(!failed.passed());
        let refused = Verification { refused: Some("the query API refused the token".into()), ..passed };
        assert!(!refused.passed());
        assert_eq!(refused.to_string(), "verify: the query API refused the token");
        assert!(failed.to_string().contains("MISMATCH customer 1 (abandoned): never seen"));
    }
}
