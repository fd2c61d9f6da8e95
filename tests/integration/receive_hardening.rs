//! The receiver under odd but signed bodies and slow or abusive clients:
//! acknowledge only what the pipeline can keep, and never hold a connection
//! or its memory for a client that does not finish.

use std::time::{Duration, Instant};

use connectflow::receive::signature::sign;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    AppOptions, PARTNER_SECRET, TestApp, eventually, http_settings, services, spawn_app_with, unique_kafka_args,
};

async fn spawn_with(configure: impl FnOnce(&mut connectflow::config::HttpSettings), consumer: bool) -> TestApp {
    let mut http = http_settings();
    configure(&mut http);
    let kafka = unique_kafka_args(&services().await.kafka_brokers);
    spawn_app_with(AppOptions { http, kafka, create_topics: true, consumer }).await
}

fn event(customer_id: Value, event_type: &str, event_id: &str, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "customerId": customer_id, "eventType": event_type, "eventId": event_id, "payload": payload,
    }))
    .expect("json")
}

#[tokio::test]
async fn customer_ids_the_api_could_not_show_are_refused_naming_the_field() {
    let app = spawn_with(|_| {}, false).await;
    for bad in [json!(""), json!("12a4"), json!("1".repeat(23)), json!("100506\n1234"), json!(1005061234_i64)] {
        let response = app.post_webhook(&event(bad.clone(), "started", "1764000000000-aa", json!({}))).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.expect("json");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("customerId")), "{bad}: {body}");
    }
    for (field, body) in [
        ("eventId", event(json!("1005061234"), "started", &"e".repeat(129), json!({}))),
        (
            "payload.institutionId",
            event(json!("1005061234"), "adding", "1764000000000-ab", json!({"institutionId": "1".repeat(65)})),
        ),
        (
            "payload.accounts[].id",
            event(json!("1005061234"), "added", "1764000000000-ac", json!({"accounts": [{"id": "9\n9"}]})),
        ),
    ] {
        let response = app.post_webhook(&body).await;
        assert_eq!(response.status(), 400, "{field}");
        let answer: Value = response.json().await.expect("json");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains(field)), "{field}: {answer}");
    }
    assert_eq!(crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic), 0, "nothing published");
    let ok = app.post_webhook(&event(json!("0000000000000000000001"), "started", "1764000000000-ad", json!({}))).await;
    assert_eq!(ok.status(), 200, "22 digits are a customer id");
}

#[tokio::test]
async fn free_text_is_cleaned_and_oversized_webhook_data_dropped_and_all_of_it_stored() {
    let app = spawn_with(|h| h.max_body_bytes = 1 << 20, true).await;
    let query =
        event(json!("8100000001"), "institutionNotFound", "1764000000001-nul", json!({"query": "Big\u{0} Bank\u{7}"}));
    let name = event(
        json!("8100000002"),
        "added",
        "1764000000002-nul",
        json!({"institutionId": "101732", "accounts": [{"id": "5001", "name": "Joint\u{0} Checking", "realAccountNumberLast4": "1234", "institutionLoginId": 77}]}),
    );
    let mut big =
        serde_json::from_slice::<Value>(&event(json!("8100000003"), "started", "1764000000003-big", json!({})))
            .expect("json");
    big["webhookData"] = json!({"blob": "x".repeat(600 * 1024)});
    let big = serde_json::to_vec(&big).expect("json");
    for body in [&query, &name, &big] {
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 200);
    }
    let stored = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            eventually(Duration::from_secs(30), || {
                let pool = pool.clone();
                async move { sqlx::query_scalar::<_, Value>(sql).fetch_optional(&pool).await.ok().flatten() }
            })
            .await
        }
    };
    assert_eq!(
        stored("SELECT record->'query' FROM connect_events WHERE customer_id = '8100000001'").await,
        Some(json!("Big Bank"))
    );
    assert_eq!(
        stored("SELECT to_jsonb(name) FROM accounts WHERE customer_id = '8100000002'").await,
        Some(json!("Joint Checking"))
    );
    let record = stored("SELECT record FROM connect_events WHERE customer_id = '8100000003'").await.expect("stored");
    assert_eq!(record["webhook_data_dropped"], json!(true), "{record}");
    assert_eq!(record["webhook_data"], Value::Null);
    assert_eq!(app.metrics.webhook_data_dropped.get(), 1);
    app.stop().await;
}

