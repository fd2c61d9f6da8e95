//! The webhook receiver: `POST /webhooks/finicity/connect/{program}` (and
//! `/webhooks/finicity/connect`, the `default` program's URL).
//!
//! Checks run in the order of the contract: the program (404, before the
//! body is read), size (413), content type (415),
//! signature over the raw bytes (401), parse (400); then `ping` is answered
//! and every other event is normalised, published, and acknowledged only
//! once Kafka has confirmed the write (else 503, so Finicity retries).
//!
//! A refusal is logged at most once per reason per second, the line
//! carrying `suppressed` (how many of that reason were left out since the
//! previous line); `connectflow_webhooks_total{outcome}` and
//! `connectflow_webhook_signature_failures_total` count every one.

pub mod budget;
pub(crate) mod error;
pub mod normalise;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tokio::sync::Semaphore;
use tracing::{Instrument, field};

use crate::error::ErrorBody;
use crate::metrics::{Metrics, ShedLabels, WebhookLabels};
use crate::program::ProgramId;
use crate::publish::Publisher;
use crate::telemetry::LogLimiter;
use budget::{BodyBudget, Reservation};
use error::ReceiveError;
use normalise::Webhook;
use signature::SignatureVerifier;

/// The header Finicity signs with (header names match case-insensitively).
pub const SIGNATURE_HEADER: &str = "x-finicity-signature";

/// A program the receiver takes webhooks for.
#[derive(Debug)]
pub struct ReceiverProgram {
    /// Its id (the URL's `{program}`).
    pub id: ProgramId,
    /// Verifies its Finicity partner's signatures.
    pub verifier: SignatureVerifier,
}

/// What the receiver needs.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// The programs, each with its partner's secrets.
    pub programs: Arc<[ReceiverProgram]>,
    /// Publishes events.
    pub publisher: Publisher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Longest wait for the whole body.
    pub request_timeout: Duration,
    /// One permit per webhook in flight (`CONNECTFLOW_MAX_CONCURRENT_WEBHOOKS`).
    pub slots: Arc<Semaphore>,
    /// The bytes of bodies held at once (`CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES`).
    pub body_budget: BodyBudget,
    /// The top-level `webhookData` keys kept (`CONNECTFLOW_WEBHOOK_DATA_KEYS`);
    /// `None`: all of them.
    pub webhook_data_keys: Option<Arc<[String]>>,
    /// Thins the refusals' log lines to one per reason (the `outcome`
    /// label) per second, each with the count `suppressed` since the last.
    pub log_limiter: Arc<LogLimiter>,
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.webhooks_in_flight.dec();
    }
}

/// Accepted, with the event id (also for a repeated delivery).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AcceptedBody {
    /// `accepted`, or `pong` for a ping.
    #[schema(example = "accepted")]
    pub status: String,
    /// The event id (absent for a ping).
    pub event_id: Option<String>,
}

