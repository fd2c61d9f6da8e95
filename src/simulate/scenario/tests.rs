use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

use super::*;
use crate::event::ConnectEvent;
use crate::institution::{HealthSettings, Session, SessionOutcome, WindowCounts, session_outcome};
use crate::lifecycle::{Advance, Lifecycle, advance, fold_from_watching};
use crate::receive::normalise::{Webhook, normalise};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_795_000_000_000).expect("valid time")
}

fn spec(seed: u64) -> PlanSpec {
    PlanSpec { flows: Vec::new(), customers_per_flow: 0, duplicates: 0.0, shuffle: false, seed, now: now() }
}

fn outage(sessions: u64, seed: u64) -> OutagePlan {
    plan(sessions, &spec(seed)).expect("a valid scenario")
}

/// The ending of each flow of the scenario.
fn ending_of(flow: &Flow) -> Ending {
    Ending::ALL.into_iter().find(|ending| ending.flow() == flow).expect("a session flow")
}

#[test]
fn each_ending_has_its_flow() {
    let names: Vec<&str> = Ending::ALL.iter().map(|ending| ending.flow().name).collect();
    assert_eq!(names, ["session-bank-down", "session-wrong-password", "session-added"]);
}

#[test]
fn every_institution_gets_its_sessions_by_ending() {
    for (sessions, counts) in [
        // (bank down, wrong passwords, added) of outage, healthy-a, healthy-b, wrong-passwords
        (20, [(16, 0, 4), (1, 2, 17), (1, 1, 18), (0, 14, 6)]),
        (30, [(24, 0, 6), (2, 3, 25), (1, 2, 27), (0, 21, 9)]),
        (101, [(81, 0, 20), (5, 10, 86), (3, 5, 93), (0, 71, 30)]),
    ] {
        let planned = outage(sessions, 5);
        assert_eq!(planned.plan.customers.len() as u64, 4 * sessions);
        for (institution, (bank_down, wrong_passwords, added)) in planned.institutions.iter().zip(counts) {
            assert_eq!(
                (institution.bank_down, institution.wrong_passwords, institution.added),
                (bank_down, wrong_passwords, added),
                "{} of {sessions}",
                institution.profile.role
            );
            // What the customers of the plan do at the institution.
            let mut by_ending: BTreeMap<Ending, u64> = BTreeMap::new();
            for customer in &planned.plan.customers {
                if customer.institution.as_deref() == Some(institution.institution_id.as_str()) {
                    *by_ending.entry(ending_of(customer.flow)).or_default() += 1;
                }
            }
            for ending in Ending::ALL {
                assert_eq!(by_ending.get(&ending).copied().unwrap_or(0), institution.count(ending), "{ending:?}");
            }
        }
    }
}

#[test]
fn every_session_is_a_customer_of_its_own_whose_webhooks_name_its_institution() {
    let planned = outage(20, 9);
    let ids: HashSet<&str> = planned.plan.customers.iter().map(|c| c.customer_id.as_str()).collect();
    assert_eq!(ids.len(), planned.plan.customers.len());
    for customer in &planned.plan.customers {
        let institution = customer.institution.as_deref().expect("an institution of the scenario");
        let bodies = customer.bodies();
        let types: Vec<&str> = bodies.iter().filter_map(|b| b["eventType"].as_str()).collect();
        assert_eq!(types[..2], ["started", "adding"]);
        assert_eq!(types.len(), 3, "started, adding, the ending, and no done");
        for body in &bodies[1..] {
            assert_eq!(body["payload"]["institutionId"], institution, "{body}");
        }
    }
    // Session i of every institution, then session i + 1: interleaved.
    let first: Vec<&str> = planned.plan.customers[..4].iter().filter_map(|c| c.institution.as_deref()).collect();
    let ids: Vec<&str> = planned.institutions.iter().map(|i| i.institution_id.as_str()).collect();
    assert_eq!(first, ids);
}

