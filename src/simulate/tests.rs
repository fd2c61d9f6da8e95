use clap::Parser;

use super::summary::Mismatch;
use super::*;
use crate::simulate::flows::{API_FLOWS, FLOWS};

/// `connectflow simulate`'s arguments alone, parsed as clap parses them
/// under the subcommand.
#[derive(Debug, Parser)]
struct Simulate {
    #[command(flatten)]
    args: SimulateArgs,
}

fn parse(args: &[&str]) -> Result<SimulateArgs, clap::Error> {
    Simulate::try_parse_from(std::iter::once("simulate").chain(args.iter().copied())).map(|parsed| parsed.args)
}

#[test]
fn defaults_match_the_contract() {
    let args = parse(&[]).expect("parses");
    assert_eq!(args.url, "http://127.0.0.1:8080/webhooks/finicity/connect");
    assert_eq!(args.flow, [ALL_FLOWS]);
    assert_eq!(args.selected_flows().expect("flows").len(), FLOWS.len());
    assert_eq!(args.customers, 1);
    assert_eq!(args.concurrency, 8);
    assert_eq!(args.rate, None);
    assert_eq!(args.duplicates, 0.0);
    assert!(!args.shuffle && !args.verify && !args.list_flows);
    assert_eq!(args.retries, 5);
    assert_eq!(args.api_url, "http://127.0.0.1:8080");
    assert_eq!(args.verify_timeout_s, 60);
    assert_eq!(args.scenario, Scenario::Flows);
    assert!(!args.verify_changes);
    assert_eq!(args.kafka.changes_topic, "finicity.connect.lifecycle.v1");
}

#[test]
fn verifying_the_changes_topic_needs_verify() {
    let alone = parse(&["--verify-changes"]).expect("parses");
    let err = alone.changes_verification().expect_err("--verify-changes alone is refused");
    assert_eq!(err.variable, "CONNECTFLOW_SIMULATE_VERIFY_CHANGES");
    assert!(err.to_string().contains("needs --verify"), "{err}");
    let args =
        parse(&["--verify", "--verify-changes", "--changes-topic", "t", "--kafka-brokers", "k:1"]).expect("parses");
    assert!(args.verify && args.changes_verification().expect("with --verify"));
    assert_eq!((args.kafka.changes_topic.as_str(), args.kafka.brokers.as_str()), ("t", "k:1"));
}

#[test]
fn flows_are_chosen_by_name_each_once() {
    let args = parse(&["--flow", "revoked,abandoned", "--flow", "revoked"]).expect("parses");
    let names: Vec<&str> = args.selected_flows().expect("flows").iter().map(|f| f.name).collect();
    assert_eq!(names, ["revoked", "abandoned"]);
    assert!(parse(&["--flow", "no-such-flow"]).is_err());
}

#[test]
fn out_of_range_options_are_refused() {
    for bad in [
        &["--duplicates", "1.5"][..],
        &["--duplicates", "NaN"],
        &["--rate", "-1"],
        &["--rate", "inf"],
        &["--customers", "0"],
        &["--concurrency", "0"],
        &["--url", "ftp://example.com/x"],
        &["--api-url", "not a url"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} should be refused");
    }
    let args = parse(&["--rate", "0", "--duplicates", "1", "--seed", "7"]).expect("parses");
    assert_eq!((args.rate, args.duplicates, args.seed), (Some(0.0), 1.0, Some(7)));
}

#[test]
fn secrets_come_from_the_flag_or_the_first_of_the_list() {
    let mut args = parse(&["--secret", "one,two", "--api-token", "t1,t2"]).expect("parses");
    assert_eq!(args.signing_secret().expect("a secret").expose(), "one");
    assert_eq!(args.verification_token().expect("a token").expose(), "t1");
    args.secret = None;
    args.api_token = None;
    assert_eq!(args.signing_secret().expect_err("no secret").variable, "FINICITY_PARTNER_SECRETS");
    assert_eq!(args.verification_token().expect_err("no token").variable, "CONNECTFLOW_API_TOKENS");
}

#[test]
fn the_flow_table_names_every_flow_and_its_end_states() {
    let table = flow_table();
    for flow in flows::all_flows() {
        let line = table.lines().find(|l| l.starts_with(flow.name)).expect("a line per flow");
        assert!(
            line.contains(flow.expected_consent.as_str()) && line.contains(flow.expected_authentication.as_str()),
            "{line}"
        );
    }
}

#[test]
fn flows_that_revoke_through_the_api_need_a_token() {
    let without = parse(&["--flow", "all"]).expect("parses");
    assert!(without.selected_flows().expect("flows").iter().all(|f| !f.revokes_through_api));
    let with = parse(&["--flow", "all", "--api-token", "t"]).expect("parses");
    assert_eq!(with.selected_flows().expect("flows").len(), FLOWS.len() + API_FLOWS.len());
    let named = parse(&["--flow", "revoked-by-customer"]).expect("parses");
    assert!(named.selected_flows().is_err(), "named without a token");
    let named = parse(&["--flow", "revoked-by-customer", "--api-token", "t"]).expect("parses");
    assert_eq!(named.selected_flows().expect("flows")[0].name, "revoked-by-customer");
}

