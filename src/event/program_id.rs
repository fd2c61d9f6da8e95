//! [`ProgramId`]: the id of one client's card program.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A program's id: `^[a-z0-9][a-z0-9-]{0,31}$` (a lowercase letter or digit,
/// then up to 31 lowercase letters, digits or hyphens). It appears in URLs
/// (`/webhooks/finicity/connect/{program}`), Kafka headers and topic names,
/// so it is kept to characters that are safe in all three.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProgramId(String);

/// Why a text is not a [`ProgramId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a program id is 1 to 32 of a-z, 0-9 and '-', not starting with '-'")]
pub struct InvalidProgramId;

impl ProgramId {
    /// The program of everything when no programs file is configured, and
    /// of every event and customer recorded before programs existed.
    pub const DEFAULT: &'static str = "default";

    /// The longest id.
    pub const MAX_LEN: usize = 32;

    /// The regular expression the id matches (for the OpenAPI document).
    pub const PATTERN: &'static str = "^[a-z0-9][a-z0-9-]{0,31}$";

    /// Parses a program id.
    pub fn parse(text: &str) -> Result<Self, InvalidProgramId> {
        Self::is_valid(text).then(|| Self(text.to_owned())).ok_or(InvalidProgramId)
    }

    /// The `default` program.
    pub fn default_program() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// Whether this is the `default` program.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// Whether `text` is a program id.
    pub fn is_valid(text: &str) -> bool {
        let bytes = text.as_bytes();
        let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        (1..=Self::MAX_LEN).contains(&bytes.len())
            && bytes.first().is_some_and(allowed)
            && bytes.iter().all(|b| allowed(b) || *b == b'-')
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ProgramId {
    fn default() -> Self {
        Self::default_program()
    }
}

impl TryFrom<String> for ProgramId {
    type Error = InvalidProgramId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        if Self::is_valid(&text) { Ok(Self(text)) } else { Err(InvalidProgramId) }
    }
}

impl FromStr for ProgramId {
    type Err = InvalidProgramId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl From<ProgramId> for String {
    fn from(id: ProgramId) -> Self {
        id.0
    }
}

impl AsRef<str> for ProgramId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProgramId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ProgramId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ProgramId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_pattern() {
        for good in ["a", "0", "acme-card", "a-", "abcdefghijklmnopqrstuvwxyz012345", "default"] {
            assert!(ProgramId::is_valid(good), "{good}");
        }
        for bad in ["", "-a", "Acme", "acme_card", "acme card", "é", "abcdefghijklmnopqrstuvwxyz0123456", "a/b", "a.b"]
        {
            assert!(!ProgramId::is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn serde_checks_the_id() {
        assert_eq!(serde_json::from_str::<ProgramId>("\"acme\"").ok(), ProgramId::parse("acme").ok());
        assert!(serde_json::from_str::<ProgramId>("\"ACME\"").is_err());
        assert_eq!(ProgramId::default().as_str(), "default");
    }
}
