//! The error answers most API routes share, described once for the OpenAPI
//! document: a handler lists its own answers and adds these.

use utoipa::IntoResponses;

use crate::error::ErrorBody;

/// 401, 500 and 503 (the database is unavailable): what every read of the
/// API may answer besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only described, never built: handlers answer [`crate::error::ApiError`].
pub enum ReadErrors {
    /// No valid bearer token.
    #[response(status = 401, description = "Missing or invalid credentials")]
    Unauthorized(ErrorBody),
    /// Anything unexpected (the cause is logged, never sent).
    #[response(status = 500, description = "Internal error")]
    Internal(ErrorBody),
    /// Postgres cannot be reached now.
    #[response(status = 503, description = "The database is unavailable; retry (Retry-After)")]
    Unavailable(ErrorBody),
}

/// 401 and 500, for a route whose 503 says more than [`ReadErrors`]'s.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only described, never built.
pub enum AuthErrors {
    /// No valid bearer token.
    #[response(status = 401, description = "Missing or invalid credentials")]
    Unauthorized(ErrorBody),
    /// Anything unexpected (the cause is logged, never sent).
    #[response(status = 500, description = "Internal error")]
    Internal(ErrorBody),
}
