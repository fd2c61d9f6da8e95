//! [`EventType`]: what happened, parsed once at the edge.
//!
//! Finicity's Connect catalogue and connectflow's own types are variants;
//! any other name is kept verbatim in [`EventType::Other`], so "unknown
//! types are recorded" holds and the wire format (the name as a string) is
//! the same for every type. Every later step (the transition table, the
//! funnel, the metrics, simulate) matches the enum, so the compiler finds
//! the places a new type must be thought about.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares the known event types once: the variant, its wire name, and
/// whether it is in Finicity's Connect catalogue (metrics label only those
/// by name).
macro_rules! event_types {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, finicity: $finicity:literal;)*) => {
        /// An event's type: its name on the wire (`eventType`, `event_type`).
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($(#[$doc])* $variant,)*
            /// A type connectflow does not know (yet): recorded with its
            /// name, applied as nothing.
            Other(String),
        }

        impl EventType {
            /// Every known type, in the catalogue's order.
            pub const KNOWN: &[EventType] = &[$(EventType::$variant,)*];

            /// The name on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(name) => name,
                }
            }

            /// The type named `name`: a known variant, else [`EventType::Other`].
            pub fn parse(name: &str) -> Self {
                match name {
                    $($name => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }

            /// The metrics label: the name of a type of Finicity's
            /// catalogue, `other` for anything else (a sender cannot grow
            /// the label set).
            pub fn label(&self) -> &'static str {
                match self {
                    $(Self::$variant if $finicity => $name,)*
                    _ => "other",
                }
            }
        }
    };
}

event_types! {
    /// Finicity's reachability check: answered 200, never published.
    Ping => "ping", finicity: true;
    /// A Connect session began.
    Started => "started", finicity: true;
    /// The customer chose an institution and is signing in.
    Adding => "adding", finicity: true;
    /// Credentials were submitted (`mfa: true` when a challenge follows).
    CredentialsUpdated => "credentialsUpdated", finicity: true;
    /// Accounts were discovered (signed in).
    Discovered => "discovered", finicity: true;
    /// Accounts were added (shared): consent granted.
    Added => "added", finicity: true;
    /// Accounts were deleted.
    AccountsDeleted => "accountsDeleted", finicity: true;
    /// The institution search found nothing.
    InstitutionNotFound => "institutionNotFound", finicity: true;
    /// The chosen institution is not supported.
    InstitutionNotSupported => "institutionNotSupported", finicity: true;
    /// The institution connection failed (`payload.code`).
    UnableToConnect => "unableToConnect", finicity: true;
    /// The Connect session ended.
    Done => "done", finicity: true;
    /// Wrong sign-in details.
    InvalidCredentials => "invalidCredentials", finicity: true;
    /// The chosen institution is supported.
    InstitutionSupported => "institutionSupported", finicity: true;
    /// The institution asked for a second factor.
    Mfa => "mfa", finicity: true;
    /// The customer cancelled.
    Cancel => "cancel", finicity: true;
    /// A revocation of consent recorded by the issuer
    /// (`POST /v1/customers/{id}/consent/revocations`). Finicity's types are
    /// camelCase words without dots, and only a record with `source:
    /// "connectflow"` (which no webhook can produce) is applied as one.
    ConsentRevoked => "connectflow.consent.revoked", finicity: false;
    /// An erasure of the customer requested by the issuer
    /// (`POST /v1/customers/{id}/erasures`). Only a record with `source:
    /// "connectflow"` is applied as one, by the store (it deletes what the
    /// fold would work on); the fold itself never sees one, and a webhook
    /// naming the type is recorded and changes nothing.
    CustomerErased => "connectflow.customer.erased", finicity: false;
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for EventType {
    fn from(name: &str) -> Self {
        Self::parse(name)
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(Self::parse(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::EventType;

    #[test]
    fn every_known_type_round_trips_through_its_name() {
        for known in EventType::KNOWN {
            assert_eq!(&EventType::parse(known.as_str()), known);
            let json = serde_json::to_string(known).expect("serialisable");
            assert_eq!(json, format!("\"{}\"", known.as_str()));
            assert_eq!(&serde_json::from_str::<EventType>(&json).expect("deserialisable"), known);
        }
    }

    #[test]
    fn an_unknown_type_keeps_its_name_and_is_labelled_other() {
        let unknown = EventType::parse("somethingNew");
        assert_eq!(unknown, EventType::Other("somethingNew".to_owned()));
        assert_eq!(unknown.as_str(), "somethingNew");
        assert_eq!(unknown.label(), "other");
        assert_eq!(serde_json::to_string(&unknown).expect("serialisable"), "\"somethingNew\"");
    }

    #[test]
    fn only_finicity_types_are_labelled_by_name() {
        assert_eq!(EventType::Added.label(), "added");
        assert_eq!(EventType::Ping.label(), "ping");
        assert_eq!(EventType::ConsentRevoked.label(), "other");
        assert_eq!(EventType::parse("connectflow.consent.revoked"), EventType::ConsentRevoked);
    }
}
