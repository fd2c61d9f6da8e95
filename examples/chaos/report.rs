//! What a chaos run found, printed and as `target/chaos/summary.json`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use connectflow::simulate::plan::Plan;
use serde_json::{Value, json};

use crate::send::Sent;

/// A fault and when it was injected.
#[derive(Debug, Clone)]
pub struct Fault {
    name: &'static str,
    at: Instant,
    offset: Duration,
    failover: Option<Option<Duration>>,
}

impl Fault {
    pub fn new(name: &'static str, at: Instant, t0: Instant) -> Self {
        Self { name, at, offset: at.saturating_duration_since(t0), failover: None }
    }

    /// For a broker kill: how long until the partition had a new leader.
    pub fn with_failover(mut self, failover: Option<Duration>) -> Self {
        self.failover = Some(failover);
        self
    }
}

/// Counts taken from Postgres and Kafka after the run.
#[derive(Debug, Clone, Copy)]
pub struct ReportCounts {
    pub acked: usize,
    pub recorded: usize,
    pub missing: usize,
    pub recorded_twice: usize,
    pub projection_differences: usize,
    pub state_mismatches: usize,
    pub dead_letters: i64,
    pub duration_s: f64,
}

pub struct Report {
    counts: ReportCounts,
    customers: usize,
    deliveries: u64,
    requests: usize,
    statuses: BTreeMap<String, usize>,
    not_answered: usize,
    unavailable: usize,
    outside_contract: usize,
    longest_answer_ms: f64,
    faults: Vec<Value>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

impl Report {
    pub fn build(sent: &Sent, faults: &[Fault], plan: &Plan, counts: ReportCounts) -> Self {
        let mut statuses = BTreeMap::new();
        for attempt in &sent.attempts {
            let key = attempt.status.map_or_else(|| "no answer".to_owned(), |s| s.to_string());
            *statuses.entry(key).or_insert(0) += 1;
        }
        let answered = sent.attempts.iter().filter(|a| a.status.is_some());
        let longest = answered.clone().map(|a| a.latency).max().unwrap_or_default();
        let faults = faults
            .iter()
            .map(|fault| {
                let first_200 = sent
                    .attempts
                    .iter()
                    .filter(|a| a.status == Some(200) && a.at >= fault.at)
                    .map(|a| a.at - fault.at)
                    .min();
                let window = fault.at + Duration::from_secs(60);
                let in_window: Vec<_> = sent
                    .attempts
                    .iter()
                    .filter(|a| a.status == Some(503) && a.at >= fault.at && a.at < window)
                    .collect();
                let unavailable = in_window.len();
                let last_503 = in_window.iter().map(|a| a.at - fault.at).max();
                let mut entry = json!({
                    "fault": fault.name,
                    "at_s": (fault.offset.as_secs_f64() * 10.0).round() / 10.0,
                    "first_200_after_ms": first_200.map(ms),
                    "answers_503_within_60s": unavailable,
                    "last_503_after_ms": last_503.map(ms),
                });
                if let Some(failover) = fault.failover {
                    entry["new_partition_leader_after_ms"] = json!(failover.map(ms));
                }
                entry
            })
            .collect();
        Self {
            counts,
            customers: plan.customers.len(),
            deliveries: sent.deliveries,
            requests: sent.attempts.len(),
            not_answered: sent.attempts.iter().filter(|a| a.status.is_none()).count(),
            unavailable: sent.attempts.iter().filter(|a| a.status == Some(503)).count(),
            outside_contract: sent
                .attempts
                .iter()
                .filter(|a| matches!(a.status, Some(s) if s != 200 && s != 503))
                .count(),
            longest_answer_ms: ms(longest),
            statuses,
            faults,
        }
    }

    pub fn passed(&self) -> bool {
        let c = &self.counts;
        c.missing == 0
            && c.recorded_twice == 0
            && c.projection_differences == 0
            && c.state_mismatches == 0
            && c.dead_letters == 0
            && self.outside_contract == 0
            && c.acked > 0
    }

    pub fn json(&self) -> Value {
        let c = &self.counts;
        json!({
            "passed": self.passed(),
            "duration_s": (c.duration_s * 10.0).round() / 10.0,
            "customers": self.customers,
            "webhooks_delivered": self.deliveries,
            "requests": self.requests,
            "events_acknowledged": c.acked,
            "events_recorded": c.recorded,
            "acknowledged_lost": c.missing,
            "recorded_twice": c.recorded_twice,
            "projection_differences": c.projection_differences,
            "customers_in_wrong_state": c.state_mismatches,
            "dead_letters": c.dead_letters,
            "answers_by_status": self.statuses,
            "answers_503": self.unavailable,
            "answers_outside_200_503": self.outside_contract,
            "requests_not_answered": self.not_answered,
            "longest_answer_ms": self.longest_answer_ms,
            "faults": self.faults,
        })
    }
}
