//! `POST /v1/customers/{id}/erasures`: the issuer's answer to a deletion
//! request (CCPA/CPRA, GDPR). It becomes an event of connectflow's own
//! ([`EventType::CustomerErased`], `source: "connectflow"`), published to
//! the events topic in the customer's partition like a webhook; the answer
//! (202) comes only once Kafka has it. The consumer then deletes what
//! connectflow holds about the customer and keeps a compliance record
//! instead (`store::erasure`; docs/privacy.md).
//!
//! Retries are safe as for revocations ([`super::revocations`]): the
//! `Idempotency-Key` names the request within the customer's program, the
//! same key with the same request gives the same event again (once the
//! customer is erased too), another request with it is a 409.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::model::{ErasureAccepted, ErasureBody};
use super::params::{CustomerPath, valid_customer_id};
use super::revocations::{IDEMPOTENT_REPLAYED, idempotency_key};
use crate::error::{ApiError, ErrorBody};
use crate::event::{
    ConnectEvent, CustomerId, EventSource, EventType, MAX_TEXT_CHARS, Requested, SCHEMA_V1, TokenRef, clean_text,
    truncate_to_millis,
};
use crate::program::ProgramId;
use crate::store::revocations::{self, Remembered, RevocationRequest};
use crate::store::{erasure, read};

