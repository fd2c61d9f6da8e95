//! The query API under `/v1`: bearer-token authentication and the lifecycle
//! routes.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::config::SecretList;
use crate::error::ApiError;

/// The accepted bearer tokens. Every token is compared, in constant time,
/// so timing tells nothing about which (or how much of one) matched.
#[derive(Clone)]
pub struct ApiAuth {
    tokens: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiAuth({} tokens)", self.tokens.len())
    }
}

impl ApiAuth {
    /// From the configured tokens.
    pub fn new(tokens: &SecretList) -> Self {
        Self { tokens: tokens.iter().map(|t| t.expose().as_bytes().to_vec()).collect() }
    }

    /// Checks `Authorization: Bearer <token>`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes())
            .ok_or(ApiError::Unauthorized)?;
        let mut matched = subtle::Choice::from(0);
        for token in &self.tokens {
            matched |= token.as_slice().ct_eq(presented);
        }
        if bool::from(matched) { Ok(()) } else { Err(ApiError::Unauthorized) }
    }
}

/// The `/v1` routes.
pub fn routes(_state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
}
