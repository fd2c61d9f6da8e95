//! The aggregate API (`/v1/stats`) and the listing filters behind the
//! console's links, against simulated flows on the real pipeline.

use connectflow::event::rfc3339_ms;
use connectflow::simulate::flows::{API_FLOWS, FLOWS, INSTITUTION, UNSUPPORTED_INSTITUTION};
use connectflow::simulate::{SimulateArgs, simulate};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_pipeline};
use crate::simulate::args_for;

async fn json_of(app: &TestApp, path: &str) -> Value {
    let response = app.api_get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("JSON")
}

/// The counts of an answer: everything but the window.
fn counts(mut answer: Value) -> Value {
    if let Value::Object(fields) = &mut answer {
        fields.remove("since");
        fields.remove("until");
        fields.remove("truncated");
        fields.remove("start");
    }
    answer
}

/// Every flow (those revoking through the API included), three customers
/// each, shuffled and with duplicates: the funnel, the time series and the
/// institutions show exactly what the flows imply, and the console's
/// "failing customers" link lists exactly the failing customers.
#[tokio::test]
async fn the_stats_show_exactly_what_the_simulation_implies() {
    let app = spawn_pipeline().await;
    let flows = FLOWS.iter().chain(API_FLOWS).map(|flow| flow.name.to_owned()).collect();
    let args = SimulateArgs { flow: flows, customers: 3, shuffle: true, duplicates: 0.3, ..args_for(&app) };
    let outcome = simulate(&args, &CancellationToken::new()).await.expect("the simulation runs");
    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    let expected = outcome.funnel.as_ref().expect("customers were simulated");
    let window = format!("since={}&until={}", rfc3339_ms::format(&expected.since), rfc3339_ms::format(&expected.until));

    let funnel = json_of(&app, &format!("/v1/stats/funnel?{window}")).await;
    let implied = serde_json::to_value(expected.counts).expect("serialisable");
    assert_eq!(counts(funnel.clone()), implied, "{outcome}");
    assert_eq!(funnel["customers"], 33);
    assert_eq!(funnel["steps"]["institution_chosen"], 30);
    assert_eq!(funnel["failed"]["by_reason"]["institution_not_found"], 3);

    // A day per bucket: the buckets add up to the funnel (the reauthorized
    // customers' first sessions a year earlier included).
    let series = json_of(&app, &format!("/v1/stats/timeseries?{window}&bucket=day")).await;
    let buckets = series["buckets"].as_array().expect("buckets");
    assert!(buckets.len() >= 366, "every day of the window: {}", buckets.len());
    let total = |path: &[&str]| -> i64 {
        buckets.iter().map(|b| path.iter().fold(b, |v, key| &v[key]).as_i64().unwrap_or(0)).sum()
    };
    assert_eq!(total(&["customers"]), 33);
    assert_eq!(total(&["steps", "consent_granted"]), funnel["steps"]["consent_granted"].as_i64().unwrap_or(-1));
    assert_eq!(total(&["failed", "total"]), 12);
    let non_empty = buckets.iter().filter(|b| b["customers"] != 0).count();
    assert!((1..=3).contains(&non_empty), "a year ago, and the day (or two) of the run: {non_empty}");

    // Per institution: the unsupported one holds the three customers who
    // chose it; institution-not-found customers chose none.
    let institutions = json_of(&app, &format!("/v1/stats/institutions?{window}")).await;
    let rows = institutions["institutions"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{institutions}");
    assert_eq!(rows[0]["institution_id"], INSTITUTION);
    assert_eq!(
        (&rows[0]["customers"], &rows[0]["consent_granted"], &rows[0]["failed"]["total"]),
        (&json!(27), &json!(18), &json!(6)),
        "{institutions}"
    );
    assert_eq!(rows[1]["institution_id"], UNSUPPORTED_INSTITUTION);
    assert_eq!(
        (&rows[1]["customers"], &rows[1]["failed"]["by_reason"]["institution_not_supported"], &rows[1]["conversion"]),
        (&json!(3), &json!(3), &json!(0.0))
    );
    let top = json_of(&app, &format!("/v1/stats/institutions?{window}&limit=1")).await;
    assert_eq!(top["institutions"].as_array().map(Vec::len), Some(1));

    // The console's link from an institution to its failing customers.
    let failing = json_of(
        &app,
        &format!(
            "/v1/customers?institution_id={UNSUPPORTED_INSTITUTION}&authentication=failed&first_event_since={}&first_event_until={}",
            rfc3339_ms::format(&expected.since),
            rfc3339_ms::format(&expected.until)
        ),
    )
    .await;
    let listed = failing["customers"].as_array().expect("customers");
    assert_eq!(listed.len(), 3, "{failing}");
    assert!(listed.iter().all(|c| c["authentication"]["reason"] == "institution_not_supported"), "{failing}");

    // A window after the run holds nobody.
    let later = json_of(&app, &format!("/v1/stats/funnel?since={}", rfc3339_ms::format(&expected.until))).await;
    assert_eq!((later["customers"].as_i64(), later["conversion"].is_null()), (Some(0), true), "{later}");
    app.stop().await;
}

#[tokio::test]
async fn the_stats_need_a_token_and_refuse_bad_parameters() {
    let app = spawn_app().await;
    for path in ["/v1/stats/funnel", "/v1/stats/timeseries", "/v1/stats/institutions"] {
        assert_eq!(app.get(path).await.status(), 401, "{path}");
        let empty = json_of(&app, path).await;
        assert_eq!(empty["since"].as_str().map(str::len), Some(24), "{path}: {empty}");
    }
    let empty = json_of(&app, "/v1/stats/funnel").await;
    assert_eq!((empty["customers"].as_i64(), empty["conversion"].is_null()), (Some(0), true));
    let days = json_of(&app, "/v1/stats/timeseries").await;
    assert_eq!(days["bucket"], "day");
    assert!(matches!(days["buckets"].as_array().map(Vec::len), Some(30 | 31)), "{days}");
    // Each parameter valid alone: an empty window, a window cut to its
    // last 2,400 hours.
    let backwards = json_of(&app, "/v1/stats/funnel?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z").await;
    assert_eq!(backwards["customers"], 0, "{backwards}");
    let empty = json_of(&app, "/v1/stats/timeseries?since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z").await;
    assert_eq!((empty["buckets"].as_array().map(Vec::len), &empty["truncated"]), (Some(0), &json!(false)));
    let long =
        json_of(&app, "/v1/stats/timeseries?since=2025-01-01T00:00:00Z&until=2026-01-01T00:00:00Z&bucket=hour").await;
    assert_eq!((long["buckets"].as_array().map(Vec::len), &long["truncated"]), (Some(2400), &json!(true)));
    assert_eq!(long["since"], "2025-09-23T00:00:00.000Z", "the first kept bucket: 100 days before until");
    assert_eq!(long["buckets"][0]["start"], long["since"]);
    for (path, why) in [
        ("/v1/stats/funnel?since=yesterday", "since must be an RFC 3339 time"),
        ("/v1/stats/timeseries?bucket=week", "bucket must be hour or day"),
        ("/v1/stats/institutions?limit=0", "limit must be"),
        ("/v1/customers?institution_id=", "institution_id must be"),
        ("/v1/customers?first_event_since=soon", "first_event_since must be"),
    ] {
        let response = app.api_get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "invalid_request", "{path}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{path}: {message}");
    }
    app.stop().await;
}

