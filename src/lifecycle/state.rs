//! The lifecycle's types: what the store persists and the query API serialises.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::event::{EventType, RevokedBy, rfc3339_ms};

/// A customer's consent and authentication lifecycle, folded from their
/// distinct events.
///
/// Its serde form is the *persisted* form: the API's shape plus
/// [`pending_adding`](Self::pending_adding), which a later `added` may still
/// need. Dropping that field would make a state reloaded from the store
/// differ from the fold of the same events. The API shows
/// [`crate::api::model::CustomerLifecycle`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Lifecycle {
    /// Whether the customer shares accounts now.
    pub consent: Consent,
    /// Where the customer is in the Connect authentication flow.
    pub authentication: Authentication,
    /// The shared accounts grouped by login, sorted by login id (the login
    /// without an id first), each login's accounts sorted by account id, so
    /// two states with the same content compare equal.
    pub institution_logins: Vec<InstitutionLogin>,
    /// The latest event folded in, by `(occurred_at, event_id)`; null before any.
    pub last_event: Option<LastEvent>,
    /// How many distinct events were folded in.
    pub event_count: u64,
    /// The institution and `oauth` of the latest `adding` that no `added` or
    /// `started` has followed yet: `added` falls back on it when its own
    /// payload lacks them.
    #[serde(default)]
    pub pending_adding: Option<PendingAdding>,
    /// How far the customer got through Connect (the connect funnel).
    #[serde(default)]
    pub funnel: super::FunnelProgress,
}

/// The consent dimension.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Consent {
    /// Derived from the accounts after every event.
    pub state: ConsentState,
    /// When the event that last changed `state` occurred; null while it
    /// never changed.
    #[serde(with = "rfc3339_ms_option")]
    pub since: Option<DateTime<Utc>>,
    /// When consent was first granted: `occurred_at` of the first event after
    /// which an account was shared; null while none ever was. Never moves
    /// afterwards (a revocation and a new grant leave it).
    #[serde(default, with = "rfc3339_ms_option")]
    pub granted_at: Option<DateTime<Utc>>,
    /// The latest authorization among the logins that share an active
    /// account (their `authorized_at`); null when none does. The
    /// authorization lapses `CONNECTFLOW_AUTHORIZATION_DAYS` after it unless
    /// the customer reauthorizes.
    #[serde(default, with = "rfc3339_ms_option")]
    pub authorized_at: Option<DateTime<Utc>>,
    /// The latest revocation recorded by the issuer
    /// (`POST /v1/customers/{id}/consent/revocations`); null while none was.
    /// It stays after a new grant, as the record of that revocation.
    #[serde(default)]
    pub revocation: Option<Revocation>,
}

/// A revocation of consent recorded by the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    /// When it was recorded (the revocation event's `occurred_at`).
    #[serde(with = "crate::event::rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub revoked_at: DateTime<Utc>,
    /// Who asked: `customer` or `partner`.
    pub revoked_by: RevokedBy,
    /// The login revoked; null when every login was.
    pub institution_login_id: Option<String>,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The revocation event's id.
    pub event_id: String,
}

/// The contract names of a state enum, declared once: `as_str` (the serde
/// name, also the database column's value), `from_name` and `ALL`. A new
/// variant must be named here, or `as_str` does not compile.
macro_rules! contract_names {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, in the contract's order.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The contract name (the serde name), e.g. for a database column.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The value named `name` (its contract name), if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

/// Whether the customer shares accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    /// No account was ever shared.
    #[default]
    None,
    /// At least one shared account is active.
    Granted,
    /// Accounts were shared and none is active now.
    Revoked,
}

contract_names!(ConsentState { None => "none", Granted => "granted", Revoked => "revoked" });

/// The authentication dimension.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Authentication {
    /// Where the customer is in the Connect flow.
    pub state: AuthState,
    /// When the event that last changed `state`, `reason` or `error_code`
    /// occurred; null while none of them ever changed.
    #[serde(with = "rfc3339_ms_option")]
    pub since: Option<DateTime<Utc>>,
    /// Why, when `state` is `failed` or `abandoned`; else null.
    pub reason: Option<AuthReason>,
    /// Finicity's `code` when `reason` is `unable_to_connect` (if it sent one).
    pub error_code: Option<i64>,
}

/// The state of the customer's Connect flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthState {
    /// No event has moved the flow yet.
    #[default]
    NotStarted,
    /// The customer is signing in or choosing accounts.
    InProgress,
    /// The institution asked for a second factor.
    MfaChallenge,
    /// The customer signed in (`discovered`) or shared accounts (`added`).
    Authenticated,
    /// The connection failed: see the reason.
    Failed,
    /// The customer left the flow unfinished.
    Abandoned,
}

contract_names!(AuthState { NotStarted => "not_started", InProgress => "in_progress", MfaChallenge => "mfa_challenge", Authenticated => "authenticated", Failed => "failed", Abandoned => "abandoned" });

