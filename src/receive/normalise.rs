//! From Finicity's wire format to [`ConnectEvent`], keeping only what the
//! lifecycle needs (data minimisation: no full account number, no balance,
//! no `detail`, nothing unknown).

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use wire::{AccountEntry, Scalar, WireAccount};

use crate::event::{AccountRef, ConnectEvent, CustomerId, EventType, InvalidField, SCHEMA_V1, truncate_to_millis};
use crate::program::ProgramId;

/// Why a verified body cannot be accepted. Each is a 400 naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not valid JSON.
    #[error("body is not valid JSON")]
    NotJson,
    /// Valid JSON, but not an object.
    #[error("body must be a JSON object")]
    NotObject,
    /// No string `eventType`.
    #[error("eventType is missing or not a string")]
    NoEventType,
    /// No string `customerId` (every event but `ping` needs one).
    #[error("customerId is missing or not a string")]
    NoCustomerId,
    /// `customerId` is not 1 to 22 digits.
    #[error("customerId must be 1 to 22 ASCII digits")]
    BadCustomerId,
    /// `webhookData.program` names another program than the webhook URL's
    /// (a body signed for one program, replayed to another's URL).
    #[error("webhookData.program does not match the program of the webhook URL")]
    ProgramMismatch,
    /// A field the pipeline could not keep (too long, not printable), named
    /// as it is on the wire.
    #[error("{field}: {problem}", field = wire_name(.0.field), problem = .0.problem)]
    Invalid(InvalidField),
}

/// The Finicity field a normalised field comes from, for 400 messages.
fn wire_name(normalised: &str) -> &str {
    match normalised {
        "event_id" => "eventId",
        "event_type" => "eventType",
        "consumer_id" => "consumerId",
        "institution_id" => "payload.institutionId",
        "institution_login_id" => "payload.institutionLoginId",
        "accounts[].account_id" => "payload.accounts[].id",
        "accounts[].institution_login_id" => "payload.accounts[].institutionLoginId",
        "deleted_account_ids[]" => "payload.accounts[]",
        other => other,
    }
}

/// A parsed webhook: either Finicity's reachability check or an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Webhook {
    /// `ping`: answered 200 and not published.
    Ping,
    /// Any other event type, known or not.
    Event(Box<ConnectEvent>),
}

/// Parses and normalises a verified webhook body received at `received_at`
/// for `program` (the webhook URL's), keeping every `webhookData` key. The
/// program is never taken from the body, and never from `webhookHeaders`
/// (sent as HTTP headers, outside the signature); a body whose signed
/// `webhookData.program` names another program is refused.
pub fn normalise(raw: &[u8], received_at: DateTime<Utc>, program: &ProgramId) -> Result<Webhook, ParseError> {
    normalise_keeping(raw, received_at, program, None)
}

