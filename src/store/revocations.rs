//! The `Idempotency-Key`s of requests that become events of connectflow's
//! own (revocations and erasures): within a program and until the key's
//! end, the same key always stands for the same request and the same event.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::store::error::{StoreError, StoreResultExt};
use crate::store::read::cut_page;

/// What a key was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRequest {
    /// The customer revoked; none for an erasure (its row outlives the
    /// customer, and the digest covers the customer).
    pub customer_id: Option<String>,
    /// SHA-256 of the request (customer, login, who, reason).
    pub request_sha256: Vec<u8>,
    /// The revocation event's id.
    pub event_id: String,
    /// When it was first recorded: the event's `occurred_at`.
    pub occurred_at: DateTime<Utc>,
    /// The token that asked (id).
    pub token_id: Option<String>,
    /// The token that asked (name).
    pub token_name: Option<String>,
}

/// What [`remember`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remembered {
    /// The key was new (or its end had passed): recorded for this request,
    /// as it is here (a renewed key's event has the renewed id).
    New(RevocationRequest),
    /// The key stands for this earlier request (the same one replayed, or
    /// another: the caller compares).
    Earlier(RevocationRequest),
}

/// Records `request` under `(program, key)` unless the key is known and has
/// not ended (`recorded before expired_before` ended); an ended key is
/// recorded anew with `renewed_event_id`, since its first event is already
/// applied and a new one must not be taken for a duplicate of it.
pub async fn remember(
    pool: &PgPool,
    program: &str,
    key: &str,
    request: &RevocationRequest,
    expired_before: DateTime<Utc>,
    renewed_event_id: &str,
) -> Result<Remembered, StoreError> {
    let inserted = sqlx::query!(
        r#"
        INSERT INTO consent_revocation_requests
            (program_id, idempotency_key, customer_id, request_sha256, event_id, occurred_at, token_id, token_name)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (program_id, idempotency_key) DO NOTHING
        "#,
        program,
        key,
        request.customer_id,
        request.request_sha256,
        request.event_id,
        request.occurred_at,
        request.token_id,
        request.token_name,
    )
    .execute(pool)
    .await
    .store("recording an idempotency key")?;
    if inserted.rows_affected() == 1 {
        return Ok(Remembered::New(request.clone()));
    }
    // The key is known; an ended one is taken over by this request (only
    // by one of several racing for it: the update names the row it read).
    let renewed = sqlx::query!(
        r#"
        UPDATE consent_revocation_requests
        SET customer_id = $3, request_sha256 = $4, event_id = $5, occurred_at = $6, token_id = $7,
            token_name = $8, created_at = now()
        WHERE program_id = $1 AND idempotency_key = $2 AND created_at < $9
        "#,
        program,
        key,
        request.customer_id,
        request.request_sha256,
        renewed_event_id,
        request.occurred_at,
        request.token_id,
        request.token_name,
        expired_before,
    )
    .execute(pool)
    .await
    .store("renewing an ended idempotency key")?;
    if renewed.rows_affected() == 1 {
        return Ok(Remembered::New(RevocationRequest { event_id: renewed_event_id.to_owned(), ..request.clone() }));
    }
    // A later statement: it sees the row a concurrent request committed
    // (the statements above waited for it).
    let row = recall(pool, program, key).await?.ok_or(StoreError::Permanent {
        context: "reading an idempotency key",
        reason: "the key's row is gone".into(),
    })?;
    Ok(Remembered::Earlier(row))
}

/// What `(program, key)` was used for, if it was (ended or not).
pub async fn recall(pool: &PgPool, program: &str, key: &str) -> Result<Option<RevocationRequest>, StoreError> {
    sqlx::query_as!(
        RevocationRequest,
        r#"
        SELECT customer_id, request_sha256, event_id, occurred_at, token_id, token_name
        FROM consent_revocation_requests WHERE program_id = $1 AND idempotency_key = $2
        "#,
        program,
        key
    )
    .fetch_optional(pool)
    .await
    .store("reading an idempotency key")
}

/// A recorded request as a customer's export shows it: never the request's
/// digest (`request_sha256`), which only tells requests apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRevocation {
    /// The caller's `Idempotency-Key`.
    pub idempotency_key: String,
    /// The revocation event's id.
    pub event_id: String,
    /// The event's `occurred_at`.
    pub occurred_at: DateTime<Utc>,
    /// The token that asked (id).
    pub token_id: Option<String>,
    /// The token that asked (name).
    pub token_name: Option<String>,
    /// When the key was recorded (or renewed).
    pub created_at: DateTime<Utc>,
}

/// The requests recorded for `customer_id` under `program`, in
/// `(occurred_at, event_id)` order, at most `limit`; and the key of the last
/// one when more follow. A key renewed for another customer after its end
/// (see [`remember`]) is that customer's now.
pub async fn of_customer(
    db: impl PgExecutor<'_>,
    program: &str,
    customer_id: &str,
    limit: i64,
) -> Result<(Vec<RecordedRevocation>, Option<(DateTime<Utc>, String)>), StoreError> {
    let mut rows = sqlx::query_as!(
        RecordedRevocation,
        r#"
        SELECT idempotency_key, event_id, occurred_at, token_id, token_name, created_at
        FROM consent_revocation_requests
        WHERE customer_id = $1 AND program_id = $2
        ORDER BY occurred_at, event_id
        LIMIT $3
        "#,
        customer_id,
        program,
        limit + 1,
    )
    .fetch_all(db)
    .await
    .store("reading a customer's revocation requests")?;
    let next = cut_page(&mut rows, limit, |r| (r.occurred_at, r.event_id.clone()));
    Ok((rows, next))
}
