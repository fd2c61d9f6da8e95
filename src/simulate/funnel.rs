//! The funnel a simulation implies: what `/v1/stats/funnel` must show for
//! the simulated customers, from what each flow declares
//! ([`Flow::expected_steps`](super::flows::Flow::expected_steps) and the
//! rest), printed with the summary so it can be compared with the API or the
//! console.

use std::fmt;

use chrono::{DateTime, Duration, Utc};

use super::plan::PlannedCustomer;
use crate::api::model::{DEFAULT_WINDOW, FunnelCounts};
use crate::event::rfc3339_ms;
use crate::lifecycle::{AuthReason, Outcome};

/// The expected funnel of a simulation's customers.
#[derive(Debug, Clone)]
pub struct ExpectedFunnel {
    /// The earliest first event.
    pub since: DateTime<Utc>,
    /// Just after the latest first event: `[since, until)` holds them all.
    pub until: DateTime<Utc>,
    /// The counts the API must show for that window (when no other customer
    /// started in it).
    pub counts: FunnelCounts,
    /// When some first events are older than the 30 days before `until`
    /// (the `reauthorized` flow's first session is a year old): the counts
    /// of the customers in those 30 days, which the console's default
    /// window shows.
    pub recent: Option<FunnelCounts>,
}

impl ExpectedFunnel {
    /// Of these customers (`None` when there are none).
    pub fn of(customers: &[PlannedCustomer]) -> Option<Self> {
        let first = |c: &PlannedCustomer| c.flow.first_event_at(c.start);
        let since = customers.iter().map(first).min()?;
        let until = customers.iter().map(first).max()? + Duration::milliseconds(1);
        let recent_since = until - DEFAULT_WINDOW;
        let recent: Vec<&PlannedCustomer> = customers.iter().filter(|c| first(c) >= recent_since).collect();
        Some(Self {
            since,
            until,
            counts: counts_of(customers.iter()),
            recent: (recent.len() < customers.len()).then(|| counts_of(recent.into_iter())),
        })
    }
}

/// What the flows of these customers declare, added up.
fn counts_of<'a>(customers: impl Iterator<Item = &'a PlannedCustomer>) -> FunnelCounts {
    let mut counts = FunnelCounts::default();
    for customer in customers {
        let flow = customer.flow;
        let outcome = Outcome {
            steps: flow.expected_steps,
            authentication: flow.expected_authentication,
            reason: flow.expected_reason,
            consent: flow.expected_consent,
        };
        counts.add(&outcome, 1);
    }
    counts
}

/// The counts, in one line.
fn describe(c: &FunnelCounts) -> String {
    let s = &c.steps;
    let by_reason = |counts: &mut dyn Iterator<Item = (AuthReason, i64)>| {
        counts.map(|(reason, n)| format!("{} {n}", reason.as_str())).collect::<Vec<_>>().join(", ")
    };
    format!(
        "{} customers; started {}, institution_chosen {}, mfa_challenged {}, authenticated {}, consent_granted {}; \
         failed {} ({}); abandoned {} ({}); in_progress {}; consent_revoked {}",
        c.customers,
        s.started,
        s.institution_chosen,
        s.mfa_challenged,
        s.authenticated,
        s.consent_granted,
        c.failed.total,
        by_reason(&mut c.failed.by_reason.iter()),
        c.abandoned.total,
        by_reason(&mut c.abandoned.by_reason.iter()),
        c.in_progress,
        c.consent_revoked,
    )
}

impl fmt::Display for ExpectedFunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected funnel (GET /v1/stats/funnel?since={}&until={}): {}",
            rfc3339_ms::format(&self.since),
            rfc3339_ms::format(&self.until),
            describe(&self.counts)
        )?;
        if let Some(recent) = &self.recent {
            write!(
                f,
                "\nexpected funnel of the 30 days before {} (the console's default window; older first events are \
                 not in it): {}",
                rfc3339_ms::format(&self.until),
                describe(recent)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::flows::all_flows;
    use crate::simulate::plan::{Plan, PlanSpec};

    /// Two customers of every flow: each count is twice the number of flows
    /// that reach it, the window spans the year-old first session of
    /// `reauthorized`.
    #[test]
    fn the_expected_funnel_adds_up_what_each_flow_declares() {
        let now = DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
        let spec = PlanSpec {
            flows: all_flows().collect(),
            customers_per_flow: 2,
            duplicates: 0.0,
            shuffle: false,
            seed: 3,
            now,
        };
        let plan = Plan::build(&spec).expect("plan");
        let funnel = ExpectedFunnel::of(&plan.customers).expect("customers");
        let c = &funnel.counts;
        assert_eq!(c.customers, 22);
        assert_eq!(
            (c.steps.started, c.steps.institution_chosen, c.steps.mfa_challenged),
            (22, 20, 2),
            "all but institution-not-found choose"
        );
        assert_eq!((c.steps.authenticated, c.steps.consent_granted), (12, 12), "six flows share accounts");
        assert_eq!((c.failed.total, c.failed.by_reason.get(AuthReason::InstitutionNotSupported)), (8, 2));
        assert_eq!((c.abandoned.total, c.abandoned.by_reason.get(AuthReason::Abandoned), c.in_progress), (2, 2, 0));
        assert_eq!(c.consent_revoked, 4, "revoked and revoked-by-customer");
        assert_eq!(c.conversion, Some(12.0 / 22.0));
        let firsts: Vec<_> = plan.customers.iter().map(|c| c.flow.first_event_at(c.start)).collect();
        assert!(firsts.iter().all(|first| (funnel.since..funnel.until).contains(first)));
        assert!(funnel.since < now - Duration::days(364), "the reauthorized customers' first session");
        assert!(funnel.to_string().contains("22 customers; started 22, institution_chosen 20"), "{funnel}");
        let recent = funnel.recent.expect("the reauthorized customers' first sessions are older");
        assert_eq!((recent.customers, recent.steps.consent_granted), (20, 10), "all but the two reauthorized");
        assert!(funnel.to_string().contains("default window; older first events are not in it): 20 customers"));
    }
}
