//! Programs on the API: a token sees its programs' customers only (another
//! program's customer is exactly an unknown one), lists, stats and the
//! audit are filtered, every /v1 request leaves one access-log record, and
//! the access log fails closed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use connectflow::program::ProgramId;
use connectflow::receive::normalise::{Webhook, normalise};
use connectflow::simulate::flows::{bodies, flow};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    API_TOKEN, AppOptions, TestApp, eventually, http_settings, services, spawn_app_with, unique_kafka_args,
};
use crate::programs::two_programs;
use crate::tokens::{call, issue, until_status};

pub(crate) const ACME: [&str; 2] = ["7001", "7002"];
pub(crate) const BANK_B: [&str; 3] = ["8001", "8002", "8003"];

async fn spawn(access_log_queue: usize) -> TestApp {
    spawn_waiting(access_log_queue, http_settings().api_statement_timeout).await
}

/// [`spawn`], whose requests wait at most `wait` for a place in a full
/// access-log queue (the API's statement timeout).
async fn spawn_waiting(access_log_queue: usize, wait: Duration) -> TestApp {
    let mut http = http_settings();
    http.programs = Arc::new(two_programs());
    http.access_log_queue = access_log_queue;
    http.api_statement_timeout = wait;
    let services = services().await;
    spawn_app_with(AppOptions {
        http,
        kafka: unique_kafka_args(&services.kafka_brokers),
        create_topics: true,
        consumer: false,
    })
    .await
}

/// Applies a successful Connect session for each customer under `program`.
async fn seed(app: &TestApp, program: &str, customers: &[&str]) {
    seed_flow(app, program, "legacy-success", customers).await;
}

/// Applies the simulated flow `name` for each customer under `program`,
/// started an hour ago.
pub(crate) async fn seed_flow(app: &TestApp, program: &str, name: &str, customers: &[&str]) {
    let program = ProgramId::parse(program).expect("program");
    let start = Utc::now() - chrono::Duration::hours(1);
    let mut events = Vec::new();
    for (n, customer) in customers.iter().enumerate() {
        for body in bodies(flow(name).expect("flow"), customer, start, n as u64) {
            match normalise(&serde_json::to_vec(&body).expect("JSON"), Utc::now(), &program).expect("normalises") {
                Webhook::Event(event) => events.push(*event),
                Webhook::Ping => {}
            }
        }
    }
    connectflow::store::apply::apply_batch(&app.pool, &events).await.expect("seeding");
}

/// Two programs: `ACME`'s customers in `acme`, `BANK_B`'s in `bank-b`,
/// each through a successful Connect session an hour ago.
pub(crate) async fn seeded() -> TestApp {
    let app = spawn(10_000).await;
    seed(&app, "acme", &ACME).await;
    seed(&app, "bank-b", &BANK_B).await;
    app
}

