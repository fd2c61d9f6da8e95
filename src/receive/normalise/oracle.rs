//! The former reading of a body, through `serde_json::Value`: the oracle
//! that [`super::wire`]'s typed parse is proven against (the same event or
//! the same error for every body).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{ParseError, Webhook, last_four, occurred_at_from_event_id};
use crate::event::{AccountRef, ConnectEvent, CustomerId, EventType, SCHEMA_V1, truncate_to_millis};
use crate::program::ProgramId;

pub(super) fn normalise_keeping(
    raw: &[u8],
    received_at: DateTime<Utc>,
    program: &ProgramId,
    data_keys: Option<&[String]>,
) -> Result<Webhook, ParseError> {
    let value: Value = serde_json::from_slice(raw).map_err(|_| ParseError::NotJson)?;
    let Value::Object(envelope) = value else {
        return Err(ParseError::NotObject);
    };
    let named = envelope.get("webhookData").and_then(|data| data.get("program"));
    if named.is_some_and(|named| named.as_str() != Some(program.as_str())) {
        return Err(ParseError::ProgramMismatch);
    }
    let event_type = match envelope.get("eventType") {
        Some(Value::String(t)) => EventType::parse(t),
        _ => return Err(ParseError::NoEventType),
    };
    if event_type == EventType::Ping {
        return Ok(Webhook::Ping);
    }
    let customer_id = match envelope.get("customerId") {
        Some(Value::String(c)) => CustomerId::parse(c).map_err(|_| ParseError::BadCustomerId)?,
        _ => return Err(ParseError::NoCustomerId),
    };
    let received_at = truncate_to_millis(received_at);
    let event_id = id_text(envelope.get("eventId"))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(raw))));
    let occurred_at = occurred_at_from_event_id(&event_id, received_at).unwrap_or(received_at);

    let empty = Map::new();
    let payload = match envelope.get("payload") {
        Some(Value::Object(p)) => p,
        _ => &empty,
    };
    let wire_accounts: &[Value] = match payload.get("accounts") {
        Some(Value::Array(a)) => a,
        _ => &[],
    };
    let account_objects = || wire_accounts.iter().filter_map(Value::as_object);

    let accounts = if matches!(event_type, EventType::Added | EventType::Discovered) {
        account_objects().map(account_ref).collect()
    } else {
        Vec::new()
    };
    let deleted_account_ids = if event_type == EventType::AccountsDeleted {
        wire_accounts.iter().filter_map(|id| id_text(Some(id))).collect()
    } else {
        Vec::new()
    };
    let institution_id = id_text(payload.get("institutionId"))
        .or_else(|| account_objects().find_map(|a| id_text(a.get("institutionId"))));
    let institution_login_id = account_objects()
        .find_map(|a| id_text(a.get("institutionLoginId")))
        .or_else(|| id_text(payload.get("institutionLoginId")));

    let mut event = ConnectEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id,
        event_type,
        customer_id,
        program_id: program.clone(),
        consumer_id: id_text(envelope.get("consumerId")),
        institution_id,
        institution_login_id,
        oauth: payload.get("oauth").and_then(Value::as_bool),
        mfa: payload.get("mfa").and_then(Value::as_bool),
        accounts,
        deleted_account_ids,
        error_code: payload.get("code").and_then(Value::as_i64),
        query: payload.get("query").and_then(Value::as_str).map(str::to_owned),
        occurred_at,
        received_at,
        webhook_data: envelope.get("webhookData").and_then(Value::as_object).map(|data| kept_keys(data, data_keys)),
        webhook_data_dropped: false,
        source: crate::event::EventSource::Finicity,
        revoked_by: None,
        reason: None,
        requested_by: None,
    };
    event.check().map_err(ParseError::Invalid)?;
    event.sanitise();
    Ok(Webhook::Event(Box::new(event)))
}

/// The minimised account: identifiers, type, status, display name and the
/// last four characters of the number. `number`, `balance`, `detail` and
/// everything else are dropped here.
fn account_ref(account: &Map<String, Value>) -> AccountRef {
    let last4 = account
        .get("realAccountNumberLast4")
        .and_then(Value::as_str)
        .or_else(|| account.get("accountNumberDisplay").and_then(Value::as_str))
        .map(last_four);
    AccountRef {
        account_id: id_text(account.get("id")),
        institution_login_id: id_text(account.get("institutionLoginId")),
        account_type: account.get("type").and_then(Value::as_str).map(str::to_owned),
        status: account.get("status").and_then(Value::as_str).map(str::to_owned),
        last4,
        name: account.get("name").and_then(Value::as_str).map(str::to_owned),
        aggregation_status_code: account.get("aggregationStatusCode").and_then(Value::as_i64),
    }
}

/// `data` with only the top-level `keys` (every key when `None`); nested
/// values are kept whole.
fn kept_keys(data: &Map<String, Value>, keys: Option<&[String]>) -> Value {
    let Some(keys) = keys else {
        return Value::Object(data.clone());
    };
    Value::Object(data.iter().filter(|(key, _)| keys.contains(key)).map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// An identifier as text: Finicity sends most ids as strings but some (the
/// institution login id) as JSON numbers.
fn id_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
