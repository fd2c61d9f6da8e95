use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::simulate::flows::FLOWS;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_795_000_000_000).expect("valid time")
}

fn spec(seed: u64) -> PlanSpec {
    PlanSpec {
        flows: FLOWS.iter().collect(),
        customers_per_flow: 20,
        duplicates: 0.0,
        shuffle: false,
        seed,
        now: now(),
    }
}

fn plan(spec: &PlanSpec) -> Plan {
    Plan::build(spec).expect("a valid spec")
}

/// Every customer's deliveries, keyed by customer id.
fn deliveries(plan: &Plan) -> BTreeMap<String, Vec<Delivery>> {
    plan.customers.iter().map(|c| (c.customer_id.clone(), c.deliveries())).collect()
}

fn event_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().filter_map(|d| d.event_id.clone()).collect()
}

#[test]
fn the_same_seed_gives_the_same_plan_and_bytes() {
    let spec = PlanSpec { duplicates: 0.4, shuffle: true, ..spec(42) };
    let first = plan(&spec);
    assert_eq!(first, plan(&spec));
    assert_eq!(deliveries(&first), deliveries(&plan(&spec)));
}

#[test]
fn customer_ids_are_valid_distinct_and_differ_between_seeds() {
    let a = plan(&spec(1));
    let b = plan(&spec(2));
    let ids_a: HashSet<&str> = a.customers.iter().map(|c| c.customer_id.as_str()).collect();
    let ids_b: HashSet<&str> = b.customers.iter().map(|c| c.customer_id.as_str()).collect();
    assert_eq!(ids_a.len(), FLOWS.len() * 20, "distinct within a run");
    assert!(ids_a.is_disjoint(&ids_b), "distinct between seeds");
    for id in ids_a.iter().chain(&ids_b) {
        assert!((1..=22).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()), "{id}");
        assert!(!id.starts_with('0'), "{id}");
    }
    let prefix = customer_id_prefix(1);
    assert_eq!(prefix.len(), PREFIX_DIGITS);
    assert!(ids_a.iter().all(|id| id.starts_with(&prefix)));
}

#[test]
fn every_selected_flow_gets_its_customers_interleaved() {
    let spec = PlanSpec { flows: vec![&FLOWS[0], &FLOWS[3]], customers_per_flow: 3, ..spec(5) };
    let plan = plan(&spec);
    let names: Vec<&str> = plan.customers.iter().map(|c| c.flow.name).collect();
    assert_eq!(names, [FLOWS[0].name, FLOWS[3].name].repeat(3));
}

#[test]
fn in_order_sends_follow_finicity_after_a_ping() {
    let plan = plan(&spec(3));
    for customer in &plan.customers {
        let sent = customer.deliveries();
        assert_eq!(sent[0].event_type, "ping");
        assert_eq!(sent[0].body.as_ref(), br#"{"eventType":"ping","payload":{}}"#);
        let expected: Vec<String> =
            customer.bodies().iter().filter_map(|b| b["eventId"].as_str().map(str::to_owned)).collect();
        assert_eq!(event_ids(&sent), expected, "{}", customer.flow.name);
        assert_eq!(customer.distinct_events(), expected.len());
        assert_eq!(customer.last_event_id().as_ref(), expected.last());
    }
}

#[test]
fn shuffling_changes_the_order_but_not_what_is_sent() {
    let straight = deliveries(&plan(&PlanSpec { duplicates: 0.3, ..spec(9) }));
    let shuffled = deliveries(&plan(&PlanSpec { duplicates: 0.3, shuffle: true, ..spec(9) }));
    assert_eq!(straight.keys().collect::<Vec<_>>(), shuffled.keys().collect::<Vec<_>>());
    let mut reordered = 0;
    for (customer, straight) in &straight {
        let shuffled = &shuffled[customer];
        assert_eq!(shuffled[0].event_type, "ping", "the ping stays first");
        let (mut a, mut b) = (event_ids(straight), event_ids(shuffled));
        if a != b {
            reordered += 1;
        }
        a.sort();
        b.sort();
        assert_eq!(a, b, "same events, duplicates included, for {customer}");
    }
    assert!(reordered > straight.len() / 2, "only {reordered} of {} customers reordered", straight.len());
}

#[test]
fn the_duplicate_share_is_respected_and_duplicates_are_exact_resends() {
    for share in [0.0, 0.1, 0.5, 1.0] {
        let plan = plan(&PlanSpec { duplicates: share, ..spec(11) });
        let events: u64 = plan.customers.iter().map(|c| c.distinct_events() as u64).sum();
        let wanted = (share * events as f64).round() as u64;
        assert_eq!(plan.duplicates(), wanted, "share {share}");
        assert_eq!(plan.deliveries(), events + wanted + plan.customers.len() as u64, "events, duplicates and pings");
        for customer in &plan.customers {
            let sent = customer.deliveries();
            for (i, duplicate) in sent.iter().enumerate().filter(|(_, d)| d.duplicate) {
                let original = sent[..i].iter().find(|d| !d.duplicate && d.event_id == duplicate.event_id);
                let original = original.expect("a resend follows its original when not shuffled");
                assert_eq!(original.body, duplicate.body, "byte-identical resend");
            }
        }
    }
    let everything = plan(&PlanSpec { duplicates: 1.0, ..spec(11) });
    for customer in &everything.customers {
        assert_eq!(customer.duplicates(), customer.distinct_events(), "every event twice");
    }
}

#[test]
fn events_occur_just_before_now_one_second_apart() {
    let plan = plan(&spec(4));
    // (`reauthorized` puts its first session a year earlier, on purpose.)
    for customer in plan.customers.iter().filter(|c| c.flow.earlier_session_ago.is_none()) {
        let millis: Vec<i64> = event_ids(&customer.deliveries())
            .iter()
            .map(|id| id.split_once('-').and_then(|(ms, _)| ms.parse().ok()).expect("epoch-ms prefix"))
            .collect();
        assert_eq!(millis[0], (now() - LEAD).timestamp_millis());
        assert!(millis.windows(2).all(|w| w[1] - w[0] == 1000));
        assert!(millis.iter().all(|&ms| ms < now().timestamp_millis()));
    }
}

#[test]
fn bad_specs_are_refused() {
    assert_eq!(Plan::build(&PlanSpec { flows: vec![], ..spec(1) }), Err(PlanError::NoFlows));
    assert_eq!(Plan::build(&PlanSpec { customers_per_flow: 0, ..spec(1) }), Err(PlanError::NoCustomers));
    assert!(matches!(
        Plan::build(&PlanSpec { customers_per_flow: MAX_CUSTOMERS, ..spec(1) }),
        Err(PlanError::TooManyCustomers(_))
    ));
    assert!(matches!(Plan::build(&PlanSpec { duplicates: 1.5, ..spec(1) }), Err(PlanError::BadDuplicateShare(_))));
    assert!(matches!(Plan::build(&PlanSpec { duplicates: f64::NAN, ..spec(1) }), Err(PlanError::BadDuplicateShare(_))));
}
