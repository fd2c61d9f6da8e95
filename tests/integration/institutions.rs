//! Institution health on the real services: sessions recorded by the
//! consumer, evaluated by the health job (time injected where the window
//! needs it), statuses on `/v1/institutions` and exactly one record per
//! status change on the institutions topic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use connectflow::config::{HealthArgs, KafkaArgs};
use connectflow::institution::InstitutionStatus;
use connectflow::institution_health::InstitutionHealthJob;
use connectflow::metrics::Metrics;
use connectflow::store::apply::apply_batch;
use sqlx::PgPool;

use crate::helpers::{
    consumer_args, database_args, default_programs, eventually, fresh_database, migration_args, normalised,
    run_consumer, services, spawn_pipeline, unique_kafka_args,
};
use crate::kafka_util::read_all;

/// How a simulated session ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending {
    /// `added`.
    Success,
    /// `unableToConnect` with code 102 (the site is down).
    BankDown,
    /// `invalidCredentials`.
    WrongPassword,
}

/// The webhooks of one session of `customer` at `institution`, starting at
/// `at`: `adding`, then its ending a second later.
fn session(customer: u64, institution: &str, at: DateTime<Utc>, ending: Ending) -> Vec<Value> {
    let id = |at: DateTime<Utc>, n: u64| format!("{}-{:024x}", at.timestamp_millis(), customer * 10 + n);
    let later = at + chrono::Duration::seconds(1);
    let ending = match ending {
        Ending::Success => json!({
            "customerId": customer.to_string(), "eventType": "added", "eventId": id(later, 2),
            "payload": {"institutionId": institution, "oauth": false,
                        "accounts": [{"id": format!("{customer}01"), "institutionLoginId": customer, "type": "checking"}]}
        }),
        Ending::BankDown => json!({
            "customerId": customer.to_string(), "eventType": "unableToConnect", "eventId": id(later, 2),
            "payload": {"institutionId": institution, "code": 102}
        }),
        Ending::WrongPassword => json!({
            "customerId": customer.to_string(), "eventType": "invalidCredentials", "eventId": id(later, 2),
            "payload": {"institutionId": institution}
        }),
    };
    vec![
        json!({
            "customerId": customer.to_string(), "eventType": "adding", "eventId": id(at, 1),
            "payload": {"institutionId": institution, "oauth": false}
        }),
        ending,
    ]
}

/// `count` sessions at `institution` from customer `first` on, spread over
/// the minute before `end`, `failing` of them (every n-th) ending as
/// `failure`, the others successes.
pub(crate) fn sessions(
    first: u64,
    count: u64,
    failing: u64,
    failure: Ending,
    institution: &str,
    end: DateTime<Utc>,
) -> Vec<Value> {
    (0..count)
        .flat_map(|i| {
            let ending = if i * failing / count != (i + 1) * failing / count { failure } else { Ending::Success };
            let at = end - chrono::Duration::seconds(60) + chrono::Duration::milliseconds((i * 50) as i64);
            session(first + i, institution, at, ending)
        })
        .collect()
}

/// A migrated database with the topics of `kafka`, and its URL.
async fn database(kafka: &KafkaArgs) -> (PgPool, String) {
    let url = fresh_database().await;
    let pool = connectflow::store::pool(&database_args(&url)).expect("pool");
    connectflow::cli::migrate(&pool, kafka, &migration_args(), &default_programs()).await.expect("migrating");
    (pool, url)
}

/// Records the webhooks' events as the consumer would.
pub(crate) async fn record(pool: &PgPool, bodies: &[Value]) {
    let events = normalised(bodies, Utc::now());
    assert_eq!(events.len(), bodies.len());
    apply_batch(pool, &events).await.expect("applied");
}

fn job(kafka: &KafkaArgs, pool: &PgPool, interval_seconds: u64) -> InstitutionHealthJob {
    let health = HealthArgs { interval_seconds, ..HealthArgs::default() };
    InstitutionHealthJob::new(kafka, pool.clone(), &health, Metrics::new()).expect("job")
}

