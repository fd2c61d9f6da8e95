//! A typed, borrowing parse of Finicity's wire format: only the fields the
//! normaliser reads are kept, strings borrowed from the body where they have
//! no escapes; every other value is parsed (so the body is held to the same
//! rules as before) and dropped at once.
//!
//! It reads the body exactly as parsing it into a `serde_json::Value` and
//! looking fields up did (the tests prove it against that reading, kept as
//! their oracle):
//! - a repeated key: the last one counts, whatever the types;
//! - a field of another type than expected is absent (an id may be text or a
//!   number; a flag only a boolean);
//! - unknown fields are parsed, with the same checks (UTF-8, escapes and
//!   surrogates, numbers in range, nesting depth), and dropped;
//! - `webhookData` is kept whole, as a `Value`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// A JSON value as far as the normaliser looks at one.
#[derive(Debug)]
pub(super) enum Scalar<'a> {
    Text(Cow<'a, str>),
    Number(Number),
    Bool(bool),
    /// `null`, an object or an array: never an id, a flag or a code.
    Other,
}

impl Scalar<'_> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }

    pub(super) fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub(super) fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// An identifier as text: Finicity sends most ids as strings but some
    /// (the institution login id) as JSON numbers.
    pub(super) fn id_text(&self) -> Option<String> {
        match self {
            Self::Text(text) => Some(text.clone().into_owned()),
            Self::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// Drains a map or sequence, holding every value to the parser's checks.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<Checked>()?.is_some() {
        map.next_value::<Checked>()?;
    }
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Checked>()?.is_some() {}
    Ok(())
}

/// Any JSON value, parsed as a `Value` would be and then dropped. Unlike
/// `serde::de::IgnoredAny` (which skips strings without decoding their
/// escapes), a lone surrogate or a number out of range is still an error.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor).map(|_| Self)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // As `Value` does: a float JSON can hold is always finite.
        Ok(Number::from_f64(v).map_or(Scalar::Other, Scalar::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| Scalar::Other)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The visitor methods of every JSON scalar (booleans, numbers, strings,
/// null), each answering `$value`: what a value that is not the expected
/// object or array reads as.
macro_rules! scalars_read_as {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// Implements a lenient `Deserialize` for a struct read from a JSON object:
/// each listed key is read into its field as its type (the last occurrence
/// wins), other keys are checked and dropped, and a value that is not an
/// object at all reads as the default (every field absent).
macro_rules! object {
    ($name:ident { $($key:literal => $field:ident: $ty:ty),* $(,)? }) => {
        #[derive(Debug, Default)]
        pub(super) struct $name<'a> {
            $(pub(super) $field: Option<$ty>,)*
        }

        impl<'de> Deserialize<'de> for $name<'de> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;

                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = $name<'de>;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("any JSON value")
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        let mut object = $name::default();
                        while let Some(key) = map.next_key::<Scalar<'de>>()? {
                            match key.as_str() {
                                $(Some($key) => object.$field = Some(map.next_value()?),)*
                                _ => {
                                    map.next_value::<Checked>()?;
                                }
                            }
                        }
                        Ok(object)
                    }

                    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                        drain_seq(seq).map(|()| $name::default())
                    }

                    scalars_read_as!($name::default());
                }

                deserializer.deserialize_any(ObjectVisitor)
            }
        }
    };
}

object!(Envelope {
    "eventType" => event_type: Scalar<'a>,
    "customerId" => customer_id: Scalar<'a>,
    "eventId" => event_id: Scalar<'a>,
    "consumerId" => consumer_id: Scalar<'a>,
    "payload" => payload: Payload<'a>,
    "webhookData" => webhook_data: Value,
});

object!(Payload {
    "institutionId" => institution_id: Scalar<'a>,
    "institutionLoginId" => institution_login_id: Scalar<'a>,
    "oauth" => oauth: Scalar<'a>,
    "mfa" => mfa: Scalar<'a>,
    "code" => code: Scalar<'a>,
    "query" => query: Scalar<'a>,
    "accounts" => accounts: Accounts<'a>,
});

object!(WireAccount {
    "id" => id: Scalar<'a>,
    "institutionLoginId" => institution_login_id: Scalar<'a>,
    "institutionId" => institution_id: Scalar<'a>,
    "type" => account_type: Scalar<'a>,
    "status" => status: Scalar<'a>,
    "name" => name: Scalar<'a>,
    "aggregationStatusCode" => aggregation_status_code: Scalar<'a>,
    "realAccountNumberLast4" => real_last4: Scalar<'a>,
    "accountNumberDisplay" => number_display: Scalar<'a>,
});

/// One element of `payload.accounts`: an account object (`added`,
/// `discovered`), or an account id (`accountsDeleted`).
#[derive(Debug)]
pub(super) enum AccountEntry<'a> {
    Object(WireAccount<'a>),
    Scalar(Scalar<'a>),
}

impl<'de> Deserialize<'de> for AccountEntry<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = AccountEntry<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                WireAccount::deserialize(de::value::MapAccessDeserializer::new(map)).map(AccountEntry::Object)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                ScalarVisitor.visit_seq(seq).map(AccountEntry::Scalar)
            }

            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(AccountEntry::Scalar(Scalar::Bool(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ScalarVisitor.visit_i64(v).map(AccountEntry::Scalar)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ScalarVisitor.visit_u64(v).map(AccountEntry::Scalar)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                ScalarVisitor.visit_f64(v).map(AccountEntry::Scalar)
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                ScalarVisitor.visit_borrowed_str(v).map(AccountEntry::Scalar)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ScalarVisitor.visit_str(v).map(AccountEntry::Scalar)
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(AccountEntry::Scalar(Scalar::Other))
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}

/// `payload.accounts`: its elements when it is an array, none otherwise.
#[derive(Debug, Default)]
pub(super) struct Accounts<'a>(pub(super) Vec<AccountEntry<'a>>);

impl<'de> Deserialize<'de> for Accounts<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AccountsVisitor;

        impl<'de> Visitor<'de> for AccountsVisitor {
            type Value = Accounts<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(Accounts(entries))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| Accounts::default())
            }

            scalars_read_as!(Accounts::default());
        }

        deserializer.deserialize_any(AccountsVisitor)
    }
}

/// The body's top level: an object, or `None` for anything else (a 400 of
/// its own).
pub(super) struct Body<'a>(pub(super) Option<Envelope<'a>>);

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;

        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Envelope::deserialize(de::value::MapAccessDeserializer::new(map)).map(|envelope| Body(Some(envelope)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| Body(None))
            }

            scalars_read_as!(Body(None));
        }

        deserializer.deserialize_any(BodyVisitor)
    }
}
