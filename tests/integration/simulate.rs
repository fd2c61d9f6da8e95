//! `connectflow simulate` against the in-process pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use connectflow::config::HealthArgs;
use connectflow::config::SecretList;
use connectflow::institution::InstitutionStatus;
use connectflow::institution_health::InstitutionHealthJob;
use connectflow::metrics::Metrics;
use connectflow::receive::signature::sign;
use connectflow::simulate::flows::{FLOWS, bodies, flow};
use connectflow::simulate::scenario::{Scenario, institutions};
use connectflow::simulate::summary::Verification;
use connectflow::simulate::{Outcome, SimulateArgs, simulate};
use tokio_util::sync::CancellationToken;

use crate::helpers::{API_TOKEN, PARTNER_SECRET, TestApp, spawn_app, spawn_pipeline, unique_kafka_args};

/// `simulate --flow all --customers 2 --verify --verify-changes` aimed at `app`.
pub(crate) fn args_for(app: &TestApp) -> SimulateArgs {
    SimulateArgs {
        api_url: app.base_url.clone(),
        verify_changes: true,
        kafka: app.kafka.clone(),
        ..args_for_url(&format!("{}/webhooks/finicity/connect", app.base_url))
    }
}

/// `simulate --customers 2 --verify` of every webhook flow (`FLOWS`: `all`
/// with an API token adds the flows that revoke through the API, tested on
/// their own below) sending to `url`.
fn args_for_url(url: &str) -> SimulateArgs {
    SimulateArgs {
        url: url.to_owned(),
        program: None,
        secret: SecretList::new([PARTNER_SECRET]),
        scenario: Scenario::Flows,
        flow: FLOWS.iter().map(|flow| flow.name.to_owned()).collect(),
        list_flows: false,
        customers: 2,
        rate: None,
        concurrency: 8,
        duplicates: 0.0,
        shuffle: false,
        seed: None,
        retries: 5,
        verify: true,
        api_url: "http://127.0.0.1:8080".to_owned(),
        api_token: SecretList::new([API_TOKEN]),
        verify_timeout_s: 60,
        verify_changes: false,
        kafka: unique_kafka_args("127.0.0.1:9"),
    }
}

async fn run(args: &SimulateArgs) -> Outcome {
    simulate(args, &CancellationToken::new()).await.expect("the simulation runs")
}

async fn recorded_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&app.pool).await.expect("count")
}

/// Events in one run of every flow, and the webhooks that carry them (one
/// ping per customer besides).
fn events_of_every_flow() -> u64 {
    FLOWS.iter().map(|flow| bodies(flow, "1", Utc::now(), 1).len() as u64).sum()
}

#[tokio::test]
async fn every_flow_verifies_against_the_pipeline() {
    let app = spawn_pipeline().await;
    let args = args_for(&app);

    let outcome = run(&args).await;

    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    let customers = 2 * FLOWS.len() as u64;
    let summary = &outcome.summary;
    assert_eq!(summary.customers, customers);
    assert_eq!(summary.planned, 2 * events_of_every_flow() + customers, "events plus a ping per customer");
    assert_eq!((summary.sent, summary.accepted, summary.not_accepted), (summary.planned, summary.planned, 0));
    assert_eq!(summary.answers.get(&200), Some(&summary.planned));
    assert_eq!(summary.duplicates, 0);
    let verification = outcome.verification.as_ref().expect("verified");
    assert_eq!((verification.checked, verification.matched), (customers, customers), "{outcome}");
    let changes = outcome.changes.as_ref().expect("the changes topic verified");
    assert_eq!((changes.checked, changes.matched), (customers, customers), "{outcome}");
    assert!(changes.records >= customers, "every flow changes its customers' lifecycle: {outcome}");
    assert!(
        outcome.to_string().contains(&format!("verify-changes: {customers} of {customers} customers")),
        "{outcome}"
    );
    assert_eq!(recorded_events(&app).await, 2 * events_of_every_flow() as i64);
    app.stop().await;
}

