//! The `Idempotency-Key`s of recorded revocations: the same key always
//! stands for the same request and the same event.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::error::{StoreError, StoreResultExt};

/// What a key was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRequest {
    /// The customer revoked.
    pub customer_id: String,
    /// SHA-256 of the request (customer, login, who, reason).
    pub request_sha256: Vec<u8>,
    /// The revocation event's id.
    pub event_id: String,
    /// When it was first recorded: the event's `occurred_at`.
    pub occurred_at: DateTime<Utc>,
}

/// Records `request` under `key` unless the key is known; returns what the
/// key stands for (this request, or the one it was first used for).
pub async fn remember(pool: &PgPool, key: &str, request: &RevocationRequest) -> Result<RevocationRequest, StoreError> {
    let inserted = sqlx::query!(
        r#"
        INSERT INTO consent_revocation_requests (idempotency_key, customer_id, request_sha256, event_id, occurred_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (idempotency_key) DO NOTHING
        "#,
        key,
        request.customer_id,
        request.request_sha256,
        request.event_id,
        request.occurred_at,
    )
    .execute(pool)
    .await
    .store("recording an idempotency key")?;
    if inserted.rows_affected() == 1 {
        return Ok(request.clone());
    }
    // A later statement: it sees the row a concurrent request committed
    // (the insert above waited for it).
    let row = sqlx::query_as!(
        RevocationRequest,
        r#"
        SELECT customer_id, request_sha256, event_id, occurred_at
        FROM consent_revocation_requests WHERE idempotency_key = $1
        "#,
        key
    )
    .fetch_one(pool)
    .await
    .store("reading an idempotency key")?;
    Ok(row)
}