/// Reads until the peer closes; the bytes read and whether it closed within
/// `within`.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn partial_headers_and_a_stalled_body_are_cut_off_within_the_request_timeout() {
    let app = spawn_with(|h| h.request_timeout = Duration::from_millis(800), false).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();

    // Half the headers, then nothing.
    let mut half = TcpStream::connect(&addr).await.expect("connect");
    half.write_all(b"POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Ty").await.expect("write");
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut half, Duration::from_secs(10)).await;
    assert!(closed, "a client stuck in its headers is disconnected");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700), "not before the timeout: {waited:?}");

    // A declared body that never comes: 408.
    let mut stalled = TcpStream::connect(&addr).await.expect("connect");
    stalled
        .write_all(
            b"POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              X-Finicity-Signature: 00\r\nContent-Length: 10000\r\n\r\n{",
        )
        .await
        .expect("write");
    let (answer, _) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "the idle connection is closed after the timeout");
    app.stop().await;
}

#[tokio::test]
async fn past_the_concurrency_cap_webhooks_are_shed_with_503_before_their_body_is_read() {
    let app = spawn_with(
        |h| {
            h.max_concurrent_webhooks = 2;
            h.request_timeout = Duration::from_secs(5);
        },
        false,
    )
    .await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    // Two slow clients hold both slots.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream
            .write_all(
                b"POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 20000\r\n\r\n{",
            )
            .await
            .expect("write");
        holders.push(stream);
    }
    let in_flight =
        eventually(Duration::from_secs(5), || async { (app.metrics.webhooks_in_flight.get() == 2).then_some(()) })
            .await;
    assert!(in_flight.is_some(), "both slow requests are in the handler");

    // A third, whose body would be large, is answered at once.
    let body = vec![b' '; 40_000];
    let started = Instant::now();
    let response = app
        .client
        .post(format!("{}/webhooks/finicity/connect", app.base_url))
        .header("content-type", "application/json")
        .header("x-finicity-signature", sign(PARTNER_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(4), "shed, not queued behind the slow ones");
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "unavailable");
    let shed = |reason| app.metrics.webhooks_shed.get_or_create(&connectflow::metrics::ShedLabels { reason }).get();
    assert_eq!((shed("concurrency"), shed("body_bytes")), (1, 0), "counted as shed by the count cap");
    drop(holders);
    // The slots come back.
    let ok = eventually(Duration::from_secs(10), || async {
        let body = br#"{"customerId":"8200000001","eventType":"started","eventId":"1764000000000-cap","payload":{}}"#;
        (app.post_webhook(body).await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "capacity returns when the slow clients go");
    app.stop().await;
}

/// A client still sending a body a little over the limit gets its 413, not a
/// reset connection: the receiver reads the rest and throws it away before
/// answering (up to twice the limit).
#[tokio::test]
async fn a_slightly_oversized_body_sent_slowly_still_gets_its_413() {
    let app = spawn_with(|h| h.request_timeout = Duration::from_secs(10), false).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let size = 64 * 1024 + 8 * 1024;
    for attempt in 0..3 {
        let mut client = TcpStream::connect(&addr).await.expect("connect");
        let head = format!(
            "POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Connection: close\r\nX-Finicity-Signature: 00\r\nContent-Length: {size}\r\n\r\n"
        );
        client.write_all(head.as_bytes()).await.expect("write");
        // The body in slices, so most of it arrives after the receiver
        // could have answered.
        for chunk in vec![b' '; size].chunks(8 * 1024) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(chunk).await.unwrap_or_else(|e| panic!("attempt {attempt}: write refused: {e}"));
        }
        let (answer, _) = read_until_closed(&mut client, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "attempt {attempt}: {answer:?}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    // Over twice the limit, it is refused on its Content-Length alone.
    let mut huge = TcpStream::connect(&addr).await.expect("connect");
    huge.write_all(
        b"POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          X-Finicity-Signature: 00\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await
    .expect("write");
    let (answer, _) = read_until_closed(&mut huge, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    app.stop().await;
}

/// Sends `count` webhooks signed with a wrong secret, `concurrency` at a
/// time over kept-alive connections; returns how many were answered 401.
async fn post_badly_signed(base_url: &str, count: usize, concurrency: usize) -> usize {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let url = format!("{base_url}/webhooks/finicity/connect");
    let body = event(json!("1005061234"), "started", "1764000000000-flood", json!({}));
    let signature = sign("not-the-partner-secret", &body);
    futures::stream::iter(0..count)
        .map(|_| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-finicity-signature", &signature)
                .body(body.clone())
                .send()
        })
        .buffer_unordered(concurrency)
        .filter(|answer| std::future::ready(answer.as_ref().is_ok_and(|a| a.status() == 401)))
        .count()
        .await
}

/// The log lines of refused bad signatures, as JSON.
fn bad_signature_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "webhook rejected" && line["outcome"] == "invalid_signature")
        .collect()
}

/// A metric's value in a Prometheus text exposition.
fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn a_flood_of_bad_signatures_logs_a_line_a_second_and_counts_every_one() {
    let app = crate::helpers::spawn_binary("serve", "info").await;
    let started = Instant::now();
    let refused = post_badly_signed(&app.base_url, 10_000, 32).await;
    let took = started.elapsed();
    assert_eq!(refused, 10_000, "every one answered 401");
    let exposition =
        reqwest::get(format!("{}/metrics", app.base_url)).await.expect("metrics").text().await.expect("metrics text");
    let logs = app.stop().await;

    assert_eq!(metric(&exposition, "connectflow_webhook_signature_failures_total"), Some(10_000.0), "{exposition}");
    assert_eq!(
        metric(&exposition, r#"connectflow_webhooks_total{event_type="unknown",outcome="invalid_signature"}"#),
        Some(10_000.0),
        "{exposition}"
    );
    let lines = bad_signature_lines(&logs);
    // One line a second, and the first one at once.
    let allowed = took.as_secs() as usize + 2;
    assert!(!lines.is_empty() && lines.len() <= allowed, "{} lines in {took:?}: {lines:?}", lines.len());
    let suppressed: u64 = lines.iter().filter_map(|line| line["suppressed"].as_u64()).sum();
    assert_eq!(lines[0]["suppressed"], 0, "the first line: {lines:?}");
    assert!(lines.len() == 1 || suppressed > 0, "every line after the first counts the ones left out: {lines:?}");
    assert!(suppressed + lines.len() as u64 <= 10_000, "{suppressed} left out, {} logged", lines.len());
}

#[tokio::test]
async fn a_single_bad_signature_is_still_logged() {
    let app = crate::helpers::spawn_binary("serve", "info").await;
    assert_eq!(post_badly_signed(&app.base_url, 1, 1).await, 1);
    let logs = app.stop().await;
    let lines = bad_signature_lines(&logs);
    assert_eq!(lines.len(), 1, "{logs}");
    assert_eq!(lines[0]["suppressed"], 0, "{lines:?}");
    assert!(lines[0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "the line says why: {lines:?}");
}

/// A signed webhook, as the cap tests send it; `Err` when the connection
/// was refused.
async fn try_webhook(app: &TestApp, event_id: &str) -> Result<reqwest::StatusCode, reqwest::Error> {
    let body = event(json!("8200000002"), "started", event_id, json!({}));
    app.client
        .post(format!("{}/webhooks/finicity/connect", app.base_url))
        .header("content-type", "application/json")
        .header("x-finicity-signature", sign(PARTNER_SECRET, &body))
        .body(body)
        .send()
        .await
        .map(|response| response.status())
}

/// hyper-util reads a new connection's first bytes (to tell HTTP/1 from
/// HTTP/2) with no deadline, and the header deadline starts only after
/// them: without a deadline of its own, a connection that never sends a
/// byte is held for ever.
#[tokio::test]
async fn connections_that_never_send_a_byte_are_closed_within_the_header_timeout() {
    let timeout = Duration::from_secs(2);
    let app = spawn_with(|h| h.request_timeout = timeout, false).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // Each reader starts after its connection was made, so its deadline is
    // at least the header timeout plus 5 s after the connect.
    let readers: Vec<_> = silent
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move { read_until_closed(&mut stream, timeout + Duration::from_secs(5)).await })
        })
        .collect();

    let answered = try_webhook(&app, "1764000000000-silent").await.expect("webhook request");
    assert_eq!(answered, 200, "webhooks are answered while silent connections are open");

    for (i, reader) in readers.into_iter().enumerate() {
        let (bytes, closed) = reader.await.expect("reader task");
        assert!(closed, "silent connection {i} still open 5 s past the header timeout");
        assert_eq!(bytes, "", "nothing is sent to a connection that sent nothing");
    }
    assert_eq!(app.metrics.connections_refused.get(), 0, "under the cap, none refused");
    app.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_at_once_and_counted() {
    let cap = 50;
    // A header timeout far longer than the test's deadlines: a connection
    // closed within them was refused, not timed out.
    let app = spawn_with(
        |h| {
            h.max_connections = cap;
            h.request_timeout = Duration::from_secs(60);
        },
        false,
    )
    .await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    // The test client may already hold a kept-alive connection.
    let already = usize::try_from(app.metrics.connections_open.get()).expect("a count");
    let mut holders = Vec::new();
    for _ in already..cap {
        holders.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let full = eventually(Duration::from_secs(10), || async {
        (app.metrics.connections_open.get() == i64::try_from(cap).expect("cap")).then_some(())
    })
    .await;
    assert!(full.is_some(), "the holders fill the cap");
    assert_eq!(app.metrics.connections_refused.get(), 0);

    let extra = 20;
    for i in 0..extra {
        let mut stream = TcpStream::connect(&addr).await.expect("the kernel accepts the connection");
        let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "connection {i} past the cap is closed long before the header timeout");
        assert_eq!(bytes, "", "and nothing is read or sent");
    }
    assert_eq!(app.metrics.connections_refused.get(), extra);
    let metrics = app.metrics.render();
    assert!(metrics.contains(&format!("connectflow_connections_refused_total {extra}")), "{metrics}");
    assert!(metrics.contains(&format!("connectflow_connections_open {cap}")), "{metrics}");

    // When the holders go, their places come back.
    drop(holders);
    let accepted = eventually(Duration::from_secs(10), || async {
        try_webhook(&app, "1764000000000-capped").await.ok().filter(|status| *status == 200)
    })
    .await;
    assert!(accepted.is_some(), "a webhook is accepted once the holders have gone");
    app.stop().await;
}

/// Reads an answer's head (up to its blank line), or what came before the
/// peer closed; `None` when nothing came within `within`.
async fn answer_head(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
            }
            Err(_) => return (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

/// A client that declares `declared` bytes, sends all but the last 16, and
/// stalls. Returns the answer's head if one came (within 5 s of the last
/// byte sent), and the connection's halves, held open by the caller.
async fn stall_in_a_body(
    addr: String,
    declared: usize,
    body: std::sync::Arc<Vec<u8>>,
) -> (Option<String>, tokio::net::tcp::OwnedWriteHalf, tokio::task::JoinHandle<Option<String>>) {
    let (mut read, mut write) = TcpStream::connect(&addr).await.expect("connect").into_split();
    // Read while sending: an answer sent before the body is read is seen
    // even when the server then resets the connection.
    let mut reader = tokio::spawn(async move { answer_head(&mut read, Duration::from_secs(120)).await });
    let head = format!(
        "POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Finicity-Signature: 00\r\nContent-Length: {declared}\r\n\r\n"
    );
    if write.write_all(head.as_bytes()).await.is_ok() {
        for chunk in body[..declared - 16].chunks(64 * 1024) {
            if write.write_all(chunk).await.is_err() {
                break;
            }
        }
    }
    let answer = match tokio::time::timeout(Duration::from_secs(5), &mut reader).await {
        Ok(answer) => answer.expect("reader task"),
        Err(_) => None,
    };
    (answer, write, reader)
}

/// A metric's value in a Prometheus text exposition, by its exact series.
fn series(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The count cap alone let 256 bodies of 1 MiB in (some 480 MiB of RSS):
/// the byte budget (64 MiB by default) refuses the ones past it on their
/// Content-Length, before reading them, and a small webhook still fits.
#[tokio::test]
async fn stalled_megabyte_bodies_are_bounded_in_bytes_and_the_rest_shed_with_503() {
    let app = crate::helpers::spawn_binary_with(
        "serve",
        "warn",
        // The admitted ones stall for the whole test, not cut off by a 408.
        &[("CONNECTFLOW_REQUEST_TIMEOUT_MS", "120000")],
    )
    .await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let declared = 1_000_000;
    let body = std::sync::Arc::new(vec![b' '; declared]);
    let clients: Vec<_> =
        (0..300).map(|_| tokio::spawn(stall_in_a_body(addr.clone(), declared, body.clone()))).collect();
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for client in clients {
        let (answer, write, reader) = client.await.expect("client task");
        match answer {
            Some(answer) => answers.push(answer),
            None => held.push((write, reader)),
        }
    }
    let resident = app.resident_bytes();

    // 64 MiB holds 67 bodies of 1,000,000 bytes; every other client was
    // answered 503 before it had sent its body.
    let admitted = held.len();
    assert!((1..=67).contains(&admitted), "{admitted} bodies admitted");
    assert_eq!(answers.len(), 300 - admitted);
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 5\r\n"), "{answer:?}");
    }
    assert!(resident < 200 * 1024 * 1024, "RSS {} MiB with {admitted} bodies held", resident / (1024 * 1024));

    // A small body reserves only its length: it still fits.
    let small = event(json!("8300000001"), "started", "1764000000000-budget", json!({}));
    let answered = reqwest::Client::new()
        .post(format!("{}/webhooks/finicity/connect", app.base_url))
        .header("content-type", "application/json")
        .header("x-finicity-signature", sign(PARTNER_SECRET, &small))
        .body(small)
        .send()
        .await
        .expect("request");
    assert_eq!(answered.status(), 200);
    let exposition =
        reqwest::get(format!("{}/metrics", app.base_url)).await.expect("metrics").text().await.expect("metrics text");
    assert_eq!(
        series(&exposition, r#"connectflow_webhooks_shed_total{reason="body_bytes"}"#),
        Some(answers.len() as f64),
        "{exposition}"
    );
    drop(held);
    app.stop().await;
}

/// Sends `body` chunked (`chunk` bytes a chunk) with `Connection: close`,
/// reading while sending; returns the answer.
async fn post_chunked(addr: &str, body: &[u8], chunk: usize) -> String {
    let (mut read, mut write) = TcpStream::connect(addr).await.expect("connect").into_split();
    let reader = tokio::spawn(async move { read_until_closed(&mut read, Duration::from_secs(20)).await.0 });
    let head = format!(
        "POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Connection: close\r\nTransfer-Encoding: chunked\r\nX-Finicity-Signature: {}\r\n\r\n",
        sign(PARTNER_SECRET, body)
    );
    let mut wire = head.into_bytes();
    for piece in body.chunks(chunk) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    for piece in wire.chunks(chunk) {
        if write.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = reader.await.expect("reader task");
    drop(write);
    answer
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_budget_is_shed_with_503_and_nothing_published() {
    let app = spawn_with(
        |h| {
            h.max_inflight_body_bytes = 100_000;
            h.request_timeout = Duration::from_secs(30);
        },
        false,
    )
    .await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    // A stalled body holds 60,000 of the 100,000 bytes.
    let mut holder = TcpStream::connect(&addr).await.expect("connect");
    holder
        .write_all(
            b"POST /webhooks/finicity/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              X-Finicity-Signature: 00\r\nContent-Length: 60000\r\n\r\n{",
        )
        .await
        .expect("write");
    let held =
        eventually(Duration::from_secs(5), || async { (app.metrics.webhooks_in_flight.get() == 1).then_some(()) })
            .await;
    assert!(held.is_some(), "the holder's body is being read");

    // A signed chunked webhook of about 48 KiB: more than the 40,000 left.
    let mut big =
        serde_json::from_slice::<Value>(&event(json!("8300000002"), "started", "1764000000000-chunked", json!({})))
            .expect("json");
    big["webhookData"] = json!({"blob": "x".repeat(48 * 1024)});
    let big = serde_json::to_vec(&big).expect("json");
    let answer = post_chunked(&addr, &big, 8 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 5\r\n"), "{answer:?}");
    assert!(answer.contains(r#""code":"unavailable""#), "{answer:?}");
    assert_eq!(crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic), 0, "nothing published");
    let shed =
        app.metrics.webhooks_shed.get_or_create(&connectflow::metrics::ShedLabels { reason: "body_bytes" }).get();
    assert_eq!(shed, 1);

    // The holder's bytes come back when its request ends, and the same
    // body is then accepted.
    drop(holder);
    let freed =
        eventually(Duration::from_secs(10), || async { (app.metrics.webhooks_in_flight.get() == 0).then_some(()) })
            .await;
    assert!(freed.is_some(), "the holder's request ended");
    let answer = post_chunked(&addr, &big, 8 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(crate::kafka_util::count_records(&app.kafka.brokers, &app.kafka.events_topic), 1);
    app.stop().await;
}

/// An HTTP/2 client answers the server's keep-alive pings by itself: with
/// no idle limit, a connection that sent one request and then nothing was
/// held for ever.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_within_the_idle_limit_though_it_answers_pings() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let idle = Duration::from_secs(2);
    let mut http = http_settings();
    http.request_timeout = idle;
    // Only /livez is asked: no topics needed.
    let kafka = unique_kafka_args(&services().await.kafka_brokers);
    let app = spawn_app_with(AppOptions { http, kafka, create_topics: false, consumer: false }).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    let mut connection = tokio::spawn(connection);

    // Requests closer together than the limit keep the connection.
    let kept = Instant::now();
    while kept.elapsed() < idle * 2 {
        let request =
            hyper::Request::get(format!("{}/livez", app.base_url)).body(Empty::<bytes::Bytes>::new()).expect("request");
        let response = sender.send_request(request).await.expect("answered on the same connection");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
        tokio::time::sleep(idle / 10).await;
    }

    // Then nothing: closed by the server (GOAWAY), though the client
    // answers every ping.
    let quiet = Instant::now();
    let ended = tokio::time::timeout(idle + Duration::from_secs(10), &mut connection).await;
    let waited = quiet.elapsed();
    assert!(ended.is_ok(), "the idle connection is still open {waited:?} after its last request");
    assert!(waited >= idle / 2, "not before the limit: {waited:?}");
    assert!(sender.is_closed() || sender.ready().await.is_err(), "no new request can be sent on it");
    app.stop().await;
}
