//! Who may call `/v1`, and what they may do: `Authorization: Bearer` with
//! a token that stands for a [`Principal`] (its programs and [`Scope`]s),
//! checked by [`require_token`] in front of every API route, which puts the
//! principal into the request for the handler to check its scope.
//!
//! Two kinds of token are accepted:
//! - **bootstrap tokens**, `CONNECTFLOW_API_TOKENS`: every program and every
//!   scope, fixed for the life of the process;
//! - **issued tokens** (`connectflow tokens issue`), stored as digests in
//!   Postgres and copied into memory by a refresher every 2 s
//!   ([`issued`]), so they are issued, revoked and expire without a restart.

mod issued;
mod principal;

pub use principal::{Principal, ProgramAccess, Scope, Scopes, UnknownScope};

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio_util::sync::CancellationToken;

use super::ApiState;
use crate::config::SecretList;
use crate::error::ApiError;
use crate::store::tokens::digest;

/// The name every bootstrap token's principal carries.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// The accepted bearer tokens.
///
/// Bootstrap tokens are kept as SHA-256 digests. The presented token is
/// hashed and compared with every bootstrap digest in constant time: the
/// comparison always covers 32 bytes per token, so timing tells nothing
/// about which token matched, how much of one, or how long the configured
/// ones are. Issued tokens are looked up by digest in the refreshed copy.
pub struct ApiAuth {
    bootstrap: Vec<([u8; 32], Principal)>,
    issued: issued::IssuedCache,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiAuth({} bootstrap tokens, {} issued)", self.bootstrap.len(), self.issued.current().len())
    }
}

impl ApiAuth {
    /// From the bootstrap tokens; issued tokens arrive with the first
    /// refresh ([`ApiAuth::keep_fresh`]).
    pub fn new(tokens: &SecretList) -> Self {
        let bootstrap = tokens
            .iter()
            .map(|token| {
                let digest = digest(token.expose().as_bytes());
                (digest, bootstrap_principal(&digest))
            })
            .collect();
        Self { bootstrap, issued: issued::IssuedCache::default() }
    }

    /// The principal `presented` stands for, if it is a bootstrap token or an
    /// active issued token at `now`. Bootstrap tokens are compared in
    /// constant time in both the presented and the configured tokens'
    /// lengths; a use of an issued token is noted for `last_used_at`.
    pub fn principal(&self, presented: &[u8], now: DateTime<Utc>) -> Option<Principal> {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, (token, _)) in (0u32..).zip(&self.bootstrap) {
            let equal = token.ct_eq(&presented);
            index.conditional_assign(&i, equal);
            matched |= equal;
        }
        if bool::from(matched) {
            return self.bootstrap.get(usize::try_from(index).ok()?).map(|(_, principal)| principal.clone());
        }
        let issued = self.issued.current();
        let token = issued.find(&presented, now)?;
        self.issued.note_use(token, now);
        Some(token.principal.clone())
    }

    /// Checks `Authorization: Bearer <token>`: the principal, or 401.
    pub fn check(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes())
            .ok_or(ApiError::Unauthorized)?;
        self.principal(presented, Utc::now()).ok_or(ApiError::Unauthorized)
    }

    /// Keeps the issued tokens fresh from `pool` (every
    /// [`REFRESH_INTERVAL`]) and writes their uses back, until `shutdown`.
    /// The HTTP server runs it beside the listener.
    pub async fn keep_fresh(&self, pool: &PgPool, shutdown: CancellationToken) {
        self.issued.keep_fresh(pool, shutdown).await;
    }
}

/// A bootstrap token's principal: every program, every scope, and an id
/// that names the token without revealing it (the first 8 hex digits of the
/// SHA-256 of its digest), stable across restarts and processes.
fn bootstrap_principal(token_digest: &[u8; 32]) -> Principal {
    let id = hex::encode(digest(token_digest));
    Principal {
        token_id: format!("bootstrap-{}", &id[..8]).into(),
        token_name: BOOTSTRAP_NAME.into(),
        programs: ProgramAccess::All,
        scopes: Scopes::all(),
    }
}

/// Middleware: rejects requests without a valid bearer token (401), and
/// gives the handler the token's [`Principal`].
pub async fn require_token(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    match state.auth.check(request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => axum::response::IntoResponse::into_response(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(auth: &ApiAuth, presented: &[u8]) -> bool {
        auth.principal(presented, Utc::now()).is_some()
    }

    #[test]
    fn tokens_match_by_digest_whatever_their_length() {
        let auth = ApiAuth::new(&SecretList::new(["short", "a-much-longer-second-token"]).expect("tokens"));
        assert!(accepts(&auth, b"short"));
        assert!(accepts(&auth, b"a-much-longer-second-token"));
        for wrong in [&b""[..], b"shor", b"short ", b"a-much-longer-second-tokeN", &[b'x'; 4096]] {
            assert!(!accepts(&auth, wrong), "{wrong:?}");
        }
        // Every configured token is held as 32 bytes: the comparison does
        // not depend on any token's length.
        assert!(auth.bootstrap.iter().all(|(d, _)| d.len() == 32));
    }

    #[test]
    fn bootstrap_tokens_hold_everything_under_a_stable_id_that_reveals_nothing() {
        let auth = ApiAuth::new(&SecretList::new(["one", "two"]).expect("tokens"));
        let one = auth.principal(b"one", Utc::now()).expect("accepted");
        let two = auth.principal(b"two", Utc::now()).expect("accepted");
        assert_eq!((one.programs.clone(), one.scopes), (ProgramAccess::All, Scopes::all()));
        assert_eq!(&*one.token_name, BOOTSTRAP_NAME);
        // bootstrap- and the first 8 hex digits of SHA-256(SHA-256("one")).
        let expected = hex::encode(digest(&digest(b"one")));
        assert_eq!(&*one.token_id, format!("bootstrap-{}", &expected[..8]));
        assert_ne!(one.token_id, two.token_id);
        assert!(!one.token_id.contains(&hex::encode(digest(b"one"))[..8]));
        let again = ApiAuth::new(&SecretList::new(["two", "one"]).expect("tokens"));
        assert_eq!(again.principal(b"one", Utc::now()).map(|p| p.token_id), Some(one.token_id));
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
