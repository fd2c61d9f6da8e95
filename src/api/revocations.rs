//! `POST /v1/customers/{id}/consent/revocations`: a revocation of consent
//! that the customer makes through the card issuer (its app, its support
//! line), or that the issuer makes itself. It becomes an event of
//! connectflow's own ([`EventType::ConsentRevoked`], `source: "connectflow"`),
//! published to the events topic like a webhook and applied by the consumer
//! like any event; the answer (202) comes only once Kafka has it.
//!
//! Retries are safe: the `Idempotency-Key` header names the request within
//! the customer's program, and the same key with the same request always
//! gives the same event (id and time), so a repeated publish is a duplicate
//! the consumer skips, and the answer says `Idempotent-Replayed: true`; the
//! same key with another request is refused (409). A key ends
//! `CONNECTFLOW_IDEMPOTENCY_KEY_HOURS` after its first use: the same key
//! later is a new request (with an event of its own).

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
use super::customers::absent_customer;
use super::model::{RevocationAccepted, RevocationBody};
use super::params::{CustomerPath, valid_customer_id};
use crate::error::{ApiError, ErrorBody};
use crate::event::{
    ConnectEvent, CustomerId, EventType, MAX_EVENT_ID_LEN, MAX_IDENTIFIER_LEN, MAX_TEXT_CHARS, Requested, TokenRef,
    truncate_to_millis,
};
use crate::program::ProgramId;
use crate::store::read;
use crate::store::revocations::{self, Remembered, RevocationRequest};

/// The header naming a request for safe retries.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header of an answer given again for a replayed `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Records a revocation of the customer's consent.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer_id}/consent/revocations",
    tag = "consent",
    security(("bearer" = ["revoke"])),
    params(
        CustomerPath,
        ("Idempotency-Key" = String, Header, description = "Names this request for retries within the customer's program, for CONNECTFLOW_IDEMPOTENCY_KEY_HOURS (72 by default) after its first use: 1 to 128 printable ASCII characters, not starting or ending with a space. The same key with the same request returns the same answer; with another request, 409", min_length = 1, max_length = 128, pattern = "^[!-~]([ -~]{0,126}[!-~])?$"),
    ),
    request_body(content = RevocationBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Published to the events topic: the revocation will be applied. `Idempotent-Replayed: true` when the key was used before for the same request (the same event, published again)", body = RevocationAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` on the answer to a replayed Idempotency-Key; absent otherwise"))),
        (status = 400, description = "Missing or invalid Idempotency-Key, body not the documented JSON, a field outside its limits, or an invalid customer id", body = ErrorBody),
        (status = 404, description = "Customer (or the named institution login) not found", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used for another request", body = ErrorBody),
        (status = 503, description = "Kafka did not confirm the event, or the database is unavailable; retry with the same Idempotency-Key (Retry-After)", body = ErrorBody),
    )
)]
pub async fn revoke(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(CustomerPath { customer_id }): Path<CustomerPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require(Scope::Revoke)?;
    let customer_id = valid_customer_id(&customer_id)?;
    let key = idempotency_key(&headers)?;
    let body: RevocationBody = json_object(&body).map_err(|_| {
        ApiError::BadRequest(
            "body must be a JSON object with revoked_by (customer or partner) and optionally institution_login_id \
             and reason"
                .into(),
        )
    })?;
    check_body(&body)?;

    let Some(read::StoredLifecycle { lifecycle, program_id, .. }) =
        read::lifecycle(&state.pool, customer_id.as_str(), principal.visible(None)?.as_deref()).await?
    else {
        return Err(absent_customer(&state.pool, customer_id.as_str(), &principal).await);
    };
    // Stored by connectflow from a checked id.
    let program_id = ProgramId::try_from(program_id)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored program_id is not a program id")))?;
    if let Some(login) = &body.institution_login_id
        && !lifecycle.institution_logins.iter().any(|l| l.institution_login_id.as_deref() == Some(login.as_str()))
    {
        return Err(ApiError::NotFound(format!("customer {customer_id} has no institution login {login}")));
    }

    let digest = request_digest(&customer_id, &body);
    let customer = Some(customer_id.to_string());
    let (recorded, replayed) =
        remember_key(&state, &principal, Requested::Revocation, &program_id, key, customer, digest).await?;

    let mut event = ConnectEvent::requested(
        EventType::ConsentRevoked,
        recorded.event_id.clone(),
        customer_id,
        program_id,
        recorded.occurred_at,
        requested_by(&recorded, &principal),
    );
    event.institution_login_id = body.institution_login_id;
    event.revoked_by = Some(body.revoked_by);
    event.reason = body.reason;
    publish_accepted(
        &state,
        event,
        replayed,
        "Kafka did not confirm the revocation; retry with the same Idempotency-Key",
        |event_id| RevocationAccepted { status: "accepted", event_id },
    )
    .await
}