#[test]
fn the_outcome_fails_on_anything_not_accepted_or_not_verified() {
    let sent = Summary { planned: 4, sent: 4, accepted: 4, ..Summary::default() };
    let ok = Outcome {
        summary: sent.clone(),
        verification: None,
        changes: None,
        funnel: None,
        scenario: None,
        institutions: None,
    };
    assert!(ok.check().is_ok());
    let revocation_refused = Outcome {
        summary: Summary { revocations_failed: 1, ..sent.clone() },
        verification: None,
        changes: None,
        funnel: None,
        scenario: None,
        institutions: None,
    };
    assert!(revocation_refused.check().is_err());
    let rejected = Outcome {
        summary: Summary { accepted: 1, not_accepted: 3, ..sent.clone() },
        verification: None,
        changes: None,
        funnel: None,
        scenario: None,
        institutions: None,
    };
    assert_eq!(rejected.check().expect_err("not accepted").to_string(), "3 of 4 webhooks were not accepted");
    let unverified = Outcome {
        summary: sent.clone(),
        verification: Some(Verification { checked: 2, matched: 1, ..Verification::default() }),
        changes: None,
        funnel: None,
        scenario: None,
        institutions: None,
    };
    assert!(unverified.check().is_err());
    let verified = Some(Verification { checked: 2, matched: 2, ..Verification::default() });
    let changes = ChangesVerification { topic: "t".into(), checked: 2, matched: 2, ..ChangesVerification::default() };
    let published = Outcome {
        summary: sent.clone(),
        verification: verified.clone(),
        changes: Some(changes.clone()),
        funnel: None,
        scenario: None,
        institutions: None,
    };
    assert!(published.check().is_ok());
    let gap = Mismatch { customer_id: "1".into(), flow: "revoked", problem: "versions 2 of 1..=3 missing".into() };
    let gapped = Outcome {
        summary: sent,
        verification: verified,
        changes: Some(ChangesVerification { matched: 1, mismatches: vec![gap], ..changes }),
        funnel: None,
        scenario: None,
        institutions: None,
    };
    let err = gapped.check().expect_err("a gap fails the run");
    assert_eq!(err.to_string(), "1 of 2 customers' changes on t are not their lifecycle's versions in order");
    assert!(gapped.to_string().contains("MISMATCH customer 1 (revoked): versions 2 of 1..=3 missing"), "{gapped}");
}

#[test]
fn the_outage_scenario_sends_more_sessions_and_waits_longer_by_default() {
    let args = parse(&["--scenario", "institution-outage"]).expect("parses");
    assert_eq!(args.scenario, Scenario::InstitutionOutage);
    assert_eq!((args.customers, args.verify_timeout_s), (30, 180));
    assert!(args.selected_flows().expect("no flows to choose").is_empty());
    let chosen =
        parse(&["--scenario", "institution-outage", "--customers", "25", "--verify-timeout-s", "90"]).expect("parses");
    assert_eq!((chosen.customers, chosen.verify_timeout_s), (25, 90));
    let with_flow = parse(&["--scenario", "institution-outage", "--flow", "revoked"]).expect("parses");
    let err = with_flow.selected_flows().expect_err("--flow is the flows scenario's");
    assert!(err.to_string().contains("--scenario institution-outage sends its own sessions"), "{err}");
    let flows = parse(&["--scenario", "flows", "--customers", "2"]).expect("parses");
    assert_eq!((flows.customers, flows.verify_timeout_s), (2, 60));
    assert!(parse(&["--scenario", "no-such-scenario"]).is_err());
}

#[test]
fn the_outcome_fails_on_an_institution_not_in_its_expected_status() {
    use crate::institution::InstitutionStatus;
    use summary::InstitutionCheck;

    let sent = Summary { planned: 4, sent: 4, accepted: 4, ..Summary::default() };
    let check = |problem: Option<&str>| InstitutionCheck {
        institution_id: "99123456781".into(),
        role: "outage",
        expected: InstitutionStatus::Down,
        sessions: 20..=20,
        institution_failure_rate: 0.8,
        customer_failure_rate: 0.0,
        seen: None,
        problem: problem.map(str::to_owned),
    };
    let outcome = |checks: Vec<InstitutionCheck>| Outcome {
        summary: sent.clone(),
        verification: Some(Verification { checked: 4, matched: 4, ..Verification::default() }),
        changes: None,
        funnel: None,
        scenario: None,
        institutions: Some(InstitutionVerification { institutions: checks, ..InstitutionVerification::default() }),
    };
    assert!(outcome(vec![check(None)]).check().is_ok());
    let failed = outcome(vec![check(None), check(Some("status unknown (expected down)"))]);
    let err = failed.check().expect_err("a mismatch fails the run");
    assert_eq!(err.to_string(), "1 of 2 institutions are not in their expected statuses");
    let text = failed.to_string();
    assert!(text.contains("verify-institutions: 1 of 2 institutions in their expected statuses"), "{text}");
    assert!(text.contains("MISMATCH institution 99123456781 (outage): status unknown (expected down)"), "{text}");
    assert!(text.contains("CONNECTFLOW_HEALTH_INTERVAL_SECONDS"), "{text}");
    let mut refused = outcome(vec![check(Some("query API answered 403 Forbidden"))]);
    if let Some(institutions) = refused.institutions.as_mut() {
        institutions.refused = Some("the query API refused the token: scope stats".into());
    }
    assert_eq!(refused.check().expect_err("refused").to_string(), "the query API refused the token: scope stats");
}