/// A customer stored before the funnel existed (no `funnel` in the stored
/// lifecycle, empty columns) is recomputed from their history at their
/// next event, so the statistics count them rightly from then on.
#[tokio::test]
async fn a_lifecycle_stored_without_its_funnel_is_recomputed_at_the_next_event() {
    let app = spawn_pipeline().await;
    let flow = connectflow::simulate::flows::flow("revoked").expect("flow");
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    let bodies = connectflow::simulate::flows::bodies(flow, "4242", start, 1);
    let (last, earlier) = bodies.split_last().expect("events");
    for body in earlier {
        assert_eq!(app.post_webhook(body.to_string().as_bytes()).await.status(), 200);
    }
    let columns = || async {
        sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, i16, Option<String>, i64)>(
            "SELECT first_event_at, funnel_steps, chosen_institution_id, event_count FROM customers WHERE customer_id = '4242'",
        )
        .fetch_optional(&app.pool)
        .await
        .expect("query")
    };
    let wait = std::time::Duration::from_secs(30);
    let applied = eventually(wait, || async { columns().await.filter(|c| c.3 == earlier.len() as i64) }).await;
    let (first, steps, institution, _) = applied.expect("the first events applied");
    assert_eq!(
        (first.map(|f| f.timestamp()), steps, institution.as_deref()),
        (Some(start.timestamp()), 27, Some(INSTITUTION))
    );

    sqlx::query(
        "UPDATE customers SET lifecycle = lifecycle - 'funnel', first_event_at = NULL, funnel_steps = 0, \
         chosen_institution_id = NULL WHERE customer_id = '4242'",
    )
    .execute(&app.pool)
    .await
    .expect("an old row");
    assert_eq!(app.post_webhook(last.to_string().as_bytes()).await.status(), 200);
    let healed = eventually(wait, || async { columns().await.filter(|c| c.3 == bodies.len() as i64) }).await;
    let (first, steps, institution, _) = healed.expect("the last event applied");
    assert_eq!(
        (first.map(|f| f.timestamp()), steps, institution.as_deref()),
        (Some(start.timestamp()), 27, Some(INSTITUTION))
    );
    let lifecycle = json_of(&app, "/v1/customers/4242/lifecycle").await;
    assert_eq!(lifecycle["funnel"]["steps"]["consent_granted"], true, "{lifecycle}");
    app.stop().await;
}

