//! [`ReceiveError`]: why a webhook was not accepted. Each knows its metric
//! outcome label and its HTTP answer, so the handler matches on types, never
//! on error text.

use std::time::Duration;

use crate::error::ApiError;
use crate::publish::PublishError;
use crate::receive::normalise::ParseError;
use crate::receive::signature::SignatureError;

/// Seconds a shed or failed webhook is told to wait before retrying.
const RETRY_AFTER_S: u32 = 5;

/// A webhook that was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The URL names no declared program (404, before the body is read).
    #[error("no such program")]
    UnknownProgram,
    /// More webhooks in flight than `CONNECTFLOW_MAX_CONCURRENT_WEBHOOKS`:
    /// shed before reading the body (503, retried by Finicity).
    #[error("too many webhooks in flight; retry later")]
    Overloaded,
    /// The body's declared length, or a chunked body's bytes so far, do not
    /// fit in what is left of `CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES` (503,
    /// retried by Finicity; a declared length is refused before the body is
    /// read).
    #[error("too many webhook bytes in flight; retry later")]
    BodyBudgetExhausted,
    /// Declared or actual body over `CONNECTFLOW_MAX_BODY_BYTES` (413).
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive within `CONNECTFLOW_REQUEST_TIMEOUT_MS` (408).
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The connection failed while the body was read (400).
    #[error("could not read the request body")]
    BodyUnreadable,
    /// Not `application/json` (415).
    #[error("Content-Type must be application/json (XML webhooks are not supported yet)")]
    NotJson,
    /// Missing, malformed or wrong signature (401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Signed, but not an event the pipeline can keep (400 naming the field).
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// Kafka did not confirm the write (503, retried by Finicity).
    #[error("the event could not be recorded now; retry later")]
    Unavailable(#[source] PublishError),
}

impl ReceiveError {
    /// The `outcome` label of `connectflow_webhooks_total`: the error code
    /// answered.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Overloaded | Self::BodyBudgetExhausted | Self::Unavailable(_) => "unavailable",
            Self::TooLarge(_) => "payload_too_large",
            Self::BodyTimeout(_) => "request_timeout",
            Self::UnknownProgram => "not_found",
            Self::Invalid(ParseError::ProgramMismatch) => "program_mismatch",
            Self::BodyUnreadable | Self::Invalid(_) => "invalid_request",
            Self::NotJson => "unsupported_media_type",
            Self::Signature(_) => "invalid_signature",
        }
    }
}

impl ReceiveError {
    /// The `reason` label of `connectflow_webhooks_shed_total` when the
    /// webhook was shed for a receiver limit (`concurrency`: the count cap;
    /// `body_bytes`: the body budget); `None` for every other refusal.
    pub fn shed_reason(&self) -> Option<&'static str> {
        match self {
            Self::Overloaded => Some("concurrency"),
            Self::BodyBudgetExhausted => Some("body_bytes"),
            _ => None,
        }
    }
}

impl From<ReceiveError> for ApiError {
    fn from(err: ReceiveError) -> Self {
        match err {
            ReceiveError::Overloaded => ApiError::Unavailable {
                message: "too many webhooks in flight; retry later",
                retry_after_s: RETRY_AFTER_S,
            },
            ReceiveError::BodyBudgetExhausted => ApiError::Unavailable {
                message: "too many webhook bytes in flight; retry later",
                retry_after_s: RETRY_AFTER_S,
            },
            ReceiveError::Unavailable(_) => ApiError::Unavailable {
                message: "the event could not be recorded now; retry later",
                retry_after_s: RETRY_AFTER_S,
            },
            ReceiveError::TooLarge(max) => ApiError::PayloadTooLarge(max),
            ReceiveError::BodyTimeout(_) => ApiError::RequestTimeout(err.to_string()),
            ReceiveError::UnknownProgram => ApiError::NotFound(err.to_string()),
            ReceiveError::Invalid(ParseError::ProgramMismatch) => ApiError::ProgramMismatch(err.to_string()),
            ReceiveError::BodyUnreadable | ReceiveError::Invalid(_) => ApiError::BadRequest(err.to_string()),
            ReceiveError::NotJson => ApiError::UnsupportedMediaType(
                "Content-Type must be application/json (XML webhooks are not supported yet)",
            ),
            ReceiveError::Signature(err) => ApiError::BadSignature(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn each_error_answers_the_status_its_label_names() {
        let cases = [
            (ReceiveError::Overloaded, StatusCode::SERVICE_UNAVAILABLE),
            (ReceiveError::BodyBudgetExhausted, StatusCode::SERVICE_UNAVAILABLE),
            (ReceiveError::TooLarge(10), StatusCode::PAYLOAD_TOO_LARGE),
            (ReceiveError::BodyTimeout(Duration::from_secs(1)), StatusCode::REQUEST_TIMEOUT),
            (ReceiveError::BodyUnreadable, StatusCode::BAD_REQUEST),
            (ReceiveError::NotJson, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (ReceiveError::Signature(SignatureError::Missing), StatusCode::UNAUTHORIZED),
            (ReceiveError::Invalid(ParseError::BadCustomerId), StatusCode::BAD_REQUEST),
        ];
        for (err, status) in cases {
            let label = err.outcome();
            let (answered, code) = ApiError::from(err).status_and_code();
            assert_eq!(answered, status, "{label}");
            assert_eq!(code, label, "the metric label is the error code answered");
        }
    }
}