async fn status(pool: &PgPool, institution: &str) -> Option<(InstitutionStatus, i64, i64, i64)> {
    let row: Option<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT status, successes, institution_failures, customer_failures FROM institution_health WHERE institution_id = $1",
    )
    .bind(institution)
    .fetch_optional(pool)
    .await
    .expect("status");
    row.map(|(status, s, i, c)| (InstitutionStatus::from_name(&status).expect("a status"), s, i, c))
}

/// The institutions topic's records, as JSON.
fn records(kafka: &KafkaArgs) -> Vec<Value> {
    read_all(&kafka.brokers, &kafka.institutions_topic)
        .into_iter()
        .map(|record| {
            assert_eq!(record.header("schema"), Some("connectflow.institution_status.v1"));
            let value: Value = serde_json::from_slice(&record.value).expect("JSON");
            assert_eq!(record.key.as_deref(), value["institution_id"].as_str().map(str::as_bytes));
            value
        })
        .collect()
}

#[tokio::test]
async fn an_institution_failing_most_sessions_at_the_bank_turns_down_with_exactly_one_record() {
    let app = spawn_pipeline().await;
    let now = Utc::now();
    // 200 sessions through the receiver and the consumer: 180 fail at the bank.
    for body in sessions(7_100_000, 200, 180, Ending::BankDown, "101732", now) {
        let response = app.post_webhook(&serde_json::to_vec(&body).expect("body")).await;
        assert_eq!(response.status(), 200);
    }
    let recorded = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM institution_sessions WHERE institution_id = '101732'")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (n == 200).then_some(n)
    })
    .await;
    assert_eq!(recorded, Some(200), "the consumer recorded one session per ending");

    let job = job(&app.kafka, &app.pool, 1);
    job.beat(Utc::now()).await.expect("beat");
    assert_eq!(status(&app.pool, "101732").await, Some((InstitutionStatus::Down, 20, 180, 0)));
    let answer: Value = app.api_get("/v1/institutions/101732").await.json().await.expect("JSON");
    assert_eq!(answer["status"], "down");
    assert_eq!(answer["sessions"], 200);
    assert_eq!(answer["institution_failures"], 180);
    assert_eq!(answer["window_minutes"], 60);
    let listed: Value = app.api_get("/v1/institutions?status=down").await.json().await.expect("JSON");
    assert_eq!(listed["institutions"].as_array().map(Vec::len), Some(1));

    // Another beat changes nothing and publishes nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = job.beat(Utc::now()).await.expect("beat");
    assert_eq!((again.evaluated, again.changes), (true, 0));
    let published = records(&app.kafka);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0]["status"], "down");
    assert_eq!(published[0]["previous_status"], "unknown");
    assert_eq!(published[0]["change_id"], "101732:1");
    // Whichever evaluation saw the bank fail first (the pipeline's own job
    // may have, part-way through the sessions) had enough of them.
    assert!(published[0]["sessions"].as_u64().is_some_and(|n| (20..=200).contains(&n)), "{published:?}");
    assert!(published[0]["institution_failure_rate"].as_f64().is_some_and(|r| r >= 0.6), "{published:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_spike_of_wrong_passwords_leaves_the_institution_healthy_and_five_sessions_leave_one_unknown() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    let (pool, _) = database(&kafka).await;
    let now = Utc::now();
    // 60 sessions, 45 with a wrong password and 2 failing at the bank.
    let mut bodies = sessions(7_200_000, 58, 45, Ending::WrongPassword, "202020", now);
    bodies.extend(sessions(7_300_000, 2, 2, Ending::BankDown, "202020", now));
    bodies.extend(sessions(7_400_000, 5, 5, Ending::BankDown, "303030", now));
    record(&pool, &bodies).await;

    let beat = job(&kafka, &pool, 60).beat(now + chrono::Duration::seconds(1)).await.expect("beat");
    assert!(beat.evaluated);
    assert_eq!(status(&pool, "202020").await, Some((InstitutionStatus::Healthy, 13, 2, 45)));
    // Five sessions, all failing at the bank: too few to say.
    assert_eq!(status(&pool, "303030").await, Some((InstitutionStatus::Unknown, 0, 5, 0)));
    let published = records(&kafka);
    assert_eq!(published.len(), 1, "only 202020's first status: {published:?}");
    assert_eq!(
        (published[0]["institution_id"].as_str(), published[0]["status"].as_str()),
        (Some("202020"), Some("healthy"))
    );
}

