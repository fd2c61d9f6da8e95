//! Who may call `/v1`: `Authorization: Bearer` with one of
//! `CONNECTFLOW_API_TOKENS`, checked by [`require_token`] in front of every
//! API route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::ApiState;
use crate::config::SecretList;
use crate::error::ApiError;

/// The accepted bearer tokens, kept as SHA-256 digests. The presented token
/// is hashed and compared with every digest in constant time: the comparison
/// always covers 32 bytes per token, so timing tells nothing about which
/// token matched, how much of one, or how long the configured ones are.
#[derive(Clone)]
pub struct ApiAuth {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiAuth({} tokens)", self.digests.len())
    }
}

impl ApiAuth {
    /// From the configured tokens.
    pub fn new(tokens: &SecretList) -> Self {
        Self { digests: tokens.iter().map(|t| digest(t.expose().as_bytes())).collect() }
    }

    /// Whether `presented` is one of the tokens (constant time in both the
    /// presented and the configured tokens' lengths).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        for token in &self.digests {
            matched |= token.ct_eq(&presented);
        }
        bool::from(matched)
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
        if self.accepts(presented) { Ok(()) } else { Err(ApiError::Unauthorized) }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Middleware: rejects requests without a valid bearer token.
pub async fn require_token(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    match state.auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => axum::response::IntoResponse::into_response(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest_whatever_their_length() {
        let auth = ApiAuth::new(&SecretList::new(["short", "a-much-longer-second-token"]).expect("tokens"));
        assert!(auth.accepts(b"short"));
        assert!(auth.accepts(b"a-much-longer-second-token"));
        for wrong in [&b""[..], b"shor", b"short ", b"a-much-longer-second-tokeN", &[b'x'; 4096]] {
            assert!(!auth.accepts(wrong), "{wrong:?}");
        }
        // Every configured token is held as 32 bytes: the comparison does
        // not depend on any token's length.
        assert!(auth.digests.iter().all(|d| d.len() == 32));
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = ApiAuth::new(&SecretList::new(["one", "two"]).expect("tokens"));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            headers
        };
        assert!(auth.check(&with("Bearer one")).is_ok());
        assert!(auth.check(&with("bearer two")).is_ok());
        assert!(auth.check(&with("Bearer three")).is_err());
        assert!(auth.check(&with("Bearer on")).is_err());
        assert!(auth.check(&with("Basic one")).is_err());
        assert!(auth.check(&HeaderMap::new()).is_err());
    }
}