pub(crate) fn listed(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["customers"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["customer_id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn another_programs_customer_is_exactly_an_unknown_customer() {
    let app = seeded().await;
    let (acme, _) = issue(&app, "acme reader", &["acme"], "read,revoke").await;
    until_status(&app, &format!("/v1/customers/{}/lifecycle", ACME[0]), &acme, 200).await;

    let routes = |id: &str| {
        vec![
            (Method::GET, format!("/v1/customers/{id}/lifecycle")),
            (Method::GET, format!("/v1/customers/{id}/events")),
            (Method::GET, format!("/v1/customers/{id}/changes")),
            (Method::GET, format!("/v1/customers/{id}/export")),
            (Method::POST, format!("/v1/customers/{id}/consent/revocations")),
        ]
    };
    for ((method, theirs), (_, unknown)) in routes(BANK_B[0]).into_iter().zip(routes("9999999999")) {
        let (status, body) = call(&app, method.clone(), &theirs, &acme).await;
        let (unknown_status, unknown_body) = call(&app, method.clone(), &unknown, &acme).await;
        assert_eq!((status, unknown_status), (404, 404), "{method} {theirs}: {body}");
        let same = serde_json::to_string(&unknown_body).expect("JSON").replace("9999999999", BANK_B[0]);
        assert_eq!(serde_json::to_string(&body).expect("JSON"), same, "{method} {theirs}: no existence oracle");
        // The owner's token does see it (the 404 is the program, not the id).
        let (status, _) = call(&app, method.clone(), &theirs, API_TOKEN).await;
        assert!([200, 202].contains(&status), "{method} {theirs} with a token of every program: {status}");
    }
    // And its own customer, with its program in the lifecycle.
    let (status, body) = call(&app, Method::GET, &format!("/v1/customers/{}/lifecycle", ACME[1]), &acme).await;
    assert_eq!((status, &body["program_id"]), (200, &json!("acme")), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn lists_and_stats_hold_the_tokens_programs_only() {
    let app = seeded().await;
    let (acme, _) = issue(&app, "acme", &["acme"], "read,stats").await;
    let (both, _) = issue(&app, "both", &["acme", "bank-b"], "read,stats").await;
    until_status(&app, "/v1/customers", &acme, 200).await;
    until_status(&app, "/v1/customers", &both, 200).await;

    let (_, body) = call(&app, Method::GET, "/v1/customers?limit=500", &acme).await;
    assert_eq!(listed(&body), ACME);
    assert!(body["customers"].as_array().is_some_and(|c| c.iter().all(|c| c["program_id"] == "acme")), "{body}");
    let (_, body) = call(&app, Method::GET, "/v1/customers?limit=500", &both).await;
    assert_eq!(listed(&body).len(), ACME.len() + BANK_B.len());
    let (_, body) = call(&app, Method::GET, "/v1/customers?limit=500&program_id=bank-b", &both).await;
    assert_eq!(listed(&body), BANK_B);
    let (status, body) = call(&app, Method::GET, "/v1/customers?program_id=bank-b", &acme).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"error": {"code": "forbidden", "message": "this token does not hold the program 'bank-b'"}})
    );
    let (status, _) = call(&app, Method::GET, "/v1/customers?program_id=Bank_B", &both).await;
    assert_eq!(status, 400);

    // Stats count each token's customers only (every seeded customer
    // started in the last hour).
    let started = |body: &Value| body["steps"]["started"].as_i64();
    let (_, body) = call(&app, Method::GET, "/v1/stats/funnel", &acme).await;
    assert_eq!(started(&body), Some(ACME.len() as i64), "{body}");
    let (_, body) = call(&app, Method::GET, "/v1/stats/funnel?program_id=bank-b", &both).await;
    assert_eq!(started(&body), Some(BANK_B.len() as i64), "{body}");
    let (_, body) = call(&app, Method::GET, "/v1/stats/funnel", &both).await;
    assert_eq!(started(&body), Some((ACME.len() + BANK_B.len()) as i64), "{body}");
    let (status, _) = call(&app, Method::GET, "/v1/stats/institutions?program_id=bank-b", &acme).await;
    assert_eq!(status, 403);
    let (_, body) = call(&app, Method::GET, "/v1/stats/timeseries?bucket=hour", &acme).await;
    let total: i64 =
        body["buckets"].as_array().map(|b| b.iter().filter_map(|b| b["steps"]["started"].as_i64()).sum()).unwrap_or(-1);
    assert_eq!(total, ACME.len() as i64, "{body}");
    app.stop().await;
}

/// The access log's rows written for `token_id`, once there are `n`.
async fn logged(app: &TestApp, token_id: &str, n: usize) -> Vec<Value> {
    logged_since(app, token_id, chrono::DateTime::UNIX_EPOCH, n).await
}

/// The same, of the requests that arrived at or after `since`.
async fn logged_since(app: &TestApp, token_id: &str, since: chrono::DateTime<Utc>, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(10), || async {
        let rows: Vec<Value> = sqlx::query_scalar(
            "SELECT to_jsonb(l) - 'id' FROM api_access_log l WHERE token_id = $1 AND at >= $2 ORDER BY at, id",
        )
        .bind(token_id)
        .bind(since)
        .fetch_all(&app.pool)
        .await
        .expect("access log");
        (rows.len() >= n).then_some(rows)
    })
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn every_request_leaves_exactly_one_access_log_record_without_data() {
    let app = seeded().await;
    let (acme, acme_id) = issue(&app, "acme logged", &["acme"], "read,audit").await;
    until_status(&app, "/v1/customers", &acme, 200).await;
    // The requests of the wait above are logged too: count those that
    // arrive from now on (records carry their request's arrival, to the ms).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = connectflow::event::truncate_to_millis(Utc::now());

    let lifecycle = format!("/v1/customers/{}/lifecycle", ACME[0]);
    let requests = [
        (lifecycle.clone(), 200, Some(1)),
        (format!("/v1/customers/{}/events?limit=2", ACME[0]), 200, Some(2)),
        ("/v1/customers?limit=500".to_owned(), 200, Some(ACME.len() as i64)),
        (format!("/v1/customers/{}/lifecycle", BANK_B[0]), 404, None),
        ("/v1/stats/funnel".to_owned(), 403, None),
    ];
    for (path, status, _) in &requests {
        assert_eq!(call(&app, Method::GET, path, &acme).await.0, *status, "{path}");
    }
    let rows = logged_since(&app, &acme_id, since, requests.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_again = logged_since(&app, &acme_id, since, 0).await;
    assert_eq!(rows_again.len(), requests.len(), "exactly one record per request: {rows_again:#?}");
    let new = &rows[..];
    for (row, (path, status, items)) in new.iter().zip(&requests) {
        assert_eq!(row["status"], *status, "{path}: {row}");
        assert_eq!(row["items"].as_i64(), *items, "{path}: {row}");
        assert_eq!(row["method"], "GET");
        assert_eq!(row["programs"], json!(["acme"]));
        assert!(row["route"].as_str().is_some_and(|r| r.starts_with("/v1/") && !r.contains('?')), "{row}");
    }
    assert_eq!(new[0]["route"], "/v1/customers/{customer_id}/lifecycle");
    assert_eq!(new[0]["customer_id"], ACME[0]);
    assert_eq!(new[2]["customer_id"], Value::Null);
    assert_eq!(new[3]["customer_id"], BANK_B[0], "the customer asked for, found or not");
    // Never response data: no account number's last four, no account id,
    // no state, no event id.
    let text = serde_json::to_string(&rows_again).expect("JSON");
    let (_, events) = call(&app, Method::GET, &format!("/v1/customers/{}/events", ACME[0]), API_TOKEN).await;
    for event in events["events"].as_array().expect("events") {
        for account in event["accounts"].as_array().into_iter().flatten() {
            for field in ["last4", "account_id"] {
                if let Some(value) = account[field].as_str() {
                    assert!(!text.contains(&format!("\"{value}\"")), "{field} {value} in the access log");
                }
            }
        }
        assert!(!text.contains(event["event_id"].as_str().unwrap_or("-")));
    }
    assert!(!text.contains("granted") && !text.contains("succeeded"));

    // The audit shows them, to the audit scope, in time order, paged.
    let (status, body) = call(&app, Method::GET, &format!("/v1/audit?token_id={acme_id}&limit=2"), &acme).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"].as_array().map(Vec::len), Some(2));
    assert!(body["next_cursor"].is_string());
    let (_, body) = call(&app, Method::GET, &format!("/v1/audit?customer_id={}", BANK_B[0]), &acme).await;
    assert_eq!(body["records"].as_array().map(Vec::len), Some(1), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn an_auditor_of_one_program_sees_that_programs_requests_only() {
    let app = seeded().await;
    let (auditor, _) = issue(&app, "acme auditor", &["acme"], "audit").await;
    let (bank_b, bank_b_id) = issue(&app, "bank-b reader", &["bank-b"], "read").await;
    until_status(&app, "/v1/audit", &auditor, 200).await;
    until_status(&app, &format!("/v1/customers/{}/lifecycle", BANK_B[0]), &bank_b, 200).await;
    assert!(!logged(&app, &bank_b_id, 1).await.is_empty());
    let (_, body) = call(&app, Method::GET, &format!("/v1/audit?token_id={bank_b_id}"), &auditor).await;
    assert_eq!(body["records"], json!([]), "{body}");
    let (_, body) = call(&app, Method::GET, &format!("/v1/audit?token_id={bank_b_id}"), API_TOKEN).await;
    assert!(body["records"].as_array().is_some_and(|r| !r.is_empty()), "{body}");

    // `connectflow audit` prints the same records, one JSON line each.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .args(["audit", "--token-id", &bank_b_id])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .await
        .expect("the binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record per line"))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|r| r["token_id"] == bank_b_id.as_str()));
    app.stop().await;
}

/// An app whose access log has a queue of one and whose requests wait at
/// most `wait` for a place; one lookup served (and logged), then the
/// writer held: `api_access_log` locked by the returned transaction, so the
/// writer's next insert waits and the queue fills. Also the lookup's path.
async fn writer_held(wait: Duration) -> (TestApp, String, sqlx::Transaction<'static, sqlx::Postgres>) {
    let app = spawn_waiting(1, wait).await;
    seed(&app, "acme", &ACME).await;
    let path = format!("/v1/customers/{}/lifecycle", ACME[0]);
    assert_eq!(call(&app, Method::GET, &path, API_TOKEN).await.0, 200);
    let mut blocker = app.pool.begin().await.expect("transaction");
    sqlx::query("LOCK TABLE api_access_log IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.expect("lock");
    (app, path, blocker)
}

#[tokio::test]
async fn a_full_access_log_queue_fails_closed_with_503() {
    // A request waits a second for a place, then is refused.
    let (app, path, blocker) = writer_held(Duration::from_secs(1)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response =
            app.client.get(format!("{}{path}", app.base_url)).bearer_auth(API_TOKEN).send().await.expect("request");
        let status = response.status().as_u16();
        if status == 503 {
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["error"]["code"], "unavailable");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&503), "a full queue refuses: {statuses:?}");
    // At most one record in the writer's hands and one queued: how many of
    // those places were taken before the lock depends on the writer's timing.
    assert!(statuses.iter().filter(|s| **s == 200).count() <= 2, "{statuses:?}");
    let text = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        text.lines().any(|l| l.starts_with("connectflow_access_log_rejected_total ") && !l.ends_with(" 0")),
        "{text}"
    );

    // Released, the writer catches up and requests are served again; every
    // request served was logged, none refused was.
    blocker.rollback().await.expect("release");
    let served = 1 + statuses.iter().filter(|s| **s == 200).count();
    let rows = eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_access_log").fetch_one(&app.pool).await.ok()?;
        (n as usize >= served).then_some(n)
    })
    .await;
    assert_eq!(rows, Some(served as i64));
    assert_eq!(call(&app, Method::GET, &path, API_TOKEN).await.0, 200);
    app.stop().await;
}