#[test]
fn the_plan_follows_the_seed_and_institution_ids_differ_between_seeds() {
    let a = outage(30, 1);
    assert_eq!(a, outage(30, 1), "the same seed, the same plan");
    let b = outage(30, 2);
    let ids =
        |plan: &OutagePlan| -> HashSet<String> { plan.institutions.iter().map(|i| i.institution_id.clone()).collect() };
    let (ids_a, ids_b) = (ids(&a), ids(&b));
    assert_eq!(ids_a.len(), 4, "distinct within a run");
    assert!(ids_a.is_disjoint(&ids_b), "distinct between seeds: {ids_a:?} {ids_b:?}");
    for id in ids_a.iter().chain(&ids_b) {
        assert!(id.len() == 11 && id.starts_with("99") && id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    }
    let customers =
        |plan: &OutagePlan| -> HashSet<String> { plan.plan.customers.iter().map(|c| c.customer_id.clone()).collect() };
    assert!(customers(&a).is_disjoint(&customers(&b)));
}

#[test]
fn shuffling_and_duplicates_apply_to_the_sessions() {
    let spec = PlanSpec { shuffle: true, duplicates: 0.5, ..spec(3) };
    let planned = plan(20, &spec).expect("a valid scenario");
    assert_eq!(planned, plan(20, &spec).expect("a valid scenario"));
    assert_eq!(planned.plan.duplicates(), (0.5 * 3.0 * 80.0_f64).round() as u64);
    let reordered = planned
        .plan
        .customers
        .iter()
        .filter(|c| {
            let sent: Vec<String> = c.deliveries().iter().filter_map(|d| d.event_id.clone()).collect();
            let mut straight: Vec<String> = sent.clone();
            straight.sort();
            straight.dedup();
            let firsts: Vec<String> =
                sent.iter().enumerate().filter(|(i, id)| !sent[..*i].contains(id)).map(|(_, id)| id.clone()).collect();
            firsts != straight
        })
        .count();
    assert!(reordered > 20, "{reordered} of 80 sessions sent out of order");
}

#[test]
fn too_few_sessions_are_refused() {
    assert_eq!(plan(MIN_SESSIONS - 1, &spec(1)), Err(PlanError::TooFewSessions(MIN_SESSIONS - 1)));
    assert!(plan(MIN_SESSIONS, &spec(1)).is_ok());
}

/// At every point of a run (each institution's sessions in send order), an
/// evaluation with the default thresholds gives the institution the status
/// it must end in, once it has the fewest sessions for one: an early run of
/// failures never makes a healthy institution degraded.
#[test]
fn the_status_implied_holds_all_along_the_run() {
    let settings = HealthSettings::default();
    assert_eq!(u64::from(settings.min_sessions), MIN_SESSIONS);
    for sessions in [20, 21, 30, 47, 100, 333] {
        for institution in institutions(11, sessions) {
            let mut counts = WindowCounts::default();
            for (i, ending) in institution.endings().into_iter().enumerate() {
                match ending {
                    Ending::Added => counts.successes += 1,
                    Ending::BankDown => counts.institution_failures += 1,
                    Ending::WrongPassword => counts.customer_failures += 1,
                }
                let status = settings.classify(&counts);
                if (i as u64 + 1) < MIN_SESSIONS {
                    assert_eq!(status, InstitutionStatus::Unknown);
                } else {
                    assert_eq!(status, institution.profile.expected, "{} after {}", institution.profile.role, i + 1);
                }
            }
            assert_eq!(counts.sessions(), sessions);
        }
    }
}

/// The events of `flow`'s session for one customer at `institution`.
fn events(flow: &Flow, institution: &str) -> Vec<ConnectEvent> {
    crate::simulate::flows::bodies_at(flow, Some(institution), "1005061234", now(), 7)
        .iter()
        .filter_map(|body| match normalise(&serde_json::to_vec(body).ok()?, now(), &Default::default()).ok()? {
            Webhook::Event(event) => Some(*event),
            Webhook::Ping => None,
        })
        .collect()
}

/// The sessions the consumer records when `arrivals` come one at a time in
/// this order (as `store::apply` does: in order, `advance`; an event that
/// sorts before the last, a recomputation watching the new event), and the
/// lifecycle it ends with.
fn record(arrivals: &[&ConnectEvent]) -> (Vec<Session>, Lifecycle) {
    let mut state = Lifecycle::default();
    let mut recorded = Vec::new();
    for (i, event) in arrivals.iter().enumerate() {
        let mut ended = Vec::new();
        match advance(&mut state, [*event], |event, before, after| ended.extend(session_outcome(before, after, event)))
        {
            Advance::Applied => recorded.extend(ended),
            Advance::Recompute => {
                state = fold_from_watching(
                    &Lifecycle::default(),
                    arrivals[..=i].iter().copied(),
                    |e| e.event_id == event.event_id,
                    |event, before, after| recorded.extend(session_outcome(before, after, event)),
                );
            }
        }
    }
    (recorded, state)
}

/// Why `--shuffle` applies to the scenario: in any order, each session ends
/// exactly once, at its institution, with the outcome its ending means, and
/// the lifecycle ends in its flow's states.
#[test]
fn in_any_order_a_session_ends_once_at_its_institution() {
    for ending in Ending::ALL {
        let flow = ending.flow();
        let events = events(flow, "99123456781");
        assert_eq!(events.len(), 3);
        let outcome = match ending {
            Ending::Added => SessionOutcome::Success,
            Ending::BankDown => SessionOutcome::InstitutionFailure,
            Ending::WrongPassword => SessionOutcome::CustomerFailure,
        };
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let arrivals: Vec<&ConnectEvent> = order.iter().map(|&i| &events[i]).collect();
            let (sessions, state) = record(&arrivals);
            assert_eq!(
                sessions,
                [Session { institution_id: "99123456781".into(), outcome }],
                "{} in order {order:?}",
                flow.name
            );
            assert_eq!(state.authentication.state, flow.expected_authentication, "{} {order:?}", flow.name);
            assert_eq!(state.consent.state, flow.expected_consent, "{} {order:?}", flow.name);
        }
    }
}

#[test]
fn the_summary_names_every_institution_and_its_expected_status() {
    let planned = outage(30, 4);
    let text = ScenarioSummary { institutions: planned.institutions.clone() }.to_string();
    assert!(text.starts_with("scenario institution-outage: 4 institutions, 30 sessions each"), "{text}");
    for institution in &planned.institutions {
        let line = text.lines().find(|l| l.contains(&institution.institution_id)).expect("a line");
        assert!(line.contains(institution.profile.role), "{line}");
        assert!(line.ends_with(&format!("expect {}", institution.profile.expected.as_str())), "{line}");
    }
    assert!(text.contains("24 unableToConnect (code 102), 0 invalidCredentials, 6 added: expect down"), "{text}");
    let table = scenario_table();
    for flow in SESSION_FLOWS {
        assert!(table.contains(flow.name), "{table}");
    }
}
