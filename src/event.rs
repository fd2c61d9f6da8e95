//! The normalised connect event: connectflow's own versioned schema.
//!
//! This is the value published on `CONNECTFLOW_EVENTS_TOPIC` and the record
//! kept in the event history. Topic subscribers are built against it, so its
//! field names and types are a fixed contract (`docs/event-schema.md`).
//! It carries only what the lifecycle needs: never a full account number, a
//! balance, the raw body or the signature.

mod checks;
mod customer_id;
mod event_type;
mod program_id;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use checks::{
    InvalidField, KEPT_DIGITS, MASK, MAX_EVENT_ID_LEN, MAX_IDENTIFIER_LEN, MAX_TEXT_CHARS, MAX_WEBHOOK_DATA_BYTES,
    clean_text, mask_digit_runs,
};
pub use customer_id::{CustomerId, InvalidCustomerId};
pub use event_type::EventType;
pub use program_id::{InvalidProgramId, ProgramId};

/// The value of the `schema` field and header of every published record.
pub const SCHEMA_V1: &str = "connectflow.connect_event.v1";

/// The value of the `schema_version` header of every record connectflow
/// publishes on the events topic: raised whenever a release writes records
/// (or event types of connectflow's own `connectflow.*` namespace) that an
/// older consumer would apply wrongly. A consumer parks a record of a
/// higher version as `newer_schema` rather than apply it, and `dlq replay`
/// after the upgrade applies it (docs/event-schema.md, docs/operations.md
/// "Upgrades"). A record without the header is version 1.
pub const SCHEMA_VERSION: u32 = 1;

/// The header that carries [`SCHEMA_VERSION`], as decimal digits.
pub const SCHEMA_VERSION_HEADER: &str = "schema_version";

/// The namespace of connectflow's own event types (`connectflow.consent.revoked`, ...).
pub const OWN_EVENT_TYPE_PREFIX: &str = "connectflow.";

/// Who produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// A Finicity webhook (every record written before this field existed).
    #[default]
    Finicity,
    /// connectflow itself (a revocation recorded through the API).
    Connectflow,
}

/// Who asked for a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBy {
    /// The customer (through the issuer's app or support line).
    Customer,
    /// The issuer (data recipient) itself.
    Partner,
}

/// One Finicity Connect event, normalised and minimised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectEvent {
    /// Always [`SCHEMA_V1`].
    pub schema: String,
    /// Finicity's `eventId`, or `sha256:<hex of the raw body>` when absent.
    pub event_id: String,
    /// Finicity's `eventType`, verbatim (unknown types included).
    pub event_type: EventType,
    /// Finicity's `customerId`.
    pub customer_id: CustomerId,
    /// The program the event was received for (the webhook URL's
    /// `{program}`). Absent means `default`: records written before
    /// programs existed, and every event of the `default` program, read the
    /// same (docs/event-schema.md).
    #[serde(default, skip_serializing_if = "ProgramId::is_default")]
    pub program_id: ProgramId,
    /// Finicity's `consumerId`, when sent.
    pub consumer_id: Option<String>,
    /// `payload.institutionId`, else the accounts' `institutionId`.
    pub institution_id: Option<String>,
    /// The accounts' `institutionLoginId` (a number on the wire) or the payload's.
    pub institution_login_id: Option<String>,
    /// `payload.oauth`.
    pub oauth: Option<bool>,
    /// `payload.mfa`.
    pub mfa: Option<bool>,
    /// Accounts listed by `added` / `discovered`; empty otherwise.
    pub accounts: Vec<AccountRef>,
    /// Account ids listed by `accountsDeleted`; empty otherwise.
    pub deleted_account_ids: Vec<String>,
    /// `payload.code` (for `unableToConnect`).
    pub error_code: Option<i64>,
    /// `payload.query` (for `institutionNotFound`).
    pub query: Option<String>,
    /// When the event happened: from the epoch-ms prefix of `eventId` when
    /// plausible, else `received_at`.
    #[serde(with = "rfc3339_ms")]
    pub occurred_at: DateTime<Utc>,
    /// When connectflow received it.
    #[serde(with = "rfc3339_ms")]
    pub received_at: DateTime<Utc>,
    /// `webhookData` as the partner set it (NUL removed), unless it was
    /// larger than [`MAX_WEBHOOK_DATA_BYTES`].
    pub webhook_data: Option<serde_json::Value>,
    /// True when `webhookData` was dropped for its size; absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook_data_dropped: bool,
    /// Who produced the event: `finicity` (every webhook; also assumed for
    /// records without the field) or `connectflow`.
    #[serde(default)]
    pub source: EventSource,
    /// For a revocation ([`EventType::ConsentRevoked`]): who asked; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<RevokedBy>,
    /// For a revocation: the reason given, if any (free text, cleaned and
    /// capped like `query`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a revocation: the API token that recorded it (beside the
    /// caller's `revoked_by` claim); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<TokenRef>,
}

