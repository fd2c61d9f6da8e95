//! From a Kafka record to an event the store can keep, or the reason it
//! cannot be (a poison record, parked).

use rdkafka::message::{Headers, Message, OwnedMessage};

use crate::event::{ConnectEvent, EventSource, EventType, OWN_EVENT_TYPE_PREFIX, SCHEMA_V1, SCHEMA_VERSION_HEADER};

/// The `dlq_reason` of a record written by a newer connectflow than this
/// consumer: parked without being recorded, so that `dlq replay` after the
/// upgrade applies it (docs/operations.md, "Upgrades").
pub const NEWER_SCHEMA: &str = "newer_schema";

/// The prefix of the `schema` field of every version of the event schema.
const SCHEMA_PREFIX: &str = "connectflow.connect_event.v";

/// A record that cannot become a storable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Why, for the `dlq_reason` header (names the field when one is at
    /// fault, never its value; exactly [`NEWER_SCHEMA`] for a record of a
    /// newer version).
    pub reason: String,
}

impl Poison {
    fn newer_schema() -> Self {
        Self { reason: NEWER_SCHEMA.to_owned() }
    }
}

/// A record decoded into the event to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The event, checked and sanitised.
    pub event: ConnectEvent,
    /// Whether the published bytes are stored beside the event, verbatim
    /// (`connect_events.published`): when they hold something the event's
    /// own `record` would not (a field this consumer does not know, another
    /// layout). Not when they are exactly what this consumer writes for the
    /// event itself (what the same release's receiver publishes): `record`
    /// holds all of it then, and storing both would nearly double every event's
    /// row. Never for a record of an older receiver that still held text to
    /// minimise: it is stored as the consumer cleaned it only.
    pub keep_published: bool,
}

/// Decodes one record as a [`ConnectEvent`] of schema v1, checks its
/// identifiers and sanitises its free text exactly as the receiver does, so
/// a record published by an older receiver is stored like a new one.
///
/// `schema_version` is the record's `schema_version` header (absent: 1) and
/// `own_version` this consumer's [`crate::event::SCHEMA_VERSION`]. A record
/// of a higher version, of a later `schema`, or of a type of connectflow's
/// own namespace this consumer does not know is refused as
/// [`NEWER_SCHEMA`]: applying it with older rules could lose what it means.
pub fn decode(payload: Option<&[u8]>, schema_version: Option<&[u8]>, own_version: u32) -> Result<Decoded, Poison> {
    if let Some(header) = schema_version {
        let version = std::str::from_utf8(header)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .ok_or_else(|| Poison { reason: format!("invalid {SCHEMA_VERSION_HEADER} header") })?;
        if version > own_version {
            return Err(Poison::newer_schema());
        }
    }
    let payload = payload.ok_or_else(|| Poison { reason: "record has no value".into() })?;
    let mut event: ConnectEvent =
        serde_json::from_slice(payload).map_err(|err| Poison { reason: format!("not a connect event: {err}") })?;
    if event.schema != SCHEMA_V1 {
        if is_later_schema(&event.schema) {
            return Err(Poison::newer_schema());
        }
        let mut shown = event.schema;
        shown.truncate(shown.char_indices().nth(64).map_or(shown.len(), |(i, _)| i));
        return Err(Poison { reason: format!("unsupported schema {shown:?}") });
    }
    if event.source == EventSource::Connectflow
        && matches!(&event.event_type, EventType::Other(name) if name.starts_with(OWN_EVENT_TYPE_PREFIX))
    {
        return Err(Poison::newer_schema());
    }
    event.check().map_err(|invalid| Poison { reason: format!("invalid field {invalid}") })?;
    let published = event.clone();
    event.sanitise();
    let keep_published = event == published && serde_json::to_vec(&published).map_or(true, |own| own != payload);
    Ok(Decoded { event, keep_published })
}