#[tokio::test]
async fn a_window_longer_than_the_longest_answered_is_cut_and_flagged() {
    let app = spawn_app().await;
    let ten_years = "since=2016-11-26T00:00:00Z&until=2026-11-26T00:00:00Z";
    for route in ["funnel", "timeseries", "institutions"] {
        let answer = json_of(&app, &format!("/v1/stats/{route}?{ten_years}")).await;
        assert_eq!(answer["truncated"], true, "{route}: {answer}");
        // The last 400 days (CONNECTFLOW_STATS_MAX_WINDOW_DAYS) of the window.
        assert_eq!(answer["since"], "2025-10-22T00:00:00.000Z", "{route}: {answer}");
        assert_eq!(answer["until"], "2026-11-26T00:00:00.000Z", "{route}: {answer}");
    }
    let one_month = json_of(&app, "/v1/stats/funnel?since=2026-10-26T00:00:00Z&until=2026-11-26T00:00:00Z").await;
    assert_eq!(one_month["truncated"], false, "{one_month}");
    app.stop().await;
}

/// A statistics answer is counted in two halves at once when a second place
/// is free (the test app has five): customers at the cut, on either side of
/// it and at the window's ends are each counted once, or not at all.
#[tokio::test]
async fn customers_at_the_cut_between_two_parts_are_counted_once() {
    let app = spawn_app().await;
    // The window's middle, and the middle of its hourly buckets, is
    // 2026-11-02T00:00:00Z.
    let firsts = [
        ("9100000001", "2026-10-31T23:59:59.999999Z", "A"), // before the window
        ("9100000002", "2026-11-01T00:00:00Z", "A"),
        ("9100000003", "2026-11-01T23:59:59.999999Z", "A"),
        ("9100000004", "2026-11-02T00:00:00Z", "A"), // at the cut
        ("9100000005", "2026-11-02T00:00:00.000001Z", "B"),
        ("9100000006", "2026-11-02T23:59:59.999999Z", "A"),
        ("9100000007", "2026-11-03T00:00:00Z", "B"), // at `until`: after the window
    ];
    for (customer_id, first_event_at, institution) in firsts {
        sqlx::query(
            "INSERT INTO customers (customer_id, consent_state, auth_state, last_event_id, last_event_type, \
               last_occurred_at, event_count, lifecycle, updated_at, first_event_at, funnel_steps, \
               chosen_institution_id) \
             VALUES ($1, 'none', 'in_progress', 'e' || $1, 'started', now(), 1, '{}', now(), $2::timestamptz, 3, $3)",
        )
        .bind(customer_id)
        .bind(first_event_at)
        .bind(institution)
        .execute(&app.pool)
        .await
        .expect("a customer");
    }
    let window = "since=2026-11-01T00:00:00Z&until=2026-11-03T00:00:00Z";
    let funnel = json_of(&app, &format!("/v1/stats/funnel?{window}")).await;
    assert_eq!(funnel["customers"], 5, "{funnel}");

    let series = json_of(&app, &format!("/v1/stats/timeseries?{window}&bucket=hour")).await;
    let buckets = series["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 48);
    let customers: Vec<(String, i64)> = buckets
        .iter()
        .filter(|b| b["customers"] != 0)
        .map(|b| (b["start"].as_str().unwrap_or_default().to_owned(), b["customers"].as_i64().unwrap_or(-1)))
        .collect();
    let expected = [
        ("2026-11-01T00:00:00.000Z", 1),
        ("2026-11-01T23:00:00.000Z", 1),
        ("2026-11-02T00:00:00.000Z", 2),
        ("2026-11-02T23:00:00.000Z", 1),
    ];
    assert_eq!(customers, expected.map(|(start, n)| (start.to_owned(), n)), "{series}");

    let institutions = json_of(&app, &format!("/v1/stats/institutions?{window}")).await;
    let rows: Vec<(&str, i64)> = institutions["institutions"]
        .as_array()
        .expect("institutions")
        .iter()
        .map(|row| (row["institution_id"].as_str().unwrap_or_default(), row["customers"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(rows, [("A", 4), ("B", 1)], "{institutions}");
    let top = json_of(&app, &format!("/v1/stats/institutions?{window}&limit=1")).await;
    assert_eq!(top["institutions"].as_array().map(Vec::len), Some(1), "{top}");
    assert_eq!(top["institutions"][0]["institution_id"], "A", "{top}");
    app.stop().await;
}
