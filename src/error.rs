//! The one error shape of every HTTP answer:
//! `{"error":{"code":"...","message":"..."}}`.
//!
//! Handlers return [`ApiError`]; its single status table lives in
//! [`ApiError::status_and_code`]. Internal causes are logged here and never
//! sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::store::error::{StoreError, is_transient_sqlx};
use crate::telemetry::LogLimiter;

/// Everything an HTTP handler can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 400 on the webhook: the signed body names another program than the
    /// URL's.
    #[error("{0}")]
    ProgramMismatch(String),
    /// 401 on the query API: missing or invalid bearer token.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 401 on the webhook: missing, malformed or wrong signature (the
    /// message says which).
    #[error("{0}")]
    BadSignature(String),
    /// 403 on the query API: the token is valid but lacks what the request
    /// needs (the route's scope); the message names it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the customer is not known.
    #[error("{0}")]
    NotFound(String),
    /// 410: the customer was erased; the body says when (`erased_at`).
    #[error("customer {customer_id} was erased")]
    Gone {
        /// The customer.
        customer_id: String,
        /// When the erasure occurred.
        erased_at: DateTime<Utc>,
    },
    /// 409: the request conflicts with an earlier one (an `Idempotency-Key`
    /// reused for another request).
    #[error("{0}")]
    Conflict(String),
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413: body over the configured limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: not JSON.
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    /// 503: a dependency (Kafka, Postgres) cannot take the request now.
    #[error("{message}")]
    Unavailable {
        /// Client-facing explanation (no internal detail).
        message: &'static str,
        /// Seconds for `Retry-After`.
        retry_after_s: u32,
    },
    /// 503 `timeout` on the query API: Postgres cancelled a statement that
    /// ran past `CONNECTFLOW_API_STATEMENT_TIMEOUT_MS`.
    #[error("the query took too long; retry later")]
    StatementTimeout,
    /// 503 `busy` on the query API: every statistics place was taken for
    /// longer than a statement may run.
    #[error("too many statistics requests at once; retry later")]
    Busy,
    /// 500: anything else. The cause is logged, never returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_request`, `unauthorized`, `forbidden`, `not_found`.
    #[schema(example = "invalid_request")]
    pub code: String,
    /// Human-readable explanation (never internal detail).
    pub message: String,
    /// For `gone` (410): when the customer was erased (RFC 3339, UTC,
    /// milliseconds). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub erased_at: Option<String>,
}

impl ErrorBody {
    fn new(code: &str, message: String) -> Self {
        Self { error: ErrorDetail { code: code.to_owned(), message, erased_at: None } }
    }
}

impl ApiError {
    /// The status and machine-readable code of each variant.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::ProgramMismatch(_) => (StatusCode::BAD_REQUEST, "program_mismatch"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::BadSignature(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Gone { .. } => (StatusCode::GONE, "gone"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::StatementTimeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// `Retry-After` of `timeout` and `busy`: the load that caused them passes
/// within seconds.
const RETRY_SOON_S: u32 = 2;

/// The answer when Postgres cannot be reached: retryable, never a 500.
const DATABASE_UNAVAILABLE: ApiError =
    ApiError::Unavailable { message: "the database is unavailable; retry later", retry_after_s: 5 };

/// SQLSTATE 57014 `query_canceled`: what Postgres answers when a
/// statement runs past `statement_timeout` (the API's pool sets it on every
/// connection; nothing in the API cancels its own statements otherwise).
const QUERY_CANCELED: &str = "57014";

/// At most one statement-timeout warning a second (with the count left
/// out), so that a slow database under load does not flood the log.
static TIMEOUT_LOG: std::sync::LazyLock<LogLimiter> = std::sync::LazyLock::new(LogLimiter::default);

impl From<StoreError> for ApiError {
    /// A statement cancelled for running too long is a 503 `timeout`; a
    /// transient database failure (Postgres down, pool exhausted) is a 503
    /// the client may retry; anything else is a 500. Either way the cause
    /// is only logged (the API's handlers run in a span naming their route).
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Transient { source, .. }
                if source.as_database_error().and_then(|db| db.code()).is_some_and(|code| code == QUERY_CANCELED) =>
            {
                if let Some(suppressed) = TIMEOUT_LOG.admit("statement timeout", std::time::Instant::now()) {
                    tracing::warn!(error = %err, suppressed, "statement timeout: the query was cancelled");
                }
                Self::StatementTimeout
            }
            StoreError::Transient { source, .. } if is_transient_sqlx(source) => {
                tracing::warn!(error = %err, "database unavailable");
                DATABASE_UNAVAILABLE
            }
            _ => Self::Internal(err.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let mut body = ErrorBody::new(code, self.to_string());
        if let Self::Gone { erased_at, .. } = &self {
            body.error.erased_at = Some(erased_at.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let mut response = (status, Json(body)).into_response();
        match &self {
            Self::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable { retry_after_s, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            Self::StatementTimeout | Self::Busy => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SOON_S));
            }
            _ => {}
        }
        response
    }
}

/// Builds the JSON error body for places that are not handlers (fallbacks,
/// middleware rejections).
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(code, message.into()))).into_response()
}