/// Records `key` for this request in `program` (or finds what it was first
/// used for): the request as recorded and whether it was a replay; 409 when
/// the key stands for another request. `customer` is kept with the key
/// (none for an erasure, whose row outlives the customer); `digest` tells
/// requests apart.
pub(super) async fn remember_key(
    state: &ApiState,
    principal: &Principal,
    kind: Requested,
    program: &ProgramId,
    key: &str,
    customer: Option<String>,
    digest: Vec<u8>,
) -> Result<(RevocationRequest, bool), ApiError> {
    let now = truncate_to_millis(Utc::now());
    let request = RevocationRequest {
        customer_id: customer,
        request_sha256: digest,
        event_id: kind.event_id(program, key),
        occurred_at: now,
        token_id: Some(principal.token_id.to_string()),
        token_name: Some(principal.token_name.to_string()),
    };
    let ttl = chrono::Duration::from_std(state.idempotency_key_ttl).unwrap_or(chrono::Duration::MAX);
    let expired_before = now.checked_sub_signed(ttl).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let renewed_id = kind.renewed_event_id(program, key, now);
    let remembered =
        revocations::remember(&state.pool, program.as_str(), key, &request, expired_before, &renewed_id).await?;
    let (recorded, replayed) = match remembered {
        Remembered::New(recorded) => (recorded, false),
        Remembered::Earlier(earlier) => (earlier, true),
    };
    if recorded.customer_id != request.customer_id || recorded.request_sha256 != request.request_sha256 {
        return Err(ApiError::Conflict("this Idempotency-Key was used for another request".into()));
    }
    Ok((recorded, replayed))
}

/// The token that first made a request: as recorded with its key (a
/// replay may come with another token of the same client), else the
/// caller.
pub(super) fn requested_by(recorded: &RevocationRequest, principal: &Principal) -> TokenRef {
    TokenRef {
        token_id: recorded.token_id.clone().unwrap_or_else(|| principal.token_id.to_string()),
        token_name: recorded.token_name.clone().unwrap_or_else(|| principal.token_name.to_string()),
    }
}

/// Checks, minimises and publishes an event of connectflow's own recorded
/// for an API request, then answers 202 with `answer(event_id)` (and
/// `Idempotent-Replayed: true` when the key was used before); 503 with
/// `unconfirmed` when Kafka does not confirm it.
pub(super) async fn publish_accepted<B: serde::Serialize>(
    state: &ApiState,
    mut event: ConnectEvent,
    replayed: bool,
    unconfirmed: &'static str,
    answer: impl FnOnce(String) -> B,
) -> Result<Response, ApiError> {
    event.check().map_err(|err| ApiError::BadRequest(format!("{}: {}", err.field, err.problem)))?;
    event.sanitise();
    state.publisher.publish(&event).await.map_err(|err| {
        tracing::warn!(error = %err, event_id = %event.event_id, event_type = %event.event_type, "publishing a request's event failed");
        ApiError::Unavailable { message: unconfirmed, retry_after_s: 5 }
    })?;
    tracing::info!(event_id = %event.event_id, event_type = %event.event_type, "recorded through the API");
    let mut response = (StatusCode::ACCEPTED, Json(answer(event.event_id))).into_response();
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response.extensions_mut().insert(Items(1));
    Ok(response)
}

