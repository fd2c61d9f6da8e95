//! connectflow's benchmarks: `cargo run --release --example bench -- [all|receiver|consumer|api|e2e|replica|health]`
//! (`make bench` builds and runs `all`). Each figure comes with a baseline
//! measured in the same run on the same machine; nothing here asserts a
//! speed. Results print as a table and go to `target/bench/summary.json`.

mod health;
mod load;
mod procs;
mod replica;
mod runs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chrono::Utc;
use connectflow::event::ConnectEvent;
use connectflow::receive::normalise::{Webhook, normalise};
use connectflow::receive::signature::sign;
use connectflow::simulate::flows::{FLOWS, bodies};
use serde_json::{Value, json};

use load::{Prepared, drive, percentile_ms};
use procs::*;
use runs::{Bound, Runs, Target, bench_runs, put};

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some(values[values.len() / 2])
}

/// Finicity bodies for `customers` customers, cycling through the flows.
fn customer_flows(customers: usize, first: usize) -> Vec<(String, Vec<Value>)> {
    let start = Utc::now() - chrono::Duration::hours(1);
    (first..first + customers)
        .map(|i| {
            let customer = format!("9{i:011}");
            let flow = &FLOWS[i % FLOWS.len()];
            let bodies = bodies(flow, &customer, start, i as u64);
            (customer, bodies)
        })
        .collect()
}

/// The environment of a service under test: its own database and topics,
/// single-replica topics, a consumer group of its own.
fn service_env(database: &str, events_topic: String, dlq_topic: String) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database.to_owned()),
        ("KAFKA_BROKERS", kafka_brokers()),
        ("CONNECTFLOW_CHANGES_TOPIC", events_topic.replace(".events", ".changes")),
        ("CONNECTFLOW_INSTITUTIONS_TOPIC", events_topic.replace(".events", ".institutions")),
        ("CONNECTFLOW_EVENTS_TOPIC", events_topic),
        ("CONNECTFLOW_DLQ_TOPIC", dlq_topic),
        ("CONNECTFLOW_TOPIC_REPLICATION_FACTOR", "1".into()),
        ("CONNECTFLOW_CONSUMER_GROUP", format!("bench-{}", uuid::Uuid::new_v4().simple())),
    ]
}

fn signed_webhook(body: &Value) -> Prepared {
    let raw = serde_json::to_vec(body).unwrap_or_default();
    Prepared {
        method: hyper::Method::POST,
        path: "/webhooks/finicity/connect".into(),
        headers: vec![("content-type", "application/json".into()), ("x-finicity-signature", sign(SECRET, &raw))],
        body: Bytes::from(raw),
    }
}

// ---------------------------------------------------------------- receiver

#[derive(Debug, Default)]
struct ReceiverFigures {
    accepted_per_s: Runs,
    p50_ms: Runs,
    p99_ms: Runs,
    p99_ms_at_5k: Runs,
    rss_mib: Runs,
    cpu_us_per_webhook: Runs,
    baseline_cpu_us_per_request: Runs,
    baseline_per_s: Runs,
    baseline_p99_ms: Runs,
}

/// The receiver and its floor (a bare endpoint that only verifies the
/// HMAC), both started once and driven in turn, `runs` times.
async fn bench_receiver(seconds: u64, runs: usize) -> anyhow::Result<ReceiverFigures> {
    let requests: Arc<Vec<Prepared>> =
        Arc::new(customer_flows(6_000, 0).iter().flat_map(|(_, b)| b.iter().map(signed_webhook)).collect());
    let duration = Duration::from_secs(seconds);
    let connections = std::env::var("CONNECTFLOW_BENCH_CONNECTIONS").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    let mut figures = ReceiverFigures::default();
    let ticks_per_s = clock_ticks();

    let baseline_addr = free_addr()?;
    let baseline = spawn_baseline(baseline_addr)?;
    wait_for_port(baseline_addr, Duration::from_secs(10)).await?;
    let (events_topic, dlq_topic) = topics("receiver");
    let database = fresh_database("receiver").await?;
    let addr = free_addr()?;
    let receiver = spawn_connectflow("serve", &service_env(&database, events_topic, dlq_topic), Some(addr))?;
    wait_for(&format!("http://{addr}/readyz"), Duration::from_secs(60)).await?;
    drive(baseline_addr, requests.clone(), connections, Duration::from_secs(1), None).await;
    drive(addr, requests.clone(), connections, Duration::from_secs(2), None).await;

    for _ in 0..runs {
        let before = cpu_ticks(baseline.pid());
        let result = drive(baseline_addr, requests.clone(), connections, duration, None).await;
        let used = before.zip(cpu_ticks(baseline.pid())).map(|(b, a)| a.saturating_sub(b));
        figures.baseline_cpu_us_per_request.add(used.and_then(|t| us_per(t, result.ok as f64, ticks_per_s)));
        figures.baseline_per_s.push(result.per_second());
        figures.baseline_p99_ms.push(result.percentile_ms(99.0));

        let before = cpu_ticks(receiver.pid());
        let result = drive(addr, requests.clone(), connections, duration, None).await;
        let used = before.zip(cpu_ticks(receiver.pid())).map(|(b, a)| a.saturating_sub(b));
        figures.cpu_us_per_webhook.add(used.and_then(|t| us_per(t, result.ok as f64, ticks_per_s)));
        if result.failed > 0 {
            eprintln!("receiver: {} requests failed at full speed", result.failed);
        }
        figures.accepted_per_s.push(result.per_second());
        figures.p50_ms.push(result.percentile_ms(50.0));
        figures.p99_ms.push(result.percentile_ms(99.0));
        let result = drive(addr, requests.clone(), 32, duration, Some(5_000.0)).await;
        if result.failed > 0 {
            eprintln!("receiver: {} requests failed at 5,000/s", result.failed);
        }
        figures.p99_ms_at_5k.push(result.percentile_ms(99.0));
    }
    figures.rss_mib.add(receiver.peak_rss_mib());
    baseline.stop();
    receiver.stop();
    drop_database(&database).await;
    Ok(figures)
}

