//! API tokens issued with `connectflow tokens issue`: issuing (only the
//! token's SHA-256 digest is stored), listing, revoking, the active tokens
//! every API process caches, and when each was last used.
//!
//! Scopes are stored as their names and programs as their ids: this room
//! stores what `api::auth` and the command line decided, and does not judge
//! it (a process that meets a scope name it does not know ignores it).

use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::config::Secret;
use crate::program::ProgramId;
use crate::store::error::{StoreError, StoreResultExt};

/// What every issued token starts with, so that one found in a log or a
/// repository is recognisable (and secret scanners can look for it).
pub const TOKEN_PREFIX: &str = "cf_";

/// What every issued token's id starts with.
pub const TOKEN_ID_PREFIX: &str = "tok_";

/// Random bytes in a token: 256 bits, beyond guessing or enumerating.
const TOKEN_BYTES: usize = 32;

/// Random bytes in a token's id (an id is not a secret; it is only unique).
const TOKEN_ID_BYTES: usize = 8;

/// The SHA-256 digest of a token: what is stored and looked up.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A token to issue.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Who or what it is for (shown by `tokens list`).
    pub name: String,
    /// The programs it may see; `None` for every program.
    pub programs: Option<Vec<ProgramId>>,
    /// The names of its scopes.
    pub scopes: Vec<String>,
    /// When it stops working; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token just issued: the only time the token itself exists outside its
/// holder.
#[derive(Debug)]
pub struct IssuedToken {
    /// Its id (`tok_` and 16 hex digits), for `tokens list` and `tokens revoke`.
    pub token_id: String,
    /// The token (`cf_` and 64 hex digits).
    pub token: Secret,
}

/// A stored token as `tokens list` shows it (never the token or its digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its id.
    pub token_id: String,
    /// Its name.
    pub name: String,
    /// The programs it may see; `None` for every program.
    pub programs: Option<Vec<String>>,
    /// Its scopes' names.
    pub scopes: Vec<String>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (to the minute), if ever.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token that works now: neither revoked nor expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    /// Its id.
    pub token_id: String,
    /// Its name.
    pub name: String,
    /// SHA-256 of the token.
    pub digest: Vec<u8>,
    /// The programs it may see; `None` for every program.
    pub programs: Option<Vec<String>>,
    /// Its scopes' names.
    pub scopes: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, if ever.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What `revoke` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token was active and is revoked now.
    Now,
    /// The token had been revoked already, at this time (nothing changed).
    Already(DateTime<Utc>),
}

/// Why a token could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No token has this id.
    #[error("no token has the id {0:?} (`connectflow tokens list` shows them)")]
    UnknownToken(String),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues a token: stores its digest, id, name, programs, scopes and expiry,
/// and returns the token (which is not stored).
pub async fn issue(pool: &PgPool, token: &NewToken) -> Result<IssuedToken, StoreError> {
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes::<TOKEN_BYTES>()));
    let token_id = format!("{TOKEN_ID_PREFIX}{}", hex::encode(random_bytes::<TOKEN_ID_BYTES>()));
    let programs: Option<Vec<String>> =
        token.programs.as_ref().map(|programs| programs.iter().map(|p| p.as_str().to_owned()).collect());
    sqlx::query!(
        r#"
        INSERT INTO api_tokens (token_id, name, digest, programs, scopes, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        "#,
        token_id,
        token.name,
        &digest(secret.as_bytes())[..],
        programs.as_deref(),
        &token.scopes,
        token.expires_at,
    )
    .execute(pool)
    .await
    .store("issuing an API token")?;
    Ok(IssuedToken { token_id, token: Secret::from(secret) })
}

/// Every token, revoked and expired ones included, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenRecord>, StoreError> {
    sqlx::query_as!(
        TokenRecord,
        r#"
        SELECT token_id, name, programs, scopes, created_at, expires_at, revoked_at, last_used_at
        FROM api_tokens ORDER BY created_at, token_id
        "#
    )
    .fetch_all(pool)
    .await
    .store("listing API tokens")
}

/// Revokes the token `token_id`. Revoking a revoked token changes nothing
/// (and says when it was revoked); an unknown id is an error.
pub async fn revoke(pool: &PgPool, token_id: &str) -> Result<Revoked, RevokeError> {
    let updated =
        sqlx::query!("UPDATE api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL", token_id)
            .execute(pool)
            .await
            .store("revoking an API token")?;
    if updated.rows_affected() == 1 {
        return Ok(Revoked::Now);
    }
    let revoked_at = sqlx::query_scalar!("SELECT revoked_at FROM api_tokens WHERE token_id = $1", token_id)
        .fetch_optional(pool)
        .await
        .store("reading a revoked API token")?;
    match revoked_at.flatten() {
        Some(at) => Ok(Revoked::Already(at)),
        // No row (a row not revoked would have been updated above: nothing
        // ever clears revoked_at).
        None => Err(RevokeError::UnknownToken(token_id.to_owned())),
    }
}

/// The tokens that work now: not revoked and not expired (by Postgres's
/// clock; the API checks the expiry again at each request by its own).
pub async fn active(pool: &PgPool) -> Result<Vec<ActiveToken>, StoreError> {
    sqlx::query_as!(
        ActiveToken,
        r#"
        SELECT token_id, name, digest, programs, scopes, expires_at, last_used_at
        FROM api_tokens
        WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        "#
    )
    .fetch_all(pool)
    .await
    .store("reading the active API tokens")
}

/// Records when tokens were used, in one statement. A time earlier than the
/// recorded one (another process's, reported later) changes nothing.
pub async fn record_uses(pool: &PgPool, uses: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
    if uses.is_empty() {
        return Ok(());
    }
    let (ids, times): (Vec<String>, Vec<DateTime<Utc>>) = uses.iter().cloned().unzip();
    sqlx::query!(
        r#"
        UPDATE api_tokens AS t SET last_used_at = GREATEST(t.last_used_at, u.used_at)
        FROM UNNEST($1::text[], $2::timestamptz[]) AS u(token_id, used_at)
        WHERE t.token_id = u.token_id
        "#,
        &ids,
        &times,
    )
    .execute(pool)
    .await
    .store("recording when API tokens were used")?;
    Ok(())
}

/// `N` bytes from a cryptographically secure generator: the thread's
/// ChaCha12, seeded and periodically reseeded from the operating system.
fn random_bytes<const N: usize>() -> [u8; N] {
    fn secure() -> impl rand::CryptoRng {
        rand::rng()
    }
    let mut bytes = [0u8; N];
    secure().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ_each_time() {
        let (a, b) = (random_bytes::<TOKEN_BYTES>(), random_bytes::<TOKEN_BYTES>());
        assert_ne!(a, b);
        assert_ne!(a, [0u8; TOKEN_BYTES]);
    }

    #[test]
    fn the_digest_is_sha256() {
        assert_eq!(hex::encode(digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
