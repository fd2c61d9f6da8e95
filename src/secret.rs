//! Secrets that never print: a partner secret, an API token, a list of
//! them. `Debug` shows neither the value nor its length.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

/// A single secret string that never prints.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(SecretString::from(value))
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A comma-separated list of secrets (partner secrets, API tokens).
#[derive(Clone)]
pub struct SecretList(Vec<Secret>);

impl SecretList {
    /// Builds a list; `None` when it would be empty.
    pub fn new<I, S>(values: I) -> Option<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<Secret> = values.into_iter().map(|s| Secret::from(s.into())).collect();
        (!list.is_empty()).then_some(Self(list))
    }

    /// The secrets, in configured order.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a parsed list; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for SecretList {
    type Err = String;
    /// Entries are separated by commas, taken exactly as written: an empty
    /// entry, or one with spaces around it, is refused (never trimmed
    /// silently), so a secret that contains a comma, or a list with a stray
    /// space, cannot pass for a valid configuration. A secret cannot contain a
    /// comma.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').collect();
        for (n, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(format!("entry {} of the comma-separated list is empty", n + 1));
            }
            if part.trim() != *part {
                return Err(format!("entry {} of the comma-separated list has spaces around it", n + 1));
            }
        }
        Self::new(parts.into_iter().map(str::to_owned)).ok_or_else(|| "expected at least one value".into())
    }
}

impl fmt::Debug for SecretList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretList([{} redacted])", self.0.len())
    }
}
