//! Liveness, readiness and metrics endpoints.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;

/// How long a readiness probe waits for each dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /livez`: 200 while the process serves.
#[utoipa::path(get, path = "/livez", tag = "operations", responses((status = 200, description = "The process serves")))]
pub async fn livez() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 when Postgres answers and the events topic's metadata
/// can be fetched from Kafka; else 503 naming each failing dependency.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Postgres and Kafka answer"),
    (status = 503, description = "A dependency is unavailable; `failing` names it", body = crate::error::ErrorBody),
))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let postgres = async {
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let kafka = state.receiver.publisher.check_topic(CHECK_TIMEOUT);
    let (postgres, kafka) = tokio::join!(postgres, kafka);
    let mut failing = Vec::new();
    for (name, result) in [("postgres", postgres), ("kafka", kafka)] {
        if let Err(cause) = result {
            tracing::warn!(dependency = name, cause, "not ready");
            failing.push(name);
        }
    }
    if failing.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let message = format!("not ready: {} unavailable", failing.join(", "));
    let body = json!({
        "error": {"code": "not_ready", "message": message},
        "failing": failing,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text"),
))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
