//! From a Kafka record to an event the store can keep, or the reason it
//! cannot be (a poison record, parked).

use rdkafka::message::{Headers, Message, OwnedMessage};

use crate::event::{ConnectEvent, SCHEMA_V1};

/// A record that cannot become a storable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Why, for the `dlq_reason` header (names the field when one is at
    /// fault, never its value).
    pub reason: String,
}

/// Decodes one record's value as a [`ConnectEvent`] of schema v1, checks
/// its identifiers and sanitises its free text exactly as the receiver does,
/// so a record published by an older receiver is stored like a new one.
pub fn decode(payload: Option<&[u8]>) -> Result<ConnectEvent, Poison> {
    let payload = payload.ok_or_else(|| Poison { reason: "record has no value".into() })?;
    let mut event: ConnectEvent =
        serde_json::from_slice(payload).map_err(|err| Poison { reason: format!("not a connect event: {err}") })?;
    if event.schema != SCHEMA_V1 {
        let mut shown = event.schema;
        shown.truncate(shown.char_indices().nth(64).map_or(shown.len(), |(i, _)| i));
        return Err(Poison { reason: format!("unsupported schema {shown:?}") });
    }
    event.check().map_err(|invalid| Poison { reason: format!("invalid field {invalid}") })?;
    event.sanitise();
    Ok(event)
}

/// The event id a record carries in its `event_id` header, if any.
pub fn header_event_id(message: &OwnedMessage) -> Option<&str> {
    message.headers()?.iter().find(|h| h.key == "event_id").and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// The record's key as text (the customer id on the events topic).
pub fn key_text(message: &OwnedMessage) -> Option<&str> {
    message.key().and_then(|k| std::str::from_utf8(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "schema": "connectflow.connect_event.v1", "event_id": "e", "event_type": "started",
            "customer_id": "1", "consumer_id": null, "institution_id": null, "institution_login_id": null,
            "oauth": null, "mfa": null, "accounts": [], "deleted_account_ids": [], "error_code": null,
            "query": null, "occurred_at": "2026-11-20T10:15:02.123Z", "received_at": "2026-11-20T10:15:02.123Z",
            "webhook_data": null
        })
    }

    fn decode_value(value: &serde_json::Value) -> Result<ConnectEvent, Poison> {
        decode(Some(&serde_json::to_vec(value).expect("json")))
    }

    #[test]
    fn poison_records_are_recognised() {
        assert!(decode(None).is_err());
        assert!(decode(Some(b"garbage")).is_err());
        assert!(decode(Some(br#"{"schema":"connectflow.connect_event.v1"}"#)).is_err(), "missing fields");
        let mut event = valid();
        event["schema"] = "connectflow.connect_event.v2".into();
        let err = decode_value(&event).expect_err("v2 is not ours");
        assert!(err.reason.contains("schema"), "{err:?}");
        let ok = decode_value(&valid()).expect("a valid event");
        assert_eq!(ok.event_id, "e");
    }

    #[test]
    fn ids_the_store_cannot_keep_are_poison_naming_the_field() {
        let cases = [
            ("customer_id", serde_json::Value::from("1".repeat(3000))),
            ("customer_id", "".into()),
            ("customer_id", "12\n".into()),
            ("event_id", "e".repeat(3000).into()),
            ("event_id", "".into()),
            ("institution_id", "x\u{0}y".into()),
        ];
        for (field, value) in cases {
            let mut event = valid();
            event[field] = value;
            let err = decode_value(&event).expect_err(field);
            assert!(err.reason.contains(field), "{field}: {}", err.reason);
            assert!(err.reason.len() < 300, "the reason never quotes a long value");
        }
        let mut event = valid();
        event["event_type"] = "added".into();
        event["accounts"] = serde_json::json!([{"account_id": "9".repeat(3000)}]);
        let err = decode_value(&event).expect_err("long account id");
        assert!(err.reason.contains("accounts[].account_id"), "{}", err.reason);
    }

    #[test]
    fn free_text_with_nul_is_cleaned_not_refused() {
        let mut event = valid();
        event["event_type"] = "institutionNotFound".into();
        event["query"] = "First\u{0} Bank".into();
        event["webhook_data"] = serde_json::json!({"ref\u{0}": "a\u{0}b", "nested": ["c\u{0}"]});
        let ok = decode_value(&event).expect("cleaned");
        assert_eq!(ok.query.as_deref(), Some("First Bank"));
        assert_eq!(ok.webhook_data, Some(serde_json::json!({"ref": "ab", "nested": ["c"]})));
    }
}