/// Erases the customer.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer_id}/erasures",
    tag = "consent",
    security(("bearer" = ["erase"])),
    params(
        CustomerPath,
        ("Idempotency-Key" = String, Header, description = "Names this request for retries within the customer's program, as for revocations: 1 to 128 printable ASCII characters, not starting or ending with a space. The same key with the same request returns the same answer, also once the customer is erased; with another request, 409", min_length = 1, max_length = 128, pattern = "^[!-~]([ -~]{0,126}[!-~])?$"),
    ),
    request_body(content = ErasureBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Published to the events topic: the customer will be erased. `Idempotent-Replayed: true` when the key was used before for the same request (the same event, published again)", body = ErasureAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` on the answer to a replayed Idempotency-Key; absent otherwise"))),
        (status = 400, description = "Missing or invalid Idempotency-Key, body not `{}` or `{\"reason\": \"...\"}`, a reason over 256 characters, or an invalid customer id", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used for another request", body = ErrorBody),
        (status = 503, description = "Kafka did not confirm the event, or the database is unavailable; retry with the same Idempotency-Key (Retry-After)", body = ErrorBody),
    )
)]
pub async fn erase(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(CustomerPath { customer_id }): Path<CustomerPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require(Scope::Erase)?;
    let customer_id = valid_customer_id(&customer_id)?;
    let key = idempotency_key(&headers)?;
    let mut body: ErasureBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("body must be a JSON object: {} or {\"reason\": \"...\"}".into()))?;
    if body.reason.as_ref().is_some_and(|reason| reason.chars().count() > MAX_TEXT_CHARS) {
        return Err(ApiError::BadRequest(format!("reason must be at most {MAX_TEXT_CHARS} characters")));
    }
    // Minimised before anything is derived from it: the request's digest
    // outlives the customer, and must not let a number typed into the
    // reason be found again by guessing.
    body.reason = body.reason.map(|reason| clean_text(&reason, MAX_TEXT_CHARS));
    let visible = principal.visible(None)?;
    let digest = request_digest(&customer_id, &body);
    let now = truncate_to_millis(Utc::now());

    let (recorded, replayed) = match read::lifecycle(&state.pool, customer_id.as_str(), visible.as_deref()).await? {
        Some(stored) => {
            // Stored by connectflow from a checked id.
            let program_id = ProgramId::try_from(stored.program_id)
                .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored program_id is not a program id")))?;
            let request = RevocationRequest {
                // The row outlives the customer: it names them by the digest only.
                customer_id: None,
                request_sha256: digest,
                event_id: Requested::Erasure.event_id(&program_id, key),
                occurred_at: now,
                token_id: Some(principal.token_id.to_string()),
                token_name: Some(principal.token_name.to_string()),
            };
            let ttl = chrono::Duration::from_std(state.idempotency_key_ttl).unwrap_or(chrono::Duration::MAX);
            let expired_before = now.checked_sub_signed(ttl).unwrap_or(DateTime::<Utc>::MIN_UTC);
            let renewed_id = Requested::Erasure.renewed_event_id(&program_id, key, now);
            let remembered =
                revocations::remember(&state.pool, program_id.as_str(), key, &request, expired_before, &renewed_id)
                    .await?;
            let (recorded, replayed) = match remembered {
                Remembered::New(recorded) => (recorded, false),
                Remembered::Earlier(earlier) => (earlier, true),
            };
            if recorded.request_sha256 != request.request_sha256 {
                return Err(ApiError::Conflict("this Idempotency-Key was used for another request".into()));
            }
            ((recorded, program_id), replayed)
        }
        // Erased already: only the request that erased them is answered
        // again (a retry after the consumer was quicker than the client).
        None => {
            let Some(erased) = erasure::erased(&state.pool, customer_id.as_str(), visible.as_deref()).await? else {
                return Err(ApiError::NotFound(format!("customer {customer_id} not found")));
            };
            let program_id = ProgramId::try_from(erased.program_id)
                .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored program_id is not a program id")))?;
            match revocations::recall(&state.pool, program_id.as_str(), key).await? {
                Some(earlier) if earlier.request_sha256 == digest => ((earlier, program_id), true),
                Some(_) => return Err(ApiError::Conflict("this Idempotency-Key was used for another request".into())),
                None => {
                    return Err(ApiError::Gone { customer_id: customer_id.to_string(), erased_at: erased.erased_at });
                }
            }
        }
    };
    let (recorded, program_id) = recorded;

    let mut event = ConnectEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: recorded.event_id.clone(),
        event_type: EventType::CustomerErased,
        customer_id,
        program_id,
        consumer_id: None,
        institution_id: None,
        institution_login_id: None,
        oauth: None,
        mfa: None,
        accounts: Vec::new(),
        deleted_account_ids: Vec::new(),
        error_code: None,
        query: None,
        occurred_at: recorded.occurred_at,
        received_at: recorded.occurred_at,
        webhook_data: None,
        webhook_data_dropped: false,
        source: EventSource::Connectflow,
        revoked_by: None,
        reason: body.reason,
        requested_by: Some(TokenRef {
            token_id: recorded.token_id.clone().unwrap_or_else(|| principal.token_id.to_string()),
            token_name: recorded.token_name.clone().unwrap_or_else(|| principal.token_name.to_string()),
        }),
    };
    event.check().map_err(|err| ApiError::BadRequest(format!("{}: {}", err.field, err.problem)))?;
    event.sanitise();
    state.publisher.publish(&event).await.map_err(|err| {
        tracing::warn!(error = %err, event_id = %event.event_id, "publishing an erasure failed");
        ApiError::Unavailable {
            message: "Kafka did not confirm the erasure; retry with the same Idempotency-Key",
            retry_after_s: 5,
        }
    })?;
    tracing::info!(event_id = %event.event_id, "erasure recorded");
    let mut response =
        (StatusCode::ACCEPTED, Json(ErasureAccepted { status: "accepted", event_id: event.event_id })).into_response();
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response.extensions_mut().insert(Items(1));
    Ok(response)
}

/// What makes two erasures the same request: the customer and the reason,
/// under a tag of their own (a revocation's key is another request).
fn request_digest(customer_id: &CustomerId, body: &ErasureBody) -> Vec<u8> {
    let canonical = serde_json::json!(["erasure", customer_id.as_str(), body.reason]);
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_tells_erasures_apart() {
        let customer = CustomerId::parse("1005061234").expect("id");
        let with = |reason: Option<&str>| ErasureBody { reason: reason.map(str::to_owned) };
        let one = request_digest(&customer, &with(None));
        assert_eq!(one, request_digest(&customer, &with(None)));
        assert_ne!(one, request_digest(&customer, &with(Some("asked by phone"))));
        let someone_else = CustomerId::parse("1005061235").expect("id");
        assert_ne!(one, request_digest(&someone_else, &with(None)));
    }
}