/// [`normalise`], keeping only the top-level `webhookData` keys listed in
/// `data_keys` (`CONNECTFLOW_WEBHOOK_DATA_KEYS`; `None`: all). The others
/// are dropped before the size limit is applied, so what is kept is not
/// lost to what is not; `webhookData.program` is checked before either.
pub fn normalise_keeping(
    raw: &[u8],
    received_at: DateTime<Utc>,
    program: &ProgramId,
    data_keys: Option<&[String]>,
) -> Result<Webhook, ParseError> {
    let envelope = match serde_json::from_slice::<wire::Body<'_>>(raw) {
        Ok(wire::Body(Some(envelope))) => envelope,
        Ok(wire::Body(None)) => return Err(ParseError::NotObject),
        Err(_) => return Err(ParseError::NotJson),
    };
    let named = envelope.webhook_data.as_ref().and_then(|data| data.get("program"));
    if named.is_some_and(|named| named.as_str() != Some(program.as_str())) {
        return Err(ParseError::ProgramMismatch);
    }
    let event_type = match envelope.event_type.as_ref().and_then(Scalar::as_str) {
        Some(t) => EventType::parse(t),
        None => return Err(ParseError::NoEventType),
    };
    if event_type == EventType::Ping {
        return Ok(Webhook::Ping);
    }
    let customer_id = match envelope.customer_id.as_ref().and_then(Scalar::as_str) {
        Some(c) => CustomerId::parse(c).map_err(|_| ParseError::BadCustomerId)?,
        None => return Err(ParseError::NoCustomerId),
    };
    let received_at = truncate_to_millis(received_at);
    let event_id = id_text(envelope.event_id.as_ref())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(raw))));
    let occurred_at = occurred_at_from_event_id(&event_id, received_at).unwrap_or(received_at);

    let payload = envelope.payload.unwrap_or_default();
    let wire_accounts = payload.accounts.unwrap_or_default().0;
    let account_objects = || {
        wire_accounts.iter().filter_map(|entry| match entry {
            AccountEntry::Object(account) => Some(account),
            AccountEntry::Scalar(_) => None,
        })
    };

    let accounts = if matches!(event_type, EventType::Added | EventType::Discovered) {
        account_objects().map(account_ref).collect()
    } else {
        Vec::new()
    };
    let deleted_account_ids = if event_type == EventType::AccountsDeleted {
        wire_accounts
            .iter()
            .filter_map(|entry| match entry {
                AccountEntry::Scalar(id) => id.id_text(),
                AccountEntry::Object(_) => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let institution_id = id_text(payload.institution_id.as_ref())
        .or_else(|| account_objects().find_map(|a| id_text(a.institution_id.as_ref())));
    let institution_login_id = account_objects()
        .find_map(|a| id_text(a.institution_login_id.as_ref()))
        .or_else(|| id_text(payload.institution_login_id.as_ref()));

    let mut event = ConnectEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id,
        event_type,
        customer_id,
        program_id: program.clone(),
        consumer_id: id_text(envelope.consumer_id.as_ref()),
        institution_id,
        institution_login_id,
        oauth: payload.oauth.as_ref().and_then(Scalar::as_bool),
        mfa: payload.mfa.as_ref().and_then(Scalar::as_bool),
        accounts,
        deleted_account_ids,
        error_code: payload.code.as_ref().and_then(Scalar::as_i64),
        query: text(payload.query.as_ref()),
        occurred_at,
        received_at,
        webhook_data: envelope.webhook_data.and_then(|data| match data {
            Value::Object(data) => Some(kept_keys(data, data_keys)),
            _ => None,
        }),
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
/// everything else were dropped by the parse.
fn account_ref(account: &WireAccount<'_>) -> AccountRef {
    let last4 = account
        .real_last4
        .as_ref()
        .and_then(Scalar::as_str)
        .or_else(|| account.number_display.as_ref().and_then(Scalar::as_str))
        .map(last_four);
    AccountRef {
        account_id: id_text(account.id.as_ref()),
        institution_login_id: id_text(account.institution_login_id.as_ref()),
        account_type: text(account.account_type.as_ref()),
        status: text(account.status.as_ref()),
        last4,
        name: text(account.name.as_ref()),
        aggregation_status_code: account.aggregation_status_code.as_ref().and_then(Scalar::as_i64),
    }
}

/// `data` with only the top-level `keys` (every key when `None`); nested
/// values are kept whole.
fn kept_keys(mut data: Map<String, Value>, keys: Option<&[String]>) -> Value {
    if let Some(keys) = keys {
        data.retain(|key, _| keys.contains(key));
    }
    Value::Object(data)
}

/// An identifier as text (a string, or a number written as JSON writes it).
fn id_text(value: Option<&Scalar<'_>>) -> Option<String> {
    value?.id_text()
}

/// A text field; absent when the field holds anything but a string.
fn text(value: Option<&Scalar<'_>>) -> Option<String> {
    value?.as_str().map(str::to_owned)
}

/// The last four characters, so even a full number sent by mistake in a
/// display field is cut down to what a receipt shows.
fn last_four(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// Finicity's event ids start with the epoch milliseconds of the event
/// (`1611877956869-28ebb24c...`). The shape is observed, not promised, so the
/// prefix is used only when it is 13 digits standing alone and plausible:
/// after 2000 and at most a day ahead of our clock.
pub fn occurred_at_from_event_id(event_id: &str, received_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let bytes = event_id.as_bytes();
    let prefix = bytes.get(..13)?;
    if !prefix.iter().all(u8::is_ascii_digit) || bytes.get(13).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let millis: i64 = std::str::from_utf8(prefix).ok()?.parse().ok()?;
    let at = Utc.timestamp_millis_opt(millis).single()?;
    let earliest = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single()?;
    (at >= earliest && at <= received_at + Duration::days(1)).then_some(at)
}

#[cfg(test)]
mod oracle;
#[cfg(test)]
mod tests;
mod wire;
