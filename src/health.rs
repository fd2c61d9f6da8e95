//! Liveness, readiness and metrics endpoints: on the HTTP side's listener,
//! and on the consumer's own when `connectflow consume` is given one.
//! What the consumer's lanes report to them is [`consumer`]'s.

pub mod consumer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::health::consumer::ConsumerHealth;
use crate::metrics::{LaneLabels, Metrics};
use crate::publish::Publisher;

/// What the operations endpoints look at.
#[derive(Debug)]
pub struct OpsState {
    /// Postgres, for readiness.
    pub pool: PgPool,
    /// The read replica the query API reads from, when configured: its
    /// state and lag are reported by `/readyz`, which it does not fail (see
    /// [`readyz`]).
    pub replica: Option<PgPool>,
    /// A Kafka client that knows the events topic, for readiness.
    pub publisher: Publisher,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The lifecycle consumer's lanes, when this process runs one
    /// (`consume`, `all`): `/livez` fails when a lane is stalled.
    pub consumer: Option<Arc<ConsumerHealth>>,
    /// Whether readiness needs Postgres. A receiver (`serve`) needs only
    /// Kafka to take webhooks; its query API answers 503 by itself while
    /// Postgres is away. The consumer needs both.
    pub readiness_needs_postgres: bool,
    /// The last readiness result, reused for [`READINESS_TTL`].
    pub readiness: ReadinessCache,
}

/// How long a readiness result is reused: however often `/readyz` is called,
/// Postgres and Kafka see at most one check per second from it.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness result and when it was taken.
#[derive(Debug, Default)]
pub struct ReadinessCache(tokio::sync::Mutex<Option<(Instant, Readiness)>>);

/// What a readiness check found.
#[derive(Debug, Clone)]
struct Readiness {
    /// The dependencies that do not answer.
    failing: Vec<&'static str>,
    /// The read replica, when configured: its lag in seconds, or `None`
    /// when it does not answer.
    replica: Option<Option<f64>>,
}

impl Readiness {
    /// The replica's part of the answer, when there is one.
    fn replica_json(&self) -> Option<serde_json::Value> {
        self.replica.map(|lag| match lag {
            Some(lag) => json!({"status": "ok", "lag_seconds": lag}),
            None => json!({"status": "unavailable"}),
        })
    }
}

/// `/livez`, `/readyz` and `/metrics`, documented.
pub fn routes(state: Arc<OpsState>) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(livez)).routes(routes!(readyz)).routes(routes!(metrics)).with_state(state)
}

/// Serves the operations endpoints alone (the consumer's listener) until
/// `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<OpsState>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (router, _) = routes(state.clone()).split_for_parts();
    let router =
        router.fallback(|| async { crate::error::error_response(StatusCode::NOT_FOUND, "not_found", "no such route") });
    tracing::info!(listen = %listener.local_addr()?, "operations endpoints listening");
    let limits =
        crate::serve::ConnectionLimits { header_timeout: OPS_HEADER_TIMEOUT, max_connections: OPS_MAX_CONNECTIONS };
    crate::serve::serve(listener, router, limits, &state.metrics, shutdown).await;
    Ok(())
}

/// Header deadline (and keep-alive idle timeout) of the consumer's own
/// operations listener.
const OPS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections open at once on the consumer's operations listener
/// (probes and scrapes need a handful).
const OPS_MAX_CONNECTIONS: usize = 256;