async fn revoke(app: &TestApp, customer: &str, key: &str, token: &str) -> (u16, Option<String>, Value) {
    let response = app
        .client
        .post(format!("{}/v1/customers/{customer}/consent/revocations", app.base_url))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"revoked_by": "customer"}))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, replayed, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn idempotency_keys_are_per_program_and_end() {
    let app = seeded().await;
    let (acme, acme_id) = issue(&app, "acme revoker", &["acme"], "revoke").await;
    until_status(&app, "/v1/audit", &acme, 403).await;

    let (status, replayed, first) = revoke(&app, ACME[0], "key-1", &acme).await;
    assert_eq!((status, replayed), (202, None), "{first}");
    let (status, replayed, again) = revoke(&app, ACME[0], "key-1", &acme).await;
    assert_eq!((status, replayed.as_deref()), (202, Some("true")), "{again}");
    assert_eq!(again["event_id"], first["event_id"], "a replay is the same event");
    // The same key in another program is another request.
    let (status, replayed, other) = revoke(&app, BANK_B[0], "key-1", API_TOKEN).await;
    assert_eq!((status, replayed), (202, None), "{other}");
    assert_ne!(other["event_id"], first["event_id"]);
    // Within the program, the same key for another request is a conflict.
    assert_eq!(revoke(&app, ACME[1], "key-1", &acme).await.0, 409);

    // The principal is recorded beside the caller's claim.
    let (token_id, token_name): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT token_id, token_name FROM consent_revocation_requests WHERE program_id = 'acme' AND idempotency_key = 'key-1'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the key's row");
    assert_eq!((token_id.as_deref(), token_name.as_deref()), (Some(acme_id.as_str()), Some("acme revoker")));

    // After CONNECTFLOW_IDEMPOTENCY_KEY_HOURS (72 in tests) the key is new.
    sqlx::query(
        "UPDATE consent_revocation_requests SET created_at = now() - interval '73 hours' WHERE program_id = 'acme'",
    )
    .execute(&app.pool)
    .await
    .expect("age the key");
    let (status, replayed, renewed) = revoke(&app, ACME[1], "key-1", &acme).await;
    assert_eq!((status, replayed), (202, None), "an ended key is a new request: {renewed}");
    assert_ne!(renewed["event_id"], first["event_id"], "with an event of its own");
    let (_, replayed, again) = revoke(&app, ACME[1], "key-1", &acme).await;
    assert_eq!((replayed.as_deref(), &again["event_id"]), (Some("true"), &renewed["event_id"]));

    let records = crate::kafka_util::read_all(&app.kafka.brokers, &app.kafka.events_topic);
    let published: Vec<Value> = records.iter().filter_map(|r| serde_json::from_slice(&r.value).ok()).collect();
    let first_event = published.iter().find(|e| e["event_id"] == first["event_id"]).expect("published");
    assert_eq!(first_event["program_id"], "acme");
    assert_eq!(first_event["requested_by"], json!({"token_id": acme_id, "token_name": "acme revoker"}));
    app.stop().await;
}