/// `connectflow.connect_event.v<N>` with N above 1.
fn is_later_schema(schema: &str) -> bool {
    schema.strip_prefix(SCHEMA_PREFIX).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 1)
}

/// The record's `schema_version` header, if any.
pub fn header_schema_version(message: &OwnedMessage) -> Option<&[u8]> {
    message.headers()?.iter().find(|h| h.key == SCHEMA_VERSION_HEADER).and_then(|h| h.value)
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
        decode(Some(&serde_json::to_vec(value).expect("json")), None, 1).map(|d| d.event)
    }

    #[test]
    fn poison_records_are_recognised() {
        assert!(decode(None, None, 1).is_err());
        assert!(decode(Some(b"garbage"), None, 1).is_err());
        assert!(decode(Some(br#"{"schema":"connectflow.connect_event.v1"}"#), None, 1).is_err(), "missing fields");
        let mut event = valid();
        event["schema"] = "connectflow.other.v1".into();
        let err = decode_value(&event).expect_err("not our schema");
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

    #[test]
    fn records_of_a_newer_version_are_refused_as_newer_schema() {
        let bytes = serde_json::to_vec(&valid()).expect("json");
        let newer = Poison { reason: NEWER_SCHEMA.into() };
        assert_eq!(decode(Some(&bytes), Some(b"2"), 1), Err(newer.clone()), "a higher header");
        assert!(decode(Some(&bytes), Some(b"2"), 2).is_ok(), "its own version");
        assert!(decode(Some(&bytes), Some(b"1"), 2).is_ok(), "an older version");
        assert!(decode(Some(&bytes), None, 1).is_ok(), "no header is version 1");
        assert!(decode(Some(&bytes), Some(b"two"), 1).expect_err("not a number").reason.contains("schema_version"));
        assert_eq!(decode(None, Some(b"9"), 1), Err(newer.clone()), "refused before the value is read");
        let mut later = valid();
        later["schema"] = "connectflow.connect_event.v2".into();
        assert_eq!(decode_value(&later), Err(newer.clone()), "a later schema name");
        let mut own = valid();
        own["event_type"] = "connectflow.consent.renewed".into();
        own["source"] = "connectflow".into();
        assert_eq!(decode_value(&own), Err(newer), "a type of connectflow's namespace it does not know");
        own["source"] = "finicity".into();
        assert!(decode_value(&own).is_ok(), "a webhook naming such a type is recorded as any unknown type");
        let mut known = valid();
        known["event_type"] = "connectflow.consent.revoked".into();
        known["source"] = "connectflow".into();
        known["revoked_by"] = "customer".into();
        assert!(decode_value(&known).is_ok(), "a known type of the namespace");
    }

    #[test]
    fn only_records_with_more_than_the_event_and_nothing_to_minimise_are_kept_verbatim() {
        let mut extra = valid();
        extra["added_by_a_newer_receiver"] = "kept".into();
        let bytes = serde_json::to_vec(&extra).expect("json");
        assert!(decode(Some(&bytes), None, 1).expect("valid").keep_published, "an unknown field");
        let pretty = serde_json::to_vec_pretty(&valid()).expect("json");
        assert!(decode(Some(&pretty), None, 1).expect("valid").keep_published, "another layout");
        let own = serde_json::to_vec(&decode_value(&valid()).expect("valid")).expect("json");
        let decoded = decode(Some(&own), None, 1).expect("valid");
        assert!(!decoded.keep_published, "exactly the consumer's own serialisation: `record` holds it");
        assert_eq!(serde_json::to_vec(&decoded.event).expect("json"), own);
        let mut dirty = valid();
        dirty["event_type"] = "institutionNotFound".into();
        dirty["query"] = "card 4111111111111111".into();
        let bytes = serde_json::to_vec(&dirty).expect("json");
        assert!(!decode(Some(&bytes), None, 1).expect("valid").keep_published, "text still to minimise");
    }
}
