//! [`CustomerId`]: Finicity's customer id, made once at the edge and used by
//! the receiver, the consumer, the store and the query API, so they cannot
//! disagree on what a customer id is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Finicity customer id: 1 to 22 ASCII digits
/// (`../shared/finicity-connect-webhooks.md`, "Envelope").
///
/// Stored and published as text, never as a number: leading zeros and ids
/// past `u64` stay exactly as Finicity sent them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

/// Why a text is not a [`CustomerId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("customer_id must be 1 to {max} ASCII digits", max = CustomerId::MAX_LEN)]
pub struct InvalidCustomerId;

impl CustomerId {
    /// The longest customer id Finicity issues.
    pub const MAX_LEN: usize = 22;

    /// The regular expression the id matches (for the OpenAPI document).
    pub const PATTERN: &'static str = "^[0-9]{1,22}$";

    /// Parses a customer id.
    pub fn parse(text: &str) -> Result<Self, InvalidCustomerId> {
        Self::is_valid(text).then(|| Self(text.to_owned())).ok_or(InvalidCustomerId)
    }

    /// Whether `text` is a customer id.
    pub fn is_valid(text: &str) -> bool {
        (1..=Self::MAX_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = InvalidCustomerId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        if Self::is_valid(&text) { Ok(Self(text)) } else { Err(InvalidCustomerId) }
    }
}

impl FromStr for CustomerId {
    type Err = InvalidCustomerId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl From<CustomerId> for String {
    fn from(id: CustomerId) -> Self {
        id.0
    }
}

impl AsRef<str> for CustomerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for CustomerId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CustomerId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_to_twenty_two_digits_are_customer_ids() {
        for good in ["0", "1005061234", "0000000000000000000001", &"9".repeat(22)] {
            assert_eq!(CustomerId::parse(good).map(|id| id.to_string()).as_deref(), Ok(good));
        }
        for bad in ["", " 1", "1 ", "12a", "1\n", "１２", "-1", "1.0", &"9".repeat(23), &"1".repeat(3000)] {
            assert_eq!(CustomerId::parse(bad), Err(InvalidCustomerId), "{bad:?}");
        }
    }

    #[test]
    fn serde_refuses_what_parse_refuses() {
        let id: CustomerId = serde_json::from_str("\"42\"").expect("valid");
        assert_eq!(id, "42");
        assert_eq!(serde_json::to_string(&id).expect("serialises"), "\"42\"");
        let err = serde_json::from_str::<CustomerId>("\"4 2\"").expect_err("not digits");
        assert!(err.to_string().contains("customer_id"), "{err}");
    }
}