#[tokio::test]
async fn me_says_what_the_token_sees_and_may_do() {
    let app = seeded().await;
    let (acme, acme_id) = issue(&app, "acme console", &["acme"], "read,stats").await;
    until_status(&app, "/v1/me", &acme, 200).await;
    let (_, me) = call(&app, Method::GET, "/v1/me", &acme).await;
    assert_eq!(
        me,
        json!({"token_id": acme_id, "token_name": "acme console", "scopes": ["read", "stats"], "all_programs": false,
               "programs": [{"id": "acme", "name": "Acme Card"}]})
    );
    let (_, me) = call(&app, Method::GET, "/v1/me", API_TOKEN).await;
    assert_eq!(me["all_programs"], true);
    assert_eq!(
        me["programs"],
        json!([{"id": "acme", "name": "Acme Card"}, {"id": "bank-b", "name": "Bank B Rewards"}])
    );
    assert_eq!(me["scopes"], json!(["read", "stats", "revoke", "audit", "erase"]));
    app.stop().await;
}

#[tokio::test]
async fn each_program_lapses_authorizations_after_its_own_period() {
    // bank-b's authorizations last 30 days, acme's the default 365: both
    // customers were authorized 40 days ago.
    let app = spawn(10_000).await;
    let forty_days_ago = Utc::now() - chrono::Duration::days(40);
    for (program, customer) in [("acme", ACME[0]), ("bank-b", BANK_B[0])] {
        let program = ProgramId::parse(program).expect("program");
        let events: Vec<_> = bodies(flow("legacy-success").expect("flow"), customer, forty_days_ago, 1)
            .iter()
            .filter_map(|body| {
                match normalise(&serde_json::to_vec(body).expect("JSON"), Utc::now(), &program).ok()? {
                    Webhook::Event(event) => Some(*event),
                    Webhook::Ping => None,
                }
            })
            .collect();
        connectflow::store::apply::apply_batch(&app.pool, &events).await.expect("seeding");
    }
    // The API shows each with its program's period.
    let expired = |body: &Value| body["consent"]["expired"].as_bool();
    let (_, acme) = call(&app, Method::GET, &format!("/v1/customers/{}/lifecycle", ACME[0]), API_TOKEN).await;
    let (_, bank_b) = call(&app, Method::GET, &format!("/v1/customers/{}/lifecycle", BANK_B[0]), API_TOKEN).await;
    assert_eq!((expired(&acme), expired(&bank_b)), (Some(false), Some(true)), "{acme}\n{bank_b}");
    let (_, listed_before) = call(
        &app,
        Method::GET,
        &format!("/v1/customers?authorization_expires_before={}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ")),
        API_TOKEN,
    )
    .await;
    assert_eq!(crate::isolation::listed(&listed_before), [BANK_B[0]], "{listed_before}");

    // consume's expiry job, with the two programs, announces bank-b's lapse
    // and not acme's.
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = {
        let (kafka, pool, stop) = (app.kafka.clone(), app.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let args = crate::helpers::consumer_args();
            let metrics = connectflow::metrics::Metrics::new();
            let process =
                connectflow::cli::ConsumeProcess::build(&args, &kafka, None, pool, metrics, Arc::new(two_programs()))
                    .await?;
            process.run(stop).await
        })
    };
    let lapses = |customer: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM lifecycle_changes WHERE customer_id = $1 AND change::jsonb->>'reason' = 'authorization_expired'",
            )
            .bind(customer)
            .fetch_one(&pool)
            .await
            .unwrap_or(-1)
        }
    };
    let announced =
        eventually(Duration::from_secs(30), || async { (lapses(BANK_B[0]).await == 1).then_some(()) }).await;
    assert!(announced.is_some(), "bank-b's lapse announced");
    assert_eq!(lapses(ACME[0]).await, 0, "acme's authorization has not lapsed");
    stop.cancel();
    let _ = consumer.await;
    app.stop().await;
}