/// An API token, named without revealing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRef {
    /// Its id (`tok_...`, `bootstrap-...`).
    pub token_id: String,
    /// Its name.
    pub token_name: String,
}

/// A minimised account: identifiers and display data only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AccountRef {
    /// Finicity's account `id`.
    pub account_id: Option<String>,
    /// The account's `institutionLoginId`, as a string.
    pub institution_login_id: Option<String>,
    /// `checking`, `savings`, `creditCard`, ...
    #[serde(rename = "type")]
    pub account_type: Option<String>,
    /// Finicity's account `status`, e.g. `active`.
    pub status: Option<String>,
    /// The last four characters of the account number, never more.
    pub last4: Option<String>,
    /// The account's display name.
    pub name: Option<String>,
    /// Finicity's `aggregationStatusCode`.
    pub aggregation_status_code: Option<i64>,
}

impl ConnectEvent {
    /// The key events are folded by: `(occurred_at, event_id)`.
    pub fn order_key(&self) -> (DateTime<Utc>, &str) {
        (self.occurred_at, self.event_id.as_str())
    }

    /// An event of connectflow's own for a request made through the API
    /// (`source: "connectflow"`, dated by the request's first recording),
    /// every field Finicity would fill left empty; the caller sets the
    /// request's own fields (a revocation's login, who asked, a reason).
    pub fn requested(
        event_type: EventType,
        event_id: String,
        customer_id: CustomerId,
        program_id: ProgramId,
        occurred_at: DateTime<Utc>,
        requested_by: TokenRef,
    ) -> Self {
        Self {
            schema: SCHEMA_V1.to_owned(),
            event_id,
            event_type,
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
            occurred_at,
            received_at: occurred_at,
            webhook_data: None,
            webhook_data_dropped: false,
            source: EventSource::Connectflow,
            revoked_by: None,
            reason: None,
            requested_by: Some(requested_by),
        }
    }

    /// Whether this is an erasure recorded through the API (a webhook
    /// naming the type is not one: no webhook has `source: "connectflow"`).
    pub fn is_erasure(&self) -> bool {
        self.event_type == EventType::CustomerErased && self.source == EventSource::Connectflow
    }
}

/// `at` cut to whole milliseconds: the precision of every time connectflow
/// records, so a stored time compares exactly with its published text.
pub fn truncate_to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// A request made through the API that becomes an event of connectflow's
/// own: its event id comes from the request's `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A revocation of consent ([`EventType::ConsentRevoked`]).
    Revocation,
    /// An erasure of the customer ([`EventType::CustomerErased`]).
    Erasure,
}

impl Requested {
    /// The id of the event the request recorded under `Idempotency-Key:
    /// key` in `program` becomes (the same for every retry). The `default`
    /// program's revocation ids are those of before programs existed;
    /// another program's include the program, so two programs using the
    /// same key never share an event (the consumer would drop the second
    /// as a duplicate).
    pub fn event_id(self, program: &ProgramId, key: &str) -> String {
        if program.is_default() { self.id(key.as_bytes()) } else { self.id(format!("{program}\0{key}").as_bytes()) }
    }

    /// The id of a request recorded under a key whose end had passed (the
    /// same key used again later, a new request): unlike the first, it
    /// includes when it was recorded.
    pub fn renewed_event_id(self, program: &ProgramId, key: &str, recorded_at: DateTime<Utc>) -> String {
        self.id(format!("{program}\0{key}\0{}", recorded_at.timestamp_millis()).as_bytes())
    }

    fn id(self, material: &[u8]) -> String {
        use sha2::Digest;
        let kind = match self {
            Self::Revocation => "revocation",
            Self::Erasure => "erasure",
        };
        format!("connectflow-{kind}-{}", &hex::encode(sha2::Sha256::digest(material))[..40])
    }
}

/// Timestamps as RFC 3339, UTC, millisecond precision (`2026-11-20T10:15:02.123Z`).
pub mod rfc3339_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats a timestamp the way every connectflow document does.
    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Serde serialiser.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }

    /// Serde deserialiser: any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|at| at.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}