/// How long a readiness probe waits for each dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /livez`: 200 while the process serves and no consumer lane is
/// stalled; 503 when a lane has held records without progress for longer
/// than `CONNECTFLOW_CONSUMER_STALL_SECONDS` (restart me).
#[utoipa::path(get, path = "/livez", tag = "operations", responses(
    (status = 200, description = "The process serves"),
    (status = 503, description = "A consumer lane is stalled", body = crate::error::ErrorBody),
))]
pub async fn livez(State(state): State<Arc<OpsState>>) -> Response {
    let stalls = state.consumer.as_ref().map(|c| c.stalls()).unwrap_or_default();
    let Some(worst) = stalls.iter().max_by_key(|s| s.for_) else {
        return Json(json!({"status": "ok"})).into_response();
    };
    let message = format!(
        "consumer stalled: lane {} has held records without progress for {}s",
        worst.lane,
        worst.for_.as_secs()
    );
    tracing::warn!(lane = worst.lane, stalled_for = ?worst.for_, "not live: consumer lane stalled");
    let lanes: Vec<usize> = stalls.iter().map(|s| s.lane).collect();
    let body = json!({"error": {"code": "stalled", "message": message}, "stalled_lanes": lanes});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /readyz`: 200 when what this process needs answers: Kafka knows the
/// events topic and the producer has not failed fatally, and (for the
/// consumer) Postgres answers; else 503 naming each failing dependency.
/// Results are reused for a second.
///
/// With a read replica (`CONNECTFLOW_DATABASE_READ_URL`) the answer
/// includes `replica`: `status` (`ok` or `unavailable`) and `lag_seconds`.
/// A replica that does not answer does not make the process unready: the
/// receiver must keep taking webhooks, and the query API answers 503 by
/// itself, as it does while the primary is away.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Kafka (and, for the consumer, Postgres) answer"),
    (status = 503, description = "A dependency is unavailable; `failing` names it", body = crate::error::ErrorBody),
))]
pub async fn readyz(State(state): State<Arc<OpsState>>) -> Response {
    let readiness = readiness(&state).await;
    let replica = readiness.replica_json();
    if readiness.failing.is_empty() {
        let mut body = json!({"status": "ready"});
        if let Some(replica) = replica {
            body["replica"] = replica;
        }
        return Json(body).into_response();
    }
    let message = format!("not ready: {} unavailable", readiness.failing.join(", "));
    let mut body = json!({
        "error": {"code": "not_ready", "message": message},
        "failing": readiness.failing,
    });
    if let Some(replica) = replica {
        body["replica"] = replica;
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The readiness of the process, checked at most once per
/// [`READINESS_TTL`] (concurrent callers wait for one check instead of each
/// running one), and the readiness gauges set from it.
async fn readiness(state: &OpsState) -> Readiness {
    let mut cached = state.readiness.0.lock().await;
    match cached.as_ref() {
        Some((at, readiness)) if at.elapsed() < READINESS_TTL => readiness.clone(),
        _ => {
            let readiness = check_dependencies(state).await;
            let metrics = &state.metrics;
            metrics.ready.set(i64::from(readiness.failing.is_empty()));
            metrics.producer_fatal.set(i64::from(state.publisher.fatal_error().is_some()));
            *cached = Some((Instant::now(), readiness.clone()));
            readiness
        }
    }
}

/// The read replica's lag, or `None` when it does not answer in time (also
/// sets the lag gauge).
async fn check_replica(replica: &PgPool, metrics: &Metrics) -> Option<f64> {
    match tokio::time::timeout(CHECK_TIMEOUT, crate::store::replica_lag_seconds(replica)).await {
        Ok(Ok(lag)) => {
            metrics.replica_lag_seconds.set(lag);
            Some(lag)
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "the read replica does not answer; the query API's reads fail until it does");
            None
        }
        Err(_) => {
            tracing::warn!("the read replica did not answer in time");
            None
        }
    }
}

/// The dependencies that do not answer now, and the replica's state.
async fn check_dependencies(state: &OpsState) -> Readiness {
    let postgres = async {
        if !state.readiness_needs_postgres {
            return Ok(());
        }
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let kafka = state.publisher.check_topic(CHECK_TIMEOUT);
    let replica = async {
        match &state.replica {
            Some(replica) => Some(check_replica(replica, &state.metrics).await),
            None => None,
        }
    };
    let (postgres, kafka, replica) = tokio::join!(postgres, kafka, replica);
    let mut failing = Vec::new();
    for (name, result) in [("postgres", postgres), ("kafka", kafka)] {
        if let Err(cause) = result {
            tracing::warn!(dependency = name, cause, "not ready");
            failing.push(name);
        }
    }
    Readiness { failing, replica }
}

/// `GET /metrics`: Prometheus text exposition. It also starts a refresh of
/// the readiness gauges (`connectflow_ready`, `connectflow_producer_fatal`)
/// from the same cached check as `/readyz`, without waiting for it.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text"),
))]
pub async fn metrics(State(state): State<Arc<OpsState>>) -> Response {
    // The readiness gauges are refreshed in the background when a second
    // old, so that an alert on them needs no prober, and a scrape never
    // waits for a dependency that does not answer: it shows the latest
    // check, made at most a scrape earlier.
    let checking = state.clone();
    tokio::spawn(async move {
        readiness(&checking).await;
    });
    if let Some(consumer) = &state.consumer {
        for (lane, age) in consumer.oldest_unapplied().into_iter().enumerate() {
            let lane = u32::try_from(lane).unwrap_or(u32::MAX);
            state.metrics.oldest_unapplied_seconds.get_or_create(&LaneLabels { lane }).set(age.as_secs_f64());
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