#[tokio::test]
async fn a_request_waits_for_a_place_while_the_writer_catches_up() {
    // Of four requests at most two find a place (one record in the
    // writer's hands, one queued) and the others wait.
    let (app, path, blocker) = writer_held(Duration::from_secs(20)).await;
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (app.client.clone(), format!("{}{path}", app.base_url));
            tokio::spawn(async move {
                client.get(url).bearer_auth(API_TOKEN).send().await.map(|r| r.status().as_u16()).expect("an answer")
            })
        })
        .collect();
    let waiting = eventually(Duration::from_secs(10), || async {
        let answered = requests.iter().filter(|r| r.is_finished()).count();
        (answered >= 1).then_some(requests.len() - answered)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still_waiting = requests.iter().filter(|r| !r.is_finished()).count();
    assert!(waiting.is_some() && still_waiting >= 2, "two requests wait for a place: {still_waiting} unanswered");

    // Released, the writer catches up and the waiting requests are served:
    // none refused, every one logged.
    blocker.rollback().await.expect("release");
    for request in requests {
        assert_eq!(request.await.expect("a request"), 200);
    }
    let rows = eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_access_log").fetch_one(&app.pool).await.ok()?;
        (n >= 5).then_some(n)
    })
    .await;
    assert_eq!(rows, Some(5), "the first request and the four");
    let text = app.get("/metrics").await.text().await.expect("metrics");
    assert!(text.lines().any(|l| l == "connectflow_access_log_rejected_total 0"), "{text}");
    app.stop().await;
}