/// The `default` program's webhook URL (404 when no program `default` is
/// declared).
#[utoipa::path(
    post,
    path = "/webhooks/finicity/connect",
    tag = "webhooks",
    request_body(content = Object, description = "A Finicity Connect event, signed", content_type = "application/json"),
    params(("X-Finicity-Signature" = String, Header, description = "Hex HMAC-SHA256 of the raw body with the partner secret")),
    responses(
        (status = 200, description = "Accepted (published to Kafka), or pong for a ping", body = AcceptedBody),
        (status = 400, description = BAD_REQUEST, body = ErrorBody),
        (status = 401, description = "Missing, malformed or wrong signature", body = ErrorBody),
        (status = 404, description = "No program `default` is declared (a programs file without one)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within CONNECTFLOW_REQUEST_TIMEOUT_MS", body = ErrorBody),
        (status = 413, description = "Body over CONNECTFLOW_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Not JSON (XML is not supported yet)", body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn handle(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    handle_for(receiver, ProgramId::DEFAULT, headers, body).await
}

/// A program's webhook URL: the one its client's backend passes when it
/// generates the Connect URL.
#[utoipa::path(
    post,
    path = "/webhooks/finicity/connect/{program}",
    tag = "webhooks",
    request_body(content = Object, description = "A Finicity Connect event, signed with the program's partner secret", content_type = "application/json"),
    params(
        ("program" = String, Path, description = "The program's id (`^[a-z0-9][a-z0-9-]{0,31}$`, declared in CONNECTFLOW_PROGRAMS_FILE)"),
        ("X-Finicity-Signature" = String, Header, description = "Hex HMAC-SHA256 of the raw body with the program's partner secret"),
    ),
    responses(
        (status = 200, description = "Accepted (published to Kafka), or pong for a ping", body = AcceptedBody),
        (status = 400, description = BAD_REQUEST, body = ErrorBody),
        (status = 401, description = "Missing, malformed or wrong signature", body = ErrorBody),
        (status = 404, description = "No such program (answered before the body is read)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within CONNECTFLOW_REQUEST_TIMEOUT_MS", body = ErrorBody),
        (status = 413, description = "Body over CONNECTFLOW_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Not JSON (XML is not supported yet)", body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn handle_program(
    State(receiver): State<Arc<Receiver>>,
    program: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A segment that is not even text names no program either.
    let program = program.map_or_else(|_| String::new(), |Path(program)| program);
    handle_for(receiver, &program, headers, body).await
}

const BAD_REQUEST: &str = "Not JSON, not an object, no eventType, or a field outside the limits of docs/event-schema.md (customerId not 1 to 22 digits, eventId not 1 to 128 printable ASCII characters, another id over 64); the message names the field. `program_mismatch`: the signed `webhookData.program` names another program than the URL's";

const UNAVAILABLE: &str = "Kafka did not confirm the write, or more than CONNECTFLOW_MAX_CONCURRENT_WEBHOOKS are in flight, or the body's length does not fit in what is left of CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES; retry (Retry-After)";

async fn handle_for(receiver: Arc<Receiver>, program: &str, headers: HeaderMap, body: Body) -> Response {
    // The request's span names the program once it is known; once the event
    // is parsed, its publication and what is logged of it run in a span of
    // their own created with every field (see `receive`).
    let span = tracing::info_span!("webhook", program = field::Empty);
    async move {
        let metrics = &receiver.metrics;
        metrics.webhooks_in_flight.inc();
        let _in_flight = InFlight(metrics);
        let (label, result, event_span) = match receiver.programs.iter().find(|p| p.id == program) {
            Some(program) => {
                tracing::Span::current().record("program", program.id.as_str());
                receive(&receiver, program, &headers, body).await
            }
            None => ("unknown", Err(ReceiveError::UnknownProgram), None),
        };
        // What follows is logged in the event's span, when there is one (no
        // await below: the guard is not held across one).
        let _event = event_span.as_ref().map(tracing::Span::enter);
        let outcome = match &result {
            Ok(Accepted::Pong) => "pong",
            Ok(Accepted::Event(_)) => "accepted",
            Err(err) => err.outcome(),
        };
        metrics.webhooks.get_or_create(&WebhookLabels { event_type: label, outcome }).inc();
        if let Some(reason) = result.as_ref().err().and_then(ReceiveError::shed_reason) {
            metrics.webhooks_shed.get_or_create(&ShedLabels { reason }).inc();
        }
        match result {
            Ok(Accepted::Pong) => Json(Answer { status: "pong", event_id: None }).into_response(),
            Ok(Accepted::Event(event_id)) => {
                Json(Answer { status: "accepted", event_id: Some(&event_id) }).into_response()
            }
            Err(err) => {
                // One line per reason per second (the metric above counts
                // every one): a flood of bad signatures cannot flood the log.
                let now = Instant::now();
                match &err {
                    ReceiveError::Unavailable(cause) => {
                        if let Some(suppressed) = receiver.log_limiter.admit("publish_failed", now) {
                            tracing::warn!(error = %cause, suppressed, "publish failed; answering 503 so Finicity retries");
                        }
                    }
                    other => {
                        if let Some(suppressed) = receiver.log_limiter.admit(outcome, now) {
                            tracing::info!(outcome, reason = %other, suppressed, "webhook rejected");
                        }
                    }
                }
                crate::error::ApiError::from(err).into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// The 200 body, serialised without building a `Value` first (the same
/// JSON as [`AcceptedBody`]; a pong has no `event_id`).
#[derive(serde::Serialize)]
struct Answer<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
}

enum Accepted {
    Pong,
    Event(String),
}

/// The metric label of the event type, the outcome, and the span of the
/// event when the body was one.
type Received = (&'static str, Result<Accepted, ReceiveError>, Option<tracing::Span>);

async fn receive(receiver: &Receiver, program: &ReceiverProgram, headers: &HeaderMap, body: Body) -> Received {
    // Shed before reading the body: a flood of slow or large requests
    // cannot hold more than `slots` bodies, nor more than the budget's
    // bytes, in memory.
    let Ok(_slot) = receiver.slots.try_acquire() else {
        return ("unknown", Err(ReceiveError::Overloaded), None);
    };
    // The reservation is held until the answer: once the body is parsed, it
    // counts the event and the record published instead.
    let (raw, _reservation) = match read_body(receiver, headers, body).await {
        Ok(read) => read,
        Err(err) => return ("unknown", Err(err), None),
    };
    if !is_json(headers) {
        return ("unknown", Err(ReceiveError::NotJson), None);
    }
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    if let Err(err) = program.verifier.verify(signature, &raw) {
        receiver.metrics.signature_failures.inc();
        return ("unknown", Err(err.into()), None);
    }
    let kept = receiver.webhook_data_keys.as_deref();
    let webhook = match normalise::normalise_keeping(&raw, Utc::now(), &program.id, kept) {
        Ok(webhook) => webhook,
        Err(err) => return ("unknown", Err(err.into()), None),
    };
    // Not held across the wait for Kafka: the event is what is published.
    drop(raw);
    let event = match webhook {
        Webhook::Ping => return ("ping", Ok(Accepted::Pong), None),
        Webhook::Event(event) => event,
    };
    let label = event.event_type.label();
    if event.webhook_data_dropped {
        receiver.metrics.webhook_data_dropped.inc();
    }
    // A span created with every field (a child of the request's): recording
    // them one by one into the request's span made the JSON log format parse
    // and write the span's fields again at each (7 % of the receiver's CPU).
    let span = tracing::info_span!(
        "webhook",
        program = program.id.as_str(),
        event_type = event.event_type.as_str(),
        event_id = event.event_id.as_str(),
        customer_id = event.customer_id.as_str()
    );

    let started = Instant::now();
    let result = receiver.publisher.publish(&event).instrument(span.clone()).await;
    receiver.metrics.publish_seconds.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(_) => {
            span.in_scope(|| tracing::debug!("webhook accepted"));
            (label, Ok(Accepted::Event(event.event_id)), Some(span))
        }
        Err(err) => (label, Err(ReceiveError::Unavailable(err)), Some(span)),
    }
}

/// Reads the whole body within the request timeout and the size limit,
/// into one buffer whose bytes are reserved against the body budget. A
/// declared length over the limit is refused before reading anything, and
/// a declared length is reserved whole before reading anything (503 when
/// the budget has not that much left); an undeclared one (chunked) is
/// reserved as it arrives, and read only up to the limit.
async fn read_body(
    receiver: &Receiver,
    headers: &HeaderMap,
    body: Body,
) -> Result<(bytes::Bytes, Reservation), ReceiveError> {
    let max = receiver.max_body_bytes;
    // A body somewhat over the limit is read to its end and thrown away
    // before the 413: a client still sending it would otherwise meet a reset
    // connection instead of the answer (hyper closes a connection whose body
    // was left unread). A body over twice the limit is not read at all.
    let drain_limit = max.saturating_mul(2);
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > drain_limit as u64) {
        return Err(ReceiveError::TooLarge(max));
    }
    // Only the first `max` bytes of a body are ever kept.
    let expected = declared.map_or(0, |len| usize::try_from(len).unwrap_or(usize::MAX).min(max));
    let Some(mut reservation) = receiver.body_budget.try_reserve(expected) else {
        return Err(ReceiveError::BodyBudgetExhausted);
    };
    let read = async move {
        let mut body = body;
        let mut kept = Vec::with_capacity(expected);
        let mut seen = 0usize;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let Ok(data) = frame.map_err(|_| ReceiveError::BodyUnreadable)?.into_data() else { continue };
            seen = seen.saturating_add(data.len());
            if seen > drain_limit {
                return Err(ReceiveError::TooLarge(max));
            }
            if seen <= max {
                make_room(&mut kept, &mut reservation, data.len(), max)?;
                kept.extend_from_slice(&data);
            }
        }
        if seen > max { Err(ReceiveError::TooLarge(max)) } else { Ok((bytes::Bytes::from(kept), reservation)) }
    };
    match tokio::time::timeout(receiver.request_timeout, read).await {
        Err(_) => Err(ReceiveError::BodyTimeout(receiver.request_timeout)),
        Ok(result) => result,
    }
}

/// The least a chunked body's reservation grows by, so that small chunks
/// do not cost a reallocation each.
const MIN_GROWTH: usize = 16 * 1024;

/// Makes room in `buffer` for `more` bytes, its capacity never past what
/// `reservation` holds: a body with a declared length already has it; a
/// chunked one grows both, doubling (at most to `max`, the body limit) when
/// the budget allows and else by exactly what is needed, or is refused
/// (503) when the budget has not even that.
fn make_room(buffer: &mut Vec<u8>, reservation: &mut Reservation, more: usize, max: usize) -> Result<(), ReceiveError> {
    let needed = buffer.len().saturating_add(more);
    if needed > reservation.held() {
        let generous = needed.max(reservation.held().saturating_mul(2)).max(MIN_GROWTH).min(max);
        if !(reservation.grow_to(generous) || reservation.grow_to(needed)) {
            return Err(ReceiveError::BodyBudgetExhausted);
        }
    }
    // Exact, not amortised: the capacity stays what was reserved.
    buffer.reserve_exact(reservation.held().max(needed) - buffer.len());
    Ok(())
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).expect("valid header"));
        headers
    }

    #[test]
    fn a_chunked_body_grows_its_buffer_and_reservation_together() {
        let budget = BodyBudget::new(100_000);
        let mut reservation = budget.empty();
        let mut buffer = Vec::new();
        make_room(&mut buffer, &mut reservation, 100, 50_000).expect("room");
        assert_eq!(reservation.held(), MIN_GROWTH, "small chunks reserve a step");
        assert!(buffer.capacity() >= 100 && buffer.capacity() <= MIN_GROWTH + 64, "{}", buffer.capacity());
        buffer.resize(MIN_GROWTH, 0);
        make_room(&mut buffer, &mut reservation, 1, 50_000).expect("room");
        assert_eq!(reservation.held(), 2 * MIN_GROWTH, "then doubling");
        buffer.resize(40_000, 0);
        make_room(&mut buffer, &mut reservation, 10_000, 50_000).expect("room");
        assert_eq!(reservation.held(), 50_000, "never past the body limit");
        assert_eq!(budget.free(), 50_000);
        let _other = budget.try_reserve(45_000).expect("the budget's other half, nearly");
        let mut second = budget.empty();
        let mut small = Vec::new();
        make_room(&mut small, &mut second, 5_000, 50_000).expect("exactly what is needed when doubling does not fit");
        assert_eq!(second.held(), 5_000);
        small.resize(5_000, 0);
        assert!(matches!(make_room(&mut small, &mut second, 1, 50_000), Err(ReceiveError::BodyBudgetExhausted)));
        assert_eq!(budget.free(), 0, "a refusal keeps what was held until dropped");
        drop(second);
        assert_eq!(budget.free(), 5_000);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&HeaderMap::new()), "missing header is JSON");
        assert!(is_json(&with_type("application/json")));
        assert!(is_json(&with_type("Application/JSON; charset=utf-8")));
        assert!(!is_json(&with_type("application/xml")));
        assert!(!is_json(&with_type("text/plain")));
        assert!(!is_json(&with_type("application/jsonp")));
    }
}