/// Why the flow is `failed` or `abandoned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthReason {
    /// `invalidCredentials`.
    InvalidCredentials,
    /// `unableToConnect` (see `error_code`).
    UnableToConnect,
    /// `institutionNotFound`.
    InstitutionNotFound,
    /// `institutionNotSupported`.
    InstitutionNotSupported,
    /// `cancel`: the customer cancelled.
    Cancelled,
    /// `done` while the flow was still unfinished.
    Abandoned,
}

contract_names!(AuthReason { InvalidCredentials => "invalid_credentials", UnableToConnect => "unable_to_connect", InstitutionNotFound => "institution_not_found", InstitutionNotSupported => "institution_not_supported", Cancelled => "cancelled", Abandoned => "abandoned" });

impl AuthReason {
    /// Where a flow with this reason ends: `failed` or `abandoned`.
    pub const fn outcome(self) -> AuthState {
        match self {
            Self::InvalidCredentials
            | Self::UnableToConnect
            | Self::InstitutionNotFound
            | Self::InstitutionNotSupported => AuthState::Failed,
            Self::Cancelled | Self::Abandoned => AuthState::Abandoned,
        }
    }

    /// What gives this reason, in a few words (the `/v1/stats` documents
    /// describe each count with it).
    pub const fn summary(self) -> &'static str {
        match self {
            Self::InvalidCredentials => "`invalidCredentials`.",
            Self::UnableToConnect => "`unableToConnect`.",
            Self::InstitutionNotFound => "`institutionNotFound`.",
            Self::InstitutionNotSupported => "`institutionNotSupported`.",
            Self::Cancelled => "`cancel`.",
            Self::Abandoned => "`done` while unfinished.",
        }
    }
}

/// One institution login and the accounts shared through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstitutionLogin {
    /// Finicity's `institutionLoginId` as text; null groups the accounts
    /// that arrived without one.
    pub institution_login_id: Option<String>,
    /// The institution, from the latest `added` that listed accounts of this
    /// login (or its pending `adding`).
    pub institution_id: Option<String>,
    /// Whether the login is OAuth, from the latest `added` (or its pending
    /// `adding`) that said so.
    pub oauth: Option<bool>,
    /// When the customer last authorized access through this login:
    /// `occurred_at` of the latest `added` that listed accounts under it (a
    /// Connect Fix session's `added` is a reauthorization); null for
    /// accounts known only from events without a date of authorization.
    #[serde(default, with = "rfc3339_ms_option")]
    pub authorized_at: Option<DateTime<Utc>>,
    /// Never empty; sorted by account id.
    pub accounts: Vec<Account>,
}

/// A shared account. Its login and institution are those of the
/// institution login that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// Finicity's account id.
    pub account_id: String,
    /// `checking`, `savings`, `creditCard`, ...
    #[serde(rename = "type")]
    pub account_type: Option<String>,
    /// Whether the account is shared now.
    pub status: AccountStatus,
    /// The last four characters of the account number.
    pub last4: Option<String>,
    /// The account's display name.
    pub name: Option<String>,
}

/// Whether a shared account is still shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Listed by an `added` and not deleted since.
    Active,
    /// Listed by an `accountsDeleted` after its latest `added`.
    Deleted,
    /// Revoked by the customer or the issuer after its latest `added`
    /// (distinct from Finicity's `deleted`).
    Revoked,
}

contract_names!(AccountStatus { Active => "active", Deleted => "deleted", Revoked => "revoked" });

/// The latest event folded in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LastEvent {
    /// Its `event_id`.
    pub event_id: String,
    /// Its `event_type`, verbatim.
    #[schema(value_type = String)]
    pub event_type: EventType,
    /// Its `occurred_at`.
    #[serde(with = "rfc3339_ms")]
    pub occurred_at: DateTime<Utc>,
}

impl LastEvent {
    /// The fold key, comparable with [`ConnectEvent::order_key`](crate::event::ConnectEvent::order_key).
    pub fn order_key(&self) -> (DateTime<Utc>, &str) {
        (self.occurred_at, self.event_id.as_str())
    }
}

/// What an `adding` said, kept until an `added` uses it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct PendingAdding {
    /// The `adding` event's `institutionId`.
    pub institution_id: Option<String>,
    /// The `adding` event's `oauth`.
    pub oauth: Option<bool>,
}

/// [`rfc3339_ms`] for an optional timestamp: `null` when absent.
pub mod rfc3339_ms_option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::event::rfc3339_ms;

    /// Serde serialiser.
    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => rfc3339_ms::serialize(at, s),
            None => s.serialize_none(),
        }
    }

    /// Serde deserialiser: `null` or any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        // Reuses the non-optional parser so both accept exactly the same text.
        #[derive(Deserialize)]
        struct Timestamp(#[serde(with = "rfc3339_ms")] DateTime<Utc>);
        Ok(Option::<Timestamp>::deserialize(d)?.map(|Timestamp(at)| at))
    }
}