/// A request body that must be a JSON object. serde would also take a
/// struct from an array of its fields in order (`[null, "customer"]`), which
/// the documented body is not.
pub(super) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    serde_json::from_value(serde_json::Value::Object(object))
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let invalid = || {
        ApiError::BadRequest(format!(
            "the Idempotency-Key header is required: 1 to {MAX_EVENT_ID_LEN} printable ASCII characters, not \
             starting or ending with a space"
        ))
    };
    let key = headers.get(IDEMPOTENCY_KEY).ok_or_else(invalid)?.to_str().map_err(|_| invalid())?;
    let printable = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    let padded = key.starts_with(' ') || key.ends_with(' ');
    if key.is_empty() || key.len() > MAX_EVENT_ID_LEN || !printable || padded {
        return Err(invalid());
    }
    Ok(key)
}

fn check_body(body: &RevocationBody) -> Result<(), ApiError> {
    if let Some(login) = &body.institution_login_id {
        let printable = login.bytes().all(|b| b.is_ascii_graphic());
        if login.is_empty() || login.len() > MAX_IDENTIFIER_LEN || !printable {
            return Err(ApiError::BadRequest(format!(
                "institution_login_id must be 1 to {MAX_IDENTIFIER_LEN} printable ASCII characters"
            )));
        }
    }
    if body.reason.as_ref().is_some_and(|reason| reason.chars().count() > MAX_TEXT_CHARS) {
        return Err(ApiError::BadRequest(format!("reason must be at most {MAX_TEXT_CHARS} characters")));
    }
    Ok(())
}

/// What makes two requests the same: the customer and the body's meaning.
fn request_digest(customer_id: &CustomerId, body: &RevocationBody) -> Vec<u8> {
    let canonical = serde_json::json!([customer_id.as_str(), body.institution_login_id, body.revoked_by, body.reason,]);
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::event::RevokedBy;

    fn with_key(key: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(key) {
            headers.insert(IDEMPOTENCY_KEY, value);
        }
        headers
    }

    #[test]
    fn idempotency_keys_are_printable_unpadded_and_bounded() {
        for good in [&b"k"[..], b"order 42/retry", &[b'x'; 128]] {
            assert!(idempotency_key(&with_key(good)).is_ok(), "{good:?}");
        }
        for bad in [&b""[..], b" k", b"k ", b"\xc3\xa9t\xc3\xa9", &[b'x'; 129]] {
            assert!(idempotency_key(&with_key(bad)).is_err(), "{bad:?}");
        }
        assert!(idempotency_key(&HeaderMap::new()).is_err(), "required");
    }

    #[test]
    fn bodies_are_json_objects_only() {
        let object: Result<RevocationBody, _> = json_object(br#"{"revoked_by": "customer"}"#);
        assert!(object.is_ok());
        for not_an_object in [&br#"[null, "customer", null]"#[..], b"[]", b"null", b"\"customer\""] {
            assert!(json_object::<RevocationBody>(not_an_object).is_err(), "{not_an_object:?}");
            assert!(json_object::<crate::api::model::ErasureBody>(not_an_object).is_err(), "{not_an_object:?}");
        }
        assert!(json_object::<crate::api::model::ErasureBody>(b"{}").is_ok());
    }

    #[test]
    fn the_digest_tells_requests_apart() {
        let customer = CustomerId::parse("1005061234").expect("id");
        let body = |login: Option<&str>, by, reason: Option<&str>| RevocationBody {
            institution_login_id: login.map(str::to_owned),
            revoked_by: by,
            reason: reason.map(str::to_owned),
        };
        let one = request_digest(&customer, &body(Some("L1"), RevokedBy::Customer, None));
        assert_eq!(one, request_digest(&customer, &body(Some("L1"), RevokedBy::Customer, None)));
        for other in [
            body(None, RevokedBy::Customer, None),
            body(Some("L1"), RevokedBy::Partner, None),
            body(Some("L1"), RevokedBy::Customer, Some("")),
        ] {
            assert_ne!(one, request_digest(&customer, &other), "{other:?}");
        }
        let someone_else = CustomerId::parse("1005061235").expect("id");
        assert_ne!(one, request_digest(&someone_else, &body(Some("L1"), RevokedBy::Customer, None)));
    }
}
