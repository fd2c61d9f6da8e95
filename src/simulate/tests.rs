use clap::Parser;

use super::*;
use crate::config::{Cli, Command};

fn parse(args: &[&str]) -> Result<SimulateArgs, clap::Error> {
    let cli = Cli::try_parse_from(
        std::iter::once("connectflow").chain(std::iter::once("simulate")).chain(args.iter().copied()),
    )?;
    match cli.command {
        Command::Simulate(args) => Ok(args),
        other => panic!("simulate expected, got {other:?}"),
    }
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
    for flow in FLOWS {
        let line = table.lines().find(|l| l.starts_with(flow.name)).expect("a line per flow");
        assert!(line.contains(flow.expected_consent) && line.contains(flow.expected_authentication), "{line}");
    }
}

#[test]
fn the_outcome_fails_on_anything_not_accepted_or_not_verified() {
    let sent = Summary { planned: 4, sent: 4, accepted: 4, ..Summary::default() };
    let ok = Outcome { summary: sent.clone(), verification: None };
    assert!(ok.check().is_ok());
    let rejected = Outcome { summary: Summary { accepted: 1, not_accepted: 3, ..sent.clone() }, verification: None };
    assert_eq!(rejected.check().expect_err("not accepted").to_string(), "3 of 4 webhooks were not accepted");
    let unverified = Outcome {
        summary: sent,
        verification: Some(Verification { checked: 2, matched: 1, ..Verification::default() }),
    };
    assert!(unverified.check().is_err());
}