#[tokio::test]
async fn shuffled_and_duplicated_flows_verify_and_are_recorded_once() {
    let app = spawn_pipeline().await;
    let args = SimulateArgs { shuffle: true, duplicates: 0.5, customers: 3, seed: Some(20_261_124), ..args_for(&app) };

    let outcome = run(&args).await;

    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    let events = 3 * events_of_every_flow();
    let summary = &outcome.summary;
    assert_eq!(summary.duplicates, (events as f64 * 0.5).round() as u64);
    assert_eq!(summary.accepted, events + summary.duplicates + 3 * FLOWS.len() as u64);
    let verification = outcome.verification.as_ref().expect("verified");
    assert_eq!(verification.matched, 3 * FLOWS.len() as u64, "{outcome}");
    let changes = outcome.changes.as_ref().expect("the changes topic verified");
    assert_eq!(changes.matched, 3 * FLOWS.len() as u64, "late events recompute, never skip a version: {outcome}");
    assert_eq!(recorded_events(&app).await, events as i64, "each event recorded once");
    app.stop().await;
}

#[tokio::test]
async fn changes_missing_from_the_topic_fail_the_run() {
    // The pipeline publishes its changes, but simulate reads another topic
    // (the empty dead-letter topic): every version is missing there.
    let app = spawn_pipeline().await;
    let mut args =
        SimulateArgs { flow: vec!["revoked".to_owned()], customers: 1, verify_timeout_s: 15, ..args_for(&app) };
    args.kafka.changes_topic = app.kafka.dlq_topic.clone();

    let outcome = run(&args).await;

    assert!(outcome.verification.as_ref().is_some_and(Verification::passed), "{outcome}");
    let changes = outcome.changes.as_ref().expect("the changes topic verified");
    assert_eq!((changes.checked, changes.matched, changes.records), (1, 0, 0), "{outcome}");
    assert!(changes.mismatches[0].problem.contains("missing"), "{outcome}");
    let err = outcome.check().expect_err("missing changes fail the run");
    assert!(err.to_string().starts_with("1 of 1 customers' changes on"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn verification_fails_when_nothing_applies_the_events() {
    // The receiver accepts, but no consumer maintains the lifecycle.
    let app = spawn_app().await;
    let args = SimulateArgs {
        flow: vec!["legacy-success".to_owned(), "abandoned".to_owned()],
        customers: 1,
        verify_timeout_s: 1,
        ..args_for(&app)
    };

    let outcome = run(&args).await;

    assert!(outcome.summary.all_accepted(), "{outcome}");
    let verification = outcome.verification.as_ref().expect("verified");
    assert_eq!((verification.checked, verification.matched), (2, 0));
    assert!(outcome.changes.is_none(), "the changes topic is read only after the lifecycles verified");
    assert_eq!(verification.mismatches.len(), 2);
    assert!(verification.mismatches.iter().all(|m| m.problem.contains("unknown to the query API")), "{outcome}");
    let err = outcome.check().expect_err("a failed verification fails the run");
    assert_eq!(err.to_string(), "2 of 2 customers are not in their expected states");
    assert!(outcome.to_string().contains("MISMATCH customer"), "{outcome}");
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_gets_401_for_every_webhook_and_a_failed_exit() {
    let app = spawn_app().await;
    let planned = events_of_every_flow() + FLOWS.len() as u64;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .args(["simulate", "--url", &format!("{}/webhooks/finicity/connect", app.base_url), "--secret", "wrong"])
        .env_remove("FINICITY_PARTNER_SECRETS")
        .output()
        .await
        .expect("the binary runs");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(&format!("answers    HTTP 401: {planned}\n")), "{stdout}");
    assert!(stdout.contains(&format!("{planned} sent of {planned} planned, 0 accepted")), "{stdout}");
    assert!(stderr.contains(&format!("{planned} of {planned} webhooks were not accepted")), "{stderr}");
    assert_eq!(recorded_events(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn listing_flows_sends_nothing_and_needs_no_secret() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .args(["simulate", "--list-flows", "--url", "http://127.0.0.1:9/unreachable"])
        .env_remove("FINICITY_PARTNER_SECRETS")
        .output()
        .await
        .expect("the binary runs");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for flow in FLOWS {
        assert!(stdout.contains(flow.name) && stdout.contains(flow.expected_authentication.as_str()), "{stdout}");
    }
}

#[tokio::test]
async fn no_secret_is_a_configuration_error() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .args(["simulate", "--url", "http://127.0.0.1:9/unreachable"])
        .env_remove("FINICITY_PARTNER_SECRETS")
        .output()
        .await
        .expect("the binary runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("FINICITY_PARTNER_SECRETS"), "{stderr}");
}

/// A stand-in receiver that answers the first `failures` requests 503 and
/// records every request it gets.
#[derive(Default)]
struct FlakyReceiver {
    failures: Mutex<u32>,
    received: Mutex<Vec<(HeaderMap, Bytes)>>,
}

async fn flaky(State(stub): State<Arc<FlakyReceiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    stub.received.lock().expect("lock").push((headers, body));
    let mut failures = stub.failures.lock().expect("lock");
    if *failures > 0 {
        *failures -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

#[tokio::test]
async fn an_outage_is_retried_and_every_webhook_is_the_exact_signed_bytes() {
    let stub = Arc::new(FlakyReceiver { failures: Mutex::new(3), ..FlakyReceiver::default() });
    let router = axum::Router::new().route("/hook", axum::routing::post(flaky)).with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let args = SimulateArgs {
        url,
        flow: vec!["legacy-success".to_owned()],
        customers: 1,
        duplicates: 1.0,
        verify: false,
        seed: Some(3),
        ..args_for_url("http://unused")
    };

    let outcome = run(&args).await;

    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    let events = bodies(flow("legacy-success").expect("flow"), "1", Utc::now(), 1).len() as u64;
    let summary = &outcome.summary;
    assert_eq!(summary.planned, 1 + 2 * events, "a ping and every event twice");
    assert_eq!(summary.retries, 3, "the three 503s were retried");
    assert_eq!(summary.requests, summary.planned + 3);
    assert_eq!(summary.answers, BTreeMap::from([(200, summary.planned), (503, 3)]));
    let received = stub.received.lock().expect("lock").clone();
    assert_eq!(received.len() as u64, summary.requests);
    let mut per_body: BTreeMap<Bytes, u64> = BTreeMap::new();
    for (headers, body) in &received {
        assert_eq!(headers["content-type"], "application/json");
        let signature = headers["x-finicity-signature"].to_str().expect("ASCII");
        assert_eq!(signature, sign(PARTNER_SECRET, body), "HMAC of the exact bytes, lower-case hex");
        *per_body.entry(body.clone()).or_default() += 1;
    }
    assert_eq!(per_body.len() as u64, 1 + events, "resends and retries repeat the same bytes");
    let event_ids: BTreeSet<String> = per_body
        .keys()
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter_map(|b| b["eventId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(event_ids.len() as u64, events);
    server.abort();
}

#[tokio::test]
async fn a_customer_revokes_through_the_issuer_and_it_verifies_on_the_api_and_the_topic() {
    let app = spawn_pipeline().await;
    let args =
        SimulateArgs { flow: vec!["revoked-by-customer".to_owned(), "oauth-success".to_owned()], ..args_for(&app) };

    let outcome = run(&args).await;

    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    assert_eq!((outcome.summary.revocations, outcome.summary.revocations_failed), (2, 0), "{outcome}");
    let verification = outcome.verification.as_ref().expect("verified");
    assert_eq!(verification.matched, 4, "{outcome}");
    assert_eq!(outcome.changes.as_ref().map(|c| c.matched), Some(4), "{outcome}");
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customers WHERE consent_state = 'revoked' AND lifecycle->'consent'->'revocation' IS NOT NULL \
         AND lifecycle->'consent'->'revocation' <> 'null'::jsonb",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(revoked, 2, "the two revoking customers, revoked through the API");

    let revocations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connect_events WHERE event_type = 'connectflow.consent.revoked'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(revocations, 2, "one revocation event per revoking customer");
}

/// The institution health job beating every second on `app`'s database
/// (the pipeline's own beats every 60 s), until the token is cancelled.
fn beat_every_second(app: &TestApp) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let health = HealthArgs { interval_seconds: 1, ..HealthArgs::default() };
    let job = InstitutionHealthJob::new(&app.kafka, app.pool.clone(), &health, Metrics::new()).expect("job");
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        while !token.is_cancelled() {
            job.beat_logged(chrono::Utc::now()).await;
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(job.interval()) => {}
            }
        }
    });
    (stop, task)
}

#[tokio::test]
async fn the_institution_outage_verifies_the_statuses_it_implies() {
    let app = spawn_pipeline().await;
    let (stop, beats) = beat_every_second(&app);
    let seed = 20_260_026;
    // 20 sessions at each of the four institutions, shuffled, a third of
    // the events sent twice; the lifecycles, the changes topic and the
    // statuses verified.
    let args = SimulateArgs {
        scenario: Scenario::InstitutionOutage,
        flow: vec!["all".to_owned()],
        customers: 20,
        shuffle: true,
        duplicates: 0.3,
        seed: Some(seed),
        ..args_for(&app)
    };

    let outcome = run(&args).await;

    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    assert_eq!(outcome.summary.customers, 80, "one customer per session");
    assert_eq!(outcome.verification.as_ref().map(|v| v.matched), Some(80), "{outcome}");
    assert_eq!(outcome.changes.as_ref().map(|c| c.matched), Some(80), "{outcome}");
    let verified = outcome.institutions.as_ref().expect("the institutions verified");
    assert!(verified.passed(), "{outcome}");
    let planned = institutions(seed, 20);
    let text = outcome.to_string();
    assert!(text.contains("verify-institutions: 4 of 4 institutions in their expected statuses"), "{text}");
    let expected = [
        ("outage", InstitutionStatus::Down, 16, 0),
        ("healthy-a", InstitutionStatus::Healthy, 1, 2),
        ("healthy-b", InstitutionStatus::Healthy, 1, 1),
        ("wrong-passwords", InstitutionStatus::Healthy, 0, 14),
    ];
    for ((institution, check), (role, status, bank_down, wrong_passwords)) in
        planned.iter().zip(&verified.institutions).zip(expected)
    {
        assert_eq!((check.institution_id.as_str(), check.role), (institution.institution_id.as_str(), role));
        assert!(text.contains(&format!("institution {} {role}", institution.institution_id)), "{text}");
        let seen = check.seen.as_ref().expect("seen");
        assert_eq!(
            (seen.status, seen.sessions, seen.institution_failures, seen.customer_failures),
            (status, 20, bank_down, wrong_passwords),
            "{role}: each session counted once, whatever the order and the resends"
        );
        // The API answers the same.
        let answer: serde_json::Value =
            app.api_get(&format!("/v1/institutions/{}", institution.institution_id)).await.json().await.expect("JSON");
        assert_eq!(answer["status"], status.as_str(), "{answer}");
        assert_eq!(answer["sessions"], 20, "{answer}");
    }
    stop.cancel();
    beats.await.expect("the job stops");
    app.stop().await;
}

#[tokio::test]
async fn institutions_never_evaluated_fail_the_outage_scenario() {
    // The receiver accepts, but no consumer records the sessions and no job
    // evaluates them: every institution stays unknown to the API (404).
    let app = spawn_app().await;
    let args = SimulateArgs {
        scenario: Scenario::InstitutionOutage,
        flow: vec!["all".to_owned()],
        customers: 20,
        verify_timeout_s: 2,
        verify_changes: false,
        ..args_for(&app)
    };

    let outcome = run(&args).await;

    assert!(outcome.summary.all_accepted(), "{outcome}");
    let verified = outcome.institutions.as_ref().expect("the institutions verified");
    assert_eq!((verified.institutions.len(), verified.matched()), (4, 0), "{outcome}");
    assert!(
        verified
            .institutions
            .iter()
            .all(|i| i.seen.is_none() && i.problem.as_deref().is_some_and(|p| p.contains("not evaluated yet"))),
        "{outcome}"
    );
    assert!(outcome.check().is_err());
    let text = outcome.to_string();
    assert!(text.contains("verify-institutions: 0 of 4 institutions"), "{text}");
    assert!(text.contains("CONNECTFLOW_HEALTH_INTERVAL_SECONDS"), "{text}");
    app.stop().await;
}
