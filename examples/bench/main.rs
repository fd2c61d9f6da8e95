//! connectflow's benchmarks: `cargo run --release --example bench -- [all|receiver|consumer|api|e2e|replica|health]`
//! (`make bench` builds and runs `all`). Each figure comes with a baseline
//! measured in the same run on the same machine; nothing here asserts a
//! speed. Results print as a table and go to `target/bench/summary.json`.

mod health;
mod load;
mod procs;
mod replica;

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

const RUNS: usize = 3;

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
    accepted_per_s: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p99_ms_at_5k: Option<f64>,
    rss_mib: Option<f64>,
    cpu_us_per_webhook: Option<f64>,
    baseline_cpu_us_per_request: Option<f64>,
    baseline_per_s: Option<f64>,
    baseline_p99_ms: Option<f64>,
}

async fn bench_receiver(seconds: u64) -> anyhow::Result<ReceiverFigures> {
    let requests: Arc<Vec<Prepared>> =
        Arc::new(customer_flows(6_000, 0).iter().flat_map(|(_, b)| b.iter().map(signed_webhook)).collect());
    let duration = Duration::from_secs(seconds);
    let connections = std::env::var("CONNECTFLOW_BENCH_CONNECTIONS").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    let mut figures = ReceiverFigures::default();

    // Baseline: a bare endpoint that only verifies the HMAC.
    let addr = free_addr()?;
    let baseline = spawn_baseline(addr)?;
    wait_for_port(addr, Duration::from_secs(10)).await?;
    drive(addr, requests.clone(), connections, Duration::from_secs(1), None).await;
    let mut rates = Vec::new();
    let mut p99s = Vec::new();
    let mut cpu = Vec::new();
    let ticks_per_s = clock_ticks();
    for _ in 0..RUNS {
        let before = cpu_ticks(baseline.pid());
        let result = drive(addr, requests.clone(), connections, duration, None).await;
        let used = before.zip(cpu_ticks(baseline.pid())).map(|(b, a)| a.saturating_sub(b));
        cpu.extend(used.and_then(|t| us_per(t, result.ok as f64, ticks_per_s)));
        rates.push(result.per_second());
        p99s.push(result.percentile_ms(99.0));
    }
    figures.baseline_cpu_us_per_request = median(cpu);
    figures.baseline_per_s = median(rates);
    figures.baseline_p99_ms = median(p99s);
    baseline.stop();

    // The release receiver on real Kafka.
    let (events_topic, dlq_topic) = topics("receiver");
    let database = fresh_database("receiver").await?;
    let addr = free_addr()?;
    let receiver = spawn_connectflow("serve", &service_env(&database, events_topic, dlq_topic), Some(addr))?;
    wait_for(&format!("http://{addr}/readyz"), Duration::from_secs(60)).await?;
    drive(addr, requests.clone(), connections, Duration::from_secs(2), None).await;
    let (mut rates, mut p50s, mut p99s, mut steady, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let before = cpu_ticks(receiver.pid());
        let result = drive(addr, requests.clone(), connections, duration, None).await;
        let used = before.zip(cpu_ticks(receiver.pid())).map(|(b, a)| a.saturating_sub(b));
        cpu.extend(used.and_then(|t| us_per(t, result.ok as f64, ticks_per_s)));
        if result.failed > 0 {
            eprintln!("receiver: {} requests failed at full speed", result.failed);
        }
        rates.push(result.per_second());
        p50s.push(result.percentile_ms(50.0));
        p99s.push(result.percentile_ms(99.0));
        let result = drive(addr, requests.clone(), 32, duration, Some(5_000.0)).await;
        if result.failed > 0 {
            eprintln!("receiver: {} requests failed at 5,000/s", result.failed);
        }
        steady.push(result.percentile_ms(99.0));
    }
    figures.accepted_per_s = median(rates);
    figures.p50_ms = median(p50s);
    figures.p99_ms = median(p99s);
    figures.p99_ms_at_5k = median(steady);
    figures.cpu_us_per_webhook = median(cpu);
    figures.rss_mib = receiver.peak_rss_mib();
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
    applied_per_s: Option<f64>,
    baseline_per_s: Option<f64>,
    cpu_us_per_event: Option<f64>,
    postgres_cpu_us_per_event: Option<f64>,
    baseline_postgres_cpu_us_per_event: Option<f64>,
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
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let line = text.lines().find(|line| line.starts_with("connectflow_events_applied_total "))?;
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

async fn bench_consumer(customers: usize) -> anyhow::Result<ConsumerFigures> {
    let events = normalised(&customer_flows(customers, 1_000_000));
    let mut figures = ConsumerFigures { events: events.len(), ..Default::default() };
    eprintln!("consumer: {} events over {customers} customers", events.len());

    // Fill the topic.
    let (events_topic, dlq_topic) = topics("consumer");
    let database = fresh_database("consumer").await?;
    let env = service_env(&database, events_topic.clone(), dlq_topic);
    let status = std::process::Command::new(connectflow_bin()?)
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(status.success(), "connectflow migrate failed");
    fill_topic(&events_topic, &events)?;

    // Drain it with the release consumer.
    let pool = sqlx::PgPool::connect(&database).await?;
    let total = events.len() as u64;
    let ticks_per_s = clock_ticks();
    let metrics_addr = free_addr()?;
    let consumer = spawn_connectflow(
        "consume",
        &[env.as_slice(), &[("CONNECTFLOW_NO_MIGRATE", "true".into())]].concat(),
        Some(metrics_addr),
    )?;
    if let Some(drained) = drain(&consumer, metrics_addr, total).await {
        figures.applied_per_s = Some(drained.applied / drained.seconds);
        figures.cpu_us_per_event = us_per(drained.consumer_ticks, drained.applied, ticks_per_s);
        figures.postgres_cpu_us_per_event = us_per(drained.postgres_ticks, drained.applied, ticks_per_s);
    }
    let recorded = count_events(&pool).await;
    if recorded < total as i64 {
        eprintln!("consumer: only {recorded} of {total} events recorded before the deadline");
        figures.applied_per_s = None;
    }
    consumer.stop();
    pool.close().await;
    drop_database(&database).await;

    // Baseline: the same rows with plain batched INSERTs and no logic.
    let database = fresh_database("baseline").await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    connectflow::store::migrate(&pool).await?;
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
    figures.baseline_per_s = Some(events.len() as f64 / started.elapsed().as_secs_f64());
    figures.baseline_postgres_cpu_us_per_event =
        us_per(postgres_cpu_ticks().saturating_sub(postgres_before), events.len() as f64, ticks_per_s);
    pool.close().await;
    drop_database(&database).await;
    Ok(figures)
}

// ---------------------------------------------------------------- query API

#[derive(Debug, Default)]
struct ApiFigures {
    customers: i64,
    lookups_per_s: Option<f64>,
    p99_ms: Option<f64>,
    /// p95 of each `/v1/stats` route over the whole seeded window.
    stats: StatsFigures,
}

#[derive(Debug, Default)]
struct StatsFigures {
    funnel_p95_ms: Option<f64>,
    timeseries_day_p95_ms: Option<f64>,
    timeseries_hour_p95_ms: Option<f64>,
    institutions_p95_ms: Option<f64>,
    /// `/v1/customers` filtered as the console's "failing customers" link.
    failing_customers_p95_ms: Option<f64>,
    requests: usize,
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
async fn bench_stats(addr: std::net::SocketAddr, requests: usize) -> anyhow::Result<StatsFigures> {
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
            if i == 0 {
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
    Ok(StatsFigures {
        funnel_p95_ms: Some(p95[0]),
        timeseries_day_p95_ms: Some(p95[1]),
        timeseries_hour_p95_ms: Some(p95[2]),
        institutions_p95_ms: Some(p95[3]),
        failing_customers_p95_ms: Some(p95[4]),
        requests,
    })
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
    // lookups read the document alone).
    let (steps, auth, reason, consent) = flow_outcomes();
    sqlx::query(
        "INSERT INTO customers (customer_id, consent_state, consent_since, auth_state, auth_since, auth_reason, \
           auth_error_code, last_event_id, last_event_type, last_occurred_at, event_count, lifecycle, updated_at, \
           first_event_at, funnel_steps, chosen_institution_id) \
         SELECT (8000000000 + g)::text, f.consent, now(), f.auth, now(), f.reason, NULL, \
                'e' || g, 'done', now(), 5, $1, now() - (g || ' ms')::interval, \
                now() - make_interval(secs => (g * 86400.0 * $7) / $2), f.steps, \
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

async fn bench_api(customers: i64, seconds: u64) -> anyhow::Result<ApiFigures> {
    let database = fresh_database("api").await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    connectflow::store::migrate(&pool).await?;
    let seeded = Instant::now();
    seed_customers(&pool, customers).await?;
    eprintln!("api: seeded {customers} customers in {:.1}s", seeded.elapsed().as_secs_f64());
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
    let requests: Arc<Vec<Prepared>> = Arc::new(
        (0..100_000u64)
            .map(|i| {
                let id = 8_000_000_000 + 1 + (i * 7_919 % customers as u64);
                Prepared {
                    method: hyper::Method::GET,
                    path: format!("/v1/customers/{id}/lifecycle"),
                    headers: vec![("authorization", format!("Bearer {TOKEN}"))],
                    body: Bytes::new(),
                }
            })
            .collect(),
    );
    drive(addr, requests.clone(), 32, Duration::from_secs(2), None).await;
    let (mut rates, mut p99s) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let result = drive(addr, requests.clone(), 32, Duration::from_secs(seconds), None).await;
        if result.failed > 0 {
            eprintln!("api: {} lookups failed", result.failed);
        }
        rates.push(result.per_second());
        p99s.push(result.percentile_ms(99.0));
    }
    let stats = bench_stats(addr, 40).await.unwrap_or_else(|e| {
        eprintln!("stats bench failed: {e:#}");
        StatsFigures::default()
    });
    server.stop();
    drop_database(&database).await;
    Ok(ApiFigures { customers, lookups_per_s: median(rates), p99_ms: median(p99s), stats })
}

// ---------------------------------------------------------------- end to end

#[derive(Debug, Default)]
struct E2eFigures {
    sampled: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    sent_per_s: Option<f64>,
    change_samples: usize,
    change_p50_ms: Option<f64>,
    change_p99_ms: Option<f64>,
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

/// Event ids answered 200, with when.
type Acked = Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

/// Seconds of traffic before the e2e bench measures.
const E2E_WARM_UP_S: u64 = 5;

/// Webhooks on their way: one task per customer.
struct Sending {
    tasks: Vec<tokio::task::JoinHandle<Option<u32>>>,
    sent: usize,
}

/// Sends customers' flows (ids from `first` on) at a steady `rate`
/// webhooks/s for `seconds`. With `acked`, notes when each event was answered
/// 200, and every fifth customer's task then polls the lifecycle API until it
/// shows the customer's last event: its result is that time, in µs.
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
    let flows = customer_flows(customers, first);
    let per_customer = Duration::from_secs_f64(average_flow / rate);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let mut sent = 0usize;
    for (i, (customer, bodies)) in flows.into_iter().enumerate() {
        let at = started + per_customer.mul_f64(i as f64);
        if at >= deadline {
            break;
        }
        sent += bodies.len();
        let client = client.clone();
        let base = base.to_owned();
        let acked = acked.clone();
        let sample = acked.is_some() && i % 5 == 0;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let step = Duration::from_secs_f64(1.0 / rate * 50.0).min(Duration::from_millis(20));
            let mut answered = None;
            for body in &bodies {
                let raw = serde_json::to_vec(body).unwrap_or_default();
                let signature = sign(SECRET, &raw);
                let ok = client
                    .post(format!("{base}/webhooks/finicity/connect"))
                    .header("content-type", "application/json")
                    .header("x-finicity-signature", signature)
                    .body(raw)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    return None;
                }
                let now = Instant::now();
                answered = Some(now);
                if let Some(acked) = &acked
                    && let Some(event_id) = body["eventId"].as_str()
                    && let Ok(mut acked) = acked.lock()
                {
                    acked.insert(event_id.to_owned(), now);
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
                if let Ok(response) = client.get(&path).bearer_auth(TOKEN).send().await
                    && let Ok(body) = response.json::<Value>().await
                    && body["event_count"].as_u64() == Some(want)
                {
                    return Some(answered.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        }));
    }
    Sending { tasks, sent }
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
async fn bench_e2e(rate: f64, seconds: u64) -> anyhow::Result<E2eFigures> {
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
    let started = Instant::now();
    let Sending { tasks, sent } = send_at_rate(&client, &base, rate, seconds, 2_000_000, Some(acked.clone()));
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
    let changes = tokio::task::spawn_blocking(move || reader.join().unwrap_or_default()).await?;
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
    Ok(E2eFigures {
        sampled: latencies.len(),
        p50_ms: Some(percentile_ms(&latencies, 50.0)).filter(|v| v.is_finite()),
        p99_ms: Some(percentile_ms(&latencies, 99.0)).filter(|v| v.is_finite()),
        sent_per_s: Some(sent as f64 / elapsed),
        change_samples: change_latencies.len(),
        change_p50_ms: Some(percentile_ms(&change_latencies, 50.0)).filter(|v| v.is_finite()),
        change_p99_ms: Some(percentile_ms(&change_latencies, 99.0)).filter(|v| v.is_finite()),
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

fn fmt(value: Option<f64>) -> String {
    value.map_or_else(|| "failed".to_owned(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") })
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
    find_postmaster().await;
    let seconds = if quick { 3 } else { 8 };
    let run = |name: &str| what == "all" || what == name;

    let receiver = if run("receiver") {
        bench_receiver(seconds).await.unwrap_or_else(|e| {
            eprintln!("receiver bench failed: {e:#}");
            ReceiverFigures::default()
        })
    } else {
        ReceiverFigures::default()
    };
    let consumer = if run("consumer") {
        bench_consumer(if quick { 10_000 } else { 100_000 }).await.unwrap_or_else(|e| {
            eprintln!("consumer bench failed: {e:#}");
            ConsumerFigures::default()
        })
    } else {
        ConsumerFigures::default()
    };
    let api = if run("api") {
        bench_api(if quick { 100_000 } else { 1_000_000 }, seconds).await.unwrap_or_else(|e| {
            eprintln!("api bench failed: {e:#}");
            ApiFigures::default()
        })
    } else {
        ApiFigures::default()
    };
    let e2e = if run("e2e") {
        bench_e2e(2_000.0, if quick { 10 } else { 30 }).await.unwrap_or_else(|e| {
            eprintln!("e2e bench failed: {e:#}");
            E2eFigures::default()
        })
    } else {
        E2eFigures::default()
    };

    let replica = if run("replica") {
        replica::bench_replica(
            if quick { 50_000 } else { 300_000 },
            if quick { 3_000 } else { 30_000 },
            if quick { 1 } else { RUNS },
        )
        .await
    } else {
        replica::ReplicaFigures { skipped: Some("not run".into()), ..Default::default() }
    };

    let health = if run("health") {
        health::bench_health(
            if quick { 100_000 } else { 1_000_000 },
            if quick { 20_000 } else { 200_000 },
            RUNS * 2 - 1,
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("health bench failed: {e:#}");
            health::HealthFigures::default()
        })
    } else {
        health::HealthFigures::default()
    };

    println!();
    println!("{:<44} {:>12} {:>12}   target", "measure", "value", "baseline");
    let rows = [
        ("receiver accepted webhooks/s (256 conns)", receiver.accepted_per_s, receiver.baseline_per_s, ">= 25000"),
        ("receiver p50 ms (full speed)", receiver.p50_ms, None, ""),
        ("receiver p99 ms (full speed)", receiver.p99_ms, receiver.baseline_p99_ms, ""),
        ("receiver p99 ms at a steady 5,000/s", receiver.p99_ms_at_5k, None, "<= 25"),
        ("receiver peak RSS MiB", receiver.rss_mib, None, "<= 100"),
        (
            "receiver CPU us per webhook (full speed)",
            receiver.cpu_us_per_webhook,
            receiver.baseline_cpu_us_per_request,
            "<= 25",
        ),
        ("consumer events applied/s", consumer.applied_per_s, consumer.baseline_per_s, ">= 25000 and >= baseline/2"),
        ("consumer CPU us per event", consumer.cpu_us_per_event, None, ""),
        (
            "postgres CPU us per event (consumer run)",
            consumer.postgres_cpu_us_per_event,
            consumer.baseline_postgres_cpu_us_per_event,
            "",
        ),
        ("api lookups/s (32 conns)", api.lookups_per_s, None, ">= 10000"),
        ("api p99 ms", api.p99_ms, None, "<= 10"),
        ("stats funnel p95 ms (all customers)", api.stats.funnel_p95_ms, None, "<= 500"),
        ("stats timeseries p95 ms (by day)", api.stats.timeseries_day_p95_ms, None, "<= 500"),
        ("stats timeseries p95 ms (by hour)", api.stats.timeseries_hour_p95_ms, None, "<= 500"),
        ("stats institutions p95 ms", api.stats.institutions_p95_ms, None, "<= 500"),
        ("an institution's failing customers p95 ms", api.stats.failing_customers_p95_ms, None, ""),
        ("end to end p50 ms at 2,000/s", e2e.p50_ms, None, ""),
        ("end to end p99 ms at 2,000/s", e2e.p99_ms, None, "<= 250"),
        ("200 to change on topic p50 ms at 2,000/s", e2e.change_p50_ms, None, ""),
        ("200 to change on topic p99 ms at 2,000/s", e2e.change_p99_ms, None, "<= 250"),
        ("consumer events/s, statistics on the primary", replica.stats_on_primary_per_s, replica.alone_per_s, ""),
        ("consumer events/s, statistics on the standby", replica.stats_on_replica_per_s, replica.alone_per_s, ""),
        ("statistics answered/s, on the primary", replica.primary_stats_per_s, None, ""),
        ("statistics answered/s, on the standby", replica.replica_stats_per_s, None, ""),
        ("health: institutions evaluated, first ms", health.first_evaluation_ms, None, ""),
        ("health: institutions evaluated, median ms", health.evaluation_ms, None, ""),
        ("health: lapses and warnings, first round ms", health.first_expiry_ms, None, ""),
        ("health: lapses and warnings, steady ms", health.expiry_ms, None, ""),
    ];
    for (name, value, baseline, target) in rows {
        let baseline = baseline.map(|b| fmt(Some(b))).unwrap_or_default();
        println!("{name:<44} {:>12} {baseline:>12}   {target}", fmt(value));
    }
    println!(
        "(receiver and api: median of {RUNS} runs of {seconds}s; consumer: {} events; api: {} customers, stats: {} sequential requests per route over all of them; e2e: {} sampled, {} changes, {:.0} webhooks/s sent)",
        consumer.events,
        api.customers,
        api.stats.requests,
        e2e.sampled,
        e2e.change_samples,
        e2e.sent_per_s.unwrap_or(0.0)
    );
    match &replica.skipped {
        Some(why) => println!("(replica: {why})"),
        None => println!(
            "(replica: baseline the consumer alone; {} events, {} customers seeded, statistics from {} clients without pause; medians of {})",
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

    let summary = json!({
        "receiver_accepted_per_s": round(receiver.accepted_per_s),
        "receiver_p99_ms_at_5k": round(receiver.p99_ms_at_5k),
        "receiver_rss_mib": round(receiver.rss_mib),
        "baseline_hmac_http_per_s": round(receiver.baseline_per_s),
        "consumer_applied_per_s": round(consumer.applied_per_s),
        "baseline_pg_batch_insert_per_s": round(consumer.baseline_per_s),
        "receiver_cpu_us_per_webhook": round(receiver.cpu_us_per_webhook),
        "baseline_hmac_cpu_us_per_request": round(receiver.baseline_cpu_us_per_request),
        "consumer_cpu_us_per_event": round(consumer.cpu_us_per_event),
        "postgres_cpu_us_per_event": round(consumer.postgres_cpu_us_per_event),
        "baseline_pg_batch_insert_postgres_cpu_us_per_event": round(consumer.baseline_postgres_cpu_us_per_event),
        "e2e_p50_ms": round(e2e.p50_ms),
        "e2e_p99_ms": round(e2e.p99_ms),
        "change_p50_ms": round(e2e.change_p50_ms),
        "change_p99_ms": round(e2e.change_p99_ms),
        "api_lookups_per_s": round(api.lookups_per_s),
        "api_p99_ms": round(api.p99_ms),
        "stats_funnel_p95_ms": round(api.stats.funnel_p95_ms),
        "stats_timeseries_day_p95_ms": round(api.stats.timeseries_day_p95_ms),
        "stats_timeseries_hour_p95_ms": round(api.stats.timeseries_hour_p95_ms),
        "stats_institutions_p95_ms": round(api.stats.institutions_p95_ms),
        "failing_customers_p95_ms": round(api.stats.failing_customers_p95_ms),
        "consumer_alone_per_s": round(replica.alone_per_s),
        "consumer_with_stats_on_primary_per_s": round(replica.stats_on_primary_per_s),
        "consumer_with_stats_on_replica_per_s": round(replica.stats_on_replica_per_s),
        "stats_answered_on_primary_per_s": round(replica.primary_stats_per_s),
        "stats_answered_on_replica_per_s": round(replica.replica_stats_per_s),
        "health_first_evaluation_ms": round(health.first_evaluation_ms),
        "health_evaluation_ms": round(health.evaluation_ms),
        "health_first_expiry_ms": round(health.first_expiry_ms),
        "health_expiry_ms": round(health.expiry_ms),
        "machine": machine(),
        "git_commit": git_commit(),
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/summary.json", serde_json::to_string_pretty(&summary)?)?;
    println!("wrote target/bench/summary.json");
    Ok(())
}
