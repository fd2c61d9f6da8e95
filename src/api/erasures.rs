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

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::ApiState;
use super::auth::{Principal, Scope};
use super::model::{ErasureAccepted, ErasureBody};
use super::params::{CustomerPath, valid_customer_id};
use super::revocations::{idempotency_key, json_object, publish_accepted, remember_key, requested_by};
use crate::error::{ApiError, ErrorBody};
use crate::event::{ConnectEvent, CustomerId, EventType, MAX_TEXT_CHARS, Requested, clean_text};
use crate::program::ProgramId;
use crate::store::revocations;
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
    let mut body: ErasureBody = json_object(&body)
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

    let (recorded, replayed) = match read::lifecycle(&state.pool, customer_id.as_str(), visible.as_deref()).await? {
        Some(stored) => {
            // Stored by connectflow from a checked id.
            let program_id = ProgramId::try_from(stored.program_id)
                .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored program_id is not a program id")))?;
            // The row outlives the customer: it names them by the digest only.
            let (recorded, replayed) =
                remember_key(&state, &principal, Requested::Erasure, &program_id, key, None, digest).await?;
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

    let mut event = ConnectEvent::requested(
        EventType::CustomerErased,
        recorded.event_id.clone(),
        customer_id,
        program_id,
        recorded.occurred_at,
        requested_by(&recorded, &principal),
    );
    event.reason = body.reason;
    publish_accepted(
        &state,
        event,
        replayed,
        "Kafka did not confirm the erasure; retry with the same Idempotency-Key",
        |event_id| ErasureAccepted { status: "accepted", event_id },
    )
    .await
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