/// The baseline server: HMAC verification of the raw body, nothing else.
async fn baseline_server(addr: &str) -> anyhow::Result<()> {
    use axum::body::Bytes as Body;
    use axum::http::{HeaderMap, StatusCode};
    use connectflow::config::SecretList;
    use connectflow::receive::signature::SignatureVerifier;

    let verifier = Arc::new(SignatureVerifier::new(&SecretList::new([SECRET]).context("secret")?));
    let app = axum::Router::new().route(
        "/webhooks/finicity/connect",
        axum::routing::post(move |headers: HeaderMap, body: Body| {
            let verifier = verifier.clone();
            async move {
                let signature = headers.get("x-finicity-signature").map(|v| v.as_bytes());
                match verifier.verify(signature, &body) {
                    Ok(()) => (StatusCode::OK, r#"{"status":"accepted"}"#),
                    Err(_) => (StatusCode::UNAUTHORIZED, r#"{"error":{"code":"invalid_signature"}}"#),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---------------------------------------------------------------- normalise

/// CPU of the receiver's pure part, without HTTP or Kafka: signature check,
/// parse and normalise, and the record's serialisation, per webhook body of
/// the bench's mix (`bench normalise`, not part of `all`).
fn bench_normalise() -> anyhow::Result<()> {
    let bodies: Vec<Vec<u8>> = customer_flows(6_000, 0)
        .iter()
        .flat_map(|(_, b)| b.iter().filter_map(|body| serde_json::to_vec(body).ok()))
        .collect();
    let signatures: Vec<String> = bodies.iter().map(|raw| sign(SECRET, raw)).collect();
    let secrets: connectflow::config::SecretList = SECRET.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let verifier = connectflow::receive::signature::SignatureVerifier::new(&secrets);
    let now = Utc::now();
    let mut per_body = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut bytes = 0usize;
        for (raw, signature) in bodies.iter().zip(&signatures) {
            anyhow::ensure!(verifier.verify(Some(signature.as_bytes()), raw).is_ok(), "signature");
            if let Ok(Webhook::Event(event)) = normalise(raw, now, &Default::default()) {
                bytes += serde_json::to_vec(&event)?.len();
            }
        }
        std::hint::black_box(bytes);
        per_body.push(started.elapsed().as_secs_f64() * 1e6 / bodies.len() as f64);
    }
    println!(
        "normalise: {} bodies, median {:.2} us per body (verify + normalise + serialise)",
        bodies.len(),
        median(per_body).unwrap_or(f64::NAN)
    );
    Ok(())
}

// ---------------------------------------------------------------- consumer

#[derive(Debug, Default)]
struct ConsumerFigures {
    events: usize,
    applied_per_s: Runs,
    baseline_per_s: Runs,
    cpu_us_per_event: Runs,
    postgres_cpu_us_per_event: Runs,
    baseline_postgres_cpu_us_per_event: Runs,
}

fn normalised(flows: &[(String, Vec<Value>)]) -> Vec<ConnectEvent> {
    let now = Utc::now();
    flows
        .iter()
        .flat_map(|(_, bodies)| bodies.iter())
        .filter_map(|body| match normalise(&serde_json::to_vec(body).ok()?, now, &Default::default()).ok()? {
            Webhook::Event(event) => Some(*event),
            Webhook::Ping => None,
        })
        .collect()
}

/// `connectflow_events_applied_total` from a consumer's /metrics.
async fn applied_events(client: &reqwest::Client, url: &str) -> Option<u64> {
    counter(client, url, "connectflow_events_applied_total").await
}

/// A counter (`name`, no labels) from a process's /metrics.
async fn counter(client: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let line = text.lines().find(|line| line.split_whitespace().next() == Some(name))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|v| v as u64)
}

async fn count_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(pool).await.unwrap_or(0)
}

/// Produces `events` to `topic`, keyed by customer, and waits for Kafka.
fn fill_topic(topic: &str, events: &[ConnectEvent]) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let fill_started = Instant::now();
    for event in events {
        let value = serde_json::to_vec(event)?;
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(event.customer_id.as_str().as_bytes()).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    eprintln!("bench: topic filled in {:.1}s", fill_started.elapsed().as_secs_f64());

    Ok(())
}

/// What a consumer applied, from its first applied event to the last
/// sample, with the CPU it and Postgres spent meanwhile.
struct Drained {
    applied: f64,
    seconds: f64,
    consumer_ticks: u64,
    postgres_ticks: u64,
}

/// Follows a consumer (its own counter on /metrics: polling count(*) over
/// the growing table would take a good share of the CPU the consumer and
/// Postgres compete for) until it applied `total` events or ten minutes
/// passed.
async fn drain(consumer: &Proc, metrics_addr: std::net::SocketAddr, total: u64) -> Option<Drained> {
    let client = reqwest::Client::new();
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(600);
    // (when, events applied, consumer CPU ticks, Postgres CPU ticks)
    let mut first: Option<(Instant, u64, u64, u64)> = None;
    let mut last = (Instant::now(), 0, 0, 0);
    while Instant::now() < deadline {
        let n = applied_events(&client, &metrics_url).await.unwrap_or(0);
        let sample = (Instant::now(), n, cpu_ticks(consumer.pid()).unwrap_or(0), postgres_cpu_ticks());
        if n > 0 && first.is_none() {
            first = Some(sample);
        }
        last = sample;
        if n >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (t0, n0, c0, p0) = first?;
    (last.1 > n0).then(|| Drained {
        applied: (last.1 - n0) as f64,
        seconds: (last.0 - t0).as_secs_f64(),
        consumer_ticks: last.2.saturating_sub(c0),
        postgres_ticks: last.3.saturating_sub(p0),
    })
}

/// The release consumer draining a topic of the events into a fresh
/// database, and its floor (the same rows with plain batched `INSERT`s and
/// no logic), interleaved `runs` times.
async fn bench_consumer(customers: usize, runs: usize) -> anyhow::Result<ConsumerFigures> {
    let events = normalised(&customer_flows(customers, 1_000_000));
    let mut figures = ConsumerFigures { events: events.len(), ..Default::default() };
    eprintln!("consumer: {} events over {customers} customers, {runs} runs", events.len());
    for _ in 0..runs {
        let (per_s, baseline_postgres) = baseline_insert(&events).await?;
        figures.baseline_per_s.push(per_s);
        figures.baseline_postgres_cpu_us_per_event.add(baseline_postgres);
        consume_once(&events, &mut figures).await?;
    }
    Ok(figures)
}

/// One drain of a topic filled with `events` by the release consumer.
async fn consume_once(events: &[ConnectEvent], figures: &mut ConsumerFigures) -> anyhow::Result<()> {
    let (events_topic, dlq_topic) = topics("consumer");
    let database = fresh_database("consumer").await?;
    let env = service_env(&database, events_topic.clone(), dlq_topic);
    let status = std::process::Command::new(connectflow_bin()?)
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(status.success(), "connectflow migrate failed");
    fill_topic(&events_topic, events)?;

    let pool = sqlx::PgPool::connect(&database).await?;
    let total = events.len() as u64;
    let ticks_per_s = clock_ticks();
    let metrics_addr = free_addr()?;
    let consumer = spawn_connectflow(
        "consume",
        &[env.as_slice(), &[("CONNECTFLOW_NO_MIGRATE", "true".into())]].concat(),
        Some(metrics_addr),
    )?;
    let drained = drain(&consumer, metrics_addr, total).await;
    // How the relay came by the changes it published by then.
    let client = reqwest::Client::new();
    let url = format!("http://{metrics_addr}/metrics");
    let published = counter(&client, &url, "connectflow_lifecycle_changes_published_total").await.unwrap_or(0);
    let handed_off = counter(&client, &url, "connectflow_lifecycle_changes_handed_off_total").await.unwrap_or(0);
    eprintln!("consumer: {published} changes published by the last event applied, {handed_off} of them handed off");
    let recorded = count_events(&pool).await;
    match drained {
        Some(drained) if recorded >= total as i64 => {
            figures.applied_per_s.push(drained.applied / drained.seconds);
            figures.cpu_us_per_event.add(us_per(drained.consumer_ticks, drained.applied, ticks_per_s));
            figures.postgres_cpu_us_per_event.add(us_per(drained.postgres_ticks, drained.applied, ticks_per_s));
        }
        _ => eprintln!("consumer: only {recorded} of {total} events recorded before the deadline"),
    }
    consumer.stop();
    pool.close().await;
    drop_database(&database).await;
    Ok(())
}

/// The consumer's floor: the same rows with plain batched `INSERT`s and no
/// logic; rows per second and Postgres's CPU per row.
async fn baseline_insert(events: &[ConnectEvent]) -> anyhow::Result<(f64, Option<f64>)> {
    let database = fresh_database("baseline").await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    connectflow::store::migrate(&pool).await?;
    let ticks_per_s = clock_ticks();
    let started = Instant::now();
    let postgres_before = postgres_cpu_ticks();
    for chunk in events.chunks(500) {
        let records: Vec<Value> = chunk.iter().map(|e| serde_json::to_value(e).unwrap_or(Value::Null)).collect();
        sqlx::query(
            "INSERT INTO connect_events (event_id, customer_id, event_type, occurred_at, received_at, record) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::jsonb[])",
        )
        .bind(chunk.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.customer_id.to_string()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.event_type.to_string()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.received_at).collect::<Vec<_>>())
        .bind(records)
        .execute(&pool)
        .await?;
    }
    let per_s = events.len() as f64 / started.elapsed().as_secs_f64();
    let postgres = us_per(postgres_cpu_ticks().saturating_sub(postgres_before), events.len() as f64, ticks_per_s);
    pool.close().await;
    drop_database(&database).await;
    Ok((per_s, postgres))
}

// ---------------------------------------------------------------- query API

#[derive(Debug, Default)]
struct ApiFigures {
    customers: i64,
    lookups_per_s: Runs,
    p99_ms: Runs,
    /// The floor: the same primary-key `SELECT` through a plain pool at the
    /// same concurrency, without HTTP, bearer check or access log.
    baseline_point_select_per_s: Runs,
    /// p95 of each `/v1/stats` route over the whole seeded window.
    stats: StatsFigures,
}

#[derive(Debug, Default)]
struct StatsFigures {
    funnel_p95_ms: Runs,
    timeseries_day_p95_ms: Runs,
    timeseries_hour_p95_ms: Runs,
    institutions_p95_ms: Runs,
    /// `/v1/customers` filtered as the console's "failing customers" link.
    failing_customers_p95_ms: Runs,
    requests: usize,
}

impl StatsFigures {
    /// The slowest route's p95 in each run.
    fn worst_p95_ms(&self) -> Runs {
        let routes = [
            &self.funnel_p95_ms,
            &self.timeseries_day_p95_ms,
            &self.timeseries_hour_p95_ms,
            &self.institutions_p95_ms,
            &self.failing_customers_p95_ms,
        ];
        let mut worst = Runs::default();
        for run in 0..self.funnel_p95_ms.values().len() {
            worst.add(routes.iter().filter_map(|route| route.values().get(run).copied()).reduce(f64::max));
        }
        worst
    }
}

/// Days of first events the seeded customers spread over.
const SEEDED_DAYS: i64 = 90;
/// Institutions the seeded customers chose among.
const SEEDED_INSTITUTIONS: i64 = 500;

/// Each flow's funnel columns (steps, authentication, reason, consent), from
/// the fold of its events: the seeded customers cycle through them.
fn flow_outcomes() -> (Vec<i16>, Vec<String>, Vec<Option<String>>, Vec<String>) {
    let mut outcomes = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, flow) in FLOWS.iter().enumerate() {
        let flows = vec![(format!("7{i:011}"), bodies(flow, &format!("7{i:011}"), Utc::now(), 1))];
        let state = connectflow::lifecycle::fold(&normalised(&flows));
        outcomes.0.push(state.funnel.steps.bits());
        outcomes.1.push(state.authentication.state.as_str().to_owned());
        outcomes.2.push(state.authentication.reason.map(|r| r.as_str().to_owned()));
        outcomes.3.push(state.consent.state.as_str().to_owned());
    }
    outcomes
}

/// Sequential requests to each `/v1/stats` route over the whole seeded
/// window (every customer counted: the worst case), as the console's
/// funnel screen makes them; p95 of each.
/// One run of `requests` sequential requests per statistics route; adds
/// each route's p95 to `figures`.
async fn bench_stats(addr: std::net::SocketAddr, requests: usize, figures: &mut StatsFigures) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let until = Utc::now() + chrono::Duration::hours(1);
    let since = until - chrono::Duration::days(SEEDED_DAYS + 1);
    let window = format!(
        "since={}&until={}",
        connectflow::event::rfc3339_ms::format(&since),
        connectflow::event::rfc3339_ms::format(&until)
    );
    let mut p95 = Vec::new();
    // The console's link from an institution to its failing customers.
    let failing = format!(
        "institution_id=100001&authentication=failed&first_event_since={}&first_event_until={}",
        connectflow::event::rfc3339_ms::format(&since),
        connectflow::event::rfc3339_ms::format(&until)
    );
    for path in [
        format!("/v1/stats/funnel?{window}"),
        format!("/v1/stats/timeseries?{window}&bucket=day"),
        format!("/v1/stats/timeseries?{window}&bucket=hour"),
        format!("/v1/stats/institutions?{window}&limit=50"),
        format!("/v1/customers?{failing}"),
    ] {
        let url = format!("http://{addr}{path}");
        let mut latencies_us = Vec::with_capacity(requests);
        for i in 0..requests + 3 {
            let started = Instant::now();
            let response = client.get(&url).bearer_auth(TOKEN).send().await?;
            anyhow::ensure!(response.status().is_success(), "{path}: {}", response.status());
            let body = response.bytes().await?;
            let elapsed = started.elapsed();
            if i == 0 && figures.requests == 0 {
                let answer: Value = serde_json::from_slice(&body)?;
                let customers = answer["customers"]
                    .as_i64()
                    .or_else(|| answer["customers"].as_array().map(|c| c.len() as i64))
                    .or_else(|| {
                        answer["buckets"].as_array().map(|b| b.iter().filter_map(|b| b["customers"].as_i64()).sum())
                    });
                eprintln!("api: {path} counted {customers:?} customers ({} bytes)", body.len());
            }
            // The first three warm the connection and the plan cache.
            if i >= 3 {
                latencies_us.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
            }
        }
        p95.push(percentile_ms(&latencies_us, 95.0));
    }
    figures.funnel_p95_ms.push(p95[0]);
    figures.timeseries_day_p95_ms.push(p95[1]);
    figures.timeseries_hour_p95_ms.push(p95[2]);
    figures.institutions_p95_ms.push(p95[3]);
    figures.failing_customers_p95_ms.push(p95[4]);
    figures.requests = requests;
    Ok(())
}

/// Stores `customers` customers (ids from 8000000001 on) with one realistic
/// lifecycle each, their funnel columns cycling through the flows' outcomes,
/// first events spread evenly over SEEDED_DAYS and institutions over
/// SEEDED_INSTITUTIONS (each institution with every flow); then
/// `VACUUM ANALYZE`, as autovacuum leaves a table whose rows have settled.
async fn seed_customers(pool: &sqlx::PgPool, customers: i64) -> anyhow::Result<()> {
    // One realistic lifecycle, stored for every customer.
    let flows = customer_flows(1, 0);
    let state = connectflow::lifecycle::fold(&normalised(&flows));
    let document = serde_json::to_value(&state)?;
    // The funnel columns the statistics count cycle through the flows'
    // outcomes; first events spread evenly over SEEDED_DAYS, institutions
    // over SEEDED_INSTITUTIONS, each institution with every flow (the
    // lookups read the document alone). Rows are written in the order
    // customers arrive, first events and updates rising with the id: written
    // newest first (until 2026-12-05), every insert split the leftmost leaf
    // of `customers_by_first_event` and left it half full (115 MB instead
    // of the 70 MB that customers arriving over time leave), so the
    // statistics scanned an index no real table has.
    let (steps, auth, reason, consent) = flow_outcomes();
    sqlx::query(
        "INSERT INTO customers (customer_id, consent_state, consent_since, auth_state, auth_since, auth_reason, \
           auth_error_code, last_event_id, last_event_type, last_occurred_at, event_count, lifecycle, updated_at, \
           first_event_at, funnel_steps, chosen_institution_id) \
         SELECT (8000000000 + g)::text, f.consent, now(), f.auth, now(), f.reason, NULL, \
                'e' || g, 'done', now(), 5, $1, now() - (($2 - g) || ' ms')::interval, \
                now() - make_interval(secs => (($2 - g) * 86400.0 * $7) / $2), f.steps, \
                (100000 + ((g / cardinality($3::int2[])) * 7919) % $8)::text \
         FROM generate_series(1, $2::bigint) AS g \
         JOIN UNNEST($3::int2[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS f(steps, auth, reason, consent, n) \
           ON f.n = g % cardinality($3::int2[]) + 1",
    )
    .bind(&document)
    .bind(customers)
    .bind(&steps)
    .bind(&auth)
    .bind(&reason)
    .bind(&consent)
    .bind(SEEDED_DAYS as f64)
    .bind(SEEDED_INSTITUTIONS)
    .execute(pool)
    .await?;
    // As autovacuum leaves a table whose rows have settled: the visibility
    // map lets the statistics' index-only scans skip the rows.
    sqlx::query("VACUUM ANALYZE customers").execute(pool).await?;
    Ok(())
}

async fn bench_api(customers: i64, seconds: u64, runs: usize) -> anyhow::Result<ApiFigures> {
    let database = fresh_database("api").await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    connectflow::store::migrate(&pool).await?;
    let seeded = Instant::now();
    seed_customers(&pool, customers).await?;
    let index_bytes: i64 =
        sqlx::query_scalar("SELECT pg_relation_size('customers_by_first_event')").fetch_one(&pool).await.unwrap_or(-1);
    eprintln!(
        "api: seeded {customers} customers in {:.1}s (customers_by_first_event: {} MB)",
        seeded.elapsed().as_secs_f64(),
        index_bytes / 1_000_000
    );
    pool.close().await;

    let addr = free_addr()?;
    let (events_topic, dlq_topic) = topics("api");
    let mut env = service_env(&database, events_topic, dlq_topic);
    env.push(("CONNECTFLOW_NO_MIGRATE", "true".into()));
    env.push(("CONNECTFLOW_DATABASE_MAX_CONNECTIONS", "16".into()));
    // The API's queries have a pool of their own: as many connections, and
    // no statistics cache, so the figures are the queries' cost.
    env.push(("CONNECTFLOW_API_MAX_CONNECTIONS", "16".into()));
    env.push(("CONNECTFLOW_STATS_CACHE_SECONDS", "0".into()));
    let server = spawn_connectflow("serve", &env, Some(addr))?;
    wait_for(&format!("http://{addr}/livez"), Duration::from_secs(30)).await?;
    // A pseudo-random spread of ids over the whole table.
    let ids: Arc<Vec<String>> =
        Arc::new((0..100_000u64).map(|i| (8_000_000_000 + 1 + (i * 7_919 % customers as u64)).to_string()).collect());
    let requests: Arc<Vec<Prepared>> = Arc::new(
        ids.iter()
            .map(|id| Prepared {
                method: hyper::Method::GET,
                path: format!("/v1/customers/{id}/lifecycle"),
                headers: vec![("authorization", format!("Bearer {TOKEN}"))],
                body: Bytes::new(),
            })
            .collect(),
    );
    let plain = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&database).await?;
    drive(addr, requests.clone(), API_CONCURRENCY, Duration::from_secs(2), None).await;
    point_selects(&plain, ids.clone(), Duration::from_secs(2)).await;
    let mut figures = ApiFigures { customers, ..Default::default() };
    for _ in 0..runs {
        figures
            .baseline_point_select_per_s
            .push(point_selects(&plain, ids.clone(), Duration::from_secs(seconds)).await);
        let result = drive(addr, requests.clone(), API_CONCURRENCY, Duration::from_secs(seconds), None).await;
        if result.failed > 0 {
            eprintln!("api: {} lookups failed (answers by status: {:?})", result.failed, result.failed_statuses);
        }
        figures.lookups_per_s.push(result.per_second());
        figures.p99_ms.push(result.percentile_ms(99.0));
        if let Err(e) = bench_stats(addr, 40, &mut figures.stats).await {
            eprintln!("stats bench failed: {e:#}");
        }
    }
    // A 503 of a lookup is the access log's queue full (fail closed) or the
    // API's pool exhausted: say which.
    if let Ok(text) = reqwest::get(format!("http://{addr}/metrics")).await?.text().await {
        for line in text.lines().filter(|line| {
            line.starts_with("connectflow_access_log_rejected_total ")
                || line.starts_with("connectflow_access_log_written_total ")
                || line.starts_with(
                    "connectflow_api_request_seconds_count{route=\"/v1/customers/{customer_id}/lifecycle\"",
                )
        }) {
            eprintln!("api: {line}");
        }
    }
    plain.close().await;
    server.stop();
    drop_database(&database).await;
    Ok(figures)
}

/// What the lookup reads of a customer's row: lifecycle, version,
/// updated_at, program.
type LookupRow = (Value, i64, chrono::DateTime<Utc>, String);

/// Concurrent lookups of the API bench, on both sides.
const API_CONCURRENCY: usize = 32;

/// The API lookup's floor: the row the lookup reads, by primary key,
/// through a plain pool from `API_CONCURRENCY` tasks for `duration`;
/// lookups per second.
async fn point_selects(pool: &sqlx::PgPool, ids: Arc<Vec<String>>, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..API_CONCURRENCY)
        .map(|_| {
            let (pool, ids, next) = (pool.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let id = &ids[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ids.len()];
                    let row: Result<Option<LookupRow>, _> = sqlx::query_as(
                        "SELECT lifecycle, version, updated_at, program_id FROM customers WHERE customer_id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&pool)
                    .await;
                    if matches!(row, Ok(Some(_))) {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0u64;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- end to end

/// One end-to-end run.
#[derive(Debug, Default)]
struct E2eRun {
    sampled: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    sent_per_s: Option<f64>,
    change_samples: usize,
    change_p50_ms: Option<f64>,
    change_p99_ms: Option<f64>,
    observer_reads_per_s: Option<f64>,
}

/// Every end-to-end run, at `rate` webhooks/s: `E2E_SHARE` of the
/// receiver's capacity measured in the same bench.
#[derive(Debug, Default)]
struct E2eFigures {
    rate: f64,
    sampled: usize,
    change_samples: usize,
    p50_ms: Runs,
    p99_ms: Runs,
    sent_per_s: Runs,
    change_p50_ms: Runs,
    change_p99_ms: Runs,
    observer_reads_per_s: Runs,
}

/// The end-to-end rate's share of the receiver's measured capacity
/// (`BENCH_E2E_SHARE`, default 0.10): a load the service should carry with
/// room to spare on any machine, not a fixed figure that is light on one
/// machine and near capacity on another.
fn e2e_share() -> f64 {
    std::env::var("BENCH_E2E_SHARE").ok().and_then(|v| v.parse().ok()).filter(|v: &f64| *v > 0.0).unwrap_or(0.10)
}

/// A fixed end-to-end rate (`BENCH_E2E_RATE`, webhooks/s) instead of a
/// share of the capacity measured: `bench e2e` alone measures that capacity
/// in one 3 s run, which varies by half from one start of the services to
/// the next, so two settings of the service can only be compared at a rate
/// given.
fn e2e_fixed_rate() -> Option<f64> {
    std::env::var("BENCH_E2E_RATE").ok().and_then(|v| v.parse().ok()).filter(|v: &f64| *v > 0.0)
}

/// `runs` end-to-end runs at `rate`, each on a fresh database and topics.
async fn bench_e2e(rate: f64, seconds: u64, runs: usize) -> E2eFigures {
    let mut figures = E2eFigures { rate, ..Default::default() };
    for _ in 0..runs {
        match e2e_once(rate, seconds).await {
            Ok(run) => {
                figures.sampled += run.sampled;
                figures.change_samples += run.change_samples;
                figures.p50_ms.add(run.p50_ms);
                figures.p99_ms.add(run.p99_ms);
                figures.sent_per_s.add(run.sent_per_s);
                figures.change_p50_ms.add(run.change_p50_ms);
                figures.change_p99_ms.add(run.change_p99_ms);
                figures.observer_reads_per_s.add(run.observer_reads_per_s);
            }
            Err(e) => eprintln!("e2e run failed: {e:#}"),
        }
    }
    figures
}

/// Reads the lifecycle-changes topic from the start until `stop`, noting
/// when each change record became readable, by the event ids that caused it.
fn read_changes(topic: String, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<(Vec<String>, Instant)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let mut seen = Vec::new();
    let Ok(reader) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("bench-changes-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create::<BaseConsumer>()
    else {
        return seen;
    };
    if reader.subscribe(&[&topic]).is_err() {
        return seen;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(Ok(message)) = reader.poll(Duration::from_millis(50)) else { continue };
        let at = Instant::now();
        let Some(change) = message.payload().and_then(|p| serde_json::from_slice::<Value>(p).ok()) else { continue };
        let causes: Vec<String> = change["caused_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["event_id"].as_str().map(str::to_owned))
            .collect();
        seen.push((causes, at));
    }
    seen
}

/// Where in the run the changes slower than 100 ms were (`BENCH_E2E_METRICS`):
/// per second of the run, how many changes were readable and how many of
/// them late. Late changes bunched in a few seconds are a pause (a
/// checkpoint, autovacuum); spread over the run, they are queueing.
fn print_slow_changes(
    changes: &[(Vec<String>, Instant)],
    acked: &std::collections::HashMap<String, Instant>,
    started: Instant,
) {
    let mut per_second: std::collections::BTreeMap<u64, (usize, usize, u128)> = std::collections::BTreeMap::new();
    for (causes, readable) in changes {
        let Some(answered) = causes.iter().filter_map(|id| acked.get(id)).max() else { continue };
        let late = readable.saturating_duration_since(*answered).as_millis();
        let second = readable.saturating_duration_since(started).as_secs();
        let entry = per_second.entry(second).or_default();
        entry.0 += 1;
        if late > 100 {
            entry.1 += 1;
        }
        entry.2 = entry.2.max(late);
    }
    let line: Vec<String> =
        per_second.iter().map(|(second, (all, late, worst))| format!("{second}s:{late}/{all}<={worst}ms")).collect();
    eprintln!("e2e changes late (>100 ms) per second of the run: {}", line.join(" "));
}

/// A statement running too long: pid, wait event type and name, seconds,
/// the start of its text.
type SlowStatement = (i32, Option<String>, Option<String>, f64, String);

/// Prints, once a second until `stop`, each statement on `database` that has
/// been running for over a second, with what it waits for
/// (`pg_stat_activity`: no wait event is CPU; `Lock` another transaction;
/// `ClientWrite` a client not reading). So a stall leaves its evidence in the
/// run that had it: a relay claim once took 25 s in a `make bench` and did
/// not come back in the runs made to look at it. One cheap query a second;
/// nothing is printed when nothing is slow.
fn watch_slow_statements(database: String, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(pool) = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&database).await else {
            return;
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let slow: Vec<SlowStatement> = sqlx::query_as(
                "SELECT pid, wait_event_type, wait_event, extract(epoch FROM now() - query_start)::float8, \
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 100) \
                 FROM pg_stat_activity \
                 WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid() \
                   AND now() - query_start > interval '1 second'",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for (pid, wait_type, wait, seconds, query) in slow {
                let waiting = match (wait_type, wait) {
                    (Some(kind), Some(event)) => format!("{kind}/{event}"),
                    _ => "nothing: on CPU".to_owned(),
                };
                eprintln!("e2e: a statement running for {seconds:.1}s (pid {pid}, waiting for {waiting}): {query}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        pool.close().await;
    })
}

/// Event ids answered 200, with when.
type Acked = Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

/// Seconds of traffic before the e2e bench measures.
const E2E_WARM_UP_S: u64 = 5;

/// One customer in `E2E_SAMPLE_EVERY` is followed to the API, which is
/// polled every `E2E_POLL` until it shows the customer's last event. The
/// observer must stay a small share of the load it measures: following one
/// customer in five every 2 ms made about 8,000 lookups/s at 4,400
/// webhooks/s and 80 ms of latency, as many as the API answers on this
/// machine, and the latency it measured was mostly its own. Now it is about
/// 50 customers/s at that rate, some hundreds of lookups/s
/// (`e2e_observer_reads_per_s`); the poll adds 0 to 5 ms to each sample.
const E2E_SAMPLE_EVERY: usize = 20;
const E2E_POLL: Duration = Duration::from_millis(5);

/// A body ready to send: its event id, bytes and signature.
type SignedBody = (Option<String>, Vec<u8>, String);

/// Webhooks on their way: one task per customer.
struct Sending {
    tasks: Vec<tokio::task::JoinHandle<Option<u32>>>,
    sent: usize,
    /// Lookups the observer made.
    reads: Arc<std::sync::atomic::AtomicU64>,
}

/// Sends customers' flows (ids from `first` on) at a steady `rate`
/// webhooks/s for `seconds`. With `acked`, notes when each event was answered
/// 200, and one customer's task in `E2E_SAMPLE_EVERY` then polls the
/// lifecycle API until it shows the customer's last event: its result is
/// that time, in µs.
fn send_at_rate(
    client: &reqwest::Client,
    base: &str,
    rate: f64,
    seconds: u64,
    first: usize,
    acked: Option<Acked>,
) -> Sending {
    // Events per customer, averaged over the flows the customers cycle through.
    let sample = customer_flows(FLOWS.len(), 0);
    let average_flow = sample.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / sample.len() as f64;
    let customers = ((rate * seconds as f64) / average_flow) as usize + 1;
    // Serialised and signed before the clock starts, as the receiver bench's
    // requests are: the load generator shares the 2 cores with what it
    // measures, and its own work should not be counted as the pipeline's.
    let flows: Vec<(String, Vec<SignedBody>)> = customer_flows(customers, first)
        .into_iter()
        .map(|(customer, bodies)| {
            let signed = bodies
                .iter()
                .map(|body| {
                    let raw = serde_json::to_vec(body).unwrap_or_default();
                    let signature = sign(SECRET, &raw);
                    (body["eventId"].as_str().map(str::to_owned), raw, signature)
                })
                .collect();
            (customer, signed)
        })
        .collect();
    let per_customer = Duration::from_secs_f64(average_flow / rate);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let mut sent = 0usize;
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (i, (customer, bodies)) in flows.into_iter().enumerate() {
        let at = started + per_customer.mul_f64(i as f64);
        if at >= deadline {
            break;
        }
        sent += bodies.len();
        let client = client.clone();
        let base = base.to_owned();
        let acked = acked.clone();
        let sample = acked.is_some() && i % E2E_SAMPLE_EVERY == 0;
        let reads = reads.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let step = Duration::from_secs_f64(1.0 / rate * 50.0).min(Duration::from_millis(20));
            let mut answered = None;
            for (event_id, raw, signature) in bodies.iter() {
                let ok = client
                    .post(format!("{base}/webhooks/finicity/connect"))
                    .header("content-type", "application/json")
                    .header("x-finicity-signature", signature)
                    .body(raw.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    return None;
                }
                let now = Instant::now();
                answered = Some(now);
                if let Some(acked) = &acked
                    && let Some(event_id) = event_id
                    && let Ok(mut acked) = acked.lock()
                {
                    acked.insert(event_id.clone(), now);
                }
                tokio::time::sleep(step).await;
            }
            if !sample {
                return None;
            }
            // The last event was answered: poll until the API shows it.
            let answered = answered?;
            let want = bodies.len() as u64;
            let path = format!("{base}/v1/customers/{customer}/lifecycle");
            let give_up = Instant::now() + Duration::from_secs(30);
            while Instant::now() < give_up {
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(response) = client.get(&path).bearer_auth(TOKEN).send().await
                    && let Ok(body) = response.json::<Value>().await
                    && body["event_count"].as_u64() == Some(want)
                {
                    return Some(answered.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                tokio::time::sleep(E2E_POLL).await;
            }
            None
        }));
    }
    Sending { tasks, sent, reads }
}

/// `VACUUM ANALYZE` of a bench database's own tables (the shared catalogs
/// are the superuser's).
async fn vacuum_analyze(database: &str) -> anyhow::Result<()> {
    use sqlx::ConnectOptions;
    let mut conn = database.parse::<sqlx::postgres::PgConnectOptions>()?.connect().await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(&mut conn)
            .await?;
    if !tables.is_empty() {
        let statement = format!("VACUUM ANALYZE {}", tables.join(", "));
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.context("VACUUM ANALYZE")?;
    }
    Ok(())
}

/// At a steady `rate` webhooks/s for `seconds`, the time from the receiver's
/// 200 for a customer's last event to the lifecycle API showing it.
async fn e2e_once(rate: f64, seconds: u64) -> anyhow::Result<E2eRun> {
    let database = fresh_database("e2e").await?;
    let (events_topic, dlq_topic) = topics("e2e");
    let addr = free_addr()?;
    let changes_topic = events_topic.replace(".events", ".changes");
    let service = spawn_connectflow("all", &service_env(&database, events_topic, dlq_topic), Some(addr))?;
    wait_for(&format!("http://{addr}/readyz"), Duration::from_secs(60)).await?;
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop_reading.clone();
        std::thread::spawn(move || read_changes(changes_topic, stop))
    };
    let acked: Acked = Arc::default();
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let base = format!("http://{addr}");
    // Warm up on other customers, then give the tables statistics and a
    // visibility map, as a running service's have: otherwise autovacuum's
    // first visit to a database grown from nothing within seconds (about two
    // seconds of both cores here) lands in the measurement or not, by chance,
    // and decides the p99.
    let warm_up = send_at_rate(&client, &base, rate, E2E_WARM_UP_S, 3_000_000, None);
    for task in warm_up.tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    vacuum_analyze(&database).await?;
    let stop_watching = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_slow_statements(database.clone(), stop_watching.clone());
    let started = Instant::now();
    let Sending { tasks, sent, reads } = send_at_rate(&client, &base, rate, seconds, 2_000_000, Some(acked.clone()));
    let mut latencies = Vec::new();
    for task in tasks {
        if let Ok(Some(latency)) = task.await {
            latencies.push(latency);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last changes through, then match them with the 200s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    let changes = tokio::task::spawn_blocking(move || reader.join().unwrap_or_default()).await?;
    if std::env::var_os("BENCH_E2E_METRICS").is_some()
        && let Ok(response) = client.get(format!("{base}/metrics")).send().await
        && let Ok(text) = response.text().await
    {
        for line in text.lines().filter(|l| (l.contains("_sum") || l.contains("_count")) && !l.starts_with('#')) {
            eprintln!("e2e metrics: {line}");
        }
    }
    service.stop();
    drop_database(&database).await;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let change_latencies: Vec<u32> = changes
        .iter()
        .filter_map(|(causes, readable)| {
            let answered = causes.iter().filter_map(|id| acked.get(id)).max()?;
            Some(readable.saturating_duration_since(*answered).as_micros().min(u32::MAX as u128) as u32)
        })
        .collect();
    if std::env::var_os("BENCH_E2E_METRICS").is_some() {
        print_slow_changes(&changes, &acked, started);
    }
    Ok(E2eRun {
        sampled: latencies.len(),
        p50_ms: Some(percentile_ms(&latencies, 50.0)).filter(|v| v.is_finite()),
        p99_ms: Some(percentile_ms(&latencies, 99.0)).filter(|v| v.is_finite()),
        sent_per_s: Some(sent as f64 / elapsed),
        change_samples: change_latencies.len(),
        change_p50_ms: Some(percentile_ms(&change_latencies, 50.0)).filter(|v| v.is_finite()),
        change_p99_ms: Some(percentile_ms(&change_latencies, 99.0)).filter(|v| v.is_finite()),
        observer_reads_per_s: Some(reads.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed),
    })
}

// ---------------------------------------------------------------- report

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(str::trim);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<f64> = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": mem_kib.map(|k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0),
    })
}

fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A figure for the table: `n/a` when it was not run or failed (the
/// failure is on stderr).
fn fmt(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") })
}

fn round(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |v| json!((v * 100.0).round() / 100.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("baseline-server") {
        return baseline_server(args.get(1).map_or("127.0.0.1:0", String::as_str)).await;
    }
    let what = args.first().map_or("all", String::as_str);
    if what == "normalise" {
        return bench_normalise();
    }
    let quick = std::env::var("CONNECTFLOW_BENCH_QUICK").is_ok();
    let runs = bench_runs();
    find_postmaster().await;
    let seconds = if quick { 3 } else { 8 };
    let run = |name: &str| what == "all" || what == name;
    if let Err(e) = warm_up().await {
        eprintln!("warm-up failed: {e:#}");
    }

    let fixed_rate = e2e_fixed_rate();
    let receiver = if run("receiver") || (run("e2e") && fixed_rate.is_none()) {
        // `bench e2e` alone still needs the capacity it takes a share of.
        let (seconds, runs) = if run("receiver") { (seconds, runs) } else { (3, 1) };
        bench_receiver(seconds, runs).await.unwrap_or_else(|e| {
            eprintln!("receiver bench failed: {e:#}");
            ReceiverFigures::default()
        })
    } else {
        ReceiverFigures::default()
    };
    let consumer = if run("consumer") {
        bench_consumer(if quick { 10_000 } else { 100_000 }, runs).await.unwrap_or_else(|e| {
            eprintln!("consumer bench failed: {e:#}");
            ConsumerFigures::default()
        })
    } else {
        ConsumerFigures::default()
    };
    let api = if run("api") {
        bench_api(if quick { 100_000 } else { 1_000_000 }, seconds, runs).await.unwrap_or_else(|e| {
            eprintln!("api bench failed: {e:#}");
            ApiFigures::default()
        })
    } else {
        ApiFigures::default()
    };
    let e2e_seconds = if quick { 10 } else { 30 };
    let e2e = match (fixed_rate, receiver.accepted_per_s.median()) {
        (Some(rate), _) if run("e2e") => bench_e2e(rate, e2e_seconds, runs).await,
        (None, Some(capacity)) if run("e2e") => bench_e2e(capacity * e2e_share(), e2e_seconds, runs).await,
        (None, None) if run("e2e") => {
            eprintln!("e2e bench skipped: no receiver capacity measured to take its rate from");
            E2eFigures::default()
        }
        _ => E2eFigures::default(),
    };

    let replica = if run("replica") {
        replica::bench_replica(
            if quick { 50_000 } else { 300_000 },
            if quick { 3_000 } else { 30_000 },
            if quick { 1 } else { runs },
        )
        .await
    } else {
        replica::ReplicaFigures { skipped: Some("not run".into()), ..Default::default() }
    };

    let health = if run("health") {
        health::bench_health(
            if quick { 100_000 } else { 1_000_000 },
            if quick { 20_000 } else { 200_000 },
            runs * 2 - 1,
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("health bench failed: {e:#}");
            health::HealthFigures::default()
        })
    } else {
        health::HealthFigures::default()
    };

    let rate = e2e.rate;
    println!();
    println!("{:<46} {:>10} {:>18} {:>10}", "measure (median of runs)", "value", "runs min..max", "baseline");
    let rows: Vec<(String, &Runs, Option<&Runs>)> = vec![
        ("receiver accepted webhooks/s (256 conns)".into(), &receiver.accepted_per_s, Some(&receiver.baseline_per_s)),
        ("receiver p50 ms (full speed)".into(), &receiver.p50_ms, None),
        ("receiver p99 ms (full speed)".into(), &receiver.p99_ms, Some(&receiver.baseline_p99_ms)),
        ("receiver p99 ms at a steady 5,000/s".into(), &receiver.p99_ms_at_5k, None),
        ("receiver peak RSS MiB".into(), &receiver.rss_mib, None),
        (
            "receiver CPU us per webhook (full speed)".into(),
            &receiver.cpu_us_per_webhook,
            Some(&receiver.baseline_cpu_us_per_request),
        ),
        ("consumer events applied/s".into(), &consumer.applied_per_s, Some(&consumer.baseline_per_s)),
        ("consumer CPU us per event".into(), &consumer.cpu_us_per_event, None),
        (
            "postgres CPU us per event (consumer run)".into(),
            &consumer.postgres_cpu_us_per_event,
            Some(&consumer.baseline_postgres_cpu_us_per_event),
        ),
        ("api lookups/s (32 conns)".into(), &api.lookups_per_s, Some(&api.baseline_point_select_per_s)),
        ("api p99 ms".into(), &api.p99_ms, None),
        ("stats funnel p95 ms (all customers)".into(), &api.stats.funnel_p95_ms, None),
        ("stats timeseries p95 ms (by day)".into(), &api.stats.timeseries_day_p95_ms, None),
        ("stats timeseries p95 ms (by hour)".into(), &api.stats.timeseries_hour_p95_ms, None),
        ("stats institutions p95 ms".into(), &api.stats.institutions_p95_ms, None),
        ("an institution's failing customers p95 ms".into(), &api.stats.failing_customers_p95_ms, None),
        (format!("end to end p50 ms at {rate:.0}/s"), &e2e.p50_ms, None),
        (format!("end to end p99 ms at {rate:.0}/s"), &e2e.p99_ms, None),
        (format!("200 to change on topic p50 ms at {rate:.0}/s"), &e2e.change_p50_ms, None),
        (format!("200 to change on topic p99 ms at {rate:.0}/s"), &e2e.change_p99_ms, None),
        ("end to end: the observer's lookups/s".into(), &e2e.observer_reads_per_s, None),
        (
            "consumer events/s, statistics on the primary".into(),
            &replica.stats_on_primary_per_s,
            Some(&replica.alone_per_s),
        ),
        (
            "consumer events/s, statistics on the standby".into(),
            &replica.stats_on_replica_per_s,
            Some(&replica.alone_per_s),
        ),
        ("statistics answered/s, on the primary".into(), &replica.primary_stats_per_s, None),
        ("statistics answered/s, on the standby".into(), &replica.replica_stats_per_s, None),
        ("health: institutions evaluated, first ms".into(), &health.first_evaluation_ms, None),
        ("health: institutions evaluated, median ms".into(), &health.evaluation_ms, None),
        ("health: lapses and warnings, first round ms".into(), &health.first_expiry_ms, None),
        ("health: lapses and warnings, steady ms".into(), &health.expiry_ms, None),
    ];
    for (name, value, baseline) in &rows {
        let baseline = baseline.and_then(Runs::median).map(|b| fmt(Some(b))).unwrap_or_default();
        println!("{name:<46} {:>10} {:>18} {baseline:>10}", fmt(value.median()), value.spread());
    }
    println!(
        "(medians of {runs} runs, each measure interleaved with its baseline; receiver and api runs of {seconds}s; consumer: {} events a run; api: {} customers, stats: {} sequential requests per route a run; e2e: {:.0} webhooks/s = {}, {} sampled, {} changes)",
        consumer.events,
        api.customers,
        api.stats.requests,
        rate,
        match e2e_fixed_rate() {
            Some(_) => "fixed (BENCH_E2E_RATE)".to_owned(),
            None => format!("{:.0} % of the receiver's capacity", e2e_share() * 100.0),
        },
        e2e.sampled,
        e2e.change_samples,
    );
    match &replica.skipped {
        Some(why) => println!("(replica: {why})"),
        None => println!(
            "(replica: baseline the consumer alone; {} events, {} customers seeded, statistics from {} clients without pause; {} runs)",
            replica.events,
            replica.customers,
            replica::STATS_CLIENTS,
            replica.runs
        ),
    }
    if health.sessions > 0 {
        println!(
            "(health: {} customers authorized over a year, {} sessions in the window at {} institutions; the first expiry round announced {} warnings; medians of the {} rounds after the first)",
            health.customers,
            health.sessions,
            health::INSTITUTIONS,
            health.first_warnings,
            health.runs
        );
    }

    // The targets: ratios to a baseline of the same run, or latencies at a
    // rate taken from one (docs/benchmarks.md says why each floor).
    let targets = [
        Target {
            name: "receiver CPU per webhook / HMAC-only floor",
            figure: receiver.cpu_us_per_webhook.ratios(&receiver.baseline_cpu_us_per_request),
            bound: Bound::AtMost(2.0),
        },
        Target {
            name: "consumer applied/s / plain batched insert",
            figure: consumer.applied_per_s.ratios(&consumer.baseline_per_s),
            bound: Bound::AtLeast(0.7),
        },
        Target {
            name: "api lookups/s / plain point select",
            figure: api.lookups_per_s.ratios(&api.baseline_point_select_per_s),
            bound: Bound::AtLeast(0.5),
        },
        Target { name: "e2e p99 ms at 10 % of capacity", figure: e2e.p99_ms.clone(), bound: Bound::AtMost(100.0) },
        Target {
            name: "200 to change p99 ms at 10 % of capacity",
            figure: e2e.change_p99_ms.clone(),
            bound: Bound::AtMost(100.0),
        },
        Target {
            name: "statistics p95 ms, slowest route",
            figure: api.stats.worst_p95_ms(),
            bound: Bound::AtMost(250.0),
        },
    ];
    println!();
    println!("{:<46} {:>10} {:>18} {:>10}   ", "target", "median", "runs min..max", "bound");
    for target in &targets {
        let verdict = match target.met() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!(
            "{:<46} {:>10} {:>18} {:>10}   {verdict}",
            target.name,
            fmt(target.figure.median()),
            target.figure.spread(),
            target.bound_text()
        );
    }

    let mut summary = serde_json::Map::new();
    for (name, figure) in [
        ("receiver_accepted_per_s", &receiver.accepted_per_s),
        ("receiver_p50_ms", &receiver.p50_ms),
        ("receiver_p99_ms", &receiver.p99_ms),
        ("receiver_p99_ms_at_5k", &receiver.p99_ms_at_5k),
        ("receiver_rss_mib", &receiver.rss_mib),
        ("baseline_hmac_http_per_s", &receiver.baseline_per_s),
        ("baseline_hmac_http_p99_ms", &receiver.baseline_p99_ms),
        ("receiver_cpu_us_per_webhook", &receiver.cpu_us_per_webhook),
        ("baseline_hmac_cpu_us_per_request", &receiver.baseline_cpu_us_per_request),
        ("consumer_applied_per_s", &consumer.applied_per_s),
        ("baseline_pg_batch_insert_per_s", &consumer.baseline_per_s),
        ("consumer_cpu_us_per_event", &consumer.cpu_us_per_event),
        ("postgres_cpu_us_per_event", &consumer.postgres_cpu_us_per_event),
        ("baseline_pg_batch_insert_postgres_cpu_us_per_event", &consumer.baseline_postgres_cpu_us_per_event),
        ("api_lookups_per_s", &api.lookups_per_s),
        ("api_p99_ms", &api.p99_ms),
        ("baseline_pg_point_select_per_s", &api.baseline_point_select_per_s),
        ("stats_funnel_p95_ms", &api.stats.funnel_p95_ms),
        ("stats_timeseries_day_p95_ms", &api.stats.timeseries_day_p95_ms),
        ("stats_timeseries_hour_p95_ms", &api.stats.timeseries_hour_p95_ms),
        ("stats_institutions_p95_ms", &api.stats.institutions_p95_ms),
        ("failing_customers_p95_ms", &api.stats.failing_customers_p95_ms),
        ("e2e_p50_ms", &e2e.p50_ms),
        ("e2e_p99_ms", &e2e.p99_ms),
        ("e2e_sent_per_s", &e2e.sent_per_s),
        ("change_p50_ms", &e2e.change_p50_ms),
        ("change_p99_ms", &e2e.change_p99_ms),
        ("e2e_observer_reads_per_s", &e2e.observer_reads_per_s),
        ("consumer_alone_per_s", &replica.alone_per_s),
        ("consumer_with_stats_on_primary_per_s", &replica.stats_on_primary_per_s),
        ("consumer_with_stats_on_replica_per_s", &replica.stats_on_replica_per_s),
        ("stats_answered_on_primary_per_s", &replica.primary_stats_per_s),
        ("stats_answered_on_replica_per_s", &replica.replica_stats_per_s),
        ("health_first_evaluation_ms", &health.first_evaluation_ms),
        ("health_evaluation_ms", &health.evaluation_ms),
        ("health_first_expiry_ms", &health.first_expiry_ms),
        ("health_expiry_ms", &health.expiry_ms),
    ] {
        put(&mut summary, name, figure);
    }
    summary.insert("e2e_rate_per_s".into(), round(Some(rate)));
    // No share when the rate was fixed (BENCH_E2E_RATE).
    summary.insert("e2e_share_of_capacity".into(), json!(e2e_fixed_rate().is_none().then(e2e_share)));
    summary.insert("runs".into(), json!(runs));
    summary.insert(
        "targets".into(),
        Value::Object(targets.iter().map(|target| (target.name.to_owned(), target.json())).collect()),
    );
    summary.insert("machine".into(), machine());
    summary.insert("git_commit".into(), json!(git_commit()));
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/summary.json", serde_json::to_string_pretty(&Value::Object(summary))?)?;
    println!("wrote target/bench/summary.json");
    Ok(())
}

/// Before the first run: Kafka's log and page cache, Postgres's buffers
/// and WAL, and the first connections warmed by a small round of the
/// consumer's work, so that the first measured run is not always the
/// slowest (as it was right after `make services`).
async fn warm_up() -> anyhow::Result<()> {
    let started = Instant::now();
    let events = normalised(&customer_flows(2_000, 5_000_000));
    let (topic, _) = topics("warm-up");
    fill_topic(&topic, &events)?;
    baseline_insert(&events).await?;
    eprintln!("bench: warmed up Kafka and Postgres in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