#[tokio::test]
async fn recovery_waits_for_two_evaluations_below_the_threshold_minus_the_hysteresis_and_is_one_record() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    let (pool, _) = database(&kafka).await;
    let job = job(&kafka, &pool, 60);
    let t0 = Utc::now() - chrono::Duration::hours(3);
    let minutes = |m: i64| t0 + chrono::Duration::minutes(m);

    record(&pool, &sessions(7_500_000, 100, 90, Ending::BankDown, "404040", t0)).await;
    job.beat(t0).await.expect("beat");
    assert_eq!(status(&pool, "404040").await.map(|s| s.0), Some(InstitutionStatus::Down));

    // An hour later the old sessions left the window; the new ones fail 2 %.
    record(&pool, &sessions(7_600_000, 100, 2, Ending::BankDown, "404040", minutes(61))).await;
    let first = job.beat(minutes(61)).await.expect("beat");
    assert_eq!((first.evaluated, first.changes), (true, 0));
    assert_eq!(
        status(&pool, "404040").await,
        Some((InstitutionStatus::Down, 98, 2, 0)),
        "one evaluation is not enough"
    );
    // A beat that comes too soon after (another process's) is skipped.
    let early = job.beat(minutes(61) + chrono::Duration::seconds(10)).await.expect("beat");
    assert!(!early.evaluated);
    let second = job.beat(minutes(62)).await.expect("beat");
    assert_eq!(second.changes, 1);
    assert_eq!(status(&pool, "404040").await.map(|s| s.0), Some(InstitutionStatus::Healthy));

    let published = records(&kafka);
    let statuses: Vec<(&str, &str, &str)> = published
        .iter()
        .map(|r| {
            (
                r["change_id"].as_str().unwrap_or_default(),
                r["previous_status"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(statuses, [("404040:1", "unknown", "down"), ("404040:2", "down", "healthy")]);
    assert_eq!(published[1]["since"], published[1]["evaluated_at"]);

    // Sessions older than the window (and its margin) are pruned.
    job.beat(minutes(62 + 121)).await.expect("beat");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM institution_sessions").fetch_one(&pool).await.expect("n");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn two_consume_processes_write_one_record_per_status_change() {
    let services = services().await;
    let kafka = unique_kafka_args(&services.kafka_brokers);
    let (pool, url) = database(&kafka).await;

    // Two health jobs racing on the same beat: one evaluates.
    record(&pool, &sessions(7_700_000, 40, 30, Ending::BankDown, "505050", Utc::now())).await;
    let (a, b) = (job(&kafka, &pool, 60), job(&kafka, &pool, 60));
    let now = Utc::now();
    let (ra, rb) = tokio::join!(a.beat(now), b.beat(now));
    let (ra, rb) = (ra.expect("beat"), rb.expect("beat"));
    assert_eq!(u8::from(ra.evaluated) + u8::from(rb.evaluated), 1, "{ra:?} {rb:?}");
    assert_eq!(ra.changes + rb.changes, 1);

    // Two whole consume processes (their own pools, a beat a second) while
    // another institution's sessions arrive and turn it down.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut processes = Vec::new();
    for _ in 0..2 {
        let mut args = consumer_args();
        args.health.interval_seconds = 1;
        let own_pool = connectflow::store::pool(&database_args(&url)).expect("pool");
        processes.push(run_consumer(args, kafka.clone(), own_pool, Metrics::new(), shutdown.clone()));
    }
    for round in 0..4 {
        record(&pool, &sessions(7_800_000 + round * 1000, 10, 9, Ending::BankDown, "606060", Utc::now())).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let down = eventually(Duration::from_secs(30), || async {
        let published = records(&kafka);
        published.iter().any(|r| r["institution_id"] == "606060").then_some(())
    })
    .await;
    assert_eq!(down, Some(()), "the down status was published");
    // Several beats more of both processes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    for process in processes {
        process.await.expect("consumer task").expect("consumer stopped cleanly");
    }
    let published = records(&kafka);
    let mut ids: Vec<&str> = published.iter().filter_map(|r| r["change_id"].as_str()).collect();
    // Keyed by institution: no order between two institutions' records.
    ids.sort_unstable();
    assert_eq!(ids, ["505050:1", "606060:1"], "{published:?}");
    let outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM institution_status_outbox").fetch_one(&pool).await.expect("n");
    assert_eq!(outbox, 0);
}

#[tokio::test]
async fn the_institutions_routes_need_the_stats_scope_and_refuse_bad_parameters() {
    let app = crate::helpers::spawn_app().await;
    for path in ["/v1/institutions", "/v1/institutions/101732"] {
        assert_eq!(app.get(path).await.status(), 401, "{path}");
    }
    // Before any evaluation: an empty list, and no institution.
    let empty: Value = app.api_get("/v1/institutions").await.json().await.expect("JSON");
    assert_eq!(empty, json!({"institutions": [], "next_cursor": null}));
    for path in ["/v1/institutions/101732", "/v1/institutions/%7F", &format!("/v1/institutions/{}", "1".repeat(65))] {
        let response = app.api_get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    for (path, why) in [
        ("/v1/institutions?status=sideways", "status is not a known state"),
        ("/v1/institutions?limit=0", "limit must be"),
        ("/v1/institutions?cursor=zz", "cursor is malformed"),
    ] {
        let response = app.api_get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(why)), "{path}: {body}");
    }

    // Pages by id, and a status filter.
    let now = Utc::now();
    let mut bodies = sessions(7_900_000, 20, 0, Ending::Success, "111", now);
    bodies.extend(sessions(7_910_000, 20, 20, Ending::BankDown, "222", now));
    bodies.extend(sessions(7_920_000, 3, 0, Ending::Success, "333", now));
    record(&app.pool, &bodies).await;
    let metrics = Metrics::new();
    let health = HealthArgs { interval_seconds: 1, ..HealthArgs::default() };
    let job = InstitutionHealthJob::new(&app.kafka, app.pool.clone(), &health, metrics.clone()).expect("job");
    job.beat(now + chrono::Duration::seconds(1)).await.expect("beat");
    let first: Value = app.api_get("/v1/institutions?limit=2").await.json().await.expect("JSON");
    let ids = |page: &Value| -> Vec<String> {
        page["institutions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["institution_id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(ids(&first), ["111", "222"]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second: Value =
        app.api_get(&format!("/v1/institutions?limit=2&cursor={cursor}")).await.json().await.expect("JSON");
    assert_eq!((ids(&second), &second["next_cursor"]), (vec!["333".to_owned()], &Value::Null));
    let down: Value = app.api_get("/v1/institutions?status=down").await.json().await.expect("JSON");
    assert_eq!(ids(&down), ["222"]);
    let unknown: Value = app.api_get("/v1/institutions/333").await.json().await.expect("JSON");
    assert_eq!((unknown["status"].as_str(), unknown["sessions"].as_u64()), (Some("unknown"), Some(3)));

    // The gauge counts institutions per status.
    let exposition = metrics.render();
    for (status, count) in [("down", 1), ("healthy", 1), ("unknown", 1), ("degraded", 0)] {
        let line = format!("connectflow_institutions{{status=\"{status}\"}} {count}");
        assert!(exposition.lines().any(|l| l == line), "{line} in:\n{exposition}");
    }
    assert!(exposition.lines().any(|l| l == "connectflow_institution_changes_published_total 2"), "{exposition}");
    app.stop().await;
}
